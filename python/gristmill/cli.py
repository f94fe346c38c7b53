"""The ``gristmill`` command: one sub-command per stage.

Each stage registers its sub-command in a small ``_add_<stage>`` function below; the work
itself lives in the stage's module, so the CLI stays a thin layer of argument parsing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import types
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Optional

from gristmill import __version__
from gristmill.defaults import SAMPLE, TOKENIZE, TOKENIZER
from gristmill.engines import ENGINES, run_stage

#: Optional packages: import name -> (what pip calls it, the extra that installs it). A name
#: not here is a base dependency (or a dependency of one); tests/test_cli.py checks this table
#: against pyproject.toml and every import under gristmill/.
OPTIONAL_PACKAGES = {
    "torch": ("torch", "train"),
    "safetensors": ("safetensors", "train"),
    "matplotlib": ("matplotlib", "train"),
    "yaml": ("pyyaml", "train"),
    "ray": ("ray", "ray"),
    "pyarrow": ("pyarrow", "prep"),  # parquet files and URLs
    "lm_eval": ("lm_eval", "eval"),  # gristmill.harness: the lm-evaluation-harness model
    "starlette": ("starlette", "serve"),  # gristmill serve: the HTTP app
    "uvicorn": ("uvicorn", "serve"),  # gristmill serve: the ASGI server
    "torchao": ("torchao", "quantize"),  # --quantize on CUDA: int8 / int4 weight-only kernels
}
_PACKAGE_NAMES = {"yaml": "pyyaml"}  # import name -> pip name, where they differ


def _load_tokenizer(spec: str):
    from gristmill.tokenizer import Tokenizer

    return Tokenizer.resolve(spec)


# ---- encode -------------------------------------------------------------------------------


def _add_encode(sub) -> None:
    p = sub.add_parser(
        "encode",
        help="encode text files to token ids (or count tokens)",
        description="Encode text with a tokenizer. With no FILE, encodes the small corpus "
        "shipped with gristmill and prints the token count, throughput and first ids.",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="UTF-8 text files ('-' for stdin)")
    p.add_argument(
        "--tokenizer", "-t", default="gpt2",
        help="built-in name (gpt2) or a saved tokenizer directory / .tiktoken / tokenizer.json",
    )
    p.add_argument("--count", action="store_true", help="print only the number of tokens per file")
    p.add_argument(
        "--allow-special", action="store_true",
        help="encode special-token text (<|endoftext|>) as the special token",
    )
    p.set_defaults(func=_run_encode)


def _run_encode(args) -> int:
    tok = _load_tokenizer(args.tokenizer)
    special = {"allowed_special": "all"} if args.allow_special else {"disallowed_special": ()}
    if not args.files:
        text = resources.files("gristmill").joinpath("data", "tinyshakespeare.txt").read_text("utf-8")
        tok.encode_ordinary(text[:1000])  # warm-up: builds the character tables
        t0 = time.perf_counter()
        ids = tok.encode(text, **special)
        dt = time.perf_counter() - t0
        mb = len(text.encode("utf-8")) / 1e6
        print(f"tokenizer:   {tok.name} (n_vocab {tok.n_vocab})")
        print(f"text:        tinyshakespeare.txt, {mb:.2f} MB (shipped with gristmill)")
        print(f"tokens:      {len(ids):,}")
        print(f"throughput:  {mb / dt:.1f} MB/s, {len(ids) / dt / 1e6:.2f} M tokens/s (one thread)")
        print(f"first ids:   {ids[:16]}")
        return 0
    for name in args.files:
        text = sys.stdin.read() if name == "-" else Path(name).read_text("utf-8")
        if args.count:
            print(f"{tok.count(text, **special)}\t{name}")
        else:
            print(" ".join(map(str, tok.encode(text, **special))))
    return 0


# ---- decode -------------------------------------------------------------------------------


def _add_decode(sub) -> None:
    p = sub.add_parser("decode", help="decode token ids (whitespace-separated) to text")
    p.add_argument("ids", nargs="*", help="token ids; read from stdin when none are given")
    p.add_argument("--tokenizer", "-t", default="gpt2")
    p.set_defaults(func=_run_decode)


def _run_decode(args) -> int:
    tok = _load_tokenizer(args.tokenizer)
    ids = []
    for word in args.ids or sys.stdin.read().split():
        try:
            ids.append(int(word))
        except ValueError:
            raise ValueError(f"{word!r} is not a token id; expected whitespace-separated "
                             "integers") from None
    sys.stdout.write(tok.decode(ids))
    return 0


# ---- train --------------------------------------------------------------------------------


def _add_train(sub) -> None:
    from gristmill.config import add_config_arguments

    p = sub.add_parser(
        "train",
        help="train a GPT on token shards (torchrun --nproc-per-node N -m gristmill train ...)",
        description="Train a GPT-2 model on a shard dataset. Settings come from the defaults, "
        "then CONFIG (TOML/YAML), then --key=value flags; each is checked. Continues from the "
        "last checkpoint in --out_dir when there is one.",
    )
    p.add_argument("config_file", nargs="?", metavar="CONFIG", help="TOML/YAML/JSON settings")
    add_config_arguments(p)
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from gristmill.config import overrides_from_args
    from gristmill.train import train

    result = train(config_file=args.config_file, **overrides_from_args(args))
    if result["checkpoint"]:
        print(f"done at step {result['step']}: checkpoint {result['checkpoint']}")
    return 0


# ---- plan ---------------------------------------------------------------------------------

_PLAN_QUANTITIES = ("params", "tokens", "flops", "gpu_hours", "dollars")


def _add_plan(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="size a training run: parameters, tokens, FLOPs, GPU hours, dollars",
        description="Give any two of --params, --tokens and a compute budget (--flops, "
        "--gpu-hours or --dollars), or one of them and --tokens-per-param (one alone: "
        "Chinchilla's 20 tokens per parameter); prints the rest (C = 6 N D), the "
        "compute-optimal point for the same FLOPs, and the preset, batch, steps and learning "
        "rate a gristmill run would use. Numbers take k, M, B, T suffixes (124M, 1.4T).",
    )
    for name in _PLAN_QUANTITIES:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="N")
    p.add_argument("--tokens-per-param", dest="tokens_per_param", metavar="R",
                   help="tokens per parameter (Chinchilla-optimal: 20)")
    p.add_argument("--gpu", help="hardware for the peak bf16 FLOP/s [H100]")
    p.add_argument("--peak-flops", dest="peak_flops", metavar="F",
                   help="peak FLOP/s of one GPU (instead of --gpu's)")
    p.add_argument("--mfu", metavar="U", help="model FLOPs utilisation reached [0.4]")
    p.add_argument("--gpus", metavar="K", help="GPUs at once, for the wall-clock time [1]")
    p.add_argument("--price", metavar="USD", help="dollars per GPU hour")
    p.add_argument("--seq-len", dest="seq_len", metavar="T",
                   help="context length [the preset's]")
    p.add_argument("--vocab-size", dest="vocab_size", metavar="V",
                   help="vocabulary, for parameter counts [50257]")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_run_plan)


def _run_plan(args) -> int:
    import json

    from gristmill.planner import format_quantity, parse_quantity, plan

    kw = {}
    for name in (*_PLAN_QUANTITIES, "tokens_per_param", "peak_flops", "mfu", "price"):
        if getattr(args, name) is not None:
            kw[name] = parse_quantity(getattr(args, name), "--" + name.replace("_", "-"))
    for name in ("gpus", "seq_len", "vocab_size"):
        if getattr(args, name) is not None:
            value = parse_quantity(getattr(args, name), "--" + name.replace("_", "-"))
            if not value.is_integer():
                raise ValueError(f"--{name.replace('_', '-')}: expected a whole number, got "
                                 f"{getattr(args, name)!r}")
            kw[name] = int(value)
    if args.gpu is not None:
        kw["gpu"] = args.gpu
    p = plan(**kw)
    if args.json:
        print(json.dumps({**p.to_dict(), "train_flags": p.train_flags()}, indent=2))
        return 0
    q = format_quantity
    print(f"gristmill plan: C = 6 N D, {p.gpu if 'peak_flops' not in kw else 'a GPU'} at "
          f"{p.peak_flops / 1e12:g} TFLOP/s bf16, MFU {p.mfu:.0%}")
    print(f"  parameters       {q(p.params)}")
    print(f"  tokens           {q(p.tokens)} ({p.tokens_per_param:.3g} per parameter)")
    print(f"  compute          {p.flops:.3g} FLOPs")
    print(f"  GPU hours        {p.gpu_hours:,.3g}" + (f" ({p.hours:,.3g} h on {p.gpus} GPUs)"
                                                       if p.gpus > 1 else ""))
    if p.dollars is not None:
        print(f"  cost             ${p.dollars:,.2f} at ${p.price:g} per GPU hour")
    print(f"  compute-optimal  {q(p.optimal_params)} parameters on {q(p.optimal_tokens)} tokens "
          "(Hoffmann et al. 2022: 20 tokens per parameter)")
    near = 2 / 3 <= p.preset_params / p.params <= 1.5
    s = p.shape
    print(f"  model            preset {p.preset} ({q(p.preset_params)} parameters)" if near else
          f"  model            n_layer={s['n_layer']} n_embd={s['n_embd']} n_head={s['n_head']} "
          f"({q(s['params'])} parameters; nearest preset {p.preset}, {q(p.preset_params)})")
    print(f"  batch            {p.tokens_per_step:,} tokens per step "
          f"({p.tokens_per_step // p.seq_len} x {p.seq_len}), {p.steps:,} steps")
    print(f"  learning rate    {p.lr:.3g} (GPT-3's Table 2.1 for this size; AdamW)")
    print(f"  train with       gristmill train --data=DIR {' '.join(p.train_flags())}")
    return 0


# ---- tokenize -----------------------------------------------------------------------------


def _add_tokenize(sub) -> None:
    p = sub.add_parser(
        "tokenize",
        help="encode documents into llm.c-compatible token shards",
        description="Encode documents (jsonl[.gz|.zst], parquet, txt; files or directories) in "
        "parallel into fixed-size token shards with a manifest. Rerunning a killed run resumes "
        "from its last complete shard.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or directories of documents")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the dataset directory")
    p.add_argument(
        "--tokenizer", "-t", default=TOKENIZE["tokenizer"],
        help="built-in name (gpt2) or a saved tokenizer directory / .tiktoken / tokenizer.json",
    )
    p.add_argument("--shard-size", type=int, default=TOKENIZE["shard_size"], metavar="N",
                   help="tokens per shard")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-fraction", type=float, default=TOKENIZE["val_fraction"], metavar="F",
                     help="fraction of documents for the val split, spread evenly")
    val.add_argument("--val-docs", type=int, default=None, metavar="N",
                     help="the first N documents go to the val split")
    p.add_argument("--text-field", default=TOKENIZE["text_field"],
                   help="the text's field in jsonl/parquet records")
    p.add_argument("--eot", choices=("append", "prepend"), default=TOKENIZE["eot"],
                   help="put end-of-text after each document or before it (llm.c)")
    p.add_argument("--txt-mode", choices=("file", "paragraphs"), default=TOKENIZE["txt_mode"],
                   help=".txt inputs: one document per file, or per blank-line-separated block")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_engine_args(p)
    p.set_defaults(func=_run_tokenize)


def _run_tokenize(args) -> int:
    import json


    tok = _load_tokenizer(args.tokenizer)
    t0 = time.perf_counter()
    settings = {"shard_size": args.shard_size, "val_fraction": args.val_fraction, "val_docs": args.val_docs,
                "eot": args.eot, "text_field": args.text_field, "txt_mode": args.txt_mode,
                "progress": not args.quiet}
    # Paths, not documents: JSON lines are then read and parsed by the core beside the encoder.
    inputs = args.inputs if args.engine == "ray" else [Path(p) for p in args.inputs]
    manifest = run_stage("tokenize", inputs, args.output, tok, engine=args.engine,
                         address=args.address, **settings)
    dt = time.perf_counter() - t0
    m = json.loads(Path(manifest).read_text("utf-8"))
    for name, split in m["splits"].items():
        print(f"{name:5s}  {split['tokens']:>14,} tokens  {split['documents']:>10,} documents  "
              f"{len(split['shards'])} shards")
    print(f"wrote {manifest} ({m['dtype']}, tokenizer {m['tokenizer']['name']}) in {dt:.1f}s")
    return 0


# ---- prep ---------------------------------------------------------------------------------


def _parse_value(text: str):
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _add_prep(sub) -> None:
    p = sub.add_parser(
        "prep",
        help="clean a corpus: C4 / Gopher / FineWeb filters, with a report",
        description="Read documents (.txt, .jsonl[.gz|.zst], .parquet, directories), run the "
        "filters of a preset in the Rust core, and write clean jsonl.zst or parquet shards, "
        "report.json and report.html to DIR. A killed run rerun with the same arguments "
        "resumes where it stopped.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or directories")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--preset", choices=["c4", "c4-datatrove", "gopher", "fineweb", "none"],
                   help="filter preset (default c4)")
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file of PrepConfig settings")
    p.add_argument("--set", action="append", default=[], metavar="FILTER.PARAM=VALUE",
                   help="set a filter parameter, e.g. c4.min_words_per_line=3 (JSON values)")
    p.add_argument("--disable", action="append", default=[], metavar="FILTER",
                   help="switch a filter off by name (repeatable)")
    p.add_argument("--normalize", action="store_true", default=None,
                   help="apply Unicode NFC and whitespace clean-up first")
    p.add_argument("--badwords-file", metavar="FILE", help="bad-words list (default: LDNOOBW en)")
    p.add_argument("--text-field", help="field holding the text (default text)")
    p.add_argument("--id-field", help="field holding the id (default id)")
    p.add_argument("--txt-mode", choices=["file", "paragraphs"], help="one document per .txt file or per paragraph")
    p.add_argument("--format", dest="output_format", choices=["jsonl.zst", "jsonl", "parquet"])
    p.add_argument("--docs-per-shard", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--keep-removed", action="store_true", default=None,
                   help="also write removed documents with the reason (DIR/removed/)")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="skip bad records (counted in the report) instead of stopping")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output of a run with other inputs or settings (only prep's own files)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_engine_args(p)
    p.set_defaults(func=_run_prep)


def _add_engine_args(p) -> None:
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local (default), or ray: the same result computed with Ray Data "
                   "(needs pip install 'gristmill[ray]')")
    p.add_argument("--address", metavar="ADDR",
                   help="with --engine ray: the Ray cluster to join (default: start a local one)")


def _run_prep(args) -> int:
    from gristmill.prep import PrepConfig, format_report

    settings = {
        key: getattr(args, key)
        for key in ("preset", "normalize", "badwords_file", "text_field", "id_field", "txt_mode",
                    "output_format", "docs_per_shard", "batch_size", "keep_removed", "skip_bad")
        if getattr(args, key) is not None
    }
    config = PrepConfig.from_file(args.config, **settings) if args.config else PrepConfig.from_dict(settings)
    for item in args.set:
        target, sep, value = item.partition("=")
        name, dot, param = target.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set {item!r}: expected FILTER.PARAM=VALUE")
        config.params.setdefault(name, {})[param] = _parse_value(value)
    config.disable.extend(args.disable)
    report = run_stage("prep", args.inputs, args.output, config, engine=args.engine,
                       address=args.address, progress=not args.no_progress,
                       overwrite=args.overwrite)
    print(format_report(report))
    print(f"wrote {len(report['shards'])} shard(s), report.json and report.html to {args.output}")
    return 0


# ---- dedup --------------------------------------------------------------------------------


def _add_dedup(sub) -> None:
    p = sub.add_parser(
        "dedup",
        help="remove exact, line, span and near-duplicate (MinHash) duplicates",
        description="Deduplicate documents into DIR: kept documents in docs-NNNNN shards, removed "
        "ones (with dedup_method and duplicate_of) in removed-NNNNN shards, counts in "
        "dedup-report.json. With no method flag: --exact --minhash. Rerun the same command to "
        "resume an interrupted run.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".jsonl[.gz|.zst], .parquet, .txt or directories")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--exact", action="store_true", help="exact duplicates (normalised text hash)")
    p.add_argument("--lines", action="store_true", help="C4 line dedup: a shared line kept in one document")
    p.add_argument("--spans", action="store_true", help="3-sentence span dedup (datatrove style)")
    p.add_argument("--minhash", action="store_true", help="near-duplicates by MinHash LSH")
    from gristmill.dedup import DedupConfig as D  # its defaults are the command's

    p.add_argument("--bands", type=int, default=D.bands, help="LSH bands")
    p.add_argument("--rows", type=int, default=D.rows, help="rows per band")
    p.add_argument("--ngram", type=int, default=D.ngram, help="words per shingle")
    p.add_argument("--seed", type=int, default=D.seed, help="seed of the MinHash permutations")
    p.add_argument(
        "--threshold", type=float, default=None,
        help="also require this Jaccard similarity (estimated from signatures) for a merge",
    )
    p.add_argument("--memory-limit", default=D.memory_limit, help="working memory of every pass; peak RSS is about this + 64 MB")
    p.add_argument("--work-dir", default=None, help="indexes and checkpoints (default DIR/.dedup-work)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output of a run with another configuration (only dedup's own files)")
    p.add_argument("--format", default=D.fmt, choices=("jsonl.zst", "jsonl", "parquet"), help="output format")
    p.add_argument("--text-field", default="text", help="field holding the text")
    p.add_argument("--id-field", default="id", help="field holding the id")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_engine_args(p)
    p.set_defaults(func=_run_dedup)


def _run_dedup(args) -> int:
    from gristmill.dedup import DedupConfig

    methods = {m: getattr(args, m) for m in ("exact", "lines", "spans", "minhash")}
    if not any(methods.values()):
        methods.update(exact=True, minhash=True)
    config = DedupConfig(
        **methods, bands=args.bands, rows=args.rows, ngram=args.ngram, seed=args.seed,
        threshold=args.threshold, memory_limit=args.memory_limit, fmt=args.format,
    )
    work_dir = {"work_dir": args.work_dir} if args.work_dir else {}  # the local engine's
    report = run_stage(
        "dedup", args.inputs, args.output, config, engine=args.engine, address=args.address,
        progress=not args.no_progress, text_field=args.text_field, id_field=args.id_field,
        overwrite=args.overwrite, **work_dir,
    )
    removed = ", ".join(f"{k} {v:,}" for k, v in report["removed"].items() if v) or "none"
    print(f"documents:  {report['documents_in']:,} in, {report['documents_kept']:,} kept")
    print(f"removed:    {report['documents_removed']:,} ({removed})")
    if methods["lines"] or methods["spans"]:
        print(
            f"cut:        {report['lines_cut']:,} lines, {report['sentences_cut']:,} sentences "
            f"from {report['documents_changed']:,} kept documents"
        )
    print(f"report:     {Path(args.output) / 'dedup-report.json'}")
    return 0


# ---- tokenizer ----------------------------------------------------------------------------


def _add_tokenizer(sub) -> None:
    p = sub.add_parser("tokenizer", help="train byte-level BPE tokenizers")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    t = tsub.add_parser(
        "train",
        help="train a byte-level BPE tokenizer on text files",
        description="Train a byte-level BPE tokenizer (tiktoken-exact ids) on FILES: .txt "
        "(one UTF-8 document each), .jsonl[.gz|.zst] or .parquet (the --text-field of each "
        "record), or directories of them. Writes tokenizer.tiktoken, tokenizer.json (HF "
        "tokenizers) and tokenizer_config.json to DIR.",
    )
    t.add_argument("files", nargs="+", metavar="FILE", help="input files or directories")
    t.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    t.add_argument("--vocab-size", type=int, default=TOKENIZER["vocab_size"],
                   help="ids in all: 256 bytes + merges + special tokens")
    t.add_argument("--pattern", default=TOKENIZER["pattern"],
                   help="pre-tokenizer: gpt2, cl100k, o200k or a regex")
    t.add_argument("--special-token", action="append", dest="special_tokens", metavar="TOKEN",
                   help="a special token (repeatable; default <|endoftext|>), ids after the merges")
    t.add_argument("--min-frequency", type=int, default=TOKENIZER["min_frequency"],
                   help="never merge pairs seen fewer times")
    t.add_argument("--text-field", default=TOKENIZER["text_field"],
                   help="text field of jsonl/parquet records")
    t.add_argument("--name", help="tokenizer name (default: the output directory's name)")
    t.add_argument("--overwrite", action="store_true",
                   help="write into a DIR holding other files, replacing only the tokenizer's three")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    t.set_defaults(func=_run_tokenizer_train)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _run_tokenizer_train(args) -> int:
    from gristmill.tokenizer import claim_save_folder
    from gristmill.tokenizer_train import format_stats, train_tokenizer

    out = Path(args.output)
    claim_save_folder(out, overwrite=args.overwrite, inputs=args.files)  # before training
    tok, stats = train_tokenizer(
        [Path(f) for f in args.files],
        args.vocab_size,
        args.pattern,
        args.special_tokens if args.special_tokens is not None else list(TOKENIZER["special_tokens"]),
        min_frequency=args.min_frequency,
        progress=not args.quiet,
        name=args.name or out.resolve().name,
        text_field=args.text_field,
    )
    tok.save(out, overwrite=args.overwrite)
    print(format_stats(stats, tok))
    print(f"saved:          {out}/ (tokenizer.tiktoken, tokenizer.json, tokenizer_config.json)")
    return 0



# ---- run / quickstart ------------------------------------------------------------------------


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a whole pipeline from a TOML config (prep, tokenizer, tokenize, train, sample)",
        description="Run every stage of a pipeline config, skipping stages whose outputs are "
        "complete and up to date and resuming interrupted ones. See gristmill.pipeline.",
    )
    p.add_argument("config", help="pipeline TOML file")
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_run)


def _run_run(args) -> int:
    from gristmill.pipeline import run

    report = run(args.config, force=args.force, progress=not args.no_progress)
    print(f"report: {report['out_dir']}/report.md")
    return 0


def _add_quickstart(sub) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole flow on the corpus shipped with gristmill, in a few minutes on a CPU",
        description="Clean the shipped tinyshakespeare corpus, train a tokenizer, write shards, "
        "train a small GPT and sample from it; prints each stage's figures and where the "
        "report, loss plot and samples are. Uses a GPU when there is one.",
    )
    p.add_argument("-o", "--out", default="gristmill-quickstart", help="output folder")
    p.add_argument("--tiny", action="store_true", help="a much smaller run (seconds; for tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_quickstart)


def _run_quickstart(args) -> int:
    from gristmill.pipeline import quickstart

    quickstart(args.out, tiny=args.tiny, progress=not args.no_progress)
    return 0


# ---- sample / eval ------------------------------------------------------------------------


def _model_args(p) -> None:
    p.add_argument("checkpoint", help="checkpoint dir, training out_dir (its best checkpoint), "
                   "or a Hugging Face GPT-2 directory")
    p.add_argument("--tokenizer", "-t", default=None,
                   help="default: the checkpoint's own copy (or GPT-2's for 50257 tokens)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="quantize the linear layers' weights (int4: CUDA only); a copy saved "
                   "by `gristmill quantize` is int8 without it")


def _load_for_inference(args):
    import torch

    from gristmill.checkpoint import load_model, tokenizer_for

    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype != "auto" else (
        "bfloat16" if device.startswith("cuda") else "float32")
    model = load_model(args.checkpoint)
    quantization = getattr(args, "quantize", None) or getattr(model, "quantization", None)
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    if quantization:
        from gristmill.quantize import quantize

        model = quantize(model, quantization)
    return model, tokenizer_for(args.checkpoint, model, args.tokenizer, required=False)


def _sampling_args(p) -> None:
    """The sampling flags of `sample` and `chat` (defaults: gristmill.defaults.SAMPLE)."""
    p.add_argument("--max-new-tokens", "-n", type=int, default=SAMPLE["max_new_tokens"], help="tokens to generate")
    p.add_argument("--temperature", type=float, default=SAMPLE["temperature"], help="0: greedy")
    p.add_argument("--top-k", type=int, default=SAMPLE["top_k"], help="keep the k most likely (0: off)")
    p.add_argument("--top-p", type=float, default=SAMPLE["top_p"], help="nucleus sampling")
    p.add_argument("--min-p", type=float, default=SAMPLE["min_p"], help="drop tokens below min-p x the top one")
    p.add_argument("--repetition-penalty", type=float, default=SAMPLE["repetition_penalty"], help=">1 discourages repeats")
    p.add_argument("--frequency-penalty", type=float, default=SAMPLE["frequency_penalty"], help="per earlier occurrence")
    p.add_argument("--presence-penalty", type=float, default=SAMPLE["presence_penalty"], help="once per token seen")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=SAMPLE["seed"], help="random seed (default: unseeded)")


def _sampling_config(args, **fields):
    """The SamplingConfig of the flags `_sampling_args` adds; ``fields`` set the others."""
    from gristmill.sample import SamplingConfig

    return SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
        stop_strings=tuple(args.stop), seed=args.seed, **fields)


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample", help="generate text from a checkpoint (streams as it goes)",
        description="Generate text with a KV cache: greedy (--temperature 0), sampling "
        "(temperature, top-k, top-p, min-p, penalties) or beam search (--num-beams).",
    )
    _model_args(p)
    p.add_argument("--prompt", "-p", action="append", default=None,
                   help="prompt text (repeat for a batch); default: end-of-text")
    p.add_argument("--prompt-file", type=Path, help="a file whose whole text is one prompt")
    _sampling_args(p)
    p.add_argument("--num-beams", type=int, default=SAMPLE["num_beams"], help="beam search when > 1")
    p.add_argument("--length-penalty", type=float, default=SAMPLE["length_penalty"], help="beam scores / length ** this")
    p.add_argument("--early-stopping", choices=["false", "true", "never"], default="false")
    p.add_argument("--num-samples", type=int, default=1, help="completions per prompt")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-stream", action="store_true", help="print each completion when done")
    p.set_defaults(func=_run_sample)


def _run_sample(args) -> int:
    import torch

    from gristmill.sample import TextStream, generate, generate_steps

    model, tok = _load_for_inference(args)
    if tok is None:
        raise ValueError(f"no tokenizer found with {args.checkpoint}; pass --tokenizer")
    texts = list(args.prompt or [])
    if args.prompt_file:
        texts.append(args.prompt_file.read_text("utf-8"))
    texts = texts or [""]
    early = {"false": False, "true": True, "never": "never"}[args.early_stopping]
    beams = args.num_beams > 1
    cfg = _sampling_config(
        args, num_beams=args.num_beams, length_penalty=args.length_penalty, early_stopping=early,
        num_return_sequences=args.num_samples if beams else 1)
    prompts = [tok.encode(t, allowed_special="all") or [tok.eot_token] for t in texts]
    room = model.config.block_size - max(map(len, prompts))
    if room < 1:
        raise ValueError(f"prompt longer than the model's block_size {model.config.block_size}")
    if cfg.max_new_tokens > room:
        print(f"note: max_new_tokens lowered to {room} (block_size "
              f"{model.config.block_size})", file=sys.stderr)
        cfg.max_new_tokens = room
    if args.compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    order = [(i, t) for i, t in enumerate(texts) for _ in range(1 if beams else args.num_samples)]
    stops = {tok.eot_token}
    t0, n_tokens = time.perf_counter(), 0
    if len(order) == 1 and not beams and not args.no_stream:
        stream = TextStream(tok, cfg.stop_strings)
        sys.stdout.write(texts[0])
        for tokens, _ in generate_steps(model, [prompts[0]], cfg, eot_token=tok.eot_token,
                                        token_bytes=tok.decode_single_token_bytes):
            n_tokens += 1
            if int(tokens[0]) in stops:
                break
            sys.stdout.write(stream.push(int(tokens[0])))
            sys.stdout.flush()
        sys.stdout.write(stream.flush() + "\n")
    else:
        outs = generate(model, [prompts[i] for i, _ in order], cfg, eot_token=tok.eot_token,
                        token_bytes=tok.decode_single_token_bytes)
        if beams:
            order = [(i, t) for i, t in enumerate(texts) for _ in range(cfg.num_return_sequences)]
        for k, ((_, text), out) in enumerate(zip(order, outs)):
            n_tokens += len(out)
            if out and out[-1] in stops:
                out = out[:-1]
            data = tok.decode_bytes(out)
            for s in cfg.stop_strings:
                data = data.split(s.encode("utf-8"))[0]
            if k:
                print("\n" + "-" * 40)
            print(text + data.decode("utf-8", errors="replace"))
    dt = time.perf_counter() - t0
    print(f"[{n_tokens} tokens in {dt:.2f} s: {n_tokens / dt:.1f} tok/s on "
          f"{next(model.parameters()).device}]", file=sys.stderr)
    return 0


def _add_chat(sub) -> None:
    p = sub.add_parser(
        "chat", help="talk to an instruction-tuned model in the terminal (streams replies)",
        description="A multi-turn conversation with an instruction-tuned model, in the prompt "
        "format its run recorded (alpaca when none). Each line you type is a message; the "
        "reply streams as it is generated and ends at end-of-text. When the conversation no "
        "longer fits the model's context, the oldest turns are dropped (a note says so). "
        "Commands: /reset forgets the conversation, /quit (or end of input) ends it.",
    )
    _model_args(p)
    p.add_argument("--system", default=None, metavar="TEXT",
                   help="replaces the prompt's first paragraph (default: the template's)")
    _sampling_args(p)
    p.set_defaults(func=_run_chat)


def _run_chat(args) -> int:
    from gristmill.chat import Chat, ChatError, run_template

    template, recorded = run_template(args.checkpoint)
    model, tok = _load_for_inference(args)
    if tok is None:
        raise ValueError(f"no tokenizer found with {args.checkpoint}; pass --tokenizer")
    chat = Chat(model, tok, _sampling_config(args), system=args.system, template=template)
    block = model.config.block_size
    interactive = sys.stdin.isatty()
    if not recorded:
        print(f"note: {args.checkpoint} records no prompt template; using {template}",
              file=sys.stderr)
    if interactive:
        print(f"chatting with {args.checkpoint} ({template} format, {block}-token context); "
              "/reset starts over, /quit ends", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            chat.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        if text.startswith("/") and " " not in text:
            print(f"unknown command {text}: /reset or /quit", file=sys.stderr)
            continue
        try:
            pieces = chat.reply(text)
        except ChatError as e:
            print(f"gristmill chat: {e}", file=sys.stderr)
            continue
        if chat.dropped:
            print(f"[dropped the {chat.dropped} oldest turn(s) to fit the model's {block}-token "
                  "context]", file=sys.stderr)
        if chat.shortened:
            print(f"[reply limited to {chat.shortened} tokens by the {block}-token context]",
                  file=sys.stderr)
        try:
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:  # stops this reply, not the chat
            pieces.close()
            print("\n[interrupted]", file=sys.stderr)
        sys.stdout.write("\n")
        sys.stdout.flush()


def _add_eval(sub) -> None:
    from gristmill.defaults import EVAL

    p = sub.add_parser(
        "eval", help="loss and bits per byte; multiple-choice tasks and suites (HellaSwag, CORE)",
        description="Evaluate a checkpoint. --data DIR (a shard dataset): loss and perplexity "
        "of its split. --data FILE (.txt, .jsonl[.gz|.zst], .parquet, or a folder of them): "
        "loss and bits per byte of the text, comparable across tokenizers. --task NAME --data "
        "FILE: a multiple-choice task (HellaSwag's JSONL or {context, choices, label} lines): "
        "acc and acc_norm. --suite FILE: the tasks a TOML file lists, with one score centred "
        "on random guessing. Tasks write report.json, report.md, report.png and "
        "predictions.jsonl to --out.",
    )
    _model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, metavar="PATH",
                     help="a shard dataset, documents (.txt, .jsonl[.gz|.zst], .parquet, a "
                     "folder), or with --task the task's JSONL")
    src.add_argument("--text", type=Path, help=argparse.SUPPRESS)  # the older name of --data FILE
    src.add_argument("--suite", type=Path, metavar="TOML", help="a suite of tasks (see "
                     "examples/eval/suite.toml)")
    p.add_argument("--task", metavar="NAME", help="score --data as a multiple-choice task "
                   "named NAME (e.g. hellaswag)")
    p.add_argument("--num-fewshot", type=int, default=EVAL["num_fewshot"],
                   help="--task: solved examples put before each question")
    p.add_argument("--limit", type=int, default=None, help="the first N examples of each task")
    p.add_argument("--truncate-context", action="store_true",
                   help="cut the start of contexts too long for the model (counted in the "
                   "report) instead of stopping")
    p.add_argument("-o", "--out", type=Path, default=None,
                   help="report folder for --task / --suite (default: eval-NAME)")
    p.add_argument("--batch-tokens", type=int, default=EVAL["batch_tokens"],
                   help="tasks: tokens per forward pass")
    p.add_argument("--split", default="val", help="a shard dataset's split")
    p.add_argument("--batch-size", type=int, default=EVAL["batch_size"],
                   help="loss: sequences per forward pass")
    p.add_argument("--seq-len", type=int, default=None, help="default: the model's block_size")
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from gristmill import eval as ev

    data = args.data or args.text
    if args.task and not data:
        raise ValueError("--task needs --data FILE (the task's JSONL)")
    if args.task and args.suite:
        raise ValueError("--task and --suite: give one (a suite names its own tasks)")
    model, tok = _load_for_inference(args)
    progress = not args.no_progress
    if args.task or args.suite:
        if tok is None:
            raise ValueError(f"no tokenizer found with {args.checkpoint}; pass --tokenizer")
        if args.suite:
            specs, name = ev.read_suite(args.suite), args.suite.stem
            inputs = [args.suite, *(Path(s.path) for s in specs)]
            for spec in specs:  # --limit caps every task of the suite
                spec.limit = min(filter(None, (spec.limit, args.limit)), default=None)
        else:
            specs = [ev.TaskSpec(args.task, str(data), num_fewshot=args.num_fewshot,
                                 limit=args.limit)]
            name, inputs = args.task, [data]
        tasks = [ev.prepare_task(s, tok, model.config.block_size,
                                 truncate_context=args.truncate_context) for s in specs]
        out = ev.claim_report(args.out or Path(f"eval-{name}"), inputs)  # before the scoring
        t0 = time.perf_counter()
        result = ev.score_tasks(model, tasks, batch_tokens=args.batch_tokens, progress=progress)
        dt = time.perf_counter() - t0
        ev.write_report(out, result, model=str(args.checkpoint), inputs=inputs)
        n = sum(t["examples"] for t in result["tasks"])
        print(ev.format_results(result), end="")
        print(f"{n:,} examples in {dt:.1f} s ({n / dt:,.1f}/s); wrote report.json, report.md, "
              f"report.png and predictions.jsonl to {out}")
        return 0
    r = ev.evaluate(model, data, tok, split=args.split, batch_size=args.batch_size,
                    seq_len=args.seq_len, max_batches=args.max_batches, progress=progress)
    bpb = f", {r['bits_per_byte']:.4f} bits/byte" if r["bits_per_byte"] is not None else ""
    counted = f"{r['tokens']:,} tokens" + (f", {r['bytes']:,} bytes" if r["bytes"] else "") + (
        f", {r['documents']:,} documents" if "documents" in r else "")
    print(f"loss {r['loss']:.4f} nats/token, perplexity {r['perplexity']:.3f}{bpb} ({counted})")
    return 0


# ---- finetune / classify ------------------------------------------------------------------


def _add_finetune(sub) -> None:
    from gristmill.config import FinetuneConfig, add_config_arguments

    p = sub.add_parser(
        "finetune", help="fine-tune a pretrained GPT: a classifier, or instruction following",
        description="Fine-tune a gristmill run or a Hugging Face GPT-2 folder (--model). "
        "Settings come from the defaults, then CONFIG (TOML/YAML/JSON), then --key=value flags. "
        "Continues from the last checkpoint in --out-dir when there is one.",
    )
    kinds = p.add_subparsers(dest="finetune_command", metavar="KIND", required=True)
    for kind, text in (("classify", "a classification head over labelled texts (TSV/CSV/"
                                    "JSONL); report with accuracy, per-label F1, confusion"),
                       ("instruct", "instruction following on Alpaca records or chat "
                                    "'messages' (loss on the responses); test responses")):
        k = kinds.add_parser(kind, help=text, description=text)
        k.add_argument("config_file", nargs="?", metavar="CONFIG", help="TOML/YAML/JSON settings")
        other = "instruct:" if kind == "classify" else "classify:"  # the other kind's keys
        add_config_arguments(k, FinetuneConfig, skip=(other,))
        k.set_defaults(func=_run_finetune)


def _run_finetune(args) -> int:
    from gristmill.config import FinetuneConfig, overrides_from_args
    from gristmill.finetune import finetune_classify, finetune_instruct

    run = finetune_classify if args.finetune_command == "classify" else finetune_instruct
    report = run(config_file=args.config_file, **overrides_from_args(args, FinetuneConfig))
    if os.environ.get("RANK", "0") != "0":  # under torchrun: rank 0 reports
        return 0
    for name in ("val", "test"):
        if isinstance(report.get(name), dict):
            r = report[name]
            f1 = ", ".join(f"{k} F1 {v['f1']:.3f}" for k, v in r["per_class"].items())
            print(f"{name}: accuracy {r['accuracy']:.2%}, loss {r['loss']:.4f} ({f1})")
    if report.get("val_loss") is not None:
        print(f"val loss {report['val_loss']:.4f}")
    if report.get("responses"):
        print(f"test responses: {report['responses']}")
    if report.get("judge"):
        j = report["judge"]
        mean = "-" if j["mean_score"] is None else f"{j['mean_score']:.1f}"
        print(f"judge {j['model']}: mean score {mean} ({j['scored']} of {j['of']} scored)")
    if report.get("adapter"):
        print(f"LoRA adapter (peft format): {report['adapter']}")
    out = Path(report["checkpoint"]).parent
    print(f"model: {report['checkpoint']}; report: {out / 'report.md'}")
    return 0


def _add_classify(sub) -> None:
    p = sub.add_parser(
        "classify", help="label texts with a classifier from `gristmill finetune classify`",
        description="Print the label (and its probability) of each TEXT, one per line; with no "
        "TEXT, of each line of stdin.")
    p.add_argument("checkpoint", help="a `finetune classify` run (its best checkpoint) or one "
                   "of its checkpoints")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_run_classify)


def _run_classify(args) -> int:
    from gristmill.finetune import Classifier

    clf = Classifier.load(args.checkpoint, device=None if args.device == "auto" else args.device)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    probs = clf.predict_proba(texts, args.batch_size)
    for text, row in zip(texts, probs):
        best = int(row.argmax())
        print(f"{clf.labels[best]}\t{row[best]:.3f}\t{text}")
    return 0


# ---- quantize / serve ---------------------------------------------------------------------


def _add_quantize(sub) -> None:
    p = sub.add_parser(
        "quantize", help="save an int8 copy of a model (loads with every command)",
        description="Write RUN's weights as int8 with per-channel scales (the token embedding "
        "too) to DIR, with its tokenizer and prompt template; sample, eval, chat and "
        "serve load DIR as an int8 model.")
    p.add_argument("checkpoint", metavar="RUN", help="checkpoint dir, training out_dir, or a "
                   "Hugging Face GPT-2 directory")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the copy's folder")
    p.add_argument("--mode", choices=["int8"], default="int8", help="weight format")
    p.set_defaults(func=_run_quantize)


def _run_quantize(args) -> int:
    from gristmill.checkpoint import WEIGHTS
    from gristmill.quantize import quantize_run

    out = quantize_run(args.checkpoint, args.output, args.mode)
    size = (Path(out) / WEIGHTS).stat().st_size
    print(f"wrote {out} ({args.mode}, {size / 1e6:.1f} MB of weights); e.g. gristmill sample "
          f"{out}")
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="an OpenAI-compatible HTTP server (and a chat page at /)",
        description="Serve a model over HTTP: /v1/completions, /v1/chat/completions (streaming "
        "with server-sent events), /v1/models, /health, and a chat page at /. Concurrent "
        "requests are decoded together in one batch (needs pip install 'gristmill[serve]').")
    _model_args(p)
    from gristmill.defaults import SERVE

    p.add_argument("--host", default=SERVE["host"], help="address to listen on")
    p.add_argument("--port", type=int, default=SERVE["port"])
    p.add_argument("--model-name", default=None, help="the model id clients name "
                   "(default: the folder's name)")
    p.add_argument("--max-batch", type=int, default=SERVE["max_batch"],
                   help="sequences decoded together")
    p.add_argument("--max-queue", type=int, default=SERVE["max_queue"],
                   help="requests waiting for a place in the batch before 503s")
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    from gristmill.chat import run_template
    from gristmill.serve import serve

    run_template(args.checkpoint)  # an unknown recorded template is refused before loading
    model, tok = _load_for_inference(args)
    if tok is None:
        raise ValueError(f"no tokenizer found with {args.checkpoint}; pass --tokenizer")
    name = args.model_name or Path(args.checkpoint).resolve().name
    print(f"serving {name} on http://{args.host}:{args.port}/ (chat page at /, API at /v1)",
          file=sys.stderr)
    serve(model, tok, name, host=args.host, port=args.port, max_batch=args.max_batch,
          max_queue=args.max_queue)
    return 0


class _ShowDefaults(argparse.HelpFormatter):
    """Adds "(default: X)" to each option's help, from the value argparse will use (which
    comes from gristmill.defaults or the stage's config), unless the help already says."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = action.option_strings and not (
            default is None or default is False or default is argparse.SUPPRESS)
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Every (sub-)command's parser: shows the defaults in --help, takes --debug."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _ShowDefaults)
        super().__init__(*args, **kwargs)
        # SUPPRESS: a sub-command's parser must not reset what `gristmill --debug CMD` set.
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show the traceback of an error (or set GRISTMILL_DEBUG=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gristmill",
        description="From raw web text to a trained GPT: prep, tokenizer, tokenize, train, sample.",
    )
    parser.add_argument("--version", action="version", version=f"gristmill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_encode(sub)
    _add_decode(sub)
    _add_tokenize(sub)
    _add_prep(sub)
    _add_dedup(sub)
    _add_train(sub)
    _add_plan(sub)
    _add_tokenizer(sub)
    _add_run(sub)
    _add_quickstart(sub)
    _add_sample(sub)
    _add_chat(sub)
    _add_eval(sub)
    _add_finetune(sub)
    _add_classify(sub)
    _add_quantize(sub)
    _add_serve(sub)
    return parser


# ---- errors -------------------------------------------------------------------------------

# What a user can cause (bad input, a missing file, a damaged checkpoint, a bad setting): the
# message is the whole story. The project's error types (InputFormatError, TokenizerError,
# ShardFormatError, DedupError, FilterConfigError) are ValueErrors; EOFError is a truncated
# stream; a training error is matched by name (importing gristmill.train needs torch). An
# ImportError the project raised itself (no module name) says what to install.
_USER_ERRORS = (OSError, ValueError, EOFError)
_USER_ERROR_NAMES = {"TrainingError", "SafetensorError"}


def missing_package_message(e: ModuleNotFoundError) -> str:
    """What to install for a missing module: the extra that brings it, else the package.

    >>> missing_package_message(ModuleNotFoundError(name="torch.nn"))
    "needs torch, which is not installed: pip install 'gristmill[train]'"
    """
    module = (e.name or "").split(".")[0]
    package, extra = OPTIONAL_PACKAGES.get(module, (_PACKAGE_NAMES.get(module, module), None))
    how = f"pip install 'gristmill[{extra}]'" if extra else f"pip install {package}"
    if module != e.name and isinstance(sys.modules.get(module), types.ModuleType):
        # The package is there but lacks a part (torch.distributed.fsdp in an old torch).
        return f"needs {e.name}, which this {package} lacks: {how.replace('install', 'install -U', 1)}"
    return f"needs {package}, which is not installed: {how}"


def _error_line(e: BaseException) -> str:
    """The one line that tells a user what went wrong and what to do."""
    if type(e).__name__.startswith("RayTaskError") and isinstance(getattr(e, "cause", None), Exception):
        e = e.cause  # raised in a Ray task: its text holds the remote traceback; the cause does not
    if isinstance(e, ModuleNotFoundError) and e.name and not e.name.startswith("gristmill"):
        return missing_package_message(e)
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        # "[Errno 2] No such file or directory: 'x'" as "x: No such file or directory"
        where = os.fsdecode(e.filename)
        if e.filename2 is not None:
            where += f" -> {os.fsdecode(e.filename2)}"
        return f"{where}: {e.strerror}"
    if isinstance(e, OSError) and e.strerror and not e.args[2:]:
        return e.strerror
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    if (isinstance(e, _USER_ERRORS) or type(e).__name__ in _USER_ERROR_NAMES
            or (isinstance(e, ImportError) and e.name is None)):
        return text or type(e).__name__
    # Not an error we expected anyone to cause: say so, and how to see where it came from.
    return (f"{type(e).__name__}: {text}" if text else type(e).__name__) + (
        " (unexpected: rerun with --debug for the traceback, and please report it)")


def _debug(args) -> bool:
    env = os.environ.get("GRISTMILL_DEBUG", "").strip().lower()
    return getattr(args, "debug", False) or env in ("1", "true", "yes", "on")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``gristmill`` command. Returns the exit status: 0, 1 for an error (one line on
    stderr: ``gristmill COMMAND: what, what to do``), 2 for usage, 130 when interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    command = " ".join(filter(None, (args.command, getattr(args, "tokenizer_command", None))))
    try:
        return args.func(args) or 0
    except BrokenPipeError:
        # `gristmill encode big.txt | head`: the reader has gone; nothing more to say.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (Exception, KeyboardInterrupt) as e:
        if _debug(args):
            raise
        from gristmill.progress import close_all

        close_all()  # a bar left mid-line would hide the start of the message
        if isinstance(e, KeyboardInterrupt):
            print(f"gristmill {command}: interrupted", file=sys.stderr)
            return 130
        print(f"gristmill {command}: {_error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
