"""Dedup on constructed corpora with known duplicates, against theory and against datatrove."""

from __future__ import annotations

import json
import os
import random
import signal
import string
import struct
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from gristmill import _core
from gristmill.dedup import (
    DedupConfig,
    DedupError,
    collision_probability,
    dedup,
    minhash_signatures,
    parse_size,
    shingle_hashes,
)
from gristmill.documents import Document, read_documents
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent


# ---- helpers ------------------------------------------------------------------------------


def edit(text: str, rate: float, rng: random.Random) -> str:
    """About ``rate`` of the words deleted, substituted by a random word, or followed by one."""
    out = []
    for w in text.split(" "):
        r = rng.random()
        if r < rate / 3:
            continue
        if r < 2 * rate / 3:
            out.append("".join(rng.choices(string.ascii_lowercase, k=7)))
            continue
        out.append(w)
        if r < rate:
            out.append("".join(rng.choices(string.ascii_lowercase, k=7)))
    return " ".join(out)


def jaccard(a: str, b: str) -> float:
    sa, sb = set(shingle_hashes(a).tolist()), set(shingle_hashes(b).tolist())
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def real_docs(shared_data: Path, n: int, min_words: int = 200) -> list[Document]:
    out = []
    for d in read_documents(shared_data / "bench-en.jsonl.zst"):
        if len(d.text.split()) >= min_words:
            out.append(Document(d.id, d.text))
            if len(out) == n:
                break
    return out


def write_jsonl(path: Path, docs: list[Document]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": d.id, "text": d.text, **d.metadata}) + "\n" for d in docs)
    return path


def outputs(out: Path, prefix: str) -> list[Document]:
    return list(read_documents(sorted(out.glob(f"{prefix}-*.jsonl"))))


def run(tmp: Path, docs: list[Document], name: str = "out", **cfg) -> tuple[dict, list, list]:
    cfg.setdefault("fmt", "jsonl")
    report = dedup(lambda: iter(docs), tmp / name, DedupConfig(**cfg))
    return report, outputs(tmp / name, "docs"), outputs(tmp / name, "removed")


def sentences(k: int, rng: random.Random, n: int = 8) -> list[str]:
    """``k`` distinct made-up sentences of ``n`` words."""
    return [
        " ".join("".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(n)).capitalize() + "."
        for _ in range(k)
    ]


# ---- exact --------------------------------------------------------------------------------


def test_exact_copies_keep_the_first_and_name_it(tmp_path):
    docs = [
        Document("a", "Hello world, this is the first text."),
        Document("b", "Something else entirely."),
        Document("c", "  HELLO   world, this is the FIRST text.\n"),  # same after folding
        Document("d", "Hello world, this is the first text!"),  # punctuation differs: kept
        Document("e", "Something else entirely."),
    ]
    report, kept, removed = run(tmp_path, docs, minhash=False)
    assert [d.id for d in kept] == ["a", "b", "d"]
    assert {(d.id, d.metadata["dedup_method"], d.metadata["duplicate_of"]) for d in removed} == {
        ("c", "exact", "a"),
        ("e", "exact", "b"),
    }
    assert report["removed"]["exact"] == 2 and report["documents_kept"] == 3
    # Removed documents keep their original text and metadata.
    assert next(d for d in removed if d.id == "c").text == docs[2].text


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["x", "y", "X ", "z z", "Z  Z", ""]), min_size=1, max_size=12))
def test_exact_keeps_first_occurrence_in_input_order(tmp_path_factory, texts):
    tmp = tmp_path_factory.mktemp("exact")
    docs = [Document(str(i), t) for i, t in enumerate(texts)]
    _, kept, removed = run(tmp, docs, minhash=False)
    first: dict[str, str] = {}
    for d in docs:
        first.setdefault(" ".join(d.text.split()).lower(), d.id)
    assert [d.id for d in kept] == sorted(first.values(), key=int)
    for d in removed:
        assert d.metadata["duplicate_of"] == first[" ".join(d.text.split()).lower()]


# ---- MinHash ------------------------------------------------------------------------------


def test_near_duplicates_recall_and_precision(tmp_path, shared_data):
    """Edited copies at known rates: Jaccard >= 0.9 found (recall >= 0.95), <= 0.5 left alone."""
    rng = random.Random(1)
    originals = real_docs(shared_data, 150)
    variants = []
    for d in originals:
        for rate in (0.002, 0.005, 0.01, 0.15, 0.3):
            v = Document(f"{d.id}~{rate}", edit(d.text, rate, rng), {"of": d.id})
            variants.append((v, jaccard(d.text, v.text)))
    docs = originals + [v for v, _ in variants]
    _, _, removed = run(tmp_path, docs, exact=False)
    dup_of = {d.id: d.metadata["duplicate_of"] for d in removed}
    high = [v for v, j in variants if j >= 0.9]
    low = [v for v, j in variants if j <= 0.5]
    assert len(high) >= 200 and len(low) >= 200
    recall = sum(v.id in dup_of for v in high) / len(high)
    false_merge = sum(v.id in dup_of for v in low) / len(low)
    assert recall >= 0.95, recall
    assert false_merge <= 0.01, false_merge


@pytest.mark.parametrize("bands,rows", [(14, 8), (20, 5)])
def test_lsh_collision_rate_matches_theory(bands, rows):
    """Pairs of word sets of exact Jaccard s share a band at the rate 1 - (1 - s^r)^b."""
    rng = random.Random(bands)
    n_pairs, size = 300, 60
    for s in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9):
        common = round(2 * size * s / (1 + s))  # |A & B| / |A | B| = s with |A| = |B| = size
        texts = []
        for _ in range(n_pairs):
            words = ["".join(rng.choices(string.ascii_lowercase, k=8)) for _ in range(2 * size - common)]
            texts.append(" ".join(words[:size]))
            texts.append(" ".join(words[size - common :]))
        exact_s = common / (2 * size - common)
        sigs = minhash_signatures(texts, ngram=1, bands=bands, rows=rows, fold_numbers=False)
        a, b = sigs[0::2], sigs[1::2]
        # Each permutation agrees with probability s ...
        assert abs((a == b).mean() - exact_s) < 0.02
        # ... and some band agrees with the probability LSH theory gives.
        collide = (a == b).reshape(n_pairs, bands, rows).all(axis=2).any(axis=1).mean()
        p = collision_probability(exact_s, bands, rows)
        sigma = (p * (1 - p) / n_pairs) ** 0.5
        assert abs(collide - p) <= 4 * sigma + 0.01, (s, collide, p)


def test_signatures_and_parameters():
    sig = minhash_signatures(["a b c d e f g", "short text"])
    assert sig.dtype == np.uint64 and sig.shape == (2, 112)
    assert (sig[0] < 2**61 - 1).all() and (sig[1] == 2**64 - 1).all()
    a, b = _core.minhash_permutations(DedupConfig().core_json())
    assert len(a) == len(b) == 112 and (a >= 1).all() and (a < 2**61 - 1).all() and (b < 2**61 - 1).all()
    # Same seed, same signatures; another seed, others.
    assert (minhash_signatures(["a b c d e f g"]) == sig[:1]).all()
    assert not (minhash_signatures(["a b c d e f g"], seed=2) == sig[:1]).all()
    assert round(collision_probability(0.8, 14, 8), 3) == 0.924


def test_jaccard_check_refuses_weak_candidates(tmp_path, shared_data):
    rng = random.Random(3)
    originals = real_docs(shared_data, 40)
    variants = [Document(f"{d.id}~", edit(d.text, 0.04, rng)) for d in originals]
    docs = originals + variants
    plain, _, _ = run(tmp_path, docs, "plain", exact=False)
    checked, _, removed = run(tmp_path, docs, "checked", exact=False, threshold=0.9)
    assert checked["minhash"]["rejected_pairs"] > 0
    assert checked["removed"]["minhash"] < plain["removed"]["minhash"]
    for d in removed:  # every merge that survived the check is a real near-duplicate
        original = next(o for o in originals if o.id == d.metadata["duplicate_of"])
        assert jaccard(original.text, d.text) >= 0.8


# ---- lines and spans ----------------------------------------------------------------------


def test_c4_lines_kept_in_one_document_chosen_by_id_hash(tmp_path):
    rng = random.Random(5)
    boiler = ["Subscribe to our newsletter for weekly updates.", "Copyright 2024 Example Media."]
    docs = []
    for i in range(12):
        body = sentences(5, rng)
        lines = body[:2] + [boiler[0]] + body[2:] + [boiler[1]]
        docs.append(Document(f"page{i}", "\n".join(lines)))
    docs.append(Document("local", "\n".join(sentences(4, rng) + ["Repeat me here.", "Repeat me here."])))
    report, kept, removed = run(tmp_path, docs, minhash=False, lines=True)
    assert removed == []
    for line in boiler:
        holders = [d.id for d in kept if line in d.text]
        assert len(holders) == 1, (line, holders)
    assert report["lines_cut"] == 2 * 11 + 1
    local = next(d for d in kept if d.id == "local")
    assert local.text.count("Repeat me here.") == 1
    # The choice does not depend on input order.
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    _, kept2, _ = run(tmp_path, shuffled, "shuffled", minhash=False, lines=True)
    assert {d.id: d.text for d in kept2} == {d.id: d.text for d in kept}


def test_lines_drop_documents_left_too_short(tmp_path):
    rng = random.Random(6)
    shared = sentences(3, rng)
    docs = [
        Document("full", "\n".join(sentences(3, rng) + shared)),
        Document("copyish", "\n".join(shared + sentences(1, rng))),  # 1 sentence would remain
    ]
    report, kept, removed = run(tmp_path, docs, minhash=False, exact=False, lines=True)
    # xxh3_64("full") < xxh3_64("copyish"): "full" keeps the shared lines, "copyish" keeps
    # one sentence of its own, fewer than 3, and goes.
    assert [d.id for d in kept] == ["full"] and kept[0].text == docs[0].text
    assert [(d.id, d.metadata) for d in removed] == [
        ("copyish", {"dedup_method": "lines", "duplicate_of": "full"})
    ]
    assert report["removed"]["lines"] == 1 and report["lines_cut"] == 3


def test_spans_removed_from_later_documents(tmp_path):
    rng = random.Random(7)
    shared = sentences(4, rng, n=12)
    first = " ".join(sentences(3, rng, n=12) + shared)
    second = " ".join(shared[:3] + sentences(6, rng, n=12))  # a 3-sentence span of the first
    third = " ".join(shared + sentences(1, rng, n=12))  # little left after the spans go
    docs = [Document("first", first), Document("second", second), Document("third", third)]
    report, kept, removed = run(tmp_path, docs, minhash=False, spans=True)
    texts = {d.id: d.text for d in kept}
    assert texts["first"] == first
    assert shared[0] not in texts["second"] and len(_core.split_sentences(texts["second"])) == 6
    assert [(d.id, d.metadata["dedup_method"], d.metadata["duplicate_of"]) for d in removed] == [
        ("third", "spans", "first")
    ]
    assert report["removed"]["spans"] == 1 and report["sentences_cut"] == 3 + 4


# ---- scale: spill, resume, traceability -------------------------------------------------


def mixed_corpus(shared_data: Path) -> list[Document]:
    rng = random.Random(11)
    docs = real_docs(shared_data, 120, min_words=50)
    extra = []
    for d in docs[:60]:
        extra.append(Document(f"{d.id}~copy", d.text))
        extra.append(Document(f"{d.id}~edit", edit(d.text, 0.01, rng)))
    out = docs + extra
    rng.shuffle(out)
    return out


def test_spill_gives_identical_output(tmp_path, shared_data):
    docs = mixed_corpus(shared_data)
    cfg = {"lines": True, "spans": True, "threshold": 0.7}
    big, kept, removed = run(tmp_path, docs, "memory", memory_limit="1GB", **cfg)
    small, kept2, removed2 = run(tmp_path, docs, "spill", memory_limit="4kB", batch_size=7, **cfg)
    assert big["index"]["chunks"] == 1 and big["index"]["memory_spills"] == 0
    assert small["index"]["memory_spills"] > 20
    # the MinHash union-find moved to its file to stay within 4kB, with the same clusters
    assert small["index"]["union_find_spilled"] and not big["index"]["union_find_spilled"]
    assert (kept2, removed2) == (kept, removed)
    for key in ("removed", "documents_kept", "lines_cut", "sentences_cut", "minhash"):
        assert small[key] == big[key]
    assert big["documents_removed"] > 50


def test_every_removal_is_traceable(tmp_path, shared_data):
    docs = mixed_corpus(shared_data)
    report, kept, removed = run(tmp_path, docs, lines=True)
    ids = {d.id for d in docs}
    assert len(kept) + len(removed) == len(docs) == report["documents_in"]
    counts = defaultdict(int)
    for d in removed:
        assert d.metadata["duplicate_of"] in ids
        # Only a document dropped for repeating its own lines names itself.
        assert d.metadata["duplicate_of"] != d.id or d.metadata["dedup_method"] == "lines"
        counts[d.metadata["dedup_method"]] += 1
    assert {k: v for k, v in report["removed"].items() if v} == dict(counts)
    # Each ~copy, or its original when the copy came first, goes as exact (an edit at 1 % may
    # leave a short text unchanged: then it goes as exact too).
    gone = {d.id for d in removed if d.metadata["dedup_method"] == "exact"}
    copies = [d.id for d in docs if d.id.endswith("~copy")]
    assert all(c in gone or c.removesuffix("~copy") in gone for c in copies)
    assert counts["exact"] >= 60
    assert json.loads((tmp_path / "out" / "dedup-report.json").read_text()) == report
    assert not (tmp_path / "out" / ".dedup-work").exists()


class Crash(RuntimeError):
    pass


def crashing(docs: list[Document], after: int, on_call: int = 1):
    """A source that raises after ``after`` documents the ``on_call``-th time it is read."""
    calls = []

    def source():
        calls.append(1)
        for i, d in enumerate(docs):
            if len(calls) == on_call and i == after:
                raise Crash
            yield d

    return source


@pytest.mark.parametrize("after_pass", ["scan", "apply"])
def test_resume_after_a_crash(tmp_path, shared_data, after_pass):
    docs = mixed_corpus(shared_data)
    cfg = DedupConfig(lines=True, fmt="jsonl", checkpoint_docs=40, shard_docs=50, batch_size=10)
    expected = dedup(lambda: iter(docs), tmp_path / "ref", cfg)
    # Scan reads the source once, apply once more: crash in the first or the second reading.
    source = crashing(docs, 130, on_call=1 if after_pass == "scan" else 2)
    with pytest.raises(Crash):
        dedup(source, tmp_path / "out", cfg)
    report = dedup(source, tmp_path / "out", cfg)
    assert outputs(tmp_path / "out", "docs") == outputs(tmp_path / "ref", "docs")
    assert outputs(tmp_path / "out", "removed") == outputs(tmp_path / "ref", "removed")
    for key in ("removed", "documents_kept", "lines_cut"):
        assert report[key] == expected[key]


def test_shards_end_by_bytes_and_resume_there(tmp_path, shared_data):
    """A small memory limit ends shards by bytes (1 MiB at the least) before shard_docs; a
    crash after such a shard resumes at the document where it ended."""
    docs = mixed_corpus(shared_data)
    cfg = DedupConfig(lines=True, fmt="jsonl", memory_limit="1MB", batch_size=7)
    expected = dedup(lambda: iter(docs), tmp_path / "ref", cfg)
    ref = tmp_path / "ref"
    first = [list(read_documents(ref / f"{p}-00000.jsonl")) for p in ("docs", "removed")]
    in_first = sum(map(len, first))
    assert len(expected["outputs"]["kept"]) >= 2 and in_first < len(docs) < cfg.shard_docs
    assert sum(len(d.text) for d in first[0] + first[1]) > 500_000  # ~1 MiB in memory
    source = crashing(docs, in_first + 3, on_call=2)  # in the apply pass, in the second shard
    with pytest.raises(Crash):
        dedup(source, tmp_path / "out", cfg)
    assert sorted(p.name for p in (tmp_path / "out").glob("*-00000.jsonl")) == [
        "docs-00000.jsonl", "removed-00000.jsonl"
    ]
    report = dedup(source, tmp_path / "out", cfg)
    for prefix in ("docs", "removed"):
        assert outputs(tmp_path / "out", prefix) == outputs(ref, prefix)
    assert report["outputs"] == expected["outputs"]
    assert (report["removed"], report["documents_kept"]) == (expected["removed"], expected["documents_kept"])


_KILL_SCRIPT = """
import json, sys, time
from gristmill.dedup import DedupConfig, dedup
from gristmill.documents import read_documents
docs = list(read_documents(sys.argv[1]))
def slow():
    for d in docs:
        time.sleep(0.002)
        yield d
dedup(slow, sys.argv[2], DedupConfig(fmt="jsonl", checkpoint_docs=20, batch_size=5, shard_docs=40))
"""


def test_resume_after_sigkill(tmp_path, shared_data):
    docs = mixed_corpus(shared_data)
    corpus = write_jsonl(tmp_path / "in.jsonl", docs)
    ref = dedup([corpus], tmp_path / "ref", DedupConfig(fmt="jsonl", shard_docs=40))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(corpus), str(out)])
    scan = out / ".dedup-work" / "scan.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if scan.exists() and len(json.loads(scan.read_text()).get("chunks", [])) >= 2:
            break
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    report = dedup([corpus], out, DedupConfig(fmt="jsonl", checkpoint_docs=20, batch_size=5, shard_docs=40))
    assert killed, "the run finished before it could be killed"
    assert outputs(out, "docs") == outputs(tmp_path / "ref", "docs")
    assert outputs(out, "removed") == outputs(tmp_path / "ref", "removed")
    assert report["removed"] == ref["removed"]


# The peak is read in the child: the rusage of a child counts its parent's RSS at the fork.
_RSS_SCRIPT = """
import json, re, sys
from pathlib import Path
from gristmill.dedup import DedupConfig, dedup
report = dedup([sys.argv[1]], sys.argv[2], DedupConfig(memory_limit=sys.argv[3], lines=True))
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"peak": peak_kb << 10, **report["outputs"]}))
"""


def test_peak_memory_stays_within_the_limit(tmp_path):
    """Peak RSS of a whole run (scan, resolve, apply) stays within memory_limit plus the
    fixed overhead the dedup module documents, on a corpus larger than the limit."""
    from gristmill.dedup import RSS_OVERHEAD

    rng = random.Random(4)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(5000)]
    corpus = tmp_path / "in.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(4000):  # ~28 MB: 4,000 texts of 800 words, every third one twice
            text = " ".join(rng.choices(vocab, k=800))
            f.write(json.dumps({"id": str(i), "text": text}) + "\n")
            if i % 3 == 0:
                f.write(json.dumps({"id": f"{i}~copy", "text": text}) + "\n")
    limit = 16 << 20
    r = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(corpus), str(tmp_path / "out"), str(limit)],
        capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert len(result["kept"]) > 1 and len(result["removed"]) > 1  # shards ended by bytes
    assert result["peak"] <= limit + RSS_OVERHEAD, f"peak RSS {result['peak'] >> 20} MB"


def test_work_dir_refuses_another_configuration(tmp_path):
    docs = [Document(str(i), f"text number {i} " * 5) for i in range(10)]
    work = tmp_path / "work"
    with pytest.raises(Crash):
        dedup(crashing(docs, 5), tmp_path / "out", DedupConfig(checkpoint_docs=2), work_dir=work)
    with pytest.raises(DedupError, match="different configuration"):
        dedup(lambda: iter(docs), tmp_path / "out", DedupConfig(bands=7, rows=16), work_dir=work)


def test_changed_input_is_an_error(tmp_path):
    docs = [Document(str(i), f"some text {i} " * 5) for i in range(10)]
    calls: list[int] = []

    def source():
        calls.append(1)
        return iter(docs if len(calls) == 1 else docs[:3] + [Document("x", "new")] + docs[4:])

    with pytest.raises(DedupError, match="document 3.*the input changed"):
        dedup(source, tmp_path / "out")


def test_empty_and_tiny_inputs(tmp_path):
    every = {"lines": True, "spans": True, "threshold": 0.8}
    report, kept, removed = run(tmp_path, [], "empty", **every)
    assert report["documents_in"] == 0 and kept == removed == []
    docs = [Document("x", ""), Document("y", ""), Document("z", "a"), Document("w", "one two")]
    report, kept, removed = run(tmp_path, docs, "tiny", **every)
    assert [d.id for d in kept] == ["x", "z", "w"]
    assert [(d.id, d.metadata["duplicate_of"]) for d in removed] == [("y", "x")]


def test_bad_configuration():
    with pytest.raises(DedupError, match="exact_hash_bits"):
        minhash_signatures(["x"], exact_hash_bits=32)
    with pytest.raises(DedupError, match="permutations"):
        minhash_signatures(["x"], permutations=([1, 2], [3, 4]))
    assert parse_size("2GB") == 2_000_000_000 and parse_size("512MiB") == 512 << 20
    with pytest.raises(ValueError):
        parse_size("2 lots")


# ---- agreement with datatrove -------------------------------------------------------------


def datatrove_clusters(docs: list[Document], tmp: Path):
    """datatrove's MinHash stages 1-3 run in-process; returns clusters and its parameters."""
    dt_dedup = pytest.importorskip("datatrove.pipeline.dedup")
    from datatrove.data import Document as DTDocument
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Whitespace(WordTokenizer):
        """Splits datatrove's normalised text on spaces: words then match gristmill's."""

        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    cfg = MinhashConfig(hash_config=HashConfig(precision=64))
    sig = dt_dedup.MinhashDedupSignature(str(tmp / "sigs"), config=cfg, language=Whitespace())
    sig.run(iter(DTDocument(text=d.text, id=d.id) for d in docs), 0, 1)
    for bucket in range(cfg.num_buckets):
        dt_dedup.MinhashDedupBuckets(str(tmp / "sigs"), str(tmp / "buckets"), config=cfg).run(
            None, bucket, cfg.num_buckets
        )
    dt_dedup.MinhashDedupCluster(
        str(tmp / "buckets"), str(tmp / "clusters"), config=cfg, save_cluster_id=True
    ).run(None, 0, 1)
    data = (tmp / "clusters" / "000000.clusters").read_bytes()
    groups = defaultdict(set)
    for i in range(0, len(data), 8):
        doc, cluster = struct.unpack_from("<2I", data, i)
        groups[cluster].add(docs[doc].id)
    a, b = sig.parameters
    return groups.values(), sig, (a.ravel().tolist(), b.ravel().tolist())


def test_same_clusters_as_datatrove(tmp_path, shared_data):
    """Same shingles, same permutations (datatrove's), same bands: the same clusters.

    Documents are compared only where both tools normalise the text into the same words:
    gristmill breaks words at every non-alphanumeric character, datatrove only at those in its
    punctuation list, so a few texts with symbols such as £ ° │ shingle differently.
    """
    simplify_text = pytest.importorskip("datatrove.utils.text").simplify_text
    rng = random.Random(2)
    docs = []
    for d in real_docs(shared_data, 200, min_words=30):
        docs.append(d)
        for rate in (0.01, 0.03, 0.1):  # 0.03 is near the LSH threshold: a sharp test
            docs.append(Document(f"{d.id}~{rate}", edit(d.text, rate, rng)))
    rng.shuffle(docs)
    same = [d for d in docs if simplify_text(d.text).split() == _core.dedup_words(d.text, True)]
    assert len(same) >= 0.95 * len(docs)
    theirs, sig, params = datatrove_clusters(same, tmp_path / "dt")
    # Signatures agree bit for bit ...
    ours = minhash_signatures([d.text for d in same[:50]], permutations=params)
    for d, row in zip(same[:50], ours):
        expected = np.concatenate(sig.get_signature(sig.get_shingles(d.text))).astype(np.uint64)
        assert (row == expected).all(), d.id
    # ... and so do the clusters.
    report, _, removed = run(tmp_path, same, exact=False, permutations=params)
    parent = {d.id: d.metadata["duplicate_of"] for d in removed}
    groups = defaultdict(set)
    for child, root in parent.items():
        groups[root].update((root, child))
    assert sorted(map(sorted, groups.values())) == sorted(map(sorted, theirs))
    assert report["minhash"]["clusters"] == len(groups) > 100


# ---- CLI ----------------------------------------------------------------------------------


def test_cli(tmp_path):
    docs = [Document(str(i), f"a document about topic {i % 3} with enough words here") for i in range(9)]
    corpus = write_jsonl(tmp_path / "in.jsonl", docs)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "gristmill", "dedup", str(corpus), "-o", str(out), "--exact",
         "--memory-limit", "10MB", "--format", "jsonl"],
        capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "removed" in r.stdout
    report = json.loads((out / "dedup-report.json").read_text())
    assert report["removed"]["exact"] == 6 and report["config"]["minhash"] is False
    r = subprocess.run(
        [sys.executable, "-m", "gristmill", "dedup", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o2")],
        capture_output=True, text=True, check=False,
    )
    assert r.returncode == 1 and "missing.jsonl" in r.stderr


# ---- output folders: nothing of the user's is deleted or overwritten (issue 18) -------------


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_dedup_in_place_is_refused_and_keeps_its_input(tmp_path):
    # `gristmill dedup inplace -o inplace` overwrote docs-00000 with its own output.
    docs = [Document(str(i), f"a document about topic {i % 3} with enough words here") for i in range(9)]
    inplace = tmp_path / "inplace"
    inplace.mkdir()
    write_jsonl(inplace / "docs-00000.jsonl", docs)
    before = _files(inplace)
    r = subprocess.run([sys.executable, "-m", "gristmill", "dedup", str(inplace), "-o", str(inplace),
                        "--exact", "--format", "jsonl", "--no-progress"], capture_output=True, text=True, check=False)
    assert r.returncode == 1 and "is the input" in r.stderr, r.stderr
    with pytest.raises(ValueError, match="holds the input"):
        dedup([inplace / "docs-00000.jsonl"], inplace, DedupConfig(fmt="jsonl"))
    assert _files(inplace) == before


def test_dedup_refuses_a_folder_with_files_it_did_not_write(tmp_path):
    docs = [Document(str(i), f"some text {i % 2} " * 5) for i in range(6)]
    out = tmp_path / "out"
    out.mkdir()
    (out / "docs-00000.jsonl").write_text("mine\n")
    with pytest.raises(ValueError, match=r"holds files this run did not write \(docs-00000.jsonl\)"):
        dedup(lambda: iter(docs), out, DedupConfig(fmt="jsonl"), overwrite=True)
    assert _files(out) == {"docs-00000.jsonl": b"mine\n"}


def test_dedup_overwrite_replaces_its_own_output(tmp_path):
    docs = [Document(str(i), f"some text {i % 2} " * 5) for i in range(6)]
    out = tmp_path / "out"
    first = dedup(lambda: iter(docs), out, DedupConfig(fmt="jsonl", minhash=False))
    assert dedup(lambda: iter(docs), out, DedupConfig(fmt="jsonl", minhash=False)) == first
    with pytest.raises(DedupError, match="another configuration"):
        dedup(lambda: iter(docs), out, DedupConfig(fmt="parquet", exact=False))
    report = dedup(lambda: iter(docs), out, DedupConfig(fmt="parquet", exact=False), overwrite=True)
    assert sorted(_files(out)) == sorted(["dedup-report.json", ".gristmill-output.json",
                                          *report["outputs"]["kept"], *report["outputs"]["removed"]])
    # An interrupted run with other settings is replaced too (its work directory with it).
    with pytest.raises(Crash):
        dedup(crashing(docs, 3), tmp_path / "half", DedupConfig(checkpoint_docs=2))
    with pytest.raises(DedupError, match="different configuration"):
        dedup(lambda: iter(docs), tmp_path / "half", DedupConfig(bands=7, rows=16))
    report = dedup(lambda: iter(docs), tmp_path / "half", DedupConfig(bands=7, rows=16), overwrite=True)
    assert report["documents_in"] == 6
