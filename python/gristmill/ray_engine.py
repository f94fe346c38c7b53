"""The Ray Data engine: ``prep`` (filters, then exact and MinHash dedup) and ``tokenize`` as
distributed jobs.

Each stage is a Ray Data pipeline whose tasks call the same Rust core as the local engine,
so the result is the local result: the same documents kept and removed, the same
``duplicate_of``, the same report counts. What makes that hold on many machines:

- **Global order.** Every document gets an ordinal, ``file_index * 2**40 + record_index``
  (files in the order the local reader takes them), so "the first copy in input order",
  which the local engine keeps, is the smallest ordinal.
- **Filters** map over blocks of documents (``FilterPipeline.apply_with_stats``); each task
  writes its kept (and, with ``keep_removed``, removed) documents as one shard named after
  the block's first ordinal and returns its counts. Shards sort in input order.
- **Dedup** reads the filtered shards again, and tasks compute each document's exact hash
  and LSH band keys in the core (``_core.dedup_hash_keys``). Exact groups and LSH buckets
  are found in one groupby on a partition of the hash key (a hash shuffle: the only
  all-to-all stage, about 37 bytes per band key and 33 plus the id per exact key); inside a
  partition, rows are sorted by key and
  each group's smallest ordinal is its original. Buckets yield candidate edges
  (first member, other member); **union-find runs on the driver over the edges only**
  (``_core.dedup_union_find``, the core's union-find: the root of a cluster is its smallest
  ordinal, as in the local engine). A last map over the shards writes kept and removed
  documents, with the decisions broadcast to the tasks (an ordinal, a method and the
  original's id per removed document). Root ids come from one lookup map over the keys.
- **Fault tolerance.** Output names depend only on the block's first ordinal and are written
  under a temporary name then renamed, so a retried task (Ray retries tasks whose worker died,
  and here application errors too) overwrites its own shard; counts come from the successful
  attempts only, and shards no successful task reported are deleted at the end.

**Tokenize** (:func:`tokenize`) gives the local dataset byte for byte: tasks read and encode
blocks of documents in parallel (the core encoder) and return each block's flat tokens,
per-document offsets and ids; the driver consumes the blocks in input order (Ray Data's
``preserve_order``) and appends them to the core's ``DatasetWriter``
(``ShardWriter.add_encoded``), which does the shard layout, val split, indexes, manifest and
atomic writes as locally. Writing stays on the driver: fixed-size shards in input order are a
sequential layout (a document's place depends on every token before it); only tokens, about
2 bytes each and some 4x smaller than the text, cross the network; and appending runs at
memcpy and fsync speed, far above encoding. For very large corpora, tasks would write
per-block shard sets and a manifest merge would list them (short last shards per block, so
no longer byte-identical to the local engine). A rerun resumes from the writer's
``next_position``: files are counted (reading only) to start reading there.

Not on Ray (they raise ``NotImplementedError``): line and span dedup, MinHash with a
``threshold`` (its checks depend on the order buckets are visited), and Hugging Face datasets
as input. Inputs and outputs are paths every worker sees (local in one machine, a shared
filesystem across many), or URLs of a pyarrow filesystem (``s3://``, ``gs://``, ``hdfs://``,
``file://``; ``pyarrow.fs.FileSystem.from_uri``): input directories are listed and files read
through it; shards and reports are written under a temporary name then moved into place (``fs.move``),
a rename on local and HDFS filesystems and a copy then delete on object stores, so a final name
appears only once its file is complete. ``tokenize`` reads URLs but writes locally (its writer
is the core's).

Setting ``GRISTMILL_RAY_INJECT_FAILURE`` to ``raise:PATH`` or ``exit:PATH`` (or several,
comma-separated) makes the first filter or apply task that creates the marker file ``PATH``
fail (an exception, or the worker process exiting): the tests use it to show that a retried
task changes nothing.

>>> from gristmill.ray_engine import prep  # doctest: +SKIP
>>> report = prep(["raw/"], "clean/", PrepConfig(dedup={"minhash": True}))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.documents import (
    Document,
    DocumentWriter,
    PathLike,
    batched,
    document_files,
    is_hf_dataset,
    read_documents,
    shard_bytes,
)
from gristmill.outputs import check_apart, claim, remove_own, shard_names
from gristmill.prep import (
    FilterPipeline,
    PrepConfig,
    PrepRun,
    add_stats,
    finish_run,
    run_fingerprint,
    sort_outcomes,
)
from gristmill.storage import UrlPath, as_path, write_json_atomic

__all__ = ["INSTALL_HINT", "dedup", "init", "prep", "require_ray", "tokenize"]

INSTALL_HINT = "the Ray engine needs Ray: install it with: pip install 'gristmill[ray]'"
FAILURE_ENV = "GRISTMILL_RAY_INJECT_FAILURE"
_RECORD_BITS = 40  # records per file < 2**40; files < 2**23
# Ray retries a task whose worker died; errors raised in a task are retried too (the
# DataContext's map retries, Ray 2.60+; see _configure).
_RETRIES = 3


def require_ray():
    """The ``ray`` module, or an ImportError saying how to install it.

    Raises:
        ImportError: when Ray (with Ray Data) is not installed.

    >>> require_ray().__name__  # doctest: +SKIP
    'ray'
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return ray


def init(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connects to the Ray cluster at ``address``, or starts a local one when none is given;
    does nothing when Ray is already initialised in this process.

    Args:
        address: a cluster address (``ray://host:10001``, ``host:6379`` or ``auto``).
        num_cpus: CPUs of a local cluster (default: all).

    >>> init()  # doctest: +SKIP
    """
    ray = require_ray()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # One core thread per task: Ray runs one task per CPU already.
    env = {"env_vars": {"GRISTMILL_NUM_THREADS": os.environ.get("GRISTMILL_NUM_THREADS", "1")}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=False)


# ---- worker side ------------------------------------------------------------------------------

_CACHE: dict[str, Any] = {}


def _maybe_fail(injection: str | None) -> None:
    """Fails once per marker file: the first task to create it raises or exits. ``injection``
    is ``MODE:PATH[,MODE:PATH...]`` with MODE ``raise`` or ``exit``."""
    for item in (injection or "").split(","):
        mode, _, marker = item.partition(":")
        if not marker:
            continue
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        if mode == "exit":
            os._exit(1)
        raise RuntimeError(f"injected failure ({FAILURE_ENV}={item})")


def _shard_name(ordinal: int) -> str:
    return f"{ordinal >> _RECORD_BITS:05d}-{ordinal & ((1 << _RECORD_BITS) - 1):012d}"


class _NamedShard(DocumentWriter):
    """A DocumentWriter whose one shard has a fixed name (atomic: temp name, fsync, rename)."""

    def __init__(self, directory: Path, name: str, fmt: str):
        super().__init__(directory, name, sys.maxsize, fmt)

    def shard_path(self, index: int) -> Path:
        return self.directory / f"{self.prefix}.{self.fmt}"


def _write(directory: Path | UrlPath, name: str, fmt: str, docs: list[Document]) -> str | None:
    if not docs:
        return None
    if isinstance(directory, UrlPath):  # temp name, then fs.move (see UrlPath.write_atomic)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.{fmt}").write_atomic(shard_bytes(docs, fmt))
        return f"{name}.{fmt}"
    with _NamedShard(directory, name, fmt) as w:
        for d in docs:
            w.write(d)
    return f"{name}.{fmt}"


def _read_files(batch: dict[str, np.ndarray], *, fields: dict, block_docs: int):
    """Reads whole files into blocks of rows ``ordinal, id, text, meta, bad``. Bad-record
    messages ride on the block they were met in; a file ending in bad records gets a row
    with ``ordinal`` past its last document and ``is_doc`` false."""
    skips = batch["skip"] if "skip" in batch else np.zeros(len(batch["path"]), dtype=np.int64)
    for file_index, path, skip in zip(batch["file_index"], batch["path"], skips):
        base = int(file_index) << _RECORD_BITS
        bad: list[str] = []
        record = int(skip)  # records before it were written by an earlier run (tokenize)
        docs = itertools.islice(read_documents([str(path)], bad_records=bad, **fields), record, None)
        for chunk in batched(docs, block_docs):
            yield {
                "ordinal": np.arange(base + record, base + record + len(chunk), dtype=np.int64),
                "id": [d.id for d in chunk],
                "text": [d.text for d in chunk],
                "meta": [json.dumps(d.metadata, ensure_ascii=False, default=str) for d in chunk],
                "bad": [json.dumps(bad)] + [""] * (len(chunk) - 1),
                "is_doc": np.ones(len(chunk), dtype=bool),
            }
            bad.clear()
            record += len(chunk)
        if bad:
            yield {"ordinal": np.array([base + record], dtype=np.int64), "id": [""], "text": [""],
                   "meta": ["{}"], "bad": [json.dumps(bad)], "is_doc": np.zeros(1, dtype=bool)}


def _documents(batch: dict[str, np.ndarray]) -> list[Document]:
    keep = batch["is_doc"]
    return [
        Document(str(i), str(t), json.loads(m))
        for i, t, m in zip(batch["id"][keep], batch["text"][keep], batch["meta"][keep])
    ]


def _filter_block(batch: dict[str, np.ndarray], *, config: PrepConfig, out: str, injection: str | None):
    """Runs the filters over one block, writes its shards, returns one row of counts."""
    _maybe_fail(injection)
    key = json.dumps(config.filter_specs(), sort_keys=True)
    pipeline = _CACHE.get(key) or _CACHE.setdefault(key, FilterPipeline(config))
    name = _shard_name(int(batch["ordinal"][0]))
    counts: dict[str, Any] = {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0,
                              "filters": {}, "examples": {}, "ordinal": int(batch["ordinal"][0])}
    counts["bad"] = [m for b in batch["bad"] if b for m in json.loads(b)]
    kept, removed = [], []
    for docs in batched(_documents(batch), config.batch_size):
        outcomes, stats = pipeline.apply_with_stats([d.text for d in docs])
        for filter_name, s in zip(pipeline.names, stats):
            add_stats(counts["filters"].setdefault(filter_name, {}), s)
        more_kept, more_removed = sort_outcomes(docs, outcomes, counts, config.examples_per_rule)
        kept += more_kept
        removed += more_removed
    fmt = config.output_format
    counts["files"] = [_write(as_path(out), f"docs-{name}", fmt, kept)]
    if config.keep_removed:
        counts["removed_files"] = [_write(as_path(out) / "removed", f"removed-{name}", fmt, removed)]
    return {"counts": [json.dumps(counts)]}


def _hash_block(batch: dict[str, np.ndarray], *, config_json: str):
    """Exact hash and band keys of each document, with the partition of each key."""
    from gristmill import _core

    texts = [str(t) for t in batch["text"]]
    exact, bands, has_sig = _core.dedup_hash_keys(texts, config_json)
    return {
        "ordinal": batch["ordinal"], "id": batch["id"],
        "exact_hi": exact[:, 0], "exact_lo": exact[:, 1],
        "bands": bands, "has_sig": has_sig,
    }


_EXACT, _BAND = 0, 1


def _key_rows(batch: dict[str, np.ndarray], *, partitions: int, exact: bool, minhash: bool):
    """One row per exact key and per band key (``kind``, ``hi``, ``lo``, ``ordinal``, ``id``;
    ids only on exact rows), with the partition of the key: the input of the shuffle."""
    parts = []
    if exact:
        parts.append((np.full(len(batch["ordinal"]), _EXACT, np.int8), batch["exact_hi"],
                      batch["exact_lo"], batch["ordinal"], np.asarray(batch["id"], dtype=object)))
    if minhash:
        bands = batch["bands"][batch["has_sig"]]
        per_doc = bands.shape[1] // 2
        n = bands.shape[0] * per_doc
        parts.append((np.full(n, _BAND, np.int8), bands[:, 0::2].reshape(-1), bands[:, 1::2].reshape(-1),
                      np.repeat(batch["ordinal"][batch["has_sig"]], per_doc), np.full(n, "", dtype=object)))
    kind, hi, lo, ordinal, ids = (np.concatenate(c) for c in zip(*parts))
    return {"kind": kind, "hi": hi, "lo": lo, "ordinal": ordinal, "id": ids,
            "part": (hi % np.uint64(partitions)).astype(np.int64)}


def _group_starts(hi: np.ndarray, lo: np.ndarray, ordinal: np.ndarray):
    """Sorts rows by (key, ordinal); returns the order, whether each row starts a group,
    and the position of each row's group start."""
    order = np.lexsort((ordinal, lo, hi))
    hi, lo = hi[order], lo[order]
    start = np.ones(len(order), dtype=bool)
    start[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    first = np.maximum.accumulate(np.where(start, np.arange(len(order)), 0))
    return order, start, first


def _partition(group: dict[str, np.ndarray]):
    """One hash partition of the keys, grouped by key; a group's first document (smallest
    ordinal) is its original. Returns rows ``kind, a, b, id, opens``:

    - exact: ``b`` repeats ``a`` (its original), whose id is ``id``;
    - band: an edge from the bucket's first member ``a`` to a later member ``b``; ``opens``
      marks the first edge of each shared bucket.
    """
    out = {"kind": [], "a": [], "b": [], "id": [], "opens": []}
    for kind in (_EXACT, _BAND):
        rows = group["kind"] == kind
        if not rows.any():
            continue
        order, start, first = _group_starts(group["hi"][rows], group["lo"][rows], group["ordinal"][rows])
        ordinal, ids = group["ordinal"][rows][order], group["id"][rows][order]
        later = ~start
        out["kind"].append(np.full(int(later.sum()), kind, np.int8))
        out["a"].append(ordinal[first[later]])
        out["b"].append(ordinal[later])
        out["id"].append(ids[first[later]])
        out["opens"].append((later & np.concatenate([[False], start[:-1]]))[later])
    if not out["kind"]:
        return {"kind": np.zeros(0, np.int8), "a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64),
                "id": np.zeros(0, dtype=object), "opens": np.zeros(0, bool)}
    return {k: np.concatenate(v) for k, v in out.items()}


def _apply_block(batch: dict[str, np.ndarray], *, decisions_ref: list, out: str, fmt: str,
                 injection: str | None):
    """Writes the kept and removed documents of one block; returns one row of counts."""
    import ray

    _maybe_fail(injection)
    ref = decisions_ref[0]
    if _CACHE.get("decisions_ref") != ref.hex():
        _CACHE["decisions"] = ray.get(ref)
        _CACHE["decisions_ref"] = ref.hex()
    removed_ordinals, methods, dup_ids = _CACHE["decisions"]
    name = _shard_name(int(batch["ordinal"][0]))
    ordinals = batch["ordinal"][batch["is_doc"]]
    if len(removed_ordinals):
        pos = np.minimum(np.searchsorted(removed_ordinals, ordinals), len(removed_ordinals) - 1)
        hit = removed_ordinals[pos] == ordinals
    else:
        pos, hit = np.zeros(len(ordinals), dtype=np.int64), np.zeros(len(ordinals), dtype=bool)
    kept, removed = [], []
    counts = {"kept": 0, "removed": {"exact": 0, "minhash": 0, "lines": 0, "spans": 0}}
    for doc, is_dup, p in zip(_documents(batch), hit, pos):
        if not is_dup:
            kept.append(doc)
            counts["kept"] += 1
            continue
        method = str(methods[p])
        counts["removed"][method] += 1
        removed.append(Document(doc.id, doc.text, {**doc.metadata, "dedup_method": method,
                                                    "duplicate_of": str(dup_ids[p])}))
    counts["files"] = [_write(as_path(out), f"docs-{name}", fmt, kept)]
    counts["removed_files"] = [_write(as_path(out), f"removed-{name}", fmt, removed)]
    return {"counts": [json.dumps(counts)]}


# ---- driver side --------------------------------------------------------------------------------


def _input_files(inputs: Any) -> list[str]:
    if isinstance(inputs, (str, os.PathLike)) or is_hf_dataset(inputs):
        inputs = [inputs]
    files: list[str] = []
    for p in inputs:
        if is_hf_dataset(p):
            raise NotImplementedError("the Ray engine reads files and directories, not Hugging Face datasets")
        path = as_path(p)
        if path.is_dir():
            files.extend(str(q.resolve()) for q in document_files(path))
        elif path.exists():
            files.append(str(path.resolve()))
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return files


def _read(files: list[str], fields: dict, block_docs: int, first_file: int = 0, first_skip: int = 0):
    """Blocks of documents (see ``_read_files``), from record ``first_skip`` of file
    ``first_file`` on."""
    import ray

    items = [{"file_index": i, "path": f, "skip": first_skip if i == first_file else 0}
             for i, f in enumerate(files) if i >= first_file]
    # Reading asks for half a CPU: it is lighter than filtering, and different resources keep
    # Ray from fusing the read into the next task, so the blocks of one big file are
    # processed in parallel instead of in the task that reads it.
    items_ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # Ray merges a read task's small outputs into one big block per file; cut them again
    # (a streaming split, not a shuffle) so that one big file is processed by many tasks.
    return items_ds.map_batches(_read_files, batch_size=1, num_cpus=0.5,
                                fn_kwargs={"fields": fields, "block_docs": block_docs}
                                ).repartition(target_num_rows_per_block=block_docs)


def _configure(progress: bool) -> None:
    """Progress bars, and retries of tasks that raise (Ray retries dead workers' tasks itself)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.retried_map_errors = True
    ctx.max_map_retries = max(ctx.max_map_retries, _RETRIES)


def _counts(ds) -> list[dict[str, Any]]:
    rows = [json.loads(r["counts"]) for r in ds.take_all()]
    return sorted(rows, key=lambda r: r.get("ordinal", 0))


def _remove_unreported(directory: Path | UrlPath, prefix: str, reported: set[str]) -> None:
    """Deletes shards (and temp files) that no successful task reported: leftovers of failed
    attempts or of an earlier run. Only shard names in ``directory`` itself: the folder holds
    nothing else (it was claimed, see gristmill.outputs)."""
    shards = shard_names(prefix)
    remove_own(directory, lambda rel: shards.fullmatch(rel) is not None and rel not in reported)


def _check_dedup(cfg) -> None:
    if cfg.lines or cfg.spans:
        raise NotImplementedError(
            "line and span dedup do not run on the Ray engine yet; use engine='local' "
            "(gristmill prep/dedup without --engine ray) for them"
        )
    if cfg.minhash and cfg.threshold is not None:
        raise NotImplementedError(
            "MinHash with a Jaccard threshold does not run on the Ray engine yet (its checks depend "
            "on the order buckets are visited); leave threshold unset or use engine='local'"
        )


def dedup(
    inputs: Any,
    out_dir: PathLike,
    config: Any = None,
    *,
    address: str | None = None,
    text_field: str = "text",
    id_field: str = "id",
    partitions: int | None = None,
    block_docs: int = 2000,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Exact and MinHash dedup on Ray; the same decisions and report counts as
    :func:`gristmill.dedup.dedup` (see the module docstring for how).

    Args:
        inputs: files or directories every worker can read (paths or pyarrow filesystem URLs).
        out_dir: a path or pyarrow filesystem URL; receives ``docs-*`` (kept) and ``removed-*`` shards (with ``dedup_method`` and
            ``duplicate_of``) and ``dedup-report.json``.
        config: a :class:`gristmill.dedup.DedupConfig`.
        address: a Ray cluster to connect to; a local one is started when not given.
        partitions: hash partitions of the keys (default: from the cluster's CPUs and the
            number of keys, about 2M keys each).
        block_docs: documents per block (and per output shard at most).
        progress: show Ray Data's progress bars.
        overwrite: replace the output of a run with another configuration (only dedup's own
            files are removed).

    Returns:
        The report, with the keys of the local engine's.

    Raises:
        NotImplementedError: for line or span dedup, or a MinHash threshold.
        ImportError: when Ray is not installed.

    >>> dedup(["clean/"], "deduped/", DedupConfig())["removed"]  # doctest: +SKIP
    {'exact': 12, 'minhash': 40, 'lines': 0, 'spans': 0}
    """
    from gristmill import _core
    from gristmill.dedup import REPORT_NAME, DedupConfig, DedupError, owned_files, parse_size

    cfg = config or DedupConfig()
    _check_dedup(cfg)
    out = as_path(out_dir)
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) or is_hf_dataset(inputs) else list(inputs)
    check_apart(out, inputs)
    ray = require_ray()
    claim(out, "dedup", owned_files())
    if (out / REPORT_NAME).exists():  # finished earlier, as the local engine does
        report = json.loads((out / REPORT_NAME).read_text("utf-8"))
        if report.get("config") == cfg.core_dict():
            return report
        if not overwrite:
            raise DedupError(f"{out}/: holds the result of a dedup run with another configuration; "
                             "choose another folder, or pass overwrite=True (--overwrite) to replace it")
        remove_own(out, owned_files())
    init(address)
    _configure(progress)
    t0 = time.perf_counter()
    files = _input_files(inputs)
    injection = os.environ.get(FAILURE_ENV) or None
    fields = {"text_field": text_field, "id_field": id_field}
    cpus = int(ray.cluster_resources().get("CPU", 1))

    # Keys: one pass over the documents in the core; kept in the object store (24 bytes per
    # key plus ids), spilled to disk by Ray when large.
    keys = _read(files, fields, block_docs).map_batches(
        _hash_block, batch_size=None, fn_kwargs={"config_json": cfg.core_json()}).materialize()
    n_docs = keys.count()
    # Each partition is grouped in one task's memory: about 2M keys each.
    parts = partitions or max(2 * cpus, -(-n_docs * max(cfg.bands, 1) // 2_000_000))
    # One shuffle for both methods: every key goes to the partition of its hash.
    found = keys.map_batches(_key_rows, fn_kwargs={"partitions": parts, "exact": cfg.exact,
                                                   "minhash": cfg.minhash})
    found = found.groupby("part", num_partitions=parts).map_groups(_partition, batch_format="numpy")
    table = found.to_pandas()  # rows for duplicates only: exact copies and candidate edges
    empty = {"kind": np.int8, "a": np.uint64, "b": np.uint64, "id": object, "opens": bool}
    col = {c: table[c].to_numpy() if c in table else np.zeros(0, t) for c, t in empty.items()}
    removed: dict[int, tuple[str, str]] = {}  # ordinal -> (method, id of the original)
    is_exact = col["kind"] == _EXACT
    for dup, original_id in zip(col["b"][is_exact].tolist(), col["id"][is_exact].tolist()):
        removed[int(dup)] = ("exact", str(original_id))
    mh = {"clusters": 0, "clustered_documents": 0, "shared_buckets": 0, "candidate_pairs": 0, "rejected_pairs": 0}
    if cfg.minhash:
        a, b = (col[c][~is_exact].astype(np.uint64) for c in "ab")
        members, roots = _core.dedup_union_find(a, b)
        mh.update(clusters=int((members == roots).sum()), clustered_documents=len(members),
                  shared_buckets=int(col["opens"][~is_exact].sum()), candidate_pairs=len(a))
        later = [(int(m), int(r)) for m, r in zip(members, roots) if m != r and int(m) not in removed]
        root_ids = _ids_of(keys, np.unique(np.array([r for _, r in later], dtype=np.int64)))
        for m, r in later:
            removed[m] = ("minhash", root_ids[r])
    order = sorted(removed)
    decisions = (np.array(order, dtype=np.int64), np.array([removed[o][0] for o in order], dtype=object),
                 np.array([removed[o][1] for o in order], dtype=object))
    ref = ray.put(decisions)
    applied = _counts(_read(files, fields, block_docs).map_batches(
        _apply_block, batch_size=None,
        fn_kwargs={"decisions_ref": [ref], "out": str(out), "fmt": cfg.fmt, "injection": injection},
    ))
    kept_files = sorted(f for c in applied for f in c["files"] if f)
    removed_files = sorted(f for c in applied for f in c["removed_files"] if f)
    _remove_unreported(out, "docs", set(kept_files))
    _remove_unreported(out, "removed", set(removed_files))
    by_method = {"exact": 0, "minhash": 0, "lines": 0, "spans": 0}
    for c in applied:
        for k, v in c["removed"].items():
            by_method[k] += v
    kept = sum(c["kept"] for c in applied)
    report = {
        "documents_in": n_docs,
        "documents_kept": kept,
        "documents_removed": sum(by_method.values()),
        "removed": by_method,
        "documents_changed": 0,
        "lines_cut": 0,
        "sentences_cut": 0,
        "minhash": {"bands": cfg.bands, "rows": cfg.rows, **mh},
        "index": {"engine": "ray", "partitions": parts, "chunks": 0, "memory_spills": 0,
                  "runs_merged": 0, "memory_limit": parse_size(cfg.memory_limit)},
        "outputs": {"kept": kept_files, "removed": removed_files},
        "seconds": {"ray": round(time.perf_counter() - t0, 3)},
        "config": cfg.core_dict(),
    }
    if kept + report["documents_removed"] != n_docs:
        raise RuntimeError(f"Ray dedup lost documents: {n_docs} in, {kept} kept, {report['documents_removed']} removed")
    write_json_atomic(out / REPORT_NAME, report)
    return report


def _select_ids(batch: dict[str, np.ndarray], *, wanted: np.ndarray):
    hit = np.isin(batch["ordinal"], wanted)
    return {"ordinal": batch["ordinal"][hit], "id": batch["id"][hit]}


def _ids_of(keys, wanted: np.ndarray) -> dict[int, str]:
    """The ids of the documents ``wanted`` (cluster roots), looked up in the key table."""
    if len(wanted) == 0:
        return {}
    rows = keys.select_columns(["ordinal", "id"]).map_batches(_select_ids, fn_kwargs={"wanted": wanted}).take_all()
    return {int(r["ordinal"]): str(r["id"]) for r in rows}


def prep(
    inputs: Any,
    out_dir: PathLike,
    config: PrepConfig | None = None,
    *,
    address: str | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """:func:`gristmill.prep.prep` on Ray: the same filters, dedup, outputs and report.

    Shards are named by the ordinal of their block's first document
    (``docs-FFFFF-RRRRRRRRRRRR.jsonl.zst``: input file and record), one per block of
    ``config.batch_size`` documents, so they read back in input order. A finished directory
    returns its report; an unfinished one is redone (tasks overwrite their own shards).

    Args:
        inputs: files or directories every worker can read: paths, or URLs of a pyarrow
            filesystem (``s3://bucket/raw/``, ``gs://``, ``hdfs://``, ``file:///``).
        out_dir: output directory on storage every worker can write, a path or such a URL
            (shards are written under a temporary name then moved into place: on object
            stores a copy then delete, so a final name appears only once complete).
        config: as for the local engine; dedup without lines, spans or threshold.
        address: a Ray cluster to connect to; a local one is started when not given.
        progress: show Ray Data's progress bars.
        overwrite: replace the output of a run with other inputs or settings.

    Returns:
        The report (the keys of the local engine's).

    Raises:
        ImportError: when Ray is not installed.
        NotImplementedError: for dedup settings the Ray engine lacks.
        ValueError: for a bad configuration, an ``out_dir`` holding another run, or a URL
            whose filesystem pyarrow cannot open (the message names the URL).

    >>> prep(["raw/"], "clean/", PrepConfig(preset="c4"))["docs_out"]  # doctest: +SKIP
    1234
    """
    from gristmill.dedup import DedupConfig

    config = config or PrepConfig()
    dedup_cfg = DedupConfig(**{"fmt": config.output_format, **config.dedup}) if config.dedup else None
    if dedup_cfg is not None:
        _check_dedup(dedup_cfg)
    require_ray()
    out = as_path(out_dir)
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) or is_hf_dataset(inputs) else list(inputs)
    check_apart(out, inputs)
    files = _input_files(inputs)
    pipeline = FilterPipeline(config)
    run = PrepRun(out, run_fingerprint(list(files), config, pipeline.specs), pipeline.names, overwrite)
    if run.state["complete"] and (out / "report.json").exists():
        return json.loads((out / "report.json").read_text("utf-8"))
    init(address)
    _configure(progress)
    started = time.perf_counter()
    fields = {"text_field": config.text_field, "id_field": config.id_field,
              "txt_mode": config.txt_mode, "skip_bad": config.skip_bad}
    injection = os.environ.get(FAILURE_ENV) or None
    results = _counts(_read(files, fields, config.batch_size).map_batches(
        _filter_block, batch_size=None,
        fn_kwargs={"config": config, "out": str(out), "injection": injection},
    ))
    fmt = config.output_format
    _remove_unreported(out, "docs", {f for c in results for f in c["files"] if f})
    removed_dir = out / "removed"
    if config.keep_removed:
        _remove_unreported(removed_dir, "removed", {f for c in results for f in c["removed_files"] if f})
    st = run.state
    st.update(docs_in=0, bytes_in=0, docs_out=0, bytes_out=0, bad_records=[], bad_count=0,
              filters={n: {} for n in pipeline.names}, examples={})
    for c in results:  # in input order, so examples and messages are the first ones, as locally
        for key in ("docs_in", "bytes_in", "docs_out", "bytes_out"):
            st[key] += c[key]
        for name, stats in c["filters"].items():
            add_stats(st["filters"].setdefault(name, {}), stats)
        for key, ex in c["examples"].items():
            have = st["examples"].setdefault(key, [])
            have.extend(ex[: max(0, config.examples_per_rule - len(have))])
        st["bad_count"] += len(c["bad"])
        st["bad_records"].extend(c["bad"][: max(0, 100 - len(st["bad_records"]))])
    dedup_report = None
    if dedup_cfg is not None:
        shards = sorted(out.glob(f"docs-*.{fmt}"))
        dedup_report = dedup(shards, out / "deduped", dedup_cfg, block_docs=config.batch_size,
                             progress=progress)
    return finish_run(run, pipeline, config, out, removed_dir if config.keep_removed else None,
                   time.perf_counter() - started, dedup_report)


# ---- tokenize -----------------------------------------------------------------------------------


def _encode_block(batch: dict[str, np.ndarray], *, tokenizer_ref: list, injection: str | None):
    """Encodes one block of documents in the core; returns one row: the block's flat tokens
    (without end-of-text: the writer adds it), offsets and source ids, as bytes and JSON."""
    import ray

    _maybe_fail(injection)
    ref = tokenizer_ref[0]
    if _CACHE.get("tokenizer_ref") != ref.hex():
        _CACHE["tokenizer"] = ray.get(ref)
        _CACHE["tokenizer_ref"] = ref.hex()
    keep = batch["is_doc"]
    texts = [str(t) for t in batch["text"][keep]]
    tokens, offsets = _CACHE["tokenizer"].encode_batch_to_numpy(texts)
    return {
        "ordinal": batch["ordinal"][:1],
        "tokens": [tokens.tobytes()],
        "dtype": [tokens.dtype.str],
        "offsets": [offsets.astype(np.int64).tobytes()],
        "ids": [json.dumps([_valid_text(str(i)) for i in batch["id"][keep]])],
        "text_bytes": np.array([sum(len(t) for t in texts)], dtype=np.int64),
    }


def _valid_text(text: str) -> str:
    from gristmill.documents import replace_lone_surrogates

    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # lone surrogates: U+FFFD, as the local engine's ids get
        return replace_lone_surrogates(text)


def _count_file(batch: dict[str, np.ndarray], *, fields: dict):
    counts = [sum(1 for _ in read_documents([str(p)], **fields)) for p in batch["path"]]
    return {"file_index": batch["file_index"], "docs": np.array(counts, dtype=np.int64)}


def _locate(files: list[str], fields: dict, position: int) -> tuple[int, int]:
    """The file holding input document ``position`` and its record there (counting documents
    on Ray, reading only): where a resumed run starts reading."""
    import ray

    items = ray.data.from_items([{"file_index": i, "path": f} for i, f in enumerate(files)],
                                override_num_blocks=max(1, len(files)))
    rows = items.map_batches(_count_file, batch_size=1, num_cpus=0.5, fn_kwargs={"fields": fields}).take_all()
    counts = dict.fromkeys(range(len(files)), 0) | {int(r["file_index"]): int(r["docs"]) for r in rows}
    before = 0
    for i in range(len(files)):
        if before + counts[i] > position:
            return i, position - before
        before += counts[i]
    return len(files), 0  # the input is shorter than what was written: the writer says so


def _add_block(writer, ids: list[str], tokens: np.ndarray, offsets: np.ndarray) -> int:
    """Appends one encoded block to the dataset (the driver's only per-block work)."""
    return writer.add_encoded(ids, tokens, offsets)


def _tokenize_blocks(writer, tok, files: list[str], fields: dict, block_docs: int, progress: bool):
    """Encodes the input from the writer's ``next_position`` on, in Ray tasks, and appends
    the blocks to ``writer`` in input order; returns the progress bar (or None)."""
    import ray

    from gristmill.shards import tokenize_bar, tokenize_bar_update

    start = writer.next_position
    first_file, first_skip = _locate(files, fields, start) if start else (0, 0)
    bar = tokenize_bar(progress, start)
    if first_file >= len(files):
        return bar
    blocks = _read(files, fields, block_docs, first_file, first_skip).map_batches(
        _encode_block, batch_size=None,
        fn_kwargs={"tokenizer_ref": [ray.put(tok)], "injection": os.environ.get(FAILURE_ENV) or None},
    )
    last = -1
    for batch in blocks.iter_batches(batch_size=None, batch_format="numpy"):
        for k in range(len(batch["ordinal"])):
            ordinal = int(batch["ordinal"][k])
            if ordinal <= last:  # preserve_order guarantees it; positions depend on it
                raise RuntimeError(f"Ray returned block {ordinal} after block {last}")
            last = ordinal
            ids = json.loads(batch["ids"][k])
            tokens = np.frombuffer(batch["tokens"][k], dtype=np.dtype(str(batch["dtype"][k])))
            offsets = np.frombuffer(batch["offsets"][k], dtype=np.int64)
            written = _add_block(writer, ids, tokens, offsets)
            if bar is not None:
                tokenize_bar_update(bar, len(ids), int(batch["text_bytes"][k]), written)
    return bar


def tokenize(
    inputs: Any,
    out_dir: PathLike,
    tokenizer: Any,
    *,
    shard_size: int = 100_000_000,
    val_fraction: float = 0.0,
    val_docs: int | None = None,
    eot: str = "append",
    text_field: str = "text",
    txt_mode: str = "file",
    progress: bool = False,
    address: str | None = None,
    block_docs: int = 1000,
) -> Path:
    """:func:`gristmill.shards.write_shards` on Ray: the same dataset, byte for byte.

    Ray tasks read and encode blocks of ``block_docs`` documents in parallel (the core
    encoder); the driver takes the encoded blocks in input order and appends them to the
    core's dataset writer, which lays out the fixed-size shards, the val split, indexes and
    manifest as the local engine does. Writing stays on the driver because fixed-size shards
    in input order are a sequential layout (a shard's first token depends on every document
    before it), only tokens cross the network (about 2 bytes a token, some 4x less than the
    text), and appending is memcpy-and-fsync fast, far above encoding speed. A killed run
    rerun resumes like the local one: documents already written are skipped, without being
    encoded again (the input files are counted first to find where to start).

    Args:
        inputs: files or directories every worker can read (jsonl[.gz|.zst], parquet, txt), as
            local paths or pyarrow filesystem URLs (``s3://``, ``gs://``, ``hdfs://``, ``file://``).
        out_dir: the dataset directory, a local path on the driver's machine (not a URL).
        tokenizer: a :class:`~gristmill.Tokenizer`, a built-in name, or a saved tokenizer.
        shard_size, val_fraction, val_docs, eot, text_field, txt_mode, progress: as for
            :func:`~gristmill.shards.write_shards`.
        address: a Ray cluster to connect to; a local one is started when not given.
        block_docs: documents per task.

    Returns:
        The path of ``manifest.json``.

    Raises:
        ImportError: when Ray is not installed.
        ValueError: for bad settings, a URL ``out_dir``, an ``out_dir`` written with other
            settings, or encoded blocks that do not fit the writer.
        OutputFolderError: an ``out_dir`` that overlaps an input, or holds files tokenize did
            not write (named; a ``ValueError``).

    >>> tokenize(["clean/"], "data/", "gpt2", shard_size=10**8, val_fraction=0.01)  # doctest: +SKIP
    PosixPath('data/manifest.json')
    """
    from gristmill import _core
    from gristmill.shards import TOKENIZER_DIR, claim_dataset_folder
    from gristmill.tokenizer import Tokenizer

    require_ray()
    if isinstance(as_path(out_dir), UrlPath):
        raise ValueError(f"{out_dir}: tokenize on Ray writes its dataset on the driver's local disk "
                         "(the core's writer); give a local out_dir and copy the finished directory "
                         "to the URL (inputs may be URLs)")
    if val_docs is not None and val_fraction:
        raise ValueError("give val_fraction or val_docs, not both")
    tok = Tokenizer.resolve(tokenizer)
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) or is_hf_dataset(inputs) else list(inputs)
    files = _input_files(inputs)
    out = claim_dataset_folder(out_dir, inputs)  # as the local engine: before the writer opens it
    writer = _core.ShardWriter(
        os.fspath(out), tokenizer_name=tok.name, fingerprint=tok.fingerprint, n_vocab=tok.n_vocab,
        eot_token=tok.eot_token, tokenizer_path=TOKENIZER_DIR, eot=eot, shard_size=int(shard_size),
        val_fraction=float(val_fraction), val_docs=None if val_docs is None else int(val_docs),
        text_field=text_field,
    )
    if writer.is_complete:
        return Path(writer.finish())
    if not (out / TOKENIZER_DIR / "tokenizer_config.json").exists():
        tok.save(out / TOKENIZER_DIR, hf_json=False)
    ray = require_ray()
    init(address)
    _configure(progress)
    options = ray.data.DataContext.get_current().execution_options
    preserve_order, options.preserve_order = options.preserve_order, True
    try:
        bar = _tokenize_blocks(writer, tok, files, {"text_field": text_field, "txt_mode": txt_mode},
                               block_docs, progress)
    finally:
        options.preserve_order = preserve_order
    if bar is not None:
        bar.close()
    return Path(writer.finish())
