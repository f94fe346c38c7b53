"""Encoding throughput: gristmill vs tiktoken vs HF tokenizers, same corpus, same ids.

Each contender encodes every document of the benchmark corpus (real English, 1-10 KB
documents) with the GPT-2 vocabulary: one document at a time on one thread, then the whole
corpus as a batch on all threads. Ids are checked equal before anything is timed.

    python benches/bench_encode.py [--size small|full]
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import gristmill  # noqa: E402
from common import SHARED_DATA, best_of, load_corpus, parser, report, tiktoken_ranks  # noqa: E402


def main() -> None:
    args = parser("encode", __doc__).parse_args()
    texts = load_corpus(2_000_000 if args.size == "small" else None)
    repeat = 1 if args.size == "small" else 3
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    threads = os.cpu_count()

    import tiktoken
    import tokenizers

    tok = gristmill.Tokenizer.from_name("gpt2")
    tik = tiktoken.Encoding(
        "gpt2", pat_str=tok.pattern, mergeable_ranks=tiktoken_ranks(SHARED_DATA / "gpt2.tiktoken"),
        special_tokens={"<|endoftext|>": 50256},
    )
    with tempfile.TemporaryDirectory() as d:
        tok.save_hf_json(f"{d}/tokenizer.json")
        hf = tokenizers.Tokenizer.from_file(f"{d}/tokenizer.json")

    expected = tik.encode_ordinary_batch(texts, num_threads=threads)
    assert tok.encode_ordinary_batch(texts) == expected, "gristmill ids differ from tiktoken's"
    assert [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)] == expected, "HF ids differ"
    n_tokens = sum(map(len, expected))

    contenders = {
        ("tiktoken", "1 thread"): lambda: [tik.encode_ordinary(t) for t in texts],
        ("tiktoken", f"batch, {threads} threads"): lambda: tik.encode_ordinary_batch(texts, num_threads=threads),
        ("HF tokenizers", "1 thread"): lambda: [hf.encode(t, add_special_tokens=False).ids for t in texts],
        ("HF tokenizers", f"batch, {threads} threads"): lambda: hf.encode_batch(texts, add_special_tokens=False),
        ("gristmill", "1 thread"): lambda: [tok.encode_ordinary(t) for t in texts],
        ("gristmill", f"batch, {threads} threads"): lambda: tok.encode_ordinary_batch(texts),
        ("gristmill", f"batch to numpy, {threads} threads"): lambda: tok.encode_batch_to_numpy(texts),
        ("gristmill", "count, 1 thread"): lambda: [tok.count(t) for t in texts],
    }
    rows = []
    for (name, mode), fn in contenders.items():
        seconds, _ = best_of(fn, repeat)
        rows.append({"tool": name, "mode": mode, "seconds": seconds, "MB/s": mb / seconds,
                     "Mtokens/s": n_tokens / seconds / 1e6})
    base = {r["mode"].split(",")[0]: r["MB/s"] for r in rows if r["tool"] == "tiktoken"}
    for r in rows:
        kind = "batch" if r["mode"].startswith("batch") else "1 thread"
        r["vs tiktoken"] = f"{r['MB/s'] / base[kind]:.2f}x"
    print(f"corpus: {len(texts)} documents, {mb:.1f} MB, {n_tokens:,} tokens (GPT-2); "
          f"ids identical in all three\n")
    report("encode", rows, ["tool", "mode", "seconds", "MB/s", "Mtokens/s", "vs tiktoken"], args.out,
           {"documents": len(texts), "megabytes": mb, "tokens": n_tokens,
            "versions": {"tiktoken": tiktoken.__version__, "tokenizers": tokenizers.__version__}})


if __name__ == "__main__":
    main()
