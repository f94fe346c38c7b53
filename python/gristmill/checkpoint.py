"""Checkpoints: where a model, its optimizer and its run state live on disk, in one place.

A training run's ``out_dir``::

    out_dir/
      ckpt-0000100/          one per evaluation, written under a temporary name, renamed in
        model.safetensors    the weights; the GPTConfig in the safetensors metadata
        optimizer.pt         the optimizer's state (torch.save; read with weights_only=True)
        state.json           step, tokens seen, sampler positions, every RNG: an exact resume
        config.json          format, step, val_loss, model and train settings, tokenizer
                             fingerprint, and "files": bytes and sha256 of the three above
        tokenizer/           the tokenizer the run used
      best.json              {"checkpoint", "step", "val_loss"}: never pruned
      log.jsonl, loss.png    the run log (train.py)
      .gristmill-output.json the marker: a training run's folder (see gristmill.outputs)

Read top to bottom: finding checkpoints and the best one, saving and pruning, then loading:
a gristmill checkpoint, a folder holding only :func:`save_weights`' file, or a Hugging Face
GPT-2 folder (config.json + model.safetensors, sharded safetensors or pytorch_model.bin), and
the tokenizer that goes with each. Loading checks what saving recorded; a damaged, missing or
inconsistent file is a one-line :class:`CheckpointError` naming it and what to do. Checkpoints
written before checksums were recorded still load. Nothing here runs a pickle's code.

>>> model = load_model("runs/shakespeare")  # its best checkpoint  # doctest: +SKIP
>>> tok = tokenizer_for("runs/shakespeare", model)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from gristmill.model import (
    GPT,
    GPTConfig,
    PathLike,
    check_gpt2_layout,
    clean_state_dict,
    config_from_hf,
    config_to_hf,
    from_hf_state_dict,
    to_hf_state_dict,
)
from gristmill.outputs import check_apart, claim
from gristmill.storage import atomic_file, fsync_dir, write_json_atomic

__all__ = [
    "CheckpointError", "claim_out_dir", "file_digest", "find_checkpoint", "from_hf",
    "list_checkpoints", "read_meta",
    "load_extra_weights", "load_model",
    "load_optimizer_state", "load_weights", "prune_checkpoints", "read_best", "read_run_state",
    "save_checkpoint", "save_hf", "save_weights", "tokenizer_for", "update_best",
]

FORMAT = "gristmill-checkpoint-1"
WEIGHTS, OPTIMIZER, STATE, META, TOKENIZER = (
    "model.safetensors", "optimizer.pt", "state.json", "config.json", "tokenizer")
BEST = "best.json"
# A LoRA adapter a fine-tuning run could not fold into the weights (one on GPT-2's tied head):
# config.json says ``"lora": {"merged": false, ...}`` and load_model puts it back.
ADAPTER = "adapter.safetensors"
RUN_LOG, LOSS_PLOT = "log.jsonl", "loss.png"
_CHECKSUMMED = (WEIGHTS, OPTIMIZER, STATE)
_NAME = re.compile(r"ckpt-\d+")
_RUN_STATE_KEYS = ("step", "tokens_seen", "best_val_loss", "world_size", "samplers", "rng")


class CheckpointError(ValueError):
    """A checkpoint file is damaged, missing or inconsistent; the message names the file and
    what to do."""


def _fallback(ckpt: Path) -> str:
    return f"delete {ckpt} to fall back to the checkpoint before it"


def _first_line(e: BaseException) -> str:
    """The first sentence of an error from safetensors or torch (torch's go on for lines)."""
    lines = str(e).strip().splitlines()
    return lines[0].split(". ")[0].rstrip(".") if lines else type(e).__name__


# ---- finding ---------------------------------------------------------------------------------


def list_checkpoints(out_dir: PathLike) -> list[Path]:
    """The ``ckpt-NNNNNNN`` folders of a training ``out_dir``, oldest first."""
    return sorted(p for p in Path(out_dir).glob("ckpt-*") if _NAME.fullmatch(p.name) and p.is_dir())


def _read_json(path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {fix}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column "
                              f"{e.colno}); {fix}") from None
    except ValueError as e:  # not UTF-8
        raise CheckpointError(f"{path}: not valid JSON ({_first_line(e)}); {fix}") from None


def read_best(out_dir: PathLike) -> dict | None:
    """``out_dir/best.json`` (None when there is none), checked: a damaged one is named."""
    path = Path(out_dir) / BEST
    if not path.exists():
        return None
    fix = "delete it (training writes a new one at its next evaluation), or name a ckpt-* folder"
    best = _read_json(path, fix)
    name = best.get("checkpoint") if isinstance(best, dict) else None
    loss = best.get("val_loss") if isinstance(best, dict) else None
    if not (isinstance(name, str) and _NAME.fullmatch(name) and isinstance(loss, (int, float))):
        raise CheckpointError(f'{path}: expected {{"checkpoint": "ckpt-NNNNNNN", "step": N, '
                              f'"val_loss": X}}; {fix}')
    return best


def find_checkpoint(path: PathLike, which: str = "best") -> Path:
    """The checkpoint folder ``path`` names: itself when it holds weights or a config.json,
    else the ``best`` (or ``latest``) checkpoint of a training ``out_dir``."""
    if which not in ("best", "latest"):
        raise ValueError(f"which must be best or latest, got {which!r}")
    path = Path(path)
    if (path / WEIGHTS).exists() or (path / META).exists():
        return path
    ckpts = list_checkpoints(path)
    if not ckpts:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such checkpoint or folder")
        raise FileNotFoundError(f"{path}: no {WEIGHTS}, {META} or ckpt-* folder; expected a "
                                "checkpoint, a training out_dir or a Hugging Face GPT-2 folder")
    best = read_best(path) if which == "best" else None
    if best is not None and (path / best["checkpoint"]).is_dir():
        return path / best["checkpoint"]
    return ckpts[-1]  # the best one was deleted (or never chosen): the latest


# ---- the out_dir ------------------------------------------------------------------------------

# What a training run writes in its out_dir (temporary names are hidden).
_OWNED = re.compile(rf"ckpt-\d+/.+|{re.escape(BEST)}|{re.escape(RUN_LOG)}|{re.escape(LOSS_PLOT)}")


def owned_files(rel: str) -> bool:
    """Which files of a training ``out_dir`` the run writes (see :mod:`gristmill.outputs`):
    checkpoint folders, best.json and the run log; ``rel`` is relative to ``out_dir``."""
    return _OWNED.fullmatch(rel) is not None


def _written_before_markers(out_dir: Path) -> bool:
    """A training out_dir written before folders were marked: it holds a gristmill checkpoint."""
    for ckpt in list_checkpoints(out_dir):
        try:
            meta = json.loads((ckpt / META).read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and str(meta.get("format", "")).startswith("gristmill-checkpoint"):
            return True
    return False


def claim_out_dir(out_dir: PathLike, inputs=(), command: str = "train",
                  also: str | None = None) -> None:
    """Takes ``out_dir`` for a training run before any step (see :mod:`gristmill.outputs`):
    apart from the ``inputs`` (the shard dataset), and new, empty or a training run's folder
    (which the run resumes), so that a user's own files are never overwritten, loaded as a
    checkpoint or pruned. ``command`` is the marker's name (``finetune`` for fine-tuning
    runs) and ``also`` a regular expression of the files it writes besides a training run's
    (reports, generated responses), relative to ``out_dir``.

    Raises:
        OutputFolderError: ``out_dir`` overlaps an input, or holds files a training run does
            not write (named).
    """
    check_apart(out_dir, inputs)
    extra = re.compile(also) if also else None
    owns = owned_files if extra is None else (
        lambda rel: owned_files(rel) or extra.fullmatch(rel) is not None)
    claim(out_dir, command, owns, earlier=_written_before_markers)


# ---- saving and pruning ----------------------------------------------------------------------


def _digest(path: Path) -> dict:
    h, size = hashlib.sha256(), 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
    return {"bytes": size, "sha256": h.hexdigest()}


def save_weights(model: GPT, path: PathLike, state_dict: dict | None = None) -> None:
    """Writes the weights as safetensors, the config in its metadata (a tied lm_head is left
    out: it is the token embedding)."""
    from safetensors.torch import save_file

    sd = clean_state_dict(state_dict if state_dict is not None else model.state_dict())
    tied = model.config.tie_embeddings
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()
               if not (tied and k == "lm_head.weight")}
    meta = {"format": "pt", "gristmill_config": json.dumps(model.config.to_dict())}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def save_checkpoint(out_dir: PathLike, step: int, model: GPT, model_sd: dict, optim_sd: dict,
                    state: dict, meta: dict, tokenizer=None,
                    extra_weights: dict[str, dict] | None = None) -> Path:
    """Writes ``out_dir/ckpt-{step:07d}``: built under a temporary name, then renamed into place
    (a rerun that reaches the same step replaces it). ``meta`` becomes config.json, with the
    size and sha256 of the weights, optimizer and state files added. ``extra_weights`` maps
    more file names to state dicts written as safetensors beside the weights and checksummed
    alike (a fine-tuning head, a LoRA adapter); read them with :func:`load_extra_weights`."""
    out_dir = Path(out_dir)
    final = out_dir / f"ckpt-{step:07d}"
    tmp = out_dir / f".{final.name}.tmp-{os.getpid()}"
    for stale in [*out_dir.glob(".ckpt-*.tmp-*"), *out_dir.glob(".ckpt-*.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a run killed mid-write
    tmp.mkdir(parents=True)
    save_weights(model, tmp / WEIGHTS, model_sd)
    with atomic_file(tmp / OPTIMIZER) as f:
        torch.save(optim_sd, f)
    write_json_atomic(tmp / STATE, state)
    for name, tensors in (extra_weights or {}).items():
        from safetensors.torch import save_file

        with atomic_file(tmp / name) as f:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(f),
                      metadata={"format": "pt"})
    files = {name: _digest(tmp / name) for name in (*_CHECKSUMMED, *(extra_weights or {}))}
    write_json_atomic(tmp / META, {**meta, "format": FORMAT, "files": files})
    if tokenizer is not None:
        tokenizer.save(tmp / TOKENIZER)
    if final.exists():
        trash = out_dir / f".{final.name}.old-{os.getpid()}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash)
    else:
        os.rename(tmp, final)
    fsync_dir(out_dir)  # makes the checkpoint folder's rename durable
    return final


def update_best(out_dir: PathLike, ckpt: Path, step: int, val_loss: float | None) -> None:
    """Points best.json at ``ckpt`` when its validation loss is the lowest so far."""
    out_dir = Path(out_dir)
    prev = read_best(out_dir)
    if val_loss is None or (prev and prev["val_loss"] <= val_loss
                            and (out_dir / prev["checkpoint"]).exists()):
        return
    write_json_atomic(out_dir / BEST, {"checkpoint": ckpt.name, "step": step,
                                       "val_loss": val_loss})


def prune_checkpoints(out_dir: PathLike, keep_last: int) -> None:
    """Deletes all but the ``keep_last`` latest checkpoints, and the best one."""
    best = read_best(out_dir)
    ckpts = list_checkpoints(out_dir)
    for old in ckpts[: max(0, len(ckpts) - keep_last)]:
        if best is None or old.name != best["checkpoint"]:
            shutil.rmtree(old)


# ---- loading: checks -------------------------------------------------------------------------


def _gristmill_meta(directory: Path) -> dict | None:
    """A gristmill checkpoint's config.json (checked); None for a HF folder or none at all."""
    path = directory / META
    if not path.exists():
        return None
    meta = _read_json(path, _fallback(directory))
    if not (isinstance(meta, dict) and str(meta.get("format", "")).startswith("gristmill-")):
        return None
    files = meta.get("files", {})  # absent in checkpoints older than checksums
    ok = isinstance(files, dict) and all(
        isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
        for v in files.values())
    if not ok:
        raise CheckpointError(f'{path}: "files" must map file names to {{"bytes", "sha256"}}; '
                              f"{_fallback(directory)}")
    return meta


def read_meta(directory: PathLike) -> dict | None:
    """The config.json of a gristmill checkpoint or quantized copy (checked), None for a HF
    folder or none at all."""
    return _gristmill_meta(Path(directory))


def file_digest(path: PathLike) -> dict:
    """``{"bytes", "sha256"}`` of a file, as config.json's ``"files"`` records them."""
    return _digest(Path(path))


def _check_file(directory: Path, name: str, meta: dict | None) -> Path:
    """``directory/name``, present and (when the checkpoint recorded them) of the recorded
    size and sha256."""
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {_fallback(directory)}")
    want = (meta or {}).get("files", {}).get(name)
    if want is None:
        return path
    size = path.stat().st_size
    if size != want["bytes"]:
        raise CheckpointError(f"{path}: {size:,} bytes where the checkpoint recorded "
                              f"{want['bytes']:,} (the file is truncated or damaged); "
                              f"{_fallback(directory)}")
    if _digest(path)["sha256"] != want["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch (the file is damaged); "
                              f"{_fallback(directory)}")
    return path


def _check_finite(sd: dict, path: Path, fix: str) -> None:
    # Unchecksummed weights (older checkpoints, HF folders): random bytes in float tensors
    # almost surely decode to some NaN or infinity; a loaded model must not hide them.
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: tensor {k} holds NaN or infinite values (the file is "
                                  f"damaged); {fix}")


def _read_safetensors(path: Path, fix: str, metadata_only: bool = False, keys=None):
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        if metadata_only:
            with safe_open(str(path), "pt") as f:
                return f.metadata() or {}
        if keys is None:
            return load_file(str(path))
        with safe_open(str(path), "pt") as f:  # one tensor at a time: no whole second copy
            absent = sorted(set(keys) - set(f.keys()))
            if absent:
                raise CheckpointError(f"{path}: no tensor {absent[0]}; {fix}")
            return {k: f.get_tensor(k) for k in keys}
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)}); "
                              f"{fix}") from None


def _torch_load(path: Path, fix: str, device="cpu"):
    import pickle

    try:  # weights_only: a file from elsewhere never runs code here
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        why = "it does not load as plain tensors"
    except Exception as e:  # damaged bytes trip the unpickler anywhere (IndexError, OSError, ...)
        why = _first_line(e)
    raise CheckpointError(f"{path}: not a readable torch file ({why}); {fix}")


_LAYER = re.compile(r"transformer\.h\.(\d+)\.")


def _safetensors_shapes(path: Path, fix: str) -> dict[str, tuple]:
    """The tensors' names (wrappers' prefixes stripped) and shapes, from the header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)}); "
                              f"{fix}") from None
    return clean_state_dict(shapes)


def _check_shapes(config: GPTConfig, shapes: dict, config_file: Path, weights: Path, fix: str,
                  hf: bool = False) -> None:
    """The config against the tensors' shapes, before a model of the config's size is built:
    sizes are free to write in a config, so a huge one over small weights must be refused
    without allocating it. What this leaves (n_head, biases) cannot make the model bigger
    than its weights, and the state dict load checks it."""
    c = config
    held = "its tensors" if config_file == weights else str(weights)
    if hf:  # HF names, and its vocab is not padded
        wte_fields, wte = f"vocab_size={c.vocab_size}", c.vocab_size
        wpe_fields = f"n_positions={c.block_size}"
    else:
        wte_fields, wte = (f"vocab_size={c.vocab_size}, vocab_multiple={c.vocab_multiple}",
                           c.padded_vocab_size)
        wpe_fields = f"block_size={c.block_size}"
    expected = [("transformer.wte.weight", wte_fields, (wte, c.n_embd))]
    if c.position == "learned":  # rotary positions have no table
        expected.append(("transformer.wpe.weight", wpe_fields, (c.block_size, c.n_embd)))
    if not c.tie_embeddings:
        expected.append(("lm_head.weight", wte_fields, (wte, c.n_embd)))
    for name, fields, want in expected:
        got = shapes.get(name)
        if got is None:
            raise CheckpointError(f"{weights}: no {name} tensor; {fix}")
        if tuple(got) != want:
            raise CheckpointError(f"{config_file}: {fields}, n_embd={c.n_embd} need {name} of "
                                  f"shape {want}, but {held} hold {tuple(got)}; {fix}")
    layers = {int(m.group(1)) for k in shapes if (m := _LAYER.match(k))}
    if len(layers) != c.n_layer:
        raise CheckpointError(f"{config_file}: n_layer={c.n_layer}, but {held} hold "
                              f"{len(layers)} layers; {fix}")


def _into_model(model: GPT, sd: dict, path: Path, fix: str) -> GPT:
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its tensors do not fit its config ({_first_line(e)}); "
                              f"{fix}") from None
    return model


# ---- loading ---------------------------------------------------------------------------------


def load_weights(path: PathLike, **overrides) -> GPT:
    """Reads a file written by :func:`save_weights`; ``overrides`` replace config fields."""
    return _load_weights(Path(path), "it is damaged: write it again", False, overrides)


def _load_weights(path: Path, fix: str, checked: bool, overrides: dict) -> GPT:
    metadata = _read_safetensors(path, fix, metadata_only=True)
    config, quantized = metadata.get("gristmill_config"), metadata.get("gristmill_quantize")
    if config is None:
        raise CheckpointError(f"{path}: no gristmill_config in its safetensors metadata (not "
                              "written by gristmill); for a Hugging Face GPT-2 folder, pass the "
                              "folder")
    try:
        config = GPTConfig.from_dict({**json.loads(config), **overrides})
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad gristmill_config in its metadata "
                              f"({_first_line(e)}); {fix}") from None
    _check_shapes(config, _safetensors_shapes(path, fix), path, path, fix)
    sd = clean_state_dict(_read_safetensors(path, fix))
    if "transformer.wte.weight" not in sd:
        raise CheckpointError(f"{path}: no transformer.wte.weight tensor; {fix}")
    if quantized is not None:  # a copy written by gristmill.quantize: int8 weights + scales
        from gristmill.quantize import dequantize_state_dict

        try:
            sd = dequantize_state_dict(sd)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}; {fix}") from None
    if not checked:  # a matching checksum already rules damage out
        _check_finite(sd, path, fix)
    if config.tie_embeddings:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    model = _into_model(GPT(config), sd, path, fix)
    if quantized is not None:
        model.quantization = str(quantized)  # inference quantizes it back (gristmill.quantize)
    return model


def _read_hf_tensors(directory: Path) -> tuple[dict, Path]:
    """All tensors of a HF model folder, and the file (or index) they came from."""
    fix = "download or copy the model again"
    if (directory / WEIGHTS).exists():
        return _read_safetensors(directory / WEIGHTS, fix), directory / WEIGHTS
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index, fix)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(
                isinstance(f, str) and "/" not in f and "\\" not in f for f in weight_map.values()):
            raise CheckpointError(f'{index}: expected {{"weight_map": {{tensor: file name}}}}; '
                                  f"{fix}")
        tensors = {}
        for f in sorted(set(weight_map.values())):
            tensors.update(_read_safetensors(directory / f, fix))
        return tensors, index
    if (directory / "pytorch_model.bin").exists():
        return _torch_load(directory / "pytorch_model.bin", fix), directory / "pytorch_model.bin"
    raise FileNotFoundError(f"{directory}: no {WEIGHTS}, model.safetensors.index.json or "
                            "pytorch_model.bin")


def from_hf(path: PathLike, **overrides) -> GPT:
    """Builds a :class:`GPT` from a local HF GPT-2 folder (config.json + weights).

    Both ``GPT2LMHeadModel`` keys (``transformer.h.0...``) and bare ``GPT2Model`` keys
    (``h.0...``, as in OpenAI's original upload) are accepted. Nothing is downloaded.

    Raises:
        FileNotFoundError: when config.json or the weights are missing.
        CheckpointError: a damaged file, or tensors that do not fit the config.
        ValueError: a model type or option this GPT does not implement.
    """
    directory = Path(path)
    cfg_file = directory / META
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found (expected a HF GPT-2 model folder)")
    hf = _read_json(cfg_file, "download or copy the model again")
    if not isinstance(hf, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object (a HF GPT-2 config)")
    fix = "download or copy the model again"
    try:
        config = config_from_hf(hf, **overrides)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{cfg_file}: {_first_line(e)}; {fix}") from None
    tensors, source = _read_hf_tensors(directory)
    if not (isinstance(tensors, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in tensors.items())):
        raise CheckpointError(f"{source}: expected a mapping of tensor names to tensors; {fix}")
    shapes = {k if k.startswith("transformer.") else "transformer." + k: tuple(v.shape)
              for k, v in tensors.items()}
    _check_shapes(config, shapes, cfg_file, source, fix, hf=True)
    try:
        sd = from_hf_state_dict(tensors, config)
    except ValueError as e:
        raise CheckpointError(f"{source}: {_first_line(e)}; {fix}") from None
    _check_finite(sd, source, fix)
    return _into_model(GPT(config), sd, source, fix)


def save_hf(model: GPT, path: PathLike, eos_token_id: int | None = None) -> Path:
    """Writes a HF GPT-2 folder (config.json + model.safetensors) that
    ``GPT2LMHeadModel.from_pretrained`` loads. Only a GPT-2-layout model exports: one with
    layout options (rotary, RMSNorm, ...) is refused before anything is written; it saves as a
    gristmill checkpoint (:func:`save_weights`, training's checkpoints).

    >>> save_hf(GPT(GPTConfig.from_preset("tiny", vocab_size=100)), "/tmp/gm-tiny-hf").name
    'gm-tiny-hf'
    """
    from safetensors.torch import save_file

    directory = Path(path)
    try:  # before anything is written: only GPT-2's layout exists in the HF GPT-2 format
        check_gpt2_layout(model.config)
    except ValueError as e:
        raise ValueError(f"{directory}: {e}") from None
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.cpu() for k, v in to_hf_state_dict(model).items()}
    with atomic_file(directory / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json_atomic(directory / META, config_to_hf(model.config, eos_token_id))
    return directory


def load_model(path: PathLike, which: str = "best", **overrides) -> GPT:
    """A model from a gristmill checkpoint, a training ``out_dir`` (its ``best`` or ``latest``
    checkpoint), a folder holding a :func:`save_weights` file, or a HF GPT-2 folder.

    Raises:
        FileNotFoundError: nothing loadable at ``path``.
        CheckpointError: a damaged or missing file, named, with what to do.
    """
    directory = find_checkpoint(path, which)
    meta = _gristmill_meta(directory)
    if meta is not None:
        weights = _check_file(directory, WEIGHTS, meta)
        model = _load_weights(weights, _fallback(directory), WEIGHTS in meta.get("files", {}),
                              overrides)
        _restore_adapter(model, directory, meta)
        return model
    weights = directory / WEIGHTS
    if weights.exists() and not (directory / META).exists():
        return load_weights(weights, **overrides)
    return from_hf(directory, **overrides)


def _restore_adapter(model: GPT, directory: Path, meta: dict) -> None:
    """Puts back the unmerged LoRA adapter of a fine-tuning run (see :data:`ADAPTER`), so
    sample, eval, chat and serve all see the weights the run trained."""
    lora = meta.get("lora")
    if not isinstance(lora, dict) or lora.get("merged", True) is not False:
        return
    from gristmill.lora import LoraConfig, LoraError, load_lora_state_dict

    state_dict = load_extra_weights(directory, ADAPTER)
    try:
        config = LoraConfig(rank=lora.get("rank"), alpha=lora.get("alpha"),
                            targets=lora.get("targets") or ("attn",))
        load_lora_state_dict(model, state_dict, config, source=str(directory / ADAPTER))
    except LoraError as e:
        raise CheckpointError(f"{directory / META}: lora: {e}; {_fallback(directory)}") from None


def read_run_state(ckpt: PathLike) -> tuple[dict, dict]:
    """``(state.json, config.json)`` of a gristmill checkpoint, for resuming: checked."""
    ckpt = Path(ckpt)
    meta = _gristmill_meta(ckpt)
    if meta is None:
        raise CheckpointError(f"{ckpt / META}: missing or not a gristmill checkpoint's; "
                              f"{_fallback(ckpt)}")
    state = _read_json(_check_file(ckpt, STATE, meta), _fallback(ckpt))
    missing = [k for k in _RUN_STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(meta.get("train"), dict):
        where = ckpt / STATE if missing else ckpt / META
        raise CheckpointError(f"{where}: lacks {', '.join(missing) or 'train'}; "
                              f"{_fallback(ckpt)}")
    return state, meta


def load_extra_weights(ckpt: PathLike, name: str, keys=None) -> dict:
    """A state dict :func:`save_checkpoint` wrote as ``extra_weights[name]`` (or, with
    ``keys``, only those tensors of it), its size and checksum checked."""
    ckpt = Path(ckpt)
    path = _check_file(ckpt, name, _gristmill_meta(ckpt))
    return _read_safetensors(path, _fallback(ckpt), keys=keys)


def load_optimizer_state(ckpt: PathLike, device="cpu") -> dict:
    """The optimizer state saved in a checkpoint, its size and checksum checked."""
    ckpt = Path(ckpt)
    path = _check_file(ckpt, OPTIMIZER, _gristmill_meta(ckpt))
    return _torch_load(path, _fallback(ckpt), device)


# ---- its tokenizer ---------------------------------------------------------------------------


def tokenizer_for(path, model: GPT | None = None, tokenizer=None, required: bool = True):
    """The tokenizer to use with a checkpoint: ``tokenizer`` if given (checked against the
    fingerprint the checkpoint recorded), else the copy saved in the checkpoint, else the HF
    folder's vocab.json + merges.txt / tokenizer.json, else GPT-2's for a 50257-token model.

    Raises:
        ValueError: on a fingerprint mismatch, or when no tokenizer can be found.
    """
    from gristmill.tokenizer import Tokenizer

    ckpt = find_checkpoint(path) if path is not None else None
    meta = (_gristmill_meta(ckpt) if ckpt is not None else None) or {}
    if tokenizer is not None:
        tok = Tokenizer.resolve(tokenizer)
    elif ckpt is not None and (ckpt / TOKENIZER).is_dir():
        tok = Tokenizer.load(ckpt / TOKENIZER)
    elif ckpt is not None and (((ckpt / "vocab.json").exists() and (ckpt / "merges.txt").exists())
                               or (ckpt / "tokenizer.json").exists()):
        tok = Tokenizer.load(ckpt)  # a HF folder's own
    elif model is not None and model.config.vocab_size == 50257:
        tok = Tokenizer.from_name("gpt2")
    elif required:
        raise ValueError(f"no tokenizer found with {path}; pass one (--tokenizer)")
    else:
        return None
    want = meta.get("tokenizer_fingerprint")
    if want and tok.fingerprint != want:
        raise ValueError(f"tokenizer {tok.name!r} (fingerprint {tok.fingerprint[:12]}) is not "
                         f"the one {path} was trained with ({want[:12]})")
    return tok
