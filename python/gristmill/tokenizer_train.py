"""Training a byte-level BPE tokenizer: input handling and progress around the Rust trainer.

The counting and merging run in the Rust core (``rust/bpe/count.rs``, ``rust/bpe/trainer.rs``);
this module turns paths and iterables into text for it, shows progress when asked, and wraps
the result in a :class:`~gristmill.Tokenizer`. Most callers want :meth:`Tokenizer.train`.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill import _core
from gristmill._core import TokenizerError
from gristmill.documents import Document, document_files, read_documents
from gristmill.progress import progress_bar
from gristmill.tokenizer import ENDOFTEXT, Tokenizer

#: Merges done per call into the core between progress updates.
_MERGE_STEP = 256


@dataclass
class TrainStats:
    """What a training run saw and did (the CLI prints it)."""

    texts: int
    bytes: int
    chunks: int
    unique_chunks: int
    merges: int
    target_merges: int
    count_seconds: float
    merge_seconds: float

    @property
    def seconds(self) -> float:
        return self.count_seconds + self.merge_seconds

    @property
    def merges_per_second(self) -> float:
        return self.merges / self.merge_seconds if self.merge_seconds > 0 else float("inf")


def _is_path(x: Any) -> bool:
    return isinstance(x, os.PathLike)


def _expand(paths: Iterable[Any]) -> list[Path]:
    """Paths with directories replaced by their document files (see ``document_files``)."""
    out: list[Path] = []
    for p in paths:
        if not (_is_path(p) or isinstance(p, str)):
            raise TypeError(f"expected only paths after a first path, got {type(p).__name__}")
        p = Path(p)
        if p.is_dir():
            out.extend(document_files(p))
        elif not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        else:
            out.append(p)
    return out


def _texts(items: Iterable[Any], text_field: str) -> Iterator[str]:
    for i, x in enumerate(items):
        if isinstance(x, str):
            yield x
        elif isinstance(x, Document):
            yield x.text
        elif isinstance(x, Mapping):
            yield x[text_field]
        else:
            raise TypeError(f"item {i} is {type(x).__name__}; expected str, Document or a dict")


def _file_texts(path: Path, text_field: str) -> Iterator[str]:
    """The texts of one non-.txt file, with decoding errors naming the file."""
    try:
        for doc in read_documents([path], text_field=text_field):
            yield doc.text
    except UnicodeDecodeError as e:
        bad = e.object[e.start : e.start + 1].hex()
        raise TokenizerError(f"{path}: {e.reason} (byte 0x{bad}); expected UTF-8 text") from None


def _count(trainer: _core.BpeTrainer, items: Iterable[Any], paths: bool, text_field: str,
           progress: bool) -> None:
    """Feeds texts, or the files named, to the trainer's counting."""
    files = _expand(items) if paths else []
    plain = [p.name.lower().endswith((".txt", ".text", ".md")) for p in files]
    # The bar counts bytes of text: its total is known only for uncompressed files.
    total = sum(p.stat().st_size for p in files) if paths and all(plain) else None
    with progress_bar(progress, desc="counting", total=total, unit="B", unit_scale=True) as bar:

        def update(_texts: int, nbytes: int) -> None:
            bar.n = nbytes
            bar.refresh()

        if not paths:
            trainer.count(_texts(items, text_field), update)
        for i, (path, is_plain) in enumerate(zip(files, plain)):
            if len(files) > 1:
                bar.set_postfix_str(f"file {i + 1}/{len(files)}", refresh=False)
            if is_plain:
                trainer.count_file(os.fspath(path), update)
            else:
                trainer.count(_file_texts(path, text_field), update)


def train_tokenizer(
    texts_or_paths: str | os.PathLike[str] | Iterable[Any],
    vocab_size: int,
    pattern: str = "gpt2",
    special_tokens: Sequence[str] | Mapping[str, int] = (ENDOFTEXT,),
    *,
    min_frequency: int = 2,
    progress: bool = False,
    name: str = "custom",
    text_field: str = "text",
) -> tuple[Tokenizer, TrainStats]:
    """Trains a tokenizer and reports what it did; see :meth:`Tokenizer.train` for the arguments.

    Returns:
        ``(tokenizer, stats)``.
    """
    if isinstance(special_tokens, str):
        special_tokens = [special_tokens]
    explicit_ids = dict(special_tokens) if isinstance(special_tokens, Mapping) else None
    names = list(explicit_ids or special_tokens)
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be at least 1, not {min_frequency}")
    trainer = _core.BpeTrainer(vocab_size, pattern, names, min_frequency)

    # Paths or texts? A single str or path is a path; in an iterable, the first item decides.
    if isinstance(texts_or_paths, str) or _is_path(texts_or_paths):
        items: Iterable[Any] = [Path(texts_or_paths)]
        paths = True
    else:
        it = iter(texts_or_paths)
        head = list(itertools.islice(it, 1))
        paths = bool(head) and _is_path(head[0])
        items = itertools.chain(head, it)

    t0 = time.perf_counter()
    _count(trainer, items, paths, text_field, progress)
    t1 = time.perf_counter()
    with progress_bar(progress, desc="merging", total=trainer.target_merges, unit="merge") as bar:
        while n := trainer.merge(_MERGE_STEP):
            bar.update(n)
    core = trainer.build(explicit_ids)
    t2 = time.perf_counter()

    stats = TrainStats(
        texts=trainer.n_texts,
        bytes=trainer.n_bytes,
        chunks=trainer.n_chunks,
        unique_chunks=trainer.n_unique,
        merges=trainer.n_merges,
        target_merges=trainer.target_merges,
        count_seconds=t1 - t0,
        merge_seconds=t2 - t1,
    )
    return Tokenizer(core, name), stats


def format_stats(stats: TrainStats, tok: Tokenizer) -> str:
    """A few lines summarising a training run, for people."""
    lines = [
        f"texts:          {stats.texts:,} ({stats.bytes / 1e6:,.1f} MB)",
        f"chunks:         {stats.chunks:,} ({stats.unique_chunks:,} unique)",
        (
            f"merges:         {stats.merges:,} of {stats.target_merges:,}"
            + ("" if stats.merges >= stats.target_merges else " (ran out of pairs to merge)")
        ),
        f"vocabulary:     {tok.n_vocab:,} ids ({len(tok.special_tokens)} special)",
        (
            f"time:           {stats.seconds:.2f} s (counting {stats.count_seconds:.2f} s, "
            f"merging {stats.merge_seconds:.2f} s, {stats.merges_per_second:,.0f} merges/s)"
        ),
    ]
    return "\n".join(lines)
