"""gristmill: from raw web text to a trained GPT.

The byte-level work (BPE, cleaning, dedup, token shards) runs in a Rust core; the model,
training and sampling are PyTorch. Every stage is a function here and a ``gristmill``
sub-command.
"""

import os as _os

from gristmill import _core
from gristmill._core import FilterConfigError, TokenizerError
from gristmill.prep import InputFormatError, PrepConfig, prep, read_documents
from gristmill.tokenizer import Tokenizer, split_pieces

__version__ = "0.1.0"

# A rayon pool inherited through fork() has no threads behind it; tell the core.
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_core._mark_forked)

__all__ = [
    "FilterConfigError",
    "InputFormatError",
    "PrepConfig",
    "Tokenizer",
    "TokenizerError",
    "__version__",
    "prep",
    "read_documents",
    "split_pieces",
]
