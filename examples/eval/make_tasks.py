"""Builds the example suite's tasks from held-out English text: a cloze task (the last word of
a sentence, against three words of similar length taken from other documents) and a
next-sentence task (two sentences, then the true next one against three from other
documents), in the generic multiple-choice format ({"context", "choices", "label"}).

    python examples/eval/make_tasks.py [--source ../shared/data/bench-en.jsonl.zst] [-n 100]

The source's last documents are used (the ones a training run on its first part never sees);
the output is deterministic for a given source, ``-n`` and ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from gristmill import read_documents
from gristmill.storage import write_atomic

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent.parent / "shared" / "data" / "bench-en.jsonl.zst"
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"^[A-Za-z]+$")


def sentences(text: str) -> list[str]:
    """Plain sentences of a document: 6 to 30 words, on one line."""
    out = []
    for s in _SENTENCE.split(" ".join(text.split())):
        words = s.split()
        if 6 <= len(words) <= 30 and s[-1] in ".!?":
            out.append(s)
    return out


def cloze(docs: list[list[str]], n: int, rng: random.Random) -> list[dict]:
    vocab = sorted({w.strip(".!?").lower() for d in docs for s in d for w in s.split()
                    if _WORD.match(w.strip(".!?"))})
    by_len: dict[int, list[str]] = {}
    for w in vocab:
        by_len.setdefault(len(w), []).append(w)
    records = []
    for d in docs:
        for i, s in enumerate(d[1:], 1):
            *head, last = s.split()
            word = last[:-1]
            if not _WORD.match(word) or len(word) < 3 or len(by_len.get(len(word), [])) < 4:
                continue
            others = [w for w in by_len[len(word)] if w != word.lower()]
            choices = [word] + rng.sample(others, 3)
            rng.shuffle(choices)
            records.append({"context": d[i - 1] + " " + " ".join(head), "choices": choices,
                            "label": choices.index(word)})
            break  # one question per document: more documents, less alike
        if len(records) == n:
            break
    return records


def next_sentence(docs: list[list[str]], n: int, rng: random.Random) -> list[dict]:
    records = []
    for k, d in enumerate(docs):
        if len(d) < 3:
            continue
        i = rng.randrange(len(d) - 2)
        pool = [s for j, o in enumerate(docs) if j != k for s in o[:3]]
        choices = [d[i + 2]] + rng.sample(pool, 3)
        rng.shuffle(choices)
        records.append({"context": d[i] + " " + d[i + 1], "choices": choices,
                        "label": choices.index(d[i + 2])})
        if len(records) == n:
            break
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=SOURCE, help="documents (jsonl[.zst], txt)")
    p.add_argument("-n", type=int, default=100, help="examples per task")
    p.add_argument("--held-out", type=int, default=600, help="the last N documents are used")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args()
    docs = [sentences(d.text) for d in read_documents(args.source)][-args.held_out:]
    docs = [d for d in docs if len(d) >= 3]
    for name, build in (("cloze", cloze), ("next_sentence", next_sentence)):
        records = build(docs, args.n, random.Random(args.seed))
        write_atomic(args.out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        print(f"{name}: {len(records)} examples -> {args.out / (name + '.jsonl')}")


if __name__ == "__main__":
    main()
