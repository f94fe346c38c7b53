"""Documents: what every stage reads and writes.

The one home of :class:`Document`, the readers of every input format (JSON lines, plain or
gzip- or zstd-compressed, parquet, text, Hugging Face datasets), the rule for which files
under a directory are documents, and the shard writer prep and dedup use. Readers stream:
memory stays bounded whatever the corpus size. zstd goes through the Rust core, so no stage
needs a Python compression package; a truncated or damaged compressed file is an
:class:`InputFormatError` naming it, never a short read.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:  # annotations only: typing_extensions is not a dependency
    from typing_extensions import Self

from gristmill import _core
from gristmill.storage import UrlPath, as_path, atomic_file

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Document:
    """One document: its id, its text and any other fields of its record."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


class InputFormatError(ValueError):
    """A record that cannot be read; the message names the file and the line or row."""


class _ZstdRaw(io.RawIOBase):
    """A ``.zst`` file decompressed by the Rust core, as a raw binary stream."""

    def __init__(self, path: Path):
        self._reader = _core.ZstdReader(str(path))

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._reader.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._reader.close()
        super().close()


def open_binary(path: Path) -> io.BufferedIOBase:
    """A buffered binary stream of a document file, decompressed when its name ends in
    ``.gz`` or ``.zst`` (a URL's by pyarrow). Reading a damaged file raises an error that
    :func:`read_documents` reports as an :class:`InputFormatError` naming it."""
    if isinstance(path, UrlPath):
        return path.open_binary()
    name = path.name
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdRaw(path), buffer_size=1 << 20)
    return open(path, "rb")


# What reading a damaged compressed file raises: zstd's errors come from the core as
# ValueError, gzip's as EOFError (truncated), BadGzipFile (an OSError) or zlib.error.
_DAMAGED = (ValueError, EOFError, OSError, zlib.error)


def _damaged(path: Path, where: str, e: BaseException) -> InputFormatError:
    text = str(e)
    if not text.startswith(str(path)):
        if isinstance(e, EOFError):
            text = "the compressed data ends early: the file is truncated"
        text = f"{path}: {where}{text}"
    elif where:
        text = f"{path}: {where}{text[len(str(path)) + 2:]}"
    return InputFormatError(f"{text}; replace the file or leave it out")


def _lines(f: io.BufferedIOBase, path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered lines of ``f``; a damaged file is an InputFormatError naming the line."""
    lineno = 0
    while True:
        try:
            raw = f.readline()
        except _DAMAGED as e:
            raise _damaged(path, f"line {lineno + 1}: ", e) from None
        if not raw:
            return
        lineno += 1
        yield lineno, raw


_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def replace_lone_surrogates(text: str) -> str:
    """``text`` with each lone surrogate (from a JSON escape such as ``\\ud800`` with no pair)
    replaced by U+FFFD, as tiktoken does: such a string has no UTF-8 form, so the core could
    not take it. The one place gristmill makes text valid this way."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _without_lone_surrogates(value: Any) -> Any:
    """A parsed JSON value with :func:`replace_lone_surrogates` applied to every string."""
    if isinstance(value, str):
        return replace_lone_surrogates(value)
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


class _BadRecords:
    """Raises on a bad record, or (with ``skip``) counts it and lets the reader go on."""

    def __init__(self, skip: bool, sink: list | None):
        self.skip, self.sink = skip, sink

    def __call__(self, message: str) -> None:
        if not self.skip:
            raise InputFormatError(message)
        if self.sink is not None:
            self.sink.append(message)


def _decode(raw: bytes, path: Path, lineno: int, bad: _BadRecords) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad(f"{path}: line {lineno}: invalid UTF-8 at byte {e.start} of the line ({e.reason})")
        return None


def _read_jsonl(path: Path, text_field: str, id_field: str, bad: _BadRecords) -> Iterator[Document]:
    seen_any = False
    with open_binary(path) as f:
        for lineno, raw in _lines(f, path):
            seen_any = True
            line = _decode(raw, path, lineno, bad)
            if line is None or not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                bad(f"{path}: line {lineno}: invalid JSON ({e.msg} at column {e.colno})")
                continue
            except RecursionError:  # json's C parser recurses per level of nesting
                bad(f"{path}: line {lineno}: invalid JSON (nested too deeply)")
                continue
            except ValueError:  # Python's limit on integer digits (sys.set_int_max_str_digits)
                bad(f"{path}: line {lineno}: invalid JSON (an integer with too many digits)")
                continue
            if _LONE_SURROGATE_ESCAPE.search(raw):
                record = _without_lone_surrogates(record)
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                found = type(record.get(text_field)).__name__ if isinstance(record, dict) else "no object"
                bad(
                    f"{path}: line {lineno}: expected an object with a string field "
                    f"{text_field!r}, found {found if found != 'NoneType' else 'none'}"
                )
                continue
            text = record.pop(text_field)
            doc_id = record.pop(id_field, None)
            yield Document(str(doc_id) if doc_id is not None else f"{path.name}:{lineno}", text, record)
    if not seen_any:
        bad(f"{path}: line 1: empty file, expected JSON lines")


def _read_parquet(
    path: Path, text_field: str, id_field: str, bad: _BadRecords, batch_size: int = 1024
) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover
        raise ImportError(f"{path}: reading parquet needs pyarrow: pip install 'gristmill[prep]'") from e
    try:
        pf = pq.ParquetFile(path.open_random() if isinstance(path, UrlPath) else path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise InputFormatError(f"{path}: not a readable parquet file ({e})") from None
    if text_field not in pf.schema_arrow.names:
        raise InputFormatError(f"{path}: no column {text_field!r} (columns: {pf.schema_arrow.names})")
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for record in batch.to_pylist():
            row += 1
            text = record.pop(text_field)
            if not isinstance(text, str):
                bad(f"{path}: row {row}: {text_field!r} is not a string")
                continue
            doc_id = record.pop(id_field, None)
            yield Document(str(doc_id) if doc_id is not None else f"{path.name}:{row}", text, record)


def _read_txt(path: Path, split_paragraphs: bool, bad: _BadRecords) -> Iterator[Document]:
    try:
        with open_binary(path) as f:
            data = f.read()
    except _DAMAGED as e:
        raise _damaged(path, "", e) from None
    if not data:
        bad(f"{path}: line 1: empty file")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad(f"{path}: line {line}: invalid UTF-8 at byte {e.start} ({e.reason})")
        return
    if not split_paragraphs:
        yield Document(path.name, text)
        return
    block: list[str] = []
    n = 0
    for line in text.splitlines(keepends=True):
        if line.strip():
            block.append(line)
        elif block:
            n += 1
            yield Document(f"{path.name}:{n}", "".join(block).rstrip("\n"))
            block = []
    if block:
        n += 1
        yield Document(f"{path.name}:{n}", "".join(block).rstrip("\n"))


def is_hf_dataset(obj: Any) -> bool:
    """A Hugging Face ``Dataset`` or ``IterableDataset``, or anything with the slice of them
    the readers use (``column_names`` and ``iter(batch_size)``)."""
    if isinstance(obj, (str, bytes, os.PathLike)):
        return False
    if type(obj).__module__.startswith("datasets.") and hasattr(obj, "features"):
        return True
    return hasattr(obj, "column_names") and callable(getattr(obj, "iter", None))


def _read_hf(ds: Any, text_field: str, id_field: str, bad: _BadRecords) -> Iterator[Document]:
    """Rows of a Hugging Face ``Dataset`` or ``IterableDataset`` (streamed, row by row)."""
    name = getattr(getattr(ds, "info", None), "dataset_name", None) or "dataset"
    for row_no, record in enumerate(ds, 1):
        record = dict(record)
        text = record.pop(text_field, None)
        if not isinstance(text, str):
            bad(f"{name}: row {row_no}: expected a string field {text_field!r}")
            continue
        doc_id = record.pop(id_field, None)
        yield Document(str(doc_id) if doc_id is not None else f"{name}:{row_no}", text, record)


_DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".txt", ".text", ".md")


def document_files(directory: Path) -> list[Path]:
    """The one rule for which files under a directory are documents: the data files under ``directory``, in sorted order. Hidden entries, gristmill's own
    bookkeeping (reports, manifests, state) and removed documents (``removed/`` folders and
    ``removed-*`` shards, which prep and dedup write beside the kept ones) are skipped, so a
    prep or dedup output folder reads as its kept documents."""
    files = []
    found = directory.files(recursive=True) if isinstance(directory, UrlPath) else sorted(directory.rglob("*"))
    for q in found:
        rel = q.relative_to(directory).parts
        if not isinstance(q, UrlPath) and not q.is_file() or any(part.startswith(".") or part == "removed" for part in rel):
            continue
        name = q.name.lower()
        base = name[:-4] if name.endswith(".zst") else name[:-3] if name.endswith(".gz") else name
        if name.startswith("removed-") or not base.endswith(_DATA_SUFFIXES):
            continue
        if base.endswith(".json") and base.endswith(("report.json", "manifest.json", "state.json", "stage.json")):
            continue
        files.append(q)
    return files


def read_documents(
    paths: PathLike | Iterable[PathLike] | Any,
    *,
    text_field: str = "text",
    id_field: str = "id",
    txt_mode: str = "file",
    skip_bad: bool = False,
    bad_records: list | None = None,
) -> Iterator[Document]:
    """Streams documents from files or a Hugging Face dataset, in order.

    Formats by extension: ``.jsonl``/``.json`` (one object per line; also ``.gz``/``.zst``
    compressed), ``.parquet``, and ``.txt`` (one document per file, or per blank-line-separated
    block with ``txt_mode="paragraphs"``). Fields other than text and id are kept as metadata.
    Directories are read recursively in sorted order, skipping hidden files, reports and
    removed documents (a prep output folder with dedup on holds the filtered shards and, in
    ``deduped/``, the final ones: read the latter, or use :func:`clean_documents`). A ``datasets.Dataset`` or
    ``IterableDataset`` (or a list of them) is read row by row.

    Args:
        paths: files, directories, or Hugging Face datasets.
        text_field, id_field: the record fields holding the text and the id.
        txt_mode: ``"file"`` or ``"paragraphs"`` for ``.txt`` input.
        skip_bad: skip bad records (malformed JSON, missing text, invalid UTF-8, empty files)
            instead of raising; their messages are appended to ``bad_records``.

    Raises:
        InputFormatError: naming the file and line (or row) of a bad record.
        FileNotFoundError: for a missing path.

    >>> next(read_documents(["missing.jsonl"]))
    Traceback (most recent call last):
    ...
    FileNotFoundError: missing.jsonl: no such file or directory
    """
    if isinstance(paths, (str, os.PathLike)) or is_hf_dataset(paths):
        paths = [paths]
    if txt_mode not in ("file", "paragraphs"):
        raise ValueError(f"txt_mode must be 'file' or 'paragraphs', not {txt_mode!r}")
    bad = _BadRecords(skip_bad, bad_records)
    for p in paths:
        if is_hf_dataset(p):
            yield from _read_hf(p, text_field, id_field, bad)
            continue
        path = as_path(p)
        if path.is_dir():
            files = document_files(path)
            yield from read_documents(
                files, text_field=text_field, id_field=id_field, txt_mode=txt_mode,
                skip_bad=skip_bad, bad_records=bad_records,
            )
            continue
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        name = path.name.lower()
        for suffix in (".gz", ".zst"):
            name = name.removesuffix(suffix)
        if name.endswith((".jsonl", ".json", ".ndjson")):
            yield from _read_jsonl(path, text_field, id_field, bad)
        elif name.endswith(".parquet"):
            yield from _read_parquet(path, text_field, id_field, bad)
        elif name.endswith((".txt", ".text", ".md")):
            yield from _read_txt(path, txt_mode == "paragraphs", bad)
        else:
            raise InputFormatError(f"{path}: unknown format (expected .txt, .jsonl[.gz|.zst] or .parquet)")


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities (which JSON has no numbers for) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _json_line(record: dict) -> str:
    """One record as strict JSON: Python's json reads NaN in input, but a NaN written back
    would make the shard unreadable to strict readers (the core's among them), so it is null."""
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(record), ensure_ascii=False, allow_nan=False)


def shard_bytes(docs: list[Document], fmt: str) -> bytes:
    """The bytes of one shard of ``docs`` in ``fmt`` (jsonl, jsonl.zst or parquet)."""
    records = [{"id": d.id, "text": d.text, **d.metadata} for d in docs]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(records), sink)
        return sink.getvalue().to_pybytes()
    # Each record is encoded on its own: one character beyond Latin-1 in one document would
    # widen a str of the whole shard to 2 or 4 bytes a character (a shard's memory, 4 times).
    data = b"".join((_json_line(r) + "\n").encode("utf-8") for r in records)
    if fmt == "jsonl.zst":
        data = _core.zstd_compress(data, 3)
    return data


# Bytes of a pending document besides its strings: the Document, its field dict, a list slot.
_DOC_OVERHEAD = 250


def _held_bytes(doc: Document) -> int:
    """Bytes ``doc`` holds in memory, roughly: strings as Python stores them (1, 2 or 4
    bytes a character), the values of its other fields shallowly."""
    n = sys.getsizeof(doc.text) + sys.getsizeof(doc.id) + _DOC_OVERHEAD
    for k, v in doc.metadata.items():
        n += sys.getsizeof(k) + sys.getsizeof(v)
    return n


class DocumentWriter:
    """Writes documents to numbered shards ``<prefix>-00000.jsonl.zst`` (or ``.parquet``).

    Each shard is written to a temporary name and renamed into place when complete, so a
    crashed run never leaves a half shard that reads as whole; ``existing_shards`` tells a
    rerun which shards are already done. The pending documents of a shard are held in memory
    (:attr:`pending_bytes` says how much; encoding them takes about twice that again, briefly):
    a caller bounding memory ends shards by bytes too, with :meth:`flush`.

    >>> with DocumentWriter("out", docs_per_shard=2) as w:  # doctest: +SKIP
    ...     w.write(Document("a", "hello"))
    """

    def __init__(
        self,
        directory: PathLike,
        prefix: str = "docs",
        docs_per_shard: int = 100_000,
        fmt: str = "jsonl.zst",
        start_shard: int = 0,
    ):
        if fmt not in ("jsonl.zst", "jsonl", "parquet"):
            raise ValueError(f"format must be jsonl.zst, jsonl or parquet, not {fmt!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix, self.docs_per_shard, self.fmt = prefix, docs_per_shard, fmt
        self.shard_index = start_shard
        self.paths: list[Path] = []
        self._pending: list[Document] = []
        self._pending_bytes = 0

    @property
    def pending(self) -> int:
        """Documents written but not yet in a finished shard."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Bytes the pending documents hold in memory, estimated: their text and id as
        Python stores them, their other fields shallowly, and a fixed overhead each."""
        return self._pending_bytes

    def shard_path(self, index: int) -> Path:
        return self.directory / f"{self.prefix}-{index:05d}.{self.fmt}"

    def write(self, doc: Document) -> None:
        self._pending.append(doc)
        self._pending_bytes += _held_bytes(doc)
        if len(self._pending) >= self.docs_per_shard:
            self.flush()

    def flush(self) -> None:
        """Writes the pending documents as one complete shard."""
        if not self._pending:
            return
        path = self.shard_path(self.shard_index)
        with atomic_file(path) as tmp:
            if self.fmt == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                records = [{"id": d.id, "text": d.text, **d.metadata} for d in self._pending]
                pq.write_table(pa.Table.from_pylist(records), tmp)
            else:
                tmp.write_bytes(shard_bytes(self._pending, self.fmt))
        self.paths.append(path)
        self.shard_index += 1
        self._pending = []
        self._pending_bytes = 0

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *_) -> None:
        # On error, pending documents are dropped rather than written as if complete.
        if exc_type is None:
            self.close()


def batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """Lists of up to ``n`` items, in order."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
