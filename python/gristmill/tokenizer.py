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
#: The default ``allowed_special``: none (recognised by identity, for a fast default call).
_NO_SPECIALS: AbstractSet[str] = frozenset()
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

#: Where :meth:`Tokenizer.from_name` looks for the rank files it does not ship.
TIKTOKEN_DIR_ENV = "GRISTMILL_TIKTOKEN_DIR"
_OPENAI_URL = "https://openaipublic.blob.core.windows.net/encodings/"
_OPENAI = {
    # name: (pattern, special tokens, mergeable tokens in the file, sha256 of the file), as in
    # tiktoken_ext/openai_public.py. Too big to ship: the user points at the files.
    "cl100k_base": (
        "cl100k",
        {ENDOFTEXT: 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
         "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276},
        100256,
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "o200k",
        {ENDOFTEXT: 199999, "<|endofprompt|>": 200018},
        199998,
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}


class UnknownTokenError(KeyError, TokenizerError):
    """A token id that is not in the vocabulary: a ``KeyError`` as tiktoken raises, and a
    :class:`TokenizerError` as the rest of gristmill does."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


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

    def __init__(
        self,
        core: Union["_core.CoreBPE", str, None] = None,
        name: Optional[str] = None,
        *,
        pat_str: Optional[str] = None,
        mergeable_ranks: Optional[dict[bytes, int]] = None,
        special_tokens: Optional[dict[str, int]] = None,
        explicit_n_vocab: Optional[int] = None,
    ):
        """From a core encoder, or as ``tiktoken.Encoding(name, pat_str=..., mergeable_ranks=...,
        special_tokens=..., explicit_n_vocab=...)`` takes it. A ``pat_str`` equal to tiktoken's
        gpt2, cl100k_base or o200k_base regex gets the fast hand-written pre-tokenizer.

        Raises:
            TokenizerError: a bad vocabulary or pattern, or ``explicit_n_vocab`` that does not
                match (tiktoken asserts).
        """
        if isinstance(core, str):  # tiktoken's order: the name comes first
            core, name = None, core
        if core is None:
            if pat_str is None or mergeable_ranks is None:
                raise TypeError(
                    "Tokenizer(name, pat_str=..., mergeable_ranks=..., special_tokens=...) needs "
                    "pat_str and mergeable_ranks, as tiktoken.Encoding does"
                )
            specials = dict(special_tokens or {})
            core = _core.CoreBPE(mergeable_ranks, specials, pat_str)
            if explicit_n_vocab and (
                len(mergeable_ranks) + len(specials) != explicit_n_vocab
                or core.n_vocab != explicit_n_vocab
            ):
                raise TokenizerError(
                    f"explicit_n_vocab is {explicit_n_vocab} but the vocabulary has "
                    f"{len(mergeable_ranks)} mergeable + {len(specials)} special tokens and "
                    f"largest id {core.n_vocab - 1}"
                )
            # Kept as given, as tiktoken keeps it (no copy of a large dict).
            self.__dict__["_mergeable_ranks"] = mergeable_ranks
        elif pat_str is not None or mergeable_ranks is not None or special_tokens is not None:
            raise TypeError("give either a core encoder or tiktoken's keyword arguments, not both")
        self._core = core
        self.name = "custom" if name is None else name
        self._special_tokens = dict(core.special_tokens())
        self._all_special_ids = sorted(self._special_tokens.values())

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str, path: Optional[PathLike] = None) -> "Tokenizer":
        """A tokenizer by its tiktoken name: ``gpt2`` (alias ``r50k_base``) ships with gristmill;
        ``cl100k_base`` and ``o200k_base`` read their rank file (``<name>.tiktoken``, as tiktoken
        downloads it) from ``path`` (the file or its folder), else from the folder
        ``$GRISTMILL_TIKTOKEN_DIR`` names, else from tiktoken's own cache.

        Raises:
            TokenizerError: an unknown name, or a rank file that is not found (saying where to
                put it) or damaged.
        """
        if name in _OPENAI:
            pattern, specials, _, _ = _OPENAI[name]
            ranks = _openai_ranks_file(name, path)
            with _naming(ranks):
                core = _core.CoreBPE.from_tiktoken_file(os.fspath(ranks), specials, pattern)
            return cls(core, name)
        if name not in _BUILTIN:
            raise TokenizerError(f"unknown tokenizer {name!r}; known: {', '.join(_known_names())}")
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
        pattern: Optional[str] = None,
        special_tokens: Optional[dict[str, int]] = None,
    ) -> "Tokenizer":
        """Loads a tiktoken rank file (``base64(token) rank`` per line).

        Args:
            path: the ``.tiktoken`` file.
            pattern: the pre-tokenizer: ``gpt2``, ``cl100k``, ``o200k`` or any regex; by default
                tiktoken's for a file named ``cl100k_base`` / ``o200k_base``, else ``gpt2``.
            special_tokens: ``{text: id}``; by default tiktoken's for those two files, else
                ``<|endoftext|>`` with the next free id.

        Raises:
            FileNotFoundError, TokenizerError: naming the file and line at fault.
        """
        known = _OPENAI.get(Path(path).stem)
        if pattern is None:
            pattern = known[0] if known else "gpt2"
        with _naming(path):
            if known and special_tokens is None:
                try:
                    core = _core.CoreBPE.from_tiktoken_file(os.fspath(path), known[1], pattern)
                except TokenizerError:
                    core = None  # another file so named: read below as any file, errors and all
                if core is not None and core.n_mergeable == known[2]:
                    return cls(core, Path(path).stem)
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
        if isinstance(spec, str) and (spec in _BUILTIN or spec in _OPENAI):
            return cls.from_name(spec)
        if isinstance(spec, str) and not _looks_like_path(spec):
            raise TokenizerError(
                f"unknown tokenizer {spec!r}; give a known name ({', '.join(_known_names())}) "
                "or the path of a tokenizer folder, .tiktoken or tokenizer.json file"
            )
        raise TokenizerError(
            f"{spec}: no such tokenizer file or folder; give the path of a tokenizer folder, "
            f".tiktoken or tokenizer.json file, or a known name ({', '.join(_known_names())})"
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
    def _pat_str(self) -> str:
        # tiktoken's name for it, documented in its README for extending an encoding.
        return self._core.pattern

    @functools.cached_property
    def _mergeable_ranks(self) -> dict[bytes, int]:
        # tiktoken's attribute; built once (a dict of the whole vocabulary).
        return self._core.mergeable_ranks()

    def is_special_token(self, token: int) -> bool:
        """Whether ``token`` is the id of a special token."""
        return token in self._special_tokens.values()

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

    def _special_ids(
        self,
        allowed_special: Union[Literal["all"], AbstractSet[str]],
        disallowed_special: Union[Literal["all"], Collection[str]],
    ) -> tuple[Sequence[int], Sequence[int]]:
        """The ids of the special tokens to encode as such and of those whose text the core
        refuses (with tiktoken's ValueError), as tiktoken reads the two arguments."""
        if allowed_special is _NO_SPECIALS and disallowed_special == "all":
            return (), self._all_special_ids
        specials = self._special_tokens
        if allowed_special == "all":
            allowed_special = specials.keys()
        if disallowed_special == "all":
            disallowed_special = specials.keys() - set(allowed_special)
        return (
            [specials[s] for s in allowed_special if s in specials],
            [specials[s] for s in disallowed_special if s in specials],
        )

    def encode(
        self,
        text: str,
        *,
        allowed_special: Union[Literal["all"], AbstractSet[str]] = _NO_SPECIALS,
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
        # The default arguments, inline: this is the call short documents pay for most.
        if allowed_special is _NO_SPECIALS and disallowed_special == "all":
            allowed, disallowed = (), self._all_special_ids
        else:
            allowed, disallowed = self._special_ids(allowed_special, disallowed_special)
        try:
            return self._core.encode(text, allowed, disallowed)
        except UnicodeEncodeError:  # lone surrogates, replaced as tiktoken does
            return self._core.encode(replace_lone_surrogates(text), allowed, disallowed)

    @_with_valid_text
    def encode_with_unstable(
        self,
        text: str,
        *,
        allowed_special: Union[Literal["all"], AbstractSet[str]] = _NO_SPECIALS,
        disallowed_special: Union[Literal["all"], Collection[str]] = "all",
    ) -> tuple[list[int], list[list[int]]]:
        """Encodes ``text`` into the tokens that more text cannot change and the possible
        token sequences that continue them, as tiktoken's method of the same name (whose
        heuristics it follows, so both give the same tokens and the same set of completions;
        the completions come in no particular order).

        >>> tok = Tokenizer.from_name("gpt2")
        >>> stable, completions = tok.encode_with_unstable("hello fanta")
        >>> stable, [8842] in completions
        ([31373], True)
        """
        allowed, disallowed = self._special_ids(allowed_special, disallowed_special)
        return self._core.encode_with_unstable(text, allowed, disallowed)

    @_with_valid_text
    def encode_to_numpy(
        self,
        text: str,
        *,
        allowed_special: Union[Literal["all"], AbstractSet[str]] = _NO_SPECIALS,
        disallowed_special: Union[Literal["all"], Collection[str]] = "all",
    ) -> np.ndarray:
        """:meth:`encode` as a uint32 array, as tiktoken returns it."""
        allowed, disallowed = self._special_ids(allowed_special, disallowed_special)
        tokens, _ = self._core.encode_batch_numpy([text], allowed, None, False, disallowed)
        return tokens.astype(np.uint32, copy=False)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encodes ``text`` with special tokens treated as ordinary text."""
        try:
            return self._core.encode_ordinary(text)
        except UnicodeEncodeError:  # lone surrogates, replaced as tiktoken does
            return self._core.encode_ordinary(replace_lone_surrogates(text))

    @_with_valid_text
    def count(
        self,
        text: str,
        *,
        allowed_special: Union[Literal["all"], AbstractSet[str]] = _NO_SPECIALS,
        disallowed_special: Union[Literal["all"], Collection[str]] = "all",
    ) -> int:
        """``len(self.encode(text, ...))`` without building the list."""
        allowed, disallowed = self._special_ids(allowed_special, disallowed_special)
        return self._core.count(text, allowed, disallowed)

    @_with_valid_text
    def encode_batch(
        self,
        text: Sequence[str],
        *,
        num_threads: Optional[int] = None,
        allowed_special: Union[Literal["all"], AbstractSet[str]] = _NO_SPECIALS,
        disallowed_special: Union[Literal["all"], Collection[str]] = "all",
    ) -> list[list[int]]:
        """Encodes many texts in parallel (Rust threads, GIL released).

        ``num_threads`` is accepted for tiktoken compatibility; the pool size is set by
        ``GRISTMILL_NUM_THREADS``.
        """
        allowed, disallowed = self._special_ids(allowed_special, disallowed_special)
        return self._core.encode_batch(list(text), allowed, disallowed)

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
        allowed_special: Union[Literal["all"], AbstractSet[str]] = _NO_SPECIALS,
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
        allowed, disallowed = self._special_ids(allowed_special, disallowed_special)
        uint16 = None if dtype is None else np.dtype(dtype) == np.uint16
        append = self.eot_token if append_eot else None
        return self._core.encode_batch_numpy(list(text), allowed, append, uint16, disallowed)

    # ---- decoding --------------------------------------------------------------------------

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        """The bytes of ``tokens``.

        Raises:
            UnknownTokenError: (a ``KeyError`` and a ``TokenizerError``) for an id that is not
                in the vocabulary.
        """
        ids = _as_id_list(tokens)
        try:
            return self._core.decode_bytes(ids)
        except OverflowError:  # an id below 0 or above u32: the core never sees it
            raise _unknown_id(next(i for i in ids if not 0 <= int(i) < 2**32)) from None
        except TokenizerError as e:  # decoding fails only on an unknown id
            raise UnknownTokenError(str(e)) from None

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        """The text of ``tokens``; invalid UTF-8 is replaced with U+FFFD by default."""
        return self.decode_bytes(tokens).decode("utf-8", errors=errors)

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The bytes of one token."""
        token = int(token)
        if not 0 <= token < 2**32:
            raise _unknown_id(token)
        try:
            return self._core.token_bytes(token)
        except TokenizerError as e:
            raise UnknownTokenError(str(e)) from None

    def decode_tokens_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        """The bytes of each token."""
        return [self.decode_single_token_bytes(t) for t in tokens]

    def decode_with_offsets(self, tokens: Sequence[int]) -> tuple[str, list[int]]:
        """The text of ``tokens`` and, for each token, the index in that text of the first
        character holding any of its bytes (as tiktoken computes it).

        Raises:
            UnicodeDecodeError: the tokens do not decode to valid UTF-8 (as in tiktoken).
        """
        token_bytes = self.decode_tokens_bytes(tokens)
        offsets, chars = [], 0
        for b in token_bytes:
            # A token starting with a continuation byte belongs to the character before it.
            offsets.append(max(0, chars - (bool(b) and 0x80 <= b[0] < 0xC0)))
            chars += sum(1 for c in b if not 0x80 <= c < 0xC0)
        return b"".join(token_bytes).decode("utf-8", errors="strict"), offsets

    def decode_batch(
        self, batch: Sequence[Sequence[int]], *, errors: str = "replace", num_threads: int = 8
    ) -> list[str]:
        """:meth:`decode` of each token list (``num_threads`` is accepted for tiktoken)."""
        return [self.decode(tokens, errors=errors) for tokens in batch]

    def decode_bytes_batch(
        self, batch: Sequence[Sequence[int]], *, num_threads: int = 8
    ) -> list[bytes]:
        """:meth:`decode_bytes` of each token list (``num_threads`` is accepted for tiktoken)."""
        return [self.decode_bytes(tokens) for tokens in batch]

    def encode_single_token(self, text_or_bytes: Union[str, bytes]) -> int:
        """The id of a single token given as text or bytes, special tokens included.

        Raises:
            KeyError: if it is not one token.
        """
        if isinstance(text_or_bytes, str):
            text_or_bytes = text_or_bytes.encode("utf-8")
        text_or_bytes = bytes(text_or_bytes)
        rank = self._core.token_id(text_or_bytes)
        if rank is not None:
            return rank
        try:
            return self._special_tokens[text_or_bytes.decode("utf-8")]
        except (UnicodeDecodeError, KeyError):
            raise KeyError(text_or_bytes) from None

    # ---- tiktoken's private encoders (its test suite and some users call them) ---------------

    def _encode_single_piece(self, text_or_bytes: Union[str, bytes]) -> list[int]:
        """BPE of bytes without the pre-tokenizer split; special tokens are not looked for."""
        if isinstance(text_or_bytes, str):
            text_or_bytes = text_or_bytes.encode("utf-8")
        return self._byte_pair_encode(bytes(text_or_bytes))

    def _encode_bytes(self, text: bytes) -> list[int]:
        """Encodes bytes that may not be valid UTF-8, as tiktoken does: the valid prefix as
        text, then its last piece (widened over trailing whitespace tokens) joined with the
        rest of the bytes as one BPE piece. ``decode_bytes`` gives the bytes back."""
        text = bytes(text)
        try:
            return self._core.encode_ordinary(text.decode("utf-8"))
        except UnicodeDecodeError as e:
            valid = e.start
        prefix = text[:valid].decode("utf-8")
        tokens = self._core.encode_ordinary(prefix)
        pieces = _core.split_pieces(prefix, self.pattern) if prefix else []
        last = len(self._byte_pair_encode(pieces[-1].encode("utf-8"))) if pieces else 0
        # tiktoken's widening: whitespace pieces can merge across a split that disappears.
        space = lambda t: _all_space(self.decode_single_token_bytes(t))  # noqa: E731
        if last and space(tokens[-last]):
            while last < len(tokens) and space(tokens[-last - 1]):
                last += 1
        if tokens and last:
            unstable = self.decode_bytes(tokens[-last:]) + text[valid:]
            del tokens[-last:]
        else:
            unstable = text[valid:]
        return tokens + self._byte_pair_encode(unstable)

    def _byte_pair_encode(self, piece: bytes) -> list[int]:
        # Plain BPE in Python for the rare pieces the core cannot be handed (not UTF-8):
        # the lowest-ranked adjacent pair merges first, as in tiktoken.
        ranks = self._mergeable_ranks
        if not piece:
            return []
        if piece in ranks:
            return [ranks[piece]]
        parts = [piece[i : i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            best, at = None, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            parts[at : at + 2] = [parts[at] + parts[at + 1]]
        return [ranks[p] for p in parts]

    def token_byte_values(self) -> list[bytes]:
        """The bytes of every mergeable token, sorted by their bytes as tiktoken returns them
        (rank order is ``sorted(self._mergeable_ranks, key=self._mergeable_ranks.get)``)."""
        return sorted(self._mergeable_ranks)

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


def _unknown_id(token: int) -> UnknownTokenError:
    # The core's wording, for ids it cannot even be given.
    return UnknownTokenError(f"token id {token} is not in the vocabulary")


def _all_space(token: bytes) -> bool:
    return all(c in b" \n\t" for c in token)


def _known_names() -> list[str]:
    return sorted({*_BUILTIN, *_OPENAI})


def _openai_ranks_file(name: str, path: Optional[PathLike]) -> Path:
    """The rank file of ``name`` (in :data:`_OPENAI`): ``path`` (the file or its folder), else
    ``$GRISTMILL_TIKTOKEN_DIR/<name>.tiktoken``, else tiktoken's cached download."""
    filename = f"{name}.tiktoken"
    if path is not None:
        found = Path(path) / filename if Path(path).is_dir() else Path(path)
        if not found.is_file():
            raise TokenizerError(
                f"{found}: no such file; {name} needs its rank file {filename} "
                f"(from {_OPENAI_URL}{filename})"
            )
        return found
    folder = os.environ.get(TIKTOKEN_DIR_ENV)
    if folder and (Path(folder) / filename).is_file():
        return Path(folder) / filename
    cached = _tiktoken_cached(name)
    if cached is not None:
        return cached
    where = f"{folder} holds no {filename}" if folder else f"${TIKTOKEN_DIR_ENV} is not set"
    raise TokenizerError(
        f"{name}: rank file not found ({where}); download {_OPENAI_URL}{filename} into a folder "
        f"and set {TIKTOKEN_DIR_ENV} to it, or pass its path"
    )


def _tiktoken_cached(name: str) -> Optional[Path]:
    """tiktoken's own download of ``name``'s rank file, if it is there and intact."""
    import hashlib
    import tempfile

    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache:
        return None
    url = f"{_OPENAI_URL}{name}.tiktoken"
    path = Path(cache) / hashlib.sha1(url.encode()).hexdigest()
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return path if hashlib.sha256(data).hexdigest() == _OPENAI[name][3] else None


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.endswith((".tiktoken", ".json")) or spec.startswith(".")


def _read_config(path: Path) -> dict:
    """A saved tokenizer's ``tokenizer_config.json``, its keys checked."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TokenizerError(
            f"{path}: line {line}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "expected UTF-8 JSON: save the tokenizer again or fix the file"
        ) from None
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
    if not isinstance(specials, dict):
        raise TokenizerError(
            f"{path}: special_tokens: expected an object of token -> id, found {specials!r}"
        )
    for token, id_ in specials.items():
        # Ids are u32 in the core; a bool is an int to Python but not an id.
        if not isinstance(id_, int) or isinstance(id_, bool) or not 0 <= id_ < 2**32:
            raise TokenizerError(
                f"{path}: special_tokens[{token!r}]: expected an id from 0 to {2**32 - 1}, "
                f"found {id_!r}"
            )
    if not isinstance(meta.get("name", ""), str):
        raise TokenizerError(f"{path}: name: expected a string, found {meta['name']!r}")
    if not isinstance(meta.get("pattern"), str):
        raise TokenizerError(
            f"{path}: pattern: expected a pre-tokenizer name or regex, found {meta.get('pattern')!r}"
        )
    try:  # compiled here so that a bad regex is blamed on this file
        _core.split_pieces("", meta["pattern"])
    except TokenizerError as e:
        raise TokenizerError(f"{path}: pattern: {e}") from None
    return meta


def _as_id_list(tokens: Iterable[int]) -> list[int]:
    if isinstance(tokens, np.ndarray):
        return tokens.astype(np.int64, copy=False).tolist()
    return tokens if isinstance(tokens, list) else list(tokens)


def split_pieces(text: str, pattern: str = "gpt2") -> list[str]:
    """The pre-tokenizer pieces of ``text`` (for inspection)."""
    return _core.split_pieces(text, pattern)
