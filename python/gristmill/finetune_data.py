"""Fine-tuning data: reading labelled texts and instructions, splits, and length-grouped batches.

Read top to bottom: the readers (TSV/CSV/JSON lines/JSON tables of labelled texts; Alpaca
records and chat ``messages``), each error naming the file and line; the splits (the book's
seeded 70/10/20 and in-order 85/5/10) and balancing by undersampling; then the batches: examples
of similar length go together, so a batch is padded to its own longest example and not to the
data set's, and collation is numpy copies of whole rows, never a Python loop over tokens.
Nothing here imports torch: :mod:`gristmill.finetune` turns the arrays into tensors.

>>> rows = read_labelled("sms.tsv", text_field="1", label_field="0")  # doctest: +SKIP
>>> rows[0]
LabelledText(text='Go until jurong point...', label='ham', line=1)
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gristmill.prompts import PromptFormatError, alpaca_segments, chat_segments, check_messages

__all__ = [
    "FinetuneDataError", "Instruction", "LabelledText", "balance", "batches_by_length",
    "collate_instruct", "json_records", "parse_fractions", "read_instructions", "read_labelled",
    "segments_of", "split_indices",
]


class FinetuneDataError(ValueError):
    """A fine-tuning file that cannot be used as it is: the message names the file, the line
    and what was expected."""


# ---- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str
    line: int  # 1-based line of the file it came from


@dataclass(frozen=True)
class Instruction:
    record: dict  # an alpaca record, or {"messages": [...]}
    kind: str  # "alpaca" or "messages"
    line: int


def _read_text(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError as e:
        raise FinetuneDataError(f"{path}: not UTF-8 text (byte {e.start})") from None


def json_records(text: str) -> list[tuple[Any, int]]:
    """The values of a JSON array, or of JSON lines, each with the 1-based line it starts on.

    Raises:
        ValueError: ``"LINE: what"`` for text that is neither.

    >>> json_records('[{"a": 1},\\n {"a": 2}]')
    [({'a': 1}, 1), ({'a': 2}, 2)]
    >>> json_records('{"a": 1}\\n\\n{"a": 2}\\n')
    [({'a': 1}, 1), ({'a': 2}, 3)]
    """
    decoder = json.JSONDecoder()
    stripped = text.lstrip()
    if not stripped.startswith("["):
        out = []
        for i, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 is text
            if line.strip():
                try:
                    out.append((json.loads(line), i))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{i}: not valid JSON ({e.msg} at column {e.colno})") from None
        return out
    pos, out, n = text.index("[") + 1, [], len(text)

    def skip(p):
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    def fail(p, what):
        raise ValueError(f"{text.count(chr(10), 0, p) + 1}: {what}")

    pos = skip(pos)
    if pos < n and text[pos] == "]":
        pos += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                fail(e.pos, f"not valid JSON ({e.msg})")
            out.append((value, text.count("\n", 0, pos) + 1))
            pos = skip(end)
            if pos < n and text[pos] == ",":
                pos = skip(pos + 1)
                continue
            if pos < n and text[pos] == "]":
                pos += 1
                break
            fail(pos, "expected ',' or ']' after an element of the array")
    if skip(pos) != n:
        fail(skip(pos), "text after the end of the array")
    return out


def _column(name: str) -> int | None:
    return int(name) if name.isdigit() else None


def read_labelled(path, text_field: str = "text", label_field: str = "label"
                  ) -> list[LabelledText]:
    """Labelled texts from a .tsv, .csv, .jsonl or .json file.

    In TSV/CSV files the fields are header names, or column numbers (from 0) for a file
    without a header; TSV fields are not quoted (a ``"`` is text), CSV follows RFC 4180.

    Raises:
        FinetuneDataError: a missing field or column, an empty text or label (file and line).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    text = _read_text(path)
    rows: list[LabelledText] = []

    def add(t, label, line):
        if not isinstance(t, str) or not t.strip():
            raise FinetuneDataError(f"{path}:{line}: empty text in field {text_field!r}; expected "
                                    "a non-empty text")
        if isinstance(label, (int, float)) and not isinstance(label, bool):
            label = str(label)
        if not isinstance(label, str) or not label.strip():
            raise FinetuneDataError(f"{path}:{line}: empty label in field {label_field!r}")
        rows.append(LabelledText(t, label.strip(), line))

    if suffix in (".tsv", ".csv", ".txt"):
        tcol, lcol = _column(text_field), _column(label_field)
        if (tcol is None) != (lcol is None):
            raise FinetuneDataError(f"{path}: --text-field and --label-field must both be column "
                                    "numbers (a file without header) or both names")
        dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix != ".csv" else {}
        reader = csv.reader(text.splitlines(keepends=True), **dialect)
        start = reader.line_num
        if tcol is None:
            header = next(reader, None)
            if header is None:
                raise FinetuneDataError(f"{path}: empty; expected a header line and rows")
            for name in (text_field, label_field):
                if name not in header:
                    raise FinetuneDataError(
                        f"{path}:1: no column {name!r} in the header ({', '.join(header)}); for "
                        "a file without header pass column numbers (--text-field 1 "
                        "--label-field 0)")
            tcol, lcol = header.index(text_field), header.index(label_field)
        for fields in reader:
            line, start = start + 1, reader.line_num
            if not fields or not any(f.strip() for f in fields):
                continue
            if max(tcol, lcol) >= len(fields):
                raise FinetuneDataError(f"{path}:{line}: {len(fields)} column(s), expected at "
                                        f"least {max(tcol, lcol) + 1}")
            add(fields[tcol], fields[lcol], line)
    elif suffix in (".jsonl", ".json"):
        try:
            records = json_records(text)
        except ValueError as e:
            raise FinetuneDataError(f"{path}:{e}") from None
        for record, line in records:
            if not isinstance(record, dict):
                raise FinetuneDataError(f"{path}:{line}: expected an object with "
                                        f"{text_field!r} and {label_field!r}")
            for name in (text_field, label_field):
                if name not in record:
                    raise FinetuneDataError(f"{path}:{line}: no field {name!r} (fields: "
                                            f"{', '.join(record)})")
            add(record[text_field], record[label_field], line)
    else:
        raise FinetuneDataError(f"{path}: unknown format {suffix or '(no extension)'}; expected "
                                ".tsv, .csv, .jsonl or .json")
    if not rows:
        raise FinetuneDataError(f"{path}: no rows; expected labelled texts")
    return rows


def read_instructions(path) -> list[Instruction]:
    """Alpaca records (``instruction``, ``input``, ``output``) or chat conversations
    (``{"messages": [...]}``) from a JSON array or JSON lines file; see
    :mod:`gristmill.prompts` for how each is rendered.

    Raises:
        FinetuneDataError: a record of neither shape, an empty instruction (file and line).
    """
    path = Path(path)
    try:
        records = json_records(_read_text(path))
    except ValueError as e:
        raise FinetuneDataError(f"{path}:{e}") from None
    out = []
    for record, line in records:
        try:
            if isinstance(record, dict) and "messages" in record:
                check_messages(record["messages"])
                if not any(m["role"] == "assistant" for m in record["messages"]):
                    raise PromptFormatError("'messages': no assistant turn to learn from")
                out.append(Instruction(record, "messages", line))
                continue
            alpaca_segments(record)
            if not record["instruction"].strip():
                raise PromptFormatError("field 'instruction': empty")
            out.append(Instruction(record, "alpaca", line))
        except PromptFormatError as e:
            raise FinetuneDataError(f"{path}:{line}: {e}; expected an alpaca record "
                                    "(instruction, input, output) or {'messages': [...]}") from None
    if not out:
        raise FinetuneDataError(f"{path}: no records; expected alpaca records or conversations")
    return out


def segments_of(example: Instruction, with_response: bool = True):
    """The :class:`~gristmill.prompts.Segment` list of an instruction record."""
    if example.kind == "messages":
        messages = example.record["messages"]
        if not with_response:  # the conversation up to its last assistant turn, then the header
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            return chat_segments(messages[:last], add_generation_prompt=True)
        return chat_segments(messages)
    return alpaca_segments(example.record, with_response)


# ---- splits ----------------------------------------------------------------------------------


def parse_fractions(text: str, default: Sequence[float]) -> tuple[float, float, float]:
    if not text:
        return tuple(default)
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or not 0.999 <= sum(parts) <= 1.001 or parts[0] == 0:
        raise ValueError(f"split {text!r}: expected three fractions train,val,test adding up "
                         "to 1, e.g. 0.7,0.1,0.2")
    return parts


def split_indices(n: int, fractions: Sequence[float], seed: int | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, val and test: ``int(n * f)`` each for train and val, the rest test;
    shuffled with ``seed``, or in order when ``seed`` is None (as the book splits)."""
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    train_end = int(n * fractions[0])
    val_end = train_end + int(n * fractions[1])
    return order[:train_end], order[train_end:val_end], order[val_end:]


def balance(labels: Sequence[str], seed: int) -> np.ndarray:
    """Indices keeping every label's rarest count: the others undersampled at random."""
    labels = np.asarray(labels)
    names, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(labels == name), counts.min(), replace=False)
            for name in names]
    return np.sort(np.concatenate(keep))


# ---- batches ---------------------------------------------------------------------------------


def batches_by_length(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                      shuffle: bool = True, pool: int = 64) -> list[np.ndarray]:
    """One epoch's batches of example indices: shuffled (``seed``, ``epoch``), then sorted by
    length within pools of ``pool`` batches, so that each batch pads to a similar length; the
    batches' order is shuffled again. Without ``shuffle``, sorted by length overall (evaluation).
    Every example is in exactly one batch."""
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    size = batch_size * pool
    batches = []
    for start in range(0, n, size):
        chunk = order[start:start + size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def collate_instruct(tokens: np.ndarray, targets: np.ndarray, offsets: np.ndarray,
                     index: np.ndarray, pad: int, ignore: int = -100
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, labels)``, both (B, T): inputs are each example's tokens but the last,
    labels the next token where it is a target and ``ignore`` elsewhere (the prompt, the
    padding); T is the longest example's length minus one."""
    lengths = offsets[index + 1] - offsets[index] - 1
    T = int(lengths.max())
    x = np.full((len(index), T), pad, dtype=np.int64)
    y = np.full((len(index), T), ignore, dtype=np.int64)
    for row, i in enumerate(index):
        a, b = offsets[i], offsets[i + 1]
        n = b - a - 1
        x[row, :n] = tokens[a:b - 1]
        y[row, :n] = np.where(targets[a + 1:b], tokens[a + 1:b], ignore)
    return x, y
