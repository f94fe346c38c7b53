"""Benchmark: BPE tokenizer training, gristmill vs HF tokenizers' BpeTrainer and rustbpe.

All three train a byte-level BPE with the GPT-2 pre-tokenizer pattern on the same texts (the
documents of ../shared/data/bench-en.jsonl.zst, 20 MB of English) to the same number of
merges, at vocab 8192 and 32768. Each run is its own subprocess, so its peak RSS (ru_maxrss) is
its own: the texts are loaded first (a list of str, as a caller would have them), a small
warm-up training runs, then the timed training. ``--size full`` repeats the documents to 50 MB.

    python benches/bench_tokenizer_train.py [--size small|full] [--repeat N] [--out PATH]

Prints a table and writes JSON (default bench-results/tokenizer_train.json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("GRISTMILL_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bench-en.jsonl.zst"
SIZES = {"small": 20_000_000, "full": 50_000_000}
VOCABS = (8192, 32768)
CONTENDERS = ("gristmill", "rustbpe", "hf-tokenizers")
ENDOFTEXT = "<|endoftext|>"
# The GPT-2 pattern as tiktoken spells it; HF's ByteLevel pre-tokenizer splits the same way.
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


# ---- the worker: one contender, one vocabulary size, in its own process -------------------


def load_texts(target_bytes: int) -> list[str]:
    """The corpus's texts, repeated in order until they reach ``target_bytes`` of UTF-8."""
    import zstandard

    docs = []
    with open(CORPUS, "rb") as raw:
        reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
        for line in reader:
            docs.append(json.loads(line)["text"])
    texts, total = [], 0
    while total < target_bytes:
        for d in docs:  # repeats share the same str objects: no extra memory
            texts.append(d)
            total += len(d.encode("utf-8"))
            if total >= target_bytes:
                break
    return texts


def train_gristmill(texts, vocab_size):
    from gristmill import Tokenizer

    tok = Tokenizer.train(texts, vocab_size, "gpt2", (ENDOFTEXT,))
    return tok.n_vocab - 256 - 1


def train_rustbpe(texts, vocab_size):
    import rustbpe

    tok = rustbpe.Tokenizer()
    # rustbpe has no special tokens: one id fewer gives the same number of merges.
    tok.train_from_iterator(iter(texts), vocab_size - 1, pattern=GPT2_PATTERN)
    return tok.vocab_size - 256


def train_hf(texts, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok.get_vocab_size() - 256 - 1


TRAIN = {"gristmill": train_gristmill, "rustbpe": train_rustbpe, "hf-tokenizers": train_hf}


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(contender: str, vocab_size: int, size: int) -> dict:
    train = TRAIN[contender]
    texts = load_texts(size)
    train(texts[:20], 400)  # warm-up: thread pools, lazy tables
    base = current_rss_mib()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    merges = train(texts, vocab_size)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)  # all threads
    peak = r1.ru_maxrss / 1024  # KiB on Linux
    return {"contender": contender, "vocab_size": vocab_size, "seconds": wall, "merges": merges,
            "cpu_seconds": cpu,
            "peak_rss_mib": peak, "rss_before_mib": base,
            "bytes": sum(len(t.encode("utf-8")) for t in texts), "texts": len(texts)}


# ---- the driver ---------------------------------------------------------------------------


def run_worker(contender: str, vocab_size: int, size: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", contender, "--vocab", str(vocab_size),
           "--bytes", str(size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{contender} at vocab {vocab_size} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def versions() -> dict:
    out = {"python": platform.python_version(), "cpus": os.cpu_count(),
           "machine": platform.machine()}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("gristmill", "tokenizers", "rustbpe"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    out["GRISTMILL_NUM_THREADS"] = os.environ.get("GRISTMILL_NUM_THREADS")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the fastest is kept")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "tokenizer_train.json"))
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.vocab, args.bytes)))
        return 0

    size = SIZES[args.size]
    contenders = [c for c in args.contenders.split(",") if c]
    import importlib.util

    missing = [c for c in contenders if c == "rustbpe" and importlib.util.find_spec("rustbpe") is None]
    for c in missing:
        print(f"skipping {c}: not installed (pip install 'gristmill[bench]')")
    contenders = [c for c in contenders if c not in missing]
    note = "" if args.size == "small" else " (bench-en.jsonl.zst repeated to reach it)"
    print(f"corpus: {CORPUS.name}, {size / 1e6:.0f} MB of text{note}; GPT-2 pattern; "
          f"{os.cpu_count()} CPUs; best of {args.repeat}")
    results = []
    for vocab_size in VOCABS:
        for contender in contenders:
            runs = [run_worker(contender, vocab_size, size) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            best["all_seconds"] = [r["seconds"] for r in runs]
            best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
            results.append(best)
            print(f"  ... {contender} vocab {vocab_size}: {best['seconds']:.2f} s", file=sys.stderr)

    header = (f"{'vocab':>6}  {'contender':<14} {'merges':>7} {'time s':>7} {'CPU s':>6} {'MB/s':>6} "
              f"{'peak RSS MiB':>12} {'+training MiB':>13} {'time vs gristmill':>17} "
              f"{'peak vs gristmill':>17}")
    print(header)
    print("-" * len(header))
    for vocab_size in VOCABS:
        rows = [r for r in results if r["vocab_size"] == vocab_size]
        ours = next((r for r in rows if r["contender"] == "gristmill"), None)
        for r in rows:
            t_ratio = r["seconds"] / ours["seconds"] if ours else float("nan")
            m_ratio = r["peak_rss_mib"] / ours["peak_rss_mib"] if ours else float("nan")
            r["time_vs_gristmill"], r["peak_rss_vs_gristmill"] = t_ratio, m_ratio
            print(f"{vocab_size:>6}  {r['contender']:<14} {r['merges']:>7} {r['seconds']:>7.2f} "
                  f"{r['cpu_seconds']:>6.2f} "
                  f"{r['bytes'] / 1e6 / r['seconds']:>6.1f} {r['peak_rss_mib']:>12.0f} "
                  f"{r['peak_rss_mib'] - r['rss_before_mib']:>13.0f} {t_ratio:>16.2f}x "
                  f"{m_ratio:>16.2f}x")
    print("(time: wall clock of the training call; CPU: user+system seconds of all its threads;\n"
          " +training: peak RSS minus RSS after loading the texts and importing the library)")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"bench": "tokenizer_train", "size": args.size, "bytes": size, "corpus": CORPUS.name,
           "repeated": args.size != "small", "repeat": args.repeat, "env": versions(),
           "results": results}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
