"""Storage named by a local path or by a URL on a pyarrow filesystem (``s3://``, ``gs://``,
``hdfs://``, ``file:///``): what the readers and the Ray engine's writers open and write.

A URL becomes a :class:`UrlPath`, which has the few ``pathlib.Path`` methods the readers, the
Ray engine and the reports use, so the same code takes a local path or a URL. Files are
written under a temporary name and moved into place (see :meth:`UrlPath.write_atomic`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import os
import re
import types
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Union

__all__ = ["UrlPath", "as_path", "atomic_file", "fsync_dir", "write_atomic", "write_json_atomic"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_FILESYSTEMS: dict[str, Any] = {}


class UrlPath:
    """A file or directory on a pyarrow filesystem, named by a URL (``s3://bucket/dir``,
    ``gs://``, ``hdfs://``, ``file:///``), with the few ``pathlib`` methods the readers, the
    Ray engine and its reports use, so that they take URLs unchanged."""

    def __init__(self, url: str, fs: Any = None, path: str | None = None):
        self.url = url.rstrip("/") if not url.endswith("://") else url
        if fs is None:
            base = self.url.split("?", 1)[0]
            if base not in _FILESYSTEMS:
                import pyarrow.fs

                try:
                    _FILESYSTEMS[base] = pyarrow.fs.FileSystem.from_uri(self.url)
                except Exception as e:
                    raise ValueError(f"{url}: cannot open its filesystem with pyarrow ({e})") from e
            fs, path = _FILESYSTEMS[base]
        self.fs, self.path = fs, path.rstrip("/") or path

    def __truediv__(self, name: str) -> UrlPath:
        base, _, query = self.url.partition("?")
        url = f"{base}/{name}" + (f"?{query}" if query else "")
        return UrlPath(url, self.fs, f"{self.path}/{name}")

    def __str__(self) -> str:
        return self.url

    __repr__ = __str__

    def __lt__(self, other: UrlPath) -> bool:
        return self.url < other.url

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and self.url == other.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def _type(self):
        import pyarrow.fs

        return self.fs.get_file_info(self.path).type, pyarrow.fs.FileType

    def exists(self) -> bool:
        kind, types = self._type()
        return kind != types.NotFound

    def is_dir(self) -> bool:
        kind, types = self._type()
        return kind == types.Directory

    def is_file(self) -> bool:
        kind, types = self._type()
        return kind == types.File

    def resolve(self) -> UrlPath:
        return self

    def stat(self) -> Any:
        info = self.fs.get_file_info(self.path)
        return types.SimpleNamespace(st_size=info.size, st_mtime_ns=info.mtime_ns)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self.fs.create_dir(self.path, recursive=True)  # a no-op on object stores

    def files(self, recursive: bool = False) -> list[UrlPath]:
        """The files under this directory, sorted (all levels with ``recursive``)."""
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.path, recursive=recursive))
        found = [self / info.path[len(self.path) + 1:] for info in infos
                 if info.type == pyarrow.fs.FileType.File]
        return sorted(found)

    def iterdir(self) -> list[UrlPath]:
        return self.files()

    def glob(self, pattern: str) -> list[UrlPath]:
        return [q for q in self.files() if fnmatch.fnmatchcase(q.name, pattern)]

    def relative_to(self, other: UrlPath) -> PurePosixPath:
        return PurePosixPath(self.path[len(other.path) + 1:])

    def unlink(self) -> None:
        self.fs.delete_file(self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        with self.fs.open_input_stream(self.path, compression=None) as f:
            return f.read().decode(encoding)

    def open_binary(self) -> io.BufferedIOBase:
        """A buffered binary stream, decompressed by pyarrow when the name ends in .gz or .zst."""
        return io.BufferedReader(self.fs.open_input_stream(self.path, compression="detect"))

    def open_random(self) -> Any:
        return self.fs.open_input_file(self.path)

    def write_atomic(self, data: bytes) -> None:
        """Writes under a temporary name then moves it into place: a rename on local and
        HDFS filesystems; on object stores a copy then delete, so the final name still
        appears only once complete."""
        head, _, tail = self.path.rpartition("/")
        tmp_path = f"{head}/{_temp_name(tail)}"
        try:
            with self.fs.open_output_stream(tmp_path, compression=None) as f:
                f.write(data)
            self.fs.move(tmp_path, self.path)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.delete_file(tmp_path)
            raise


def as_path(p: Any) -> Path | UrlPath:
    """A ``UrlPath`` for a URL (or one already), else a local ``Path``."""
    if isinstance(p, UrlPath):
        return p
    if isinstance(p, str) and _URL.match(p):
        return UrlPath(p)
    return Path(p)


def _temp_name(name: str) -> str:
    # Hidden (readers skip it) and per process (two runs never share one).
    return f".{name}.tmp-{os.getpid()}"


def fsync_dir(directory: Union[str, os.PathLike]) -> None:
    """Makes a rename in ``directory`` survive a crash (a no-op where directories can't be
    opened, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yields a temporary path beside local ``path``; when the block ends without an error the
    file is fsynced and renamed onto ``path``, otherwise it is removed. The one way gristmill
    writes a local file, so a crash never leaves a half file under the final name.

    >>> with atomic_file(out) as tmp:  # doctest: +SKIP
    ...     tmp.write_bytes(data)
    """
    path = Path(path)
    tmp = path.with_name(_temp_name(path.name))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_atomic(path: Union[str, os.PathLike, UrlPath], data: Union[bytes, str]) -> None:
    """Writes ``data`` (bytes, or text as UTF-8) to a local path or a URL atomically."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = as_path(path)
    if isinstance(path, UrlPath):
        path.write_atomic(data)
        return
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Union[str, os.PathLike, UrlPath], value: Any) -> None:
    """``value`` as indented JSON (UTF-8, a final newline), written atomically."""
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
