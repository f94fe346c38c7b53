"""Real shard datasets made from text, for the train, sample and checkpoint tests, and the
single-process references the training tests compare multi-process and accumulated runs with.

The tokenizer is byte-level, so the tiny models of those tests train in seconds on CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gristmill.shards import ShardDataset, write_shards


def byte_tokenizer():
    """256 single-byte tokens + <|endoftext|>: a tiny vocabulary keeps CPU training fast."""
    from gristmill import Tokenizer

    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)},
                                special_tokens={"<|endoftext|>": 256}, name="bytes")


def text_shards(text: str, out_dir: Path, tokenizer=None, *, val_fraction: float = 0.1,
                shard_size: int = 100_000_000) -> ShardDataset:
    """``text``'s paragraphs (split at blank lines) as the documents of a shard dataset written
    to ``out_dir`` with ``gristmill.write_shards``; ``val_fraction`` of them, spread evenly,
    form the val split. The tokenizer defaults to :func:`byte_tokenizer`."""
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    write_shards(paragraphs, out_dir, tokenizer or byte_tokenizer(), shard_size=shard_size,
                 val_fraction=val_fraction)
    return ShardDataset(out_dir)


# ---- references: wrappers over a dataset whose samplers stack other samplers' batches --------


class _Stacked:
    def __init__(self, samplers, calls_each):
        self.samplers, self.calls_each = samplers, calls_each

    def next_batch(self):
        return np.concatenate([s.next_batch() for s in self.samplers
                               for _ in range(self.calls_each)])

    def state_dict(self):
        return {"inner": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, d):
        for s, sd in zip(self.samplers, d["inner"]):
            s.load_state_dict(sd)


class _Wrapper:
    def __init__(self, ds, k):
        self.ds, self.k = ds, k

    def __getattr__(self, name):
        return getattr(self.ds, name)


class MergedRanks(_Wrapper):
    """One process with batch_size k*B sees, stacked, the batches k DDP ranks with batch_size
    B see: the single-process reference for a k-process run."""

    def sampler(self, split="train", *, batch_size, seq_len, mode="random", seed=0, rank=0,
                world_size=1):
        assert world_size == 1 and batch_size % self.k == 0
        return _Stacked([self.ds.sampler(split, batch_size=batch_size // self.k, seq_len=seq_len,
                                         mode=mode, seed=seed, rank=r, world_size=self.k)
                         for r in range(self.k)], 1)


class Accumulated(_Wrapper):
    """One batch of k*B rows is k consecutive batches of B: the reference for accumulation."""

    def sampler(self, split="train", *, batch_size, seq_len, mode="random", seed=0, rank=0,
                world_size=1):
        assert batch_size % self.k == 0
        return _Stacked([self.ds.sampler(split, batch_size=batch_size // self.k, seq_len=seq_len,
                                         mode=mode, seed=seed, rank=rank,
                                         world_size=world_size)], self.k)
