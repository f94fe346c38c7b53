"""Corpus preparation: the filter + dedup pipeline over documents.

The per-document work (cleaning, quality filters, dedup) runs in the Rust core; reading and
writing documents is :mod:`gristmill.documents`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gristmill.config import check_keys, read_config_file
from gristmill.documents import (  # noqa: F401  (Document, InputFormatError, read_documents: re-exported)
    Document,
    DocumentWriter,
    InputFormatError,
    PathLike,
    batched,
    is_hf_dataset,
    read_documents,
)
from gristmill.outputs import MARKER, check_apart, claim, remove_own, shard_names
from gristmill.progress import progress_bar
from gristmill.storage import UrlPath, as_path, write_atomic, write_json_atomic

# ---- the filter pipeline --------------------------------------------------------------------

PRESETS = ("c4", "c4-datatrove", "gopher", "fineweb", "none")


def _badwords_list(path: PathLike | None) -> list[str]:
    if path is None:
        from importlib import resources

        text = resources.files("gristmill").joinpath("data", "ldnoobw-en.txt").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    return [w.strip() for w in text.splitlines() if w.strip()]


def preset_filters(preset: str) -> list[dict[str, Any]]:
    """The filters of a preset, as ``{"type": ..., "name": ..., ...parameters}`` dicts.

    - ``c4``: the C4 rules as published with the dataset (TFDS ``c4_utils``): pages over
      190,000 characters, the line and page rules, then the bad-words list (LDNOOBW, English).
    - ``c4-datatrove``: datatrove's ``C4QualityFilter`` defaults (3 words per line, 5 sentences,
      ``'`` also ends a line, words counted before citations are removed).
    - ``gopher``: Gopher repetition then quality filters.
    - ``fineweb``: the FineWeb recipe: English only (whatlang confidence >= 0.65, where FineWeb
      used fastText score >= 0.65), Gopher repetition and quality, C4 rules without the
      terminal-punctuation rule, then the FineWeb filter.
    - ``none``: no filter.

    >>> [f["name"] for f in preset_filters("c4")]
    ['max_length', 'c4', 'badwords']
    """
    if preset == "c4":
        return [
            {"type": "max_length", "name": "max_length", "max_chars": 190_000},
            {"type": "c4", "name": "c4"},
            {"type": "badwords", "name": "badwords"},
        ]
    if preset == "c4-datatrove":
        return [
            {
                "type": "c4", "name": "c4", "end_marks": ".?!\"'", "min_words_per_line": 3,
                "min_num_sentences": 5, "count_words_before_citations": True,
            }
        ]
    if preset == "gopher":
        return [
            {"type": "gopher_repetition", "name": "gopher_repetition"},
            {"type": "gopher_quality", "name": "gopher_quality"},
        ]
    if preset == "fineweb":
        return [
            {"type": "language", "name": "language", "languages": ["eng"], "min_score": 0.65},
            {"type": "gopher_repetition", "name": "gopher_repetition"},
            {"type": "gopher_quality", "name": "gopher_quality"},
            {
                "type": "c4", "name": "c4", "end_marks": ".?!\"'", "min_words_per_line": 3,
                "min_num_sentences": 5, "count_words_before_citations": True,
                "filter_no_terminal_punct": False,
            },
            {"type": "fineweb", "name": "fineweb"},
        ]
    if preset == "none":
        return []
    raise ValueError(f"unknown preset {preset!r} (expected one of {', '.join(PRESETS)})")


@dataclass
class PrepConfig:
    """How ``prep`` reads, filters and writes a corpus.

    Filters come from ``preset`` (see :func:`preset_filters`), or from ``filters`` when given;
    ``params`` overrides parameters by filter name (``{"c4": {"min_words_per_line": 3}}``),
    ``disable`` switches filters off by name, ``normalize`` puts Unicode NFC and whitespace
    clean-up first. ``dedup`` is the hook for deduplication after filtering (off by default).

    >>> PrepConfig(preset="c4", disable=["badwords"]).filter_names()
    ['max_length', 'c4']
    """

    preset: str = "c4"
    filters: list[dict[str, Any]] | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    disable: list[str] = field(default_factory=list)
    normalize: bool = False
    badwords_file: str | None = None
    text_field: str = "text"
    id_field: str = "id"
    txt_mode: str = "file"
    output_format: str = "jsonl.zst"
    docs_per_shard: int = 100_000
    batch_size: int = 2_000
    keep_removed: bool = False
    skip_bad: bool = False
    examples_per_rule: int = 3
    dedup: dict[str, Any] | None = None

    @classmethod
    def from_file(cls, path: PathLike, **overrides: Any) -> PrepConfig:
        """Reads a TOML, YAML or JSON file whose keys are the fields of this class.

        Raises:
            ValueError: for unknown keys or an unreadable file (naming the file).
        """
        data = read_config_file(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> PrepConfig:
        check_keys(data, [f.name for f in dataclasses.fields(cls)], source)
        return cls(**data)

    def filter_specs(self) -> list[dict[str, Any]]:
        """The resolved filter list passed to the Rust pipeline."""
        specs = [dict(f) for f in (self.filters if self.filters is not None else preset_filters(self.preset))]
        for spec in specs:
            spec.setdefault("name", spec.get("type"))
        if self.normalize and not any(s["type"] == "normalize" for s in specs):
            specs.insert(0, {"type": "normalize", "name": "normalize"})
        names = [s["name"] for s in specs]
        for name in list(self.params) + list(self.disable):
            if name not in names:
                raise ValueError(f"no filter named {name!r} (filters: {names})")
        specs = [s for s in specs if s["name"] not in self.disable]
        for spec in specs:
            spec.update(self.params.get(spec["name"], {}))
            if spec["type"] == "badwords" and "words" not in spec:
                spec["words"] = _badwords_list(spec.pop("file", None) or self.badwords_file)
        return specs

    def filter_names(self) -> list[str]:
        return [s["name"] for s in self.filter_specs()]


class FilterPipeline:
    """The Rust filter pipeline for a configuration; applies filters to batches of texts.

    >>> FilterPipeline(PrepConfig(preset="none", normalize=True)).apply(["a\\u00a0b"])[0]
    'a b'
    """

    def __init__(self, config: PrepConfig):
        from gristmill import _core

        self.specs = config.filter_specs()
        self._core = _core.TextPipeline(json.dumps(self.specs))
        self.names: list[str] = list(self._core.names)

    def apply(self, texts: list[str]) -> list[None | str | tuple[str, str]]:
        """Per text: None (kept as is), the new text (kept, changed) or (filter, rule) (removed)."""
        return self._core.apply_batch(texts)[0]

    def apply_with_stats(self, texts: list[str]) -> tuple[list[Any], list[dict[str, Any]]]:
        outcomes, stats = self._core.apply_batch(texts)
        return outcomes, json.loads(stats)


def sort_outcomes(
    docs: list[Document], outcomes: list[Any], counts: dict[str, Any], examples_per_rule: int,
    earlier_examples: dict[str, list] | None = None,
) -> tuple[list[Document], list[Document]]:
    """Splits a filtered batch (``FilterPipeline.apply`` outcomes) into the kept documents, with
    their text replaced where a filter changed it, and the removed ones, with ``removed_by`` and
    ``removed_rule`` metadata. Adds to ``counts`` the documents and bytes in and out, and up to
    ``examples_per_rule`` removed examples per rule (counting those in ``earlier_examples``).
    Both engines account for their batches with it."""
    kept, removed = [], []
    earlier = earlier_examples or {}
    for doc, outcome in zip(docs, outcomes):
        nbytes = len(doc.text.encode("utf-8"))
        counts["docs_in"] += 1
        counts["bytes_in"] += nbytes
        if isinstance(outcome, tuple):
            filt, rule = outcome
            key = f"{filt}/{rule}"
            ex = counts["examples"].setdefault(key, [])
            if len(ex) + len(earlier.get(key, ())) < examples_per_rule:
                ex.append({"id": doc.id, "text": doc.text[:500]})
            meta = {**doc.metadata, "removed_by": filt, "removed_rule": rule}
            removed.append(Document(doc.id, doc.text, meta))
            continue
        if outcome is not None:
            doc = Document(doc.id, outcome, doc.metadata)
            nbytes = len(outcome.encode("utf-8"))
        counts["docs_out"] += 1
        counts["bytes_out"] += nbytes
        kept.append(doc)
    return kept, removed


def add_stats(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if key == "rules":
            rules = total.setdefault("rules", {})
            for rule, counts in value.items():
                acc = rules.setdefault(rule, {"docs": 0, "lines": 0, "bytes": 0})
                for k, v in counts.items():
                    acc[k] += v
        else:
            total[key] = total.get(key, 0) + value


def run_fingerprint(inputs: list[Any], config: PrepConfig, specs: list[dict[str, Any]]) -> str:
    """Identifies a run: the inputs (path, size, mtime) and every setting that shapes output."""
    described = []
    for p in inputs:
        if is_hf_dataset(p):
            described.append(["dataset", getattr(p, "_fingerprint", None) or repr(p)])
            continue
        path = as_path(p)
        if isinstance(path, UrlPath):
            files = path.files(recursive=True) if path.is_dir() else [path]
        else:
            files = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
        for q in files:
            st = q.stat() if q.exists() else None
            described.append([str(q.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None])
    settings = dataclasses.asdict(config)
    settings.pop("examples_per_rule", None)
    blob = json.dumps([described, settings, specs], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


_KEPT, _REMOVED = shard_names("docs"), shard_names("removed")


def owned_files(rel: str) -> bool:
    """The rule for which files of a prep output folder are prep's own (see
    :mod:`gristmill.outputs`): kept shards, ``removed/`` shards, state, reports, and the
    ``deduped/`` folder's dedup output; ``rel`` is relative to the folder."""
    if rel in (PrepRun.STATE, "report.json", "report.html"):
        return True
    top, _, rest = rel.partition("/")
    if top == "removed":
        return _REMOVED.fullmatch(rest) is not None
    if top == "deduped":
        return rest == MARKER or _dedup_owns()(rest)
    return _KEPT.fullmatch(rel) is not None


@functools.lru_cache(maxsize=None)
def _dedup_owns() -> Any:
    from gristmill.dedup import owned_files

    return owned_files()


class PrepRun:
    """The state of one ``prep`` run, checkpointed after every finished output shard so that a
    rerun can skip the input it already covered (see ``prep``).

    Takes the output folder (:func:`gristmill.outputs.claim`): a new or empty one, or one prep
    wrote, holding nothing but prep's files; with ``overwrite``, the files of a run with other
    inputs or settings are removed (only those)."""

    STATE = "prep-state.json"

    def __init__(self, out_dir: Path, fingerprint: str, names: list[str], overwrite: bool):
        claim(out_dir, "prep", owned_files)
        self.path = out_dir / self.STATE
        fresh = {
            "fingerprint": fingerprint, "complete": False, "consumed": 0, "shards": 0,
            "removed_shards": 0, "docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0,
            "bad_records": [], "bad_count": 0, "filters": {n: {} for n in names}, "examples": {},
        }
        self.state = fresh
        if self.path.exists():
            old = json.loads(self.path.read_text("utf-8"))
            if old.get("fingerprint") == fingerprint:
                self.state = old
            elif not overwrite:
                raise ValueError(
                    f"{out_dir}/: holds the output of a prep run with other inputs or settings; "
                    "choose another folder, or pass overwrite=True (--overwrite) to replace it"
                )
            else:
                remove_own(out_dir, owned_files)
        self.resumed = self.state is not fresh and self.state["consumed"] > 0

    def save(self) -> None:
        write_json_atomic(self.path, self.state)


def _remove_stale_outputs(out: Path, fmt: str, state: dict[str, Any]) -> None:
    """Removes the shards a killed run of these settings wrote after its last checkpoint (those
    past the ones ``state`` counts) and temporary files: prep's own files only (the folder
    holds nothing else, see PrepRun)."""
    done = {f"docs-{i:05d}.{fmt}" for i in range(state["shards"])}
    done |= {f"removed/removed-{i:05d}.{fmt}" for i in range(state["removed_shards"])}

    def stale(rel: str) -> bool:
        top, _, rest = rel.partition("/")
        shard = _REMOVED.fullmatch(rest) if top == "removed" else _KEPT.fullmatch(rel)
        return shard is not None and rel not in done

    remove_own(out, stale)


def prep(
    inputs: PathLike | Iterable[Any] | Any,
    out_dir: PathLike,
    config: PrepConfig | None = None,
    *,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Cleans a corpus: reads documents, runs the filters, writes clean shards and a report.

    Documents stream through the Rust filters in batches (parallel, GIL released); memory
    stays bounded by ``batch_size`` and ``docs_per_shard``. A shard is closed at the end of
    the batch that brings it to ``docs_per_shard`` documents, so it may hold up to
    ``batch_size - 1`` more. Clean documents go to
    ``out_dir/docs-00000.jsonl.zst`` ... (or ``.parquet``), removed ones with ``keep_removed``
    to ``out_dir/removed/`` with fields ``removed_by`` and ``removed_rule``. The report
    (``out_dir/report.json``, plus ``report.html``) counts documents, bytes, and per filter
    the documents and lines removed by each rule.

    Resuming: after each finished output shard the run records how far it got
    (``prep-state.json``). Rerun with the same inputs and settings, it skips that input and
    continues, producing the same shards as an uninterrupted run; on a finished directory it
    returns the existing report.

    Args:
        inputs: files, directories, or Hugging Face datasets (see :func:`read_documents`).
        out_dir: the output directory (created).
        config: settings; defaults to ``PrepConfig()`` (the ``c4`` preset).
        progress: show a progress bar (tqdm) with documents/s and MB/s.
        overwrite: replace the output of a run with other inputs or settings (only prep's own
            files are removed).

    ``out_dir`` must be new or empty, or a folder prep wrote, and apart from the inputs (see
    :mod:`gristmill.outputs`).

    Returns:
        The report as a dict.

    Raises:
        InputFormatError: for a bad record, unless ``config.skip_bad``.
        ValueError: for a bad configuration, or an ``out_dir`` holding another run.
        OutputFolderError: an ``out_dir`` holding files prep did not write, or overlapping an
            input.

    >>> report = prep(["corpus.jsonl.zst"], "clean/", PrepConfig(preset="c4"))  # doctest: +SKIP
    >>> report["docs_out"], report["filters"]["c4"]["rules"]["too_few_sentences"]["docs"]  # doctest: +SKIP
    (1234, 56)
    """
    config = config or PrepConfig()
    if isinstance(inputs, (str, os.PathLike)) or is_hf_dataset(inputs):
        inputs = [inputs]
    inputs = list(inputs)
    out = Path(out_dir)
    check_apart(out, inputs)
    pipeline = FilterPipeline(config)
    run = PrepRun(out, run_fingerprint(inputs, config, pipeline.specs), pipeline.names, overwrite)
    st = run.state
    if st["complete"] and (out / "report.json").exists():
        return json.loads((out / "report.json").read_text("utf-8"))
    removed_dir = out / "removed"
    _remove_stale_outputs(out, config.output_format, st)

    # Shards are closed at batch ends (checkpoints), never inside a batch, so a checkpoint
    # covers whole batches and a rerun cuts the input at the same places.
    unbounded = sys.maxsize
    writer = DocumentWriter(out, "docs", unbounded, config.output_format, st["shards"])
    removed = (
        DocumentWriter(removed_dir, "removed", unbounded, config.output_format, st["removed_shards"])
        if config.keep_removed
        else None
    )
    bad_records: list[str] = []
    docs = read_documents(
        inputs, text_field=config.text_field, id_field=config.id_field, txt_mode=config.txt_mode,
        skip_bad=config.skip_bad, bad_records=bad_records,
    )
    docs = itertools.islice(docs, st["consumed"], None) if st["consumed"] else docs
    bar = progress_bar(progress, desc="prep", unit="doc", unit_scale=True, initial=st["consumed"])
    started = time.perf_counter()
    consumed = st["consumed"]
    # Records of the current, unfinished shard: everything before it is in the state.
    pending = {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "filters": {}, "examples": {}}
    pending_bad: list[str] = []

    def checkpoint() -> None:
        writer.flush()
        if removed is not None:
            removed.flush()
        for key in ("docs_in", "bytes_in", "docs_out", "bytes_out"):
            st[key] += pending[key]
            pending[key] = 0
        for name, stats in pending["filters"].items():
            add_stats(st["filters"].setdefault(name, {}), stats)
        pending["filters"] = {}
        for key, ex in pending["examples"].items():
            have = st["examples"].setdefault(key, [])
            have.extend(ex[: max(0, config.examples_per_rule - len(have))])
        pending["examples"] = {}
        st["bad_count"] = st.get("bad_count", 0) + len(pending_bad)
        st["bad_records"].extend(pending_bad[: max(0, 100 - len(st["bad_records"]))])
        pending_bad.clear()
        st.update(consumed=consumed, shards=writer.shard_index,
                  removed_shards=removed.shard_index if removed else 0)
        run.save()

    for batch in batched(docs, config.batch_size):
        texts = [d.text for d in batch]
        outcomes, stats = pipeline.apply_with_stats(texts)
        for name, s in zip(pipeline.names, stats):
            add_stats(pending["filters"].setdefault(name, {}), s)
        pending_bad.extend(bad_records)
        bad_records.clear()
        consumed += len(batch)
        kept, gone = sort_outcomes(batch, outcomes, pending, config.examples_per_rule, st["examples"])
        for doc in kept:
            writer.write(doc)
        for doc in gone if removed is not None else ():
            removed.write(doc)
        if writer.pending >= config.docs_per_shard or (
            removed is not None and removed.pending >= config.docs_per_shard
        ):
            checkpoint()
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix_str(f"{(st['bytes_in'] + pending['bytes_in']) / 1e6 / max(time.perf_counter() - started, 1e-9):.1f} MB/s")
    pending_bad.extend(bad_records)
    checkpoint()
    if bar is not None:
        bar.close()

    dedup_report = _deduplicate(out, config, progress) if config.dedup else None

    return finish_run(run, pipeline, config, out, removed_dir if removed else None,
                   time.perf_counter() - started, dedup_report)


def finish_run(run: PrepRun, pipeline: FilterPipeline, config: PrepConfig, out: Path,
            removed_dir: Path | None, seconds: float, dedup_report: dict[str, Any] | None,
            ) -> dict[str, Any]:
    """Writes the report (JSON and HTML) of a finished run, marks the run complete and
    returns the report (shared by the local and the Ray engine)."""
    report = _report(run.state, pipeline, config, out, removed_dir, seconds)
    if dedup_report is not None:
        report["dedup"] = dedup_report
        report["docs_final"] = dedup_report["documents_kept"]
    write_json_atomic(out / "report.json", report)
    _write_html_atomic(out / "report.html", report)
    run.state["complete"] = True
    run.save()
    return report


def _deduplicate(out: Path, config: PrepConfig, progress: bool) -> dict[str, Any]:
    """Deduplicates the clean shards into ``out/deduped/`` (``config.dedup`` holds
    :class:`gristmill.dedup.DedupConfig` fields); resumes like the filter stage."""
    from gristmill.dedup import DedupConfig, dedup

    files = sorted(out.glob(f"docs-*.{config.output_format}"))
    cfg = DedupConfig(**{"fmt": config.output_format, **config.dedup})
    return dedup(files, out / "deduped", cfg, progress=progress)


def clean_documents(prep_dir: PathLike) -> list[Path]:
    """The files holding the final documents of a ``prep`` output directory: the deduplicated
    shards when dedup ran, else the filtered ones."""
    prep_dir = Path(prep_dir)
    deduped = sorted((prep_dir / "deduped").glob("docs-*")) if (prep_dir / "deduped").is_dir() else []
    files = deduped or sorted(prep_dir.glob("docs-*"))
    if not files:
        raise FileNotFoundError(f"{prep_dir}: no docs-* shards; run gristmill prep first")
    return [f for f in files if not f.name.startswith(".")]


def _report(
    st: dict[str, Any], pipeline: FilterPipeline, config: PrepConfig, out: Path,
    removed_dir: Path | None, seconds: float,
) -> dict[str, Any]:
    def shards(directory: Path | None, prefix: str) -> list[str]:
        if directory is None or not directory.is_dir():
            return []
        return sorted(q.name for q in directory.iterdir() if q.name.startswith(f"{prefix}-") and not q.name.startswith("."))

    docs_removed = sum(st["filters"].get(n, {}).get("docs_removed", 0) for n in pipeline.names)
    return {
        "version": 1,
        "docs_in": st["docs_in"],
        "bytes_in": st["bytes_in"],
        "docs_out": st["docs_out"],
        "bytes_out": st["bytes_out"],
        "docs_removed": docs_removed,
        "bad_records": st.get("bad_count", 0),
        "bad_record_messages": st["bad_records"],
        "filters": {n: st["filters"].get(n, {}) for n in pipeline.names},
        "filter_specs": [{k: v for k, v in s.items() if k != "words"} for s in pipeline.specs],
        "examples": st["examples"],
        "shards": shards(out, "docs"),
        "removed_shards": shards(removed_dir, "removed"),
        "seconds_last_run": round(seconds, 3),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a terminal table: the funnel, then each filter's rules.

    >>> print(format_report({"docs_in": 2, "bytes_in": 10, "docs_out": 1, "bytes_out": 5,
    ...     "bad_records": 0, "filters": {"c4": {"docs_in": 2, "docs_removed": 1, "bytes_removed": 5,
    ...     "lines_removed": 0, "rules": {"too_few_sentences": {"docs": 1, "lines": 0, "bytes": 5}}}}}))
    ... # doctest: +NORMALIZE_WHITESPACE
    filter                             docs in   removed   lines removed   bytes removed
    c4                                       2         1               0               5
      too_few_sentences                                1               0               5
    kept: 1 of 2 documents (50.0%), 5 of 10 bytes (50.0%); bad records skipped: 0
    """
    rows = [f"{'filter':<32}{'docs in':>10}{'removed':>10}{'lines removed':>16}{'bytes removed':>16}"]
    for name, s in report["filters"].items():
        rows.append(
            f"{name:<32}{s.get('docs_in', 0):>10,}{s.get('docs_removed', 0):>10,}"
            f"{s.get('lines_removed', 0):>16,}{s.get('bytes_removed', 0) + sum(r['bytes'] for r in s.get('rules', {}).values() if r['lines']):>16,}"
        )
        for rule, r in sorted(s.get("rules", {}).items()):
            rows.append(f"  {rule:<30}{'':>10}{r['docs']:>10,}{r['lines']:>16,}{r['bytes']:>16,}")
    d_in, d_out = report["docs_in"], report["docs_out"]
    b_in, b_out = report["bytes_in"], report["bytes_out"]
    rows.append(
        f"kept: {d_out:,} of {d_in:,} documents ({100 * d_out / max(d_in, 1):.1f}%), "
        f"{b_out:,} of {b_in:,} bytes ({100 * b_out / max(b_in, 1):.1f}%); "
        f"bad records skipped: {report['bad_records']:,}"
    )
    return "\n".join(rows)


def _write_html_atomic(path: Path, report: dict[str, Any]) -> None:
    """A one-page HTML report: the funnel as bars, and a few removed examples per rule."""
    from html import escape

    total = max(report["docs_in"], 1)
    bars = []
    remaining = report["docs_in"]
    for name, s in report["filters"].items():
        width = 100 * remaining / total
        bars.append(
            f"<tr><td>{escape(name)}</td><td><div class=bar style='width:{width:.1f}%'></div></td>"
            f"<td>{remaining:,} in, {s.get('docs_removed', 0):,} removed</td></tr>"
        )
        remaining -= s.get("docs_removed", 0)
    bars.append(
        f"<tr><td><b>kept</b></td><td><div class=bar style='width:{100 * remaining / total:.1f}%'></div>"
        f"</td><td>{remaining:,} documents</td></tr>"
    )
    examples = []
    for key, items in sorted(report.get("examples", {}).items()):
        examples.append(f"<h3>{escape(key)}</h3>")
        for ex in items:
            examples.append(f"<p><b>{escape(str(ex['id']))}</b><pre>{escape(ex['text'])}</pre></p>")
    page = (
        "<!doctype html><meta charset=utf-8><title>gristmill prep report</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        ".bar{background:#4a7;height:1em}td{padding:2px 8px}td:nth-child(2){width:50%}"
        "pre{white-space:pre-wrap;background:#f4f4f4;padding:4px}</style>"
        "<h1>gristmill prep</h1><h2>Funnel</h2><table>" + "".join(bars) + "</table>"
        f"<pre>{escape(format_report(report))}</pre><h2>Removed examples</h2>" + "".join(examples)
    )
    write_atomic(path, page)
