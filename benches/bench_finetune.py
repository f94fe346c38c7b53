"""Fine-tuning: ``gristmill finetune`` against the book's own code ("Build a Large Language
Model (From Scratch)", PyPI ``llms-from-scratch``: ch. 6 classification, ch. 7 instructions).

Both start from the same weights (a GPT made here with a fixed seed, copied into the book's
``GPTModel`` tensor by tensor, checked to give the same logits) and see the same data:

- classify: the SMS spam data balanced and split 70/10/20 once (here), the book's settings (the
  last block, the final norm and a new head trained; AdamW lr 5e-5, weight decay 0.1, batch 8,
  5 epochs, the same initial head). The book pads every text to the longest training text
  and reads the last position; gristmill groups texts by length and reads the last real token.
- instruct: ``instruction-data.json`` split 85/5/10 in order, every weight trained, loss on the
  whole example as the book's main chapter does (``--loss-on-prompt``), AdamW lr 5e-5, batch 8.
  The book's loop evaluates 5 batches at step 0 and prints a sample per epoch (as written).

Each contender runs in its own process (memory is that process's growth over its baseline
after imports, on CPU; ``torch.cuda.max_memory_allocated`` on CUDA). Reported per task: seconds
per epoch (the training loop only), test accuracy or the validation loss (for instruct both
models' val loss is computed by the book's ``calc_loss_loader`` on the book's val loader), peak
memory.

    python benches/bench_finetune.py [--size small|full] [--task classify|instruct|both]
        [--train-blocks N] [--threads N]

full: a 4-layer, 128-wide GPT with GPT-2's vocabulary (7.2M parameters); classify 5 epochs,
instruct 1 epoch on CPU (gpt2 124M and 2 epochs on CUDA); one torch thread per worker on CPU.
small: 2 layers, 64 wide, a few dozen steps (a smoke run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from common import SHARED_DATA, parser, report

HERE = Path(__file__).resolve()
SEED = 123  # the book's


# ---- memory ----------------------------------------------------------------------------------


def _rss_mb(field: str = "VmRSS") -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Memory:
    """Peak memory of what runs between start() and peak_mb(): CUDA's allocator peak, or on
    CPU the process's high-water RSS over its RSS at start()."""

    def __init__(self, device: str):
        self.device = device

    def start(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _rss_mb()

    def peak_mb(self) -> float | None:
        import torch

        if self.device.startswith("cuda"):
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        hwm = _rss_mb("VmHWM")
        return None if hwm is None or self.base is None else hwm - self.base


# ---- the same weights in both ----------------------------------------------------------------


def book_config(cfg) -> dict:
    return {"vocab_size": cfg.vocab_size, "context_length": cfg.block_size, "emb_dim": cfg.n_embd,
            "n_heads": cfg.n_head, "n_layers": cfg.n_layer, "drop_rate": 0.0, "qkv_bias": True}


def to_book(gpt, book_model) -> None:
    """Copies a gristmill GPT's weights into the book's GPTModel of the same shape."""
    import torch

    sd = gpt.state_dict()
    V, C = gpt.config.vocab_size, gpt.config.n_embd
    with torch.no_grad():
        book_model.tok_emb.weight.copy_(sd["transformer.wte.weight"][:V])
        book_model.pos_emb.weight.copy_(sd["transformer.wpe.weight"])
        for i, b in enumerate(book_model.trf_blocks):
            p = f"transformer.h.{i}."
            for name, part in zip(("W_query", "W_key", "W_value"), range(3)):
                lin = getattr(b.att, name)
                lin.weight.copy_(sd[p + "attn.c_attn.weight"][part * C:(part + 1) * C])
                lin.bias.copy_(sd[p + "attn.c_attn.bias"][part * C:(part + 1) * C])
            pairs = [(b.att.out_proj, "attn.c_proj"), (b.ff.layers[0], "mlp.c_fc"),
                     (b.ff.layers[2], "mlp.c_proj")]
            for lin, name in pairs:
                lin.weight.copy_(sd[p + name + ".weight"])
                lin.bias.copy_(sd[p + name + ".bias"])
            for norm, name in ((b.norm1, "ln_1"), (b.norm2, "ln_2")):
                norm.scale.copy_(sd[p + name + ".weight"])
                norm.shift.copy_(sd[p + name + ".bias"])
        book_model.final_norm.scale.copy_(sd["transformer.ln_f.weight"])
        book_model.final_norm.shift.copy_(sd["transformer.ln_f.bias"])
        book_model.out_head.weight.copy_(sd["transformer.wte.weight"][:V])


def book_model_of(path: Path):
    from gristmill.checkpoint import load_model
    from llms_from_scratch.ch04 import GPTModel

    gpt = load_model(path)
    model = GPTModel(book_config(gpt.config))
    to_book(gpt, model)
    return gpt, model


# ---- workers (one process each) --------------------------------------------------------------


def worker_gristmill(task: str, work: Path, device: str, epochs: int, blocks: int) -> dict:
    import torch
    from gristmill.finetune import finetune_classify, finetune_instruct

    torch.manual_seed(SEED)
    mem = Memory(device)
    mem.start()
    common = {"model": str(work / "init"), "out_dir": str(work / f"gm-{task}"), "epochs": epochs,
              "batch_size": 8, "lr": 5e-5, "weight_decay": 0.1, "seed": SEED, "progress": False,
              "plot": False, "device": device, "keep_last": 0}
    if task == "classify":
        r = finetune_classify(data=str(work / "train.tsv"), val_data=str(work / "val.tsv"),
                              test_data=str(work / "test.tsv"), text_field="1", label_field="0",
                              train_blocks=blocks, **common)
        peak = mem.peak_mb()
        out = {"test_accuracy": r["test"]["accuracy"], "val_accuracy": r["val"]["accuracy"]}
    else:
        r = finetune_instruct(data=str(work / "instruct-train.json"),
                              val_data=str(work / "instruct-val.json"), loss_on_prompt=True,
                              generate=False, **common)
        peak = mem.peak_mb()
        out = {"val_loss_gristmill": r["val_loss"]}
        # the book's own measure on the book's val loader, of the model gristmill trained
        _, book = book_model_of(Path(r["checkpoint"]))
        out["val_loss"] = _book_val_loss(book, work, device)
    return {**out, "s_per_epoch": sum(r["epoch_seconds"]) / len(r["epoch_seconds"]),
            "peak_mb": peak, "steps": r["steps"]}


def _book_val_loss(model, work: Path, device: str) -> float:
    from functools import partial

    import torch
    from gristmill.tokenizer import Tokenizer
    from llms_from_scratch.ch05 import calc_loss_loader
    from llms_from_scratch.ch07 import InstructionDataset, custom_collate_fn
    from torch.utils.data import DataLoader

    tok = Tokenizer.from_name("gpt2")
    val = json.loads((work / "instruct-val.json").read_text())
    collate = partial(custom_collate_fn, device=device, allowed_max_length=1024)
    loader = DataLoader(InstructionDataset(val, tok), batch_size=8, collate_fn=collate,
                        shuffle=False, drop_last=False)
    model.to(device).eval()
    with torch.no_grad():
        return calc_loss_loader(loader, model, device)


def worker_book(task: str, work: Path, device: str, epochs: int, blocks: int) -> dict:
    import contextlib
    import io
    from functools import partial

    import torch
    from gristmill.tokenizer import Tokenizer
    from llms_from_scratch import ch05, ch06, ch07
    from torch.utils.data import DataLoader

    mem = Memory(device)
    mem.start()
    tok = Tokenizer.from_name("gpt2")  # tiktoken's gpt2 ids, without a download
    _, model = book_model_of(work / "init")
    if task == "classify":
        # ch. 6, as the book runs it
        torch.manual_seed(SEED)
        num_classes = 2
        model.out_head = torch.nn.Linear(model.out_head.in_features, num_classes)
        if blocks >= 0:  # the book's default: the last block, the final norm and the head
            for p in model.parameters():
                p.requires_grad = False
            for part in (*model.trf_blocks[len(model.trf_blocks) - blocks:], model.final_norm,
                         model.out_head):
                for p in part.parameters():
                    p.requires_grad = True
        model.to(device)
        train_ds = ch06.SpamDataset(work / "train.csv", tok, max_length=None)
        val_ds = ch06.SpamDataset(work / "validation.csv", tok, max_length=train_ds.max_length)
        test_ds = ch06.SpamDataset(work / "test.csv", tok, max_length=train_ds.max_length)
        torch.manual_seed(SEED)
        train_loader = DataLoader(train_ds, batch_size=8, shuffle=True, num_workers=0,
                                  drop_last=True)
        val_loader = DataLoader(val_ds, batch_size=8, num_workers=0, drop_last=False)
        test_loader = DataLoader(test_ds, batch_size=8, num_workers=0, drop_last=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            ch06.train_classifier_simple(model, train_loader, val_loader, optimizer, device,
                                         num_epochs=epochs, eval_freq=50, eval_iter=5)
        seconds = time.perf_counter() - t0
        peak = mem.peak_mb()
        out = {"test_accuracy": ch06.calc_accuracy_loader(test_loader, model, device),
               "val_accuracy": ch06.calc_accuracy_loader(val_loader, model, device)}
    else:
        # ch. 7, as the book runs it (its loop evaluates 5 batches each eval_freq steps: once
        # here, at step 0, so that the figure is the loop's own time)
        model.to(device)
        train = json.loads((work / "instruct-train.json").read_text())
        val = json.loads((work / "instruct-val.json").read_text())
        collate = partial(ch07.custom_collate_fn, device=device, allowed_max_length=1024)
        torch.manual_seed(SEED)
        train_loader = DataLoader(ch07.InstructionDataset(train, tok), batch_size=8,
                                  collate_fn=collate, shuffle=True, drop_last=True)
        val_loader = DataLoader(ch07.InstructionDataset(val, tok), batch_size=8,
                                collate_fn=collate, shuffle=False, drop_last=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            ch05.train_model_simple(model, train_loader, val_loader, optimizer, device,
                                    num_epochs=epochs, eval_freq=10**9, eval_iter=5,
                                    start_context=ch07.format_input(val[0]), tokenizer=tok)
        seconds = time.perf_counter() - t0
        peak = mem.peak_mb()
        out = {"val_loss": _book_val_loss(model, work, device)}
    return {**out, "s_per_epoch": seconds / epochs, "peak_mb": peak}


# ---- preparing the data and the weights ------------------------------------------------------


def prepare(work: Path, size: str, device: str) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from gristmill.checkpoint import save_weights
    from gristmill.finetune_data import balance, read_labelled, split_indices
    from gristmill.model import GPT, GPTConfig
    from llms_from_scratch.ch04 import GPTModel

    shape = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 256} if size == "small" else \
        {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 256}
    if size == "full" and device.startswith("cuda"):
        shape = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024}  # gpt2 (124M)
    torch.manual_seed(SEED)
    gpt = GPT(GPTConfig(vocab_size=50257, **shape))
    (work / "init").mkdir()
    save_weights(gpt, work / "init" / "model.safetensors")
    book = GPTModel(book_config(gpt.config)).eval()
    to_book(gpt, book)
    x = torch.randint(0, 50257, (2, 16))
    diff = (book(x) - gpt.eval()(x)[0]).abs().max().item()
    assert diff < 1e-4, f"the weight mapping is wrong: logits differ by {diff}"
    # classify: balanced, split 70/10/20 once; one TSV each for gristmill, the book's CSVs
    rows = read_labelled(SHARED_DATA / "sms-spam-collection.tsv", "1", "0")
    rows = [rows[i] for i in balance([r.label for r in rows], SEED)]
    parts = split_indices(len(rows), (0.7, 0.1, 0.2), SEED)
    if size == "small":
        parts = tuple(p[:n] for p, n in zip(parts, (160, 40, 80)))
    for name, book_name, idx in zip(("train", "val", "test"), ("train", "validation", "test"),
                                    parts):
        chosen = [rows[i] for i in idx]
        (work / f"{name}.tsv").write_text("".join(f"{r.label}\t{r.text}\n" for r in chosen),
                                          "utf-8")
        pd.DataFrame({"Label": [int(r.label == "spam") for r in chosen],
                      "Text": [r.text for r in chosen]}).to_csv(work / f"{book_name}.csv",
                                                               index=None)
    # instruct: the book's in-order 85/5/10 split
    data = json.loads((SHARED_DATA / "instruction-data.json").read_text("utf-8"))
    n_train, n_test = int(len(data) * 0.85), int(len(data) * 0.1)
    train, val = data[:n_train], data[n_train + n_test:]
    if size == "small":
        train, val = train[:48], val[:16]
    (work / "instruct-train.json").write_text(json.dumps(train), "utf-8")
    (work / "instruct-val.json").write_text(json.dumps(val), "utf-8")
    return {"model": gpt.config.to_dict(), "params": gpt.num_params(),
            "classify_examples": [int(len(p)) for p in parts],
            "instruct_examples": [len(train), len(val)], "mapping_max_logit_diff": diff,
            "rows_after_balance": len(rows), "seed": SEED, "numpy": np.__version__}


def _run_worker(tool: str, task: str, work: Path, device: str, epochs: int, threads: int,
                blocks: int) -> dict:
    cmd = [sys.executable, str(HERE), "--worker", tool, "--task", task, "--work", str(work),
           "--device", device, "--epochs", str(epochs), "--threads", str(threads),
           "--train-blocks", str(blocks)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} {task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = parser("finetune", __doc__)
    p.add_argument("--task", choices=["classify", "instruct", "both"], default="both")
    p.add_argument("--device", default="auto")
    p.add_argument("--train-blocks", type=int, default=1,
                   help="classify: blocks trained with the final norm and the head (the book's "
                        "default 1; -1: every weight)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads of each worker (1: steady figures on a shared machine)")
    p.add_argument("--worker", choices=["gristmill", "book"], help=argparse_suppress())
    p.add_argument("--work", type=Path, help=argparse_suppress())
    p.add_argument("--epochs", type=int, default=None, help=argparse_suppress())
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    if args.worker:
        fn = worker_gristmill if args.worker == "gristmill" else worker_book
        print(json.dumps(fn(args.task, args.work, device, args.epochs, args.train_blocks)))
        return
    tasks = ["classify", "instruct"] if args.task == "both" else [args.task]
    rows, meta = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        meta = prepare(work, args.size, device)
        for task in tasks:
            epochs = {"classify": 5, "instruct": 2 if device.startswith("cuda") else 1}[task]
            if args.size == "small":
                epochs = 1
            # alternate the order between tasks: load drifting on a shared machine weighs alike
            order = ["book", "gristmill"] if task == "classify" else ["gristmill", "book"]
            got = {tool: _run_worker(tool, task, work, device, epochs, args.threads,
                                     args.train_blocks)
                   for tool in order}
            for tool in ("gristmill", "book"):
                g = got[tool]
                row = {"task": task if task == "instruct" or args.train_blocks == 1 else
                       f"classify, train_blocks {args.train_blocks}", "tool": "gristmill finetune" if tool == "gristmill"
                       else "book (llms-from-scratch)", "device": device, "epochs": epochs,
                       "s/epoch": g["s_per_epoch"], "peak MB": g["peak_mb"]}
                if task == "classify":
                    row["test acc %"] = 100 * g["test_accuracy"]
                    row["val acc %"] = 100 * g["val_accuracy"]
                else:
                    row["val loss"] = g["val_loss"]
                rows.append(row)
            g, b = got["gristmill"], got["book"]
            rows[-2]["speedup"] = f"{b['s_per_epoch'] / g['s_per_epoch']:.2f}x"
            if g["peak_mb"] and b["peak_mb"]:
                rows[-2]["memory vs book"] = f"{g['peak_mb'] / b['peak_mb']:.2f}x"
    print(f"model: {meta['model']['n_layer']} layers, {meta['model']['n_embd']} wide, "
          f"{meta['params'] / 1e6:.1f}M parameters, random weights (seed {SEED}); device {device}"
          f"\n")
    report("finetune", rows, ["task", "tool", "epochs", "s/epoch", "speedup", "test acc %",
                              "val acc %", "val loss", "peak MB", "memory vs book"], args.out,
           {**meta, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "train_blocks": args.train_blocks})


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
