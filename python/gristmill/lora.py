"""LoRA: low-rank adapters on the GPT's linear layers, and peft's adapter format.

A LoRA layer keeps its ``nn.Linear`` weight frozen and learns a low-rank update beside it:
``y = x W^T + b + (dropout(x) A^T B^T) * alpha / rank``, with ``A`` (rank, in) initialised as
``nn.Linear``'s weight (Kaiming uniform) and ``B`` (out, rank) zeros, so training starts from
the base model exactly (Hu et al. 2021, as peft implements it).

Read top to bottom: :class:`LoraConfig`, the layer, :func:`apply_lora` / :func:`merge_lora` /
:func:`lora_state_dict`, then the adapter folder in peft's format (:func:`save_adapter`,
:func:`load_adapter`)::

    adapter/
      adapter_config.json        peft's LoraConfig (peft_type LORA, r, lora_alpha, ...)
      adapter_model.safetensors  base_model.model.<module>.lora_A.weight / lora_B.weight

``PeftModel.from_pretrained(GPT2LMHeadModel(...), "adapter")`` loads it. The module names are
the same in both models (``transformer.h.0.attn.c_attn`` ...). Transformers' GPT-2 stores
those layers as ``Conv1D`` (weights (in, out)), peft's ``fan_in_fan_out=True``; gristmill's
are ``nn.Linear`` (weights (out, in)). The LoRA factors do not care: ``A`` is (rank, in) and
``B`` (out, rank) in both, so they are written as they are. Only merging differs, and merging
is done here on gristmill's layout. gristmill pads the vocabulary (50257 -> 50304); a head
adapter's ``B`` has the real vocabulary's rows, as transformers' head does.

The LoRA layer *is* an ``nn.Linear`` sharing the original weight and bias, so the base
weights keep their names in ``state_dict()`` (and stay tied to the token embedding).

>>> model = GPT(GPTConfig.from_preset("tiny", vocab_size=100))  # doctest: +SKIP
>>> apply_lora(model, LoraConfig(rank=4, targets=("attn", "mlp")))  # doctest: +SKIP
10240
>>> LoraConfig(targets=("attention",))
Traceback (most recent call last):
...
gristmill.lora.LoraError: LoraConfig targets: expected some of attn, mlp, head, got 'attention'
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from gristmill.outputs import claim
from gristmill.storage import atomic_file, write_json_atomic

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "TARGETS", "LoraConfig", "LoraError", "LoraLinear",
    "apply_lora", "load_adapter", "load_lora_state_dict", "lora_state_dict", "merge_lora",
    "save_adapter", "target_names",
]

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
#: What each target names: module-name suffixes (as peft's ``target_modules`` match them),
#: and for ``head`` the model's output layer (``lm_head``, or a classification head given).
TARGETS = {"attn": ("attn.c_attn", "attn.c_proj"), "mlp": ("mlp.c_fc", "mlp.c_proj"),
           "head": ()}
_PEFT_PREFIX = "base_model.model."
_OWNED = {ADAPTER_CONFIG, ADAPTER_WEIGHTS}


class LoraError(ValueError):
    """A LoRA setting, model or adapter file that does not fit; the message names it."""


# ---- config ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraConfig:
    """LoRA's settings; these defaults are the ones the CLI and the Python API use.

    Attributes:
        rank: the rank ``r`` of the update.
        alpha: the update is scaled by ``alpha / rank`` (peft's ``lora_alpha``).
        dropout: dropout on the adapter's input while training.
        targets: which layers get adapters: ``attn`` (``attn.c_attn`` and ``attn.c_proj``),
            ``mlp`` (``mlp.c_fc`` and ``mlp.c_proj``), ``head`` (the output layer). A
            comma-separated string is accepted.
    """

    rank: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: tuple = ("attn",)

    def __post_init__(self):
        def bad(name, want, got):
            shown = repr(got)
            return LoraError(f"LoraConfig {name}: expected {want}, got "
                             f"{shown if len(shown) <= 40 else shown[:37] + '...'}")

        r = self.rank
        if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1:
            raise bad("rank", "a positive integer", r)
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, numbers.Real) or not math.isfinite(a) \
                or a <= 0:
            raise bad("alpha", "a positive number", a)
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0 <= d < 1:
            raise bad("dropout", "a number in [0, 1)", d)
        targets = self.targets
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",")]
        if not isinstance(targets, (list, tuple)) or not targets:
            raise bad("targets", f"some of {', '.join(TARGETS)}", targets)
        for t in targets:
            if t not in TARGETS:
                raise bad("targets", f"some of {', '.join(TARGETS)}", t)
        object.__setattr__(self, "rank", int(r))
        object.__setattr__(self, "dropout", float(d))
        object.__setattr__(self, "targets", tuple(dict.fromkeys(targets)))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


# ---- the layer -------------------------------------------------------------------------------


class LoraLinear(nn.Linear):
    """An ``nn.Linear`` (sharing ``base``'s weight and bias) plus a LoRA update.

    ``rows`` limits the update to the first output features (a head over a padded vocabulary:
    the padding rows get none, as transformers' head has none).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 rows: int | None = None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        if base.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = base.bias
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.rows = self.out_features if rows is None else rows
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.rows, rank, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's (and peft's) init
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        out = F.linear(x, self.weight, self.bias)
        delta = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling
        if self.rows < self.out_features:
            delta = F.pad(delta, (0, self.out_features - self.rows))
        return out + delta

    def delta_weight(self) -> torch.Tensor:
        """The update as a weight (rows, in), in float32."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def _lora_layers(module: nn.Module) -> dict[str, LoraLinear]:
    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLinear)}


def _replace(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, attr, new)


def _head_rows(module: nn.Module, layer: nn.Linear) -> int | None:
    """The real vocabulary of a GPT's LM head over a padded vocabulary (None: every row)."""
    config = getattr(module, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if layer is getattr(module, "lm_head", None) and isinstance(vocab, int) and \
            getattr(config, "padded_vocab_size", None) == layer.out_features > vocab:
        return vocab
    return None


def _head_name(module: nn.Module, head) -> str:
    if isinstance(head, str):
        name = head
    elif isinstance(head, nn.Module):
        found = [n for n, m in module.named_modules() if m is head]
        if not found:
            raise LoraError("apply_lora: the head given is not a part of the model")
        name = found[0]
    elif head is None and isinstance(getattr(module, "lm_head", None), nn.Linear):
        name = "lm_head"
    else:
        raise LoraError("LoRA target head: the model has no lm_head; pass its head (head=)")
    try:
        layer = module.get_submodule(name)
    except AttributeError:
        raise LoraError(f"LoRA target head: the model has no module {name!r}") from None
    if not isinstance(layer, nn.Linear):
        raise LoraError(f"LoRA target head: {name} is a {type(layer).__name__}, not nn.Linear")
    return name


def target_names(module: nn.Module, config: LoraConfig, head=None) -> list[str]:
    """The names of the ``nn.Linear`` layers ``config.targets`` selects in ``module``."""
    suffixes = tuple(s for t in config.targets for s in TARGETS[t])
    names = [n for n, m in module.named_modules()
             if isinstance(m, nn.Linear) and any(n == s or n.endswith("." + s) for s in suffixes)]
    if "head" in config.targets:
        name = _head_name(module, head)
        if name not in names:
            names.append(name)
    if not names:
        raise LoraError(f"LoRA targets {', '.join(config.targets)}: the model has no such "
                        f"nn.Linear layers")
    return names


def _wrap(module: nn.Module, names: list[str], rank: int, alpha: float, dropout: float) -> None:
    for name in names:
        layer = module.get_submodule(name)
        if isinstance(layer, LoraLinear):
            raise LoraError(f"apply_lora: {name} already has a LoRA adapter")
        if not isinstance(layer, nn.Linear):
            raise LoraError(f"apply_lora: {name} is a {type(layer).__name__}, not nn.Linear")
        _replace(module, name, LoraLinear(layer, rank, alpha, dropout, _head_rows(module, layer)))


def apply_lora(module: nn.Module, config: LoraConfig, *, head: Union[str, nn.Module, None] = None
               ) -> int:
    """Freezes every weight of ``module`` and puts LoRA adapters on the targeted layers, in
    place.

    Args:
        module: a :class:`~gristmill.model.GPT`, or a model holding one (layer names are
            matched by suffix, as peft's ``target_modules``).
        config: rank, alpha, dropout and targets.
        head: for the ``head`` target: the head's name or module (default ``lm_head``), e.g.
            a classification head that replaced the LM head.

    Returns:
        The number of trainable parameters (the adapters'), as peft counts them on
        transformers' GPT-2 with the same settings.

    Raises:
        LoraError: no layer matches, or a layer has an adapter already.
    """
    names = target_names(module, config, head)
    wrapped = [n for n in names if isinstance(module.get_submodule(n), LoraLinear)]
    if wrapped:
        raise LoraError(f"apply_lora: {wrapped[0]} already has a LoRA adapter")
    for p in module.parameters():
        p.requires_grad_(False)
    _wrap(module, names, config.rank, config.alpha, config.dropout)
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def merge_lora(module: nn.Module) -> int:
    """Folds every adapter into its layer's weight and puts a plain ``nn.Linear`` back, so the
    model is a plain GPT again (:func:`gristmill.checkpoint.save_hf` exports it). Returns the
    number of layers merged.

    Raises:
        LoraError: a head adapter on a weight tied to the token embedding (GPT-2's LM head):
            merging it would change the embedding too; save the adapter instead.
    """
    layers = _lora_layers(module)
    shared = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(name)
    for name, layer in layers.items():
        others = [n for n in shared.get(id(layer.weight), []) if not n.startswith(name + ".")]
        if others:
            raise LoraError(f"merge_lora: {name}.weight is tied to {others[0]}; an adapter on a "
                            "tied head cannot be merged into GPT-2's weights (save the adapter "
                            "with save_adapter instead)")
    for name, layer in layers.items():
        with torch.no_grad():
            w = layer.weight
            w[: layer.rows] += layer.delta_weight().to(w.dtype)
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device="meta")
        plain.weight = layer.weight
        if layer.bias is not None:
            plain.bias = layer.bias
        _replace(module, name, plain)
    return len(layers)


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors only: ``{"<layer>.lora_A": ..., "<layer>.lora_B": ...}``."""
    out = {}
    for name, layer in _lora_layers(module).items():
        out[f"{name}.lora_A"] = layer.lora_A.detach()
        out[f"{name}.lora_B"] = layer.lora_B.detach()
    return out


# ---- peft's adapter folder -------------------------------------------------------------------


def _target_modules(names: list[str]) -> list[str]:
    """peft's ``target_modules`` for these layers: the suffixes of TARGETS, else the name."""
    out = []
    for name in names:
        suffix = next((s for ss in TARGETS.values() for s in ss
                       if name == s or name.endswith("." + s)), name)
        if suffix not in out:
            out.append(suffix)
    return sorted(out)


def _targets_of(names: list[str]) -> tuple:
    found = []
    for name in names:
        kind = next((t for t, ss in TARGETS.items()
                     if any(name == s or name.endswith("." + s) for s in ss)), "head")
        if kind not in found:
            found.append(kind)
    return tuple(t for t in TARGETS if t in found)


def save_adapter(model: nn.Module, directory: Union[str, os.PathLike], config: LoraConfig,
                 base_model_name_or_path: str | None = None) -> Path:
    """Writes the adapters alone in peft's format (adapter_config.json +
    adapter_model.safetensors) into ``directory``, a folder of its own (claimed: new, empty
    or an adapter folder written before; see :mod:`gristmill.outputs`).

    Raises:
        LoraError: the model has no adapters, or they were not made with ``config``.
        OutputFolderError: ``directory`` holds other files.
    """
    from safetensors.torch import save_file

    layers = _lora_layers(model)
    if not layers:
        raise LoraError("save_adapter: the model has no LoRA adapters (apply_lora first)")
    for name, layer in layers.items():
        if (layer.rank, layer.alpha) != (config.rank, config.alpha):
            raise LoraError(f"save_adapter: {name} has rank {layer.rank}, alpha {layer.alpha}; "
                            f"the config says rank {config.rank}, alpha {config.alpha}")
    directory = Path(directory)
    claim(directory, "lora-adapter", _OWNED.__contains__,
          fix="choose an empty or new folder for the adapter")
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().cpu().contiguous()
        tensors[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().cpu().contiguous()
    names = list(layers)
    conv1d = any(t != "head" for t in _targets_of(names))
    peft_config = {
        "peft_type": "LORA", "task_type": None, "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path, "revision": None,
        "r": config.rank, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
        "target_modules": _target_modules(names),
        # transformers' GPT-2 layers are Conv1D: peft's fan_in_fan_out (merging only)
        "fan_in_fan_out": conv1d, "bias": "none", "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "init_lora_weights": True, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
        "inference_mode": True,
    }
    with atomic_file(directory / ADAPTER_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json_atomic(directory / ADAPTER_CONFIG, peft_config)
    return directory


_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])(\.[^.]+)?\.weight")


def _read_peft_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise LoraError(f"{path}: missing; expected a peft adapter folder") from None
    except json.JSONDecodeError as e:
        raise LoraError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})"
                        ) from None
    except ValueError as e:
        raise LoraError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise LoraError(f"{path}: expected a JSON object (peft's LoraConfig)")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise LoraError(f"{path}: peft_type is {cfg['peft_type']!r}; only LORA adapters load")
    unsupported = {"use_dora": False, "use_rslora": False, "bias": "none", "rank_pattern": {},
                   "alpha_pattern": {}, "modules_to_save": None}
    for key, plain in unsupported.items():
        value = cfg.get(key, plain)
        if value != plain and not (plain is None and value == []) and not (plain == {} and
                                                                           value is None):
            raise LoraError(f"{path}: {key} is {value!r}; gristmill loads plain LoRA adapters "
                            f"only ({key}={json.dumps(plain)})")
    return cfg


def _read_adapter_tensors(directory: Path) -> tuple[dict, Path]:
    path = directory / ADAPTER_WEIGHTS
    if path.exists():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), path
        except SafetensorError as e:
            raise LoraError(f"{path}: not a readable safetensors file ({e})") from None
    path = directory / "adapter_model.bin"
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True), path
        except Exception as e:
            raise LoraError(f"{path}: not a readable torch file ({type(e).__name__})") from None
    raise LoraError(f"{directory / ADAPTER_WEIGHTS}: missing; expected a peft adapter folder")


def load_adapter(model: nn.Module, directory: Union[str, os.PathLike]) -> LoraConfig:
    """Loads a peft LoRA adapter folder (saved by :func:`save_adapter` or by peft for
    transformers' GPT-2) into ``model``: the layers it names get adapters (every weight is
    frozen first when the model has none yet), with its tensors.

    Returns:
        The adapter's :class:`LoraConfig`.

    Raises:
        LoraError: a missing or damaged file, an unsupported setting, or a tensor that names
            no layer of the model or does not fit it (named).
    """
    directory = Path(directory)
    cfg_path = directory / ADAPTER_CONFIG
    cfg = _read_peft_config(cfg_path)
    try:
        rank, alpha = cfg.get("r", 8), cfg.get("lora_alpha", 8)
        dropout = cfg.get("lora_dropout", 0.0)
        LoraConfig(rank=rank, alpha=alpha, dropout=dropout)
    except LoraError as e:
        raise LoraError(f"{cfg_path}: {e}") from None
    tensors, path = _read_adapter_tensors(directory)
    pairs: dict[str, dict] = {}
    for key, value in tensors.items():
        name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        if name.endswith(".base_layer.weight"):
            continue  # peft's copy of a tied embedding; the model has its own
        m = _KEY.fullmatch(name)
        if m is None or not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise LoraError(f"{path}: tensor {key}: expected <module>.lora_A.weight or "
                            "<module>.lora_B.weight (a matrix)")
        pairs.setdefault(m["module"], {})[m["ab"]] = (key, value)
    if not pairs:
        raise LoraError(f"{path}: holds no lora_A / lora_B tensors")
    _install(model, pairs, rank, alpha, dropout, path, cfg_path)
    return LoraConfig(rank=rank, alpha=alpha, dropout=dropout, targets=_targets_of(list(pairs)))


def _install(model: nn.Module, pairs: dict, rank: int, alpha: float, dropout: float,
             path, cfg_path) -> None:
    """Checks ``pairs`` ({layer: {"A": (key, tensor), "B": (key, tensor)}}) against the model,
    wraps the layers that have no adapter yet (freezing every weight first when the model had
    none), then copies the tensors in."""
    layers = _lora_layers(model)
    fresh = []
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise LoraError(f"{path}: {name} has lora_{next(iter(ab))} but no "
                            f"lora_{'B' if 'A' in ab else 'A'}")
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise LoraError(f"{path}: tensor {ab['A'][0]}: the model has no layer {name}"
                            ) from None
        if not isinstance(layer, nn.Linear):
            raise LoraError(f"{path}: tensor {ab['A'][0]}: {name} is a {type(layer).__name__}, "
                            "not a linear layer")
        (ka, a), (kb, b) = ab["A"], ab["B"]
        rows = layer.rows if isinstance(layer, LoraLinear) else \
            (_head_rows(model, layer) or layer.out_features)
        want_a, want_b = (rank, layer.in_features), (rows, rank)
        if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            raise LoraError(f"{path}: {ka} is {tuple(a.shape)} and {kb} {tuple(b.shape)}; "
                            f"{name} with r={rank} needs {want_a} and {want_b}")
        if isinstance(layer, LoraLinear) and (layer.rank, layer.alpha) != (rank, alpha):
            raise LoraError(f"{cfg_path}: r={rank}, lora_alpha={alpha}, but {name} already has "
                            f"an adapter of rank {layer.rank}, alpha {layer.alpha}")
        if not isinstance(layer, LoraLinear):
            fresh.append(name)
    if not layers:
        for p in model.parameters():
            p.requires_grad_(False)
    _wrap(model, fresh, rank, alpha, dropout)
    with torch.no_grad():
        for name, ab in pairs.items():
            layer = model.get_submodule(name)
            layer.lora_A.copy_(ab["A"][1])
            layer.lora_B.copy_(ab["B"][1])


def load_lora_state_dict(model: nn.Module, state_dict: dict, config: LoraConfig,
                         source: str = "the LoRA state dict") -> None:
    """Loads what :func:`lora_state_dict` returned (``<layer>.lora_A`` / ``.lora_B``) into
    ``model``, putting adapters of ``config``'s rank and alpha on the layers it names.

    Raises:
        LoraError: a key that is not a LoRA tensor, names no layer or does not fit (named,
            with ``source``).
    """
    pairs: dict[str, dict] = {}
    for key, value in state_dict.items():
        name, dot, ab = key.rpartition(".lora_")
        if not dot or ab not in ("A", "B") or not isinstance(value, torch.Tensor) \
                or value.dim() != 2:
            raise LoraError(f"{source}: tensor {key}: expected <layer>.lora_A or "
                            "<layer>.lora_B (a matrix)")
        pairs.setdefault(name, {})[ab] = (key, value)
    if not pairs:
        raise LoraError(f"{source}: holds no LoRA tensors")
    _install(model, pairs, config.rank, config.alpha, config.dropout, source, source)
