"""Continuous batching: many requests decoded together, joining and leaving between steps.

One thread owns the model. Each step it admits waiting requests while there are free slots
(the prompts that join at the same step are prefilled together, right-padded, their keys and
values written straight into free slots of the shared cache), runs one decoding step for every
active sequence at once, hands each sequence's new text to its request, and frees the slots of
sequences that ended (end-of-text, a stop string, their token budget, a request that went
away). A step's events go out together: jobs that share a :class:`Channel` (an HTTP server's
event loop) get them in one hand-over per step, not one per token.

The cache (:class:`SlotCache`) holds ``max_batch`` sequences, each at its own length. Active
sequences occupy slots ``0..B-1``: a sequence that ends is replaced by the last one (one slot's
keys and values copied), so a step reads the cache as a view, never a gathered copy. Each
sequence's positions and its attention mask come from its own length, so a sequence decodes
the same tokens whatever else is in the batch (up to float rounding of batched matmuls); a
right-padded prompt's padding comes after its last token, so causal attention never sees it.

Sampling is :mod:`gristmill.sample`'s (penalties, filters, seeded generators, stop strings);
each sequence has its own generator, so a seeded request gives the same text alone or batched.

>>> engine = BatchEngine(model, tok, max_batch=16).start()  # doctest: +SKIP
>>> job = Job(prompt_ids, [SamplingConfig(temperature=0, max_new_tokens=20)], print)  # doctest: +SKIP
>>> engine.submit(job)  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from gristmill.defaults import SERVE
from gristmill.model import GPT
from gristmill.sample import Penalties, SamplingConfig, TextStream, pick_tokens, seeded_generator

__all__ = ["BatchEngine", "Channel", "Done", "Job", "QueueFull", "Text"]


class QueueFull(RuntimeError):
    """The engine's waiting line is full: the request should be retried later."""


@dataclass
class Text:
    """New text of choice ``index``."""

    index: int
    text: str


@dataclass
class Done:
    """Choice ``index`` ended: ``finish_reason`` is ``stop`` or ``length``; ``tokens`` is the
    number of tokens it generated; ``error`` is set when the engine failed."""

    index: int
    finish_reason: str
    tokens: int
    error: str | None = None


class Channel(Protocol):
    """Where the jobs of one listener (an event loop) get their events: ``send`` is called
    from the engine's thread once per step with that step's ``(job, event)`` pairs, in order;
    it hands them over (e.g. ``loop.call_soon_threadsafe``) and calls each ``job.emit``."""

    def send(self, events: list[tuple[Job, object]]) -> None: ...


@dataclass(eq=False)
class Job:
    """A request: one prompt, one :class:`SamplingConfig` per choice, and where events go.

    ``emit`` gets the job's :class:`Text` and :class:`Done` events: called from the engine's
    thread, or, with a ``channel``, by the channel (one hand-over per step for all its jobs).
    With ``stream`` False a choice's text comes as one :class:`Text` just before its
    :class:`Done` (a request that is not streamed needs no event per token). Set
    ``cancelled`` to drop the job's sequences before the next step.
    """

    prompt: list[int]
    configs: list[SamplingConfig]
    emit: Callable[[object], None]
    channel: Channel | None = None
    stream: bool = True
    cancelled: bool = False
    remaining: int = field(default=0, init=False)


class SlotCache:
    """Keys and values for ``slots`` sequences of up to ``max_len`` positions (the engine
    keeps each sequence's length). Zero-filled: masked positions hold no NaN that could leak
    through attention's weighted sum."""

    def __init__(self, model: GPT, slots: int, device, dtype):
        c = model.config
        shape = (c.n_layer, slots, c.n_head, c.block_size, c.n_embd // c.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slot_ids = torch.arange(slots, device=device)

    def copy(self, src: int, dst: int, length: int) -> None:
        """Copies the first ``length`` positions of slot ``src`` into slot ``dst``."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]


class _PrefillView:
    """What the model's attention sees when prompts are prefilled into slots
    ``first..first+J-1``: each layer's keys and values are written there; attention reads the
    prompts' own (causal) keys."""

    length = 0  # nothing cached before the prompts: GPT.forward counts positions from 0

    def __init__(self, cache: SlotCache, first: int, count: int):
        self.cache, self.slots = cache, slice(first, first + count)

    def update(self, layer: int, k, v):
        T = k.shape[2]
        self.cache.k[layer, self.slots, :, :T] = k
        self.cache.v[layer, self.slots, :, :T] = v
        return k, v


class _StepView:
    """What the model's attention sees for one decoding step of slots ``0..B-1``: each
    sequence's new key/value is written at its own length; attention reads the first ``S``
    positions (``S`` the longest sequence's length + 1) under the caller's mask."""

    def __init__(self, cache: SlotCache, lengths: list[int]):
        self.cache, self.batch = cache, len(lengths)
        self.pos = torch.tensor(lengths, dtype=torch.long, device=cache.k.device)
        self.span = max(lengths) + 1
        self.length = self.span - 1  # what GPT.forward checks against block_size
        self.rows = cache.slot_ids[: self.batch]

    def update(self, layer: int, k, v):
        c, B = self.cache, self.batch
        c.k[layer, self.rows, :, self.pos] = k[:, :, 0]
        c.v[layer, self.rows, :, self.pos] = v[:, :, 0]
        return c.k[layer, :B, :, : self.span], c.v[layer, :B, :, : self.span]

    def mask(self):
        keys = torch.arange(self.span, device=self.pos.device)
        return (keys[None, :] <= self.pos[:, None])[:, None, None, :]


class _Sequence:
    """One choice of a job: its sampling state, text stream and counts."""

    def __init__(self, job: Job, index: int, cfg: SamplingConfig, tokenizer, device, vocab):
        self.job, self.index, self.cfg = job, index, cfg
        self.stream = TextStream(tokenizer, cfg.stop_strings)
        self.penalties = Penalties(cfg, [job.prompt], 1, vocab, device)
        self.plain = cfg.repetition_penalty == 1.0 and not cfg.frequency_penalty \
            and not cfg.presence_penalty
        self.greedy = self.plain and cfg.temperature == 0
        self.generator = seeded_generator(cfg.seed, device) if cfg.temperature > 0 else None
        self.stop_ids = {*cfg.stop_tokens, tokenizer.eot_token}
        self.count = 0
        self.held: list[str] = []  # the text so far of a job that is not streamed
        self.length = len(job.prompt)  # positions in the cache: where the next token goes
        self.token = 0  # the last token, fed at the next step


def _argmax_rows(logits) -> list[int]:
    """Each row's argmax (the first on ties, as ``torch.argmax``) of contiguous ``logits``.
    On CPU numpy's vectorised argmax: several times faster than torch's on a decoding step
    (benches/bench_serve.py)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return logits.numpy().argmax(-1).tolist()
    return logits.argmax(-1).tolist()


class BatchEngine:
    """Decodes the jobs given to :meth:`submit` in one batch on a background thread.

    Args:
        model: a :class:`GPT` in eval mode, on its device (float or quantized).
        tokenizer: the model's tokenizer (end-of-text ends a choice).
        max_batch: sequences decoded together (a job's choices each take one).
        max_queue: jobs waiting for slots before :meth:`submit` raises :class:`QueueFull`.
    """

    def __init__(self, model: GPT, tokenizer, max_batch: int = SERVE["max_batch"],
                 max_queue: int = SERVE["max_queue"]):
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.model, self.tok = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vocab = model.config.vocab_size
        self.cache = SlotCache(model, max_batch, self.device, self.dtype)
        self.rows: list[_Sequence] = []
        self.waiting: collections.deque[Job] = collections.deque()
        self.lock = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.steps = 0
        self.outbox: list[tuple[Job, object]] = []

    # ---- the outside --------------------------------------------------------------------------

    def start(self) -> BatchEngine:
        self.thread = threading.Thread(target=self._loop, name="gristmill-batch", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queues ``job``; its events arrive through ``job.emit``.

        Raises:
            QueueFull: ``max_queue`` jobs are already waiting.
            ValueError: the job asks for more choices than ``max_batch``, or its prompt and
                token budget do not fit the model's context.
        """
        if len(job.configs) > self.max_batch:
            raise ValueError(f"n is {len(job.configs)}; this server decodes at most "
                             f"{self.max_batch} sequences at once")
        longest = max(c.max_new_tokens for c in job.configs)
        if not job.prompt or len(job.prompt) + longest > self.block_size:
            raise ValueError(f"prompt ({len(job.prompt)} tokens) + max_tokens ({longest}) "
                             f"exceeds the model's context of {self.block_size} tokens")
        for c in job.configs:
            c.check()
        job.remaining = len(job.configs)
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(job)
            self.lock.notify_all()

    def load(self) -> dict:
        """``{"running", "waiting"}``: sequences in the batch and jobs in the queue."""
        with self.lock:
            return {"running": len(self.rows), "waiting": len(self.waiting)}

    # ---- the thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.stopping and not self.rows and not self.waiting:
                    self.lock.wait()
                if self.stopping:
                    return
            try:
                with torch.no_grad():
                    self._admit()
                    if self.rows:
                        self._step()
            except Exception as e:  # the server lives on: every running choice gets the error
                message = f"{type(e).__name__}: {e}"
                traceback.print_exc()
                for row in self.rows:
                    self._emit(row.job, Done(row.index, "error", row.count, message))
                self.rows = []
            self._flush()

    def _emit(self, job: Job, event) -> None:
        if job.channel is not None:
            self.outbox.append((job, event))
            return
        try:
            job.emit(event)
        except Exception:  # a listener that went away must not stop the others
            job.cancelled = True

    def _flush(self) -> None:
        """Hands this step's events to their channels: one ``send`` per channel."""
        if not self.outbox:
            return
        by_channel: dict[int, tuple[Channel, list]] = {}
        for job, event in self.outbox:
            by_channel.setdefault(id(job.channel), (job.channel, []))[1].append((job, event))
        self.outbox = []
        for channel, events in by_channel.values():
            try:
                channel.send(events)
            except Exception:  # its listener went away: its jobs leave the batch
                for job, _ in events:
                    job.cancelled = True

    def _admit(self) -> None:
        jobs, free = [], self.max_batch - len(self.rows)
        with self.lock:
            while self.waiting:
                job = self.waiting[0]
                if job.cancelled:
                    self.waiting.popleft()
                elif len(job.configs) <= free:
                    jobs.append(self.waiting.popleft())
                    free -= len(job.configs)
                else:
                    break
        if not jobs:
            return
        error = self._prefill_or_undo(jobs)
        if error is None:
            return
        if len(jobs) > 1:  # prefilled one by one then: a failing job fails alone
            for job in jobs:
                if (e := self._prefill_or_undo([job])) is not None:
                    self._fail(job, e)
        else:
            self._fail(jobs[0], error)

    def _prefill_or_undo(self, jobs: list[Job]) -> Exception | None:
        """Prefills ``jobs``; on an error, removes their rows again and returns it."""
        first = len(self.rows)
        try:
            self._prefill(jobs)
        except Exception as e:
            del self.rows[first:]
            return e
        return None

    def _fail(self, job: Job, e: Exception) -> None:
        traceback.print_exception(e)
        for index in range(len(job.configs)):
            self._emit(job, Done(index, "error", 0, f"{type(e).__name__}: {e}"))

    def _prefill(self, jobs: list[Job]) -> None:
        """Runs the prompts of ``jobs`` through the model together (right-padded to the
        longest) into the slots after the active ones; each job's other choices get copies of
        its first choice's slot."""
        first, lengths = len(self.rows), [len(j.prompt) for j in jobs]
        J, T = len(jobs), max(lengths)
        idx = torch.zeros(J, T, dtype=torch.long)
        for i, job in enumerate(jobs):
            idx[i, : lengths[i]] = torch.as_tensor(job.prompt, dtype=torch.long)
        mask = None
        if min(lengths) != T:  # causal within each prompt, padding after it never read
            keys = torch.arange(T)
            mask = (keys[None, :] <= keys[:, None])[None] & (keys < torch.tensor(
                lengths)[:, None])[:, None, :]
            mask = (mask | torch.eye(T, dtype=torch.bool))[:, None].to(self.device)
        view = _PrefillView(self.cache, first, J)
        hidden = self.model.hidden_states(idx.to(self.device), cache=view, attn_mask=mask)
        last = hidden[torch.arange(J, device=self.device),
                      torch.tensor(lengths, device=self.device) - 1]
        logits = self.model.head_logits(last).float().contiguous()
        new = [_Sequence(job, 0, job.configs[0], self.tok, self.device, self.vocab)
               for job in jobs]
        self.rows.extend(new)
        picks = [(row, i) for i, row in enumerate(new)]
        for i, job in enumerate(jobs):
            for index in range(1, len(job.configs)):
                row = _Sequence(job, index, job.configs[index], self.tok, self.device,
                                self.vocab)
                self.cache.copy(first + i, len(self.rows), lengths[i])
                self.rows.append(row)
                picks.append((row, i))
        greedy = _argmax_rows(logits) if any(r.greedy for r, _ in picks) else None
        # every pick before any event, so a job that fails here has emitted nothing
        tokens = [greedy[i] if row.greedy else self._pick(row, logits[i: i + 1])
                  for row, i in picks]
        for (row, _), token in zip(picks, tokens):
            self._advance(row, token)

    def _pick(self, row: _Sequence, logits) -> int:
        scores = logits if row.plain else row.penalties(logits)
        return int(pick_tokens(scores, row.cfg, row.generator)[0])

    def _advance(self, row: _Sequence, token: int) -> None:
        """Takes ``token`` as the row's next one: counts it, streams its text, ends the row
        when it stops it."""
        row.count += 1
        row.token = token
        if not row.plain:
            row.penalties.add(torch.tensor([token], device=self.device))
        reason = None
        if token in row.stop_ids:
            reason = "stop"
        else:
            piece = row.stream.push(token)
            if row.stream.stopped:
                reason = "stop"
            if piece:
                if row.job.stream:
                    self._emit(row.job, Text(row.index, piece))
                else:
                    row.held.append(piece)
        if reason is None and (row.count >= row.cfg.max_new_tokens
                               or row.length >= self.block_size):
            reason = "length"
        if reason is not None:
            tail = row.stream.flush() if not row.stream.stopped else ""
            text = tail if row.job.stream else "".join(row.held) + tail
            if text:
                self._emit(row.job, Text(row.index, text))
            self._emit(row.job, Done(row.index, reason, row.count))
            row.job.remaining -= 1
            row.token = -1  # ended: freed before the next step

    def _step(self) -> None:
        # free the rows that ended or whose job went away, moving the last rows into their slots
        for i in range(len(self.rows) - 1, -1, -1):
            row = self.rows[i]
            if row.token < 0 or row.job.cancelled:
                last = len(self.rows) - 1
                if i != last:
                    self.cache.copy(last, i, self.rows[last].length)
                    self.rows[i] = self.rows[last]
                self.rows.pop()
        if not self.rows:
            return
        rows = list(self.rows)
        view = _StepView(self.cache, [r.length for r in rows])
        tokens = torch.tensor([r.token for r in rows], dtype=torch.long, device=self.device)
        hidden = self.model.hidden_states(tokens[:, None], cache=view,
                                          positions=view.pos[:, None], attn_mask=view.mask())
        logits = self.model.head_logits(hidden[:, -1]).float().contiguous()
        self.steps += 1
        greedy = _argmax_rows(logits) if any(r.greedy for r in rows) else None
        for i, row in enumerate(rows):
            row.length += 1
            self._advance(row, greedy[i] if row.greedy else self._pick(row, logits[i: i + 1]))
