"""One rank of the 2-process DDP run in test_train.py (started there with torchrun)."""

import json
import sys

import torch
from gristmill.train import train

if __name__ == "__main__":
    # argv: shard dataset, out_dir, then one JSON dict of train() keys per run (runs after the
    # first resume from the previous one's checkpoint).
    data, out_dir = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    # One process group for all runs (train() uses it and leaves it open): creating a second
    # gloo group in the same process can hang on the rendezvous keys of the first.
    torch.distributed.init_process_group("gloo")
    for kwargs in sys.argv[3:]:
        train(data=data, out_dir=out_dir, **json.loads(kwargs))
    torch.distributed.destroy_process_group()
