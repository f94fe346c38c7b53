"""Weight quantization for inference: int8 (CPU and CUDA) and int4 (CUDA), and quantized copies.

The kernels are libraries', never ours:

- **int8 on CPU**: each ``nn.Linear`` (the attention and MLP projections and the LM head)
  becomes torch's dynamic int8 linear (``torch.ao.nn.quantized.dynamic.Linear``, fbgemm /
  onednn): int8 weights with one scale per output channel, activations quantized per call.
  On a 2-core x86 machine it ran 2-10x faster than the float32 matmul at batch 1-32, where
  torchao's weight-only int8 and ``torch._weight_int8pack_mm`` ran slower than float32
  (``benches/bench_serve.py`` reports the model-level figures).
- **int8 on CUDA**: torchao's ``Int8WeightOnlyConfig`` (weight-only, per-channel).
- **int4 on CUDA**: torchao's ``Int4WeightOnlyConfig`` (groups of 128). There is no int4 path
  here for CPU: torchao's CPU int4 kernels need a packing this version does not offer, and its
  fallback was slower than float32 with no memory saved.

Scales are symmetric ``max|w| / 127`` per output channel, so dequantized weights quantize back to
exactly the same int8 values: a saved copy (:func:`quantize_run`) stores the int8 weights and
scales, loads as a float model on that grid (``model.quantization`` says which), and
:func:`quantize` turns it back into the same int8 model on CPU. On CPU the token embedding is
held as int8 rows too (:class:`Int8Embedding`, a lookup on the same grid); a head tied to it is
quantized from it at load time. On CUDA the embedding stays in the model's float dtype.

>>> model = quantize(load_model("runs/gpt2"), "int8")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from gristmill.model import GPT

__all__ = ["MODES", "Int8Embedding", "QuantizeError", "dequantize_state_dict", "quantize", "quantize_run",
           "quantized_state_dict", "weight_bytes"]

MODES = ("int8", "int4")
SCALE = ".weight_scale"  # suffix of the per-channel scale beside an int8 weight in a saved copy
FORMAT = "gristmill-quantized-1"


class QuantizeError(ValueError):
    """A quantization mode that is unknown or not offered on this device, or a bad input."""


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise QuantizeError(f"--quantize {mode!r}: expected one of {', '.join(MODES)}")


def _int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``(q, scale)`` with ``w ~ q * scale[:, None]``."""
    w = w.detach().float().cpu()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # half to even, as torch
    return q, scale


def _cpu_int8(model: GPT) -> GPT:
    """torch's dynamic int8 linear (fbgemm / onednn). torch 2.15 warns that its quantized
    tensors will go; where they are gone, torchao's dynamic int8 takes over (slower on CPU)."""
    try:
        from torch.ao.nn.quantized.dynamic import Linear  # noqa: F401
        make = torch._make_per_channel_quantized_tensor
    except (ImportError, AttributeError):
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model, Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda m, _: isinstance(m, nn.Linear))
        return model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*deprecated")
        return _cpu_int8_torch(model, make)


class Int8Embedding(nn.Module):
    """A token embedding held as int8 rows with one scale per row (the same grid as the int8
    head quantized from it): a lookup, then a multiply."""

    def __init__(self, weight: torch.Tensor, dtype=torch.float32):
        super().__init__()
        q, scale = _int8_per_channel(weight)
        self.register_buffer("int8", q.to(weight.device))
        self.register_buffer("scale", scale.to(weight.device, dtype))

    def forward(self, idx):
        return self.int8[idx].to(self.scale.dtype) * self.scale[idx, None]


def _cpu_int8_torch(model: GPT, make) -> GPT:
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            int8, scale = _int8_per_channel(child.weight)
            qweight = make(int8, scale.double(), torch.zeros(len(scale), dtype=torch.int64), 0)
            q = QLinear(child.in_features, child.out_features, bias_=child.bias is not None,
                        dtype=torch.qint8)
            bias = child.bias.detach().float() if child.bias is not None else None
            q.set_weight_bias(qweight, bias)
            setattr(parent, name, q)
    # after the head, which may be tied to it: both then read the same int8 grid
    model.transformer.wte = Int8Embedding(model.transformer.wte.weight)
    return model


def quantize(model: GPT, mode: str) -> GPT:
    """Quantizes ``model``'s linear layers in place (and returns it), on its device.

    Call it after moving the model to its device and float dtype. CPU: int8 only; CUDA: int8
    and int4 (needs torchao: ``pip install 'gristmill[quantize]'``).

    Raises:
        QuantizeError: an unknown mode, or int4 on CPU.
    """
    _check_mode(mode)
    device = next(model.parameters()).device
    model.eval()
    if device.type == "cpu":
        if mode == "int4":
            raise QuantizeError("--quantize int4 runs on CUDA only (torchao's int4 kernels); "
                                "on CPU use --quantize int8")
        model = _cpu_int8(model.float())
    else:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        if mode == "int4":
            model = model.to(torch.bfloat16)  # torchao's int4 kernel takes bfloat16
        config = Int8WeightOnlyConfig() if mode == "int8" else Int4WeightOnlyConfig(group_size=128)
        quantize_(model, config, filter_fn=lambda m, _: isinstance(m, nn.Linear))
    model.quantization = mode
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's weights take in memory (a tied tensor once, packed int8 weights at
    their int8 size plus scales)."""
    seen, total = set(), 0
    alive = []  # each unpacked weight is a new object: kept, so that no id is reused

    def add(t: torch.Tensor) -> None:
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape)) if not t.is_quantized \
            else id(t)
        if key in seen:
            return
        seen.add(key)
        alive.append(t)
        if t.is_quantized:
            total += t.numel() * t.element_size() + t.q_per_channel_scales().numel() * 8
        elif hasattr(t, "__tensor_flatten__") and type(t) is not nn.Parameter:
            names, _ = t.__tensor_flatten__()
            total += sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)
        else:
            total += t.numel() * t.element_size()

    for p in list(model.parameters()) + list(model.buffers()):
        data = p.data if isinstance(p, nn.Parameter) else p
        add(data)
    for m in model.modules():
        if hasattr(m, "_packed_params") and hasattr(m, "weight") and callable(m.weight):
            add(m.weight())
            if m.bias() is not None:
                add(m.bias())
    return total


# ---- saved copies ------------------------------------------------------------------------------


def quantized_state_dict(model: GPT, mode: str = "int8") -> dict[str, torch.Tensor]:
    """The float model's weights with every linear weight and the token embedding as int8 plus
    a per-row scale (``<name>.weight_scale``); a head tied to the token embedding is left out
    (it is quantized from the embedding at load)."""
    if mode != "int8":
        raise QuantizeError(f"only int8 copies can be saved, not {mode}: quantize an int4 "
                            "model at load time with --quantize int4")
    tied = model.config.tie_embeddings
    linear = {f"{n}.weight" for n, m in model.named_modules() if type(m) is nn.Linear}
    linear.add("transformer.wte.weight")
    out = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and tied:
            continue
        if k in linear:
            out[k], out[k[: -len(".weight")] + SCALE] = _int8_per_channel(v)
        else:
            out[k] = v.detach().cpu().contiguous()
    return out


def dequantize_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved copy's tensors as float weights on the int8 grid (``q * scale``)."""
    out = {}
    for k, v in sd.items():
        if k.endswith(SCALE):
            continue
        scale = sd.get(k[: -len(".weight")] + SCALE) if k.endswith(".weight") else None
        if scale is not None:
            if v.dtype != torch.int8 or scale.shape != v.shape[:1]:
                raise QuantizeError(f"tensor {k}: expected int8 weights with one scale per "
                                    f"row, got {v.dtype} {tuple(v.shape)} and scales "
                                    f"{tuple(scale.shape)}")
            v = v.float() * scale.float()[:, None]
        out[k] = v
    return out


def quantize_run(run, out_dir, mode: str = "int8") -> Path:
    """Writes a quantized copy of a run, checkpoint or HF GPT-2 folder to ``out_dir``: its
    weights (int8 + scales, safetensors), a config.json with checksums and the source's
    settings (template, tokenizer fingerprint), and its tokenizer. Every command loads it.

    Raises:
        QuantizeError: ``run`` is already a quantized copy, or ``mode`` is not int8.
        OutputFolderError: ``out_dir`` holds other files or overlaps the input.
    """
    from safetensors.torch import save_file

    from gristmill import checkpoint as ck
    from gristmill.outputs import check_apart, claim
    from gristmill.storage import atomic_file, write_json_atomic

    _check_mode(mode)
    source = ck.find_checkpoint(run)
    meta = ck.read_meta(source) or {}
    if meta.get("format") == FORMAT:
        raise QuantizeError(f"{source}: is already a quantized ({meta.get('quantize')}) copy; "
                            "quantize the full-precision run instead")
    model = ck.load_model(source)
    if getattr(model, "quantization", None):
        raise QuantizeError(f"{source}: its weights are already quantized; quantize the "
                            "full-precision run instead")
    tok = ck.tokenizer_for(source, model, required=False)
    sd = quantized_state_dict(model, mode)  # checked before the folder is claimed
    out_dir = Path(out_dir)
    check_apart(out_dir, [source, Path(run)])
    claim(out_dir, "quantize", lambda rel: rel in (ck.WEIGHTS, ck.META)
          or rel.startswith(ck.TOKENIZER + "/"))
    with atomic_file(out_dir / ck.WEIGHTS) as tmp:
        save_file(sd, str(tmp), metadata={
            "format": "pt", "gristmill_config": json.dumps(model.config.to_dict()),
            "gristmill_quantize": mode})
    if tok is not None:
        tok.save(out_dir / ck.TOKENIZER)
    keep = {k: meta[k] for k in ("template", "tokenizer_fingerprint", "step", "val_loss")
            if k in meta}
    write_json_atomic(out_dir / ck.META, {
        **keep, "format": FORMAT, "quantize": mode, "source": str(source),
        "files": {ck.WEIGHTS: ck.file_digest(out_dir / ck.WEIGHTS)}})
    return out_dir
