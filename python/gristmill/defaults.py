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
