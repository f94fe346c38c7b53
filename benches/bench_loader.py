"""Token shards: loader and tokenize throughput, gristmill vs its peers, in one run.

Loader, at B=64, T=1024 on shards of the benchmark corpus (page cache warm):
  - gristmill's Rust sampler (random windows), to a new array and into a reused buffer;
  - gristmill's torch wrapper, (x, y) int64 tensors as a training loop takes them;
  - nanoGPT's ``get_batch``: np.memmap re-opened per batch, random offsets,
    torch.from_numpy(...astype(int64)) and torch.stack, on the same shard.
GB/s counts the tokens delivered at their stored width (2 bytes): B * (T + 1) per batch; each
figure is the median of 7 rounds, the contenders taking turns.

The target is 5 GB/s; the "5 GB/s" column says which paths reach it in this run (the torch
wrapper widens to int64, writing 8x the bytes it counts, so it is not expected to).

Tokenize, on bench-en.jsonl.zst (20 MB of English, 4173 documents):
  - the encoder's own batch throughput (texts already in memory, no I/O);
  - ``write_shards`` on the same texts in memory (the writer's own cost: index, shards, fsync);
  - ``gristmill tokenize`` end to end (load the tokenizer, decompress and parse in the core
    beside the encoder, encode, write shards), on the .jsonl.zst and on the same records
    uncompressed (.jsonl: no decompression, which on a small machine costs as much CPU as
    the 10% the target allows);
  - ``write_shards(read_documents(...))``: the same with documents read in Python (how
    ``gristmill tokenize`` read them before the core did);
  - tiktoken's ``encode_ordinary_batch`` writing the same shards the way llm.c's
    ``fineweb.py`` does (the .bin files are checked byte-identical).
At ``--size full`` the corpus 4x over (81 MB) is also timed, where fixed costs weigh less: as one
.jsonl.zst, as one .jsonl, and as 16 .jsonl.zst files (the layout ``gristmill prep`` writes).
The encoder, ``write_shards`` in memory and ``gristmill tokenize`` are timed in turn, round
after round (best of 3 each), so that load on a shared machine hits the ratios less. Each
timed call gets a tokenizer of its own, so each starts with an empty merge cache, as every
``gristmill tokenize`` does.

    python benches/bench_loader.py [--size small|full] [--fresh-process-rounds N]
                                   [--out bench-results/loader.json]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from pathlib import Path

import numpy as np
from common import _fmt  # noqa: E402  (the table formatting shared by the benches)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("GRISTMILL_SHARED_DATA", ROOT.parent / "shared" / "data"))
CORPUS = SHARED_DATA / "bench-en.jsonl.zst"
B, T = 64, 1024


def read_corpus(max_docs: int | None) -> list[dict]:
    import zstandard

    with open(CORPUS, "rb") as f:
        stream = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        records = [json.loads(line) for line in stream]
    return records[:max_docs]


def tiktoken_gpt2():
    import tiktoken

    ranks = {}
    for line in (SHARED_DATA / "gpt2.tiktoken").read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("gpt2", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def timed(fn, seconds: float, min_calls: int = 3) -> tuple[int, float]:
    """Calls ``fn`` (after a warm-up call) until ``seconds`` have passed; returns (calls, time)."""
    fn()
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    return calls, time.perf_counter() - t0


# ---- tokenize -------------------------------------------------------------------------------


def tiktoken_write_shards(enc, jsonl_zst: Path, out: Path, shard_size: int) -> None:
    """llm.c's fineweb.py, restated: encode documents in batches, end-of-text after each (as
    gristmill's default), fill uint16 shards of exactly ``shard_size`` tokens, write each with
    the 256-int32 header."""
    import zstandard

    out.mkdir(parents=True, exist_ok=True)
    eot, threads = enc.eot_token, int(os.environ.get("GRISTMILL_NUM_THREADS", os.cpu_count()))
    buf = np.empty(shard_size, dtype=np.uint16)
    filled, index = 0, 0

    def write(tokens: np.ndarray) -> None:
        nonlocal index
        header = np.zeros(256, dtype=np.int32)
        header[:3] = [20240520, 1, len(tokens)]
        with open(out / f"train_{index:06d}.bin", "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.tobytes())
        index += 1

    with open(jsonl_zst, "rb") as f:
        stream = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        batch: list[str] = []
        lines = iter(stream)
        while True:
            line = next(lines, None)
            if line is not None:
                batch.append(json.loads(line)["text"])
            if len(batch) == 1024 or (line is None and batch):
                for ids in enc.encode_ordinary_batch(batch, num_threads=threads):
                    ids.append(eot)
                    doc = np.array(ids, dtype=np.uint16)
                    while len(doc):
                        n = min(shard_size - filled, len(doc))
                        buf[filled:filled + n] = doc[:n]
                        filled += n
                        doc = doc[n:]
                        if filled == shard_size:
                            write(buf)
                            filled = 0
                batch = []
            if line is None:
                break
    if filled:
        write(buf[:filled])


def ray_tokenize_row(src: Path, work: Path, shard_size: int, best) -> dict | None:
    """``gristmill tokenize --engine ray`` on a local Ray cluster (started outside the timing),
    checked byte-identical to the local engine's shards; None without Ray."""
    try:
        from gristmill import ray_engine

        ray = ray_engine.require_ray()
    except ImportError:
        print("(skipping the Ray tokenize row: pip install 'gristmill[ray]')")
        return None

    def ray_tokenize():
        shutil.rmtree(work / "ray", ignore_errors=True)
        ray_engine.tokenize([src], work / "ray", "gpt2", shard_size=shard_size)

    ray_engine.init()
    try:
        seconds = best(ray_tokenize)
    finally:
        ray.shutdown()
    bins = sorted(p.name for p in (work / "gm").glob("*.bin"))
    assert bins and all((work / "gm" / n).read_bytes() == (work / "ray" / n).read_bytes() for n in bins), \
        "Ray's shards differ from the local engine's"
    return {"task": "tokenize", "tool": "gristmill tokenize --engine ray (local cluster)", "seconds": seconds}


def bench_tokenize(size: str, work: Path) -> tuple[list[dict], dict]:
    import gristmill
    import zstandard
    from gristmill.cli import main as cli_main
    from gristmill.shards import write_shards

    records = read_corpus(600 if size == "small" else None)
    src = work / "corpus.jsonl.zst"
    lines = "".join(json.dumps(r) + "\n" for r in records).encode()
    if size == "small":
        src.write_bytes(zstandard.ZstdCompressor().compress(lines))
    else:
        shutil.copy(CORPUS, src)
    plain = work / "corpus.jsonl"  # the same records, uncompressed
    plain.write_bytes(lines)
    texts = [r["text"] for r in records]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    shard_size = 100_000_000  # the default, as llm.c's fineweb.py
    tik = tiktoken_gpt2()
    repeat = 1 if size == "small" else 3

    def fresh():
        # A tokenizer loaded for this run only: its merge cache starts empty, as in every
        # `gristmill tokenize` (a reused one would carry the cache of earlier rounds over).
        return gristmill.Tokenizer.from_name("gpt2")

    def best(*fns) -> float | list[float]:
        # Several functions are timed in turn, round after round, so that a change in the
        # load of a shared machine hits them alike (their ratio is what the bench reports).
        for fn in fns:
            fn()  # warm-up
        times = [[] for _ in fns]
        for _ in range(repeat):
            for fn, ts in zip(fns, times):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
        return min(times[0]) if len(fns) == 1 else [min(ts) for ts in times]

    def encode(docs: list[str]):
        tok = fresh_tokenizers.pop()
        return [tok.encode_batch_to_numpy(docs[i:i + 4096], append_eot=True)
                for i in range(0, len(docs), 4096)]

    def gristmill_tokenize(path=src, name="gm"):
        shutil.rmtree(work / name, ignore_errors=True)
        cli_main(["tokenize", str(path), "-o", str(work / name), "--tokenizer", "gpt2",
                  "--shard-size", str(shard_size), "-q"])

    def tiktoken_tokenize():
        shutil.rmtree(work / "tt", ignore_errors=True)
        tiktoken_write_shards(tik, src, work / "tt", shard_size)

    def gristmill_python_reader():
        from gristmill.documents import read_documents

        shutil.rmtree(work / "py", ignore_errors=True)
        write_shards(read_documents(src), work / "py", fresh_tokenizers.pop(), shard_size=shard_size)

    def gristmill_write_shards_in_memory():
        shutil.rmtree(work / "mem", ignore_errors=True)
        write_shards(texts, work / "mem", fresh_tokenizers.pop(), shard_size=shard_size)

    # Loaded outside the timing, one per timed call (fingerprint included, as the CLI's).
    fresh_tokenizers = [fresh() for _ in range(4 * (repeat + 1))]
    for t in fresh_tokenizers:
        t.fingerprint
    t_encoder, t_mem, t_gm, t_plain = best(
        lambda: encode(texts), gristmill_write_shards_in_memory, gristmill_tokenize,
        lambda: gristmill_tokenize(plain, "gm-plain"))
    fresh_tokenizers = [fresh() for _ in range(repeat + 1)]
    t_py = best(gristmill_python_reader)
    t_tt = best(tiktoken_tokenize)
    extra_rows = []
    if size == "full":
        # Fixed costs (tokenizer load and copy, the final fsync, the manifest) are a large
        # share of 20 MB; the same corpus 4x over shows the per-byte ratio.
        big, big_plain = work / "corpus-x4.jsonl.zst", work / "corpus-x4.jsonl"
        big.write_bytes(zstandard.ZstdCompressor().compress(lines * 4))
        big_plain.write_bytes(lines * 4)
        # The same records as 16 .jsonl.zst files, the layout `gristmill prep` writes.
        parts = work / "corpus-x4-parts"
        parts.mkdir()
        records_x4 = lines.splitlines(keepends=True) * 4
        step = -(-len(records_x4) // 16)
        for i in range(16):
            part = b"".join(records_x4[i * step:(i + 1) * step])
            (parts / f"docs-{i:05d}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(part))
        fresh_tokenizers = [fresh() for _ in range(repeat + 1)]
        t_enc4, t_gm4, t_plain4, t_parts4 = best(
            lambda: encode(texts * 4), lambda: gristmill_tokenize(big, "gm4"),
            lambda: gristmill_tokenize(big_plain, "gm4-plain"), lambda: gristmill_tokenize(parts, "gm4-parts"))
        extra_rows = [
            {"task": "tokenize", "tool": "gristmill encoder, corpus x4 in memory", "seconds": t_enc4, "mb": 4 * mb},
            {"task": "tokenize", "tool": "gristmill tokenize, corpus x4 (.jsonl.zst)", "seconds": t_gm4, "mb": 4 * mb},
            {"task": "tokenize", "tool": "gristmill tokenize, corpus x4 (.jsonl)", "seconds": t_plain4, "mb": 4 * mb},
            {"task": "tokenize", "tool": "gristmill tokenize, corpus x4 as 16 .jsonl.zst files",
             "seconds": t_parts4, "mb": 4 * mb},
        ]
    gm_bins = sorted(p.name for p in (work / "gm").glob("train_*.bin"))
    tt_bins = sorted(p.name for p in (work / "tt").glob("train_*.bin"))
    assert gm_bins == tt_bins and all(
        (work / "gm" / n).read_bytes() == (work / "tt" / n).read_bytes() for n in gm_bins
    ), "gristmill's and tiktoken's shards differ"
    n_tokens = json.loads((work / "gm" / "manifest.json").read_text())["splits"]["train"]["tokens"]
    rows = [
        {"task": "tokenize", "tool": "gristmill encoder, batch in memory (no I/O)", "seconds": t_encoder},
        {"task": "tokenize", "tool": "gristmill write_shards(texts in memory)", "seconds": t_mem},
        {"task": "tokenize", "tool": "gristmill tokenize (read .zst, encode, write shards)", "seconds": t_gm},
        {"task": "tokenize", "tool": "gristmill tokenize (read .jsonl, encode, write shards)", "seconds": t_plain},
        {"task": "tokenize", "tool": "gristmill write_shards(read_documents(.zst)) (Python reader)",
         "seconds": t_py},
        {"task": "tokenize", "tool": "tiktoken encode_ordinary_batch + llm.c-style writer", "seconds": t_tt},
    ]
    for r in rows:
        r["MB/s"] = mb / r["seconds"]
        r["Mtokens/s"] = n_tokens / r["seconds"] / 1e6
    for r in extra_rows:
        r["MB/s"] = r.pop("mb") / r["seconds"]
        r["Mtokens/s"] = 4 * n_tokens / r["seconds"] / 1e6
    rows += extra_rows
    # Last: a Ray cluster leaves threads behind in this process after shutdown.
    ray_row = ray_tokenize_row(src, work, shard_size, best)
    if ray_row:
        ray_row["MB/s"] = mb / ray_row["seconds"]
        ray_row["Mtokens/s"] = n_tokens / ray_row["seconds"] / 1e6
        rows.append(ray_row)
    ratios = {
        "tokenize_vs_encoder": t_encoder / t_gm,
        "tokenize_jsonl_vs_encoder": t_encoder / t_plain,
        "write_shards_in_memory_vs_encoder": t_encoder / t_mem,
        "tokenize_vs_tiktoken_writer": t_tt / t_gm,
        "python_reader_vs_encoder": t_encoder / t_py,
        **({"tokenize_x4_vs_encoder": extra_rows[0]["seconds"] / extra_rows[1]["seconds"],
            "tokenize_x4_jsonl_vs_encoder": extra_rows[0]["seconds"] / extra_rows[2]["seconds"],
            "tokenize_x4_16_files_vs_encoder": extra_rows[0]["seconds"] / extra_rows[3]["seconds"]}
           if extra_rows else {}),
    }
    return rows, {"corpus_mb": mb, "tokens": n_tokens, "shards": len(gm_bins), **ratios}


_ENCODE_IN_PROCESS = """
import json, sys, time
import gristmill
with open(sys.argv[1], "rb") as f:
    texts = [json.loads(line)["text"] for line in f]
tok = gristmill.Tokenizer.from_name("gpt2")
tok.fingerprint
time.sleep(0.5)  # numpy's BLAS threads spin for a while after import: let them settle
t0 = time.perf_counter()
for i in range(0, len(texts), 4096):
    tok.encode_batch_to_numpy(texts[i:i + 4096], append_eot=True)
print(time.perf_counter() - t0)
"""

_TOKENIZE_IN_PROCESS = """
import shutil, sys, time
import gristmill
from gristmill.shards import write_shards
tok = gristmill.Tokenizer.from_name("gpt2")
tok.fingerprint
time.sleep(0.5)
shutil.rmtree(sys.argv[2], ignore_errors=True)
t0 = time.perf_counter()
write_shards(sys.argv[1], sys.argv[2], tok)
print(time.perf_counter() - t0)
"""


def fresh_process_rounds(work: Path, rounds: int) -> tuple[list[dict], dict]:
    """The encoder and ``write_shards`` (the ``gristmill tokenize`` path, tokenizer loaded
    outside the timing) on the corpus x4, each in a fresh process, in turn for ``rounds``
    rounds: no state carries over between runs, and medians damp a shared machine's load."""
    import subprocess

    import zstandard

    records = read_corpus(None)
    lines = "".join(json.dumps(r) + "\n" for r in records).encode() * 4
    plain, packed = work / "ab.jsonl", work / "ab.jsonl.zst"
    plain.write_bytes(lines)
    packed.write_bytes(zstandard.ZstdCompressor().compress(lines))
    runs = {
        "gristmill encoder, corpus x4 (fresh process)": [_ENCODE_IN_PROCESS, plain],
        "gristmill tokenize path, corpus x4 .jsonl.zst (fresh process)": [_TOKENIZE_IN_PROCESS, packed, work / "ab-z"],
        "gristmill tokenize path, corpus x4 .jsonl (fresh process)": [_TOKENIZE_IN_PROCESS, plain, work / "ab-j"],
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (code, *args) in runs.items():
            out = subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True,
                                 capture_output=True, text=True)
            times[name].append(float(out.stdout.split()[-1]))
    mb = 4 * sum(len(r["text"].encode("utf-8")) for r in records) / 1e6  # text, as the other rows
    medians = {name: float(np.median(t)) for name, t in times.items()}
    rows = [{"task": "tokenize", "tool": name, "seconds": m, "MB/s": mb / m} for name, m in medians.items()]
    names = list(runs)
    enc = medians[names[0]]
    return rows, {"fresh_process_rounds": rounds,
                  "fresh_tokenize_zst_vs_encoder": enc / medians[names[1]],
                  "fresh_tokenize_jsonl_vs_encoder": enc / medians[names[2]]}


# ---- loader ---------------------------------------------------------------------------------


def bench_loader(size: str, work: Path) -> tuple[list[dict], dict]:
    import torch
    from gristmill import Tokenizer
    from gristmill.shards import ShardDataset, torch_batches, write_shards

    texts = [r["text"] for r in read_corpus(None)]
    copies = 1 if size == "small" else 4  # the corpus repeated: ~20M tokens, ~40 MB of shards
    write_shards((t for _ in range(copies) for t in texts), work / "ds", Tokenizer.from_name("gpt2"))
    ds = ShardDataset(work / "ds")
    shard = ds.path / ds.manifest["splits"]["train"]["shards"][0]["file"]
    seconds = 0.5 if size == "small" else 3.5
    torch.manual_seed(0)

    sampler = ds.sampler(batch_size=B, seq_len=T, seed=0)
    out = np.empty((B, T + 1), dtype=np.uint16)
    loader = iter(torch_batches(ds.sampler(batch_size=B, seq_len=T, seed=0)))

    def nanogpt_get_batch():
        # nanoGPT's train.py get_batch, on the same file (past the 1024-byte header).
        data = np.memmap(shard, dtype=np.uint16, mode="r", offset=1024)
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
        return x, y

    contenders = {
        "gristmill sampler.next_batch() (uint16 array)": sampler.next_batch,
        "gristmill sampler.next_batch(out=buffer)": lambda: sampler.next_batch(out=out),
        "gristmill torch_batches (x, y int64 tensors)": lambda: next(loader),
        "nanoGPT get_batch (np.memmap + torch.from_numpy)": nanogpt_get_batch,
    }
    # Contenders take turns, round after round, and each reports its median round: a change
    # in the load of a shared machine then hits them alike and a single bad moment does not
    # make the figure.
    rounds = 1 if size == "small" else 7
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    spent = dict.fromkeys(contenders, 0.0)
    for _ in range(rounds):
        for name, fn in contenders.items():
            calls, dt = timed(fn, seconds / rounds)
            rates[name].append(calls / dt)
            spent[name] += dt
    rows = []
    for name, r in rates.items():
        rate = float(np.median(r))
        rows.append({"task": "loader", "tool": name, "batches/s": rate,
                     "GB/s": rate * B * (T + 1) * 2 / 1e9, "seconds": spent[name]})
    nano = rows[-1]["batches/s"]
    for r in rows:
        r["vs nanoGPT"] = r["batches/s"] / nano
        r["5 GB/s"] = "yes" if r["GB/s"] >= 5.0 else "no"
    return rows, {"loader_tokens": ds.num_tokens(), "B": B, "T": T}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["small", "full"], default="full")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "loader.json")
    p.add_argument("--fresh-process-rounds", type=int, default=0, metavar="N",
                   help="also time the encoder and the tokenize path in fresh processes, in "
                        "turn, N rounds (medians; about 5 s a round)")
    p.add_argument("--threads", type=int, default=None,
                   help="gristmill's and tiktoken's thread count (default: all cores)")
    args = p.parse_args()
    if args.threads:
        os.environ["GRISTMILL_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        load_rows, load_meta = bench_loader(args.size, work)
        tok_rows, tok_meta = bench_tokenize(args.size, work)
        if args.fresh_process_rounds:
            fresh_rows, fresh_meta = fresh_process_rounds(work, args.fresh_process_rounds)
            tok_rows, tok_meta = tok_rows + fresh_rows, {**tok_meta, **fresh_meta}
    rows = load_rows + tok_rows
    columns = ["task", "tool", "batches/s", "GB/s", "5 GB/s", "vs nanoGPT", "MB/s", "Mtokens/s", "seconds"]
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))
    print(f"\ngristmill tokenize / encoder's own batch throughput: {tok_meta['tokenize_vs_encoder']:.2f} (.zst),"
          f" {tok_meta['tokenize_jsonl_vs_encoder']:.2f} (.jsonl)")
    print(f"write_shards(texts in memory) / encoder: {tok_meta['write_shards_in_memory_vs_encoder']:.2f}")
    print(f"gristmill tokenize / tiktoken writer: {tok_meta['tokenize_vs_tiktoken_writer']:.2f}x")
    print(f"write_shards(read_documents) (Python reader) / encoder: {tok_meta['python_reader_vs_encoder']:.2f}")
    if "tokenize_x4_vs_encoder" in tok_meta:
        print(f"gristmill tokenize / encoder, corpus x4: {tok_meta['tokenize_x4_vs_encoder']:.2f} (.zst),"
              f" {tok_meta['tokenize_x4_jsonl_vs_encoder']:.2f} (.jsonl),"
              f" {tok_meta['tokenize_x4_16_files_vs_encoder']:.2f} (16 .jsonl.zst files)")
    if "fresh_process_rounds" in tok_meta:
        print(f"in fresh processes ({tok_meta['fresh_process_rounds']} rounds, medians): tokenize / encoder"
              f" {tok_meta['fresh_tokenize_zst_vs_encoder']:.2f} (.zst),"
              f" {tok_meta['fresh_tokenize_jsonl_vs_encoder']:.2f} (.jsonl)")
    meta = {
        "stage": "loader",
        "size": args.size,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "threads": int(os.environ.get("GRISTMILL_NUM_THREADS", os.cpu_count())),
        **load_meta,
        **tok_meta,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, args.out)
    print(f"written: {args.out}")


if __name__ == "__main__":
    sys.exit(main())
