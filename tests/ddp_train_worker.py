"""One rank of the 2-process DDP run in test_train.py (started there with torchrun)."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gristmill.train import train
from standin_shards import StandInShardDataset, byte_tokenizer

if __name__ == "__main__":
    # argv: text file, out_dir, then one JSON dict of train() keys per run (runs after the
    # first resume from the previous one's checkpoint).
    text_path, out_dir, chars = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    ds = StandInShardDataset.from_text(Path(text_path).read_text("utf-8")[:chars],
                                       byte_tokenizer())
    # One process group for all runs (train() uses it and leaves it open): creating a second
    # gloo group in the same process can hang on the rendezvous keys of the first.
    torch.distributed.init_process_group("gloo")
    for kwargs in sys.argv[4:]:
        train(dataset=ds, out_dir=out_dir, **json.loads(kwargs))
    torch.distributed.destroy_process_group()
