"""Helpers shared by the benchmarks: the corpus, timing, the table and the JSON file."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("GRISTMILL_SHARED_DATA", ROOT.parent / "shared" / "data"))
BENCH_CORPUS = SHARED_DATA / "bench-en.jsonl.zst"


def parser(stage: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--size", choices=["small", "full"], default="full",
                   help="small: a quick smoke run (CI); full: the figures for the README")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / f"{stage}.json")
    return p


def load_corpus(max_bytes: Optional[int] = None) -> list[str]:
    """The benchmark corpus's texts (20 MB of English), optionally cut to ``max_bytes``."""
    import zstandard

    texts, total = [], 0
    with open(BENCH_CORPUS, "rb") as f:
        stream = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        for line in stream:
            text = json.loads(line)["text"]
            texts.append(text)
            total += len(text.encode("utf-8"))
            if max_bytes is not None and total >= max_bytes:
                break
    return texts


def tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken rank file parsed the way tiktoken's loader does (no network, no cache)."""
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """The fastest of ``repeat`` runs (after one warm-up run), and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def report(stage: str, rows: list[dict], columns: list[str], out: Path, meta: dict) -> None:
    """Prints ``rows`` as a table and writes them with ``meta`` as JSON."""
    widths = [max([len(c), *(len(_fmt(r.get(c))) for r in rows)]) for c in columns]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"stage": stage, "machine": machine(), **meta, "rows": rows}, indent=2))
    os.replace(tmp, out)
    print(f"\nwritten: {out}")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.2f}"
    return str(v)
