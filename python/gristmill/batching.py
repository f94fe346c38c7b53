"""Continuous batching: many requests decoded together, joining and leaving between steps.

One thread owns the model. Each step it admits waiting requests while there are free slots
(each prompt is prefilled alone, its keys and values copied into a free slot of the shared
cache), runs one decoding step for every active sequence at once, hands each sequence's new
text to its request, and frees the slots of sequences that ended (end-of-text, a stop string,
their token budget, a request that went away).

The cache (:class:`SlotCache`) holds ``max_batch`` sequences, each at its own length. Active
sequences occupy slots ``0..B-1``: a sequence that ends is replaced by the last one (one slot's
keys and values copied), so a step reads the cache as a view, never a gathered copy. Each
sequence's positions and its attention mask come from its own length, so a sequence decodes
the same tokens whatever else is in the batch (up to float rounding of batched matmuls).

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
from typing import Callable

import torch

from gristmill.defaults import SERVE
from gristmill.model import GPT, KVCache
from gristmill.sample import Penalties, SamplingConfig, TextStream, pick_tokens, seeded_generator

__all__ = ["BatchEngine", "Done", "Job", "QueueFull", "Text"]


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


@dataclass(eq=False)
class Job:
    """A request: one prompt, one :class:`SamplingConfig` per choice, and where events go.

    ``emit`` is called from the engine's thread with :class:`Text` and :class:`Done` events;
    set ``cancelled`` to drop the job's sequences before the next step.
    """

    prompt: list[int]
    configs: list[SamplingConfig]
    emit: Callable[[object], None]
    cancelled: bool = False
    remaining: int = field(default=0, init=False)


class SlotCache:
    """Keys and values for ``slots`` sequences of up to ``max_len`` positions, each with its
    own length (``lengths``). Zero-filled: masked positions hold no NaN that could leak
    through attention's weighted sum."""

    def __init__(self, model: GPT, slots: int, device, dtype):
        c = model.config
        shape = (c.n_layer, slots, c.n_head, c.block_size, c.n_embd // c.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)

    def load(self, slot: int, cache: KVCache, length: int) -> None:
        """Copies a one-sequence cache (a prefill) into ``slot``."""
        self.k[:, slot, :, :length] = cache.k[:, 0, :, :length]
        self.v[:, slot, :, :length] = cache.v[:, 0, :, :length]
        self.lengths[slot] = length

    def move(self, src: int, dst: int) -> None:
        n = int(self.lengths[src])
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n

    def step_view(self, batch: int) -> _StepView:
        return _StepView(self, batch)


class _StepView:
    """What the model's attention sees for one decoding step of slots ``0..B-1``: each
    sequence's new key/value is written at its own length; attention reads the first ``S``
    positions (``S`` the longest sequence's length + 1) under the caller's mask."""

    def __init__(self, cache: SlotCache, batch: int):
        self.cache, self.batch = cache, batch
        self.pos = cache.lengths[:batch].clone()
        self.span = int(self.pos.max()) + 1
        self.length = self.span - 1  # what GPT.forward checks against block_size
        self.rows = torch.arange(batch, device=self.pos.device)

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
        self.generator = seeded_generator(cfg.seed, device) if cfg.temperature > 0 else None
        self.stop_ids = {*cfg.stop_tokens, tokenizer.eot_token}
        self.count = 0
        self.token = 0  # the last token, fed at the next step


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

    def _emit(self, job: Job, event) -> None:
        try:
            job.emit(event)
        except Exception:  # a listener that went away must not stop the others
            job.cancelled = True

    def _admit(self) -> None:
        while True:
            with self.lock:
                while self.waiting and self.waiting[0].cancelled:
                    self.waiting.popleft()
                if not self.waiting or len(self.waiting[0].configs) > self.max_batch - len(
                        self.rows):
                    return
                job = self.waiting.popleft()
            try:
                self._prefill(job)
            except Exception as e:  # this job fails alone; the batch goes on
                traceback.print_exc()
                self.rows = [r for r in self.rows if r.job is not job]
                for index in range(len(job.configs)):
                    self._emit(job, Done(index, "error", 0, f"{type(e).__name__}: {e}"))

    def _prefill(self, job: Job) -> None:
        L = len(job.prompt)
        cache = KVCache(self.model.config, 1, L, self.device, self.dtype)
        idx = torch.tensor([job.prompt], dtype=torch.long, device=self.device)
        logits = self.model(idx, cache=cache, last_only=True)[0][:, -1].float()
        for index, cfg in enumerate(job.configs):
            row = _Sequence(job, index, cfg, self.tok, self.device, self.vocab)
            slot = len(self.rows)
            self.cache.load(slot, cache, L)
            self.rows.append(row)
            self._advance(row, self._pick(row, logits))

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
                self._emit(row.job, Text(row.index, piece))
        slot_length = int(self.cache.lengths[self.rows.index(row)]) if reason is None else 0
        if reason is None and (row.count >= row.cfg.max_new_tokens
                               or slot_length >= self.block_size):
            reason = "length"
        if reason is not None:
            tail = row.stream.flush() if not row.stream.stopped else ""
            if tail:
                self._emit(row.job, Text(row.index, tail))
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
                    self.cache.move(last, i)
                    self.rows[i] = self.rows[last]
                self.rows.pop()
        B = len(self.rows)
        if B == 0:
            return
        view = self.cache.step_view(B)
        tokens = torch.tensor([r.token for r in self.rows], dtype=torch.long, device=self.device)
        hidden = self.model.hidden_states(tokens[:, None], cache=view,
                                          positions=view.pos[:, None], attn_mask=view.mask())
        logits = self.model.head_logits(hidden[:, -1]).float()
        self.cache.lengths[:B] += 1
        self.steps += 1
        greedy = logits.argmax(-1).tolist()
        for i, row in enumerate(list(self.rows)):
            if row.cfg.temperature == 0 and row.plain:
                token = greedy[i]
            else:
                token = self._pick(row, logits[i: i + 1])
            self._advance(row, token)

