"""Fine-tuning: ``gristmill finetune`` against the book's own code ("Build a Large Language
Model (From Scratch)", PyPI ``llms-from-scratch``: ch. 6 classification, ch. 7 instructions).

Both start from the same weights (a GPT made here with a fixed seed, copied into the book's
``GPTModel`` tensor by tensor, checked to give the same logits) and see the same data:

- classify: the SMS spam data balanced and split 70/10/20 once (here), the book's settings (the
  last block, the final norm and a new head trained; AdamW lr 5e-5, weight decay 0.1, batch 8,
  5 epochs, the same initial head). Both pad every text to the longest training text with
  end-of-text and read the last position (gristmill's default ``--pooling padded``); gristmill
  computes the three frozen blocks' output once per text (in epoch 1's time) and then runs
  only the last block. ``--pooling eot`` reads one appended end-of-text instead, with batches
  grouped by length.
- instruct: ``instruction-data.json`` split 85/5/10 in order, every weight trained, loss on the
  whole example as the book's main chapter does (``--loss-on-prompt``), AdamW lr 5e-5, batch 8.
  The book's loop evaluates 5 batches at step 0 and prints a sample per epoch (as written).

Each contender runs in its own process (memory is that process's growth over its baseline
after imports, on CPU; ``torch.cuda.max_memory_allocated`` on CUDA). Reported per task: seconds
per epoch (the training loop only), test accuracy or the validation loss (for instruct both
models' val loss is computed by the book's ``calc_loss_loader`` on the book's val loader), peak
memory.

    python benches/bench_finetune.py [--size small|full] [--task classify|instruct|both]
        [--train-blocks N] [--threads N] [--seeds K] [--pretrain-steps N] [--shape LxC]
        [--response-only] [--instruct-examples N] [--pooling padded|eot|last|mean]
        [--cache-mb N]

--pretrain-steps N starts both from a GPT that gristmill's ``train()`` pretrained N steps on the
bench corpus (cached in bench-results/finetune-cache): with random weights and one block
trained, accuracy swings by points with the batch order. --seeds K runs each tool K times
(seeds 123, 124, ...: the head's initial weights and the batch order; the two tools in turn)
and reports the mean and spread of the accuracies. --response-only: the loss on the response
only (gristmill's default; for the book, its ch. 7 exercise 7.2: the prompt's targets masked
with -100 in its collate, the head still run on every position). --shape 6x384 and
--instruct-examples 200 make a model whose blocks matter on a CPU-sized run. Besides wall
seconds per epoch, "loop CPU s/epoch" is the training loop's CPU time per epoch (each tool's
loop alone, as s/epoch) and "CPU s" each worker's CPU time for the whole job (data, training,
evaluation): both steadier than wall time on a shared machine.

full: a 4-layer, 128-wide GPT with GPT-2's vocabulary (7.2M parameters); classify 5 epochs,
instruct 1 epoch on CPU (gpt2 124M and 2 epochs on CUDA); one torch thread per worker on CPU.
small: 2 layers, 64 wide, a few dozen steps (a smoke run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, SHARED_DATA, load_corpus, parser, report

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


def worker_gristmill(task: str, work: Path, device: str, epochs: int, blocks: int, seed: int,
                     response_only: bool) -> dict:
    import torch
    from gristmill.finetune import finetune_classify, finetune_instruct

    pooling = {"pooling": os.environ["BENCH_POOLING"]} if os.environ.get("BENCH_POOLING") else {}
    if os.environ.get("BENCH_CACHE_MB"):
        pooling["cache_mb"] = int(os.environ["BENCH_CACHE_MB"])
    torch.manual_seed(seed)
    mem = Memory(device)
    mem.start()
    cpu0 = time.process_time()
    common = {"model": str(work / "init"), "out_dir": str(work / f"gm-{task}-{seed}"),
              "epochs": epochs, "batch_size": 8, "lr": 5e-5, "weight_decay": 0.1, "seed": seed,
              "progress": False,
              "plot": False, "device": device, "keep_last": 0}
    if task == "classify":
        r = finetune_classify(data=str(work / "train.tsv"), val_data=str(work / "val.tsv"),
                              test_data=str(work / "test.tsv"), text_field="1", label_field="0",
                              train_blocks=blocks, **pooling, **common)
        cpu = time.process_time() - cpu0
        peak = mem.peak_mb()
        out = {"test_accuracy": r["test"]["accuracy"], "val_accuracy": r["val"]["accuracy"]}
    else:
        r = finetune_instruct(data=str(work / "instruct-train.json"),
                              val_data=str(work / "instruct-val.json"),
                              loss_on_prompt=not response_only, generate=False, **common)
        cpu = time.process_time() - cpu0
        peak = mem.peak_mb()
        out = {"val_loss_gristmill": r["val_loss"]}
        # the book's own measure on the book's val loader, of the model gristmill trained
        _, book = book_model_of(Path(r["checkpoint"]))
        out["val_loss"] = _book_val_loss(book, work, device, response_only)
    return {**out, "s_per_epoch": sum(r["epoch_seconds"]) / len(r["epoch_seconds"]),
            "loop_cpu_s_per_epoch": sum(r["epoch_cpu_seconds"]) / len(r["epoch_cpu_seconds"]),
            "cpu_s": cpu, "peak_mb": peak, "steps": r["steps"]}


def _book_val_loss(model, work: Path, device: str, response_only: bool) -> float:
    from functools import partial

    import torch
    from gristmill.tokenizer import Tokenizer
    from llms_from_scratch.ch05 import calc_loss_loader
    from llms_from_scratch.ch07 import InstructionDataset, custom_collate_fn
    from torch.utils.data import DataLoader

    tok = Tokenizer.from_name("gpt2")
    val = json.loads((work / "instruct-val.json").read_text())
    if response_only:
        loader = DataLoader(PromptMasked(val, tok), batch_size=8, collate_fn=partial(
            masked_collate, device=device), shuffle=False, drop_last=False)
    else:
        collate = partial(custom_collate_fn, device=device, allowed_max_length=1024)
        loader = DataLoader(InstructionDataset(val, tok), batch_size=8, collate_fn=collate,
                            shuffle=False, drop_last=False)
    model.to(device).eval()
    with torch.no_grad():
        return calc_loss_loader(loader, model, device)


class PromptMasked:
    """The book's ``InstructionDataset`` with the prompt's length kept, for its ch. 7 exercise
    (loss on the response only): ``(token ids, prompt length)`` per example. The prompt ends
    with the "### Response:" header, as gristmill's does, so that both train on (and are
    measured on) the same targets: the output and its end-of-text."""

    def __init__(self, data, tok):
        from llms_from_scratch.ch07 import format_input

        self.items = []
        for entry in data:
            prompt = format_input(entry) + "\n\n### Response:\n"
            self.items.append((tok.encode(prompt + entry["output"]), len(tok.encode(prompt))))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def masked_collate(batch, pad_token_id=50256, ignore_index=-100, device="cpu"):
    """The book's ``custom_collate_fn`` (pad to the batch's longest + 1 end-of-text, targets
    shifted by one, padding after the first end-of-text ignored) with the prompt's targets
    ignored too, as the exercise asks."""
    import torch

    longest = max(len(ids) + 1 for ids, _ in batch)
    xs, ys = [], []
    for ids, n_prompt in batch:
        padded = ids + [pad_token_id] * (longest - len(ids))
        x = torch.tensor(padded[:-1])
        y = torch.tensor(padded[1:])
        y[len(ids):] = ignore_index  # the first end-of-text (y[len - 1]) stays a target
        y[:n_prompt - 1] = ignore_index  # targets that are prompt tokens
        xs.append(x)
        ys.append(y)
    return torch.stack(xs).to(device), torch.stack(ys).to(device)


def worker_book(task: str, work: Path, device: str, epochs: int, blocks: int, seed: int,
                response_only: bool) -> dict:
    import contextlib
    import io
    from functools import partial

    import torch
    from gristmill.tokenizer import Tokenizer
    from llms_from_scratch import ch05, ch06, ch07
    from torch.utils.data import DataLoader

    mem = Memory(device)
    mem.start()
    cpu0 = time.process_time()
    tok = Tokenizer.from_name("gpt2")  # tiktoken's gpt2 ids, without a download
    _, model = book_model_of(work / "init")
    if task == "classify":
        # ch. 6, as the book runs it
        torch.manual_seed(seed)
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
        torch.manual_seed(seed)
        train_loader = DataLoader(train_ds, batch_size=8, shuffle=True, num_workers=0,
                                  drop_last=True)
        val_loader = DataLoader(val_ds, batch_size=8, num_workers=0, drop_last=False)
        test_loader = DataLoader(test_ds, batch_size=8, num_workers=0, drop_last=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
        t0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            ch06.train_classifier_simple(model, train_loader, val_loader, optimizer, device,
                                         num_epochs=epochs, eval_freq=50, eval_iter=5)
        seconds, loop_cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = mem.peak_mb()
        out = {"test_accuracy": ch06.calc_accuracy_loader(test_loader, model, device),
               "val_accuracy": ch06.calc_accuracy_loader(val_loader, model, device)}
        cpu = time.process_time() - cpu0
    else:
        # ch. 7, as the book runs it (its loop evaluates 5 batches each eval_freq steps: once
        # here, at step 0, so that the figure is the loop's own time)
        model.to(device)
        train = json.loads((work / "instruct-train.json").read_text())
        val = json.loads((work / "instruct-val.json").read_text())
        if response_only:
            train_ds = PromptMasked(train, tok)
            collate = partial(masked_collate, device=device)
        else:
            train_ds = ch07.InstructionDataset(train, tok)
            collate = partial(ch07.custom_collate_fn, device=device, allowed_max_length=1024)
        torch.manual_seed(seed)
        train_loader = DataLoader(train_ds, batch_size=8,
                                  collate_fn=collate, shuffle=True, drop_last=True)
        val_loader = DataLoader(type(train_ds)(val, tok), batch_size=8,
                                collate_fn=collate, shuffle=False, drop_last=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
        t0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            ch05.train_model_simple(model, train_loader, val_loader, optimizer, device,
                                    num_epochs=epochs, eval_freq=10**9, eval_iter=5,
                                    start_context=ch07.format_input(val[0]), tokenizer=tok)
        seconds, loop_cpu = time.perf_counter() - t0, time.process_time() - c0
        cpu = time.process_time() - cpu0
        peak = mem.peak_mb()
        out = {"val_loss": _book_val_loss(model, work, device, response_only)}
    return {**out, "s_per_epoch": seconds / epochs, "loop_cpu_s_per_epoch": loop_cpu / epochs,
            "cpu_s": cpu, "peak_mb": peak}


# ---- preparing the data and the weights ------------------------------------------------------


def pretrained(shape: dict, steps: int, device: str):
    """A GPT of ``shape`` pretrained ``steps`` steps by gristmill's ``train()`` on the first 4 MB
    of the bench corpus (GPT-2's tokenizer; batch 8 x 128, lr 1e-3), cached in
    bench-results/finetune-cache so that later runs start from the same weights."""
    import shutil

    import numpy as np
    from bench_speedrun import Clock, Tokens
    from gristmill.checkpoint import load_model
    from gristmill.tokenizer import Tokenizer
    from gristmill.train import train

    name = f"pretrained-{shape['n_layer']}x{shape['n_embd']}-{steps}"
    cache = ROOT / "bench-results" / "finetune-cache"
    final = cache / name
    if not (final / "done").exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=name + ".", dir=cache))
        tok = Tokenizer.from_name("gpt2")
        texts = load_corpus(4_000_000)
        n_val = max(1, len(texts) // 20)
        toks = [tok.encode_batch_to_numpy(t, append_eot=True)[0].astype(np.uint16)
                for t in (texts[:-n_val], texts[-n_val:])]
        print(f"pretraining {name} ({len(toks[0]):,} tokens)...", file=sys.stderr)
        train(dataset=Tokens(toks[0], toks[1], tok, Clock()), out_dir=str(tmp / "run"),
              vocab_multiple=1, n_layer=shape["n_layer"], n_head=shape["n_head"],
              n_embd=shape["n_embd"], block_size=shape["block_size"], batch_size=8,
              seq_len=128, max_steps=steps, warmup_steps=min(50, steps // 5), lr=1e-3,
              min_lr=1e-4, eval_interval=steps, eval_batches=4, keep_last=1, progress=False,
              plot=False, device=device, seed=SEED)
        (tmp / "done").write_text("")
        if final.exists():  # an unfinished earlier attempt (no "done"): set it aside
            shutil.move(str(final), str(tmp) + ".old")
        tmp.rename(final)
    return load_model(final / "run", "latest")


def prepare(work: Path, size: str, device: str, shape: dict | None = None,
            pretrain_steps: int = 0, instruct_examples: int | None = None) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from gristmill.checkpoint import save_weights
    from gristmill.finetune_data import balance, read_labelled, split_indices
    from gristmill.model import GPT, GPTConfig
    from llms_from_scratch.ch04 import GPTModel

    if shape is None:
        shape = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 256} \
            if size == "small" else {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 256}
        if size == "full" and device.startswith("cuda"):
            shape = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024}  # gpt2
    if pretrain_steps > 0:
        gpt = pretrained(shape, pretrain_steps, device).cpu()
    else:
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
    if instruct_examples:
        train, val = train[:instruct_examples], val[:max(8, instruct_examples // 8)]
    (work / "instruct-train.json").write_text(json.dumps(train), "utf-8")
    (work / "instruct-val.json").write_text(json.dumps(val), "utf-8")
    return {"model": gpt.config.to_dict(), "params": gpt.num_params(),
            "classify_examples": [int(len(p)) for p in parts],
            "instruct_examples": [len(train), len(val)], "mapping_max_logit_diff": diff,
            "rows_after_balance": len(rows), "seed": SEED, "numpy": np.__version__,
            "pretrain_steps": pretrain_steps}


def _run_worker(tool: str, task: str, work: Path, device: str, epochs: int, threads: int,
                blocks: int, seed: int, response_only: bool) -> dict:
    cmd = [sys.executable, str(HERE), "--worker", tool, "--task", task, "--work", str(work),
           "--device", device, "--epochs", str(epochs), "--threads", str(threads),
           "--train-blocks", str(blocks), "--seed", str(seed)]
    if response_only:
        cmd.append("--response-only")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} {task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mean_sd(values: list[float]) -> tuple[float, float]:
    import statistics

    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    p = parser("finetune", __doc__)
    p.add_argument("--task", choices=["classify", "instruct", "both"], default="both")
    p.add_argument("--device", default="auto")
    p.add_argument("--train-blocks", type=int, default=1,
                   help="classify: blocks trained with the final norm and the head (the book's "
                        "default 1; -1: every weight)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads of each worker (1: steady figures on a shared machine)")
    p.add_argument("--seeds", type=int, default=1,
                   help="runs per tool with seeds 123, 124, ... (head init and batch order); "
                        "the two tools run in turn")
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="start both from a GPT pretrained this many steps by gristmill's train() "
                        "(cached in bench-results/finetune-cache; 0: random weights)")
    p.add_argument("--shape", default=None,
                   help="LAYERSxWIDTH of the GPT (heads: width/64, at least 2), e.g. 6x384")
    p.add_argument("--response-only", action="store_true",
                   help="instruct: loss on the response only (the book's ch. 7 exercise 7.2, "
                        "gristmill's default) instead of every token")
    p.add_argument("--instruct-examples", type=int, default=None,
                   help="instruct: the first N training examples (val: N/8)")
    p.add_argument("--pooling", choices=["padded", "eot", "last", "mean"], default=None,
                   help="classify: gristmill's pooling (default: its own, padded, the book's)")
    p.add_argument("--cache-mb", type=int, default=None,
                   help="classify: gristmill's budget for the frozen blocks' outputs (0: none)")
    p.add_argument("--worker", choices=["gristmill", "book"], help=argparse_suppress())
    p.add_argument("--work", type=Path, help=argparse_suppress())
    p.add_argument("--epochs", type=int, default=None, help=argparse_suppress())
    p.add_argument("--seed", type=int, default=SEED, help=argparse_suppress())
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    if args.pooling:
        os.environ["BENCH_POOLING"] = args.pooling  # read by the gristmill worker
    if args.cache_mb is not None:
        os.environ["BENCH_CACHE_MB"] = str(args.cache_mb)
    if args.worker:
        fn = worker_gristmill if args.worker == "gristmill" else worker_book
        print(json.dumps(fn(args.task, args.work, device, args.epochs, args.train_blocks,
                            args.seed, args.response_only)))
        return
    if importlib.util.find_spec("llms_from_scratch") is None:
        # The whole bench is the comparison with the book's code; without it there is none.
        print("skipping: the book's code is not installed (pip install 'gristmill[bench]')")
        report("finetune", [], ["task", "tool"], args.out,
               {"skipped": "llms-from-scratch not installed"})
        return
    shape = None
    if args.shape:
        n_layer, n_embd = (int(v) for v in args.shape.lower().split("x"))
        shape = {"n_layer": n_layer, "n_embd": n_embd, "n_head": max(2, n_embd // 64),
                 "block_size": 256 if n_embd <= 256 else 1024}
    tasks = ["classify", "instruct"] if args.task == "both" else [args.task]
    rows, meta, runs = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        meta = prepare(work, args.size, device, shape, args.pretrain_steps,
                       args.instruct_examples)
        for task in tasks:
            epochs = {"classify": 5, "instruct": 2 if device.startswith("cuda") else 1}[task]
            if args.size == "small":
                epochs = 1
            got = {"gristmill": [], "book": []}
            for k in range(args.seeds):
                # alternate the order: load drifting on a shared machine weighs on both alike
                order = ["book", "gristmill"] if k % 2 == 0 else ["gristmill", "book"]
                for tool in order:
                    r = _run_worker(tool, task, work, device, epochs, args.threads,
                                    args.train_blocks, SEED + k, args.response_only)
                    got[tool].append(r)
                    print(f"{task} seed {SEED + k} {tool}: {json.dumps(r)}", file=sys.stderr)
            runs[task] = got
            label = task
            if task == "classify" and args.train_blocks != 1:
                label = f"classify, train_blocks {args.train_blocks}"
            if task == "classify" and args.pooling:
                label += f", gristmill pooling {args.pooling}"
            if task == "instruct":
                label = "instruct, " + ("response only" if args.response_only else "every token")
            for tool in ("gristmill", "book"):
                g = got[tool]
                row = {"task": label, "tool": "gristmill finetune" if tool == "gristmill"
                       else "book (llms-from-scratch)", "device": device, "epochs": epochs,
                       "seeds": len(g),
                       "s/epoch": sum(r["s_per_epoch"] for r in g) / len(g),
                       "loop CPU s/epoch": sum(r["loop_cpu_s_per_epoch"] for r in g) / len(g),
                       "CPU s": sum(r["cpu_s"] for r in g) / len(g),
                       "peak MB": max(r["peak_mb"] or 0 for r in g)}
                if task == "classify":
                    m, sd = _mean_sd([100 * r["test_accuracy"] for r in g])
                    row["test acc %"] = f"{m:.1f} ± {sd:.1f}" if len(g) > 1 else round(m, 1)
                    m, sd = _mean_sd([100 * r["val_accuracy"] for r in g])
                    row["val acc %"] = f"{m:.1f} ± {sd:.1f}" if len(g) > 1 else round(m, 1)
                else:
                    row["val loss"] = sum(r["val_loss"] for r in g) / len(g)
                rows.append(row)
            g, b = rows[-2], rows[-1]
            rows[-2]["speedup"] = f"{b['s/epoch'] / g['s/epoch']:.2f}x"
            rows[-2]["CPU ratio"] = f"{b['CPU s'] / g['CPU s']:.2f}x"
            rows[-2]["loop CPU ratio"] = f"{b['loop CPU s/epoch'] / g['loop CPU s/epoch']:.2f}x"
            if g["peak MB"] and b["peak MB"]:
                rows[-2]["memory vs book"] = f"{g['peak MB'] / b['peak MB']:.2f}x"
    weights = (f"pretrained {args.pretrain_steps} steps by gristmill train()"
               if args.pretrain_steps else f"random weights (seed {SEED})")
    print(f"model: {meta['model']['n_layer']} layers, {meta['model']['n_embd']} wide, "
          f"{meta['params'] / 1e6:.1f}M parameters, {weights}; device {device}; instruct "
          f"examples {meta['instruct_examples']}\n")
    report("finetune", rows, ["task", "tool", "seeds", "epochs", "s/epoch", "speedup",
                              "loop CPU s/epoch", "loop CPU ratio", "CPU s", "CPU ratio", "test acc %", "val acc %", "val loss", "peak MB",
                              "memory vs book"], args.out,
           {**meta, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "train_blocks": args.train_blocks, "response_only": args.response_only,
            "pooling": args.pooling or "padded (gristmill's default)",
            "cache_mb": args.cache_mb,
            "runs": runs})


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
