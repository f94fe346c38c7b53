"""Output folders: a run never deletes or overwrites a file it did not write.

The one rule every command that writes a folder (prep, dedup, tokenize, tokenizer train,
train, ``gristmill run``) follows:

- **Apart from the inputs.** An output folder equal to an input folder, inside one, or
  holding an input is refused before any work (:func:`check_apart`).
- **Claimed, with a marker.** A command writes a hidden marker, ``.gristmill-output.json``
  (its command's name), into an output folder when it first takes it, and takes only a
  folder that is new or holds no files (hidden ones, such as ``.DS_Store``, and empty folders
  aside). Rerun on a folder it marked, a command accepts only the names it writes there
  (each command's ``owns`` rule); anything else is refused with its names
  (:func:`claim`), so a stray file is never read as output, overwritten or deleted. A folder
  a command wrote before markers existed is known by its content (``earlier``) and marked.
- **Only its own files removed.** Replacing an earlier run (``--overwrite``, a stale shard, a
  pipeline stage redone) removes only files the command's rule owns in a folder it marked
  (:func:`remove_own`), never a whole tree.

A file copied by hand into a marked folder under one of gristmill's own names counts as
gristmill's: the marker says who made the folder, not who made each file in it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Union

from gristmill.storage import UrlPath, as_path, write_json_atomic

__all__ = [
    "MARKER", "OutputFolderError", "check_apart", "claim", "files_under", "marker_of", "remove_own", "shard_names",
]

MARKER = ".gristmill-output.json"
# A pipeline stage's record sits in the folder of the command the stage runs (see pipeline.py):
# the command neither writes nor removes it.
STAGE_RECORD = "stage.json"
# gristmill's temporary names: storage's ``.<name>.tmp-<pid>`` and the core's ``.<name>.tmp``.
TEMP = re.compile(r"(^|/)\.[^/]+\.tmp(-\d+)?$")

Owns = Callable[[str], bool]
Folder = Union[str, "os.PathLike[str]", UrlPath]


def shard_names(*prefixes: str) -> re.Pattern:
    """The names of document shards ``<prefix>-00000.<fmt>`` (the local engine's) and
    ``<prefix>-00000-000000000000.<fmt>`` (the Ray engine's: input file and record), in every
    output format."""
    alternatives = "|".join(re.escape(p) for p in prefixes)
    return re.compile(rf"({alternatives})-\d{{5,}}(-\d{{12,}})?\.(jsonl\.zst|jsonl|parquet)")


class OutputFolderError(ValueError):
    """An output folder that would mix a run's files with others, or that overlaps an input."""


def show(path: Any) -> str:
    """A folder as messages name it: as the user gave it, with a final ``/``."""
    text = str(path)
    return text if text.endswith("/") else text + "/"


def _names(rels: list[str], limit: int = 5) -> str:
    more = f", ... {len(rels) - limit} more" if len(rels) > limit else ""
    return ", ".join(rels[:limit]) + more


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def files_under(folder: Folder) -> list[str]:
    """Every file under ``folder``, as sorted relative POSIX paths (none if it is missing)."""
    folder = as_path(folder)
    if isinstance(folder, UrlPath):
        if not folder.is_dir():
            return []
        return sorted(str(q.relative_to(folder)) for q in folder.files(recursive=True))
    if not folder.is_dir():
        return []
    found = []
    for root, _dirs, names in os.walk(folder):
        base = Path(root).relative_to(folder)
        found.extend(PurePosixPath(*base.parts, name).as_posix() for name in names)
    return sorted(found)


def marker_of(folder: Folder) -> str | None:
    """The command whose marker ``folder`` holds, or None (no marker, or an unreadable one)."""
    path = as_path(folder) / MARKER
    try:
        if not path.is_file():
            return None
        command = json.loads(path.read_text("utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        return None
    return command if isinstance(command, str) else None


def _location(p: Any) -> tuple[str, str] | None:
    """(filesystem, absolute POSIX path) of a path or URL; None for what is not a path."""
    if isinstance(p, UrlPath):
        return p.url.split("://", 1)[0], "/" + p.path.strip("/")
    if isinstance(p, (str, os.PathLike)):
        p = as_path(p)
        if isinstance(p, UrlPath):
            return _location(p)
        return "local", Path(os.path.realpath(p)).as_posix()
    return None  # a Hugging Face dataset, a callable source


def _under(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_apart(out: Folder, inputs: Iterable[Any]) -> None:
    """Refuses an output folder that is an input, lies inside an input folder, or holds an
    input (a run would read its own output, or overwrite or delete its input).

    Raises:
        OutputFolderError: naming both.
    """
    where = _location(out)
    for item in inputs:
        place = _location(item)
        if where is None or place is None or place[0] != where[0]:
            continue
        if place[1] == where[1]:
            raise OutputFolderError(f"{show(out)}: is the input {show(item)}; choose an output folder "
                                    "outside the inputs")
        if _under(where[1], place[1]):
            raise OutputFolderError(f"{show(out)}: is inside the input {show(item)}; choose an output "
                                    "folder outside the inputs")
        if _under(place[1], where[1]):
            raise OutputFolderError(f"{show(out)}: holds the input {item}; choose an output folder "
                                    "outside the inputs")


def foreign_files(folder: Folder, command: str, owns: Owns, *, marked: bool | None = None) -> list[str]:
    """The files under ``folder`` that ``command`` may not take as its own: all of them
    (hidden ones and a pipeline stage record aside) unless the folder holds its marker (or
    ``marked`` says it is the command's), else those its ``owns`` rule does not name."""
    if marked is None:
        marked = marker_of(folder) == command
    return [rel for rel in files_under(folder)
            if not _hidden(rel) and rel != STAGE_RECORD and not (marked and owns(rel))]


def claim(out: Folder, command: str, owns: Owns, *, earlier: Callable[[Any], bool] | None = None,
          fix: str = "choose an empty or new folder") -> None:
    """Takes ``out`` as the output folder of ``command`` (created, marked), or refuses it.

    Args:
        out: the folder (a path or a pyarrow filesystem URL).
        command: the command's name, as the marker records it (``prep``, ``dedup``, ``run``).
        owns: tells, from a path relative to ``out``, whether the command writes that file.
        earlier: tells whether an unmarked ``out`` holds the command's output from before
            markers existed (recognised by its content); such a folder is taken as marked.
        fix: what the refusal tells the user to do.

    Raises:
        OutputFolderError: ``out`` holds another command's output, or files the command does
            not write (named, the first five).
    """
    out = as_path(out)
    other = marker_of(out)
    if other is not None and other != command:
        raise OutputFolderError(f"{show(out)}: holds the output of gristmill {other}; choose another "
                                "folder")
    marked = other == command or (other is None and earlier is not None and earlier(out))
    foreign = foreign_files(out, command, owns, marked=marked)
    if foreign:
        raise OutputFolderError(f"{show(out)}: holds files this run did not write ({_names(foreign)}); "
                                f"{fix}")
    if other is None:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / MARKER, {"command": command})


def remove_own(out: Folder, owns: Owns, *, keep_marker: bool = True) -> list[str]:
    """Removes the files under ``out`` that ``owns`` names (and gristmill's temporary files),
    then the folders that left empty; returns what it removed. Never touches another file."""
    out = as_path(out)
    removed = []
    for rel in files_under(out):
        if (owns(rel) or TEMP.search(rel)) and not (keep_marker and rel == MARKER):
            (out / rel).unlink()
            removed.append(rel)
    if not isinstance(out, UrlPath):  # object stores have no folders to leave behind
        for parent in sorted({p for rel in removed for p in PurePosixPath(rel).parents if str(p) != "."},
                             key=lambda p: -len(p.parts)):
            try:
                (out / parent).rmdir()
            except OSError:
                pass  # something else is still in it
    return removed
