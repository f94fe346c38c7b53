"""The Python face of the Rust BPE encoder, shaped like ``tiktoken.Encoding``.

Switching from tiktoken is one line::

    enc = tiktoken.get_encoding("gpt2")      # before
    enc = gristmill.Tokenizer.from_name("gpt2")  # after: same ids, same methods
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Collection, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import AbstractSet, Literal, Optional, Union

import numpy as np

from gristmill import _core
from gristmill._core import TokenizerError
from gristmill.defaults import TOKENIZER
from gristmill.documents import replace_lone_surrogates
from gristmill.outputs import OutputFolderError, check_apart, claim
from gristmill.storage import write_atomic

ENDOFTEXT = "<|endoftext|>"
#: The files :meth:`Tokenizer.save` writes in a folder: all it ever replaces there.
SAVED_FILES = ("tokenizer.tiktoken", "tokenizer.json", "tokenizer_config.json")
PathLike = Union[str, "os.PathLike[str]"]

#: Short names of the pre-tokenizer patterns that have a fast hand-written matcher.
PATTERNS = ("gpt2", "cl100k", "o200k")

_BUILTIN = {
    # name: (ranks file shipped in gristmill/data, pattern, special tokens)
    "gpt2": ("gpt2.tiktoken", "gpt2", {ENDOFTEXT: 50256}),
    "r50k_base": ("gpt2.tiktoken", "gpt2", {ENDOFTEXT: 50256}),
}


def _with_valid_text(fn):
    """Retries a call whose text argument(s) held lone surrogates, after replacing them."""

    @functools.wraps(fn)
    def wrapper(self, text, *args, **kwargs):
        try:
            return fn(self, text, *args, **kwargs)
        except UnicodeEncodeError:
            if isinstance(text, str):
                text = replace_lone_surrogates(text)
            else:
                text = [replace_lone_surrogates(t) for t in text]
            return fn(self, text, *args, **kwargs)

    return wrapper


class Tokenizer:
    """A byte-level BPE tokenizer whose ids are identical to tiktoken's.

    Build one with :meth:`from_name`, :meth:`from_tiktoken_file`, :meth:`from_gpt2_files`,
    :meth:`from_hf_json` or :meth:`from_ranks`; save with :meth:`save_tiktoken` and
    :meth:`save_hf_json`.

    >>> tok = Tokenizer.from_name("gpt2")
    >>> tok.encode("hello world")
    [31373, 995]
    >>> tok.decode([31373, 995])
    'hello world'
    >>> tok.encode("<|endoftext|>")
    Traceback (most recent call last):
    ...
    ValueError: Encountered text corresponding to disallowed special token '<|endoftext|>'...
    """

    def __init__(self, core: "_core.CoreBPE", name: str = "custom"):
        self._core = core
        self.name = name
        self._special_tokens = dict(core.special_tokens())

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str) -> "Tokenizer":
        """A built-in tokenizer, available offline: ``gpt2`` (alias ``r50k_base``).

        Raises:
            ValueError: for an unknown name.
        """
        if name not in _BUILTIN:
            raise ValueError(f"unknown tokenizer {name!r}; built in: {sorted(_BUILTIN)}")
        filename, pattern, specials = _BUILTIN[name]
        text = resources.files("gristmill").joinpath("data", filename).read_text("utf-8")
        core = _core.CoreBPE.from_tiktoken_text(text, specials, pattern, f"gristmill/data/{filename}")
        tok = cls(core, name)
        tok.__dict__["_ranks_text"] = text  # the packaged files are in to_tiktoken()'s form
        return tok

    @classmethod
    def from_tiktoken_file(
        cls,
        path: PathLike,
        pattern: str = "gpt2",
        special_tokens: Optional[dict[str, int]] = None,
    ) -> "Tokenizer":
        """Loads a tiktoken rank file (``base64(token) rank`` per line).

        Args:
            path: the ``.tiktoken`` file.
            pattern: the pre-tokenizer: ``gpt2``, ``cl100k``, ``o200k`` or any regex.
            special_tokens: ``{text: id}``; by default ``<|endoftext|>`` gets the next free id.

        Raises:
            FileNotFoundError, TokenizerError: naming the file and line at fault.
        """
        with _naming(path):
            core = _core.CoreBPE.from_tiktoken_file(os.fspath(path), special_tokens or {}, pattern)
            if special_tokens is None:
                core = _core.CoreBPE.from_tiktoken_file(
                    os.fspath(path), {ENDOFTEXT: core.n_vocab}, pattern
                )
        return cls(core, Path(path).stem)

    @classmethod
    def from_gpt2_files(
        cls, encoder_json: PathLike, vocab_bpe: PathLike, pattern: str = "gpt2"
    ) -> "Tokenizer":
        """Loads GPT-2's original ``encoder.json`` + ``vocab.bpe`` pair."""
        with _naming(encoder_json):
            core = _core.CoreBPE.from_gpt2_files(os.fspath(encoder_json), os.fspath(vocab_bpe), pattern)
        return cls(core, Path(encoder_json).parent.name or "gpt2")

    @classmethod
    def from_hf_json(cls, path: PathLike) -> "Tokenizer":
        """Loads a Hugging Face ``tokenizer.json`` holding a byte-level BPE model."""
        with _naming(path):
            core = _core.CoreBPE.from_hf_json(os.fspath(path))
        return cls(core, Path(path).parent.name or "hf")

    @classmethod
    def from_ranks(
        cls,
        mergeable_ranks: dict[bytes, int],
        pattern: str = "gpt2",
        special_tokens: Optional[dict[str, int]] = None,
        name: str = "custom",
    ) -> "Tokenizer":
        """From ``{token_bytes: rank}``, as ``tiktoken.Encoding(mergeable_ranks=...)`` takes."""
        return cls(_core.CoreBPE(mergeable_ranks, special_tokens or {}, pattern), name)

    @classmethod
    def train(
        cls,
        texts_or_paths,
        vocab_size: int = TOKENIZER["vocab_size"],
        pattern: str = TOKENIZER["pattern"],
        special_tokens: Sequence[str] | dict[str, int] = TOKENIZER["special_tokens"],
        *,
        min_frequency: int = TOKENIZER["min_frequency"],
        progress: bool = False,
        name: str = "custom",
        text_field: str = TOKENIZER["text_field"],
    ) -> Tokenizer:
        """Trains a byte-level BPE tokenizer (in Rust: parallel counting, incremental merges).

        Text is split by ``pattern``; the most frequent pair of adjacent tokens is merged
        until there are ``vocab_size`` ids. Ties between equally frequent pairs go to the
        lexicographically greatest pair of byte strings (left token's bytes compared first,
        as in Stanford CS336), so the result is the same on any machine and thread count.
        Special tokens are cut out of the text before counting and never learned.

        Args:
            texts_or_paths: an iterable of texts (``str``, :class:`~gristmill.prep.Document`
                or dicts with ``text_field``), or a path / an iterable of ``pathlib.Path``
                (files or directories: ``.txt`` is read as one UTF-8 document and streamed;
                ``.jsonl[.gz|.zst]`` and ``.parquet`` as by :func:`gristmill.prep.read_documents`).
                A lone ``str`` is a path; strings inside an iterable are texts.
            vocab_size: ids in all: 256 bytes + merges + special tokens (up to 2**30).
            pattern: the pre-tokenizer: ``gpt2``, ``cl100k``, ``o200k`` or any regex.
            special_tokens: names (given ids right after the merges) or ``{name: id}``.
            min_frequency: pairs seen fewer times are never merged (training may stop early).
            progress: show progress bars (tqdm) on stderr.
            name: the tokenizer's name.
            text_field: the text field of dict items and jsonl/parquet records.

        Returns:
            The tokenizer; :meth:`save` writes it for tiktoken and HF tokenizers too.

        Raises:
            TokenizerError: vocab_size below 256 + special tokens, a bad pattern, or a file
                that is not UTF-8 (naming the file and byte).
            FileNotFoundError, OSError: an unreadable file.

        >>> tok = Tokenizer.train(["aaabdaaabac"], 256 + 3, special_tokens=(), min_frequency=1)
        >>> tok.encode("aaabdaaabac")
        [258, 100, 258, 97, 99]
        >>> Tokenizer.train(["hi"], 256)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ...
        TokenizerError: vocab_size must be between 257 (256 byte tokens + 1 special tokens) and ...
        """
        from gristmill.tokenizer_train import train_tokenizer

        tok, _ = train_tokenizer(
            texts_or_paths, vocab_size, pattern, special_tokens,
            min_frequency=min_frequency, progress=progress, name=name, text_field=text_field,
        )
        return tok

    @classmethod
    def load(cls, path: PathLike) -> "Tokenizer":
        """Loads a folder written by :meth:`save`, a Hugging Face folder (``tokenizer.json``, or
        GPT-2's ``vocab.json`` + ``merges.txt``), or a ``.tiktoken`` / ``tokenizer.json`` file.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            TokenizerError: a folder holding no tokenizer, or a damaged file (naming the file
                and its line or key).
        """
        path = Path(path)
        if not path.is_dir():
            if path.name.endswith(".json"):
                return cls.from_hf_json(path)
            return cls.from_tiktoken_file(path)
        if (path / "tokenizer.tiktoken").exists():
            meta = _read_config(path / "tokenizer_config.json")
            with _naming(path):  # the ranks file and the config's special tokens, together
                core = _core.CoreBPE.from_tiktoken_file(
                    os.fspath(path / "tokenizer.tiktoken"), meta["special_tokens"], meta["pattern"]
                )
            return cls(core, meta.get("name", path.name))
        # GPT-2's own pair first: in HF GPT-2 folders it sits beside an equivalent tokenizer.json.
        for encoder, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            if (path / encoder).exists() and (path / merges).exists():
                return cls.from_gpt2_files(path / encoder, path / merges)
        if (path / "tokenizer.json").exists():
            return cls.from_hf_json(path / "tokenizer.json")
        raise TokenizerError(
            f"{path}: no tokenizer in this folder; expected tokenizer.tiktoken + "
            "tokenizer_config.json (gristmill), tokenizer.json (Hugging Face) or vocab.json + "
            "merges.txt (GPT-2)"
        )

    @classmethod
    def resolve(cls, spec: Union["Tokenizer", str, "os.PathLike[str]"]) -> "Tokenizer":
        """The tokenizer ``spec`` names: a :class:`Tokenizer` (returned as is), a path that
        exists (as :meth:`load` reads it), or a built-in name (as :meth:`from_name`).

        Every stage and command that takes a tokenizer takes it through here.

        Raises:
            TokenizerError: an unknown name, a path that does not exist, or a damaged file.

        >>> Tokenizer.resolve("gpt2").n_vocab
        50257
        """
        if isinstance(spec, Tokenizer):
            return spec
        if not isinstance(spec, (str, os.PathLike)):
            raise TypeError(f"expected a tokenizer name, a path or a Tokenizer, not {spec!r}")
        path = Path(spec)
        if path.exists():
            return cls.load(path)
        if isinstance(spec, str) and spec in _BUILTIN:
            return cls.from_name(spec)
        if isinstance(spec, str) and not _looks_like_path(spec):
            raise TokenizerError(
                f"unknown tokenizer {spec!r}; give a built-in name ({', '.join(sorted(_BUILTIN))}) "
                "or the path of a tokenizer folder, .tiktoken or tokenizer.json file"
            )
        raise TokenizerError(
            f"{spec}: no such tokenizer file or folder; give the path of a tokenizer folder, "
            f".tiktoken or tokenizer.json file, or a built-in name ({', '.join(sorted(_BUILTIN))})"
        )

    # ---- saving ---------------------------------------------------------------------------

    def save_tiktoken(self, path: PathLike) -> None:
        """Writes the mergeable ranks as a tiktoken file (atomically)."""
        _write(Path(path), self._ranks_text)

    def save_hf_json(self, path: PathLike) -> None:
        """Writes a HF ``tokenizer.json`` that ``tokenizers.Tokenizer.from_file`` encodes identically."""
        _write(Path(path), self._core.to_hf_json())

    def save(self, directory: PathLike, *, hf_json: bool = True, overwrite: bool = False) -> Path:
        """Writes ``tokenizer.tiktoken``, ``tokenizer.json`` (unless ``hf_json=False``; :meth:`load`
        does not need it) and ``tokenizer_config.json``.

        ``directory`` is taken as :func:`claim_save_folder` says: new, empty, or holding a
        tokenizer saved earlier (replaced); a folder holding other files is refused unless
        ``overwrite``, and even then only those three names are replaced.

        Raises:
            OutputFolderError: ``directory`` holds other files (named) and not ``overwrite``.
        """
        d = Path(directory)
        alone = claim_save_folder(d, overwrite=overwrite)
        self.save_tiktoken(d / "tokenizer.tiktoken")
        if hf_json:
            self.save_hf_json(d / "tokenizer.json")
        elif alone and (d / "tokenizer.json").exists():
            (d / "tokenizer.json").unlink()  # an earlier tokenizer's: it would not match this one
        meta = {
            "name": self.name,
            "pattern": self.pattern,
            "special_tokens": self._special_tokens,
            "n_vocab": self.n_vocab,
            "format": "gristmill-tokenizer-1",
        }
        _write(d / "tokenizer_config.json", json.dumps(meta, indent=2) + "\n")
        return d

    # ---- pickling: the vocabulary travels as tiktoken text ----------------------------------

    def __getstate__(self):
        return {
            "name": self.name,
            "ranks": self._ranks_text,
            "pattern": self.pattern,
            "special_tokens": self._special_tokens,
        }

    def __setstate__(self, state):
        core = _core.CoreBPE.from_tiktoken_text(
            state["ranks"], state["special_tokens"], state["pattern"]
        )
        self.__init__(core, state["name"])

    def __repr__(self) -> str:
        return f"<Tokenizer {self.name!r} n_vocab={self.n_vocab}>"

    # ---- properties ------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        """One more than the largest token id (mergeable or special)."""
        return self._core.n_vocab

    @property
    def pattern(self) -> str:
        """The pre-tokenizer regex."""
        return self._core.pattern

    @property
    def eot_token(self) -> int:
        """The id of ``<|endoftext|>``."""
        return self._special_tokens[ENDOFTEXT]

    @property
    def special_tokens_set(self) -> set[str]:
        return set(self._special_tokens)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @functools.cached_property
    def _ranks_text(self) -> str:
        # Built once (about 15 ms for GPT-2): the fingerprint, save and pickling all use it.
        return self._core.to_tiktoken()

    @functools.cached_property
    def fingerprint(self) -> str:
        """A sha256 of the vocabulary, pattern and special tokens: two tokenizers with the same
        fingerprint encode identically. Shard manifests and checkpoints record it."""
        import hashlib

        h = hashlib.sha256()
        h.update(self._ranks_text.encode("utf-8"))
        h.update(b"\0" + self.pattern.encode("utf-8") + b"\0")
        h.update(json.dumps(sorted(self._special_tokens.items())).encode("utf-8"))
        return h.hexdigest()

    @property
    def max_token_value(self) -> int:
        return self.n_vocab - 1

    # ---- encoding --------------------------------------------------------------------------

    def _allowed_ids(
        self,
        text_or_texts: Union[str, Sequence[str]],
        allowed_special: Union[Literal["all"], AbstractSet[str]],
        disallowed_special: Union[Literal["all"], Collection[str]],
    ) -> list[int]:
        if allowed_special == "all":
            allowed_special = self.special_tokens_set
        if disallowed_special == "all":
            disallowed_special = self.special_tokens_set - set(allowed_special)
        if disallowed_special:
            ids = [self._special_tokens[s] for s in disallowed_special if s in self._special_tokens]
            texts = [text_or_texts] if isinstance(text_or_texts, str) else text_or_texts
            for text in texts:
                found = self._core.find_special(text, ids) if ids else None
                if found is not None:
                    _raise_disallowed_special_token(found)
        return [self._special_tokens[s] for s in allowed_special if s in self._special_tokens]

    @_with_valid_text
    def encode(
        self,
        text: str,
        *,
        allowed_special: Union[Literal["all"], AbstractSet[str]] = frozenset(),
        disallowed_special: Union[Literal["all"], Collection[str]] = "all",
    ) -> list[int]:
        """Encodes ``text``; special-token text is refused unless allowed, as in tiktoken.

        Args:
            allowed_special: special tokens to encode as their ids (``"all"`` for every one).
            disallowed_special: special tokens whose text raises (default: all not allowed);
                pass ``()`` to encode such text as ordinary text.

        Raises:
            ValueError: if ``text`` contains a disallowed special token.

        >>> Tokenizer.from_name("gpt2").encode("<|endoftext|>", allowed_special="all")
        [50256]
        """
        allowed = self._allowed_ids(text, allowed_special, disallowed_special)
        return self._core.encode(text, allowed)

    @_with_valid_text
    def encode_ordinary(self, text: str) -> list[int]:
        """Encodes ``text`` with special tokens treated as ordinary text."""
        return self._core.encode_ordinary(text)

    @_with_valid_text
    def count(
        self,
        text: str,
        *,
        allowed_special: Union[Literal["all"], AbstractSet[str]] = frozenset(),
        disallowed_special: Union[Literal["all"], Collection[str]] = "all",
    ) -> int:
        """``len(self.encode(text, ...))`` without building the list."""
        allowed = self._allowed_ids(text, allowed_special, disallowed_special)
        return self._core.count(text, allowed)

    @_with_valid_text
    def encode_batch(
        self,
        text: Sequence[str],
        *,
        num_threads: Optional[int] = None,
        allowed_special: Union[Literal["all"], AbstractSet[str]] = frozenset(),
        disallowed_special: Union[Literal["all"], Collection[str]] = "all",
    ) -> list[list[int]]:
        """Encodes many texts in parallel (Rust threads, GIL released).

        ``num_threads`` is accepted for tiktoken compatibility; the pool size is set by
        ``GRISTMILL_NUM_THREADS``.
        """
        texts = list(text)
        allowed = self._allowed_ids(texts, allowed_special, disallowed_special)
        return self._core.encode_batch(texts, allowed)

    @_with_valid_text
    def encode_ordinary_batch(
        self, text: Sequence[str], *, num_threads: Optional[int] = None
    ) -> list[list[int]]:
        """Encodes many texts in parallel, special tokens treated as ordinary text."""
        return self._core.encode_batch(list(text), [])

    @_with_valid_text
    def count_batch(self, text: Sequence[str]) -> list[int]:
        """Token counts of many texts (special tokens as ordinary text), in parallel."""
        return self._core.count_batch(list(text), [])

    @_with_valid_text
    def encode_batch_to_numpy(
        self,
        text: Sequence[str],
        *,
        append_eot: bool = False,
        allowed_special: Union[Literal["all"], AbstractSet[str]] = frozenset(),
        disallowed_special: Union[Literal["all"], Collection[str]] = (),
        dtype: Optional[np.dtype] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encodes many texts into one flat array without Python lists in between.

        Returns:
            ``(tokens, offsets)``: tokens are uint16 when the vocabulary fits, else uint32;
            document ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.

        >>> toks, offs = Tokenizer.from_name("gpt2").encode_batch_to_numpy(["hi", "yo"], append_eot=True)
        >>> toks.dtype, offs.tolist()
        (dtype('uint16'), [0, 2, 4])
        """
        texts = list(text)
        allowed = self._allowed_ids(texts, allowed_special, disallowed_special)
        uint16 = None if dtype is None else np.dtype(dtype) == np.uint16
        append = self.eot_token if append_eot else None
        return self._core.encode_batch_numpy(texts, allowed, append, uint16)

    # ---- decoding --------------------------------------------------------------------------

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        """The bytes of ``tokens``.

        Raises:
            TokenizerError: for an id that is not in the vocabulary.
        """
        ids = _as_id_list(tokens)
        try:
            return self._core.decode_bytes(ids)
        except OverflowError:  # an id below 0 or above u32: the core never sees it
            raise _unknown_id(next(i for i in ids if not 0 <= int(i) < 2**32)) from None

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        """The text of ``tokens``; invalid UTF-8 is replaced with U+FFFD by default."""
        return self.decode_bytes(tokens).decode("utf-8", errors=errors)

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The bytes of one token."""
        token = int(token)
        if not 0 <= token < 2**32:
            raise _unknown_id(token)
        return self._core.token_bytes(token)

    def decode_tokens_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        """The bytes of each token."""
        return [self.decode_single_token_bytes(t) for t in tokens]

    def encode_single_token(self, text_or_bytes: Union[str, bytes]) -> int:
        """The id of a single token given as text or bytes.

        Raises:
            KeyError: if it is not one token.
        """
        if isinstance(text_or_bytes, str):
            if text_or_bytes in self._special_tokens:
                return self._special_tokens[text_or_bytes]
            text_or_bytes = text_or_bytes.encode("utf-8")
        rank = self._core.token_id(bytes(text_or_bytes))
        if rank is None:
            raise KeyError(text_or_bytes)
        return rank

    def token_byte_values(self) -> list[bytes]:
        """The bytes of every mergeable token, in rank order."""
        return [b for b, _ in sorted(self._core.mergeable_ranks().items(), key=lambda kv: kv[1])]

    def mergeable_ranks(self) -> dict[bytes, int]:
        return self._core.mergeable_ranks()

    def merges(self) -> list[tuple[bytes, bytes]]:
        """The merge list (pairs of token bytes) in priority order, recovered from the ranks."""
        return self._core.merges()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


def _saved_before_markers(directory: Path) -> bool:
    """A folder :meth:`Tokenizer.save` wrote before folders were marked: its config says so."""
    try:
        meta = json.loads((directory / "tokenizer_config.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and str(meta.get("format", "")).startswith("gristmill-tokenizer")


def claim_save_folder(directory: PathLike, *, overwrite: bool = False, inputs: Iterable = ()) -> bool:
    """Takes ``directory`` for a saved tokenizer before any work (see :mod:`gristmill.outputs`):
    apart from the ``inputs`` (paths), and new, empty or holding a tokenizer saved earlier
    (then marked as the tokenizer's). With ``overwrite``, any other folder is taken too, but
    not marked: only :data:`SAVED_FILES` are then written there.

    Returns:
        Whether the folder is the tokenizer's alone.

    Raises:
        OutputFolderError: ``directory`` overlaps an input, or holds files a saved tokenizer
            does not (named) and not ``overwrite``.
    """
    check_apart(directory, inputs)
    try:
        claim(directory, "tokenizer", SAVED_FILES.__contains__, earlier=_saved_before_markers,
              fix="choose an empty or new folder, or pass overwrite=True (--overwrite) to replace "
                  "only the tokenizer's files")
    except OutputFolderError:
        if not overwrite:
            raise
        Path(directory).mkdir(parents=True, exist_ok=True)
        return False
    return True


@contextlib.contextmanager
def _naming(path: PathLike):
    """Puts ``path`` in front of the core's vocabulary errors, which say what is wrong with
    the vocabulary it was given but not which file it came from."""
    try:
        yield
    except TokenizerError as e:
        if not str(e).startswith("invalid vocabulary:") or os.fspath(path) in str(e):
            raise
        raise TokenizerError(f"{os.fspath(path)}: {e}") from None


def _unknown_id(token: int) -> TokenizerError:
    # The core's wording, for ids it cannot even be given.
    return TokenizerError(f"token id {token} is not in the vocabulary")


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.endswith((".tiktoken", ".json")) or spec.startswith(".")


def _read_config(path: Path) -> dict:
    """A saved tokenizer's ``tokenizer_config.json``, its keys checked."""
    text = path.read_text("utf-8")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(
            f"{path}: line {e.lineno}: invalid JSON at column {e.colno}: {e.msg}; "
            "save the tokenizer again or fix the file"
        ) from None
    if not isinstance(meta, dict):
        raise TokenizerError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    specials = meta.get("special_tokens")
    if not isinstance(specials, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in specials.items()
    ):
        raise TokenizerError(
            f"{path}: special_tokens: expected an object of token -> id, found {specials!r}"
        )
    if not isinstance(meta.get("pattern"), str):
        raise TokenizerError(
            f"{path}: pattern: expected a pre-tokenizer name or regex, found {meta.get('pattern')!r}"
        )
    return meta


def _as_id_list(tokens: Iterable[int]) -> list[int]:
    if isinstance(tokens, np.ndarray):
        return tokens.astype(np.int64, copy=False).tolist()
    return tokens if isinstance(tokens, list) else list(tokens)


def _raise_disallowed_special_token(token: str):
    raise ValueError(
        f"Encountered text corresponding to disallowed special token {token!r}.\n"
        "If you want this text to be encoded as a special token, "
        f"pass it to `allowed_special`, e.g. `allowed_special={{{token!r}, ...}}`.\n"
        f"If you want this text to be encoded as normal text, disable the check for this token "
        f"by passing `disallowed_special=(enc.special_tokens_set - {{{token!r}}})`.\n"
        "To disable this check for all special tokens, pass `disallowed_special=()`.\n"
    )


def split_pieces(text: str, pattern: str = "gpt2") -> list[str]:
    """The pre-tokenizer pieces of ``text`` (for inspection)."""
    return _core.split_pieces(text, pattern)
