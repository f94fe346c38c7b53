"""Training step throughput: gristmill's training loop vs a nanoGPT-style reference loop.

Both train the same GPT-2 shape on the same random tokens with the same settings (AdamW fused on
CUDA, bf16 autocast on CUDA, TF32, torch.compile when asked, gradient clipping). gristmill is
timed through its real loop (``gristmill.train.train``: sampler, logging, everything), read back
from the per-step log; the reference is a minimal loop written here. Reports tokens/s and MFU
(FLOPs per token = 6N + 12·L·H·Q·T, against the GPU's dense bf16 peak).

    python benches/bench_train_step.py [--size small|full] [--no-compile]

full: gpt2 (124M) at T=1024 on a GPU (batch 16); on CPU the same model at T=256, batch 1.
small: a 2-layer model, 4096 tokens, T=128 (a smoke run).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np
import torch
import torch.nn.functional as F
from common import parser, report
from gristmill.model import GPT, GPTConfig
from gristmill.train import peak_flops, train
from torch import nn

# ---- random tokens behind the ShardDataset interface ------------------------------------------


class RandomTokens:
    def __init__(self, n_vocab: int, n_tokens: int = 2_000_000):
        self.n_vocab, self.eot_token, self.tokenizer_fingerprint = n_vocab, n_vocab - 1, ""
        self.dtype = np.uint16
        self.tokens = np.random.default_rng(0).integers(0, n_vocab, n_tokens, dtype=np.uint16)

    def num_tokens(self, split="train"):
        return len(self.tokens)

    def check_tokenizer(self, tokenizer):
        pass

    def sampler(self, split="train", *, batch_size, seq_len, mode="random", seed=0, rank=0,
                world_size=1):
        return _Sampler(self.tokens, batch_size, seq_len, seed)


class _Sampler:
    def __init__(self, tokens, B, T, seed):
        self.tokens, self.B, self.T, self.rng = tokens, B, T, np.random.default_rng(seed)

    def next_batch(self):
        starts = self.rng.integers(0, len(self.tokens) - self.T - 1, self.B)
        return np.stack([self.tokens[s: s + self.T + 1] for s in starts])

    def state_dict(self):
        return {}

    def load_state_dict(self, d):
        pass


# ---- the reference: a nanoGPT-style model and loop ---------------------------------------------


class RefBlock(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, 2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class RefGPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(c.padded_vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.ModuleList(RefBlock(c.n_embd, c.n_head) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, c.padded_vocab_size, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def reference_step_times(cfg: GPTConfig, B, T, steps, warmup, device, use_compile) -> list[float]:
    torch.manual_seed(0)
    model = RefGPT(cfg).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}], lr=6e-4, betas=(0.9, 0.95),
                            **({"fused": True} if device.type == "cuda" else {}))
    step_fn = torch.compile(model) if use_compile else model
    data = torch.randint(0, cfg.vocab_size, (B, T + 1), device=device)
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else torch.autocast("cpu", enabled=False))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with ctx:
            loss = step_fn(data[:, :-1], data[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the same per-step sync gristmill's log makes
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def gristmill_step_times(preset, overrides, B, T, steps, warmup, device, use_compile, vocab):
    with tempfile.TemporaryDirectory() as out:
        train(dataset=RandomTokens(vocab), out_dir=out, model=preset, batch_size=B, seq_len=T,
              max_steps=warmup + steps, eval_interval=10**9, eval_batches=1, warmup_steps=10,
              progress=False, plot=False, compile=use_compile, device=str(device), **overrides)
        log = [json.loads(line) for line in Path(out, "log.jsonl").read_text().splitlines()]
    return [r["dt_ms"] / 1e3 for r in log if "loss" in r][warmup:]


def main() -> None:
    p = parser("train_step", __doc__)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--steps", type=int, default=None, help="timed steps (median reported)")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating rounds of both loops (default: 3 on CPU full, else 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    use_compile = not args.no_compile and device.type == "cuda"
    vocab = 50257
    if args.size == "small":  # a smoke run: small vocabulary too
        vocab, preset, overrides, B, T = 4096, "tiny", {"n_embd": 128, "block_size": 128}, 4, 128
        steps, warmup = args.steps or 5, 2
    elif device.type == "cuda":
        preset, overrides, B, T = "gpt2", {}, 16, 1024
        steps, warmup = args.steps or 20, 5
    else:
        preset, overrides, B, T = "gpt2", {"block_size": 256}, 1, 256
        steps, warmup = args.steps or 5, 2
    if args.rounds is None:
        args.rounds = 3 if args.size == "full" and device.type == "cpu" else 1
    cfg = GPTConfig.from_preset(preset, vocab_size=vocab, **overrides)
    with torch.device("meta"):
        flops_tok = GPT(cfg).flops_per_token(T)
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    mode = ("bf16" if device.type == "cuda" else "fp32") + (" + compile" if use_compile else "")

    # The two loops alternate (A B B A ...) for --rounds rounds, so that load on a shared
    # machine drifting during the run weighs on both alike; each reports the median step.
    runs = {
        "gristmill train()": lambda: gristmill_step_times(preset, overrides, B, T, steps, warmup,
                                                          device, use_compile, vocab),
        "nanoGPT-style loop": lambda: reference_step_times(cfg, B, T, steps, warmup, device,
                                                           use_compile),
    }
    times: dict[str, list[float]] = {tool: [] for tool in runs}
    for r in range(args.rounds):
        for tool in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            times[tool] += runs[tool]()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    rows = []
    for tool, dts in times.items():
        tok_s = B * T / statistics.median(dts)
        mfu = flops_tok * tok_s / peak if peak else None
        rows.append({"tool": tool, "mode": mode, "tokens/s": tok_s,
                     "MFU %": None if mfu is None else 100 * mfu,
                     "step ms (min/median/max)": f"{1e3 * min(dts):.0f}/"
                     f"{1e3 * statistics.median(dts):.0f}/{1e3 * max(dts):.0f}"})
    ref = rows[1]["tokens/s"]
    for r in rows:
        r["vs reference"] = f"{r['tokens/s'] / ref:.2f}x"
    print(f"device: {name}; model {preset} ({cfg.n_layer}L, {cfg.n_embd}d), batch {B} x T {T}, "
          f"{mode}, median of {steps} steps after {warmup} warm-up, "
          f"{args.rounds} alternating round(s)"
          + ("" if peak else "; MFU needs a known GPU peak") + "\n")
    report("train_step", rows, ["tool", "mode", "tokens/s", "MFU %", "step ms (min/median/max)",
                                "vs reference"], args.out,
           {"device": name, "model": cfg.to_dict(), "batch_size": B, "seq_len": T,
            "flops_per_token": flops_tok, "peak_flops": peak,
            "torch": torch.__version__, "steps": steps, "warmup": warmup,
            "compile": use_compile, "rounds": args.rounds})


if __name__ == "__main__":
    main()
