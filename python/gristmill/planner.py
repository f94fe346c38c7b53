"""The compute planner: parameters, tokens, FLOPs, GPU hours and dollars, any two to the rest.

A dense transformer's training costs about ``C = 6 N D`` FLOPs for ``N`` parameters and ``D``
tokens (forward 2, backward 4 per parameter and token; attention's share is left out, as in
Kaplan et al. 2020 and Hoffmann et al. 2022). A GPU delivers ``peak * MFU`` of those per
second, and an hour of it costs ``price`` dollars. Given any two of ``N``, ``D`` and the
compute (as FLOPs, GPU hours or dollars: all the same quantity once hardware, MFU and price
are fixed) — or one of them and a tokens-per-parameter ratio — :func:`plan` gives the rest,
the compute-optimal point for the same FLOPs (Hoffmann et al. 2022, "Chinchilla": about 20
tokens per parameter, so ``N* = sqrt(C / 120)``, ``D* = 20 N*``), and what a gristmill run
would use: the nearest model preset, tokens per step, steps and peak learning rate.

Nothing here imports torch: ``gristmill plan`` answers at once. Parameter counts are those of
``GPT.num_params()`` for the GPT-2 layout (token embedding counted once, tied to the head;
positions left out) computed from the shape; presets come from :mod:`gristmill.defaults`,
the table the model reads too, so no torch is imported.

>>> p = plan(flops=5.76e23)  # Gopher's and Chinchilla's budget
>>> round(p.params / 1e9), round(p.tokens / 1e12, 2)
(69, 1.39)
>>> plan(params=124e6, tokens_per_param=20).tokens
2480000000.0
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Optional

from gristmill.defaults import MODEL, MODEL_PRESETS

#: Chinchilla's compute-optimal tokens per parameter (Hoffmann et al. 2022).
CHINCHILLA_TOKENS_PER_PARAM = 20.0

#: Dense bf16 peak FLOP/s by GPU name: the first key found in a device's name wins (so the
#: more specific names come first). Vendor data sheets, without sparsity.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12), ("H200", 989e12),
    ("B200", 2250e12), ("MI300X", 1307e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
    ("A10", 125e12), ("4090", 165e12), ("3090", 71e12), ("V100", 125e12),
)

#: GPT-3's batch (tokens per step) and peak learning rate by model size (Brown et al. 2020,
#: Table 2.1), the nanoGPT/llm.c GPT-2 recipe gristmill trains with; interpolated in log N.
GPT3_HYPERPARAMETERS: tuple[tuple[float, float, float], ...] = (
    (125e6, 0.5e6, 6.0e-4), (350e6, 0.5e6, 3.0e-4), (760e6, 1e6, 2.5e-4),
    (1.3e9, 1e6, 2.0e-4), (2.7e9, 1e6, 1.6e-4), (6.7e9, 2e6, 1.2e-4), (13e9, 2e6, 1.0e-4),
    (175e9, 3.2e6, 0.6e-4),
)

#: A plan takes at least this many optimizer steps (a smaller batch when the budget is small).
MIN_STEPS = 100

_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}
_NUMBER = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgtp]?)\s*", re.IGNORECASE)


class PlanError(ValueError):
    """A plan that cannot be made from what was given (the message says what is missing)."""


def parse_quantity(text: str, name: str = "value") -> float:
    """``"124M"``, ``"1.4T"``, ``"2.5e9"``, ``"70b"``, ``"1_000"`` as a positive number (k, M,
    B or G, T and P are powers of 1000).

    Raises:
        PlanError: naming ``name``, for anything else.

    >>> parse_quantity("1.4T")
    1400000000000.0
    """
    m = _NUMBER.fullmatch(str(text).replace("_", "").replace(",", ""))
    if m is None:
        raise PlanError(f"{name}: expected a positive number such as 124M, 1.4T or 5.76e23, "
                        f"got {text!r}")
    value = float(m.group(1)) * _SUFFIXES[m.group(2).lower()]
    if not (value > 0 and math.isfinite(value)):
        raise PlanError(f"{name}: expected a positive number, got {text!r}")
    return value


def format_quantity(x: float, unit: str = "") -> str:
    """``1.4e12`` as ``"1.40T"``: three significant digits and a suffix."""
    for suffix, scale in (("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def peak_flops_for(gpu: str) -> Optional[float]:
    """The dense bf16 peak FLOP/s of a GPU named ``gpu`` (a device name such as ``"NVIDIA
    H100 80GB HBM3"`` or a short one such as ``"h100"``), or None when it is not known."""
    low = gpu.lower()
    return next((p for key, p in PEAK_BF16_FLOPS if key.lower() in low), None)


# ---- model shapes --------------------------------------------------------------------------


def count_params(n_layer: int, n_embd: int, vocab_size: int = 50257, *, vocab_multiple: int = 64,
                 bias: bool = True, tie_embeddings: bool = True) -> int:
    """The parameters ``GPT.num_params()`` counts for a GPT-2-layout shape: the token
    embedding (vocabulary padded to ``vocab_multiple``; once, as the head shares it unless
    ``tie_embeddings`` is off), per block two LayerNorms, the attention's ``4 d^2`` and the
    MLP's ``8 d^2`` weights with their biases, and the final LayerNorm; position embeddings
    are left out, as in nanoGPT.

    >>> count_params(12, 768)  # GPT-2 small: "124M" with its 786,432 position weights
    123689472
    """
    d = n_embd
    vocab = (vocab_size + vocab_multiple - 1) // vocab_multiple * vocab_multiple
    norm = 2 * d if bias else d  # weight and bias, or weight
    block = 12 * d * d + (9 * d if bias else 0) + 2 * norm  # c_attn, c_proj, c_fc, c_proj
    head = 0 if tie_embeddings else vocab * d
    return vocab * d + head + n_layer * block + norm


def presets() -> dict[str, dict]:
    """Every model preset as a full shape ``{n_layer, n_head, n_embd, block_size, vocab_size,
    bias, vocab_multiple}``: :data:`gristmill.defaults.MODEL_PRESETS` over
    :data:`gristmill.defaults.MODEL`, the table ``GPTConfig`` reads too."""
    keys = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "vocab_multiple")
    return {name: {k: {**MODEL, **shape}[k] for k in keys}
            for name, shape in MODEL_PRESETS.items()}


def preset_params(name: str, vocab_size: Optional[int] = None) -> int:
    """The parameter count of preset ``name`` (with ``vocab_size``, default the preset's)."""
    s = presets()[name]
    return count_params(s["n_layer"], s["n_embd"], vocab_size or s["vocab_size"],
                        vocab_multiple=s["vocab_multiple"], bias=s["bias"])


def depth_shape(params: float, vocab_size: int = 50257) -> dict:
    """nanochat's one-knob shape nearest ``params``: ``n_layer = depth``, ``n_embd = 64 depth``,
    heads of 128 (``n_head = ceil(n_embd / 128)``), for GPT-2's layout."""
    def shape(depth):
        d = 64 * depth
        return {"n_layer": depth, "n_embd": d, "n_head": -(-d // 128),
                "params": count_params(depth, d, vocab_size)}
    best = min((shape(k) for k in range(1, 257)),
               key=lambda s: abs(math.log(s["params"] / params)))
    return best


# ---- the plan ------------------------------------------------------------------------------


@dataclass
class Plan:
    """A training run's size and cost, and how gristmill would run it."""

    params: float
    tokens: float
    flops: float
    gpu: str
    peak_flops: float
    mfu: float
    gpus: int
    price: Optional[float]
    #: Compute-optimal model and tokens for the same FLOPs (20 tokens per parameter).
    optimal_params: float = 0.0
    optimal_tokens: float = 0.0
    #: The preset nearest ``params`` (in ratio) and its own count.
    preset: str = ""
    preset_params: int = 0
    #: nanochat's depth shape nearest ``params`` (for sizes no preset is near).
    shape: dict = field(default_factory=dict)
    seq_len: int = 1024
    tokens_per_step: int = 0
    steps: int = 0
    lr: float = 0.0

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    @property
    def gpu_hours(self) -> float:
        return self.flops / (self.peak_flops * self.mfu) / 3600

    @property
    def hours(self) -> float:
        """Wall-clock hours on ``gpus`` GPUs."""
        return self.gpu_hours / self.gpus

    @property
    def dollars(self) -> Optional[float]:
        return None if self.price is None else self.gpu_hours * self.price

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(tokens_per_param=self.tokens_per_param, gpu_hours=self.gpu_hours,
                 hours=self.hours, dollars=self.dollars)
        return d

    def train_flags(self) -> list[str]:
        """The ``gristmill train`` flags of this plan."""
        if self.preset and 2 / 3 <= self.preset_params / self.params <= 1.5:
            model = [f"--model={self.preset}"]
        else:
            s = self.shape
            model = ["--model=gpt2", f"--n_layer={s['n_layer']}", f"--n_embd={s['n_embd']}",
                     f"--n_head={s['n_head']}"]
        return [*model, f"--seq_len={self.seq_len}", f"--tokens_per_step={self.tokens_per_step}",
                f"--tokens={round(self.tokens)}", f"--lr={self.lr:.3g}",
                f"--min_lr={self.lr / 10:.3g}"]


def hyperparameters(params: float) -> tuple[float, float]:
    """(tokens per step, peak learning rate) for a model of ``params``: GPT-3's Table 2.1,
    interpolated in log N (its ends beyond the table)."""
    rows = GPT3_HYPERPARAMETERS
    if params <= rows[0][0]:
        return rows[0][1], rows[0][2]
    if params >= rows[-1][0]:
        return rows[-1][1], rows[-1][2]
    for (n0, b0, lr0), (n1, b1, lr1) in zip(rows, rows[1:]):
        if n0 <= params <= n1:
            t = math.log(params / n0) / math.log(n1 / n0)
            return math.exp((1 - t) * math.log(b0) + t * math.log(b1)), \
                math.exp((1 - t) * math.log(lr0) + t * math.log(lr1))
    raise AssertionError("unreachable")


def steps_for(tokens: float, tokens_per_step: int) -> int:
    """Optimizer steps that train on at least ``tokens`` (at least one)."""
    return max(1, math.ceil(tokens / tokens_per_step))


def plan(*, params: Optional[float] = None, tokens: Optional[float] = None,
         flops: Optional[float] = None, gpu_hours: Optional[float] = None,
         dollars: Optional[float] = None, tokens_per_param: Optional[float] = None,
         gpu: str = "H100", peak_flops: Optional[float] = None, mfu: float = 0.4,
         gpus: int = 1, price: Optional[float] = None, seq_len: Optional[int] = None,
         vocab_size: int = 50257) -> Plan:
    """Fills in a training run from any two of ``params``, ``tokens`` and the compute (one of
    ``flops``, ``gpu_hours``, ``dollars``), or from one of them and ``tokens_per_param``; one
    alone takes Chinchilla's 20 tokens per parameter.

    Args:
        gpu: the hardware, for its peak (see :data:`PEAK_BF16_FLOPS`); ``peak_flops``
            overrides it.
        mfu: the share of the peak a run reaches (model FLOPs utilisation).
        gpus: GPUs run at once (wall-clock hours = GPU hours / gpus).
        price: dollars per GPU hour (needed to plan from, or to give, ``dollars``).
        seq_len: context of the run (default: the preset's block size).
        vocab_size: the tokenizer's, for parameter counts (GPT-2's by default).

    Raises:
        PlanError: too little or too much given, or a value out of range.
    """
    def positive(name, value):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise PlanError(f"{name} must be a positive number, got {value!r}")
    for name, value in (("params", params), ("tokens", tokens), ("flops", flops),
                        ("gpu_hours", gpu_hours), ("dollars", dollars),
                        ("tokens_per_param", tokens_per_param), ("peak_flops", peak_flops),
                        ("price", price)):
        positive(name, value)
    if not 0 < mfu <= 1:
        raise PlanError(f"mfu must be in (0, 1], got {mfu!r}")
    if gpus < 1:
        raise PlanError(f"gpus must be at least 1, got {gpus!r}")
    if peak_flops is None:
        peak_flops = peak_flops_for(gpu)
        if peak_flops is None:
            known = ", ".join(k for k, _ in PEAK_BF16_FLOPS)
            raise PlanError(f"gpu: no peak FLOP/s known for {gpu!r} (known: {known}); give "
                            "--peak-flops")
    flops_per_second = peak_flops * mfu
    computes = [(n, v) for n, v in (("flops", flops), ("gpu_hours", gpu_hours),
                                     ("dollars", dollars)) if v is not None]
    if len(computes) > 1:
        raise PlanError(f"give one of flops, gpu_hours and dollars, not {computes[0][0]} and "
                        f"{computes[1][0]}: each fixes the compute")
    if dollars is not None:
        if price is None:
            raise PlanError("dollars needs price (dollars per GPU hour)")
        gpu_hours = dollars / price
    if gpu_hours is not None:
        flops = gpu_hours * 3600 * flops_per_second
    given = [n for n, v in (("params", params), ("tokens", tokens), ("compute", flops),
                            ("tokens_per_param", tokens_per_param)) if v is not None]
    if len(given) > 2:
        raise PlanError(f"give two of params, tokens, compute (flops, gpu_hours or dollars) and "
                        f"tokens_per_param, not {len(given)} ({', '.join(given)})")
    if not given:
        raise PlanError("give params, tokens or a compute budget (flops, gpu_hours or dollars)")
    if len(given) == 1:
        tokens_per_param = CHINCHILLA_TOKENS_PER_PARAM
    r = tokens_per_param
    if params is not None and tokens is not None:
        pass
    elif params is not None:
        tokens = params * r if flops is None else flops / (6 * params)
    elif tokens is not None:
        params = tokens / r if flops is None else flops / (6 * tokens)
    else:  # compute and a ratio: C = 6 N (r N)
        params = math.sqrt(flops / (6 * r))
        tokens = r * params
    flops = 6 * params * tokens
    p = Plan(params=params, tokens=tokens, flops=flops, gpu=gpu, peak_flops=peak_flops, mfu=mfu,
             gpus=gpus, price=price)
    p.optimal_params = math.sqrt(flops / (6 * CHINCHILLA_TOKENS_PER_PARAM))
    p.optimal_tokens = CHINCHILLA_TOKENS_PER_PARAM * p.optimal_params
    counts = {name: preset_params(name, vocab_size) for name in presets()}
    p.preset = min(counts, key=lambda n: abs(math.log(counts[n] / params)))
    p.preset_params = counts[p.preset]
    p.shape = depth_shape(params, vocab_size)
    p.seq_len = seq_len or presets()[p.preset]["block_size"]
    batch, p.lr = hyperparameters(params)
    rows = max(1, 2 ** round(math.log2(batch / p.seq_len)))
    while rows > 1 and steps_for(tokens, rows * p.seq_len) < MIN_STEPS:
        rows //= 2
    p.tokens_per_step = rows * p.seq_len
    p.steps = steps_for(tokens, p.tokens_per_step)
    return p


__all__ = [
    "CHINCHILLA_TOKENS_PER_PARAM",
    "GPT3_HYPERPARAMETERS",
    "PEAK_BF16_FLOPS",
    "Plan",
    "PlanError",
    "count_params",
    "depth_shape",
    "format_quantity",
    "hyperparameters",
    "parse_quantity",
    "peak_flops_for",
    "plan",
    "preset_params",
    "presets",
    "steps_for",
]
