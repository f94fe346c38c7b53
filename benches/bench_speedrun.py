"""Time to a validation loss: gristmill's ``modern`` recipe vs a nanoGPT-style reference loop.

Both train a model of the same shape (layers, width, heads; the blocks' parameter counts are
equal) on the same tokens, batches and validation windows, from ``../shared/data/bench-en.jsonl.zst``
encoded with an 8192-token BPE tokenizer trained here on the training documents (a small
vocabulary keeps the embedding from dominating a CPU-sized model). The reference is nanoGPT's
recipe written out (``RefGPT`` of bench_train_step.py with nanoGPT's initialisation, AdamW,
warmup + cosine, gradient clipping); gristmill is its real training loop
(``gristmill.train.train(recipe="modern")``: rotary, RMSNorm, QK-norm, ReLU², zero-initialised
projections, no biases, Muon; ``--set key=value`` changes one, for ablations). Both evaluate the same validation windows every
``--eval-every`` steps; evaluation time is not training time. The figure is the training wall
time at the first evaluation at or below ``--target``, the ratio reference / gristmill; the
PNG shows both validation curves against training time.

    python benches/bench_speedrun.py [--size small|full] [--device cpu|cuda] [--compile]

cpu full (the default): 4 layers x 128 wide, T=128, batch 16, one torch thread (the machine is
shared: one thread per run is steadier than two); about 5-7 minutes in all.
cuda full: 8 layers x 512, T=512, batch 32, bf16 autocast (--compile for torch.compile);
a couple of minutes on an H100-class GPU. small: a smoke run of a few steps (CI; either device).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np
import torch
from bench_train_step import RefGPT
from common import load_corpus, parser, report
from gristmill.model import GPTConfig
from gristmill.tokenizer import Tokenizer
from gristmill.train import train
from torch import nn

# ---- settings per device and size ---------------------------------------------------------------

SETTINGS = {
    # model shape, batch, the step budgets (reference, gristmill), evaluation, learning rates
    ("cpu", "full"): {"n_layer": 4, "n_head": 4, "n_embd": 128, "T": 128, "B": 16,
                      "ref_steps": 100, "steps": 60, "eval_every": 5, "eval_batches": 4,
                      "warmup": 10, "corpus_mb": 8, "threads": 1},
    ("cuda", "full"): {"n_layer": 8, "n_head": 8, "n_embd": 512, "T": 512, "B": 32,
                       "ref_steps": 600, "steps": 400, "eval_every": 25, "eval_batches": 8,
                       "warmup": 30, "corpus_mb": None, "threads": None},
    ("cpu", "small"): {"n_layer": 2, "n_head": 2, "n_embd": 64, "T": 64, "B": 8,
                       "ref_steps": 12, "steps": 8, "eval_every": 4, "eval_batches": 2,
                       "warmup": 2, "corpus_mb": 1, "threads": 1},
}
SETTINGS[("cuda", "small")] = {**SETTINGS[("cuda", "full")], "ref_steps": 60, "steps": 40,
                               "eval_every": 20, "corpus_mb": 4}
VOCAB = 8192
# nanoGPT's small-model settings (config/train_shakespeare_char.py, without dropout): AdamW at
# 1e-3 to 1e-4 with beta2 0.99; gristmill's modern recipe: Muon at muon_lr for the blocks'
# matrices, AdamW at lr for the embeddings, head and gains.
REF_LR = {"lr": 1e-3, "min_lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.1}
MODERN_LR = {"lr": 3e-3, "min_lr": 3e-4, "muon_lr": 0.02, "beta1": 0.9, "beta2": 0.99,
             "weight_decay": 0.1}


# ---- the tokens, behind the ShardDataset interface -------------------------------------------


class Clock:
    """Wall and CPU time at each batch either loop fetches: a training step runs from its
    batch to the next fetch (the next step's batch, or the first batch of an evaluation)."""

    def __init__(self):
        self.events: list[tuple[str, float, float]] = []

    def mark(self, kind: str) -> None:
        self.events.append((kind, time.perf_counter(), time.process_time()))

    def step_times(self) -> list[tuple[float, float]]:
        """(wall, cpu) seconds of each training step, in order."""
        out = []
        for (kind, wall, cpu), (_, wall2, cpu2) in zip(self.events, self.events[1:]):
            if kind == "train":
                out.append((wall2 - wall, cpu2 - cpu))
        return out


class Tokens:
    """Train and val token arrays as the training loop reads shards: random windows for
    training (seeded), consecutive windows from the start for validation."""

    def __init__(self, train_tokens, val_tokens, tokenizer, clock: Clock):
        self.splits = {"train": train_tokens, "val": val_tokens}
        self.n_vocab, self.eot_token = tokenizer.n_vocab, tokenizer.eot_token
        self.tokenizer_fingerprint, self.dtype, self.clock = tokenizer.fingerprint, np.uint16, clock

    def num_tokens(self, split="train"):
        return len(self.splits[split])

    def check_tokenizer(self, tokenizer):
        pass

    def sampler(self, split="train", *, batch_size, seq_len, mode="random", seed=0, rank=0,
                world_size=1):
        return _Sampler(self.splits[split], batch_size, seq_len, mode, seed, self.clock, split)


class _Sampler:
    def __init__(self, tokens, B, T, mode, seed, clock, split):
        self.tokens, self.B, self.T, self.mode = tokens, B, T, mode
        self.rng, self.pos, self.clock, self.split = np.random.default_rng(seed), 0, clock, split

    def next_batch(self):
        self.clock.mark(self.split)
        if self.mode == "random":
            starts = self.rng.integers(0, len(self.tokens) - self.T - 1, self.B)
        else:
            starts = self.pos + self.T * np.arange(self.B)
            self.pos += self.T * self.B
        return np.stack([self.tokens[s: s + self.T + 1] for s in starts])

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, d):
        self.pos = d["pos"]


def corpus_tokens(max_mb):
    """(tokenizer, train tokens, val tokens): the last 1/20 of the documents is validation;
    the tokenizer is trained on the rest."""
    texts = load_corpus(None if max_mb is None else max_mb * 1_000_000)
    n_val = max(1, len(texts) // 20)
    tok = Tokenizer.train(texts[:-n_val], VOCAB, name=f"bench-{VOCAB}")
    train_toks, _ = tok.encode_batch_to_numpy(texts[:-n_val], append_eot=True)
    val_toks, _ = tok.encode_batch_to_numpy(texts[-n_val:], append_eot=True)
    return tok, train_toks, val_toks


# ---- the reference: nanoGPT's recipe -------------------------------------------------------


def nanogpt_init(model: nn.Module, n_layer: int) -> None:
    """nanoGPT's ``_init_weights`` and its scaled init of the residual projections."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.endswith(("proj.weight", "out.weight")):  # attn c_proj, mlp c_proj
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))


def nanogpt_lr(it, lr, min_lr, warmup, decay_iters):
    """nanoGPT's ``get_lr``: linear warmup, cosine decay to ``min_lr``."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def run_reference(cfg: GPTConfig, ds: Tokens, s: dict, device, use_compile) -> dict:
    torch.manual_seed(1337)
    model = RefGPT(cfg).to(device)
    nanogpt_init(model, cfg.n_layer)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": REF_LR["weight_decay"]},
                             {"params": other, "weight_decay": 0.0}], lr=REF_LR["lr"],
                            betas=REF_LR["betas"],
                            **({"fused": True} if device.type == "cuda" else {}))
    step_fn = torch.compile(model) if use_compile else model
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else torch.autocast("cpu", enabled=False))
    B, T, steps = s["B"], s["T"], s["ref_steps"]
    train_sampler = ds.sampler("train", batch_size=B, seq_len=T, seed=1337)
    vals = []

    def batch(sampler):
        t = torch.from_numpy(sampler.next_batch().astype(np.int64)).to(device)
        return t[:, :-1], t[:, 1:]

    for it in range(steps):
        for g in opt.param_groups:
            g["lr"] = nanogpt_lr(it, REF_LR["lr"], REF_LR["min_lr"], s["warmup"], steps)
        x, y = batch(train_sampler)
        with ctx:
            loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the per-step sync gristmill's log makes
        if (it + 1) % s["eval_every"] == 0 or it + 1 == steps:
            model.eval()
            val = ds.sampler("val", batch_size=B, seq_len=T, mode="sequential")
            with torch.no_grad(), ctx:
                losses = [float(step_fn(*batch(val))) for _ in range(s["eval_batches"])]
            model.train()
            vals.append((it + 1, sum(losses) / len(losses)))
    ds.clock.mark("end")
    return {"params": sum(p.numel() for p in model.parameters()), "vals": vals}


def run_gristmill(cfg: GPTConfig, ds: Tokens, s: dict, device, use_compile,
                  changes: dict) -> dict:
    with tempfile.TemporaryDirectory() as out:
        train(dataset=ds, out_dir=out, model="mini", recipe="modern", vocab_multiple=64,
              n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=s["T"],
              batch_size=s["B"], seq_len=s["T"], max_steps=s["steps"], warmup_steps=s["warmup"],
              eval_interval=s["eval_every"], eval_batches=s["eval_batches"], keep_last=1,
              progress=False, plot=False, compile=use_compile, device=str(device),
              seed=1337, **{**MODERN_LR, **changes})
        log = [json.loads(line) for line in Path(out, "log.jsonl").read_text().splitlines()]
        from gristmill.checkpoint import load_model

        params = sum(p.numel() for p in load_model(out, "latest").parameters())
    ds.clock.mark("end")
    vals = [(r["step"], r["val_loss"]) for r in log if r.get("val_loss") is not None]
    return {"params": params, "vals": vals}


# ---- figures -----------------------------------------------------------------------------------


def curve(result: dict, times: list[tuple[float, float]]) -> list[dict]:
    """Validation loss against cumulative training wall and CPU seconds."""
    wall = np.cumsum([w for w, _ in times])
    cpu = np.cumsum([c for _, c in times])
    return [{"step": step, "val_loss": v, "wall_s": float(wall[step - 1]),
             "cpu_s": float(cpu[step - 1])} for step, v in result["vals"]]


def first_below(points: list[dict], target: float) -> dict | None:
    return next((p for p in points if p["val_loss"] <= target), None)


def plot(curves: dict, target: float, title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for name, points in curves.items():
        ax.plot([p["wall_s"] for p in points], [p["val_loss"] for p in points], "o-", ms=3,
                label=name)
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.2f}")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    FigureCanvasAgg(fig).print_png(str(tmp))
    os.replace(tmp, path)


def main() -> None:
    p = parser("speedrun", __doc__)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--target", type=float, default=None,
                   help="validation loss to reach (default: the reference's final loss + 0.02)")
    p.add_argument("--steps", type=int, default=None, help="gristmill's step budget")
    p.add_argument("--ref-steps", type=int, default=None, help="the reference's step budget")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a training key for gristmill's run (an ablation: --set qk_norm=false)")
    p.add_argument("--only", choices=["reference", "gristmill"], default=None,
                   help="one of the two runs (ablations and tuning against a --target)")
    p.add_argument("--ref-lr", type=float, default=None,
                   help=f"the reference's peak lr (default {REF_LR['lr']}; min_lr is a tenth)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device here")
        torch.set_float32_matmul_precision("high")
    s = dict(SETTINGS[(device.type, args.size)])
    s["steps"] = args.steps or s["steps"]
    s["ref_steps"] = args.ref_steps or s["ref_steps"]
    threads = args.threads or s["threads"]
    if threads:
        torch.set_num_threads(threads)

    t0 = time.perf_counter()
    tok, train_toks, val_toks = corpus_tokens(s["corpus_mb"])
    prep_s = time.perf_counter() - t0
    cfg = GPTConfig(block_size=s["T"], vocab_size=tok.n_vocab, n_layer=s["n_layer"],
                    n_head=s["n_head"], n_embd=s["n_embd"])
    changes = dict(kv.split("=", 1) for kv in args.set)
    ours = "gristmill recipe=modern" + "".join(f", {k}={v}" for k, v in changes.items())
    runs = {"nanoGPT-style reference": lambda: run_reference(cfg, ds, s, device, args.compile),
            ours: lambda: run_gristmill(cfg, ds, s, device, args.compile, changes)}
    if args.only:
        if args.target is None:
            p.error("--only needs --target")
        runs = {k: v for k, v in runs.items() if k.startswith(("nanoGPT", "gristmill")[
            args.only == "gristmill"])}
    if args.ref_lr:
        REF_LR.update(lr=args.ref_lr, min_lr=args.ref_lr / 10)
    results, curves = {}, {}
    for name, run in runs.items():
        clock = Clock()
        ds = Tokens(train_toks, val_toks, tok, clock)
        results[name] = run()
        curves[name] = curve(results[name], clock.step_times())
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref_name = list(results)[0]
    target = args.target if args.target is not None else \
        round(curves[ref_name][-1]["val_loss"] + 0.02, 2)
    rows = []
    for name, points in curves.items():
        hit = first_below(points, target)
        rows.append({"tool": name, "params": results[name]["params"],
                     "steps": results[name]["vals"][-1][0], "final val loss":
                     points[-1]["val_loss"], "step at target": hit and hit["step"],
                     "s to target": hit and hit["wall_s"], "CPU s to target": hit and hit["cpu_s"],
                     "s per step": points[-1]["wall_s"] / points[-1]["step"]})
    ref = rows[0]
    for r in rows:
        r["speedup"] = (f"{ref['s to target'] / r['s to target']:.2f}x"
                        if r["s to target"] and ref["s to target"] else "not reached")
    name = (torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), shared "
            "with other jobs)")
    shape = (f"{s['n_layer']}L x {s['n_embd']}d, {s['n_head']} heads, T={s['T']}, batch {s['B']}, "
             f"vocab {tok.n_vocab}")
    print(f"device: {name}; {shape}; {len(train_toks):,} train / {len(val_toks):,} val tokens "
          f"(tokenizer + encoding {prep_s:.0f} s); target val loss {target:.2f}\n")
    out_png = args.out.with_suffix(".png")
    plot(curves, target, f"time to val loss {target:.2f}; {shape}\n{name}", out_png)
    report("speedrun", rows, ["tool", "params", "steps", "final val loss", "step at target",
                              "s to target", "CPU s to target", "s per step", "speedup"],
           args.out, {"device": name, "shape": shape, "target": target, "settings": s,
                      "reference_lr": REF_LR, "modern_lr": MODERN_LR, "torch": torch.__version__,
                      "train_tokens": len(train_toks), "val_tokens": len(val_toks),
                      "curves": curves, "compile": args.compile, "plot": str(out_png)})
    print(f"plot: {out_png}")


if __name__ == "__main__":
    main()
