"""gristmill: from raw web text to a trained GPT.

The byte-level work (BPE, cleaning, dedup, token shards) runs in a Rust core; the model,
training and sampling are PyTorch. Every stage is a function here and a ``gristmill``
sub-command.
"""

import os as _os

from gristmill import _core
from gristmill._core import FilterConfigError, TokenizerError
from gristmill.dedup import DedupConfig, DedupError, dedup
from gristmill.documents import Document, InputFormatError, read_documents
from gristmill.outputs import OutputFolderError
from gristmill.prep import PrepConfig, prep
from gristmill.shards import BatchSampler, ShardDataset, ShardFormatError, write_shards
from gristmill.tokenizer import Tokenizer, UnknownTokenError, split_pieces

__version__ = "0.1.0"

# A rayon pool inherited through fork() has no threads behind it; tell the core.
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_core._mark_forked)

# The model layer needs torch (the `train` extra). Its names load on first use, so that
# `import gristmill` never imports torch.
_LAZY = {
    "GPT": "gristmill.model",
    "GPTConfig": "gristmill.model",
    "load_model": "gristmill.checkpoint",
    "Classifier": "gristmill.finetune",
    "FinetuneConfig": "gristmill.config",
    "finetune_classify": "gristmill.finetune",
    "finetune_instruct": "gristmill.finetune",
    "CheckpointError": "gristmill.checkpoint",
    "LoraConfig": "gristmill.lora",
    "apply_lora": "gristmill.lora",
    "merge_lora": "gristmill.lora",
    "save_adapter": "gristmill.lora",
    "load_adapter": "gristmill.lora",
    "Chat": "gristmill.chat",
    "score_responses": "gristmill.judge",
    "TrainConfig": "gristmill.config",
    "SamplingConfig": "gristmill.sample",
    "generate": "gristmill.sample",
    "sample_text": "gristmill.sample",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gristmill' has no attribute {name!r}")


__all__ = [
    "GPT",
    "BatchSampler",
    "Chat",
    "CheckpointError",
    "Classifier",
    "DedupConfig",
    "DedupError",
    "Document",
    "FilterConfigError",
    "FinetuneConfig",
    "InputFormatError",
    "LoraConfig",
    "OutputFolderError",
    "PrepConfig",
    "GPTConfig",
    "SamplingConfig",
    "ShardDataset",
    "ShardFormatError",
    "Tokenizer",
    "TokenizerError",
    "TrainConfig",
    "UnknownTokenError",
    "__version__",
    "apply_lora",
    "dedup",
    "finetune_classify",
    "finetune_instruct",
    "generate",
    "load_adapter",
    "load_model",
    "merge_lora",
    "prep",
    "read_documents",
    "sample_text",
    "save_adapter",
    "score_responses",
    "split_pieces",
    "write_shards",
]
