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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "prep", "size": args.size, "documents": len(docs), "mb": round(mb, 3),
        "peer_documents": len(sample), "peer_mb": round(sample_mb, 3),
        "ratio": "gristmill MB/s per core / peer MB/s per core (peer on the first peer_mb MB)",
        "python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


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
