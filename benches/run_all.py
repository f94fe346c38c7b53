"""Runs every stage's benchmark and gathers the results.

    python benches/run_all.py [--size small|full] [--out bench-results]

Each ``bench_<stage>.py`` times gristmill and its peers on the same input in one run and
writes its own JSON; this script runs them one after another (a failure is reported, not
fatal, unless ``--strict``), then writes ``summary.json``, ``summary.md`` (one table per
stage, gristmill next to each peer) and ``summary.png`` (each stage's headline metric per
tool). CI runs ``--size small --strict`` as a smoke test: it fails on errors, never on timings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ["encode", "tokenizer_train", "prep", "dedup", "loader", "train_step", "sample",
          "speedrun", "finetune", "lora", "eval", "serve"]
# The column each stage's chart shows (the first a stage's rows have), higher is better unless
# it is in LOWER.
HEADLINE = ["MB/s", "docs_per_s", "docs/s", "batches/s", "tokens/s", "examples/s",
            "speedup_per_core", "s to target", "s/epoch", "seconds"]
LOWER = {"s to target", "s/epoch", "seconds"}


def _run(stage: str, size: str, out: Path) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, str(HERE / f"bench_{stage}.py"), "--size", size, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    result = {"stage": stage, "seconds": round(time.perf_counter() - t0, 1), "returncode": proc.returncode}
    if proc.returncode != 0:
        result["error"] = (proc.stderr or proc.stdout)[-2000:]
    elif out.exists():
        result.update(json.loads(out.read_text()))
    print(proc.stdout[-4000:])
    return result


def _rows(result: dict) -> list[dict]:
    """A bench's result rows (benches name the list "rows" or "results")."""
    rows = result.get("rows") or result.get("results") or []
    return [r for r in rows if isinstance(r, dict)]


def _headline(rows: list[dict]) -> str | None:
    for key in HEADLINE:
        if any(isinstance(r.get(key), (int, float)) for r in rows):
            return key
    return None


def _label(row: dict) -> str:
    keys = ("tool", "engine", "contender", "mode", "task", "batch", "clients", "vocab_size",
            "vocabulary", "corpus", "filter")
    parts = [str(row.get(k)) for k in keys if row.get(k) is not None]
    return ", ".join(parts)


def _markdown(results: list[dict], size: str) -> str:
    lines = [f"# gristmill benchmarks ({size})", ""]
    for r in results:
        lines.append(f"## {r['stage']}")
        if "error" in r:
            lines += ["", f"failed (exit {r['returncode']}):", "", "```", r["error"].strip(), "```", ""]
            continue
        rows = _rows(r)
        if not rows:
            lines.append("")
            continue
        if r.get("machine"):
            lines += ["", f"machine: {r['machine']}"]
        cols = [c for c in dict.fromkeys(k for row in rows for k in row)
                if not any(isinstance(row.get(c), (dict, list)) for row in rows)]
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in rows:
            cells = [f"{v:,.2f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in (row.get(c) for c in cols)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _chart(results: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart")
        return
    ok = [r for r in results if _rows(r) and _headline(_rows(r))]
    if not ok:
        return
    fig, axes = plt.subplots(len(ok), 1, figsize=(9, 2.2 * len(ok) + 0.5), squeeze=False)
    for ax, r in zip(axes[:, 0], ok):
        key = _headline(_rows(r))
        rows = [row for row in _rows(r) if isinstance(row.get(key), (int, float))]
        labels = [_label(row) for row in rows]
        values = [row[key] for row in rows]
        colors = ["tab:orange" if "gristmill" in lab else "tab:gray" for lab in labels]
        ax.barh(labels, values, color=colors)
        ax.set_title(f"{r['stage']}: {key}" + (" (lower is better)" if key in LOWER else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()
    fig.tight_layout()
    tmp = path.with_name(".summary.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["small", "full"], default="small")
    p.add_argument("--out", type=Path, default=HERE.parent / "bench-results")
    p.add_argument("--only", nargs="*", choices=STAGES, help="run only these stages")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any benchmark fails")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for stage in args.only or STAGES:
        print(f"=== {stage} ({args.size})", flush=True)
        results.append(_run(stage, args.size, args.out / f"{stage}.json"))
    (args.out / "summary.json").write_text(json.dumps({"size": args.size, "results": results}, indent=2, default=str))
    (args.out / "summary.md").write_text(_markdown(results, args.size))
    _chart(results, args.out / "summary.png")
    failed = [r["stage"] for r in results if "error" in r]
    print(f"\nwrote {args.out / 'summary.md'}, summary.json and summary.png"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
