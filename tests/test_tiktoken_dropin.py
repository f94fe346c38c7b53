"""gristmill.Tokenizer as a drop-in for tiktoken.Encoding on the real gpt2, cl100k_base and
o200k_base vocabularies: what tiktoken's own test suite checks (written here afresh), every
public method and documented attribute against tiktoken itself, and hypothesis parity.

tiktoken's encodings are built offline from ../shared/data with the patterns and special
tokens taken from tiktoken's own source (tiktoken_ext.openai_public), never downloaded.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tiktoken
import tiktoken.load
from gristmill import Tokenizer, TokenizerError
from gristmill.tokenizer import UnknownTokenError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tiktoken_ext import openai_public

# As conftest.py finds it; here a missing folder skips instead of failing.
DATA = Path(
    os.environ.get("GRISTMILL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
# tiktoken's constructor, gristmill's name, the rank file.
ENCODINGS = {
    "gpt2": (openai_public.r50k_base, "gpt2", "gpt2.tiktoken"),
    "cl100k_base": (openai_public.cl100k_base, "cl100k_base", "cl100k_base.tiktoken"),
    "o200k_base": (openai_public.o200k_base, "o200k_base", "o200k_base.tiktoken"),
}
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _require(filename: str) -> Path:
    path = DATA / filename
    if not path.is_file():
        pytest.skip(f"{path} is missing (see ../shared/data/README)")
    return path


def _tiktoken_params(name: str) -> dict:
    """tiktoken's own constructor arguments for ``name``, its ranks read from the local file
    (its expected hash still checked) and nothing written to tiktoken's cache."""
    make, _, filename = ENCODINGS[name]
    local = _require(filename)
    real = tiktoken.load.load_tiktoken_bpe

    def from_disk(url, expected_hash=None):
        assert url.endswith("/" + local.name.replace("gpt2", "r50k_base")), url
        return real(os.fspath(local), expected_hash)

    with mock.patch.object(openai_public, "load_tiktoken_bpe", from_disk), \
         mock.patch.dict(os.environ, {"TIKTOKEN_CACHE_DIR": ""}):
        return make()


@pytest.fixture(scope="module", params=list(ENCODINGS))
def pair(request):
    """(gristmill, tiktoken) for one real encoding."""
    params = _tiktoken_params(request.param)
    theirs = tiktoken.Encoding(**params)
    path = DATA if request.param != "gpt2" else None  # gpt2 ships with gristmill
    ours = Tokenizer.from_name(ENCODINGS[request.param][1], path=path)
    return ours, theirs


@pytest.fixture(scope="module")
def cl100k():
    return Tokenizer.from_name("cl100k_base", path=_require("cl100k_base.tiktoken"))


# ---- what tiktoken's suite checks ------------------------------------------------------------


def test_simple_known_ids(pair):
    ours, theirs = pair
    for text in ("hello world", "hello <|endoftext|>"):
        expected = theirs.encode(text, allowed_special="all")
        assert ours.encode(text, allowed_special="all") == expected
    if theirs.name == "r50k_base":
        assert ours.encode("hello world") == [31373, 995]
        assert ours.encode("hello <|endoftext|>", allowed_special="all") == [31373, 220, 50256]
    if theirs.name == "cl100k_base":
        assert ours.encode("hello world") == [15339, 1917]
        assert ours.decode([15339, 1917]) == "hello world"
        assert ours.encode("hello <|endoftext|>", allowed_special="all") == [15339, 220, 100257]
        assert ours.encode(" \x850") == [220, 126, 227, 15]


def test_every_id_decodes_and_encodes_back_as_in_tiktoken(pair):
    ours, theirs = pair
    assert ours.n_vocab == theirs.n_vocab
    for token in range(theirs.n_vocab):
        try:
            expected = theirs.decode_single_token_bytes(token)
        except KeyError:
            with pytest.raises(KeyError):
                ours.decode_single_token_bytes(token)
            continue
        got = ours.decode_single_token_bytes(token)
        assert got == expected, token
        assert ours.encode_single_token(got) == token


def test_repeated_digits(pair):
    ours, theirs = pair
    for n in range(1, 20):
        assert ours.encode("0" * n) == theirs.encode("0" * n), n
    if theirs.name == "r50k_base":
        assert ours.encode("0000000000000000") == [25645]
        assert ours.encode("00000000000000000") == [8269, 10535, 830]


def test_a_million_repeated_characters(pair):
    ours, theirs = pair
    tokens = ours.encode("x" * 1_000_000)
    assert tokens and ours.decode(tokens) == "x" * 1_000_000
    assert tokens == theirs.encode("x" * 1_000_000)


def test_cl100k_regex_edges(cl100k):
    assert cl100k.encode("rer") == [38149]
    assert cl100k.encode("'rer") == [2351, 81]
    assert cl100k.encode("today\n ") == [31213, 198, 220]
    assert cl100k.encode("today\n \n") == [31213, 27907]
    assert cl100k.encode("today\n  \n") == [31213, 14211]


def test_empty(pair):
    ours, _ = pair
    assert ours.encode("") == [] and ours.encode_ordinary("") == [] and ours.decode([]) == ""


def test_encode_bytes_known(cl100k):
    assert cl100k._encode_bytes(b" \xec\x8b\xa4\xed") == [62085]
    for i in range(10):
        assert cl100k.decode_bytes(cl100k._encode_bytes(b"\x80" * i)) == b"\x80" * i


@FEW
@given(data=st.binary(max_size=64))
@example(data=b"hello \xff")
@example(data=b"a  \n \xe4\xb8")
@example(data=b"\xed\xa0\x80")  # an encoded surrogate: invalid UTF-8
def test_hyp_encode_bytes_matches_tiktoken(pair, data):
    ours, theirs = pair
    assert ours._encode_bytes(data) == theirs._encode_bytes(data)
    assert ours.decode_bytes(ours._encode_bytes(data)) == data


def test_surrogates(cl100k):
    assert cl100k.encode("👍") == [9468, 239, 235]
    assert cl100k.encode("\ud83d\udc4d") == [9468, 239, 235]
    assert cl100k.encode("\ud83d") == cl100k.encode("\ufffd")


def test_catastrophically_repetitive(pair):
    ours, theirs = pair
    for c in ("^", "0", "a", "'s", " ", "\n"):
        for text in (c * 10_000, " " + c * 10_000, " " + c * 10_000 + "\n"):
            tokens = ours.encode(text)
            assert ours.decode(tokens) == text
            assert tokens == theirs.encode(text)


def test_basic_roundtrip(pair):
    ours, _ = pair
    for value in ("hello", "hello ", "hello  ", " hello", " hello ", " hello  ", "hello world",
                  "请考试我的软件！12345"):
        assert ours.decode(ours.encode(value)) == value
        assert ours.decode(ours.encode_ordinary(value)) == value


@FEW
@given(text=st.text())
@example(text="<|endoftext|> it's\r\n\n  12345 ÉTÉ's Straße")
def test_hyp_encode_decode_match_tiktoken(pair, text):
    ours, theirs = pair
    tokens = theirs.encode(text, disallowed_special=())
    assert ours.encode(text, disallowed_special=()) == tokens
    assert ours.encode_ordinary(text) == theirs.encode_ordinary(text) == tokens
    assert ours.encode(text, allowed_special="all") == theirs.encode(text, allowed_special="all")
    assert ours.decode(tokens) == theirs.decode(tokens) == text
    assert ours.decode_bytes(tokens) == theirs.decode_bytes(tokens)
    assert ours.decode_tokens_bytes(tokens) == theirs.decode_tokens_bytes(tokens)
    assert ours.encode_to_numpy(text, disallowed_special=()).tolist() == tokens


def test_special_tokens_allowed_and_disallowed(cl100k):
    eot = cl100k.encode_single_token("<|endoftext|>")
    fip = cl100k.encode_single_token("<|fim_prefix|>")
    fim = cl100k.encode_single_token("<|fim_middle|>")
    assert eot == cl100k.eot_token == 100257
    assert cl100k.encode_single_token(b"<|fim_prefix|>") == fip == 100258

    text = "<|endoftext|> hello <|fim_prefix|>"
    assert eot not in cl100k.encode(text, disallowed_special=())
    for disallowed in ("all", {"<|endoftext|>"}, {"<|fim_prefix|>"}):
        with pytest.raises(ValueError):
            cl100k.encode(text, disallowed_special=disallowed)
    with pytest.raises(ValueError):
        cl100k.encode(text)

    text += " there <|fim_middle|>"
    cases = [
        (frozenset(), (), set()),
        ("all", (), {eot, fip, fim}),
        ("all", "all", {eot, fip, fim}),
        ({"<|fim_prefix|>"}, (), {fip}),
        ({"<|endoftext|>"}, (), {eot}),
        ({"<|fim_middle|>"}, (), {fim}),
    ]
    for allowed, disallowed, present in cases:
        tokens = cl100k.encode(text, allowed_special=allowed, disallowed_special=disallowed)
        assert {eot, fip, fim} & set(tokens) == present, allowed


def test_disallowed_special_token_message_is_tiktokens(pair):
    ours, theirs = pair
    text = "a <|endoftext|> b"
    with pytest.raises(ValueError) as expected:
        theirs.encode(text)
    calls = [
        lambda: ours.encode(text),
        lambda: ours.encode(text, allowed_special=set(), disallowed_special={"<|endoftext|>"}),
        lambda: ours.encode_to_numpy(text),
        lambda: ours.count(text),
        lambda: ours.encode_batch(["fine", text]),
        lambda: ours.encode_batch_to_numpy(["fine", text], disallowed_special="all"),
        lambda: ours.encode_with_unstable(text),
    ]
    for call in calls:
        with pytest.raises(ValueError) as got:
            call()
        assert str(got.value) == str(expected.value)
    # Allowed, or not disallowed: no error.
    assert ours.encode(text, allowed_special="all") == theirs.encode(text, allowed_special="all")
    assert ours.count(text, disallowed_special=()) == len(theirs.encode_ordinary(text))


def _completions(result):
    stable, completions = result
    return stable, sorted(map(tuple, completions))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=24))
@example(text="hello fanta")
@example(text="hello \n")
@example(text="today\n \n")
@example(text="x  ")
@example(text="a\u3000")
@example(text="I'm")
@example(text="12345")
@example(text="<|endoftext|>")
@example(text="x<|endoftext|>y")
@example(text="x<|endoftext|>")
@example(text="")
def test_hyp_encode_with_unstable_matches_tiktoken(pair, text):
    ours, theirs = pair
    for kwargs in ({"disallowed_special": ()}, {"allowed_special": "all"}):
        expected = _completions(theirs.encode_with_unstable(text, **kwargs))
        assert _completions(ours.encode_with_unstable(text, **kwargs)) == expected, kwargs


def test_encode_with_unstable_known(pair):
    ours, theirs = pair
    stable, completions = ours.encode_with_unstable("hello fanta")
    assert stable == ours.encode("hello")
    assert all(ours.decode_bytes(stable + seq).startswith(b"hello fanta") for seq in completions)
    if theirs.name == "r50k_base":
        assert stable == [31373] and [8842] in completions and [277, 4910] in completions


def test_batches(pair):
    ours, theirs = pair
    texts = ["hello world", "goodbye world"]
    assert ours.encode_batch(texts) == theirs.encode_batch(texts)
    assert ours.encode_ordinary_batch(texts[:1]) == [ours.encode_ordinary(texts[0])]
    assert ours.encode_ordinary_batch(texts) == theirs.encode_ordinary_batch(texts)


@FEW
@given(batch=st.lists(st.text(), max_size=5))
def test_hyp_batch_roundtrip(pair, batch):
    ours, theirs = pair
    encoded = ours.encode_batch(batch, allowed_special="all")
    assert encoded == theirs.encode_batch(batch, allowed_special="all")
    assert ours.decode_batch(encoded) == theirs.decode_batch(encoded) == batch
    assert ours.decode_bytes_batch(encoded) == [t.encode("utf-8") for t in batch]
    assert ours.decode_batch(encoded, errors="strict", num_threads=2) == batch


# ---- offsets -----------------------------------------------------------------------------------


def test_known_offsets(cl100k):
    cases = [
        ("hello world", [0, 5]),
        ("hello world<|endoftext|> green cow", [0, 5, 11, 24, 30]),
        ("我非常渴望与人工智能一起工作", [0, 1, 2, 3, 3, 4, 4, 5, 6, 7, 8, 8, 9, 10, 11, 12, 13]),
        ("நடிகர் சூர்யா", [0, 0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 8, 8, 9, 9, 10, 11, 12, 12]),
        (" Ġ除", [0, 1]),
    ]
    for text, offsets in cases:
        tokens = cl100k.encode(text, allowed_special="all")
        assert cl100k.decode_with_offsets(tokens) == (text, offsets)


@FEW
@given(data=st.data())
def test_hyp_offsets_match_tiktoken(pair, data):
    ours, theirs = pair
    ids = data.draw(st.lists(st.integers(0, theirs.n_vocab - 1), min_size=1, max_size=20))
    ids = [i for i in ids if i in ours._special_tokens.values() or i < len(ours._mergeable_ranks)]
    # Offsets need valid UTF-8: go through text, as tiktoken's suite does.
    tokens = theirs.encode(theirs.decode(ids, errors="ignore"), allowed_special="all")
    assert ours.decode_with_offsets(tokens) == theirs.decode_with_offsets(tokens)


# ---- the attributes and the constructor --------------------------------------------------------


def test_attributes_are_tiktokens(pair):
    ours, theirs = pair
    assert ours.max_token_value == theirs.max_token_value
    assert ours.n_vocab == theirs.n_vocab
    assert ours.eot_token == theirs.eot_token
    assert ours.special_tokens_set == theirs.special_tokens_set
    assert ours._special_tokens == theirs._special_tokens
    assert ours._pat_str == theirs._pat_str
    assert ours._mergeable_ranks == theirs._mergeable_ranks
    assert ours.token_byte_values() == theirs.token_byte_values()
    assert ours.name == ENCODINGS["gpt2" if theirs.name == "r50k_base" else theirs.name][1]
    for token in (0, ours.eot_token, ours.max_token_value):
        assert ours.is_special_token(token) == theirs.is_special_token(token)
    for piece in ("hello", " Straße", "xqzxqzxqz"):
        assert ours._encode_single_piece(piece) == theirs._encode_single_piece(piece)


def test_extending_an_encoding_as_tiktokens_readme_shows(pair):
    ours, theirs = pair
    extra = {"<|im_start|>": theirs.n_vocab + 10, "<|im_end|>": theirs.n_vocab + 11}
    mine = Tokenizer(
        "extended",
        pat_str=ours._pat_str,
        mergeable_ranks=ours._mergeable_ranks,
        special_tokens={**ours._special_tokens, **extra},
    )
    # tiktoken takes gristmill's attributes too.
    real = tiktoken.Encoding(
        name="extended",
        pat_str=ours._pat_str,
        mergeable_ranks=ours._mergeable_ranks,
        special_tokens={**ours._special_tokens, **extra},
    )
    text = "<|im_start|>user\nhi<|im_end|><|endoftext|>"
    assert mine.encode(text, allowed_special="all") == real.encode(text, allowed_special="all")
    assert mine.name == "extended" and mine.max_token_value == real.max_token_value
    again = pickle.loads(pickle.dumps(mine))
    assert again.encode(text, allowed_special="all") == mine.encode(text, allowed_special="all")


def test_constructor_takes_tiktokens_keywords():
    params = _tiktoken_params("gpt2")
    tok = Tokenizer(**params)  # name, pat_str, mergeable_ranks, special_tokens, explicit_n_vocab
    assert tok.name == "r50k_base" and tok.n_vocab == params["explicit_n_vocab"]
    with pytest.raises(TokenizerError, match="explicit_n_vocab is 50258"):
        Tokenizer(**{**params, "explicit_n_vocab": 50258})
    with pytest.raises(TypeError):
        Tokenizer("no ranks", pat_str=params["pat_str"])


def test_unknown_id_is_a_key_error_and_a_tokenizer_error(pair):
    ours, theirs = pair
    unused = [i for i in range(len(ours._mergeable_ranks), theirs.n_vocab) if not _known(theirs, i)]
    assert len(unused) == {"r50k_base": 0, "cl100k_base": 16, "o200k_base": 19}[theirs.name]
    for bad in (*unused[:1], theirs.n_vocab, -1):
        for call in (ours.decode, ours.decode_bytes, ours.decode_with_offsets):
            with pytest.raises(KeyError) as info:
                call([bad])
            assert type(info.value) is UnknownTokenError
            assert isinstance(info.value, TokenizerError)  # `except TokenizerError` still works
            assert str(info.value) == f"token id {bad} is not in the vocabulary"
        with pytest.raises(KeyError):
            ours.decode_single_token_bytes(bad)
        if bad >= 0:
            with pytest.raises(KeyError):
                theirs.decode_single_token_bytes(bad)
    with pytest.raises(KeyError):
        ours.encode_single_token(b"\xffnot a token\xff")


def _known(enc, token: int) -> bool:
    try:
        enc.decode_single_token_bytes(token)
    except KeyError:
        return False
    return True


# ---- finding the rank files --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_from_name_and_resolve_find_the_rank_file(name, tmp_path, monkeypatch):
    _require(f"{name}.tiktoken")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", os.fspath(tmp_path))  # an empty cache
    monkeypatch.delenv("GRISTMILL_TIKTOKEN_DIR", raising=False)
    with pytest.raises(TokenizerError) as info:
        Tokenizer.from_name(name)
    message = str(info.value)
    assert "\n" not in message and "GRISTMILL_TIKTOKEN_DIR" in message
    assert f"{name}.tiktoken" in message
    with pytest.raises(TokenizerError, match="GRISTMILL_TIKTOKEN_DIR"):
        Tokenizer.resolve(name)

    expected = _tiktoken_params(name)
    monkeypatch.setenv("GRISTMILL_TIKTOKEN_DIR", os.fspath(DATA))
    for tok in (
        Tokenizer.from_name(name),
        Tokenizer.resolve(name),
        Tokenizer.from_name(name, path=DATA / f"{name}.tiktoken"),
        Tokenizer.resolve(DATA / f"{name}.tiktoken"),
        Tokenizer.from_tiktoken_file(DATA / f"{name}.tiktoken"),
    ):
        assert tok.name == name
        assert tok._special_tokens == expected["special_tokens"]
        assert tok._pat_str == expected["pat_str"]


def test_a_rank_file_only_named_like_cl100k_keeps_the_plain_defaults(tmp_path):
    other = tmp_path / "cl100k_base.tiktoken"
    other.write_bytes(_require("gpt2.tiktoken").read_bytes())
    tok = Tokenizer.from_tiktoken_file(other)
    assert tok._special_tokens == {"<|endoftext|>": 50256}


def test_tokenizer_errors_still_catch_unknown_ids():
    tok = Tokenizer.from_name("gpt2")
    with pytest.raises(TokenizerError):
        tok.decode([10**6])
    ids = tok.encode_to_numpy("hello world")
    assert ids.dtype == np.uint32 and ids.tolist() == [31373, 995]
