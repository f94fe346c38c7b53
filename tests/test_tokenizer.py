"""Parity of gristmill's encoder with tiktoken itself, and the tokenizer file formats with HF."""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys

import gristmill
import numpy as np
import pytest
import tiktoken
from gpt2_bytes import bytes_to_unicode
from gristmill import Tokenizer, TokenizerError
from gristmill.tokenizer import ENDOFTEXT
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tiktoken_ext import openai_public as _public  # noqa: E402


def _tiktoken_pattern(name: str) -> str:
    # The patterns as tiktoken spells them (taken from its source, not from gristmill).
    import inspect
    import re

    src = inspect.getsource(_public)
    if name == "gpt2":
        return _public.r50k_pat_str
    if name == "cl100k":
        return re.search(r'"pat_str": r"""(.*?)""",', src.split("def cl100k_base")[1]).group(1)
    body = src.split("def o200k_base")[1].split("return")[0]
    parts = re.findall(r'r"""(.*?)"""', body)
    return "|".join(parts)


def _ranks(path) -> dict[bytes, int]:
    out = {}
    for line in path.read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            out[base64.b64decode(tok)] = int(rank)
    return out


@pytest.fixture(scope="module")
def gpt2_ranks(shared_data):
    return _ranks(shared_data / "gpt2.tiktoken")


@pytest.fixture(scope="module", params=["gpt2", "cl100k", "o200k"])
def pair(request, gpt2_ranks):
    """(gristmill, tiktoken) built from the same GPT-2 ranks with one of the three patterns."""
    pat = _tiktoken_pattern(request.param)
    specials = {ENDOFTEXT: 50256, "<|fim_prefix|>": 50257}
    ours = Tokenizer.from_ranks(gpt2_ranks, pattern=pat, special_tokens=specials)
    theirs = tiktoken.Encoding(request.param, pat_str=pat, mergeable_ranks=gpt2_ranks, special_tokens=specials)
    return ours, theirs


def test_known_patterns_use_hand_written_matchers():
    for name in ("gpt2", "cl100k", "o200k"):
        pat = _tiktoken_pattern(name)
        assert gristmill.split_pieces("it's 123  x", pat) == gristmill.split_pieces("it's 123  x", name)


def test_builtin_rank_files_are_in_saved_form():
    # from_name keeps the packaged text as the tokenizer's ranks text (fingerprint, save,
    # pickling), which must be what to_tiktoken() would build.
    from gristmill.tokenizer import _BUILTIN

    for name in _BUILTIN:
        tok = Tokenizer.from_name(name)
        assert tok.__dict__["_ranks_text"] == tok._core.to_tiktoken(), name


def test_saved_files_are_shared_as_the_umask_says_and_leave_no_temporary(tmp_path):
    before = os.umask(0o027)
    try:
        d = Tokenizer.from_name("gpt2").save(tmp_path / "tok")
    finally:
        os.umask(before)
    names = sorted(p.name for p in d.iterdir())
    assert names == [".gristmill-output.json", "tokenizer.json", "tokenizer.tiktoken", "tokenizer_config.json"]
    assert {(p.stat().st_mode & 0o777) for p in d.iterdir()} == {0o640}


def test_save_never_writes_over_files_it_did_not_write(tmp_path):
    # save() silently replaced a user's tokenizer.json / tokenizer_config.json.
    gpt2 = Tokenizer.from_name("gpt2")
    d = tmp_path / "mine"
    d.mkdir()
    (d / "tokenizer.json").write_text("my own")
    (d / "notes.txt").write_text("mine")
    with pytest.raises(gristmill.OutputFolderError,
                       match=r"mine/: holds files this run did not write \(notes.txt, tokenizer.json\); .*overwrite"):
        gpt2.save(d)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt", "tokenizer.json"]
    assert (d / "tokenizer.json").read_text() == "my own"
    # overwrite=True: the tokenizer's own names are replaced, nothing else is touched.
    gpt2.save(d, overwrite=True)
    assert (d / "notes.txt").read_text() == "mine"
    assert Tokenizer.load(d).fingerprint == gpt2.fingerprint
    assert (d / "tokenizer.json").read_text() != "my own"


def test_save_replaces_a_tokenizer_it_saved(tmp_path):
    gpt2, small = Tokenizer.from_name("gpt2"), Tokenizer.train(["a b c ab ab abc"] * 10, 260)
    d = gpt2.save(tmp_path / "tok")
    assert small.save(d).samefile(d) and Tokenizer.load(d).fingerprint == small.fingerprint
    # A folder saved before markers existed is known by its config.
    (d / ".gristmill-output.json").unlink()
    gpt2.save(d, hf_json=False)
    assert Tokenizer.load(d).fingerprint == gpt2.fingerprint
    assert not (d / "tokenizer.json").exists()  # the other tokenizer's HF file is not left behind
    assert (d / ".gristmill-output.json").exists()


def test_builtin_gpt2_matches_tiktoken_on_shared_texts(shared_data, gpt2_ranks):
    tok = Tokenizer.from_name("gpt2")
    tik = tiktoken.Encoding("gpt2", pat_str=_public.r50k_pat_str, mergeable_ranks=gpt2_ranks,
                            special_tokens={ENDOFTEXT: 50256})
    assert tok.n_vocab == tik.n_vocab == 50257
    assert tok.eot_token == tik.eot_token == 50256
    for name in ("tinyshakespeare.txt", "taylorswift.txt", "ldnoobw-en.txt"):
        text = (shared_data / name).read_text("utf-8")
        assert tok.encode(text) == tik.encode(text), name
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode((shared_data / "tinyshakespeare.txt").read_text())[:3] == [5962, 22307, 25]


def test_parity_on_real_texts_every_pattern(pair, shared_data):
    ours, theirs = pair
    for name in ("taylorswift.txt", "tinyshakespeare.txt"):
        text = (shared_data / name).read_text("utf-8")
        assert ours.encode_ordinary(text) == theirs.encode_ordinary(text)
    import io

    import zstandard

    with open(shared_data / "bench-en.jsonl.zst", "rb") as f:
        lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        docs = [json.loads(next(lines))["text"] for _ in range(300)]
    assert ours.encode_ordinary_batch(docs) == theirs.encode_ordinary_batch(docs)


# Text built from the things pre-tokenizers are sensitive to.
_fragments = st.sampled_from([
    " ", "  ", "\n", "\r\n", "\t", "\u3000", "\u00a0", "'s", "'S", "'ll", "'LL", "'ve", "'re", "'d",
    "'m", "'t", "'ſ", "don't", "I'M", "123", "4567890", "٣٤", "½", "hello", "World", "CamelCase",
    "HTTPServer", "ǅ", "ʰ", "é", "e\u0301", "\u0301", "中文", "日本語", "Ωμέγα", "🎉", "👍🏽", "!!!",
    "...", "\"", "(", ")", "/", "//", "<|endoftext|>", "<|endoftext", "|>", "<|fim_prefix|>",
    "\x00", "\x7f", "\u2028", "ß", "İ", "ﬁ",
])
_texts = st.one_of(
    st.lists(_fragments, max_size=30).map("".join),
    st.text(max_size=60),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(text=_texts)
def test_parity_hypothesis(pair, text):
    ours, theirs = pair
    assert ours.encode_ordinary(text) == theirs.encode_ordinary(text)
    assert ours.encode(text, allowed_special="all") == theirs.encode(text, allowed_special="all")
    assert ours.encode(text, disallowed_special=()) == theirs.encode(text, disallowed_special=())
    assert ours.count(text, disallowed_special=()) == len(theirs.encode(text, disallowed_special=()))
    assert ours.decode(ours.encode_ordinary(text)) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
@example(text="<|endoftext|>")
def test_lone_surrogates_like_tiktoken(pair, text):
    ours, theirs = pair
    text = text + "\ud800" + text[:3] + "\udfff"

    def outcome(encode):
        # A text holding a special token is refused by both (the default disallows them all).
        try:
            return encode(text)
        except ValueError as e:
            return str(e).splitlines()[0]

    assert outcome(ours.encode) == outcome(theirs.encode)
    assert ours.encode_ordinary(text) == theirs.encode_ordinary(text)


def test_disallowed_special_raises_like_tiktoken():
    tok = Tokenizer.from_name("gpt2")
    with pytest.raises(ValueError, match="disallowed special token '<\\|endoftext\\|>'"):
        tok.encode("a <|endoftext|> b")
    assert tok.encode("a <|endoftext|> b", allowed_special={ENDOFTEXT}) == [64, 220, 50256, 275]
    assert 50256 not in tok.encode("a <|endoftext|> b", disallowed_special=())
    assert tok.encode_ordinary("<|endoftext|>") == tok.encode("<|endoftext|>", disallowed_special=())
    assert tok.special_tokens_set == {ENDOFTEXT}


def test_decode_api():
    tok = Tokenizer.from_name("gpt2")
    ids = tok.encode("héllo wörld 🎉")
    assert tok.decode_bytes(ids) == "héllo wörld 🎉".encode()
    assert b"".join(tok.decode_tokens_bytes(ids)) == "héllo wörld 🎉".encode()
    assert tok.decode_single_token_bytes(31373) == b"hello"
    assert tok.encode_single_token("hello") == 31373
    assert tok.encode_single_token(ENDOFTEXT) == 50256
    # A token that is half a character decodes with a replacement character by default.
    partial = [i for i in ids if len(tok.decode_single_token_bytes(i)) == 1 and tok.decode_single_token_bytes(i)[0] > 127]
    if partial:
        assert "\ufffd" in tok.decode(partial[:1])
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tok.decode([50257])
    assert tok.decode(np.array(ids, dtype=np.uint16)) == "héllo wörld 🎉"


def test_batch_numpy_and_count():
    tok = Tokenizer.from_name("gpt2")
    texts = ["hello world", "", "a b c", "x" * 1000]
    toks, offs = tok.encode_batch_to_numpy(texts, append_eot=True)
    assert toks.dtype == np.uint16 and offs.dtype == np.int64
    assert offs.tolist()[0] == 0 and len(offs) == len(texts) + 1
    for i, t in enumerate(texts):
        assert toks[offs[i]:offs[i + 1]].tolist() == tok.encode(t) + [tok.eot_token]
    toks32, _ = tok.encode_batch_to_numpy(texts, dtype=np.uint32)
    assert toks32.dtype == np.uint32
    assert tok.count_batch(texts) == [len(tok.encode(t)) for t in texts]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    with pytest.raises(ValueError, match="disallowed special"):
        tok.encode_batch(["ok", "<|endoftext|>"])


def test_long_pieces_are_fast_and_correct(gpt2_ranks):
    tok = Tokenizer.from_name("gpt2")
    tik = tiktoken.Encoding("gpt2", pat_str=_public.r50k_pat_str, mergeable_ranks=gpt2_ranks, special_tokens={})
    for text in ("a" * 1_000_000, " " * 1_000_000, "\n" * 1_000_000):
        ids = tok.encode_ordinary(text)
        assert tok.decode(ids) == text
    # tiktoken is quadratic on long pieces: compare on a size it finishes quickly.
    rng = np.random.default_rng(0)
    random_word = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyzé"), 20_000))
    assert tok.encode_ordinary(random_word) == tik.encode_ordinary(random_word)
    assert tok.encode_ordinary("a" * 20_000) == tik.encode_ordinary("a" * 20_000)
    random_million = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 1_000_000))
    assert tok.decode(tok.encode_ordinary(random_million)) == random_million


def test_results_are_plain_lists_that_keep_what_is_put_in_them():
    # Result lists are not tracked by the cycle collector (a list of ints cannot be in a
    # cycle); they must still behave as lists, and keep alive what a caller puts in them.
    import gc
    import weakref

    tok = Tokenizer.from_name("gpt2")
    ids = tok.encode("hello world")
    assert type(ids) is list and ids == [31373, 995]

    class Thing:
        pass

    thing = Thing()
    alive = weakref.ref(thing)
    ids.append(thing)
    del thing
    gc.collect()
    assert alive() is ids[2]
    ids[2:] = []
    assert ids + [1] == [31373, 995, 1] and tok.decode(ids) == "hello world"


def test_results_share_one_int_per_id_and_give_its_references_back():
    # Every result holds the tokenizer's own int for an id (no allocation per token); freeing
    # the results gives back exactly the references they took.
    tok = Tokenizer.from_name("gpt2")
    text = "hello world " * 50
    one = tok.encode_ordinary(text)
    other = tok.encode_ordinary_batch([text, "hello"])
    assert one[0] == 31373 and one[0] is other[0][0] is other[1][0]
    before = sys.getrefcount(one[0])
    for _ in range(100):
        tok.encode_ordinary(text)
        tok.encode_ordinary_batch([text, "hello"])
        tok.encode_with_unstable(text)
    after = sys.getrefcount(one[0])  # outside `assert`: pytest's rewriting holds a reference
    del other
    freed = sys.getrefcount(one[0])
    assert after == before and freed == before - 2


def test_a_first_batch_makes_each_int_once_and_gives_its_references_back():
    # A fresh tokenizer's first call is a batch: the pool (where there is one) finds ints
    # not made yet and the thread building lists makes them. Every list then holds the same int for an id, and
    # freeing a batch gives back exactly the references it took.
    tok = Tokenizer.from_name("gpt2")
    texts = [f"hello world {i} " * (1 + i % 40) for i in range(400)]
    batch = tok.encode_ordinary_batch(texts)
    assert batch == [tok.encode_ordinary(t) for t in texts]
    world = batch[0][1]
    assert world == 995 and all(ids[1] is world for ids in batch)
    before = sys.getrefcount(world)
    again = tok.encode_ordinary_batch(texts)
    taken = sys.getrefcount(world) - before
    del again
    after = sys.getrefcount(world)
    assert taken == sum(ids.count(995) for ids in batch) and after == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_batches_encode_in_a_forked_child():
    # A forked child has the pool's state but none of its threads: its batches run on the
    # calling thread alone, with the same results.
    tok = Tokenizer.from_name("gpt2")
    texts = [f"hello world {i} " * (i % 50) for i in range(300)]
    expected = tok.encode_ordinary_batch(texts)
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest, whatever happens
        code = 2
        try:
            code = 0 if tok.encode_ordinary_batch(texts) == expected else 1
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0


def test_tokenizers_taking_turns_keep_their_own_pieces(gpt2_ranks):
    # The per-thread piece cache belongs to one tokenizer at a time: alternating two
    # vocabularies (same pattern, different ids) must give each its own tokens.
    pat = _tiktoken_pattern("gpt2")
    shifted = {b: (r + 7 if r >= 256 else r) for b, r in gpt2_ranks.items()}
    ours = [Tokenizer.from_ranks(gpt2_ranks, pattern=pat), Tokenizer.from_ranks(shifted, pattern=pat)]
    theirs = [tiktoken.Encoding("a", pat_str=pat, mergeable_ranks=gpt2_ranks, special_tokens={}),
              tiktoken.Encoding("b", pat_str=pat, mergeable_ranks=shifted, special_tokens={})]
    texts = ["hello world, tokenizers taking turns", "Grüße aus Köln", "xyzzy plugh " * 20]
    for _ in range(3):
        for text in texts:
            for mine, reference in zip(ours, theirs):
                assert mine.encode_ordinary(text) == reference.encode_ordinary(text)
                assert mine.count(text) == len(reference.encode_ordinary(text))


def test_pickle_round_trip():
    tok = Tokenizer.from_name("gpt2")
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode("hello <|endoftext|>", allowed_special="all") == tok.encode(
        "hello <|endoftext|>", allowed_special="all")
    assert clone.fingerprint == tok.fingerprint and clone.name == "gpt2"


def test_save_formats_load_in_tiktoken_and_hf(tmp_path, pair, shared_data):
    import tokenizers

    ours, theirs = pair
    d = ours.save(tmp_path / "tok")
    umask = os.umask(0)
    os.umask(umask)
    assert {(f.stat().st_mode & 0o777) for f in d.iterdir()} == {0o666 & ~umask}  # as open() makes
    text = (shared_data / "taylorswift.txt").read_text("utf-8")[:50_000] + " <|endoftext|> x"
    # tiktoken from the saved ranks
    reread = _ranks(d / "tokenizer.tiktoken")
    assert reread == theirs._mergeable_ranks
    # HF tokenizers from the saved tokenizer.json
    hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    assert hf.encode(text, add_special_tokens=False).ids == ours.encode(text, allowed_special="all")
    assert hf.decode(ours.encode_ordinary(text)) == text
    # and back into gristmill, three ways
    for again in (Tokenizer.load(d), Tokenizer.from_hf_json(d / "tokenizer.json")):
        assert again.encode(text, allowed_special="all") == ours.encode(text, allowed_special="all")
        assert again.fingerprint == ours.fingerprint


def test_gpt2_encoder_json_and_vocab_bpe(tmp_path, gpt2_ranks):
    # Write GPT-2's original file pair from the ranks, spelled through the byte-to-unicode table.
    from gristmill import _core

    tok = Tokenizer.from_name("gpt2")
    byte_chars = bytes_to_unicode()
    spell = lambda bs: "".join(byte_chars[b] for b in bs)  # noqa: E731
    encoder = {spell(b): r for b, r in gpt2_ranks.items()}
    encoder[ENDOFTEXT] = 50256
    (tmp_path / "encoder.json").write_text(json.dumps(encoder))
    merges = ["#version: 0.2"] + [f"{spell(a)} {spell(b)}" for a, b in tok.merges()]
    (tmp_path / "vocab.bpe").write_text("\n".join(merges) + "\n")
    loaded = Tokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    assert loaded.special_tokens == {ENDOFTEXT: 50256}
    assert loaded.fingerprint == tok.fingerprint
    assert _core is not None


def test_multilingual_ranks_file_loads_as_tiktoken_loads_it(shared_data):
    path = shared_data / "multilingual.tiktoken"
    theirs_ranks = tiktoken.load.load_tiktoken_bpe(str(path))
    assert theirs_ranks[b""] == 50256  # the file's quirk: '=' is the empty token
    ours = Tokenizer.from_tiktoken_file(path, pattern="gpt2", special_tokens={ENDOFTEXT: 50257})
    assert ours.mergeable_ranks() == theirs_ranks
    theirs = tiktoken.Encoding("ml", pat_str=_public.r50k_pat_str, mergeable_ranks=theirs_ranks,
                               special_tokens={ENDOFTEXT: 50257})
    text = "Ein Beispiel: 日本語のテキスト, русский текст, and English."
    assert ours.encode(text) == theirs.encode(text)


def test_bad_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("IQ== 0\nIg== x\n")
    with pytest.raises(TokenizerError, match=r"bad.tiktoken: line 2: rank 'x'|bad.tiktoken: line 2: rank \"x\""):
        Tokenizer.from_tiktoken_file(bad)
    with pytest.raises(FileNotFoundError, match="nope.tiktoken"):
        Tokenizer.from_tiktoken_file(tmp_path / "nope.tiktoken")
    incomplete = tmp_path / "incomplete.tiktoken"
    incomplete.write_text("IQ== 0\n")
    with pytest.raises(TokenizerError, match="byte 0x00 is not a token"):
        Tokenizer.from_tiktoken_file(incomplete)
    with pytest.raises(TokenizerError, match="invalid pre-tokenizer pattern"):
        Tokenizer.from_ranks({bytes([b]): b for b in range(256)}, pattern="(unclosed")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        Tokenizer.from_name("nope")


def test_custom_pattern_falls_back_to_regex(gpt2_ranks):
    pat = r"\w+|[^\w\s]+|\s+"
    ours = Tokenizer.from_ranks(gpt2_ranks, pattern=pat)
    theirs = tiktoken.Encoding("x", pat_str=pat, mergeable_ranks=gpt2_ranks, special_tokens={})
    text = "Custom patterns, too: it's 2026!"
    assert ours.encode(text) == theirs.encode(text)


def test_cli_encode(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("hello world")
    out = subprocess.run([sys.executable, "-m", "gristmill", "encode", str(f)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["31373", "995"]
    out = subprocess.run([sys.executable, "-m", "gristmill", "encode", "--count", str(f)], capture_output=True, text=True)
    assert out.stdout.startswith("2\t")
    out = subprocess.run([sys.executable, "-m", "gristmill", "encode"], capture_output=True, text=True)
    assert out.returncode == 0 and "338,025" in out.stdout and "MB/s" in out.stdout
    out = subprocess.run([sys.executable, "-m", "gristmill", "encode", str(tmp_path / "missing.txt")],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "missing.txt" in out.stderr and "Traceback" not in out.stderr


# ---- one-line errors (issue 18) and Tokenizer.resolve (issue 19) ------------------------------


@pytest.mark.parametrize("bad", [-1, 2**32, 2**70])
def test_decode_of_an_impossible_id_names_it(bad):
    tok = Tokenizer.from_name("gpt2")
    for call in (lambda: tok.decode([31373, bad]), lambda: tok.decode_bytes([bad]),
                 lambda: tok.decode_single_token_bytes(bad), lambda: tok.decode_tokens_bytes([bad])):
        with pytest.raises(TokenizerError, match=rf"token id {bad} is not in the vocabulary"):
            call()


def test_not_utf8_tokenizer_files_name_the_real_line(tmp_path):
    first = tmp_path / "first.tiktoken"
    first.write_bytes(b"\xff\xfe 0\n")
    with pytest.raises(TokenizerError, match=r"first.tiktoken: line 1: "):
        Tokenizer.from_tiktoken_file(first)
    third = tmp_path / "third.tiktoken"
    third.write_bytes(b"IQ== 0\nIg== 1\n\xff 2\n")
    with pytest.raises(TokenizerError, match=r"third.tiktoken: line 3: "):
        Tokenizer.from_tiktoken_file(third)


def test_hf_json_errors_never_say_line_0(tmp_path):
    hf = tmp_path / "tokenizer.json"
    hf.write_text(json.dumps({"model": {"type": "WordPiece"}}))
    with pytest.raises(TokenizerError, match=r"tokenizer.json: .*model.type") as e:
        Tokenizer.from_hf_json(hf)
    assert "line 0" not in str(e.value)
    tok = Tokenizer.from_name("gpt2")
    tok.save_hf_json(hf)
    doc = json.loads(hf.read_text())
    doc["model"]["merges"][2] = "no-space-here"
    hf.write_text(json.dumps(doc))
    with pytest.raises(TokenizerError, match=r"tokenizer.json: model.merges\[2\]") as e:
        Tokenizer.from_hf_json(hf)
    assert "line 0" not in str(e.value)


def test_empty_tiktoken_file_is_named(tmp_path):
    empty = tmp_path / "empty.tiktoken"
    empty.write_bytes(b"")
    with pytest.raises(TokenizerError, match=r"empty.tiktoken: .*no tokens"):
        Tokenizer.from_tiktoken_file(empty)
    with pytest.raises(TokenizerError, match=r"empty.tiktoken: .*no tokens"):
        Tokenizer.load(empty)


def test_bad_tokenizer_config_is_a_tokenizer_error_naming_file_and_place(tmp_path):
    d = tmp_path / "tok"
    Tokenizer.from_name("gpt2").save(d, hf_json=False)
    cfg = d / "tokenizer_config.json"
    cfg.write_text('{"name": "x",\n "pattern": gpt2}\n')
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: line 2: invalid JSON"):
        Tokenizer.load(d)
    cfg.write_text(json.dumps({"name": "x", "pattern": "gpt2"}))
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: .*special_tokens"):
        Tokenizer.load(d)
    cfg.write_text(json.dumps({"pattern": "gpt2", "special_tokens": ["<|endoftext|>"]}))
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: .*special_tokens"):
        Tokenizer.load(d)
    cfg.write_text("[1, 2]")
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: .*object"):
        Tokenizer.load(d)


def test_resolve_names_paths_and_tokenizers(tmp_path, shared_data):
    gpt2 = Tokenizer.resolve("gpt2")
    assert gpt2.name == "gpt2" and Tokenizer.resolve(gpt2) is gpt2
    assert Tokenizer.resolve("r50k_base").fingerprint == gpt2.fingerprint
    saved = gpt2.save(tmp_path / "saved")
    for spec in (saved, str(saved), saved / "tokenizer.tiktoken", saved / "tokenizer.json"):
        assert Tokenizer.resolve(spec).encode("hello world") == [31373, 995], spec
    assert Tokenizer.resolve(shared_data / "gpt2.tiktoken").n_vocab == 50257
    # A Hugging Face model folder: tokenizer.json, or GPT-2's vocab.json + merges.txt.
    hf = tmp_path / "hf"
    hf.mkdir()
    gpt2.save_hf_json(hf / "tokenizer.json")
    (hf / "tokenizer_config.json").write_text('{"model_max_length": 1024}')  # HF's own, not ours
    assert Tokenizer.resolve(hf).fingerprint == gpt2.fingerprint


def test_resolve_refuses_what_it_cannot_find(tmp_path):
    with pytest.raises(TokenizerError, match=r"unknown tokenizer 'nope'.*gpt2"):
        Tokenizer.resolve("nope")
    with pytest.raises(TokenizerError, match=r"missing/tok.tiktoken: no such tokenizer file"):
        Tokenizer.resolve(tmp_path / "missing" / "tok.tiktoken")
    with pytest.raises(TokenizerError, match=r"missing/tok.tiktoken: no such tokenizer file"):
        Tokenizer.resolve(str(tmp_path / "missing" / "tok.tiktoken"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match=r"empty: no tokenizer in this folder.*tokenizer.tiktoken"):
        Tokenizer.resolve(tmp_path / "empty")
    with pytest.raises(TypeError, match="a tokenizer name, a path or a Tokenizer"):
        Tokenizer.resolve(3)


def test_vocabulary_errors_name_the_file(tmp_path):
    incomplete = tmp_path / "incomplete.tiktoken"
    incomplete.write_text("IQ== 0\n")
    with pytest.raises(TokenizerError, match=r"incomplete.tiktoken: invalid vocabulary: byte 0x00"):
        Tokenizer.from_tiktoken_file(incomplete)
    twice = tmp_path / "twice.tiktoken"
    lines = (Tokenizer.from_name("gpt2").save(tmp_path / "t", hf_json=False) / "tokenizer.tiktoken")
    twice.write_text(lines.read_text() + "IQ== 60000\n")  # b"!" again, under another rank
    with pytest.raises(TokenizerError, match=r"twice.tiktoken: invalid vocabulary: .*two"):
        Tokenizer.resolve(twice)


def test_encoding_keeps_no_utf8_copy_inside_the_str():
    """A non-ASCII str is encoded for the call only: CPython's own UTF-8 of a str would stay
    inside it for its whole life (a corpus held in memory would double)."""
    import sys

    tok = Tokenizer.from_name("gpt2")
    texts = ["héllo wörld " * 1000, "plain ascii " * 1000]
    sizes = [sys.getsizeof(t) for t in texts]
    tok.encode_ordinary(texts[0])
    tok.encode_ordinary_batch(texts)
    tok.encode_batch_to_numpy(texts)
    assert [sys.getsizeof(t) for t in texts] == sizes
