"""STAND-IN for ``gristmill.shards.ShardDataset`` used by the model/train/sample tests.

It implements exactly the contract the training loop relies on, over in-memory numpy token
arrays, so these tests do not depend on the shard writer. Swap in the real ShardDataset once
both are on main; nothing outside tests/ imports this.

Contract::

    ds.n_vocab, ds.eot_token, ds.tokenizer_fingerprint, ds.dtype; ds.num_tokens(split)
    ds.check_tokenizer(tokenizer)                    # raises if the fingerprint differs
    s = ds.sampler(split, batch_size, seq_len, mode="random"|"sequential", seed, rank, world_size)
    s.next_batch() -> numpy (B, T+1); s.state_dict() -> JSON-able dict; s.load_state_dict(d)
"""

from __future__ import annotations

import numpy as np


class StandInShardDataset:
    def __init__(self, splits: dict, n_vocab: int, eot_token: int, tokenizer_fingerprint: str = ""):
        self.dtype = np.uint16 if n_vocab <= 65536 else np.uint32
        self.splits = {k: np.asarray(v, dtype=self.dtype) for k, v in splits.items()}
        self.n_vocab, self.eot_token = n_vocab, eot_token
        self.tokenizer_fingerprint = tokenizer_fingerprint

    @classmethod
    def from_text(cls, text: str, tokenizer, val_fraction: float = 0.1) -> StandInShardDataset:
        ids = np.asarray(tokenizer.encode_ordinary(text) + [tokenizer.eot_token])
        n_val = int(len(ids) * val_fraction)
        return cls({"train": ids[:-n_val], "val": ids[-n_val:]}, tokenizer.n_vocab,
                   tokenizer.eot_token, tokenizer.fingerprint)

    def num_tokens(self, split: str = "train") -> int:
        return len(self.splits[split]) if split in self.splits else 0

    def check_tokenizer(self, tokenizer) -> None:
        if tokenizer.fingerprint != self.tokenizer_fingerprint:
            raise ValueError(f"tokenizer fingerprint {tokenizer.fingerprint[:12]} differs from "
                             f"the shards' {self.tokenizer_fingerprint[:12]}")

    def sampler(self, split="train", *, batch_size, seq_len, mode="random", seed=0, rank=0,
                world_size=1):
        if split not in self.splits:
            raise ValueError(f"no split {split!r}")
        return StandInSampler(self.splits[split], batch_size, seq_len, mode, seed, rank, world_size)


class StandInSampler:
    """Batch i of rank r: random rows from rng([seed, r, i]), or sequential rows
    ((i * world_size + r) * B + b) * T, wrapping around."""

    def __init__(self, tokens, batch_size, seq_len, mode, seed, rank, world_size):
        if mode not in ("random", "sequential"):
            raise ValueError(f"mode must be random or sequential, got {mode!r}")
        if len(tokens) < seq_len + 2:
            raise ValueError("split shorter than one sequence")
        self.tokens, self.B, self.T = tokens, batch_size, seq_len
        self.mode, self.seed, self.rank, self.world = mode, seed, rank, world_size
        self.i = 0

    def next_batch(self) -> np.ndarray:
        n_starts = len(self.tokens) - self.T - 1
        if self.mode == "random":
            starts = np.random.default_rng([self.seed, self.rank, self.i]).integers(0, n_starts,
                                                                                    self.B)
        else:
            rows = (self.i * self.world + self.rank) * self.B + np.arange(self.B)
            starts = (rows * self.T) % n_starts
        self.i += 1
        return np.stack([self.tokens[s: s + self.T + 1] for s in starts])

    def state_dict(self) -> dict:
        return {"i": self.i, "mode": self.mode, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, d: dict) -> None:
        self.i = int(d["i"])


# ---- wrappers over ANY dataset with the contract (they work with the real ShardDataset too) --


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


def byte_tokenizer():
    """256 single-byte tokens + <|endoftext|>: a tiny vocabulary keeps CPU training fast."""
    from gristmill import Tokenizer

    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)},
                                special_tokens={"<|endoftext|>": 256}, name="bytes")
