"""BPE training: the Rust trainer against a plain-Python one written from the definition, and
the trained tokenizer against tiktoken and HF tokenizers loading what it saves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import regex
from gristmill import Tokenizer, TokenizerError, _core
from gristmill.cli import main as cli_main
from gristmill.tokenizer_train import train_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

ENDOFTEXT = "<|endoftext|>"

# ---- the reference trainer ---------------------------------------------------------------


def reference_train(
    texts: list[str],
    vocab_size: int,
    pattern: str,
    special_tokens: list[str],
    min_frequency: int = 1,
) -> list[tuple[bytes, bytes]]:
    """BPE training by its definition, recounting every pair at every step (slow, simple).

    Special tokens are cut out of the texts; the rest is split by the pre-tokenizer regex;
    each piece starts as its bytes. Then, until there are ``vocab_size - len(special_tokens)``
    distinct tokens: count adjacent pairs (weighted by how often the piece occurs), take the
    most frequent, ties to the greatest ``(left bytes, right bytes)``, and replace it left to
    right in every piece. A merge whose bytes are already a token adds no new token.
    """
    words: Counter[tuple[bytes, ...]] = Counter()
    for text in texts:
        parts = [text]
        if special_tokens:
            alternatives = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
            parts = regex.split(alternatives, text)
        for part in parts:
            for piece in regex.findall(pattern, part):
                words[tuple(bytes([b]) for b in piece.encode("utf-8"))] += 1
    vocab = {bytes([b]) for b in range(256)}
    merges = []
    while len(vocab) < vocab_size - len(special_tokens):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        if pairs[best] < min_frequency:
            break
        merges.append(best)
        joined = best[0] + best[1]
        vocab.add(joined)
        merged: Counter[tuple[bytes, ...]] = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def rust_merges(texts, vocab_size, pattern="gpt2", special_tokens=(), min_frequency=1):
    trainer = _core.BpeTrainer(vocab_size, pattern, list(special_tokens), min_frequency)
    trainer.count(texts)
    while trainer.merge(7):  # small steps: stopping and resuming must not matter
        pass
    return trainer.merges()


def regex_of(pattern: str) -> str:
    return _core.CoreBPE({bytes([b]): b for b in range(256)}, {}, pattern).pattern


# ---- agreement with the reference --------------------------------------------------------

WORDS = ["a", "ab", "ba", "aaa", "the", "The", " ", "  ", "\n", "\n\n", "'s", "12", "1234",
         "!!", ".", "é", "ée", "中文", "🎉", "\t", ENDOFTEXT]


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.lists(st.sampled_from(WORDS), max_size=30).map("".join), min_size=1, max_size=6),
    extra=st.integers(0, 40),
    pattern=st.sampled_from(["gpt2", "cl100k", "o200k"]),
    specials=st.sampled_from([(), (ENDOFTEXT,)]),
    min_frequency=st.integers(1, 3),
)
def test_same_merges_as_reference_on_generated_corpora(texts, extra, pattern, specials, min_frequency):
    vocab_size = 256 + len(specials) + extra
    expected = reference_train(texts, vocab_size, regex_of(pattern), list(specials), min_frequency)
    assert rust_merges(texts, vocab_size, pattern, specials, min_frequency) == expected


# Characters assigned in this Python's Unicode version only: the `regex` module may know
# newer ones than the Rust tables (which match tiktoken's), and would then split differently.
ASSIGNED = st.characters(codec="utf-8", exclude_categories=("Cn",))


@settings(max_examples=40, deadline=None)
@given(
    texts=st.lists(st.text(ASSIGNED, max_size=60), min_size=1, max_size=5),
    extra=st.integers(0, 30),
)
def test_same_merges_as_reference_on_any_unicode(texts, extra):
    expected = reference_train(texts, 256 + extra, regex_of("gpt2"), [])
    assert rust_merges(texts, 256 + extra) == expected


def test_same_merges_as_reference_on_taylorswift(shared_data):
    text = (shared_data / "taylorswift.txt").read_text("utf-8")
    expected = reference_train([text], 512, regex_of("gpt2"), [ENDOFTEXT], min_frequency=2)
    got = rust_merges([text], 512, "gpt2", [ENDOFTEXT], min_frequency=2)
    assert len(got) == 512 - 256 - 1
    assert got == expected


def test_classic_example():
    tok = Tokenizer.train(["aaabdaaabac"], 256 + 3, special_tokens=(), min_frequency=1)
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.merges() == [(b"a", b"a"), (b"aa", b"a"), (b"aaa", b"b")]
    assert _core.train_bpe(["aaabdaaabac"], 259, special_tokens=[], min_frequency=1).n_vocab == 259


def test_ties_go_to_the_greatest_pair_of_bytes():
    # Every pair occurs once: the greatest, (b"z", b"y"), is merged first.
    assert rust_merges(["ab zy mn"], 257)[0] == (b"z", b"y")
    # Compared as byte strings, b"\xc3" > b"z".
    assert rust_merges(["za \xe9"], 257, special_tokens=())[0] == (b"\xc3", b"\xa9")


# ---- the trained tokenizer in tiktoken and HF tokenizers ---------------------------------


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    """A tokenizer trained on tinyshakespeare + taylorswift, saved and loaded back."""
    texts = [(shared_data / n).read_text("utf-8") for n in ("tinyshakespeare.txt", "taylorswift.txt")]
    tok = Tokenizer.train(texts, 2000, name="ts2000")
    directory = tmp_path_factory.mktemp("trained")
    tok.save(directory)
    return tok, directory


def sample_texts(shared_data) -> list[str]:
    swift = (shared_data / "taylorswift.txt").read_text("utf-8")
    return [
        swift[:20000],
        "Hello world! It's 2024: naïve café, 中文, emoji 🎉\n\n  indented\tand trailing   ",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbbbbb",
        "First Citizen:\nBefore we proceed any further, hear me speak.",
    ]


def test_trained_tokenizer_encodes_like_tiktoken(trained, shared_data):
    tiktoken = pytest.importorskip("tiktoken")
    tok, directory = trained
    loaded = Tokenizer.load(directory)
    assert loaded.fingerprint == tok.fingerprint
    ranks = {}
    for line in (directory / "tokenizer.tiktoken").read_text().splitlines():
        import base64

        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    enc = tiktoken.Encoding("ts2000", pat_str=tok.pattern, mergeable_ranks=ranks,
                            special_tokens=tok.special_tokens)
    for text in sample_texts(shared_data):
        assert tok.encode(text) == enc.encode(text)
        assert loaded.encode(text) == enc.encode(text)
    assert tok.encode(ENDOFTEXT, allowed_special="all") == enc.encode(ENDOFTEXT, allowed_special="all")


def test_trained_tokenizer_encodes_like_hf_tokenizers(trained, shared_data):
    tokenizers = pytest.importorskip("tokenizers")
    tok, directory = trained
    hf = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    for text in sample_texts(shared_data):
        assert tok.encode(text) == hf.encode(text).ids
    assert hf.token_to_id(ENDOFTEXT) == tok.eot_token == 1999


def test_special_tokens_are_reserved_never_learned():
    text = ("hello<|endoftext|>" * 50) + "<|pad|> <|pad|>"
    tok = Tokenizer.train([text], 400, special_tokens=[ENDOFTEXT, "<|pad|>"], min_frequency=1)
    learned = [b for b, r in tok.mergeable_ranks().items() if r >= 256]
    assert not any(b"<|" in b or b"|>" in b for b in learned)
    assert tok.special_tokens == {ENDOFTEXT: tok.n_vocab - 2, "<|pad|>": tok.n_vocab - 1}
    assert tok.encode("hello<|endoftext|>", allowed_special="all")[-1] == tok.eot_token
    explicit = Tokenizer.train([text], 400, special_tokens={ENDOFTEXT: 0xFFFF, "<|pad|>": 5000},
                               min_frequency=1)
    assert explicit.special_tokens == {ENDOFTEXT: 0xFFFF, "<|pad|>": 5000}
    assert explicit.mergeable_ranks() == tok.mergeable_ranks()


# ---- inputs --------------------------------------------------------------------------------


def test_files_directories_and_iterables_train_alike(tmp_path, shared_data):
    swift = (shared_data / "taylorswift.txt").read_text("utf-8")
    docs = swift.split("\n\n")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "all.txt").write_text(swift, "utf-8")
    (tmp_path / "docs.jsonl").write_text(
        "".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(docs)), "utf-8"
    )
    from_text = Tokenizer.train([swift], 600)
    from_dir = Tokenizer.train(tmp_path / "corpus", 600)
    assert from_dir.mergeable_ranks() == from_text.mergeable_ranks()
    from_docs = Tokenizer.train(docs, 600)
    from_jsonl = Tokenizer.train([tmp_path / "docs.jsonl"], 600, text_field="body")
    assert from_jsonl.mergeable_ranks() == from_docs.mergeable_ranks()
    records = Tokenizer.train(({"body": d} for d in docs), 600, text_field="body")
    assert records.mergeable_ranks() == from_docs.mergeable_ranks()


def test_big_text_file_counts_like_the_text(tmp_path):
    # Bigger than the Rust reader's 8 MiB block and its 256 KiB units: cut in many places.
    line = "The quick brown fox, 42 times: jumps!  Over\u00a0the lazy dog's back.\n"
    text = "".join(f"{i % 97} {line}" if i % 5 else f"  {line}\n" for i in range(160_000))
    path = tmp_path / "big.txt"
    path.write_text(text, "utf-8")
    trainer = _core.BpeTrainer(300, "cl100k", [])
    trainer.count_file(str(path))
    # A special token holding a newline stops the core from cutting texts: the whole text
    # is then split in one go.
    reference = _core.BpeTrainer(301, "cl100k", ["<never\nseen>"])
    reference.count([text])
    assert (trainer.n_chunks, trainer.n_unique, trainer.n_bytes) == (
        reference.n_chunks, reference.n_unique, reference.n_bytes)
    trainer.merge(100)
    reference.merge(100)
    assert len(trainer.merges()) == 300 - 256
    assert trainer.merges() == reference.merges()


def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="between 257 .* not 256"):
        Tokenizer.train(["x"], 256)
    with pytest.raises(TokenizerError, match="between 258"):
        Tokenizer.train(["x"], 257, special_tokens=["<a>", "<b>"])
    with pytest.raises(TokenizerError, match="listed twice"):
        Tokenizer.train(["x"], 1000, special_tokens=["<a>", "<a>"])
    with pytest.raises(TokenizerError, match="pattern"):
        Tokenizer.train(["x"], 1000, pattern="(unclosed")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        Tokenizer.train(tmp_path / "missing.txt", 1000)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"plain ascii first\ncaf\xe9\n")
    with pytest.raises(TokenizerError, match=r"latin1.txt: byte 21: invalid UTF-8 byte 0xe9"):
        Tokenizer.train(latin1, 1000)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match="bad.jsonl: line 1: invalid UTF-8"):
        Tokenizer.train([bad_jsonl], 1000)
    with pytest.raises(TypeError, match="text 1 is int"):
        _core.BpeTrainer(1000).count(["ok", 5])
    with pytest.raises(TypeError, match="item 1 is int"):
        Tokenizer.train(["ok", 5], 1000)
    with pytest.raises(ValueError, match="min_frequency"):
        Tokenizer.train(["x"], 1000, min_frequency=0)


def test_lone_surrogates_train_as_replacement_characters():
    # As tiktoken encodes them: U+FFFD.
    a = rust_merges(["x\ud800y " * 5, "zz"], 270)
    assert a == rust_merges(["x\ufffdy " * 5, "zz"], 270)


def test_empty_corpus_gives_the_byte_vocabulary():
    tok = Tokenizer.train([], 1000)
    assert tok.n_vocab == 257 and tok.eot_token == 256
    assert tok.encode("hi") == [104, 105]


def test_large_vocab_ids_beyond_uint16():
    # Ask for 2**20 ids; a small corpus runs out of pairs long before, which is fine.
    tok = Tokenizer.train(["some text to learn from " * 3], 2**20, min_frequency=1)
    assert 256 < tok.n_vocab < 2**20


# ---- determinism ---------------------------------------------------------------------------

_FINGERPRINT = """
import sys
from pathlib import Path
import gristmill
tok = gristmill.Tokenizer.train([Path(sys.argv[1])], 3000)
print(gristmill._core.num_threads(), tok.fingerprint)
"""


def test_same_result_on_any_thread_count(shared_data):
    results = []
    for threads in ("1", "2"):
        env = dict(os.environ, GRISTMILL_NUM_THREADS=threads)
        out = subprocess.run(
            [sys.executable, "-c", _FINGERPRINT, str(shared_data / "tinyshakespeare.txt")],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.split()
        assert out[0] == threads
        results.append(out[1])
    assert results[0] == results[1]


# ---- the CLI -------------------------------------------------------------------------------


def test_cli_trains_and_saves(tmp_path, shared_data, capsys):
    out = tmp_path / "tok"
    rc = cli_main(["tokenizer", "train", "--vocab-size", "1000", "--pattern", "gpt2", "-q",
                   "-o", str(out), str(shared_data / "taylorswift.txt")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "unique" in printed and "merges/s" in printed
    tok = Tokenizer.load(out)
    assert tok.n_vocab == 1000 and tok.name == "tok"
    expected, _ = train_tokenizer(shared_data / "taylorswift.txt", 1000)
    assert tok.fingerprint == expected.fingerprint

    rc = cli_main(["tokenizer", "train", "--vocab-size", "100", "-o", str(out),
                   str(shared_data / "taylorswift.txt")])
    assert rc == 1
    assert "vocab_size must be between 257" in capsys.readouterr().err
