"""The whole flow in one command: ``gristmill run pipeline.toml`` and ``gristmill quickstart``.

A pipeline config (TOML) names the inputs and the settings of each stage::

    out_dir = "runs/shakespeare"
    inputs = ["data/shakespeare.txt"]
    engine = "local"    # or "ray": prep and tokenize on Ray Data, same result (address = "..." to join a cluster)

    [prep]        # gristmill.prep.PrepConfig fields (filters, dedup)
    [tokenizer]   # vocab_size, pattern, special_tokens
    [tokenize]    # shard_size, val_fraction
    [train]       # gristmill.config.TrainConfig fields (model preset, steps, batch, lr, ...)
    [sample]      # prompts, max_new_tokens, temperature, top_k, seed

Each stage writes into ``out_dir/<stage>/`` and records there, in ``stage.json``, a key: the
hash of its settings, of the keys of the stages before it and (for prep) of its input files'
contents. A rerun skips a stage whose output is complete under the same key, resumes a stage
that was interrupted under the same key (every stage resumes: prep and tokenize from their
last complete shard, training from its last checkpoint), and redoes from scratch a stage whose
key changed.

Nothing else is deleted (see :mod:`gristmill.outputs`): ``out_dir`` must be new or empty, or a
folder a pipeline wrote, and apart from the inputs; a stage redone removes only the files it
wrote (a finished stage lists them in ``stage.json``; an interrupted one is known by the names
it writes), and a stage folder holding anything else is refused before any work, naming what
is there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

from gristmill.config import check_keys, read_config_file
from gristmill.defaults import SAMPLE, TOKENIZE, TOKENIZER
from gristmill.engines import ENGINES, run_stage
from gristmill.outputs import (
    MARKER,
    STAGE_RECORD,
    TEMP,
    OutputFolderError,
    check_apart,
    claim,
    files_under,
    remove_own,
)
from gristmill.storage import write_atomic

PathLike = Union[str, "os.PathLike[str]"]
STAGES = ("prep", "tokenizer", "tokenize", "train", "sample")
_KEYS = ("out_dir", "inputs", "engine", "address", *STAGES)


def load_config(path: PathLike) -> dict:
    """Reads a pipeline file (TOML, YAML or JSON); relative paths are taken from its folder."""
    path = Path(path)
    cfg = read_config_file(path)
    check_keys(cfg, _KEYS, str(path))
    inputs = cfg.get("inputs", [])
    if not (isinstance(inputs, list) and all(isinstance(p, str) for p in inputs)):
        raise ValueError(f'{path}: inputs: expected a list of files or folders (inputs = ["docs/"]), '
                         f"found {inputs!r}")
    if not isinstance(cfg.get("out_dir", ""), str):
        raise ValueError(f'{path}: out_dir: expected a folder (out_dir = "out"), found {cfg["out_dir"]!r}')
    base = path.resolve().parent
    cfg["inputs"] = [str(base / p) for p in inputs]
    if "out_dir" in cfg:
        cfg["out_dir"] = str(base / cfg["out_dir"])
    return cfg


def _check(cfg: dict, source: str = "pipeline") -> None:
    check_keys(cfg, _KEYS, source)
    if cfg.get("engine", "local") not in ENGINES:
        raise ValueError(f"{source}: engine must be 'local' or 'ray', not {cfg['engine']!r}")
    if not cfg.get("inputs"):
        raise ValueError("the pipeline needs 'inputs': a list of files or folders")
    if not cfg.get("out_dir"):
        raise ValueError("the pipeline needs 'out_dir'")
    for p in cfg["inputs"]:
        if not Path(p).exists():
            raise FileNotFoundError(f"input {p} does not exist")


# ---- stage keys -----------------------------------------------------------------------------


def _file_digest(path: Path, cache: dict) -> str:
    """blake2b of a file's bytes, cached by (size, mtime) in the previous stage record."""
    st = path.stat()
    ident = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    if ident in cache:
        return cache[ident]
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    cache[ident] = h.hexdigest()
    return cache[ident]


def _input_files(inputs: list[str]) -> list[Path]:
    files = []
    for p in map(Path, inputs):
        files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return files


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _read_record(stage_dir: Path) -> dict:
    try:
        return json.loads((stage_dir / "stage.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_record(stage_dir: Path, record: dict) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(stage_dir / STAGE_RECORD, json.dumps(record, indent=2, default=str))


# ---- what each stage owns in its folder --------------------------------------------------------
# A finished stage lists the files it wrote in stage.json; an interrupted one is known by the
# rule of the command it runs (a name missing there makes a redo refuse the folder, never
# delete more), plus the leftovers of a killed run: temporary files and folders, the
# tokenize writer's progress, and the markers of nested folders.
_LEFTOVERS = re.compile(r"(.*/)?\.[^/]+\.(tmp|old)(-\d+)?(\.png)?(/.*)?|\.gristmill-tokenize\.json"
                        rf"|(.*/)?{re.escape(MARKER)}")


def _command_owns(stage: str) -> Callable[[str], bool]:
    if stage == "prep":
        from gristmill.prep import owned_files
    elif stage == "tokenizer":
        from gristmill.tokenizer import SAVED_FILES

        return SAVED_FILES.__contains__
    elif stage == "tokenize":
        from gristmill.shards import owned_files
    elif stage == "train":
        from gristmill.checkpoint import owned_files
    else:
        return "samples.txt".__eq__
    return owned_files


def _stage_owns(stage: str, record: dict) -> Callable[[str], bool]:
    if record.get("complete") and isinstance(record.get("files"), list):
        listed = set(record["files"])
        return listed.__contains__
    owns = _command_owns(stage)
    return lambda rel: _LEFTOVERS.fullmatch(rel) is not None or owns(rel)


def _written(stage_dir: Path) -> list[str]:
    """The files of a finished stage, as stage.json lists them: all but the record, and hidden
    files other than gristmill's own (a marker, the tokenize writer's progress)."""
    return [rel for rel in files_under(stage_dir) if rel != STAGE_RECORD and not TEMP.search(rel)
            and not any(part.startswith(".") and not part.startswith(".gristmill") for part in rel.split("/"))]


def _check_stage_dir(stage_dir: Path, owns: Callable[[str], bool]) -> None:
    """Refuses a stage folder about to be (re)written that holds files the stage did not write."""
    foreign = [rel for rel in _written(stage_dir) if not rel.startswith(".") and "/." not in rel and not owns(rel)]
    if foreign:
        more = f", ... {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise OutputFolderError(f"{stage_dir}/: holds files this run did not write ({', '.join(foreign[:5])}{more}); "
                                "move them out of the folder, or choose another out_dir")


def _owns_top(rel: str) -> bool:
    """The pipeline's own files in out_dir: the report and the stage folders (which are
    checked one by one)."""
    return rel in ("report.json", "report.md") or rel.split("/", 1)[0] in STAGES


# ---- the stages -----------------------------------------------------------------------------
# Each takes (settings, the pipeline config, its own folder, the folders of earlier stages,
# progress) and returns a small summary dict of figures for the report.


def _stage_prep(s: dict, cfg: dict, out: Path, dirs: dict, progress: bool) -> dict:
    from gristmill.prep import PrepConfig

    report = run_stage("prep", cfg["inputs"], out, PrepConfig.from_dict(s, source="[prep]"),
                       engine=cfg.get("engine", "local"), address=cfg.get("address"),
                       progress=progress)
    keys = ("docs_in", "docs_out", "docs_final", "bytes_in", "bytes_out", "seconds")
    return {k: report[k] for k in keys if k in report}


def _stage_tokenizer(s: dict, cfg: dict, out: Path, dirs: dict, progress: bool) -> dict:
    from gristmill.prep import clean_documents, read_documents
    from gristmill.tokenizer import Tokenizer

    t0 = time.perf_counter()
    texts = (d.text for d in read_documents(clean_documents(dirs["prep"])))
    s = {**TOKENIZER, **s}  # a setting left out means what it means everywhere
    tok = Tokenizer.train(
        texts,
        vocab_size=int(s["vocab_size"]),
        pattern=s["pattern"],
        special_tokens=tuple(s["special_tokens"]),
        min_frequency=int(s["min_frequency"]),
        progress=progress,
        name=s.get("name", "tokenizer"),
    )
    tok.save(out)
    return {"n_vocab": tok.n_vocab, "pattern": s["pattern"],
            "seconds": round(time.perf_counter() - t0, 2), "fingerprint": tok.fingerprint}


def _stage_tokenize(s: dict, cfg: dict, out: Path, dirs: dict, progress: bool) -> dict:
    from gristmill.prep import clean_documents
    from gristmill.shards import ShardDataset

    t0 = time.perf_counter()
    settings = {"shard_size": int(s.get("shard_size", TOKENIZE["shard_size"])),
                "val_fraction": float(s.get("val_fraction", TOKENIZE["val_fraction"])),
                "progress": progress}
    # Paths, not documents: JSON-lines shards are then read and parsed by the core.
    manifest = run_stage("tokenize", clean_documents(dirs["prep"]), out, dirs["tokenizer"],
                         engine=cfg.get("engine", "local"), address=cfg.get("address"), **settings)
    ds = ShardDataset(manifest)
    return {"train_tokens": ds.num_tokens("train"), "val_tokens": ds.num_tokens("val") if "val" in ds.splits else 0,
            "seconds": round(time.perf_counter() - t0, 2)}


def _stage_train(s: dict, cfg: dict, out: Path, dirs: dict, progress: bool) -> dict:
    from gristmill.train import train

    s = {"progress": progress, **s}
    result = train(data=str(dirs["tokenize"]), tokenizer=str(dirs["tokenizer"]), out_dir=str(out), **s)
    return {k: v for k, v in result.items() if k != "losses"}


def _stage_sample(s: dict, cfg: dict, out: Path, dirs: dict, progress: bool) -> dict:
    from gristmill.sample import sample_text

    prompts = s.get("prompts", ["\n"])
    texts = sample_text(
        dirs["train"], prompts,
        max_new_tokens=int(s.get("max_new_tokens", SAMPLE["max_new_tokens"])),
        temperature=float(s.get("temperature", SAMPLE["temperature"])),
        top_k=int(s.get("top_k", SAMPLE["top_k"])), seed=s.get("seed", SAMPLE["seed"]),
    )
    body = "".join(f"=== prompt: {p!r}\n{p}{t}\n\n" for p, t in zip(prompts, texts))
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "samples.txt", body)
    return {"samples": str(out / "samples.txt"), "n": len(texts)}


_RUNNERS: dict[str, Callable[..., dict]] = {
    "prep": _stage_prep, "tokenizer": _stage_tokenizer, "tokenize": _stage_tokenize,
    "train": _stage_train, "sample": _stage_sample,
}


# ---- running --------------------------------------------------------------------------------


def run(config: Union[dict, PathLike], *, progress: bool = True, force: bool = False,
        log: Callable[[str], None] = print) -> dict:
    """Runs every stage of a pipeline, skipping those that are complete and up to date.

    Args:
        config: a pipeline dict or the path of a TOML file.
        progress: show progress bars.
        force: redo every stage.

    Returns:
        ``{"out_dir", "stages": {stage: {"skipped", "summary", "seconds"}}}``; also written,
        with a markdown version, to ``out_dir/report.json`` and ``out_dir/report.md``.

    Raises:
        ValueError, FileNotFoundError: a bad config or missing inputs.
        OutputFolderError: ``out_dir`` overlaps an input, or holds files the pipeline did not
            write where it would write (checked before any stage runs).
    """
    cfg = load_config(config) if not isinstance(config, dict) else dict(config)
    _check(cfg)
    out_dir = Path(cfg["out_dir"])
    check_apart(out_dir, cfg["inputs"])
    claim(out_dir, "run", _owns_top)
    dirs = {stage: out_dir / stage for stage in STAGES}
    # Every stage's key and action first, so a folder that cannot be written is refused
    # before any stage runs.
    plan = []
    upstream = ""
    for stage in STAGES:
        record = _read_record(dirs[stage])
        cache = record.get("digests", {}) if stage == "prep" else {}
        extra = [_file_digest(f, cache) for f in _input_files(cfg["inputs"])] if stage == "prep" else None
        key = upstream = _key(stage, cfg.get(stage, {}), upstream, extra)
        same = not force and record.get("key") == key
        action = ("skip" if record.get("complete") else "resume") if same else "redo" if record else "new"
        owns = _stage_owns(stage, record) if action == "redo" else (lambda rel: False)
        if action in ("redo", "new"):
            _check_stage_dir(dirs[stage], owns)
        plan.append((stage, key, record, action, owns, cache))
    report: dict = {"out_dir": str(out_dir), "stages": {}}
    for stage, key, record, action, owns, cache in plan:
        settings = cfg.get(stage, {})
        stage_dir = dirs[stage]
        if action == "skip":
            log(f"[{stage}] up to date, skipped ({stage_dir})")
            report["stages"][stage] = {"skipped": True, "summary": record.get("summary", {})}
            continue
        if action == "redo":  # other settings: start afresh, removing only the stage's own files
            remove_own(stage_dir, owns, keep_marker=False)
        elif action == "resume":
            log(f"[{stage}] resuming an interrupted run")
        _write_record(stage_dir, {"key": key, "complete": False, "digests": cache})
        log(f"[{stage}] running -> {stage_dir}")
        t0 = time.perf_counter()
        summary = _RUNNERS[stage](settings, cfg, stage_dir, dirs, progress)
        seconds = round(time.perf_counter() - t0, 2)
        _write_record(stage_dir, {"key": key, "complete": True, "summary": summary, "seconds": seconds,
                                  "digests": cache, "files": _written(stage_dir)})
        log(f"[{stage}] done in {seconds:.1f}s: " + ", ".join(f"{k}={_short(v)}" for k, v in summary.items()))
        report["stages"][stage] = {"skipped": False, "summary": summary, "seconds": seconds}
    _write_report(out_dir, report)
    return report


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{…}"
    return str(v)


def _write_report(out_dir: Path, report: dict) -> None:
    lines = ["# gristmill pipeline report", "", f"Output folder: `{out_dir}`", ""]
    for stage, r in report["stages"].items():
        lines.append(f"## {stage}" + (" (up to date, skipped)" if r["skipped"] else f" ({r['seconds']} s)"))
        lines.extend(f"- {k}: {_short(v)}" for k, v in r["summary"].items() if not isinstance(v, dict))
        lines.append("")
    for name, text in (("report.json", json.dumps(report, indent=2, default=str)), ("report.md", "\n".join(lines))):
        write_atomic(out_dir / name, text)


# ---- quickstart -----------------------------------------------------------------------------


def quickstart_config(out_dir: PathLike, *, tiny: bool = False) -> dict:
    """The quickstart's pipeline: the shipped tinyshakespeare corpus to a sampled model.

    ``tiny`` shrinks every stage so the whole flow runs in well under a minute (for tests).
    """
    corpus = Path(str(resources.files("gristmill").joinpath("data", "tinyshakespeare.txt")))
    steps = 30 if tiny else 300
    return {
        "out_dir": str(out_dir),
        "inputs": [str(corpus)],
        "prep": {"preset": "none", "txt_mode": "paragraphs", "dedup": {"exact": True}},
        "tokenizer": {"vocab_size": 512 if tiny else 2048, "pattern": "gpt2"},
        "tokenize": {"shard_size": 1_000_000, "val_fraction": 0.05},
        "train": {
            "model": "tiny", "max_steps": steps, "batch_size": 8 if tiny else 16,
            "seq_len": 64 if tiny else 128, "eval_interval": max(10, steps // 6),
            "eval_batches": 4, "warmup_steps": max(2, steps // 20), "lr": 3e-3, "min_lr": 3e-4, "seed": 1337,
            "n_layer": 2 if tiny else 4, "n_head": 2 if tiny else 4, "n_embd": 64 if tiny else 128,
        },
        # Prompt and new tokens fit in the model's context (seq_len): a prompt has at most
        # as many tokens as bytes.
        "sample": {"prompts": ["ROMEO:", "First Citizen:\n"], "max_new_tokens": 40 if tiny else 110,
                   "temperature": 0.8, "top_k": 50, "seed": 1337},
    }


def quickstart(out_dir: Optional[PathLike] = None, *, tiny: bool = False, progress: bool = True) -> Path:
    """Runs the quickstart pipeline and prints where everything went."""
    out = Path(out_dir or "gristmill-quickstart").resolve()
    report = run(quickstart_config(out, tiny=tiny), progress=progress)
    print(f"\nEverything is in {out}:")
    print(f"  report     {out / 'report.md'}")
    print(f"  loss plot  {out / 'train' / 'loss.png'}")
    print(f"  samples    {out / 'sample' / 'samples.txt'}")
    samples = out / "sample" / "samples.txt"
    if samples.exists():
        print("\n" + samples.read_text(encoding="utf-8"))
    sys.stdout.flush()
    return Path(report["out_dir"])
