"""Corpus deduplication: exact, C4-style lines, 3-sentence spans and MinHash LSH.

The hashing, indexes and decisions live in the Rust core (``rust/dedup``); this module reads
and writes documents around it. A run makes three passes, each resumable:

1. **scan**: documents are read in batches and hashed in parallel; index entries are buffered
   up to 7/8 of ``memory_limit`` and spilled to sorted run files in the work directory.
2. **resolve**: the runs are merged; exact groups, LSH buckets (clustered with union-find) and
   repeated lines and spans are found, and each removal is tied to the document it duplicates.
3. **apply**: the corpus is read again; kept documents (lines or spans cut where needed) go to
   ``<out>/docs-NNNNN.jsonl.zst``, removed ones to ``<out>/removed-NNNNN.jsonl.zst`` with the
   fields ``dedup_method`` and ``duplicate_of`` (the id of the document it duplicated), and
   the counts to ``<out>/dedup-report.json``.

Kill a run at any point and run it again with the same arguments: it continues from the last
checkpoint. Which copy is kept: the first in input order for exact, MinHash and span
duplicates; for a shared line, the document whose id hashes lowest (as C4 does with URLs).

**Memory.** ``memory_limit`` (M) bounds what every pass holds at once, whatever the corpus
size: the scan holds its index buffers (7/8 M, counted by capacity) and a batch of documents
(texts up to M/32); resolve holds one buffer of decisions or removals, one bit per document
and the MinHash union-find, within M together; apply holds a batch and the documents of the
shard being written (M/8: a shard ends after ``shard_docs`` input documents or once its kept
and removed documents hold M/8 bytes, whichever comes first, so a smaller limit gives more,
smaller shards; encoding one takes about twice that again). Batches hold at least 256 KiB
and shards 1 MiB, which only limits below ~8 MB feel. Peak RSS stays within
``M + RSS_OVERHEAD`` (64 MiB): the interpreter with numpy and the core (~40 MiB), the zstd
window of a compressed input (8 MiB at the usual levels), merge buffers (up to 8 MiB), file
buffers and thread stacks; ``benches/bench_dedup.py`` measures it. Not bounded by M: a
document larger than M/32 still goes whole (the peak grows by a few times the largest
document), and the union-find holds about 40 bytes per document in some MinHash candidate
pair, which only hundreds of millions of near-duplicates bring near a limit in the GB.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Union

from gristmill import _core
from gristmill._core import DedupError
from gristmill.documents import Document, DocumentWriter, PathLike, read_documents
from gristmill.outputs import MARKER, check_apart, claim, remove_own, shard_names
from gristmill.progress import progress_bar
from gristmill.storage import write_json_atomic

__all__ = [
    "DedupConfig",
    "DedupError",
    "collision_probability",
    "dedup",
    "minhash_signatures",
    "parse_size",
    "shingle_hashes",
]

REPORT_NAME = "dedup-report.json"
# Peak RSS of a run stays within memory_limit + this (see the module docs).
RSS_OVERHEAD = 64 << 20
_APPLY_STATE = "apply.json"
# Files the core and this module write into a work directory (removed after a finished run).
_WORK_FILES = re.compile(
    r"^(scan\.json|resolve\.json|apply\.json|(exact|bands|lines|spans)-\d+\.run"
    r"|(ids|sigs)-\d+\.bin|decisions\.run|removals\.run|\..*\.tmp(-\d+)?|\.(decisions|removals)-tmp-\d+\.run"
    r"|\.merge-.*\.run)$"
)
_CORE_FIELDS = (
    "exact", "exact_hash_bits", "minhash", "ngram", "bands", "rows", "seed", "permutations",
    "threshold", "fold_numbers", "lines", "spans", "span_sentences", "min_sentences", "min_words",
)


def parse_size(size: int | str) -> int:
    """Bytes in a size such as ``2GB``, ``512MiB``, ``100k`` or ``1_000_000``.

    Decimal units (k, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB, GiB) of 1024.

    >>> parse_size("2GB"), parse_size("1GiB"), parse_size(4096)
    (2000000000, 1073741824, 4096)
    >>> parse_size("lots")
    Traceback (most recent call last):
    ...
    ValueError: cannot read 'lots' as a size (examples: 2GB, 512MiB, 100000)
    """
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([\d_.]+)\s*([kmgt]?)(i?)b?\s*", size.lower())
    if not m:
        raise ValueError(f"cannot read {size!r} as a size (examples: 2GB, 512MiB, 100000)")
    number, unit, binary = m.groups()
    base = 1024 if binary else 1000
    return int(float(number.replace("_", "")) * base ** " kmgt".index(unit or " "))


@dataclass
class DedupConfig:
    """What to deduplicate, and the resources to do it with.

    The fields up to ``min_words`` decide the result (a work directory remembers them and
    refuses to resume under others); the rest only set memory, checkpoints and output shape.

    Args:
        exact: drop documents whose whitespace-folded, lower-cased text was seen before.
        minhash: drop near-duplicates found by MinHash LSH (one kept per cluster).
        lines: C4 line dedup: a line repeated across documents is kept in one only.
        spans: drop every 3-sentence span seen before (datatrove's sentence dedup).
        exact_hash_bits: 64 or 128 (xxh3).
        ngram: words per MinHash shingle.
        bands, rows: LSH bands and rows per band (FineWeb: 14 x 8, 112 permutations).
        seed: seed of the permutation parameters.
        permutations: explicit ``(a, b)`` parameters, ``bands * rows`` each, instead of seeded.
        threshold: when set, candidates merge only if their signatures estimate a Jaccard
            similarity at least this high.
        fold_numbers: shingle numbers as ``0`` (as datatrove and FineWeb do).
        span_sentences: sentences per span.
        min_sentences: a document cut by line or span dedup is dropped below this many.
        min_words: a document cut by span dedup is dropped below this many words.
        memory_limit: bytes (or a size like ``"2GB"``) of working memory of every pass: peak
            RSS stays within it plus ``RSS_OVERHEAD`` (see the module docs).
        checkpoint_docs: documents between checkpoints of the scan even below the limit.
        batch_size: documents handed to the core at once, at most; a batch also ends once
            its texts hold ``memory_limit / 32`` bytes.
        shard_docs: input documents per output shard at most (each shard is a resume point);
            a shard also ends once its documents hold ``memory_limit / 8`` bytes.
        fmt: output format, ``jsonl.zst``, ``jsonl`` or ``parquet``.

    >>> DedupConfig(bands=20, rows=5).num_perm
    100
    """

    exact: bool = True
    minhash: bool = True
    lines: bool = False
    spans: bool = False
    exact_hash_bits: int = 128
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1
    permutations: tuple[Sequence[int], Sequence[int]] | None = None
    threshold: float | None = None
    fold_numbers: bool = True
    span_sentences: int = 3
    min_sentences: int = 3
    min_words: int = 50
    memory_limit: int | str = "1GB"
    checkpoint_docs: int = 1_000_000
    batch_size: int = 1000
    shard_docs: int = 100_000
    fmt: str = "jsonl.zst"

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def core_dict(self) -> dict[str, Any]:
        """The fields that decide the result, as the core reads them."""
        d = {k: getattr(self, k) for k in _CORE_FIELDS}
        if d["permutations"] is not None:
            a, b = d["permutations"]
            d["permutations"] = [[int(x) for x in a], [int(x) for x in b]]
        return d

    def core_json(self) -> str:
        return json.dumps(self.core_dict())


def _default(cfg: DedupConfig | None, overrides: dict[str, Any]) -> DedupConfig:
    cfg = cfg or DedupConfig()
    if overrides:
        names = {f.name for f in fields(DedupConfig)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown DedupConfig fields: {sorted(unknown)}")
        cfg = DedupConfig(**{**asdict(cfg), **overrides})
    return cfg


def minhash_signatures(texts: Sequence[str], config: DedupConfig | None = None, **overrides):
    """MinHash signatures as a ``(len(texts), bands * rows)`` uint64 numpy array.

    Texts with fewer than ``ngram`` words get a row of ``2**64 - 1`` (no shingle).

    >>> minhash_signatures(["one two three four five six"]).shape
    (1, 112)
    """
    cfg = _default(config, overrides)
    return _core.minhash_signatures(list(texts), cfg.core_json())


def shingle_hashes(text: str, ngram: int = 5, fold_numbers: bool = True):
    """The uint64 shingle hashes of ``text`` (xxh64 of each run of ``ngram`` normalised words).

    >>> len(shingle_hashes("The cat sat on the mat today", ngram=5))
    3
    """
    return _core.shingle_hashes(text, ngram, fold_numbers)


def collision_probability(s: float, bands: int = 14, rows: int = 8) -> float:
    """Chance that two documents of Jaccard similarity ``s`` share an LSH band.

    >>> round(collision_probability(0.8), 3)
    0.924
    """
    return _core.lsh_collision_probability(s, bands, rows)


Source = Union[PathLike, Iterable[PathLike], Callable[[], Iterable[Document]]]


def _documents(inputs: Source, text_field: str, id_field: str) -> Iterator[Document]:
    if callable(inputs):
        return iter(inputs())
    return read_documents(inputs, text_field=text_field, id_field=id_field)


def owned_files(kept_prefix: str = "docs", removed_prefix: str = "removed") -> Callable[[str], bool]:
    """The rule for which files of a dedup output folder are dedup's own (see
    :mod:`gristmill.outputs`): its shards, report and default work directory."""
    shards = shard_names(kept_prefix, removed_prefix)

    def owns(rel: str) -> bool:
        work, _, name = rel.partition("/")
        if work == ".dedup-work" and "/" not in name:
            return _owns_work(name)
        return rel == REPORT_NAME or shards.fullmatch(rel) is not None

    return owns


def _owns_work(rel: str) -> bool:
    return rel == MARKER or _WORK_FILES.match(rel) is not None


def _shares(memory: int) -> tuple[int, int, int]:
    """How a run shares ``memory_limit``: bytes of the scan's index buffers, of the texts in
    one batch, and of the documents of the shards being written (see the module docs). Below
    a few MB the floors win (batches worth handing to threads, shards worth a file)."""
    batch = max(memory // 32, 256 << 10)
    return max(memory - 4 * batch, memory // 2, 1), batch, max(memory // 8, 1 << 20)


def _batches(docs: Iterable[Document], n: int, max_bytes: int) -> Iterator[list[Document]]:
    """Lists of up to ``n`` documents whose texts hold up to about ``max_bytes`` in memory
    (a list ends at the document that reaches it, so one huge document still goes)."""
    batch: list[Document] = []
    held = 0
    for doc in docs:
        batch.append(doc)
        held += sys.getsizeof(doc.text)
        if len(batch) >= n or held >= max_bytes:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def _end_shard(
    shard: tuple[DocumentWriter, DocumentWriter], state: dict[str, Any], docs_done: int, path: Path
) -> None:
    """Writes the kept and removed shards of the apply pass and checkpoints after them."""
    kept, removed = shard
    kept.close()
    removed.close()
    state["kept_files"] += [p.name for p in kept.paths]
    state["removed_files"] += [p.name for p in removed.paths]
    state["shards_done"] += 1
    state["docs_done"] = docs_done
    write_json_atomic(path, state)


def _clean_work_dir(work: Path) -> None:
    for p in work.iterdir():
        if p.is_file() and _owns_work(p.name):
            p.unlink()
    try:
        work.rmdir()
    except OSError:
        pass  # something of the user's is in there: leave it


def dedup(
    inputs: Source,
    out_dir: PathLike,
    config: DedupConfig | None = None,
    *,
    work_dir: PathLike | None = None,
    progress: bool = False,
    text_field: str = "text",
    id_field: str = "id",
    kept_prefix: str = "docs",
    removed_prefix: str = "removed",
    keep_work: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Deduplicates a corpus into ``out_dir`` and returns the report (also written there).

    Args:
        inputs: files or directories (as :func:`gristmill.prep.read_documents` reads them), or a
            zero-argument callable returning an iterable of :class:`Document` (called once per
            pass, so it must give the same documents in the same order each time).
        out_dir: receives ``<kept_prefix>-NNNNN.<fmt>`` (kept documents),
            ``<removed_prefix>-NNNNN.<fmt>`` (removed ones, with ``dedup_method`` and
            ``duplicate_of``) and ``dedup-report.json``.
        config: a :class:`DedupConfig` (default: exact + MinHash 14 x 8).
        work_dir: where indexes and checkpoints go (default ``<out_dir>/.dedup-work``); it
            needs roughly 400 bytes per document with MinHash on. Removed when the run
            finishes unless ``keep_work``.
        progress: show tqdm progress bars.
        text_field, id_field: record fields of the inputs.
        overwrite: replace the output (and work directory) of a run with another
            configuration; only the files dedup writes are removed.

    ``out_dir`` and a given ``work_dir`` must be new or empty folders, or ones this function
    wrote (see :mod:`gristmill.outputs`), and apart from the inputs.

    Returns:
        The report: document counts in and out, removals per method, lines and sentences cut,
        MinHash cluster statistics, how the index was spilled, output files and timings.

    Raises:
        DedupError: invalid configuration, an output or work directory made with another
            configuration, or input that changed between passes (the message names the document).
        OutputFolderError: an output or work folder holding other files, or overlapping an input.
        FileNotFoundError, InputFormatError: from reading the inputs.

    >>> report = dedup(["corpus.jsonl"], "out", DedupConfig(lines=True))  # doctest: +SKIP
    >>> report["removed"]  # doctest: +SKIP
    {'exact': 12, 'minhash': 40, 'lines': 3, 'spans': 0}
    """
    cfg = config or DedupConfig()
    if cfg.fmt not in ("jsonl.zst", "jsonl", "parquet"):
        raise ValueError(f"fmt must be jsonl.zst, jsonl or parquet, not {cfg.fmt!r}")
    memory = parse_size(cfg.memory_limit)
    out = Path(out_dir)
    work = Path(work_dir) if work_dir is not None else out / ".dedup-work"
    if not callable(inputs):
        inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)  # read twice
        check_apart(out, inputs)
        if work_dir is not None:
            check_apart(work, inputs)
    owns = owned_files(kept_prefix, removed_prefix)
    claim(out, "dedup", owns)

    def replace_earlier() -> None:  # --overwrite: only dedup's own files go
        remove_own(out, owns)
        if work.is_dir():
            _clean_work_dir(work)

    report_path = out / REPORT_NAME
    if report_path.exists():
        report = json.loads(report_path.read_text("utf-8"))
        if report.get("config") == cfg.core_dict():
            return report  # finished earlier
        if not overwrite:
            raise DedupError(
                f"{out}/: holds the result of a dedup run with another configuration; choose "
                "another folder, or pass overwrite=True (--overwrite) to replace it"
            )
        replace_earlier()
    claim(work, "dedup-work", _owns_work)
    timings: dict[str, float] = {}

    # ---- pass 1: scan -----------------------------------------------------------------
    t0 = time.perf_counter()
    index_bytes, batch_bytes, shard_bytes = _shares(memory)
    try:
        scanner = _core.DedupScanner(str(work), cfg.core_json(), index_bytes, cfg.checkpoint_docs)
    except DedupError as e:  # an interrupted run with another configuration
        if not overwrite or "different configuration" not in str(e):
            raise
        replace_earlier()
        claim(work, "dedup-work", _owns_work)
        scanner = _core.DedupScanner(str(work), cfg.core_json(), index_bytes, cfg.checkpoint_docs)
    if not scanner.finished:
        start = scanner.docs_done
        bar = progress_bar(progress, desc="dedup scan", initial=start, unit="doc")
        docs = islice(_documents(inputs, text_field, id_field), start, None)
        for batch in _batches(docs, cfg.batch_size, batch_bytes):
            scanner.add_batch(start, [d.id for d in batch], [d.text for d in batch])
            start += len(batch)
            if bar is not None:
                bar.update(len(batch))
        scanner.finish()
        if bar is not None:
            bar.close()
    timings["scan"] = time.perf_counter() - t0

    # ---- pass 2: resolve --------------------------------------------------------------
    t0 = time.perf_counter()
    resolved = json.loads(_core.dedup_resolve(str(work), memory))
    timings["resolve"] = time.perf_counter() - t0

    # ---- pass 3: apply ----------------------------------------------------------------
    t0 = time.perf_counter()
    state_path = work / _APPLY_STATE
    state: dict[str, Any] = (
        json.loads(state_path.read_text("utf-8"))
        if state_path.exists()
        else {
            "shard_docs": cfg.shard_docs,
            "shard_bytes": shard_bytes,
            "shards_done": 0,
            "docs_done": 0,
            "kept": 0,
            "removed": {"exact": 0, "minhash": 0, "lines": 0, "spans": 0},
            "changed": 0,
            "lines_cut": 0,
            "sentences_cut": 0,
            "kept_files": [],
            "removed_files": [],
        }
    )
    applier = _core.DedupApplier(str(work))
    total = applier.total
    # Shards end as the interrupted run cut them, if there was one (a state file from before
    # shards ended by bytes too has only whole shards of shard_docs).
    shard_docs = state["shard_docs"]
    shard_bytes = state.setdefault("shard_bytes", shard_bytes)
    start = state.setdefault("docs_done", state["shards_done"] * shard_docs)
    bar = progress_bar(progress, desc="dedup apply", total=total, initial=start, unit="doc")
    docs = islice(_documents(inputs, text_field, id_field), start, None)
    shard: tuple[DocumentWriter, DocumentWriter] | None = None  # kept, removed
    for batch in _batches(docs, cfg.batch_size, batch_bytes):
        results = applier.apply_batch(start, [d.id for d in batch], [d.text for d in batch])
        for doc, (action, new_text, method, dup_of, lines_cut, sents_cut) in zip(batch, results):
            if shard is None:
                index = state["shards_done"]
                shard = (
                    DocumentWriter(out, kept_prefix, shard_docs + 1, cfg.fmt, start_shard=index),
                    DocumentWriter(out, removed_prefix, shard_docs + 1, cfg.fmt, start_shard=index),
                )
            kept, removed = shard
            state["lines_cut"] += lines_cut
            state["sentences_cut"] += sents_cut
            if action == "keep":
                state["kept"] += 1
                if new_text is not None:
                    state["changed"] += 1
                    doc = Document(doc.id, new_text, doc.metadata)
                kept.write(doc)
            else:
                state["removed"][method] += 1
                meta = {**doc.metadata, "dedup_method": method, "duplicate_of": dup_of}
                removed.write(Document(doc.id, doc.text, meta))
            start += 1
            if (
                kept.pending + removed.pending >= shard_docs
                or kept.pending_bytes + removed.pending_bytes >= shard_bytes
            ):
                _end_shard(shard, state, start, state_path)
                shard = None
        if bar is not None:
            bar.update(len(batch))
    if shard is not None:
        _end_shard(shard, state, start, state_path)
    if bar is not None:
        bar.close()
    if start != total:
        raise DedupError(f"the input has {start} documents but the scan saw {total}")
    timings["apply"] = time.perf_counter() - t0

    removed_total = sum(state["removed"].values())
    report = {
        "documents_in": total,
        "documents_kept": state["kept"],
        "documents_removed": removed_total,
        "removed": state["removed"],
        "documents_changed": state["changed"],
        "lines_cut": state["lines_cut"],
        "sentences_cut": state["sentences_cut"],
        "minhash": {
            "bands": cfg.bands,
            "rows": cfg.rows,
            "clusters": resolved["minhash_clusters"],
            "clustered_documents": resolved["minhash_clustered_docs"],
            "shared_buckets": resolved["shared_buckets"],
            "candidate_pairs": resolved["candidate_pairs"],
            "rejected_pairs": resolved["rejected_pairs"],
        },
        "index": {
            "chunks": resolved["chunks"],
            "memory_spills": resolved["memory_spills"],
            "union_find_spilled": resolved.get("union_find_spilled", False),
            "runs_merged": resolved["runs_merged"],
            "memory_limit": memory,
        },
        "outputs": {"kept": state["kept_files"], "removed": state["removed_files"]},
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "config": cfg.core_dict(),
    }
    write_json_atomic(report_path, report)
    if not keep_work:
        _clean_work_dir(work)
    return report

