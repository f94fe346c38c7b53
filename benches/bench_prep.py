"""Benchmark: gristmill's document filters vs datatrove's, on the same documents, one run.

Times C4 (datatrove's C4QualityFilter defaults, the `c4-datatrove` preset), Gopher quality,
Gopher repetition, FineWeb, the first three chained, the C4 bad-words rule (against the
same regex in Python `re`, as datatrove's C4BadWordsFilter downloads its list at run time),
and language identification (whatlang; no peer figure: datatrove's LanguageFilter needs
fastText's lid.176 model, which it downloads at run time, and nothing can be downloaded here).
Each filter runs in gristmill and in the peer, in this process; the table gives documents/s
and MB/s per core (gristmill on GRISTMILL_NUM_THREADS threads, 1 by default), the ratio of
the two MB/s per core, and how many decisions agree.

`--size small` runs both sides on the first 120 documents. `--size full` runs gristmill on the
whole corpus (20 MB) and the peers on a fixed sample, the first documents up to
`--peer-mb` MB (4 by default): datatrove runs at 0.3 to 0.7 MB/s, so the whole corpus
would take it over ten minutes per filter. Decisions are compared on the sample.

    python benches/bench_prep.py --size small          # 120 documents, well under a minute
    python benches/bench_prep.py --size full --out bench-results/prep.json

A second table times the whole ``prep`` (C4 filters, then exact + MinHash dedup, writing
shards) on the local engine and on the Ray engine (local Ray clusters of 1 and 2 CPUs, only 2
with --size small; the input split into 8 files), in documents/s, and checks that both keep the same documents.
It is skipped when Ray is not installed (``pip install 'gristmill[ray]'``) or with --no-ray.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("GRISTMILL_NUM_THREADS", "1")

import zstandard  # noqa: E402
from gristmill import _core  # noqa: E402
from gristmill.prep import FilterPipeline, PrepConfig, _badwords_list  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("GRISTMILL_SHARED_DATA", ROOT.parent / "shared" / "data"))


def load_docs(size: str) -> list[str]:
    path = DATA / "bench-en.jsonl.zst"
    with zstandard.ZstdDecompressor().stream_reader(open(path, "rb")) as f:
        docs = [json.loads(line)["text"] for line in io.TextIOWrapper(f, encoding="utf-8")]
    return docs[:120] if size == "small" else docs


# ---- peers ----------------------------------------------------------------------------------


def datatrove_filters():
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return {
        "c4": [("c4", C4QualityFilter)],
        "gopher_quality": [("gopher_quality", GopherQualityFilter)],
        "gopher_repetition": [("gopher_repetition", GopherRepetitionFilter)],
        "fineweb": [("fineweb", FineWebQualityFilter)],
        "c4+gopher": [
            ("c4", C4QualityFilter),
            ("gopher_quality", GopherQualityFilter),
            ("gopher_repetition", GopherRepetitionFilter),
        ],
    }


def run_datatrove(chain, docs: list[str]) -> list:
    from datatrove.data import Document

    filters = [(name, cls()) for name, cls in chain]
    out = []
    for i, text in enumerate(docs):
        doc = Document(text=text, id=str(i))
        outcome = None
        for name, f in filters:
            result = f.filter(doc)
            if result is not True:
                outcome = (name, result[1] if isinstance(result, tuple) else "")
                break
        if outcome is None and doc.text != text:
            outcome = doc.text
        out.append(outcome)
    return out


def run_python_badwords(words: list[str], docs: list[str]) -> list:
    pattern = re.compile(r"(?:\W|^)({})(?:\W|$)".format("|".join(map(re.escape, words))))
    return [("badwords", "badwords") if pattern.search(t.lower()) else None for t in docs]


# ---- gristmill ------------------------------------------------------------------------------

C4_DATATROVE = {
    "type": "c4", "name": "c4", "end_marks": ".?!\"'", "min_words_per_line": 3,
    "min_num_sentences": 5, "count_words_before_citations": True,
}
GRISTMILL = {
    "c4": [C4_DATATROVE],
    "gopher_quality": [{"type": "gopher_quality", "name": "gopher_quality"}],
    "gopher_repetition": [{"type": "gopher_repetition", "name": "gopher_repetition"}],
    "fineweb": [{"type": "fineweb", "name": "fineweb"}],
    "c4+gopher": [
        C4_DATATROVE,
        {"type": "gopher_quality", "name": "gopher_quality"},
        {"type": "gopher_repetition", "name": "gopher_repetition"},
    ],
    "language": [{"type": "language", "name": "language"}],
}
NO_PEER = {
    "language": "none: datatrove's LanguageFilter needs fastText's lid.176 model, downloaded at run time",
}


def peer_sample(docs: list[str], max_mb: float) -> list[str]:
    """The first documents of ``docs`` holding at least ``max_mb`` MB (UTF-8), or all of them."""
    out, total = [], 0
    for text in docs:
        if total >= max_mb * 1e6:
            break
        out.append(text)
        total += len(text.encode("utf-8"))
    return out


def timed(fn, *args):
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "prep.json"))
    parser.add_argument("--no-peer", action="store_true", help="time gristmill only")
    parser.add_argument("--no-ray", action="store_true", help="skip the local vs Ray engine table")
    parser.add_argument("--repeat", type=int, default=1,
                        help="engine table: the corpus this many times (copies are exact duplicates)")
    parser.add_argument("--peer-mb", type=float, default=4.0,
                        help="with --size full: MB of the corpus (from its start) the peers run on")
    args = parser.parse_args(argv)

    docs = load_docs(args.size)
    mb = sum(len(t.encode("utf-8")) for t in docs) / 1e6
    sample = docs if args.size == "small" else peer_sample(docs, args.peer_mb)
    sample_mb = sum(len(t.encode("utf-8")) for t in sample) / 1e6
    threads = _core.num_threads()
    peers = {} if args.no_peer else _try_datatrove()
    words = _badwords_list(None)
    cases = dict(GRISTMILL, badwords=[{"type": "badwords", "name": "badwords", "words": words}])

    # Warm-up: builds tables and regexes, loads spaCy.
    for specs in cases.values():
        FilterPipeline(PrepConfig(filters=specs)).apply(docs[:20])
    if peers:
        run_datatrove(peers["c4+gopher"], docs[:5])
        run_datatrove(peers["fineweb"], docs[:5])

    rows = []
    for name, specs in cases.items():
        pipe = FilterPipeline(PrepConfig(filters=specs))
        ours, t_ours = timed(pipe.apply, docs)
        ours_mb_s = mb / t_ours / threads
        row = {
            "filter": name, "docs": len(docs), "mb": round(mb, 3), "gristmill_threads": threads,
            "gristmill_s": round(t_ours, 4),
            "gristmill_mb_s_per_core": round(ours_mb_s, 2),
            "gristmill_docs_s_per_core": round(len(docs) / t_ours / threads, 1),
        }
        theirs = None
        if name in NO_PEER:
            row["peer"] = NO_PEER[name]
        elif name == "badwords":
            theirs, t_theirs = timed(run_python_badwords, words, sample)
            row["peer"] = "python re"
        elif peers:
            theirs, t_theirs = timed(run_datatrove, peers[name], sample)
            row["peer"] = "datatrove " + _datatrove_version()
        if theirs is not None:
            peer_mb_s = sample_mb / t_theirs
            row.update(
                peer_docs=len(sample), peer_mb=round(sample_mb, 3),
                peer_s=round(t_theirs, 4),
                peer_mb_s_per_core=round(peer_mb_s, 3),
                peer_docs_s_per_core=round(len(sample) / t_theirs, 1),
                speedup_per_core=round(ours_mb_s / peer_mb_s, 1),
                same_decisions=sum(a == b for a, b in zip(ours, theirs)),
            )
        rows.append(row)

    print(f"bench-en.jsonl.zst: gristmill on {len(docs)} documents ({mb:.1f} MB, {threads} thread(s)), "
          f"peers on the first {len(sample)} ({sample_mb:.1f} MB); rates per core")
    print(f"{'filter':<20}{'gristmill MB/s':>16}{'docs/s':>10}{'peer MB/s':>12}{'docs/s':>10}"
          f"{'ratio':>9}{'same':>13}  peer")
    for r in rows:
        peer = (
            f"{r['peer_mb_s_per_core']:>12.2f}{r['peer_docs_s_per_core']:>10.0f}{r['speedup_per_core']:>8.0f}x"
            f"{r['same_decisions']:>7}/{r['peer_docs']:<5}  {r['peer']}"
            if "peer_s" in r else f"{'':>53}  {r.get('peer', '')}"
        )
        print(f"{r['filter']:<20}{r['gristmill_mb_s_per_core']:>16.1f}{r['gristmill_docs_s_per_core']:>10.0f}{peer}")
    engines = [] if args.no_ray else bench_engines(docs * args.repeat, workers=(2,) if args.size == "small" else (1, 2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "prep", "size": args.size, "documents": len(docs), "mb": round(mb, 3),
        "peer_documents": len(sample), "peer_mb": round(sample_mb, 3),
        "ratio": "gristmill MB/s per core / peer MB/s per core (peer on the first peer_mb MB)",
        "python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
        "rows": rows, "engines": engines,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


# ---- engines: the whole prep, local vs Ray ---------------------------------------------------------


def bench_engines(docs: list[str], files: int = 8, workers: tuple = (1, 2)) -> list[dict]:
    """Times ``prep`` (c4 preset, exact + MinHash dedup) on the local engine and on local Ray
    clusters of each size in ``workers`` over the same input; returns one row per run."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        print("Ray is not installed (pip install 'gristmill[ray]'): no engine table", file=sys.stderr)
        return []
    import tempfile

    from gristmill import ray_engine
    from gristmill.prep import prep, read_documents

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    config = dict(preset="c4", dedup={"exact": True, "minhash": True}, batch_size=max(len(docs) // (4 * files), 10))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for k in range(files):
            lines = (json.dumps({"id": str(i), "text": t}) for i, t in enumerate(docs) if i % files == k)
            (src / f"part-{k}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

        def kept(out: Path) -> list:
            return [(d.id, d.text) for d in read_documents(out / "deduped")]

        t0 = time.perf_counter()
        local = prep([src], Path(tmp) / "local", PrepConfig(**config))
        seconds = time.perf_counter() - t0
        rows.append({"engine": "local", "workers": 1, "seconds": round(seconds, 3),
                     "docs_s": round(local["docs_in"] / seconds, 1), "same_output": True})
        expected = kept(Path(tmp) / "local")
        for cpus in workers:
            t_start = time.perf_counter()
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"GRISTMILL_NUM_THREADS": "1"}})
            ray.data.DataContext.get_current().enable_progress_bars = False
            start_s = time.perf_counter() - t_start
            try:
                out = Path(tmp) / f"ray-{cpus}"
                t0 = time.perf_counter()
                report = ray_engine.prep([src], out, PrepConfig(**config))
                seconds = time.perf_counter() - t0
            finally:
                ray.shutdown()
            rows.append({"engine": "ray", "workers": cpus, "seconds": round(seconds, 3),
                         "cluster_start_s": round(start_s, 2),
                         "docs_s": round(report["docs_in"] / seconds, 1),
                         "same_output": kept(out) == expected and report["docs_final"] == local["docs_final"]})
    print(f"\nprep (c4 + exact + MinHash dedup), {len(docs)} documents in {files} files; "
          "Ray times exclude starting the cluster")
    print(f"{'engine':<10}{'workers':>8}{'seconds':>10}{'docs/s':>10}{'vs local':>10}  same output")
    for r in rows:
        print(f"{r['engine']:<10}{r['workers']:>8}{r['seconds']:>10.2f}{r['docs_s']:>10.0f}"
              f"{r['docs_s'] / rows[0]['docs_s']:>9.2f}x  {r['same_output']}")
    return rows


def _try_datatrove():
    try:
        import spacy  # noqa: F401  (datatrove's English word tokenizer)

        return datatrove_filters()
    except ImportError as e:
        print(f"datatrove unavailable ({e}); timing gristmill only", file=sys.stderr)
        return {}


def _datatrove_version() -> str:
    from importlib.metadata import version

    return version("datatrove")


if __name__ == "__main__":
    sys.exit(main())
