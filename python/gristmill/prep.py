"""Corpus preparation: reading and writing documents, and the filter + dedup pipeline.

Readers stream: memory stays bounded whatever the corpus size. The per-document work
(cleaning, quality filters, dedup) runs in the Rust core.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Document:
    """One document: its id, its text and any other fields of its record."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


class InputFormatError(ValueError):
    """A record that cannot be read; the message names the file and the line or row."""


def _open_text(path: Path) -> io.TextIOBase:
    name = path.name
    if name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"{path}: reading .zst needs zstandard: pip install 'gristmill[prep]'"
            ) from e
        return io.TextIOWrapper(
            zstandard.ZstdDecompressor().stream_reader(open(path, "rb")), encoding="utf-8"
        )
    return open(path, encoding="utf-8")


def _read_jsonl(path: Path, text_field: str, id_field: str) -> Iterator[Document]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputFormatError(f"{path}: line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise InputFormatError(
                    f"{path}: line {lineno}: expected an object with a string field {text_field!r}"
                )
            text = record.pop(text_field)
            doc_id = record.pop(id_field, None)
            yield Document(str(doc_id) if doc_id is not None else f"{path.name}:{lineno}", text, record)


def _read_parquet(path: Path, text_field: str, id_field: str, batch_size: int = 1024) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover
        raise ImportError(f"{path}: reading parquet needs pyarrow: pip install 'gristmill[prep]'") from e
    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise InputFormatError(f"{path}: no column {text_field!r} (columns: {pf.schema_arrow.names})")
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for record in batch.to_pylist():
            row += 1
            text = record.pop(text_field)
            if not isinstance(text, str):
                raise InputFormatError(f"{path}: row {row}: {text_field!r} is not a string")
            doc_id = record.pop(id_field, None)
            yield Document(str(doc_id) if doc_id is not None else f"{path.name}:{row}", text, record)


def _read_txt(path: Path, split_paragraphs: bool) -> Iterator[Document]:
    with _open_text(path) as f:
        if not split_paragraphs:
            yield Document(path.name, f.read())
            return
        block: list[str] = []
        n = 0
        for line in f:
            if line.strip():
                block.append(line)
            elif block:
                n += 1
                yield Document(f"{path.name}:{n}", "".join(block).rstrip("\n"))
                block = []
        if block:
            n += 1
            yield Document(f"{path.name}:{n}", "".join(block).rstrip("\n"))


def read_documents(
    paths: Union[PathLike, Iterable[PathLike]],
    *,
    text_field: str = "text",
    id_field: str = "id",
    txt_mode: str = "file",
) -> Iterator[Document]:
    """Streams documents from files, in order.

    Formats by extension: ``.jsonl``/``.json`` (one object per line; also ``.gz``/``.zst``
    compressed), ``.parquet``, and ``.txt`` (one document per file, or per blank-line-separated
    block with ``txt_mode="paragraphs"``). Fields other than text and id are kept as metadata.
    Directories are read recursively in sorted order.

    Raises:
        InputFormatError: naming the file and line (or row) of a bad record.
        FileNotFoundError: for a missing path.

    >>> next(read_documents(["missing.jsonl"]))
    Traceback (most recent call last):
    ...
    FileNotFoundError: missing.jsonl: no such file or directory
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if txt_mode not in ("file", "paragraphs"):
        raise ValueError(f"txt_mode must be 'file' or 'paragraphs', not {txt_mode!r}")
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files = sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith("."))
            yield from read_documents(files, text_field=text_field, id_field=id_field, txt_mode=txt_mode)
            continue
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        name = path.name.lower()
        for suffix in (".gz", ".zst"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        if name.endswith((".jsonl", ".json", ".ndjson")):
            yield from _read_jsonl(path, text_field, id_field)
        elif name.endswith(".parquet"):
            yield from _read_parquet(path, text_field, id_field)
        elif name.endswith((".txt", ".text", ".md")):
            yield from _read_txt(path, txt_mode == "paragraphs")
        else:
            raise InputFormatError(f"{path}: unknown format (expected .txt, .jsonl[.gz|.zst] or .parquet)")


def _atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class DocumentWriter:
    """Writes documents to numbered shards ``<prefix>-00000.jsonl.zst`` (or ``.parquet``).

    Each shard is written to a temporary name and renamed into place when complete, so a
    crashed run never leaves a half shard that reads as whole; ``existing_shards`` tells a
    rerun which shards are already done.

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

    def shard_path(self, index: int) -> Path:
        return self.directory / f"{self.prefix}-{index:05d}.{self.fmt}"

    def write(self, doc: Document) -> None:
        self._pending.append(doc)
        if len(self._pending) >= self.docs_per_shard:
            self.flush()

    def flush(self) -> None:
        """Writes the pending documents as one complete shard."""
        if not self._pending:
            return
        path = self.shard_path(self.shard_index)
        tmp = _atomic_path(path)
        records = [{"id": d.id, "text": d.text, **d.metadata} for d in self._pending]
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(records), tmp)
        else:
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
            if self.fmt == "jsonl.zst":
                import zstandard

                data = zstandard.ZstdCompressor(level=3).compress(data)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        self.paths.append(path)
        self.shard_index += 1
        self._pending = []

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "DocumentWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        # On error, pending documents are dropped rather than written as if complete.
        if exc_type is None:
            self.close()


def iter_texts(docs: Iterable[Union[Document, str, dict]], text_field: str = "text") -> Iterator[str]:
    """Texts from documents, plain strings, or dict records (e.g. a Hugging Face dataset)."""
    for d in docs:
        if isinstance(d, str):
            yield d
        elif isinstance(d, Document):
            yield d.text
        else:
            yield d[text_field]


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


