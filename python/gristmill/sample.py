"""Generation: KV-cached decoding, sampling filters, beam search (evaluation: gristmill.eval).

Read top to bottom: the settings, the logit processors (penalties, temperature, top-k, top-p,
min-p), the cached decoding loop shared by greedy and sampling, beam search, text helpers
(stop strings, streaming that never splits a UTF-8 character).

Batches of prompts of different lengths are left-padded; the padding is masked out of
attention and positions count from each prompt's first real token, so a batched prompt
decodes exactly as it would alone.

>>> model = load_model("runs/shakespeare")  # doctest: +SKIP
>>> sample_text(model, ["ROMEO:"], tokenizer=tok, max_new_tokens=20, seed=0)  # doctest: +SKIP
[' I will not be so...']
"""

from __future__ import annotations

import codecs
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Callable

import torch

from gristmill.checkpoint import load_model, tokenizer_for
from gristmill.defaults import SAMPLE
from gristmill.model import GPT, KVCache

# ---- settings --------------------------------------------------------------------------------


@dataclass
class SamplingConfig:
    """How to pick tokens. ``temperature=0`` is greedy; ``num_beams>1`` is beam search
    (deterministic; penalties apply, the sampling filters do not)."""

    max_new_tokens: int = SAMPLE["max_new_tokens"]
    temperature: float = SAMPLE["temperature"]
    top_k: int = SAMPLE["top_k"]  # keep exactly the k most likely tokens (0: off)
    top_p: float = SAMPLE["top_p"]  # nucleus: the smallest set holding this much probability
    min_p: float = SAMPLE["min_p"]  # drop tokens less likely than min_p x the top token's probability
    repetition_penalty: float = SAMPLE["repetition_penalty"]  # >1 discourages any token already in the context
    frequency_penalty: float = SAMPLE["frequency_penalty"]  # subtracted per earlier occurrence in the output
    presence_penalty: float = SAMPLE["presence_penalty"]  # subtracted once if the token occurs in the output
    num_beams: int = SAMPLE["num_beams"]
    length_penalty: float = SAMPLE["length_penalty"]  # beam scores are divided by length ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False or "never", as HF
    num_return_sequences: int = SAMPLE["num_return_sequences"]  # beams returned per prompt
    stop_tokens: Sequence[int] = ()  # besides end-of-text
    stop_strings: Sequence[str] = ()
    seed: int | None = SAMPLE["seed"]

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or not 0 <= self.min_p <= 1:
            raise ValueError("temperature must be >= 0, top_p in (0, 1], min_p in [0, 1]")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k must be >= 0 and repetition_penalty > 0")
        if self.num_beams < 1 or not 1 <= self.num_return_sequences <= self.num_beams:
            raise ValueError("need 1 <= num_return_sequences <= num_beams")
        if self.num_beams > 1 and self.stop_strings:
            raise ValueError("stop strings are not supported with beam search")


def _config(config: SamplingConfig | None, kwargs: dict) -> SamplingConfig:
    cfg = dataclasses.replace(config or SamplingConfig(), **kwargs)
    cfg.check()
    return cfg


# ---- logit processors ------------------------------------------------------------------------


class Penalties:
    """Repetition (HF's: over prompt and output) and frequency/presence (OpenAI's: over the
    output) penalties, tracked incrementally per row."""

    def __init__(self, cfg: SamplingConfig, prompts, batch: int, vocab: int, device):
        self.cfg = cfg
        self.seen = self.counts = None
        if cfg.repetition_penalty != 1.0:
            self.seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)
            for i, p in enumerate(prompts):
                self.seen[i, torch.as_tensor(p, dtype=torch.long, device=device)] = True
        if cfg.frequency_penalty or cfg.presence_penalty:
            self.counts = torch.zeros(batch, vocab, device=device)

    def __call__(self, scores):
        if self.seen is not None:
            p = self.cfg.repetition_penalty
            penalised = torch.where(scores < 0, scores * p, scores / p)
            scores = torch.where(self.seen, penalised, scores)
        if self.counts is not None:
            scores = scores - self.cfg.frequency_penalty * self.counts \
                - self.cfg.presence_penalty * (self.counts > 0).float()
        return scores

    def add(self, tokens):
        rows = torch.arange(len(tokens), device=tokens.device)
        if self.seen is not None:
            self.seen[rows, tokens] = True
        if self.counts is not None:
            self.counts[rows, tokens] += 1

    def reorder(self, index):
        if self.seen is not None:
            self.seen = self.seen[index]
        if self.counts is not None:
            self.counts = self.counts[index]




def filter_logits(scores, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """Temperature, then top-k, top-p and min-p; filtered tokens get -inf.

    Top-k keeps exactly ``k`` tokens (ties at the k-th value are not all kept); top-p always
    keeps the most likely token.
    """
    scores = scores / temperature
    if top_k and top_k < scores.shape[-1]:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep.scatter_(-1, scores.topk(top_k, dim=-1).indices, True)
        scores = scores.masked_fill(~keep, -math.inf)
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass ranked above each token
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, -math.inf)
    if min_p > 0.0:
        probs = scores.softmax(-1)
        scores = scores.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), -math.inf)
    return scores


def pick_tokens(scores, cfg: SamplingConfig, generator=None):
    """One token per row of ``scores`` (B, V) (penalties already applied): the argmax at
    temperature 0, else a draw from the filtered distribution with ``generator``."""
    if cfg.temperature == 0:
        return scores.argmax(-1)
    scores = filter_logits(scores, cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p)
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]


def seeded_generator(seed: int | None, device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (a random seed when None)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else
                          int(torch.randint(0, 2**62, ()).item()))
    return generator


# ---- prompts, padding and the KV cache -------------------------------------------------------


class _Batch:
    """Left-padded prompts run through the model once (prefill), with the state decoding needs:
    the cache, which cache slots are real tokens, and each row's next position."""

    def __init__(self, model: GPT, prompts: list[list[int]], max_new_tokens: int):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self.model = model
        device = next(model.parameters()).device
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        B, L = len(prompts), int(lengths.max())
        total = L + max_new_tokens
        if total > model.config.block_size:
            raise ValueError(f"prompt ({L} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"the model's block_size {model.config.block_size}")
        pad = L - lengths
        idx = torch.zeros(B, L, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            idx[i, L - len(p):] = torch.as_tensor(p, dtype=torch.long)
        self.padded = bool((pad > 0).any())
        dtype = next(model.parameters()).dtype
        self.cache = KVCache(model.config, B, total, device, dtype)
        self.valid = torch.zeros(B, total, dtype=torch.bool, device=device)
        self.valid[:, :L] = torch.arange(L, device=device) >= pad[:, None]
        self.next_pos = lengths.clone()
        positions = mask = None
        if self.padded:
            positions = (torch.arange(L, device=device) - pad[:, None]).clamp(min=0)
            causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
            # Pad rows attend to themselves only: no all-masked row (NaN), never read back.
            mask = (causal & self.valid[:, None, :L]) | torch.eye(L, dtype=torch.bool,
                                                                  device=device)
            mask = mask[:, None]
        self.logits = model(idx, cache=self.cache, positions=positions, attn_mask=mask,
                            last_only=True)[0][:, -1].float()

    def step(self, tokens):
        """Feeds one new token per row; sets ``self.logits`` to the next distribution."""
        n = self.cache.length
        self.valid[:, n] = True
        positions = mask = None
        if self.padded:
            positions, mask = self.next_pos[:, None], self.valid[:, None, None, : n + 1]
        self.logits = self.model(tokens[:, None], cache=self.cache, positions=positions,
                                 attn_mask=mask)[0][:, -1].float()
        self.next_pos += 1

    def reorder(self, index):
        self.cache.reorder(index)
        self.valid, self.next_pos, self.logits = (self.valid[index], self.next_pos[index],
                                                  self.logits[index])

    def repeat(self, n: int):
        self.cache.repeat_interleave(n)
        self.valid = self.valid.repeat_interleave(n, 0)
        self.next_pos = self.next_pos.repeat_interleave(n, 0)
        self.logits = self.logits.repeat_interleave(n, 0)


# ---- greedy and sampling ---------------------------------------------------------------------


class _StopStrings:
    """Per-row output bytes; a stop string is found even when it spans several tokens."""

    def __init__(self, stops: Sequence[str], token_bytes: Callable[[int], bytes], batch: int):
        self.stops = [s.encode("utf-8") for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.token_bytes, self.out = token_bytes, [bytearray() for _ in range(batch)]

    def add(self, row: int, token: int) -> bool:
        buf = self.out[row]
        start = max(0, len(buf) - self.longest + 1)
        buf += self.token_bytes(token)
        return any(s in buf[start:] for s in self.stops)


@torch.no_grad()
def generate_steps(model: GPT, prompts: list[list[int]], config: SamplingConfig | None = None,
                   *, eot_token: int | None = None, token_bytes=None, **kwargs
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Greedy or sampled decoding, one step at a time: yields ``(tokens, active)`` where
    ``tokens`` (B,) are this step's tokens and ``active`` (B,) says which rows were still
    generating (rows that stopped earlier get ``tokens`` of 0 and ``active`` False).

    Args:
        model: a :class:`GPT` in eval mode.
        prompts: token-id lists, any lengths.
        config: :class:`SamplingConfig`; ``kwargs`` replace its fields.
        eot_token: stops a row (as do ``stop_tokens``); it is yielded, then the row ends.
        token_bytes: ``id -> bytes``, needed for ``stop_strings``.
    """
    cfg = _config(config, kwargs)
    if cfg.num_beams > 1:
        raise ValueError("generate_steps does not do beam search; use beam_search")
    if cfg.stop_strings and token_bytes is None:
        raise ValueError("stop_strings need token_bytes (a tokenizer)")
    batch = _Batch(model, prompts, cfg.max_new_tokens)
    device = batch.logits.device
    B, V = batch.logits.shape
    stop_ids = torch.tensor(sorted({*cfg.stop_tokens, *([eot_token] if eot_token is not None
                                                          else [])}), device=device)
    penalties = Penalties(cfg, prompts, B, V, device)
    strings = _StopStrings(cfg.stop_strings, token_bytes, B) if cfg.stop_strings else None
    generator = seeded_generator(cfg.seed, device) if cfg.temperature > 0 else None
    active = torch.ones(B, dtype=torch.bool, device=device)
    for t in range(cfg.max_new_tokens):
        tokens = pick_tokens(penalties(batch.logits), cfg, generator)
        tokens = tokens.masked_fill(~active, 0)
        yield tokens, active.clone()
        penalties.add(tokens)
        stopped = torch.isin(tokens, stop_ids) if len(stop_ids) else torch.zeros_like(active)
        if strings is not None:
            for row in active.nonzero()[:, 0].tolist():
                stopped[row] |= strings.add(row, int(tokens[row]))
        active &= ~stopped
        if not active.any() or t == cfg.max_new_tokens - 1:
            return
        batch.step(tokens)


def generate(model: GPT, prompts, config: SamplingConfig | None = None, *,
             eot_token: int | None = None, token_bytes=None, **kwargs) -> list[list[int]]:
    """New tokens for each prompt (the stop token included when one ended the row).

    With ``num_beams > 1`` this is :func:`beam_search` (``num_return_sequences`` per prompt,
    best first). Prompts are lists of ids; a single list is one prompt.

    >>> model = GPT(GPTConfig.from_preset("tiny", vocab_size=100)).eval()  # doctest: +SKIP
    >>> generate(model, [[1, 2, 3]], temperature=0, max_new_tokens=4)  # doctest: +SKIP
    [[17, 17, 52, 9]]
    """
    prompts = [list(map(int, p)) for p in (prompts if prompts and not isinstance(prompts[0], int)
                                            else [prompts])]
    cfg = _config(config, kwargs)
    if cfg.num_beams > 1:
        return beam_search(model, prompts, cfg, eot_token=eot_token)
    out = [[] for _ in prompts]
    for tokens, active in generate_steps(model, prompts, cfg, eot_token=eot_token,
                                         token_bytes=token_bytes):
        for row in active.nonzero()[:, 0].tolist():
            out[row].append(int(tokens[row]))
    return out


# ---- beam search -----------------------------------------------------------------------------


@torch.no_grad()
def beam_search(model: GPT, prompts: list[list[int]], config: SamplingConfig | None = None,
                *, eot_token: int | None = None, **kwargs) -> list[list[int]]:
    """Beam search with HF ``generate``'s rules, so the outputs match it token for token.

    Each step ranks ``2 x num_beams`` candidates (more with several stop tokens) by total
    log-probability. A candidate that ends (stop token, or the length limit) among the top
    ``num_beams`` becomes a finished hypothesis scored ``sum_logprobs / length ** length_penalty``;
    the best ``num_beams`` unfinished ones carry on. A prompt is done when no running beam can
    beat its worst kept hypothesis (``early_stopping=False``: judged at the current length;
    ``"never"``: at the longest possible), or when it has ``num_beams`` hypotheses
    (``early_stopping=True``).

    Returns:
        ``num_return_sequences`` token lists per prompt, best first, prompt by prompt.
    """
    cfg = _config(config, kwargs)
    nb, T, lp = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty
    batch = _Batch(model, prompts, T)
    device = batch.logits.device
    B, V = batch.logits.shape
    stop_ids = torch.tensor(sorted({*cfg.stop_tokens, *([eot_token] if eot_token is not None
                                                          else [])}), device=device, dtype=torch.long)
    K = max(2, 1 + len(stop_ids)) * nb
    batch.repeat(nb)
    penalties = Penalties(cfg, [p for p in prompts for _ in range(nb)], B * nb, V, device)
    NEG = -1.0e9
    run_seq = torch.zeros(B, nb, T, dtype=torch.long, device=device)
    run_score = torch.full((B, nb), NEG, device=device)
    run_score[:, 0] = 0.0  # all beams start identical: expand only the first
    fin_seq = torch.zeros(B, nb, T, dtype=torch.long, device=device)
    fin_score = torch.full((B, nb), NEG, device=device)
    fin_len = torch.zeros(B, nb, dtype=torch.long, device=device)
    fin_done = torch.zeros(B, nb, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    in_top = (torch.arange(K, device=device) < nb)[None]
    batch_offset = (torch.arange(B, device=device) * nb)[:, None]
    for t in range(T):
        logp = penalties(batch.logits.log_softmax(-1)).view(B, nb, V) + run_score[..., None]
        cand_score, flat = logp.view(B, nb * V).topk(K, dim=-1)
        cand_beam, cand_tok = flat // V, flat % V
        cand_seq = run_seq.gather(1, cand_beam[..., None].expand(B, K, T)).clone()
        cand_seq[:, :, t] = cand_tok
        ends = torch.isin(cand_tok, stop_ids) if len(stop_ids) else cand_tok < 0
        ends = ends | (t == T - 1)
        # finished hypotheses: keep the best nb of old and new
        new_fin = ends & in_top
        score = cand_score / ((t + 1) ** lp)
        full = fin_done.all(-1, keepdim=True) & (cfg.early_stopping is True)
        score = score + NEG * (~new_fin | full | ~improvable).float()
        merged = torch.cat([fin_score, score], 1).topk(nb, dim=-1).indices
        fin_seq = torch.cat([fin_seq, cand_seq], 1).gather(1, merged[..., None].expand(B, nb, T))
        fin_score = torch.cat([fin_score, score], 1).gather(1, merged)
        fin_len = torch.cat([fin_len, torch.full_like(cand_tok, t + 1)], 1).gather(1, merged)
        fin_done = torch.cat([fin_done, new_fin], 1).gather(1, merged)
        # running beams: the best nb candidates that did not end
        keep_score = cand_score + NEG * ends.float()
        keep = keep_score.topk(nb, dim=-1).indices
        run_seq = cand_seq.gather(1, keep[..., None].expand(B, nb, T))
        run_score = keep_score.gather(1, keep)
        # can a running beam still beat the worst kept hypothesis?
        length = T if cfg.early_stopping == "never" and lp > 0 else t + 1
        best_running = run_score[:, :1] / (length ** lp)
        worst_kept = torch.where(fin_done, fin_score.min(-1, keepdim=True).values, NEG)
        improvable &= (best_running > worst_kept).any(-1, keepdim=True)
        open_beams = not (bool(fin_done.all()) and cfg.early_stopping is True)
        if not (improvable.any() and open_beams and not ends.all()) or t == T - 1:
            break
        source = (cand_beam.gather(1, keep) + batch_offset).view(-1)
        batch.reorder(source)
        penalties.reorder(source)
        tokens = run_seq[:, :, t].reshape(-1)
        penalties.add(tokens)
        batch.step(tokens)
    return [fin_seq[b, i, : fin_len[b, i]].tolist() for b in range(B)
            for i in range(cfg.num_return_sequences)]


# ---- text in, text out -----------------------------------------------------------------------


def prepare_model(model_or_path, tokenizer=None, device=None, dtype=None, required=True):
    """``(model in eval mode, tokenizer)`` from a :class:`GPT` or a path (checkpoint, training
    ``out_dir``, HF folder), moved to ``device``/``dtype`` when given; the tokenizer as
    :func:`tokenizer_for` finds it (None when not ``required`` and none is found)."""
    path = None
    if isinstance(model_or_path, GPT):
        model = model_or_path
    else:
        path = model_or_path
        model = load_model(path)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval(), tokenizer_for(path, model, tokenizer, required)


def _cut_at_stop(data: bytes, stops: Sequence[str]) -> bytes:
    cuts = [data.find(s.encode("utf-8")) for s in stops if s]
    cuts = [c for c in cuts if c >= 0]
    return data[: min(cuts)] if cuts else data


def sample_text(model_or_path, prompts: Sequence[str], tokenizer=None, *, device=None,
                dtype=None, **kwargs) -> list[str]:
    """Completions (without the prompt, the end-of-text token or the stop string) for each
    prompt; ``kwargs`` are :class:`SamplingConfig` fields.

    Args:
        model_or_path: a :class:`GPT`, a checkpoint, a training ``out_dir`` or a HF directory.
        prompts: prompt texts (special tokens are encoded as such).
        tokenizer: a Tokenizer, name or directory (default: see :func:`tokenizer_for`).

    >>> sample_text("runs/shakespeare", ["ROMEO:"], max_new_tokens=30, seed=1)  # doctest: +SKIP
    """
    model, tok = prepare_model(model_or_path, tokenizer, device, dtype)
    cfg = _config(None, kwargs)
    ids = [tok.encode(p, allowed_special="all") or [tok.eot_token] for p in prompts]
    outs = generate(model, ids, cfg, eot_token=tok.eot_token,
                    token_bytes=tok.decode_single_token_bytes)
    stops = {tok.eot_token, *cfg.stop_tokens}
    texts = []
    for out in outs:
        if out and out[-1] in stops:
            out = out[:-1]
        texts.append(_cut_at_stop(tok.decode_bytes(out), cfg.stop_strings)
                     .decode("utf-8", errors="replace"))
    return texts


class TextStream:
    """Turns tokens into printable text as they come: bytes of a character split across tokens
    wait for the rest, and text that could begin a stop string waits until it cannot."""

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()):
        self.tok = tokenizer
        self.stops = [s.encode("utf-8") for s in stop_strings if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = b""
        self.stopped = False  # a stop string was seen: nothing more is printed

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.pending += self.tok.decode_single_token_bytes(token)
        for s in self.stops:
            if s in self.pending:
                self.pending = self.pending[: self.pending.index(s)]
                text = self.flush()
                self.stopped = True
                return text
        ready = len(self.pending) - self._partial_stop()
        if ready <= 0:
            return ""
        out, self.pending = self.pending[:ready], self.pending[ready:]
        return self.decoder.decode(out)

    def _partial_stop(self) -> int:
        """How many bytes at the end of the pending text begin a stop string: only those
        wait for the next token."""
        for k in range(min(self.hold, len(self.pending)), 0, -1):
            if any(s.startswith(self.pending[-k:]) for s in self.stops):
                return k
        return 0

    def flush(self) -> str:
        out, self.pending = self.pending, b""
        return self.decoder.decode(out, final=True)


def stream_text(model_or_path, prompt: str, tokenizer=None, *, device=None, dtype=None,
                **kwargs) -> Iterator[str]:
    """Yields the completion of one prompt piece by piece, as it is generated."""
    model, tok = prepare_model(model_or_path, tokenizer, device, dtype)
    cfg = _config(None, kwargs)
    stream = TextStream(tok, cfg.stop_strings)
    stops = {tok.eot_token, *cfg.stop_tokens}
    ids = [tok.encode(prompt, allowed_special="all") or [tok.eot_token]]
    for tokens, _ in generate_steps(model, ids, cfg, eot_token=tok.eot_token,
                                    token_bytes=tok.decode_single_token_bytes):
        token = int(tokens[0])
        if token in stops:
            break
        piece = stream.push(token)
        if piece:
            yield piece
    tail = stream.flush()
    if tail:
        yield tail
