"""Benchmark: gristmill dedup against datatrove's MinHash pipeline and datasketch's MinHashLSH.

The corpus is the real text of ../shared/data/bench-en.jsonl.zst plus generated variants of
every document: an exact copy and copies with word edits (deletions, substitutions,
insertions) at 1 %, 3 %, 10 % and 30 % of words, shuffled with a fixed seed. ``--size small``
uses the first 300 documents (~9 MB); ``--size full`` all 4,173 (~120 MB).

Every tool runs in its own process, one after the other, on the same JSONL file with the same
MinHash parameters (5-word shingles, 14 bands x 8 rows, 64-bit hashes):

- gristmill: ``gristmill.dedup.dedup`` with exact + MinHash (also MinHash alone, and exact +
  MinHash with a 1 MB memory limit, far below the index, so that it spills), on
  ``--threads`` threads (default 1, so the figures are per core), with datatrove's
  permutation parameters when datatrove is installed (same speed; clusters then differ only
  where the tokenisers split words differently);
- datatrove: its four MinHash stages (signatures, buckets, clusters, filter) with its English
  word tokenizer (spaCy), one worker;
- datasketch: ``MinHash.update_batch`` + ``MinHashLSH(params=(14, 8))``, one thread; clusters
  are the union of every document with what its query returned.

Reported: wall seconds, documents/s, documents/s per core, peak RSS of the process, removed
documents, and how well each peer's MinHash clusters agree with gristmill's (pair agreement:
pairs in the same cluster in both / pairs in the same cluster in either). One run each, as
the project's benches are: no repetitions, so treat differences under ~10 % as noise.

Memory: gristmill dedup (exact + MinHash, ``jsonl.zst`` out) with ``--memory-limit 64MB`` on
bench-en.jsonl.zst as it is (x1, 20 MB of text) and four times over (x4, its four copies
concatenated: 81 MB, three quarters exact duplicates), each in its own process; peak RSS
against the bound ``gristmill.dedup`` documents (limit + ``RSS_OVERHEAD``). ``--size small``
uses the first 400 documents and a 4 MB limit. Peak RSS is the worker's own high-water mark
(``VmHWM``): a child's rusage would count the RSS of this process at the fork.

    python benches/bench_dedup.py --size small
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("GRISTMILL_SHARED_DATA", ROOT.parent / "shared" / "data"))
EDIT_RATES = (0.01, 0.03, 0.10, 0.30)
BANDS, ROWS, NGRAM = 14, 8, 5
SPILL_LIMIT = "1MB"  # far below the index: shows the cost of spilling and the RSS it bounds
MEMORY_COPIES = (1, 4)  # corpus sizes of the memory measurement: bench-en x1 and x4


# ---- corpus -------------------------------------------------------------------------------


def edit(text: str, rate: float, rng: random.Random) -> str:
    """``text`` with about ``rate`` of its words deleted, substituted or followed by an insert."""
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


def build_corpus(path: Path, n_docs: int | None, seed: int = 0) -> int:
    from gristmill.documents import read_documents

    rng = random.Random(seed)
    records = []
    for i, doc in enumerate(read_documents(DATA / "bench-en.jsonl.zst")):
        if n_docs is not None and i >= n_docs:
            break
        records.append({"id": doc.id, "text": doc.text})
        records.append({"id": f"{doc.id}~copy", "text": doc.text})
        for rate in EDIT_RATES:
            records.append({"id": f"{doc.id}~edit{rate}", "text": edit(doc.text, rate, rng)})
    rng.shuffle(records)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return len(records)


def read_ids(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["id"] for line in f]


# ---- workers (each runs in its own process) ------------------------------------------------


def run_gristmill(corpus: Path, work: Path, exact: bool, memory_limit: str = "1GB") -> dict:
    from gristmill.dedup import DedupConfig, dedup
    from gristmill.documents import read_documents

    params = os.environ.get("BENCH_DEDUP_PERMUTATIONS")
    permutations = json.loads(Path(params).read_text()) if params else None
    cfg = DedupConfig(
        exact=exact, minhash=True, fmt="jsonl", permutations=permutations, memory_limit=memory_limit
    )
    t0 = time.perf_counter()
    report = dedup([corpus], work / "out", cfg)
    seconds = time.perf_counter() - t0
    pairs = [
        (d.id, d.metadata["duplicate_of"])
        for d in read_documents(sorted((work / "out").glob("removed-*.jsonl")))
    ]
    return {"seconds": seconds, "removed": report["documents_removed"], "pairs": pairs}


def run_datatrove(corpus: Path, work: Path) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    cfg = MinhashConfig(
        n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=ROWS, hash_config=HashConfig(precision=64)
    )
    inp = str(corpus.parent)
    glob = corpus.name

    def ex(pipeline, tasks=1):
        return LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / f"logs{len(stages)}")
        )

    stages: list = []
    t0 = time.perf_counter()
    stages.append(
        ex([JsonlReader(inp, glob_pattern=glob), MinhashDedupSignature(str(work / "sigs"), config=cfg)])
    )
    stages[-1].run()
    stages.append(ex([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=cfg)], BANDS))
    stages[-1].run()
    stages.append(
        ex([MinhashDedupCluster(str(work / "buckets"), str(work / "ids"), config=cfg, save_cluster_id=True)])
    )
    stages[-1].run()
    stages.append(
        ex(
            [
                JsonlReader(inp, glob_pattern=glob),
                MinhashDedupFilter(str(work / "ids")),
                JsonlWriter(str(work / "out"), compression=None),
            ]
        )
    )
    stages[-1].run()
    seconds = time.perf_counter() - t0
    clusters = read_datatrove_clusters(work / "ids" / "000000.clusters")
    ids = read_ids(corpus)
    groups = defaultdict(list)
    for doc, cluster in clusters:
        groups[cluster].append(ids[doc])
    removed = sum(len(g) - 1 for g in groups.values())
    return {"seconds": seconds, "removed": removed, "clusters": list(groups.values())}


def read_datatrove_clusters(path: Path) -> list[tuple[int, int]]:
    import struct

    if not path.exists():
        return []
    data = path.read_bytes()
    return [struct.unpack_from("<2I", data, i) for i in range(0, len(data), 8)]


def run_datasketch(corpus: Path) -> dict:
    from datasketch import MinHash, MinHashLSH

    non_word = re.compile(r"[\W_]+")
    number = re.compile(r"\d+([.,]\d+)?")
    lsh = MinHashLSH(num_perm=BANDS * ROWS, params=(BANDS, ROWS))
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    t0 = time.perf_counter()
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            words = non_word.sub(" ", number.sub("0", rec["text"].lower())).split()
            shingles = {" ".join(words[i : i + NGRAM]).encode() for i in range(len(words) - NGRAM + 1)}
            if not shingles:
                continue
            m = MinHash(num_perm=BANDS * ROWS, seed=1)
            m.update_batch(list(shingles))
            for other in lsh.query(m):
                a, b = find(other), find(rec["id"])
                if a != b:
                    parent[b] = a
            lsh.insert(rec["id"], m)
    seconds = time.perf_counter() - t0
    groups = defaultdict(list)
    for x in list(parent):
        groups[find(x)].append(x)
    for root in list(groups):
        if root not in groups[root]:
            groups[root].append(root)
    removed = sum(len(g) - 1 for g in groups.values())
    return {"seconds": seconds, "removed": removed, "clusters": list(groups.values())}


def run_memory(corpus: Path, work: Path, memory_limit: str) -> dict:
    """gristmill dedup with the defaults and ``memory_limit``, as the CLI runs it."""
    from gristmill.dedup import DedupConfig, dedup

    t0 = time.perf_counter()
    report = dedup([corpus], work / "out", DedupConfig(memory_limit=memory_limit))
    return {
        "seconds": time.perf_counter() - t0,
        "documents": report["documents_in"],
        "removed": report["documents_removed"],
        "shards": len(report["outputs"]["kept"]) + len(report["outputs"]["removed"]),
    }


def peak_rss_mb() -> float | None:
    """This process's peak RSS (``VmHWM``), in MiB; None where /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(m.group(1)) / 1024 if m else None


def worker(name: str, corpus: Path, work: Path, result: Path) -> None:
    if name.startswith("memory:"):
        out = run_memory(corpus, work, name.partition(":")[2])
    elif name == "gristmill":
        out = run_gristmill(corpus, work, exact=True)
    elif name == "gristmill-minhash":
        out = run_gristmill(corpus, work, exact=False)
    elif name == "gristmill-spill":
        out = run_gristmill(corpus, work, exact=True, memory_limit=SPILL_LIMIT)
    elif name == "datatrove":
        out = run_datatrove(corpus, work)
    elif name == "datasketch":
        out = run_datasketch(corpus)
    else:
        raise SystemExit(f"unknown worker {name}")
    out["peak_rss_mb"] = peak_rss_mb()
    result.write_text(json.dumps(out))


# ---- comparison ---------------------------------------------------------------------------


def clusters_from_pairs(pairs: list[tuple[str, str]]) -> list[list[str]]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    groups = defaultdict(set)
    for a, b in pairs:
        groups[find(a)].update((a, b))
    return [sorted(g) for g in groups.values()]


def pair_agreement(a: list[list[str]], b: list[list[str]]) -> float:
    """Pairs in the same cluster in both / pairs in the same cluster in either."""

    def c2(n: int) -> int:
        return n * (n - 1) // 2

    label_a = {d: i for i, g in enumerate(a) for d in g}
    label_b = {d: i for i, g in enumerate(b) for d in g}
    both = Counter((label_a[d], label_b[d]) for d in label_a.keys() & label_b.keys())
    pa, pb = sum(c2(len(g)) for g in a), sum(c2(len(g)) for g in b)
    pab = sum(c2(n) for n in both.values())
    union = pa + pb - pab
    return pab / union if union else 1.0


def datatrove_permutations(path: Path) -> bool:
    """Writes datatrove's permutation parameters (numpy RandomState(1)) for gristmill to use,
    so cluster differences come from tokenisation alone."""
    try:
        from datatrove.pipeline.dedup import MinhashDedupSignature
        from datatrove.pipeline.dedup.minhash import MinhashConfig
        from datatrove.utils.hashing import HashConfig
    except ImportError:
        return False
    cfg = MinhashConfig(num_buckets=BANDS, hashes_per_bucket=ROWS, hash_config=HashConfig(precision=64))
    a, b = MinhashDedupSignature(str(path.parent / "unused"), config=cfg, language="en").parameters
    path.write_text(json.dumps([a.ravel().tolist(), b.ravel().tolist()]))
    return True


def run_tool(name: str, corpus: Path, tmp: Path, threads: int) -> dict:
    work = tmp / name.replace(":", "-")
    work.mkdir()
    result = tmp / f"{work.name}.json"
    env = {**os.environ, "GRISTMILL_NUM_THREADS": str(threads), "OMP_NUM_THREADS": "1"}
    params = tmp / "permutations.json"
    if params.exists():
        env["BENCH_DEDUP_PERMUTATIONS"] = str(params)
    cmd = [sys.executable, __file__, "--worker", name, str(corpus), str(work), str(result)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if status != 0:
        return {"error": stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {status}"}
    out = json.loads(result.read_text())
    if out.get("peak_rss_mb") is None:  # no /proc: rusage, which counts this process at the fork
        out["peak_rss_mb"] = usage.ru_maxrss / 1024
    out["process_seconds"] = wall
    return out


def memory_corpus(path: Path, copies: int, n_docs: int | None) -> int:
    """bench-en.jsonl.zst (its first ``n_docs`` documents) ``copies`` times over; bytes of text."""
    from gristmill.documents import read_documents, shard_bytes

    if n_docs is None:
        path.write_bytes((DATA / "bench-en.jsonl.zst").read_bytes() * copies)
        docs = read_documents(DATA / "bench-en.jsonl.zst")
    else:
        docs = list(read_documents(DATA / "bench-en.jsonl.zst"))[:n_docs]
        path.write_bytes(shard_bytes(docs * copies, "jsonl.zst"))
    return copies * sum(len(d.text.encode("utf-8")) for d in docs)


def measure_memory(tmp: Path, size: str, threads: int) -> list[dict]:
    from gristmill.dedup import RSS_OVERHEAD, parse_size

    limit = "4MB" if size == "small" else "64MB"
    n_docs = 400 if size == "small" else None
    rows = []
    for copies in MEMORY_COPIES:
        corpus = tmp / f"memory-x{copies}" / "corpus.jsonl.zst"
        corpus.parent.mkdir()
        text_bytes = memory_corpus(corpus, copies, n_docs)
        print(f"running gristmill, memory limit {limit}, bench-en x{copies} ...", flush=True)
        r = run_tool(f"memory:{limit}", corpus, corpus.parent, threads)
        bound = (parse_size(limit) + RSS_OVERHEAD) / 2**20
        row = {"corpus": f"bench-en x{copies}", "text_mb": round(text_bytes / 1e6, 1), "memory_limit": limit}
        if "error" in r:
            rows.append({**row, "error": r["error"]})
            continue
        rows.append(
            {
                **row,
                "documents": r["documents"],
                "removed": r["removed"],
                "shards": r["shards"],
                "seconds": round(r["seconds"], 2),
                "peak_rss_mb": round(r["peak_rss_mb"], 1),
                "bound_mb": round(bound, 1),
                "within_bound": r["peak_rss_mb"] <= bound,
            }
        )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("small", "full"), default="small")
    p.add_argument("--out", default=str(ROOT / "bench-results" / "dedup.json"))
    p.add_argument("--threads", type=int, default=1, help="gristmill threads (default 1: per core)")
    p.add_argument("--peers", default="datatrove,datasketch", help="comma-separated peers to run")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        name, corpus, work, result = args.worker
        worker(name, Path(corpus), Path(work), Path(result))
        return 0

    n_docs = 300 if args.size == "small" else None
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp_name:
        tmp = Path(tmp_name)
        corpus_dir = tmp / "corpus"
        corpus_dir.mkdir()
        corpus = corpus_dir / "corpus.jsonl"
        n = build_corpus(corpus, n_docs)
        mb = corpus.stat().st_size / 1e6
        print(f"corpus: {n} documents, {mb:.1f} MB (bench-en + copies + edits at {EDIT_RATES})")
        tools = ["gristmill", "gristmill-minhash", "gristmill-spill"]
        tools += [x for x in args.peers.split(",") if x]
        same_params = "datatrove" in tools and datatrove_permutations(tmp / "permutations.json")
        load = os.getloadavg()[0]
        results = {}
        for name in tools:
            print(f"running {name} ...", flush=True)
            results[name] = run_tool(name, corpus, tmp, args.threads)
        memory = measure_memory(tmp, args.size, args.threads)

    base = results["gristmill-minhash"]
    base_clusters = clusters_from_pairs([tuple(x) for x in base.get("pairs", [])])
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append({"tool": name, "error": r["error"]})
            continue
        cores = args.threads if name.startswith("gristmill") else 1
        clusters = r.get("clusters") or clusters_from_pairs([tuple(x) for x in r.get("pairs", [])])
        rows.append(
            {
                "tool": name,
                "seconds": round(r["seconds"], 2),
                "docs_per_s": round(n / r["seconds"], 1),
                "docs_per_s_per_core": round(n / r["seconds"] / cores, 1),
                "peak_rss_mb": round(r["peak_rss_mb"], 1),
                "removed": r["removed"],
                "cluster_agreement_vs_gristmill": round(pair_agreement(base_clusters, clusters), 4),
            }
        )
    g = next(r for r in rows if r["tool"] == "gristmill-minhash")
    for r in rows:
        if "error" not in r:
            r["gristmill_minhash_speedup_per_core"] = round(g["docs_per_s_per_core"] / r["docs_per_s_per_core"], 2)

    header = f"{'tool':<19}{'s':>9}{'docs/s':>10}{'docs/s/core':>13}{'RSS MB':>9}{'removed':>9}{'agree':>8}{'gm x':>8}"
    print(header)
    for r in rows:
        if "error" in r:
            print(f"{r['tool']:<19} failed: {r['error']}")
            continue
        print(
            f"{r['tool']:<19}{r['seconds']:>9.2f}{r['docs_per_s']:>10.1f}{r['docs_per_s_per_core']:>13.1f}"
            f"{r['peak_rss_mb']:>9.1f}{r['removed']:>9}{r['cluster_agreement_vs_gristmill']:>8.3f}"
            f"{r['gristmill_minhash_speedup_per_core']:>8.2f}"
        )
    print(f"\n{'memory':<16}{'text MB':>9}{'limit':>7}{'docs':>8}{'shards':>8}{'s':>8}{'RSS MB':>9}{'bound':>8}")
    for r in memory:
        if "error" in r:
            print(f"{r['corpus']:<16} failed: {r['error']}")
            continue
        print(
            f"{r['corpus']:<16}{r['text_mb']:>9.1f}{r['memory_limit']:>7}{r['documents']:>8}{r['shards']:>8}"
            f"{r['seconds']:>8.2f}{r['peak_rss_mb']:>9.1f}{r['bound_mb']:>8.1f}"
        )
    out = {
        "stage": "dedup",
        "size": args.size,
        "documents": n,
        "megabytes": round(mb, 1),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "params": {"ngram": NGRAM, "bands": BANDS, "rows": ROWS},
        "gristmill_uses_datatrove_permutations": same_params,
        "load_average_at_start": round(load, 2),
        "results": rows,
        "memory": memory,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
