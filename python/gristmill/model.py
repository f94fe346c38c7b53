"""The GPT model: config presets, GPT-2 initialisation, a KV cache, the HF GPT-2 layout.

GPT-2 is the default layout and the only one that exports to Hugging Face GPT-2. The layout
options of :class:`GPTConfig` (rotary positions, RMSNorm, QK-norm, ReLU², an untied head, a
logit soft-cap, zero-initialised output projections) make gristmill's own layout, which saves
and loads through gristmill's checkpoints; the ``modern`` training recipe
(:data:`gristmill.config.RECIPES`) bundles them with the Muon optimizer.

Read top to bottom: ``GPTConfig`` and its presets, the blocks, ``GPT`` itself, the optimizers,
the KV cache the sampler uses, then the conversion of state dicts and configs from and to the
Hugging Face GPT-2 layout. Files are not read or written here: checkpoints, HF folders and
weight files are :mod:`gristmill.checkpoint`'s.

>>> cfg = GPTConfig.from_preset("tiny", vocab_size=100)
>>> model = GPT(cfg)
>>> logits, loss = model(torch.zeros(1, 8, dtype=torch.long))
>>> tuple(logits.shape)
(1, 8, 100)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from gristmill.config import LAYOUT_CHOICES, LAYOUT_KEYS
from gristmill.defaults import MODEL, MODEL_PRESETS

PathLike = Union[str, os.PathLike]

# ---- config ----------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    """The shape and layout of a GPT: GPT-2's unless a layout option says otherwise.

    ``vocab_size`` is the tokenizer's; the embedding is padded up to ``vocab_multiple``
    (50257 -> 50304) so the matmuls hit fast kernel sizes. Pad logits are cut off in
    :meth:`GPT.forward`, so they are never sampled and never enter the loss.
    """

    block_size: int = MODEL["block_size"]
    vocab_size: int = MODEL["vocab_size"]
    n_layer: int = MODEL["n_layer"]
    n_head: int = MODEL["n_head"]
    n_embd: int = MODEL["n_embd"]
    dropout: float = 0.0
    bias: bool = MODEL["bias"]
    vocab_multiple: int = MODEL["vocab_multiple"]
    # Layout options: the defaults are GPT-2's (see LAYOUT_CHOICES and GPT2_LAYOUT).
    position: str = "learned"  # learned (GPT-2's wpe table) or rotary (RoPE on queries, keys)
    norm: str = "layernorm"  # layernorm or rmsnorm (every norm: blocks and final)
    activation: str = "gelu"  # gelu (tanh approximation, GPT-2's) or relu2 (ReLU squared)
    qk_norm: bool = False  # RMSNorm of each head's queries and keys before attention
    tie_embeddings: bool = True  # the LM head shares the token embedding's weight
    logit_softcap: float = 0.0  # logits = cap * tanh(logits / cap); 0: off
    zero_init: bool = False  # output projections (attn/MLP c_proj, an untied head) start at 0
    rope_theta: float = 10000.0  # rotary base

    def __post_init__(self):
        # Configs come from files (checkpoint metadata, HF config.json, TOML): a wrong type or
        # range is named here rather than surfacing as a TypeError deep inside torch.
        def bad(name, want):
            shown = repr(getattr(self, name))
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            return ValueError(f"GPTConfig {name} must be {want}, got {shown}")

        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "vocab_multiple"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise bad(name, "a positive integer")
            setattr(self, name, int(value))  # numpy integers from shapes become plain ints
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0 <= d < 1:
            raise bad("dropout", "a number in [0, 1)")
        self.dropout = float(d)
        for name in ("bias", "qk_norm", "tie_embeddings", "zero_init"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        for name, choices in LAYOUT_CHOICES.items():
            if getattr(self, name) not in choices:
                raise bad(name, " or ".join(choices))
        def real(v):
            return not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)

        if not real(self.logit_softcap) or self.logit_softcap < 0:
            raise bad("logit_softcap", "0 (off) or a positive number")
        if not real(self.rope_theta) or self.rope_theta <= 1:
            raise bad("rope_theta", "a number above 1")
        self.logit_softcap, self.rope_theta = float(self.logit_softcap), float(self.rope_theta)
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig n_embd ({self.n_embd}) must be a multiple of n_head "
                             f"({self.n_head})")
        if self.position == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"GPTConfig position 'rotary' needs an even head size, got "
                             f"n_embd/n_head = {self.n_embd // self.n_head}")

    @property
    def layout(self) -> str:
        """``gpt2`` (exports to Hugging Face GPT-2) or ``gristmill`` (any layout option set)."""
        return "gristmill" if self.non_gpt2_options() else "gpt2"

    def non_gpt2_options(self) -> dict:
        """The layout options that differ from GPT-2's, as ``{name: value}``."""
        out = {k: getattr(self, k) for k, v in GPT2_LAYOUT.items() if getattr(self, k) != v}
        if self.position != "rotary":
            out.pop("rope_theta", None)  # unused without rotary positions
        return out

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        """A named preset (see ``PRESETS``) with some fields replaced.

        Raises:
            ValueError: for an unknown preset or field.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: GPT-2's value of every layout option: a model with all of them exports to HF GPT-2.
GPT2_LAYOUT: dict = {f.name: f.default for f in dataclasses.fields(GPTConfig)
                     if f.name in (*LAYOUT_KEYS, "rope_theta")}

PRESETS: dict[str, dict] = {name: dict(shape) for name, shape in MODEL_PRESETS.items()}

# ---- blocks ----------------------------------------------------------------------------------

NORM_EPS = 1e-5  # GPT-2's LayerNorm epsilon; RMSNorm uses the same


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    """The config's norm over the last ``dim`` features: LayerNorm (GPT-2) or RMSNorm."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=NORM_EPS)
    return nn.LayerNorm(dim, bias=config.bias)


def rotary_tables(positions, head_dim: int, theta: float = 10000.0):
    """``(cos, sin)`` of RoPE (Su et al. 2021) for ``positions`` ((T,) or (B, T)), shaped to
    broadcast over (B, n_head, T, head_dim / 2); computed in float32."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=positions.device,
                                       dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    if angles.dim() == 3:  # (B, T, D/2): one table per row
        angles = angles[:, None]
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotates each pair (x[i], x[i + D/2]) of the last dimension by the pair's angle: the
    half-split convention of GPT-NeoX and Llama in transformers."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head, self.layer_idx, self.dropout = config.n_head, layer_idx, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            head_dim = config.n_embd // config.n_head
            self.q_norm = nn.RMSNorm(head_dim, eps=NORM_EPS)
            self.k_norm = nn.RMSNorm(head_dim, eps=NORM_EPS)

    def forward(self, x, cache: KVCache | None = None, attn_mask=None, rope=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # absolute positions: cached keys stay valid
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.update(self.layer_idx, k, v)
        # With no mask: plain causal attention for a fresh sequence, and none at all for one new
        # token over the cache. SDPA's is_causal aligns top-left, so a chunk appended to a
        # non-empty cache needs an explicit mask (built by the caller or here).
        if attn_mask is None and start > 0 and T > 1:
            attn_mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None and start == 0 and T > 1,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.relu2 = config.activation == "relu2"

    def forward(self, x):
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h, approximate="tanh")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm transformer block, as GPT-2."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, attn_mask=None, rope=None):
        x = x + self.attn(self.ln_1(x), cache, attn_mask, rope)
        return x + self.mlp(self.ln_2(x))


# ---- the model -------------------------------------------------------------------------------


class GPT(nn.Module):
    """GPT-2 by default: learned positions, pre-LN blocks, GELU (tanh), output tied to the token
    embedding; the config's layout options change these (see :class:`GPTConfig`)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        modules = {"wte": nn.Embedding(config.padded_vocab_size, config.n_embd)}
        if config.position == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update({
            "drop": nn.Dropout(config.dropout),
            "h": nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            "ln_f": make_norm(config, config.n_embd),
        })
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections that feed the residual stream by 1/sqrt(2L);
        # zero_init starts them (and an untied head) at zero, as modded-nanogpt does.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.zero_init and not config.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, *, cache=None, positions=None, attn_mask=None,
                last_only=False):
        """Logits (and the mean cross-entropy when ``targets`` is given).

        Args:
            idx: (B, T) token ids.
            targets: (B, T) next-token ids; -1 is ignored.
            cache: a :class:`KVCache`; keys/values are appended and attention covers the cache.
            positions: (B, T) position ids (left-padded batches); default counts on from the cache.
            attn_mask: boolean (B, 1, T, S) mask, True where a query may attend to a key.
            last_only: compute logits for the last position only (generation).

        Returns:
            ``(logits, loss)``: logits (B, T or 1, vocab_size), loss a scalar or None.
        """
        x = self.hidden_states(idx, cache=cache, positions=positions, attn_mask=attn_mask)
        if last_only and targets is None:
            x = x[:, -1:, :]
        logits = self.head_logits(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    def head_logits(self, h):
        """The LM head on hidden states ``h`` (..., n_embd): logits over the real vocabulary
        (pad columns cut off), soft-capped in float32 when the config says so."""
        # Pad logits never leave. Slicing the logits would cost, in backward, a zero-filled
        # (..., padded vocab) tensor and a copy: the pad rows of a plain head's weight are cut
        # off before the product instead, and an unpadded head's logits are not sliced.
        V, head = self.config.vocab_size, self.lm_head
        if (h.dim() == 2 and h.device.type == "cpu" and not torch.is_grad_enabled()
                and type(head) is nn.Linear and head.bias is None):
            # A decoding step's few rows on CPU: W @ h.T reads the weight once, where MKL's
            # h @ W.T (nn.Linear) takes about twice as long (benches/bench_serve.py).
            logits = torch.mm(head.weight[:V], h.t()).t()
        elif type(head) is nn.Linear and head.out_features != V:
            logits = F.linear(h, head.weight[:V], None if head.bias is None else head.bias[:V])
        else:
            logits = head(h)
            if logits.shape[-1] != V:
                logits = logits[..., :V]
        cap = self.config.logit_softcap
        if cap:
            logits = cap * torch.tanh(logits.float() / cap)
        return logits

    def hidden_states(self, idx, *, cache=None, positions=None, attn_mask=None, start=0,
                      inputs=None, stop=None):
        """The final norm's output (B, T, n_embd): what the LM head reads, and what a
        fine-tuning head (:mod:`gristmill.finetune`) reads instead. Arguments as :meth:`forward`.

        A fine-tuning run whose first blocks are frozen computes their output once and starts
        from it: ``stop=k`` returns the residual stream after the first k blocks (no final
        norm); ``start=k`` with that as ``inputs`` runs the rest (``idx`` gives the shape).
        """
        if (start or stop is not None) and cache is not None:
            raise ValueError("start/stop run part of the blocks: not with a KV cache")
        if start and inputs is None:
            raise ValueError(f"start={start} needs inputs: the output of block {start - 1}")
        T = idx.shape[1]
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size "
                             f"{self.config.block_size}")
        if positions is None:
            positions = torch.arange(past, past + T, device=idx.device)
        rope = None
        if self.config.position != "learned":
            c = self.config
            rope = rotary_tables(positions, c.n_embd // c.n_head, c.rope_theta)
        if start == 0:
            x = self.transformer.wte(idx)
            if self.config.position == "learned":
                x = x + self.transformer.wpe(positions)
            x = self.transformer.drop(x)
        else:
            x = inputs
        blocks = self.transformer.h
        if start or stop is not None:  # (slicing makes a ModuleList: not on every decode step)
            blocks = blocks[start:stop]
        for block in blocks:
            x = block(x, cache, attn_mask, rope)
        if cache is not None:
            cache.length += T
        return x if stop is not None else self.transformer.ln_f(x)

    # ---- accounting ----

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. ``non_embedding`` leaves out the lookup tables that do no matmul:
        the position table, and the token embedding when it is not tied to the head (a tied
        one counts once, as the head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6N + 12·L·H·Q·T (PaLM appendix B)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * seq_len

    def configure_optimizer(self, lr: float, weight_decay: float, betas=(0.9, 0.95),
                            eps: float = 1e-8, device_type: str = "cpu", optimizer: str = "adamw",
                            muon_lr: float = 0.02, muon_momentum: float = 0.95):
        """AdamW decaying only the >=2-D weights (matmuls, embeddings); fused on CUDA.

        ``optimizer="muon"``: Muon (``torch.optim.Muon``) for the blocks' 2-D weights at
        ``muon_lr``, AdamW as above for the embeddings, the head and the gains and biases; the
        Muon group carries ``lr_scale = muon_lr / lr`` so that one schedule scales both.

        Raises:
            ValueError: an unknown optimizer, or Muon on a torch without it.
        """
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be {' or '.join(OPTIMIZERS)}, got {optimizer!r}")
        hidden = []
        if optimizer == "muon":
            hidden = [p for n, p in params if p.dim() == 2 and n.startswith("transformer.h.")]
        in_muon = {id(p) for p in hidden}
        rest = [p for _, p in params if id(p) not in in_muon]
        groups = [
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = {"fused": True} if device_type == "cuda" else {}
        adamw = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **fused)
        if optimizer == "adamw":
            return adamw
        muon_cls = getattr(torch.optim, "Muon", None)
        if muon_cls is None:
            raise ValueError(f"optimizer 'muon' needs torch.optim.Muon (PyTorch 2.9 or later); "
                             f"this is torch {torch.__version__}: upgrade it or use "
                             "optimizer=adamw")
        muon = muon_cls([{"params": hidden, "lr_scale": muon_lr / lr}], lr=muon_lr,
                        weight_decay=weight_decay, momentum=muon_momentum)
        return CombinedOptimizer({"adamw": adamw, "muon": muon})


OPTIMIZERS = ("adamw", "muon")


class CombinedOptimizer:
    """Several optimizers over disjoint parameters, stepped as one: ``param_groups`` lists all
    their groups (a schedule sets each group's ``lr``), and the state dict holds each by name.
    """

    def __init__(self, optimizers: dict):
        self.optimizers = dict(optimizers)

    @property
    def param_groups(self) -> list:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self, closure=None):
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != set(self.optimizers):
            raise ValueError(f"the optimizer state is not {' + '.join(self.optimizers)}'s "
                             "(saved by a run with another optimizer?)")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


# ---- KV cache --------------------------------------------------------------------------------


class KVCache:
    """Keys and values for every layer, preallocated for ``max_len`` positions.

    The model appends a chunk per forward call; attention reads the filled prefix as a view,
    so decoding never recomputes the past and never reallocates.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device=None,
                 dtype=torch.float32):
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k, v):
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, {end} needed")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, index):
        """Keeps the sequences at ``index`` along the batch (beam search)."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)

    def repeat_interleave(self, n: int):
        self.k = self.k.repeat_interleave(n, dim=1)
        self.v = self.v.repeat_interleave(n, dim=1)


# ---- Hugging Face GPT-2 layout ---------------------------------------------------------------

# HF's GPT-2 stores these as Conv1D, i.e. (in, out): transposed relative to nn.Linear.
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def clean_state_dict(sd: dict) -> dict:
    """Strips the wrappers' prefixes (``_orig_mod.`` from torch.compile, ``module.`` from DDP)."""
    out = {}
    for k, v in sd.items():
        for prefix in ("_orig_mod.", "module."):
            k = k.replace(prefix, "")
        out[k] = v
    return out


def check_gpt2_layout(config: GPTConfig, action: str = "export to Hugging Face GPT-2") -> None:
    """Refuses (one line, naming the options) a config that is not GPT-2's layout, for
    ``action``: only GPT-2's layout exists in the Hugging Face GPT-2 format.

    Raises:
        ValueError: when any layout option differs from GPT-2's.
    """
    other = config.non_gpt2_options()
    if other:
        shown = ", ".join(f"{k}={v}" for k, v in other.items())
        raise ValueError(f"cannot {action}: the model has gristmill's layout ({shown}), which "
                         "Hugging Face GPT-2 does not have; it saves and loads as a gristmill "
                         "checkpoint")


def config_from_hf(hf: dict, **overrides) -> GPTConfig:
    """Maps a HF GPT-2 ``config.json`` onto :class:`GPTConfig`.

    Raises:
        ValueError: for a model type or option this GPT does not implement, or an override of
            a layout option (the weights are GPT-2's).
    """
    missing = [k for k in ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd")
               if k not in hf]
    if missing:
        raise ValueError(f"not a GPT-2 config: no {', '.join(missing)}")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"model_type {hf.get('model_type')!r} is not GPT-2")
    expected = {"activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
                "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                "scale_attn_weights": True, "n_inner": None, "add_cross_attention": False}
    for key, want in expected.items():
        if hf.get(key, want) != want:
            raise ValueError(f"HF config has {key}={hf[key]!r}; gristmill's GPT-2 needs {want!r}")
    config = GPTConfig.from_dict({
        "block_size": hf["n_positions"], "vocab_size": hf["vocab_size"],
        "n_layer": hf["n_layer"], "n_head": hf["n_head"], "n_embd": hf["n_embd"], **overrides,
    })
    other = config.non_gpt2_options()
    if other:
        shown = ", ".join(f"{k}={v}" for k, v in other.items())
        raise ValueError(f"Hugging Face GPT-2 weights have GPT-2's layout: {shown} cannot apply "
                         "to them (train a preset with it instead)")
    return config


def from_hf_state_dict(hf_sd: dict, config: GPTConfig) -> dict:
    """A HF GPT-2 state dict (Conv1D weights, unpadded vocab, maybe bare ``GPT2Model`` keys)
    as :class:`GPT`'s.

    Raises:
        ValueError: when the token embedding does not fit ``config``.
    """
    sd = {}
    for k, v in hf_sd.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")) or k == "lm_head.weight":
            continue  # causal-mask buffers, and the head which is tied to wte
        if not k.startswith("transformer."):
            k = "transformer." + k
        sd[k] = v.t() if k.endswith(_CONV1D) else v
    wte = sd.get("transformer.wte.weight")
    if wte is None or wte.shape[0] != config.vocab_size:
        raise ValueError(f"HF weights: transformer.wte.weight is "
                         f"{None if wte is None else tuple(wte.shape)}, "
                         f"config says vocab_size {config.vocab_size}")
    pad = config.padded_vocab_size - config.vocab_size
    sd["transformer.wte.weight"] = torch.cat([wte, wte.new_zeros(pad, wte.shape[1])])
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def to_hf_state_dict(model: GPT) -> dict:
    """The model's weights in the HF GPT-2 layout (Conv1D transposed, vocab unpadded).

    ``lm_head.weight`` is left out: it is tied to ``transformer.wte.weight``.

    Raises:
        ValueError: for a model of gristmill's layout (see :func:`check_gpt2_layout`).
    """
    config = model.config
    check_gpt2_layout(config)
    out = {}
    for k, v in clean_state_dict(model.state_dict()).items():
        if k == "lm_head.weight":
            continue
        if k == "transformer.wte.weight":
            v = v[: config.vocab_size]
        out[k] = (v.t() if k.endswith(_CONV1D) else v).detach().contiguous()
    if not config.bias:  # HF's GPT-2 always has biases: give it zeros
        for k, v in list(out.items()):
            if k.endswith(".weight") and "wte" not in k and "wpe" not in k:
                bias = k[: -len("weight")] + "bias"
                out[bias] = v.new_zeros(v.shape[-1] if k.endswith(_CONV1D) else v.shape[0])
    return out


def config_to_hf(config: GPTConfig, eos_token_id: int | None = None) -> dict:
    """The HF GPT-2 ``config.json`` of a :class:`GPTConfig` (end-of-text: the last token).

    Raises:
        ValueError: for a config of gristmill's layout (see :func:`check_gpt2_layout`).
    """
    check_gpt2_layout(config)
    eos = config.vocab_size - 1 if eos_token_id is None else eos_token_id
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.block_size,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
        "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "initializer_range": 0.02, "bos_token_id": eos, "eos_token_id": eos,
        "tie_word_embeddings": True, "torch_dtype": "float32",
    }


# Reading and writing model folders moved to gristmill.checkpoint; the old names still work.
_MOVED = ("from_hf", "save_hf", "load_model", "load_weights", "save_weights", "find_checkpoint")


def __getattr__(name):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module("gristmill.checkpoint"), name)
    raise AttributeError(f"module 'gristmill.model' has no attribute {name!r}")
