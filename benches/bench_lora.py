"""LoRA fine-tuning: gristmill's LoRA on its GPT vs peft's on transformers' GPT2LMHeadModel.

The same GPT-2 weights (random, built with transformers, imported into gristmill), the same
LoRA settings (rank 8, alpha 16, attention c_attn + c_proj by default), the same initial
adapters (peft's, saved by peft and loaded with ``gristmill.lora.load_adapter``), the same
batches of real text (tinyshakespeare, GPT-2 tokens) and the same AdamW, stepped in turn so
both see the same moments of a shared machine. Reports trainable parameters (they must be
equal), time per step (median after warm-up), tokens/s, peak GPU memory, and the largest
difference between the two loss curves. CPU in float32; on a GPU both use bf16 autocast.

    python benches/bench_lora.py [--size small|full] [--targets attn,mlp] [--steps N]

full: GPT-2 124M shape, B=8 T=256 on a GPU (B=2 T=128, 6 layers on CPU), 40 steps.
small: 2 layers, 64 wide (a smoke run), 6 steps.

``run(size, ...)`` returns the rows, for benches/bench_finetune.py to include.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np
import peft
import torch
import torch.nn.functional as F
import transformers
from common import SHARED_DATA, parser, report
from gristmill.checkpoint import from_hf
from gristmill.lora import TARGETS, LoraConfig, apply_lora, load_adapter
from gristmill.model import GPT
from gristmill.tokenizer import Tokenizer

COLUMNS = ["tool", "trainable params", "ms/step", "tokens/s", "vs peft", "peak MiB",
           "first loss", "last loss", "max |loss diff|"]


def _shape(size: str, cuda: bool) -> tuple[dict, int, int, int]:
    """(GPT2Config fields, batch, seq_len, steps)."""
    if size == "small":
        return {"n_layer": 2, "n_head": 2, "n_embd": 64}, 2, 64, 6
    if cuda:
        return {}, 8, 256, 40
    return {"n_layer": 6, "n_head": 6, "n_embd": 384}, 2, 128, 40


def _batches(n: int, batch: int, seq_len: int) -> list[torch.Tensor]:
    tok = Tokenizer.from_name("gpt2")
    text = (SHARED_DATA / "tinyshakespeare.txt").read_text("utf-8")
    ids = np.asarray(tok.encode_ordinary(text), dtype=np.int64)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        starts = rng.integers(0, len(ids) - seq_len - 1, batch)
        out.append(torch.from_numpy(np.stack([ids[s: s + seq_len + 1] for s in starts])))
    return out


def run(size: str = "full", targets: str = "attn", rank: int = 8, alpha: float = 16,
        steps: int | None = None, lr: float = 1e-3) -> tuple[list[dict], dict]:
    """Both trainings; returns (rows, meta)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    shape, batch, seq_len, default_steps = _shape(size, cuda)
    steps = steps or default_steps
    lora = LoraConfig(rank=rank, alpha=alpha, targets=targets)
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    modules = [m for t in lora.targets for m in (TARGETS[t] or ("lm_head",))]
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: fan_in_fan_out on lm_head, tied embeddings
        transformers.GPT2LMHeadModel(hf_cfg).save_pretrained(d)
        theirs = peft.get_peft_model(
            transformers.GPT2LMHeadModel.from_pretrained(d),
            peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=modules,
                            fan_in_fan_out=True))
        theirs.save_pretrained(f"{d}/adapter")
        ours = from_hf(d)
        load_adapter(ours, f"{d}/adapter")  # peft's initial A (B is zero in both)
    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert n_ours == apply_lora(GPT(ours.config), lora)  # what apply_lora reports
    n_theirs = theirs.get_nb_trainable_parameters()[0]
    ours, theirs = ours.to(device).train(), theirs.to(device).train()
    data = [b.to(device) for b in _batches(steps, batch, seq_len)]
    fused = {"fused": True} if cuda else {}

    def optimizer(model):
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                 weight_decay=0.0, **fused)

    def step_ours(x, y):
        return ours(x, y)[1]

    def step_theirs(x, y):
        logits = theirs(input_ids=x).logits
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    runs = {"gristmill": (step_ours, optimizer(ours)), "peft": (step_theirs, optimizer(theirs))}
    times = {k: [] for k in runs}
    losses = {k: [] for k in runs}
    peak = {k: None for k in runs}
    for b in data:
        x, y = b[:, :-1], b[:, 1:]
        for name, (fn, opt) in runs.items():  # in turn: both see the same machine
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            with torch.autocast(device.type, torch.bfloat16, enabled=cuda):
                loss = fn(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cuda:
                torch.cuda.synchronize()
                used = torch.cuda.max_memory_allocated() / 2**20
                peak[name] = max(peak[name] or 0.0, used)
            times[name].append(time.perf_counter() - t0)
            losses[name].append(float(loss.detach()))
    warm = min(3, steps - 1)
    ms = {k: statistics.median(v[warm:]) * 1e3 for k, v in times.items()}
    diff = max(abs(a - b) for a, b in zip(losses["gristmill"], losses["peft"]))
    rows = []
    for name, tool, n in (("gristmill", "gristmill LoRA (GPT)", n_ours),
                          ("peft", "peft LoRA (transformers GPT2)", n_theirs)):
        rows.append({"tool": tool, "trainable params": n, "ms/step": ms[name],
                     "tokens/s": batch * seq_len / ms[name] * 1e3,
                     "vs peft": f"{ms['peft'] / ms[name]:.2f}x", "peak MiB": peak[name],
                     "first loss": f"{losses[name][0]:.4f}",
                     "last loss": f"{losses[name][-1]:.4f}",
                     "max |loss diff|": f"{diff:.1e}", "losses": losses[name]})
    name = torch.cuda.get_device_name(device) if cuda else \
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    meta = {"device": name, "dtype": "bfloat16 autocast" if cuda else "float32",
            "batch": batch, "seq_len": seq_len, "steps": steps, "lr": lr,
            "lora": {"rank": rank, "alpha": alpha, "targets": list(lora.targets),
                     "target_modules": modules},
            "model": {"n_layer": hf_cfg.n_layer, "n_embd": hf_cfg.n_embd},
            "same trainable params": n_ours == n_theirs,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "peft": peft.__version__}}
    return rows, meta


def main() -> None:
    p = parser("lora", __doc__)
    p.add_argument("--targets", default="attn", help="attn, mlp, head (comma-separated)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args()
    rows, meta = run(args.size, args.targets, args.rank, args.alpha, args.steps)
    print(f"device: {meta['device']}, {meta['dtype']}; GPT-2 {meta['model']['n_layer']}L/"
          f"{meta['model']['n_embd']}d, B={meta['batch']} T={meta['seq_len']}, "
          f"{meta['steps']} steps, LoRA r={args.rank} alpha={args.alpha} on "
          f"{', '.join(meta['lora']['target_modules'])}\n")
    report("lora", rows, COLUMNS, args.out, meta)
    if not meta["same trainable params"]:
        raise SystemExit("trainable parameter counts differ")


if __name__ == "__main__":
    main()
