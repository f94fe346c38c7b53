"""Evaluation: loss and bits per byte, multiple-choice tasks, task suites and their report.

Read top to bottom: loss, perplexity and bits per byte on a shard split or on any text; the
task files (HellaSwag's released JSONL and a generic multiple-choice JSONL) and how an example
becomes tokens (few-shot examples, the delimiter, long contexts); scoring the choices, where
each example's context runs once and its endings run as one batch on copies of the context's
KV cache; a task's metrics; suites (a TOML file of tasks) with a score centred on random
guessing as CORE (DCLM) has it; the report (report.json, report.md, report.png). The
lm-evaluation-harness model is :mod:`gristmill.harness`.

Scoring follows llm.c's ``hellaswag.py`` and the harness: ``acc`` picks the choice with the
highest sum of log-probabilities of its tokens; ``acc_norm`` divides that sum by the choice's
length in UTF-8 bytes (the harness's ``acc_bytes``; its ``acc_norm`` uses characters, the same
for ASCII text); ``acc_norm_tokens`` divides by the number of tokens (llm.c's ``acc_norm``).

>>> result = run_task("runs/gpt2", "hellaswag_val.jsonl", name="hellaswag")  # doctest: +SKIP
>>> result["acc_norm"]  # doctest: +SKIP
0.2955
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gristmill.defaults import EVAL
from gristmill.documents import open_binary, read_documents
from gristmill.model import GPT, KVCache
from gristmill.outputs import check_apart, claim
from gristmill.progress import progress_bar
from gristmill.sample import prepare_model
from gristmill.storage import atomic_file, write_atomic, write_json_atomic

__all__ = [
    "METRICS", "Example", "PreparedTask", "TaskFormatError", "TaskSpec", "claim_report",
    "evaluate", "format_results", "is_shard_dataset", "plot_task_scores", "prepare_task",
    "read_suite", "read_task", "reference_scores", "run_suite", "run_task", "score_choices",
    "score_tasks", "token_byte_lengths", "write_report",
]

# ---- loss, perplexity, bits per byte ---------------------------------------------------------


def token_byte_lengths(tokenizer, n: int) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits per byte."""
    special = set(tokenizer.special_tokens.values())
    return np.array([0 if i in special else len(tokenizer.decode_single_token_bytes(i))
                     for i in range(n)], dtype=np.int64)


def is_shard_dataset(path) -> bool:
    """Whether ``path`` names a shard dataset (a folder with a manifest.json, or the manifest)
    rather than documents (.txt, .jsonl[.gz|.zst], .parquet files or folders of them)."""
    path = Path(path)
    return (path.is_dir() and (path / "manifest.json").is_file()) or (
        path.name == "manifest.json" and path.is_file())


def _windows(tokens: np.ndarray, batch_size: int, seq_len: int) -> Iterator[np.ndarray]:
    """(B, seq_len + 1) windows with stride seq_len; the last is padded with -1 targets."""
    tokens = np.asarray(tokens, dtype=np.int64)
    starts = list(range(0, max(1, len(tokens) - 1), seq_len))
    for i in range(0, len(starts), batch_size):
        rows = []
        for s in starts[i: i + batch_size]:
            row = tokens[s: s + seq_len + 1]
            rows.append(np.pad(row, (0, seq_len + 1 - len(row)), constant_values=-1))
        yield np.stack(rows)


def _document_tokens(paths, tok) -> tuple[np.ndarray, int, int]:
    """Each document as end-of-text + its tokens, all in a row; (tokens, documents, bytes)."""
    parts, docs, nbytes = [], 0, 0
    for doc in read_documents(paths):
        parts.append([tok.eot_token, *tok.encode_ordinary(doc.text)])
        docs += 1
        nbytes += len(doc.text.encode("utf-8"))
    if not docs:
        raise ValueError(f"{paths}: no documents")
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]), docs, nbytes


@torch.no_grad()
def evaluate(model_or_path, data, tokenizer=None, *, split: str = "val",
             batch_size: int = EVAL["batch_size"], seq_len: int | None = None,
             max_batches: int | None = None, device=None, dtype=None,
             progress: bool = False) -> dict:
    """Loss (nats/token), perplexity and bits per byte of a model on held-out tokens.

    Args:
        data: a shard dataset (its ``split``, read in order; or a ``Path`` to one), a ``Path``
            to documents (.txt, .jsonl[.gz|.zst], .parquet, or a folder of them: each
            document is end-of-text + its text, and every token of every text is predicted,
            the end-of-text tokens are not), text (a ``str``), or an array of token ids (every
            token after the first is predicted once).
        tokenizer: needed for text and for bits per byte (default: the checkpoint's).

    Returns:
        ``{"loss", "perplexity", "bits_per_byte", "tokens", "bytes"}`` (bits per byte is None
        without a tokenizer), and ``"documents"`` for documents. ``tokens`` are the tokens
        predicted, ``bytes`` the UTF-8 bytes they spell.

    Raises:
        InputFormatError: a document file that cannot be read (file and line named).
    """
    model, tok = prepare_model(model_or_path, tokenizer, device, dtype, required=False)
    if isinstance(data, Path) and is_shard_dataset(data):
        from gristmill.shards import ShardDataset

        data = ShardDataset(data)
    if tok is not None and hasattr(data, "check_tokenizer"):
        data.check_tokenizer(tok)
    T = seq_len or model.config.block_size
    dev = next(model.parameters()).device
    ignore, extra = None, {}
    if hasattr(data, "sampler"):
        n = int(data.num_tokens(split=split))
        batch_size = max(1, min(batch_size, (n - 1) // T))
        n_batches = max(1, (n - 1) // (batch_size * T))
        sampler = data.sampler(split=split, batch_size=batch_size, seq_len=T, mode="sequential",
                               seed=0)
        batches = (sampler.next_batch() for _ in range(n_batches))
    else:
        if isinstance(data, (str, Path)) and tok is None:
            raise ValueError("evaluating text needs a tokenizer")
        if isinstance(data, Path):
            data, docs, _ = _document_tokens(data, tok)
            ignore, extra = tok.eot_token, {"documents": docs}
        elif isinstance(data, str):
            data = np.asarray(tok.encode_ordinary(data))
        n_batches = math.ceil(max(1, len(data) - 1) / T / batch_size)
        batches = _windows(np.asarray(data), batch_size, T)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    byte_len = torch.as_tensor(token_byte_lengths(tok, model.config.vocab_size), device=dev) \
        if tok is not None else None
    bar = progress_bar(progress, desc="eval", total=n_batches, unit="batch")
    nats, tokens, nbytes = 0.0, 0, 0
    for i, batch in enumerate(batches):
        if i >= n_batches:
            break
        b = torch.as_tensor(np.asarray(batch, dtype=np.int64), device=dev)
        x, y = b[:, :-1].clamp(min=0), b[:, 1:]
        if ignore is not None:
            y = y.masked_fill(y == ignore, -1)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1,
                               reduction="sum")
        real = y >= 0
        nats += loss.item()
        tokens += int(real.sum())
        if byte_len is not None:
            nbytes += int(byte_len[y[real]].sum())
        bar.update(1)
    bar.close()
    if tokens == 0:
        raise ValueError("nothing to evaluate: fewer than two tokens")
    loss = nats / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700)), "tokens": tokens,
            "bytes": nbytes if byte_len is not None else None,
            "bits_per_byte": nats / math.log(2) / nbytes if nbytes else None, **extra}


# ---- task files ------------------------------------------------------------------------------


class TaskFormatError(ValueError):
    """A task or suite file that cannot be used; the message names the file and the line or
    field, and what was expected."""


@dataclass
class Example:
    """One multiple-choice question: the context, the choices (each scored as ``delimiter +
    choice`` after the context) and the index of the right one. ``where`` is ``file:line``;
    ``fewshot`` holds the record's own solved examples, if it brought any."""

    context: str
    choices: list[str]
    label: int
    where: str = ""
    fewshot: list[Example] | None = None


_GENERIC = ("context", "choices", "label")
_HELLASWAG = ("ctx", "endings", "label")


def _label(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
        return int(value)  # HF's copies of HellaSwag keep the label as a string
    return None


def _example(record: Any, where: str, fewshot_allowed: bool = True) -> Example:
    """A record as an :class:`Example`: HellaSwag's (ctx, endings, label) or the generic
    (context, choices, label, optional fewshot)."""
    if not isinstance(record, dict):
        raise TaskFormatError(f"{where}: expected a JSON object with {', '.join(_GENERIC)} (or "
                              f"HellaSwag's {', '.join(_HELLASWAG)})")
    keys = _HELLASWAG if "ctx" in record or "endings" in record else _GENERIC
    missing = [k for k in keys if k not in record]
    if missing:
        raise TaskFormatError(f"{where}: missing field {missing[0]!r} (a multiple-choice record "
                              f"has {', '.join(keys)})")
    context, choices, label = (record[k] for k in keys)
    if not isinstance(context, str):
        raise TaskFormatError(f"{where}: field {keys[0]!r} must be a string")
    if not (isinstance(choices, list) and len(choices) >= 2
            and all(isinstance(c, str) and c for c in choices)):
        raise TaskFormatError(f"{where}: field {keys[1]!r} must be a list of at least two "
                              "non-empty strings")
    index = _label(label)
    if index is None:
        raise TaskFormatError(f"{where}: field 'label' must be an integer, got {label!r}")
    if not 0 <= index < len(choices):
        raise TaskFormatError(f"{where}: label {index} is out of range for {len(choices)} "
                              f"choices (0 to {len(choices) - 1})")
    shots = record.get("fewshot")
    if shots is not None:
        if not (fewshot_allowed and isinstance(shots, list)):
            raise TaskFormatError(f"{where}: field 'fewshot' must be a list of records with "
                                  f"{', '.join(_GENERIC)}")
        shots = [_example(s, f"{where}: fewshot {i}", False) for i, s in enumerate(shots)]
    return Example(context, list(choices), index, where, shots)


def read_task(path, *, limit: int | None = None) -> list[Example]:
    """The examples of a task file: JSON lines (.jsonl, .gz or .zst compressed), each record
    HellaSwag's ``{"ctx", "endings", "label"}`` or ``{"context", "choices", "label"}`` with an
    optional ``"fewshot": [records]``. ``limit``: the first N examples.

    Raises:
        TaskFormatError: naming the file and line of a bad record.
        FileNotFoundError: a missing file.

    >>> read_task("missing.jsonl")
    Traceback (most recent call last):
    ...
    FileNotFoundError: missing.jsonl: no such file
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    examples: list[Example] = []
    with open_binary(path) as f:
        lineno = 0
        while limit is None or len(examples) < limit:
            where = f"{path}: line {lineno + 1}"
            try:
                raw = f.readline()
            except (OSError, EOFError, ValueError) as e:  # a damaged .gz or .zst
                raise TaskFormatError(f"{where}: cannot read the file ({e})") from None
            if not raw:
                break
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TaskFormatError(f"{where}: invalid UTF-8 at byte {e.start}") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as e:
                why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) \
                    else "unreadable"
                raise TaskFormatError(f"{where}: invalid JSON ({why})") from None
            examples.append(_example(record, where))
    if not examples:
        raise TaskFormatError(f"{path}: line 1: no examples (expected JSON lines)")
    return examples


# ---- examples as tokens ----------------------------------------------------------------------


@dataclass
class TaskSpec:
    """One task of a suite: its file and how its prompts are made and scored."""

    name: str
    path: str
    num_fewshot: int = EVAL["num_fewshot"]
    metric: str = EVAL["metric"]  # acc, acc_norm or acc_norm_tokens: the one the suite centres
    random_baseline: float | None = None  # default: the mean of 1 / number of choices
    delimiter: str = EVAL["delimiter"]  # between the context and each choice
    limit: int | None = None  # the first N examples
    seed: int = EVAL["seed"]  # which examples are drawn as few-shot examples


METRICS = ("acc", "acc_norm", "acc_norm_tokens")


@dataclass
class PreparedTask:
    """A task's examples as tokens: ``items[i] = (context ids, [ids of each ending])``."""

    spec: TaskSpec
    examples: list[Example]
    items: list[tuple[list[int], list[list[int]]]]
    truncated: int = 0


def _render(ex: Example, shots: Sequence[Example], delimiter: str) -> tuple[str, list[str]]:
    """The prompt (solved examples, a blank line after each, then the context) and the
    continuations; trailing whitespace of the prompt moves to the continuations, as the
    harness does, so the token boundary falls where the words do."""
    prompt = "".join(s.context + delimiter + s.choices[s.label] + "\n\n" for s in shots)
    prompt += ex.context
    stripped = prompt.rstrip()
    tail = prompt[len(stripped):]
    return stripped, [tail + delimiter + c for c in ex.choices]


def _shots(examples: list[Example], i: int, k: int, seed: int) -> list[Example]:
    """``k`` solved examples for example ``i``: its own, else drawn from the others of the
    task with a seed of its own (CORE's rule), so the draw never depends on the batch."""
    ex = examples[i]
    if ex.fewshot is not None:
        return ex.fewshot[:k] if k else ex.fewshot
    if not k:
        return []
    others = [j for j in range(len(examples)) if j != i]
    return [examples[j] for j in random.Random(seed + i).sample(others, min(k, len(others)))]


def prepare_task(spec: TaskSpec, tokenizer, block_size: int, *,
                 truncate_context: bool = False) -> PreparedTask:
    """Reads ``spec.path`` and turns each example into tokens.

    An example whose context and longest ending do not fit the model's window
    (``block_size`` + 1 tokens: the last token is never fed) is an error naming its line, or
    with ``truncate_context`` loses the start of its context (counted in ``truncated``).

    Raises:
        TaskFormatError: a bad record or an example too long for the window.
    """
    examples = read_task(spec.path, limit=spec.limit)
    items, truncated = [], 0
    for i, ex in enumerate(examples):
        prompt, conts = _render(ex, _shots(examples, i, spec.num_fewshot, spec.seed),
                                spec.delimiter)
        ctx = tokenizer.encode_ordinary(prompt) or [tokenizer.eot_token]
        ends = [tokenizer.encode_ordinary(c) for c in conts]
        room = block_size + 1 - max(map(len, ends))
        if len(ctx) > room:
            if not truncate_context or room < 1:
                raise TaskFormatError(
                    f"{ex.where}: context ({len(ctx)} tokens) + longest choice "
                    f"({max(map(len, ends))}) exceed the model's window of {block_size} + 1 "
                    "tokens" + ("" if room < 1 else "; pass --truncate-context to cut the "
                                "start of long contexts"))
            ctx = ctx[len(ctx) - room:]
            truncated += 1
        items.append((ctx, ends))
    return PreparedTask(spec, examples, items, truncated)


# ---- scoring the choices ---------------------------------------------------------------------


def _batches(items, block_size: int, batch_tokens: int) -> Iterator[list[int]]:
    """Groups of item indices (similar lengths together) whose padded contexts and endings fit
    ``batch_tokens`` fed tokens and, side by side, the model's window."""
    order = sorted(range(len(items)), key=lambda i: (len(items[i][0]),
                                                     max(map(len, items[i][1]))))
    group: list[int] = []
    lc = le = rows = 0
    for i in order:
        ctx, ends = items[i]
        nlc, nle = max(lc, len(ctx)), max(le, max(map(len, ends)) - 1)
        nrows = rows + len(ends)
        cost = (len(group) + 1) * nlc + nrows * max(nle, 1)
        if group and (cost > batch_tokens or nlc + nle > block_size):
            yield group
            group, nlc, nle, nrows = [], len(ctx), max(map(len, ends)) - 1, len(ends)
        group.append(i)
        lc, le, rows = nlc, nle, nrows
    if group:
        yield group


def _target_logprobs(logits, targets):
    """Log-probabilities of ``targets`` (R, T; -1 for none, scored 0) under ``logits``
    (R, T, vocab), and whether each is the most likely token (True where none).

    The logits dominate memory and time (T x vocab per row): only the positions with a
    target are copied out, once, and the normaliser is computed in place on that copy."""
    real = targets >= 0
    sel = logits[real].float()  # (N, vocab), contiguous: padding and the vocab's pad dropped
    target = targets[real]
    picked = sel.gather(1, target[:, None])[:, 0]
    top = sel.amax(-1)
    norm = sel.sub_(top[:, None]).exp_().sum(-1).log_().add_(top)  # logsumexp, in place
    logp = torch.zeros(targets.shape, device=logits.device)
    best = torch.ones(targets.shape, dtype=torch.bool, device=logits.device)
    logp[real] = picked - norm
    best[real] = picked >= top
    return logp, best


def _score_batch(model: GPT, batch) -> list[list[tuple[float, bool]]]:
    """Log-probability sums and greedy flags of each ending of each ``(context, endings)``.

    The contexts run once, left-padded (the padding masked out, positions counted from each
    context's first token); the cache is copied once per ending; the endings run together,
    right-padded, each attending to its own context and to itself. An ending's last token is
    never fed: only the tokens before it predict something.
    """
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    lengths = torch.tensor([len(c) for c, _ in batch], device=dev)
    B, Lc = len(batch), int(lengths.max())
    rows = [(i, e) for i, (_, ends) in enumerate(batch) for e in ends]
    Le = max(len(e) for _, e in rows) - 1
    pad = Lc - lengths
    idx = np.zeros((B, Lc), dtype=np.int64)  # built on the host, copied over once
    for i, (c, _) in enumerate(batch):
        idx[i, Lc - len(c):] = c
    idx = torch.from_numpy(idx).to(dev)
    valid = torch.arange(Lc, device=dev) >= pad[:, None]
    positions = mask = None
    if bool((pad > 0).any()):
        positions = (torch.arange(Lc, device=dev) - pad[:, None]).clamp(min=0)
        causal = torch.ones(Lc, Lc, dtype=torch.bool, device=dev).tril()
        eye = torch.eye(Lc, dtype=torch.bool, device=dev)
        mask = ((causal & valid[:, None, :]) | eye)[:, None]  # a pad row sees itself: no NaN
    cache = KVCache(model.config, B, Lc + Le, dev, dtype)
    last = model(idx, cache=cache, positions=positions, attn_mask=mask, last_only=True)[0][:, -1]
    ex = torch.tensor([i for i, _ in rows], device=dev)
    R = len(rows)
    ends = np.full((R, Le + 1), -1, dtype=np.int64)
    for r, (_, e) in enumerate(rows):
        ends[r, : len(e)] = e
    ends = torch.from_numpy(ends).to(dev)
    # The context's last position predicts each ending's first token, once per example.
    first_logp, first_best = _target_logprobs(last[ex][:, None], ends[:, :1])
    sums, misses = first_logp[:, 0].double(), (~first_best[:, 0]).float()
    if Le > 0:
        cache.reorder(ex)
        fed = ends[:, :Le].clamp(min=0)
        pos = (lengths[ex][:, None] + torch.arange(Le, device=dev)).clamp(
            max=model.config.block_size - 1)  # only pads can pass the window
        m = torch.zeros(R, 1, Le, Lc + Le, dtype=torch.bool, device=dev)
        m[:, 0, :, :Lc] = valid[ex][:, None, :]
        m[:, 0, :, Lc:] = torch.ones(Le, Le, dtype=torch.bool, device=dev).tril()
        out = model(fed, cache=cache, positions=pos, attn_mask=m)[0]
        logp, best = _target_logprobs(out, ends[:, 1:])
        sums += logp.double().sum(1)
        misses += (~best).float().sum(1)
    out_rows = list(zip(sums.tolist(), (misses == 0).tolist()))
    result, r = [], 0
    for _, e in batch:
        result.append(out_rows[r: r + len(e)])
        r += len(e)
    return result


@torch.no_grad()
def score_choices(model: GPT, items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], *,
                  batch_tokens: int = EVAL["batch_tokens"], progress: bool = False,
                  desc: str = "choices") -> list[list[tuple[float, bool]]]:
    """``(sum of log-probabilities, greedy)`` of each ending given its context, for each
    ``(context ids, [ending ids, ...])``; ``greedy`` says the ending is what greedy decoding
    would produce. Every context needs a token, every ending a token, and a context with its
    longest ending at most ``block_size + 1`` tokens.

    Raises:
        ValueError: an empty context or ending, or one too long for the model.
    """
    block = model.config.block_size
    for ctx, ends in items:
        if not len(ctx) or not len(ends) or not all(len(e) for e in ends):
            raise ValueError("every context and every ending needs at least one token")
        if len(ctx) + max(map(len, ends)) > block + 1:
            raise ValueError(f"context ({len(ctx)} tokens) + ending ({max(map(len, ends))}) "
                             f"exceed the model's window of {block} + 1 tokens")
    was_training = model.training
    model.eval()
    items = [(list(c), [list(e) for e in ends]) for c, ends in items]
    result: list = [None] * len(items)
    bar = progress_bar(progress, desc=desc, total=len(items), unit="ex")
    try:
        for group in _batches(items, block, batch_tokens):
            for i, scores in zip(group, _score_batch(model, [items[i] for i in group])):
                result[i] = scores
            bar.update(len(group))
    finally:
        bar.close()
        model.train(was_training)
    return result


@torch.no_grad()
def reference_scores(model: GPT, ctx: Sequence[int], ends: Sequence[Sequence[int]]
                     ) -> list[tuple[float, bool]]:
    """The plain way, for checking :func:`score_choices`: each context + ending through the
    model whole, the ending's log-probabilities summed."""
    out = []
    for e in ends:
        ids = torch.as_tensor([*ctx, *e][:-1], device=next(model.parameters()).device)
        logp = model(ids[None])[0][0, len(ctx) - 1:].float().log_softmax(-1)
        target = torch.as_tensor(e, device=logp.device)
        out.append((float(logp.gather(1, target[:, None]).sum()),
                    bool((logp.argmax(-1) == target).all())))
    return out


# ---- a task's metrics ------------------------------------------------------------------------


def _metrics(task: PreparedTask, scores) -> dict:
    n = len(task.examples)
    hits = dict.fromkeys(METRICS, 0)
    preds = []
    for ex, (ctx, ends), sc in zip(task.examples, task.items, scores):
        lls = np.array([s for s, _ in sc])
        nbytes = np.array([max(1, len(c.encode("utf-8"))) for c in ex.choices], dtype=float)
        ntok = np.array([len(e) for e in ends], dtype=float)
        pick = {"acc": int(np.argmax(lls)), "acc_norm": int(np.argmax(lls / nbytes)),
                "acc_norm_tokens": int(np.argmax(lls / ntok))}
        for k, p in pick.items():
            hits[k] += p == ex.label
        preds.append({"where": ex.where, "label": ex.label, "pred": pick["acc"],
                      "pred_norm": pick["acc_norm"], "pred_norm_tokens": pick["acc_norm_tokens"],
                      "logprobs": lls.tolist(), "greedy": [g for _, g in sc]})
    spec = task.spec
    baseline = spec.random_baseline if spec.random_baseline is not None else float(
        np.mean([1 / len(ex.choices) for ex in task.examples]))
    value = hits[spec.metric] / n
    return {"name": spec.name, "path": str(spec.path), "examples": n,
            "num_fewshot": spec.num_fewshot, "truncated": task.truncated,
            **{k: v / n for k, v in hits.items()}, "metric": spec.metric,
            "random_baseline": baseline,
            "centered": (value - baseline) / (1 - baseline) if baseline < 1 else 0.0,
            "predictions": preds}


def score_tasks(model: GPT, tasks: Sequence[PreparedTask], *,
                batch_tokens: int = EVAL["batch_tokens"], progress: bool = False) -> dict:
    """Scores prepared tasks: ``{"tasks": [per-task metrics], "score"}``, where ``score`` is
    the mean over tasks of the chosen metric centred on random guessing,
    ``(value - baseline) / (1 - baseline)``: 0 is chance, 1 is perfect (CORE's score)."""
    results = []
    for task in tasks:
        scores = score_choices(model, task.items, batch_tokens=batch_tokens, progress=progress,
                               desc=task.spec.name)
        results.append(_metrics(task, scores))
    score = float(np.mean([r["centered"] for r in results])) if results else None
    return {"tasks": results, "score": score}


def run_task(model_or_path, path, *, name: str | None = None, tokenizer=None,
             num_fewshot: int = EVAL["num_fewshot"], limit: int | None = None,
             truncate_context: bool = False, batch_tokens: int = EVAL["batch_tokens"],
             device=None, dtype=None, progress: bool = False) -> dict:
    """One task file scored: its metrics (``acc``, ``acc_norm``, ``acc_norm_tokens``,
    ``centered``, ``examples``, ``truncated``, ``predictions``)."""
    spec = TaskSpec(name or Path(path).name.split(".")[0], str(path), num_fewshot=num_fewshot,
                    limit=limit)
    return run_suite(model_or_path, [spec], tokenizer=tokenizer, truncate_context=truncate_context,
                     batch_tokens=batch_tokens, device=device, dtype=dtype,
                     progress=progress)["tasks"][0]


def run_suite(model_or_path, suite, *, tokenizer=None, truncate_context: bool = False,
              batch_tokens: int = EVAL["batch_tokens"], device=None, dtype=None,
              progress: bool = False) -> dict:
    """A suite (a TOML file, see :func:`read_suite`, or a list of :class:`TaskSpec`) scored:
    ``{"tasks": [...], "score"}``, as :func:`score_tasks`."""
    model, tok = prepare_model(model_or_path, tokenizer, device, dtype)
    specs = read_suite(suite) if isinstance(suite, (str, Path)) else list(suite)
    tasks = [prepare_task(s, tok, model.config.block_size, truncate_context=truncate_context)
             for s in specs]
    return score_tasks(model, tasks, batch_tokens=batch_tokens, progress=progress)


# ---- suites ----------------------------------------------------------------------------------


# TaskSpec's fields: (type, may be None); the annotations are strings on Python 3.9.
_SPEC_TYPES = {"name": (str, False), "path": (str, False), "num_fewshot": (int, False),
               "metric": (str, False), "random_baseline": (float, True),
               "delimiter": (str, False), "limit": (int, True), "seed": (int, False)}


def read_suite(path) -> list[TaskSpec]:
    """The tasks of a suite file (TOML, YAML or JSON), one ``[[task]]`` table each::

        [[task]]
        name = "cloze"
        path = "cloze.jsonl"     # relative to the suite file
        num_fewshot = 3          # optional: num_fewshot, metric, random_baseline,
        metric = "acc_norm"      # delimiter, limit, seed (TaskSpec's fields)

    Raises:
        TaskFormatError: an unknown key, a value of the wrong type, a missing task file.
    """
    from gristmill.config import check_keys, parse_value, read_config_file

    path = Path(path)
    table = read_config_file(path)
    check_keys(table, ["task"], str(path))
    tasks = table.get("task")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
        raise TaskFormatError(f"{path}: expected one or more [[task]] tables")
    specs, names = [], set()
    for i, t in enumerate(tasks, 1):
        where = f"{path}: task {i}"
        try:
            check_keys(t, _SPEC_TYPES, where)
            missing = [k for k in ("name", "path") if k not in t]
            if missing:
                raise ValueError(f"missing field {missing[0]!r}")
            values = {}
            for key, raw in t.items():
                want, optional = _SPEC_TYPES[key]
                values[key] = None if optional and raw is None else parse_value(key, raw, want)
        except ValueError as e:
            text = str(e)
            raise TaskFormatError(text if text.startswith(str(path)) else f"{where}: {text}"
                                  ) from None
        spec = TaskSpec(**values)
        where = f"{path}: task {i} ({spec.name})"
        if spec.metric not in METRICS:
            raise TaskFormatError(f"{where}: metric must be one of {', '.join(METRICS)}, got "
                                  f"{spec.metric!r}")
        if spec.num_fewshot < 0 or (spec.limit is not None and spec.limit < 1):
            raise TaskFormatError(f"{where}: num_fewshot must be >= 0 and limit >= 1")
        if spec.random_baseline is not None and not 0 <= spec.random_baseline < 1:
            raise TaskFormatError(f"{where}: random_baseline must be in [0, 1)")
        if spec.name in names:
            raise TaskFormatError(f"{where}: a second task named {spec.name!r}")
        names.add(spec.name)
        spec.path = str(path.parent / spec.path)
        if not Path(spec.path).is_file():
            raise TaskFormatError(f"{where}: path {spec.path} is not a file")
        specs.append(spec)
    return specs


# ---- the report ------------------------------------------------------------------------------

REPORT_FILES = ("report.json", "report.md", "report.png", "predictions.jsonl")


def _owns(rel: str) -> bool:
    return rel in REPORT_FILES


def _table(result: dict) -> str:
    lines = ["| task | examples | shots | acc | acc_norm | acc_norm_tokens | random | centered |"
             " truncated |", "|---|---|---|---|---|---|---|---|---|"]
    for t in result["tasks"]:
        lines.append(f"| {t['name']} | {t['examples']} | {t['num_fewshot']} | {t['acc']:.4f} | "
                     f"{t['acc_norm']:.4f} | {t['acc_norm_tokens']:.4f} | "
                     f"{t['random_baseline']:.3f} | {t['centered']:.4f} ({t['metric']}) | "
                     f"{t['truncated']} |")
    return "\n".join(lines)


def format_results(result: dict) -> str:
    """The per-task table and the overall score, as Markdown."""
    score = result.get("score")
    shown = f"{score:.4f}" if score is not None else "n/a"
    return _table(result) + f"\n\nscore (mean centred metric over {len(result['tasks'])} " \
        f"task(s)): {shown}\n"


def _plot(result: dict, png: Path) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return
    tasks = result["tasks"]
    fig = Figure(figsize=(max(5.0, 1.2 * len(tasks) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(tasks))
    for metric, width in (("acc", -0.2), ("acc_norm", 0.2)):
        ax.bar(x + width, [t[metric] for t in tasks], 0.4, label=metric)
    ax.scatter(x, [t["random_baseline"] for t in tasks], marker="_", s=600, color="black",
               label="random", zorder=3)
    ax.set_xticks(x, [t["name"] for t in tasks], rotation=20)
    ax.set_ylim(0, 1)
    score = result.get("score")
    ax.set_title(f"score {score:.3f} (centred, mean over tasks)" if score is not None else "")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    with atomic_file(png) as tmp:
        FigureCanvasAgg(fig).print_png(str(tmp))


def plot_task_scores(ax, records: Sequence[dict]) -> None:
    """Draws a training run's task records (``{"step", "tasks_score", "tasks": {name:
    metric}}``, as train.py logs them) on a matplotlib axis: each task's metric and the
    suite's centred score."""
    steps = [r["step"] for r in records]
    for name in sorted({k for r in records for k in r.get("tasks", {})}):
        ax.plot(steps, [r.get("tasks", {}).get(name, np.nan) for r in records], ".-", lw=1,
                label=name)
    ax.plot(steps, [r["tasks_score"] for r in records], "o-", lw=2, color="black",
            label="score (centred)")
    ax.set_xlabel("step")
    ax.set_ylabel("task metric")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def claim_report(out, inputs: Sequence = ()) -> Path:
    """Takes ``out`` for an eval report (see :mod:`gristmill.outputs`): apart from the
    ``inputs``, and new, empty or an earlier report's folder. Call it before the work, so a
    refused folder costs nothing.

    Raises:
        OutputFolderError: ``out`` overlaps an input or holds files a report does not write.
    """
    out = Path(out)
    check_apart(out, inputs)
    claim(out, "eval", _owns)
    return out


def write_report(out, result: dict, *, model: str = "", inputs: Sequence = ()) -> Path:
    """Writes report.json (everything but the per-example predictions), report.md, report.png
    and predictions.jsonl to ``out``, a folder taken with :func:`gristmill.outputs.claim`
    (new, empty, or an earlier eval report's), never one of the ``inputs``."""
    out = claim_report(out, inputs)
    summary = {"model": model, "score": result.get("score"),
               "tasks": [{k: v for k, v in t.items() if k != "predictions"}
                         for t in result["tasks"]]}
    write_json_atomic(out / "report.json", summary)
    write_atomic(out / "report.md", f"# gristmill eval{': ' + model if model else ''}\n\n"
                 + format_results(result))
    write_atomic(out / "predictions.jsonl", "".join(
        json.dumps({"task": t["name"], **p}) + "\n" for t in result["tasks"]
        for p in t["predictions"]))
    _plot(result, out / "report.png")
    return out
