"""Each stage's default settings, in one place.

The CLI (its flags and ``--help``), the Python API (function and config defaults) and pipeline
files all read these, so a setting left out means the same everywhere. Prep, dedup and
training keep theirs in their config dataclasses (``PrepConfig``, ``DedupConfig``,
``TrainConfig``), which all three entry points build from. Nothing here imports torch.
"""

from __future__ import annotations

from types import MappingProxyType

#: ``gristmill tokenizer train`` / ``Tokenizer.train`` / a pipeline's ``[tokenizer]``.
TOKENIZER = MappingProxyType({
    "vocab_size": 32768,
    "pattern": "gpt2",
    "special_tokens": ("<|endoftext|>",),
    "min_frequency": 2,
    "text_field": "text",
})

#: ``gristmill tokenize`` / ``write_shards`` / a pipeline's ``[tokenize]``. No val split unless
#: asked for: every token trains, as in llm.c's and tiktoken's usual scripts.
TOKENIZE = MappingProxyType({
    "tokenizer": "gpt2",
    "shard_size": 100_000_000,
    "val_fraction": 0.0,
    "eot": "append",
    "text_field": "text",
    "txt_mode": "file",
})

#: ``gristmill sample`` / ``SamplingConfig`` / a pipeline's ``[sample]``: transformers'
#: ``generate`` defaults (plain sampling at temperature 1).
SAMPLE = MappingProxyType({
    "max_new_tokens": 128,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "num_beams": 1,
    "length_penalty": 1.0,
    "num_return_sequences": 1,
    "seed": None,
})

#: ``gristmill eval`` / ``gristmill.eval`` / a suite file's tasks and the training loop's
#: ``eval_tasks``. ``batch_tokens``: tokens fed to the model per forward pass when scoring
#: choices (contexts + endings; memory grows with it times the vocabulary).
EVAL = MappingProxyType({
    "batch_size": 8,
    "batch_tokens": 4096,
    "num_fewshot": 0,
    "metric": "acc_norm",
    "delimiter": " ",
    "seed": 1234,
})

#: ``gristmill serve`` / ``gristmill.serve.serve`` / ``BatchEngine``: sequences decoded together,
#: requests that may wait for a place before the server answers 503, where it listens.
SERVE = MappingProxyType({
    "host": "127.0.0.1",
    "port": 8000,
    "max_batch": 32,
    "max_queue": 64,
})

#: The GPT's shape when a setting is left out (GPT-2 124M's); ``model.GPTConfig`` and the
#: planner (which must not import torch) both read it.
MODEL = MappingProxyType({
    "block_size": 1024,
    "vocab_size": 50257,
    "n_layer": 12,
    "n_head": 12,
    "n_embd": 768,
    "bias": True,
    "vocab_multiple": 64,
})

#: Named model shapes (``GPTConfig.from_preset``, ``model = "..."`` in a training config).
MODEL_PRESETS = MappingProxyType({
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},  # 124M
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},  # 350M
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},  # 774M
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},  # 1558M
    # Small ones for tests and CPU experiments.
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 128},
    "mini": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 256},
})
