"""Token shards: documents in, llm.c-compatible ``.bin`` shards out, and batches back for training.

A dataset is a directory::

    manifest.json        what the trainer opens: tokenizer identity, shards, token counts,
                         checksums, each shard's largest token id
    train_000000.bin     llm.c's format: 256 int32 header (magic 20240520, version, count), tokens
    train_000000.idx     where each document starts, and its source id
    val_000000.bin ...
    tokenizer/           a copy of the tokenizer that made the tokens
    .gristmill-output.json  the marker: a folder tokenize took (see gristmill.outputs)

The format, the writer, the memory-mapped reader and the batch sampler live in the Rust core
(``rust/shards``); this module feeds it documents and hands its arrays to numpy and torch.

>>> from gristmill import Tokenizer
>>> manifest = write_shards(["hello world", "goodbye"], "data/hello", Tokenizer.from_name("gpt2"))  # doctest: +SKIP
>>> ds = ShardDataset("data/hello")  # doctest: +SKIP
>>> ds.tokens()  # doctest: +SKIP
array([31373,   995, 50256, 11274, 16390, 50256], dtype=uint16)
"""

from __future__ import annotations

import functools
import itertools
import json
import mmap
import os
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Union

import numpy as np

from gristmill import _core
from gristmill.defaults import TOKENIZE
from gristmill.documents import (
    Document,
    document_files,
    is_hf_dataset,
    read_documents,
    replace_lone_surrogates,
)
from gristmill.outputs import check_apart, claim
from gristmill.progress import progress_bar
from gristmill.tokenizer import SAVED_FILES, Tokenizer

PathLike = Union[str, "os.PathLike[str]"]

#: Raised for a damaged, truncated or mismatched shard, index or manifest (a ``ValueError``);
#: the message names the file and byte offset, what was expected and what was found.
ShardFormatError = _core.ShardFormatError

#: The format's constants, from the core: magic, versions, header size.
FORMAT = dict(_core.shard_format())

MANIFEST_NAME = "manifest.json"
TOKENIZER_DIR = "tokenizer"
# The core writer's record of an unfinished run's settings (hidden; the manifest replaces it).
_PROGRESS_NAME = ".gristmill-tokenize.json"
_SHARD_FILE = re.compile(r"(train|val)_\d{6,}\.(bin|idx)")

# Documents are encoded in batches of at most this many documents or bytes of text: large
# enough to keep every core busy to the end of each batch (2 MB batches left a core idle behind
# the longest document often enough to cost ~10%), small enough that memory stays flat.
_BATCH_DOCS = 4096
_BATCH_BYTES = 8 << 20


# ---- writing --------------------------------------------------------------------------------


def owned_files(rel: str) -> bool:
    """Which files of a dataset folder tokenize writes (see :mod:`gristmill.outputs`): the
    manifest, the shards and their indexes, and the tokenizer's copy; ``rel`` is relative
    to the folder."""
    top, _, rest = rel.partition("/")
    if top == TOKENIZER_DIR and rest:
        return rest in SAVED_FILES
    return rel == MANIFEST_NAME or _SHARD_FILE.fullmatch(rel) is not None


def _written_before_markers(out: Path) -> bool:
    """A dataset folder tokenize wrote before folders were marked: an unfinished run's
    progress file, or a gristmill manifest."""
    if (out / _PROGRESS_NAME).is_file():
        return True
    try:
        return json.loads((out / MANIFEST_NAME).read_bytes()).get("format") == "gristmill-shards"
    except (OSError, ValueError, AttributeError):
        return False


def claim_dataset_folder(out_dir: PathLike, inputs: Iterable[Any]) -> Path:
    """Takes ``out_dir`` for a dataset before any work (see :mod:`gristmill.outputs`): apart
    from the ``inputs`` (paths), and new, empty, or a dataset folder tokenize wrote (which
    a rerun resumes or leaves as it is).

    Raises:
        OutputFolderError: ``out_dir`` overlaps an input, or holds files tokenize did not
            write (named).
    """
    out = Path(out_dir)
    check_apart(out, inputs)
    claim(out, "tokenize", owned_files, earlier=_written_before_markers)
    return out


def _input_paths(documents: Any) -> list[Any]:
    """The paths among ``documents`` that can be looked at without reading them (a
    stream is never consumed here; its paths go unchecked)."""
    if isinstance(documents, (str, os.PathLike)):
        return [documents]
    if isinstance(documents, (list, tuple)):
        return [d for d in documents if isinstance(d, os.PathLike)]  # a str item is a text
    return []


def _records(documents: Any, text_field: str) -> Iterator[tuple[str | None, str]]:
    """(source id or None, text) for every input document, streamed."""
    if isinstance(documents, (str, os.PathLike)):
        documents = [Path(documents)]
    if is_hf_dataset(documents):
        # Column batches: far fewer Python objects than row dicts.
        has_id = "id" in (documents.column_names or ())
        for batch in documents.iter(batch_size=1000):
            ids = batch["id"] if has_id else itertools.repeat(None)
            for doc_id, text in zip(ids, batch[text_field]):
                yield (None if doc_id is None else str(doc_id)), text
        return
    for item in documents:
        if isinstance(item, str):
            yield None, item
        elif isinstance(item, Document):
            yield item.id, item.text
        elif isinstance(item, os.PathLike):
            for d in read_documents([item], text_field=text_field):
                yield d.id, d.text
        elif isinstance(item, dict):
            doc_id = item.get("id")
            yield (None if doc_id is None else str(doc_id)), item[text_field]
        else:
            raise TypeError(
                f"documents must be str, gristmill.prep.Document, dict or a path, not {type(item).__name__}"
            )


def _batches(records: Iterable[tuple[str | None, str]], first_position: int):
    """Lists of texts and source ids, bounded by count and bytes."""
    texts: list[str] = []
    ids: list[str] = []
    size = 0
    for position, (doc_id, text) in enumerate(records, first_position):
        texts.append(text)
        ids.append(doc_id if doc_id is not None else str(position))
        size += len(text)
        if len(texts) >= _BATCH_DOCS or size >= _BATCH_BYTES:
            yield texts, ids, size
            texts, ids, size = [], [], 0
    if texts:
        yield texts, ids, size


def write_shards(
    documents: Any,
    out_dir: PathLike,
    tokenizer: Tokenizer | str | PathLike,
    *,
    shard_size: int = TOKENIZE["shard_size"],
    val_fraction: float = TOKENIZE["val_fraction"],
    val_docs: int | None = None,
    eot: str = TOKENIZE["eot"],
    text_field: str = TOKENIZE["text_field"],
    txt_mode: str = TOKENIZE["txt_mode"],
    progress: bool = False,
) -> Path:
    """Tokenizes documents in parallel into fixed-size token shards; resumes a killed run.

    Documents are streamed (never all in memory), encoded in batches on all cores by the Rust
    encoder (special-token text is encoded as ordinary text), and written to shards of exactly
    ``shard_size`` tokens (the last of each split may be shorter); a document may continue in
    the next shard, as in llm.c. Each document's record is its tokens with the end-of-text
    token after it (``eot="append"``) or before it (``"prepend"``, llm.c's choice).

    If ``out_dir`` holds a run of the same settings that was killed, it continues from the
    last complete shard and the result is byte-identical to an uninterrupted run (given the
    same input); if it holds the finished dataset, nothing is done.

    Args:
        documents: an iterable of str, :class:`gristmill.prep.Document` or dict records (text
            under ``text_field``, optional ``"id"``), or of paths (read with
            :func:`gristmill.prep.read_documents`); a path; or a Hugging Face ``datasets``
            Dataset.
        out_dir: the dataset directory.
        tokenizer: a :class:`~gristmill.Tokenizer`, a built-in name, or a saved tokenizer.
        shard_size: tokens per shard (at most 2**31 - 1: the header's count is an int32).
        val_fraction: fraction of documents for the ``val`` split, spread evenly through the
            input (document ``i`` goes to val when ``floor((i+1) f) > floor(i f)``).
        val_docs: instead, the first ``val_docs`` documents go to ``val``.
        eot: ``"append"`` or ``"prepend"`` the end-of-text token.
        text_field: the text's key in dict records, jsonl and parquet files.
        txt_mode: ``.txt`` inputs: ``"file"`` (one document each) or ``"paragraphs"``.
        progress: show a tqdm progress bar (tokens/s).

    Returns:
        The path of ``manifest.json``.

    Raises:
        ValueError: for bad settings, or an ``out_dir`` written with other settings.
        OutputFolderError: an ``out_dir`` that is, holds or lies inside an input path, or that
            holds files tokenize did not write (named; a ``ValueError``).
        OSError: when a file cannot be written.

    >>> write_shards(["hi"], "out", "gpt2", val_fraction=1.5)  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    ValueError: val_fraction must be in [0, 1), not 1.5
    """
    tok = Tokenizer.resolve(tokenizer)
    if val_docs is not None and val_fraction:
        raise ValueError("give val_fraction or val_docs, not both")
    # Before the core's writer opens the folder: it would take stray shards beside a progress
    # file as its own, and removes those past its last complete shard.
    out = claim_dataset_folder(out_dir, _input_paths(documents))
    writer = _core.ShardWriter(
        os.fspath(out),
        tokenizer_name=tok.name,
        fingerprint=tok.fingerprint,
        n_vocab=tok.n_vocab,
        eot_token=tok.eot_token,
        tokenizer_path=TOKENIZER_DIR,
        eot=eot,
        shard_size=int(shard_size),
        val_fraction=float(val_fraction),
        val_docs=None if val_docs is None else int(val_docs),
        text_field=text_field,
    )
    if writer.is_complete:
        return writer.finish()
    start = writer.next_position
    bar = tokenize_bar(progress, start)
    # The tokenizer's copy is written on the side (its ranks and settings are all that
    # ShardDataset.tokenizer() reads; the HF tokenizer.json is left out: building it costs
    # more than encoding a small corpus).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gristmill-save") as saver:
        saved = None
        if not (out / TOKENIZER_DIR / "tokenizer_config.json").exists():
            saved = saver.submit(tok.save, out / TOKENIZER_DIR, hf_json=False)
        seen = 0  # input documents read so far, skipped ones included
        units = _units(documents, text_field, txt_mode)
        for core_file, group in itertools.groupby(units, key=lambda u: u[0] is not None):
            if core_file:
                # One call for a run of files: the core reads the next one while this one is
                # encoded, and batches run on across files. (groupby looks at the unit after
                # the run to end it; units are lazy, so that opens no file.)
                seen += writer.add_jsonl(
                    tok._core, [os.fspath(path) for path, _ in group], text_field=text_field,
                    id_field="id", skip=max(0, start - seen), max_docs=_BATCH_DOCS,
                    max_bytes=_BATCH_BYTES,
                    progress=None if bar is None else functools.partial(tokenize_bar_update, bar),
                )
            else:
                records = itertools.chain.from_iterable(r for _, r in group)
                seen = _add_records(writer, tok, records, seen, start, bar)
        if saved is not None:
            saved.result()
    if bar is not None:
        bar.close()
    return writer.finish()


def _core_reads(path: Path) -> bool:
    """JSON lines (optionally zstd-compressed): read, decompressed and parsed by the core."""
    name = path.name.lower().removesuffix(".zst")
    return name.endswith((".jsonl", ".json", ".ndjson"))


def _units(documents: Any, text_field: str, txt_mode: str) -> Iterator[tuple[Path | None, Any]]:
    """``(path, None)`` for each JSON-lines file the core reads itself, ``(None, records)`` for
    every other input (``records``: a lazy stream of ``(id, text)``, so that looking at the next
    unit opens no file), in input order."""
    if isinstance(documents, (str, os.PathLike)):
        documents = [Path(documents)]
    if is_hf_dataset(documents):
        documents = [documents]
    for item in documents:
        if isinstance(item, str):
            yield None, [(None, item)]
            continue
        if not isinstance(item, os.PathLike):
            yield None, _records(item if is_hf_dataset(item) else [item], text_field)
            continue
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        for f in document_files(path) if path.is_dir() else [path]:
            if _core_reads(f):
                yield f, None
            else:
                docs = read_documents([f], text_field=text_field, txt_mode=txt_mode)  # a generator
                yield None, ((d.id, d.text) for d in docs)


def _add_records(writer, tok: Tokenizer, records: Iterator, seen: int, start: int, bar) -> int:
    """Encodes records read in Python; one batch is encoded (GIL released) while the next is
    read. Returns ``seen`` plus the records consumed."""
    consumed = 0

    def counted():
        nonlocal consumed
        for r in records:
            consumed += 1
            yield r

    skip = max(0, start - seen)
    todo = itertools.islice(counted(), skip, None)

    def add(texts: list[str], ids: list[str]) -> int:
        try:
            return writer.add_texts(tok._core, texts, ids)
        except UnicodeEncodeError:  # lone surrogates: replaced, as the tokenizer does
            return writer.add_texts(
                tok._core, [replace_lone_surrogates(t) for t in texts], [replace_lone_surrogates(i) for i in ids]
            )

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gristmill-tokenize") as pool:
        pending = None
        for texts, ids, size in _batches(todo, seen + skip):
            job = pool.submit(add, texts, ids)
            if pending is not None:
                _advance(bar, pending)
            pending = (job, len(texts), size)
        if pending is not None:
            _advance(bar, pending)
    return seen + consumed


def tokenize_bar(progress: bool, skipped: int):
    """The tokenize stage's bar (tokens, documents, MB/s), shared with the Ray engine; None when
    progress is off."""
    if not progress:
        return None  # no bar: the core is then given no progress callback
    bar = progress_bar(True, desc="tokenize", unit="tok", unit_scale=True, smoothing=0.1)
    bar.set_postfix(docs=skipped, MB=0, refresh=False)
    bar._gm_docs, bar._gm_bytes, bar._gm_t0 = skipped, 0, time.perf_counter()
    return bar


def _advance(bar, pending) -> None:
    job, n_docs, size = pending
    tokens = job.result()
    if bar is not None:
        tokenize_bar_update(bar, n_docs, size, tokens)


def tokenize_bar_update(bar, n_docs: int, size: int, tokens: int) -> None:
    """Adds ``tokens`` (from ``n_docs`` documents of ``size`` bytes) to a :func:`tokenize_bar`."""
    bar._gm_docs += n_docs
    bar._gm_bytes += size
    mb_s = bar._gm_bytes / 1e6 / max(time.perf_counter() - bar._gm_t0, 1e-9)
    bar.set_postfix(docs=bar._gm_docs, MB_s=f"{mb_s:.1f}", refresh=False)
    bar.update(tokens)


# ---- reading --------------------------------------------------------------------------------


def open_shard(path: PathLike) -> np.ndarray:
    """The tokens of one ``.bin`` shard (gristmill's or llm.c's), as a read-only memory-mapped
    numpy view, after checking magic, version and the count against the file size.

    Raises:
        ShardFormatError: naming the file, the byte offset, what was expected and found.

    >>> open_shard("README.md")  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    gristmill._core.ShardFormatError: README.md: magic at byte 0 is 1953439011, expected 20240520
    """
    return _core.open_shard(os.fspath(path))


class ShardDataset:
    """A tokenized dataset, memory-mapped: token ranges and documents as numpy views, and
    batch samplers for training.

    Opening checks every shard's header against its file size and the manifest; ``verify``
    (or ``verify=True``) also checks every checksum, which reads every byte; :meth:`check`
    checks the token ids against a model's vocabulary before training.

    Args:
        path: the dataset directory or its ``manifest.json``.
        verify: check checksums now.

    Raises:
        ShardFormatError: for a damaged, truncated or mismatched file.
        FileNotFoundError: when the manifest or a shard is missing.

    >>> ds = ShardDataset("data/tiny")  # doctest: +SKIP
    >>> ds.num_tokens("train"), ds.dtype  # doctest: +SKIP
    (338025, dtype('uint16'))
    """

    def __init__(self, path: PathLike, *, verify: bool = False):
        self._core = _core.ShardDatasetCore(os.fspath(path))
        self.manifest: dict = json.loads(self._core.manifest_json)
        self.path = Path(self._core.manifest_path).parent
        tok = self.manifest["tokenizer"]
        self.n_vocab: int = tok["n_vocab"]
        self.eot_token: int = tok["eot_token"]
        self.tokenizer_fingerprint: str = tok["fingerprint"]
        self.dtype = np.dtype(self.manifest["dtype"])
        self.eot: str = self.manifest["eot"]
        if verify:
            self.verify()

    def __reduce__(self):
        return (ShardDataset, (os.fspath(self._core.manifest_path),))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_tokens(s):,}" for s in self.splits)
        return f"<ShardDataset {str(self.path)!r} {self.dtype} tokens: {sizes}>"

    @property
    def splits(self) -> list[str]:
        """Split names, e.g. ``["train", "val"]``."""
        return list(self.manifest["splits"])

    def verify(self) -> None:
        """Checks every shard's and index's checksum, and each shard's largest token id,
        against the manifest.

        Raises:
            ShardFormatError: naming the damaged file and the byte range checked.
        """
        self._core.verify()

    def check(self, vocab_size: int | None = None, *, verify: bool = False) -> None:
        """Checks the data before a model trains on it: headers and sizes (checked when the
        dataset was opened), every checksum with ``verify`` (reads every byte), then that every
        token id is below ``vocab_size``, the model's vocabulary size.

        The range check reads the largest id of each shard from the manifest; shards of older
        manifests, which lack it, are read.

        Raises:
            ShardFormatError: one line naming the shard and the first token outside the
                vocabulary (or the damaged file).
        """
        if verify:
            self.verify()
        if vocab_size is not None:
            self._core.check_tokens(int(vocab_size))

    def num_tokens(self, split: str = "train") -> int:
        """Tokens in ``split`` (end-of-text tokens included)."""
        return self._core.num_tokens(split)

    def num_documents(self, split: str = "train") -> int:
        return self._core.num_documents(split)

    def tokens(self, split: str = "train", start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens ``start:stop`` of ``split`` (Python slice semantics, step 1).

        Returns:
            A read-only view of the memory map when the range lies in one shard (no copy), else
            a new array.
        """
        start, stop, _ = slice(start, stop).indices(self.num_tokens(split))
        return self._core.tokens(split, start, max(start, stop))

    def _index(self, index: int, split: str) -> int:
        n = self.num_documents(split)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"document {index} is out of range for the {n} documents of {split!r}")
        return index

    def document(self, index: int, split: str = "train") -> np.ndarray:
        """The tokens of document ``index`` of ``split``, without its end-of-text token (a view
        when the document lies in one shard).

        >>> tok.decode(ds.document(0)) == first_text  # doctest: +SKIP
        True
        """
        start, stop = self._core.document_range(split, self._index(index, split))
        if self.eot == "append":
            stop -= 1
        else:
            start += 1
        return self._core.tokens(split, start, stop)

    def document_id(self, index: int, split: str = "train") -> str:
        """The source id of document ``index`` (the input's ``id``, else its input position)."""
        return self._core.document_id(split, self._index(index, split))

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Checks that ``tokenizer`` is the one that made these tokens.

        Raises:
            ShardFormatError: if the fingerprints differ.
        """
        if tokenizer.fingerprint != self.tokenizer_fingerprint:
            raise ShardFormatError(
                f"{self.path / MANIFEST_NAME}: tokens were made by tokenizer "
                f"{self.manifest['tokenizer']['name']!r} (fingerprint "
                f"{self.tokenizer_fingerprint[:16]}…), not {tokenizer.name!r} (fingerprint "
                f"{tokenizer.fingerprint[:16]}…)"
            )

    def tokenizer(self) -> Tokenizer:
        """The copy of the tokenizer saved beside the shards."""
        return Tokenizer.load(self.path / self.manifest["tokenizer"].get("path", TOKENIZER_DIR))

    def sampler(
        self,
        split: str = "train",
        *,
        batch_size: int,
        seq_len: int,
        mode: str = "random",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        packing: bool | str = False,
        stride: int | None = None,
        pool: int = 1024,
    ) -> BatchSampler:
        """A sampler of ``(batch_size, seq_len + 1)`` token windows for next-token training.

        Args:
            mode: ``"random"``: every window once per epoch, in a seeded order that changes each
                epoch; ``"sequential"``: llm.c's DataLoader order, shard by shard.
            seed: the random order's seed.
            rank, world_size: this process's part of each global batch (DDP): every rank gets
                ``batch_size`` rows, disjoint from the other ranks'.
            packing: ``False``/``"off"``: windows of the token stream. ``True``/``"pad"``: rows
                of whole documents (never cut at a row's end unless longer than a row), padded
                with end-of-text; :meth:`BatchSampler.last_lengths` says how much is real.
                ``"bestfit"``: every row starts at a document's start and is filled exactly,
                best-fit from whole documents of a pool, the last one cropped (nanochat's
                BOS-aligned loader); :meth:`BatchSampler.last_utilisation` says how much was
                lost to cropping. Rows' documents: :meth:`BatchSampler.last_segments`.
            stride: distance between window starts (default ``seq_len``: every token is a
                target once per epoch; smaller strides overlap windows, as in "Build a Large
                Language Model (From Scratch)", ch. 2).
            pool: ``"bestfit"``: documents (consecutive in the epoch's order) packed together;
                a larger pool crops less and costs a little more each time one is packed.

        Raises:
            ValueError: when a split is too small for one global batch, or for bad arguments.
        """
        kwargs = {
            "batch_size": int(batch_size),
            "seq_len": int(seq_len),
            "stride": int(seq_len if stride is None else stride),
            "mode": mode,
            "seed": int(seed),
            "rank": int(rank),
            "world_size": int(world_size),
            "packing": packing_name(packing),
            "pool": int(pool),
        }
        return BatchSampler(self, split, kwargs)


#: The ways rows are made (see :meth:`ShardDataset.sampler`).
PACKINGS = ("off", "pad", "bestfit")


def packing_name(packing: bool | str) -> str:
    """``packing`` as one of :data:`PACKINGS` (``False`` is ``"off"``, ``True`` ``"pad"``).

    Raises:
        ValueError: for any other value.
    """
    if isinstance(packing, bool):
        return "pad" if packing else "off"
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {', '.join(PACKINGS)} (or true/false), "
                         f"not {packing!r}")
    return packing


def _restore_sampler(dataset: ShardDataset, split: str, kwargs: dict, state: dict) -> BatchSampler:
    s = BatchSampler(dataset, split, kwargs)
    s.load_state_dict(state)
    return s


class BatchSampler:
    """Draws ``(batch_size, seq_len + 1)`` batches (uint16 or uint32) from one split; row ``b``
    is a window whose first ``seq_len`` tokens are inputs and last ``seq_len`` the targets.

    Iterating yields batches forever (epochs follow one another). ``state_dict()`` after batch
    ``k``, loaded into a sampler made with the same arguments, gives batch ``k + 1`` next.
    Make one with :meth:`ShardDataset.sampler`.

    >>> s = ds.sampler(batch_size=4, seq_len=8, seed=1)  # doctest: +SKIP
    >>> s.next_batch().shape  # doctest: +SKIP
    (4, 9)
    """

    def __init__(self, dataset: ShardDataset, split: str, kwargs: dict):
        self.dataset, self.split, self._kwargs = dataset, split, dict(kwargs)
        self._core = dataset._core.sampler(split, pad=dataset.eot_token, **kwargs)
        self.batch_size: int = kwargs["batch_size"]
        self.seq_len: int = kwargs["seq_len"]
        self.rank: int = kwargs["rank"]
        self.world_size: int = kwargs["world_size"]
        self.dtype = dataset.dtype
        # Set (in shared memory, so a forked DataLoader worker can set it) once this sampler's
        # batches are drawn in another process: its state here then no longer follows them.
        self._workers_flag: mmap.mmap | None = None

    def __reduce__(self):
        # Pickles as (dataset path, arguments, state): DataLoader workers can be spawned.
        return (_restore_sampler, (self.dataset, self.split, self._kwargs, self._state()))

    def _state(self) -> dict:
        return json.loads(self._core.state_json())

    def _mark_in_workers(self) -> None:
        if self._workers_flag is not None:
            self._workers_flag[0] = 1

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next_batch()

    def __next__(self) -> np.ndarray:
        return self.next_batch()

    def next_batch(self, out: np.ndarray | None = None) -> np.ndarray:
        """The next batch: a new array, or ``out`` (C-contiguous, right shape and dtype) filled
        in place (e.g. a view of a pinned torch tensor)."""
        return self._core.next_batch(out)

    def skip(self, n: int = 1) -> None:
        """Moves on ``n`` batches without copying any tokens."""
        self._core.skip(int(n))

    def state_dict(self) -> dict:
        """Where the sampler is, JSON-serialisable (the same on every rank).

        Raises:
            RuntimeError: if :func:`torch_batches` of this sampler was iterated in DataLoader
                workers, whose copies of the sampler moved on while this one did not (use
                :meth:`torch_loader`, whose ``state_dict()`` is exact with workers).
        """
        if self._workers_flag is not None and self._workers_flag[0]:
            raise RuntimeError(
                "this sampler's batches were drawn in DataLoader workers (num_workers > 0), so "
                "its state here does not follow them; use sampler.torch_loader(num_workers=...) "
                "and that loader's state_dict(), which is exact with workers"
            )
        return self._state()

    def load_state_dict(self, state: dict) -> None:
        """Continues from ``state``.

        Raises:
            ValueError: if it was saved by a sampler with other arguments or another split.
        """
        self._core.load_state_json(json.dumps(state))

    @property
    def epoch(self) -> int:
        return self._core.epoch

    @property
    def batches_per_epoch(self) -> int | None:
        """Batches in an epoch (None with packing, where it depends on document lengths)."""
        return self._core.batches_per_epoch

    def last_lengths(self) -> np.ndarray:
        """Real tokens in each row of the last batch; the rest is end-of-text padding."""
        return self._core.last_lengths()

    def last_starts(self) -> np.ndarray:
        """Where each row of the last batch starts, as a token offset into the split."""
        return self._core.last_starts()

    def last_cropped(self) -> np.ndarray:
        """Document tokens cut away from each row of the last batch (``"bestfit"``: the tail of
        its last document; a pool's last, unfillable row counts with the pool's last row)."""
        return self._core.last_cropped()

    def last_utilisation(self) -> float:
        """The last batch's utilisation: document tokens in its rows over its row slots plus
        the document tokens cropped away, ``sum(lengths) / (B (T + 1) + sum(cropped))``. 1 for
        windows; padding (``"pad"``) and cropping (``"bestfit"``) lower it."""
        real = int(self._core.last_lengths().sum())
        slots = self.batch_size * (self.seq_len + 1) + int(self._core.last_cropped().sum())
        return real / slots

    def last_segments(self) -> np.ndarray:
        """The documents of each row of the last batch, numbered along the row: a
        ``(batch_size, seq_len + 1)`` int32 array, 0 for the row's first document, +1 at each
        document start, padding one number after the last document. Packed rows know their
        documents; windows read the document index.

        Raises:
            ValueError: for windows of bare shards (no document index).
        """
        return self._core.last_segments()

    def torch(self, *, device: Any = None, num_batches: int | None = None):
        """A torch ``IterableDataset`` of ``(x, y)`` int64 tensor pairs; see :func:`torch_batches`."""
        return torch_batches(self, device=device, num_batches=num_batches)

    def torch_loader(self, *, num_workers: int = 0, device: Any = None, **kwargs):
        """A torch ``DataLoader`` of this sampler's ``(x, y)`` batches whose ``state_dict()`` /
        ``load_state_dict()`` resume exactly, with any ``num_workers``; see :func:`torch_loader`."""
        return torch_loader(self, num_workers=num_workers, device=device, **kwargs)


# ---- torch ----------------------------------------------------------------------------------


def torch_batches(sampler: BatchSampler, *, device: Any = None, num_batches: int | None = None):
    """Wraps a sampler as a torch ``IterableDataset`` yielding ``(x, y)``, each
    ``(batch_size, seq_len)`` int64 on ``device``: ``x`` the inputs, ``y`` the targets.

    On CUDA, batches are filled straight into pinned host buffers (two, alternating) and sent
    with ``non_blocking=True``, so the copy overlaps the step; tokens travel at their stored
    width and are widened on the GPU. Use it directly (``for x, y in batches``) or in a
    ``DataLoader(batches, batch_size=None)``; with ``num_workers=K`` worker ``w`` produces
    batches ``w, w + K, ...`` so the stream is the same, but only a ``num_workers=0`` sampler's
    ``state_dict()`` follows it.

    Args:
        sampler: from :meth:`ShardDataset.sampler`.
        device: where tensors go (default CPU).
        num_batches: stop after this many batches (default: never).

    >>> x, y = next(iter(torch_batches(ds.sampler(batch_size=4, seq_len=8))))  # doctest: +SKIP
    >>> x.shape, x.dtype  # doctest: +SKIP
    (torch.Size([4, 8]), torch.int64)
    """
    import torch

    if sampler._workers_flag is None:
        sampler._workers_flag = mmap.mmap(-1, 1)  # anonymous, shared with forked children

    class _TokenBatches(torch.utils.data.IterableDataset):
        def __init__(self):
            super().__init__()
            self.sampler, self.num_batches = sampler, num_batches
            self.device = torch.device(device) if device is not None else torch.device("cpu")

        def __getstate__(self):
            # Pickled for a spawned worker: from now on the batches are drawn elsewhere.
            self.sampler._mark_in_workers()
            return self.__dict__

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
            s = self.sampler
            if info is not None:
                s._mark_in_workers()  # a forked worker: seen by the parent through shared memory
            if workers > 1:
                s.skip(worker)
            cuda = self.device.type == "cuda"
            if cuda:
                signed = torch.int16 if s.dtype == np.uint16 else torch.int32
                shape = (s.batch_size, s.seq_len + 1)
                host = [torch.empty(shape, dtype=signed, pin_memory=True) for _ in range(2)]
                sent = [None, None]
            mask = 0xFFFF if s.dtype == np.uint16 else 0xFFFFFFFF
            count = itertools.count() if self.num_batches is None else range(self.num_batches)
            for i in count:
                if i % workers != worker:
                    continue
                if cuda:
                    slot = i % 2
                    if sent[slot] is not None:
                        sent[slot].synchronize()  # that buffer's last copy has finished
                    s.next_batch(out=host[slot].numpy().view(s.dtype))
                    batch = host[slot].to(self.device, non_blocking=True)
                    sent[slot] = torch.cuda.Event()
                    sent[slot].record()
                    # Widened on the GPU; the mask undoes the sign of the signed view.
                    batch = batch.to(torch.int64) & mask
                    yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
                else:
                    # numpy widens a strided view straight into a contiguous int64 array.
                    batch = s.next_batch()
                    x = torch.from_numpy(batch[:, :-1].astype(np.int64))
                    y = torch.from_numpy(batch[:, 1:].astype(np.int64))
                    yield (x, y) if self.device.type == "cpu" else (x.to(self.device), y.to(self.device))
                if workers > 1:
                    s.skip(workers - 1)

    return _TokenBatches()


def document_attention_mask(segments: Any, device: Any = None):
    """The attention mask that keeps each token to its own document: a boolean
    ``(B, 1, T, T)`` torch tensor, True where query ``i`` may attend to key ``j`` (``j <= i``
    and the same document), for :meth:`gristmill.model.GPT.forward`'s ``attn_mask``.

    Args:
        segments: ``(B, T)`` document numbers of the inputs, e.g.
            ``sampler.last_segments()[:, :-1]``.
        device: where the mask goes.
    """
    import torch

    seg = torch.as_tensor(np.ascontiguousarray(segments), device=device)
    T = seg.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    return (seg[:, :, None] == seg[:, None, :]).logical_and_(causal).unsqueeze(1)


def torch_loader(sampler: BatchSampler, *, num_workers: int = 0, device: Any = None, **kwargs):
    """A ``torch.utils.data.DataLoader`` over :func:`torch_batches` of ``sampler`` whose
    ``state_dict()`` says exactly where the batches taken from it end, with any
    ``num_workers`` (worker ``w`` of ``K`` draws batches ``w, w + K, ...``, so the stream is
    the single-process one and ``n`` batches taken put the sampler ``n`` batches on).

    It draws from its own copy of ``sampler``; ``sampler`` itself does not move.

    Args:
        sampler: from :meth:`ShardDataset.sampler`.
        num_workers: DataLoader worker processes.
        device: where tensors go (default CPU).
        kwargs: other ``DataLoader`` arguments (``batch_size`` is fixed to ``None``).

    >>> loader = ds.sampler(batch_size=4, seq_len=8).torch_loader(num_workers=2)  # doctest: +SKIP
    >>> batches = iter(loader); _ = next(batches); state = loader.state_dict()  # doctest: +SKIP
    >>> loader2 = ds.sampler(batch_size=4, seq_len=8).torch_loader(num_workers=2)  # doctest: +SKIP
    >>> loader2.load_state_dict(state)  # the next batch is the second  # doctest: +SKIP
    """
    import torch

    class TokenLoader(torch.utils.data.DataLoader):
        def __init__(self, start: dict):
            self._start, self._taken = start, 0
            mine = _restore_sampler(sampler.dataset, sampler.split, sampler._kwargs, start)
            super().__init__(
                torch_batches(mine, device=device), batch_size=None, num_workers=num_workers, **kwargs
            )

        def __iter__(self):
            for batch in super().__iter__():
                self._taken += 1
                yield batch

        def state_dict(self) -> dict:
            """The state of a sampler that has served the batches taken so far."""
            s = _restore_sampler(sampler.dataset, sampler.split, sampler._kwargs, self._start)
            s.skip(self._taken)
            return s.state_dict()

        def load_state_dict(self, state: dict) -> None:
            """Continues from ``state`` (call before iterating)."""
            self.dataset.sampler.load_state_dict(state)
            self._start, self._taken = state, 0

    return TokenLoader(sampler._state())


def sliding_window_dataset(dataset: ShardDataset, *, max_length: int, stride: int, split: str = "train"):
    """The sliding-window dataset of "Build a Large Language Model (From Scratch)", ch. 2, over
    a split's tokens: item ``i`` is ``(input_ids, target_ids)``, the ``max_length`` tokens from
    ``i * stride`` and the same shifted by one, as int64 tensors. A map-style torch ``Dataset``.

    ``DataLoader(it, batch_size=B, shuffle=False, drop_last=True)`` over it gives, for a
    one-shard split, the same batches as ``dataset.sampler(batch_size=B, seq_len=max_length,
    stride=stride, mode="sequential")``.
    """
    import torch

    n = dataset.num_tokens(split)

    class _SlidingWindows(torch.utils.data.Dataset):
        def __len__(self):
            return len(range(0, n - max_length, stride))

        def __getitem__(self, i):
            if not 0 <= i < len(self):
                raise IndexError(i)
            start = i * stride
            chunk = np.asarray(dataset.tokens(split, start, start + max_length + 1), dtype=np.int64)
            t = torch.from_numpy(chunk)
            return t[:-1], t[1:]

    return _SlidingWindows()


__all__ = [
    "FORMAT",
    "PACKINGS",
    "BatchSampler",
    "ShardDataset",
    "ShardFormatError",
    "document_attention_mask",
    "open_shard",
    "packing_name",
    "sliding_window_dataset",
    "torch_batches",
    "torch_loader",
    "write_shards",
]
