"""Fine-tuning a pretrained GPT: a classification head, or instruction following (SFT).

Both kinds share one loop (:func:`_fit`): CPU or CUDA (bf16 autocast), AdamW, DDP through
torchrun, checkpoints written as training writes them (``out_dir/ckpt-NNNNNNN``, checksummed,
atomic; :mod:`gristmill.checkpoint`) and an exact resume from the latest one, the run log
(log.jsonl, loss.png) and a progress bar. Batches group examples of similar length (see
:func:`gristmill.finetune_data.batches_by_length`), so a batch is padded to its own longest
example rather than to the data set's (a classifier in the book's layout pads every text to
one length, and then skips the frozen blocks' work instead: :class:`_FrozenStates`).

Read top to bottom: the task models (a classifier over the GPT's hidden states; the LM loss on
response tokens only), what is trained (all, the last N blocks, or LoRA), the shared loop, then
:func:`finetune_classify` with its report and :class:`Classifier`, and
:func:`finetune_instruct` with the test set's responses and the optional judge.

>>> finetune_classify(data="sms.tsv", text_field="1", label_field="0", model="runs/gpt2",
...                   out_dir="runs/spam")  # doctest: +SKIP
>>> Classifier.load("runs/spam").predict(["You won a prize! Call now"])  # doctest: +SKIP
['spam']
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gristmill.checkpoint import (
    ADAPTER,
    WEIGHTS,
    claim_out_dir,
    find_checkpoint,
    list_checkpoints,
    load_extra_weights,
    load_model,
    load_optimizer_state,
    prune_checkpoints,
    read_best,
    read_run_state,
    save_checkpoint,
    tokenizer_for,
    update_best,
)
from gristmill.config import FINETUNE_RESUME_KEYS, FinetuneConfig, resolve_config
from gristmill.finetune_data import (
    FinetuneDataError,
    Instruction,
    LabelledText,
    balance,
    batches_by_length,
    collate_instruct,
    parse_fractions,
    read_instructions,
    read_labelled,
    segments_of,
    split_indices,
)
from gristmill.model import GPT, PRESETS, GPTConfig, clean_state_dict
from gristmill.outputs import OutputFolderError
from gristmill.progress import progress_bar
from gristmill.prompts import encode_segments_batch
from gristmill.storage import atomic_file, write_atomic, write_json_atomic
from gristmill.train import (
    RunLog,
    TrainingError,
    gather,
    lr_at,
    mean_across,
    rng_state,
    set_rng_state,
    setup_distributed,
)

__all__ = ["Classifier", "ClassifierModel", "finetune_classify", "finetune_instruct",
           "response_loss"]

IGNORE = -100  # the label of a position that is not trained on (PyTorch's default)
HEAD = "head.safetensors"  # a classifier's head, beside its checkpoint's weights
REPORT_JSON, REPORT_MD, CONFUSION_PNG, RESPONSES = (
    "report.json", "report.md", "confusion.png", "test_responses.json")
# What a fine-tuning run writes in its out_dir besides a training run's files.
_OWNED = r"report\.json|report\.md|confusion\.png|test_responses\.json|adapter/[^/]+"
_DEFAULTS = {"classify": {"split": (0.7, 0.1, 0.2), "epochs": 5, "train_blocks": 1},
             "instruct": {"split": (0.85, 0.05, 0.1), "epochs": 2, "train_blocks": -1}}


# ---- the task models -------------------------------------------------------------------------


#: What ClassifierModel reads (see its docstring): the config field's choices.
POOLINGS = FinetuneConfig.__dataclass_fields__["pooling"].metadata["choices"]


class ClassifierModel(nn.Module):
    """A GPT whose LM head is replaced by a linear classifier over the hidden state of each
    text's last real token (``pooling="last"``: the one that has read the whole text; padding
    comes after it, so causal attention never sees it), or the mean over its real tokens.
    ``pooling="padded"`` (the default) is the book's layout: every text padded with
    end-of-text to one length and the last position read, an end-of-text token that has read
    the text and the padding before it (the data counts the padding in the text's length).
    With ``pooling="eot"`` each text is given one end-of-text token only (see
    :class:`_Encoded`) and "last" reads it: shorter rows, batches grouped by length."""

    def __init__(self, gpt: GPT, num_classes: int, pooling: str = "padded"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be {', '.join(POOLINGS)}, got {pooling!r}")
        self.gpt, self.pooling = gpt, pooling
        self.head = nn.Linear(gpt.config.n_embd, num_classes)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor,
                states: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Class logits (B, num_classes) of right-padded ``idx`` (B, T) with ``lengths`` (B,).
        ``states``, ``(k, (B, T, n_embd))``: the output of the first k blocks, which are then
        not run (see :class:`_FrozenStates`)."""
        if states is None:
            h = self.gpt.hidden_states(idx)
        else:
            h = self.gpt.hidden_states(idx, start=states[0], inputs=states[1])
        if self.pooling != "mean":
            h = h[torch.arange(h.shape[0], device=h.device), lengths - 1]
        else:
            real = (torch.arange(h.shape[1], device=h.device) < lengths[:, None]).to(h.dtype)
            h = (h * real[..., None]).sum(1) / lengths[:, None].to(h.dtype)
        return self.head(h)


class _HeadLoss(torch.autograd.Function):
    """The summed cross-entropy of ``h @ w.T`` (a bias-free LM head) against ``targets``, in
    chunks of rows, with both gradients made in the forward pass: each chunk's logits are
    exponentiated once (no log-softmax copy, no zero-filled gradient of the full logits) and
    freed before the next chunk. The matmuls run in ``dtype`` (autocast's), the softmax in
    float32; the 1/sum of each row scales the (N, C) operands instead of the (N, V) logits."""

    @staticmethod
    def forward(ctx, h, w, targets, dtype, rows):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h, dtype=torch.float32) if want_h else None
        grad_w = torch.zeros_like(w, dtype=torch.float32) if want_w else None
        wc = w.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for a in range(0, h.shape[0], rows):
            hc, yc = h[a:a + rows], targets[a:a + rows]
            z = (hc.to(dtype) @ wc.t()).float()
            picked = z.gather(1, yc[:, None])
            top = z.amax(1, keepdim=True)
            z.sub_(top).exp_()
            sums = z.sum(1, keepdim=True)
            total += (sums.log() + top - picked).sum()
            if not (want_h or want_w):
                continue
            inv = sums.reciprocal()  # softmax = z * inv; its gradient: softmax - one_hot
            zc = z.to(dtype)
            if want_h:
                grad_h[a:a + rows] = (zc @ wc).float().mul_(inv).sub_(w[yc].float())
            if want_w:
                scaled = (hc.float() * inv).to(dtype)
                if dtype == torch.float32:
                    grad_w.addmm_(zc.t(), scaled)
                else:
                    grad_w.add_(zc.t() @ scaled)
                grad_w.index_add_(0, yc, hc.float(), alpha=-1)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = h.dtype, w.dtype
        return total

    @staticmethod
    def backward(ctx, grad):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else (grad_h * grad).to(ctx.dtypes[0]),
                None if grad_w is None else (grad_w * grad).to(ctx.dtypes[1]), None, None, None)


def lm_loss_sum(gpt: GPT, h: torch.Tensor, targets: torch.Tensor,
                rows: int | None = None) -> torch.Tensor:
    """The summed next-token cross-entropy of hidden states ``h`` (N, n_embd) against
    ``targets`` (N,) (token ids; drop ignored positions first): through :class:`_HeadLoss`
    for a plain bias-free head (GPT-2's, tied or not; no soft-cap) in chunks of ``rows``
    (default: ~128 MB of float32 logits each), else through the model's own head (a LoRA
    head, a capped one)."""
    if rows is not None and rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    head, cfg = gpt.lm_head, gpt.config
    if type(head) is not nn.Linear or head.bias is not None or cfg.logit_softcap:
        return F.cross_entropy(gpt.head_logits(h).float(), targets, reduction="sum")
    w = head.weight if head.out_features == cfg.vocab_size else head.weight[:cfg.vocab_size]
    on = torch.is_autocast_enabled(h.device.type)
    dtype = torch.get_autocast_dtype(h.device.type) if on else h.dtype
    rows = rows or max(256, 2**25 // w.shape[0])  # ~128 MB of float32 logits
    with torch.autocast(h.device.type, enabled=False):
        return _HeadLoss.apply(h, w, targets, dtype, rows)


class ResponseLoss(nn.Module):
    """The LM loss on labelled positions only: the LM head runs on those rows alone, so the
    (B, T, vocab) logits of prompt and padding positions are never made (and the labelled
    rows' logits only a chunk at a time, :func:`lm_loss_sum`)."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(summed loss, number of labelled positions)``."""
        h = self.gpt.hidden_states(idx)
        keep = labels != IGNORE
        return lm_loss_sum(self.gpt, h[keep], labels[keep]), keep.sum()


def response_loss(gpt: GPT, idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not -100 (see :class:`ResponseLoss`)."""
    total, n = ResponseLoss(gpt)(idx, labels)
    return total / n.clamp(min=1)


# ---- what is trained -------------------------------------------------------------------------


def _lora_config(cfg: FinetuneConfig):
    from gristmill.lora import LoraConfig

    return LoraConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                      targets=cfg.lora_targets)


def _choose_trainable(task_model: nn.Module, gpt: GPT, cfg: FinetuneConfig, blocks: int,
                      head: nn.Module | None) -> int:
    """Sets requires_grad: LoRA adapters (and a classification head), or the last ``blocks``
    blocks with the final norm and the head, or everything (``blocks`` -1). Returns the
    number of trainable parameters."""
    if cfg.lora_rank > 0:
        from gristmill.lora import apply_lora

        apply_lora(task_model, _lora_config(cfg), **({"head": "head"} if head is not None else {}))
        if head is not None:  # a new head learns in full (peft's modules_to_save)
            for p in head.parameters():
                p.requires_grad_(True)
    elif blocks >= 0:
        for p in task_model.parameters():
            p.requires_grad_(False)
        n = len(gpt.transformer.h)
        parts = [*gpt.transformer.h[max(0, n - blocks):], gpt.transformer.ln_f,
                 head if head is not None else gpt.lm_head]
        for part in parts:
            for p in part.parameters():
                p.requires_grad_(True)
    return sum(p.numel() for p in task_model.parameters() if p.requires_grad)


def _optimizer(task_model: nn.Module, cfg: FinetuneConfig, device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, decaying only the >= 2-D ones (as pretraining);
    torch's fused kernel on CPU and CUDA (on CPU about 6x its per-tensor loop's speed)."""
    params = [p for p in task_model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused)


# ---- the shared loop -------------------------------------------------------------------------


@dataclass
class _Task:
    """What differs between the kinds: the data as flat arrays, and how a batch becomes a loss."""

    module: nn.Module  # ClassifierModel or ResponseLoss
    gpt: GPT
    lengths: np.ndarray  # of each training example, for grouping
    train_batch: Callable  # (index array, device) -> loss tensor (mean)
    evaluate: Callable  # (model, rank, world) -> dict with "val_loss"
    meta: dict  # added to each checkpoint's config.json
    extra_weights: Callable  # () -> {file: state dict}
    lora_state: Callable | None = None


def _autocast(cfg: FinetuneConfig, device):
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.type == "cuda" else
                                                   "float32")
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be auto, bfloat16 or float32, got {dtype!r}")
    if dtype == "bfloat16":
        return dtype, lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return dtype, contextlib.nullcontext


def _saved_gpt_state(task: _Task) -> tuple[dict, bool]:
    """The GPT's weights as checkpoints hold them, and whether LoRA adapters are folded in:
    they are where they can be (into a copy, never the model being trained); an adapter on
    GPT-2's tied head cannot be, and the frozen base weights are saved (the adapter beside)."""
    if task.lora_state is None:
        return task.gpt.state_dict(), False
    from gristmill.lora import LoraError, merge_lora

    merged = copy.deepcopy(task.gpt)
    try:
        merge_lora(merged)
    except LoraError:
        return {k: v for k, v in task.gpt.state_dict().items() if ".lora_" not in k}, False
    return merged.state_dict(), True


def _fit(task: _Task, cfg: FinetuneConfig, out_dir: Path, tokenizer, resume_from, state,
         rank: int, world: int, device, say) -> dict:
    """Trains ``task`` for ``cfg.epochs`` (or ``cfg.max_steps``); returns the run's summary."""
    master = rank == 0
    dtype, autocast = _autocast(cfg, device)
    model = task.module.to(device)
    optimizer = _optimizer(model, cfg, device)
    if resume_from is not None:
        optimizer.load_state_dict(load_optimizer_state(resume_from, device))
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                        else None)
    n_batches = len(batches_by_length(task.lengths, cfg.batch_size, cfg.seed, 0))
    per_epoch = n_batches // world
    if per_epoch < 1:
        raise ValueError(f"{len(task.lengths)} training example(s) make {n_batches} batch(es) "
                         f"of {cfg.batch_size}, fewer than the {world} processes")
    total = cfg.max_steps or per_epoch * cfg.epochs
    cfg.max_steps = total  # the schedule's end (lr_at reads it)
    torch.manual_seed(cfg.seed + rank)  # dropout differs per rank
    step, best_val, epoch_times, epoch_cpu = 0, None, [], []
    if state is not None:
        step, best_val = state["step"], state["best_val_loss"]
        epoch_times = state.get("epoch_seconds", [])
        epoch_cpu = state.get("epoch_cpu_seconds", [])
        set_rng_state(state["rng"][rank], device)
    log = RunLog(out_dir, step) if master else None
    eval_every = cfg.eval_interval or per_epoch

    def checkpoint(val_loss):
        rngs = gather(rng_state(device), world)
        path = None
        if master:
            run_state = {"step": step, "tokens_seen": 0, "best_val_loss": best_val,
                         "world_size": world, "samplers": [{"step": step}] * world, "rng": rngs,
                         "epoch_seconds": epoch_times, "epoch_cpu_seconds": epoch_cpu}
            meta = {"format": "gristmill-checkpoint-1", "step": step, "val_loss": val_loss,
                    "model": task.gpt.config.to_dict(), "train": cfg.to_dict(),
                    "n_vocab": tokenizer.n_vocab, "eot_token": tokenizer.eot_token,
                    "tokenizer_fingerprint": tokenizer.fingerprint, **task.meta}
            weights = task.extra_weights()
            gpt_sd, merged = _saved_gpt_state(task)
            if task.lora_state is not None:
                weights[ADAPTER] = task.lora_state()
                meta["lora"] = {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha,
                                "targets": cfg.lora_targets, "merged": merged}
            path = save_checkpoint(out_dir, step, task.gpt, clean_state_dict(gpt_sd),
                                   optimizer.state_dict(), run_state, meta, tokenizer, weights)
            update_best(out_dir, path, step, val_loss)
            prune_checkpoints(out_dir, cfg.keep_last)
        if world > 1:
            dist.barrier()
        return path

    bar = progress_bar(master and cfg.progress, total=total, initial=step, unit="step")
    losses, val, last_ckpt = [], {}, resume_from
    try:
        while step < total:
            epoch, pos = divmod(step, per_epoch)
            batches = batches_by_length(task.lengths, cfg.batch_size, cfg.seed, epoch)
            model.train()
            # the training steps' time (wall and this process's CPU), no evaluation
            t0, epoch_clock, c0, cpu_clock = time.perf_counter(), 0.0, time.process_time(), 0.0
            while pos < per_epoch and step < total:
                lr = lr_at(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast():
                    loss = task.train_batch(model, batches[pos * world + rank], device)
                loss.backward()
                loss_value = mean_across(loss.detach(), world).item()
                if not math.isfinite(loss_value):
                    raise TrainingError(f"loss is {loss_value} at step {step + 1}; stopped "
                                        f"before the optimizer step. Last good checkpoint: "
                                        f"{last_ckpt or 'none'}. Try a lower lr ({cfg.lr})")
                clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step, pos = step + 1, pos + 1
                losses.append(loss_value)
                now = time.perf_counter()
                epoch_clock += now - t0
                cpu_now = time.process_time()
                cpu_clock += cpu_now - c0
                if master:
                    log.write({"step": step, "epoch": epoch + 1, "loss": loss_value, "lr": lr,
                               "grad_norm": float(grad_norm), "dt_ms": (now - t0) * 1e3})
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}", epoch=epoch + 1)
                    if not bar and step % cfg.log_interval == 0:
                        say(f"step {step}: loss {loss_value:.4f}, lr {lr:.3e}")
                t0, c0 = now, cpu_now
                if pos == per_epoch:
                    epoch_times.append(epoch_clock)
                    epoch_cpu.append(cpu_clock)
                if step % eval_every == 0 or step == total:
                    val = task.evaluate(model, rank, world)
                    if val.get("val_loss") is not None:
                        best_val = val["val_loss"] if best_val is None else min(best_val,
                                                                               val["val_loss"])
                    last_ckpt = checkpoint(val.get("val_loss")) or last_ckpt
                    if master:
                        log.write({"step": step, **val})
                        shown = ", ".join(f"{k} {v:.4f}" for k, v in val.items()
                                          if isinstance(v, float))
                        (bar.write if bar else say)(f"step {step} (epoch {epoch + 1}): {shown}")
                        if cfg.plot:
                            log.plot()
                    model.train()
                    t0, c0 = time.perf_counter(), time.process_time()
    except torch.OutOfMemoryError as e:
        raise TrainingError(f"out of memory at step {step + 1} with batches of {cfg.batch_size} "
                            "examples: lower --batch-size or --max-length") from e
    finally:
        bar.close()
        if log is not None:
            log.close()
    return {"step": step, "train_loss": losses[-1] if losses else None, "losses": losses,
            "best_val_loss": best_val, "checkpoint": str(last_ckpt) if last_ckpt else None,
            "epoch_seconds": epoch_times, "epoch_cpu_seconds": epoch_cpu, "dtype": dtype, **val}


def _settle(cfg: FinetuneConfig, kind: str) -> None:
    """The task's defaults filled in, the settings checked (before any process group)."""
    d = _DEFAULTS[kind]
    if cfg.epochs is None:
        cfg.epochs = d["epochs"]
    if cfg.train_blocks is None:
        cfg.train_blocks = d["train_blocks"]
    if cfg.resume not in ("auto", "must", "no"):
        raise ValueError(f"resume must be auto, must or no, got {cfg.resume!r}")
    if not cfg.model:
        raise ValueError("no model: pass --model (a gristmill run, a Hugging Face GPT-2 folder "
                         "or a preset)")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    if cfg.cache_mb < 0:
        raise ValueError(f"cache_mb must be >= 0 (0: no cache), got {cfg.cache_mb}")


def _start(cfg: FinetuneConfig, kind: str, inputs: list, rank: int, world: int):
    """The out_dir claimed and the checkpoint to resume from (checked): what both kinds do
    before building a model."""
    out_dir = Path(cfg.out_dir)
    refusal = None
    if rank == 0:
        try:
            claim_out_dir(out_dir, [p for p in inputs if p], command="finetune", also=_OWNED)
        except OutputFolderError as e:
            refusal = str(e)
    refusal = gather(refusal, world)[0]
    if refusal is not None:
        raise OutputFolderError(refusal)
    ckpts = gather(list_checkpoints(out_dir) if rank == 0 else None, world)[0]
    if cfg.resume == "no" and ckpts:
        raise ValueError(f"{out_dir} already has checkpoints ({ckpts[-1].name}); use resume=auto "
                         "to continue, or another out_dir")
    if cfg.resume == "must" and not ckpts:
        raise FileNotFoundError(f"resume=must but {out_dir} has no checkpoint")
    resume_from = ckpts[-1] if ckpts else None
    state = saved = None
    if resume_from is not None:
        state, saved = read_run_state(resume_from)
        read_best(out_dir)
        if saved.get("task") != kind:
            raise ValueError(f"{resume_from}: a {saved.get('task') or 'training'} checkpoint, "
                             f"not a {kind} fine-tuning one; use another out_dir")
        if state["world_size"] != world:
            raise TrainingError(f"{resume_from} was written by {state['world_size']} process(es); "
                                f"resume with the same number (now {world})")
        changed = [k for k in FINETUNE_RESUME_KEYS if saved["train"].get(k) != getattr(cfg, k)]
        if changed:
            raise ValueError(f"{resume_from}: {', '.join(changed)} differ from the run being "
                             "resumed; use the same settings or another out_dir")
    return out_dir, resume_from, state


def _base_model(cfg: FinetuneConfig, resume_from):
    """(GPT, tokenizer): from the checkpoint resumed (without LoRA) or ``cfg.model``."""
    overrides = {"dropout": cfg.dropout} if cfg.dropout is not None else {}
    if cfg.model in PRESETS and not Path(cfg.model).exists():
        from gristmill.tokenizer import Tokenizer

        tok = Tokenizer.resolve(cfg.tokenizer or "gpt2")
        torch.manual_seed(cfg.seed)
        gpt = GPT(GPTConfig.from_preset(cfg.model, vocab_size=tok.n_vocab, **overrides))
        if resume_from is not None and cfg.lora_rank == 0:
            gpt = load_model(resume_from, **overrides)
        return gpt, tok
    source = resume_from if resume_from is not None and cfg.lora_rank == 0 else cfg.model
    gpt = load_model(source, **overrides)
    tok = tokenizer_for(cfg.model, gpt, cfg.tokenizer or None)
    return gpt, tok


def _restore_lora(task_model: nn.Module, resume_from) -> None:
    sd = load_extra_weights(resume_from, ADAPTER)
    params = dict(task_model.named_parameters())
    missing = [k for k in sd if k + ".weight" not in params and k not in params]
    if missing:
        raise ValueError(f"{resume_from / ADAPTER}: {missing[0]} names no LoRA layer of the "
                         "model; use the same --lora-* settings as the run resumed")
    with torch.no_grad():
        for k, v in sd.items():
            params[k + ".weight" if k + ".weight" in params else k].copy_(v)


def _finish(owns_pg: bool) -> None:
    if owns_pg:
        dist.destroy_process_group()


# ---- classification --------------------------------------------------------------------------


def _classify_data(cfg: FinetuneConfig) -> tuple[list[str], dict[str, list[LabelledText]]]:
    """The labels (sorted) and the train/val/test rows, from one file split or three files."""
    read = lambda p: read_labelled(p, cfg.text_field, cfg.label_field)  # noqa: E731
    if not cfg.data:
        raise ValueError("no data: pass --data FILE (.tsv, .csv, .jsonl or .json)")
    rows = read(cfg.data)
    if cfg.val_data or cfg.test_data:
        splits = {"train": rows, "val": read(cfg.val_data) if cfg.val_data else [],
                  "test": read(cfg.test_data) if cfg.test_data else []}
        if cfg.balance:
            splits["train"] = [rows[i] for i in balance([r.label for r in rows], cfg.seed)]
        labels = sorted({r.label for r in splits["train"]})
        for name, path in (("val", cfg.val_data), ("test", cfg.test_data)):
            for r in splits[name]:
                if r.label not in labels:
                    raise FinetuneDataError(f"{path}:{r.line}: label {r.label!r} is not among the "
                                            f"training labels ({', '.join(labels)})")
        return labels, splits
    if cfg.balance:
        rows = [rows[i] for i in balance([r.label for r in rows], cfg.seed)]
    fractions = parse_fractions(cfg.split, _DEFAULTS["classify"]["split"])
    parts = split_indices(len(rows), fractions, cfg.seed)
    splits = {name: [rows[i] for i in idx] for name, idx in zip(("train", "val", "test"), parts)}
    return sorted({r.label for r in rows}), splits


class _Encoded:
    """Texts as one flat token array with offsets, and their label ids. Each text keeps its
    first ``limit`` tokens; for ``pooling="eot"`` its first ``limit - 1`` and end-of-text
    after them, for ``"padded"`` it is padded to ``limit`` (see :meth:`pad_to`). ``lengths``
    counts what follows the text's own tokens too: the positions a batch row gives it."""

    def __init__(self, tokenizer, rows: Sequence[LabelledText], labels: list[str], limit: int,
                 pooling: str):
        index = {name: i for i, name in enumerate(labels)}
        self.end = tokenizer.eot_token if pooling == "eot" else None
        tokens, offsets = tokenizer.encode_batch_to_numpy([r.text for r in rows])
        offsets = np.asarray(offsets, dtype=np.int64)
        extra = 0 if self.end is None else 1
        self.tokens, self.starts = tokens.astype(np.int64), offsets[:-1]
        self.kept = np.minimum(np.diff(offsets), limit - extra)  # the text's own tokens
        self.lengths = self.kept + extra
        self.labels = np.array([index[r.label] for r in rows], dtype=np.int64)
        self.states: _FrozenStates | None = None
        if pooling == "padded":
            self.pad_to(limit)

    def pad_to(self, length: int) -> None:
        """Every text cut to ``length`` tokens and padded to it (the book's layout)."""
        self.kept = np.minimum(self.kept, length)
        self.lengths = np.full_like(self.kept, length)

    def batch(self, index: np.ndarray, pad: int):
        lengths = self.lengths[index]
        x = np.full((len(index), max(1, int(lengths.max(initial=1)))), pad, dtype=np.int64)
        for row, i in enumerate(index):
            n = self.kept[i]
            x[row, :n] = self.tokens[self.starts[i]:self.starts[i] + n]
            if self.end is not None:
                x[row, n] = self.end
        return x, lengths.astype(np.int64), self.labels[index]


def frozen_blocks(gpt: GPT) -> int:
    """How many leading blocks nothing trains (nor the embeddings before them), and no dropout
    changes: their output on a text is the same at every step."""
    if gpt.config.dropout > 0 or any(p.requires_grad for name, p in gpt.named_parameters()
                                     if name.startswith(("transformer.wte", "transformer.wpe"))):
        return 0
    k = 0
    for block in gpt.transformer.h:
        if any(p.requires_grad for p in block.parameters()):
            break
        k += 1
    return k


class _FrozenStates:
    """The output of the first ``k`` blocks at each text's positions, for one split: computed
    at first use, so that a step runs only the blocks that train. With the book's default
    (the last block trains) that skips most of each forward pass from the second epoch on.

    The states are kept in an unlinked temporary file in the run's folder, read back a batch
    at a time: the page cache holds them while memory allows, and the process's own memory
    does not grow with the data. Padding positions read zeros: the blocks that train never
    carry them into a real position (attention is causal)."""

    def __init__(self, gpt: GPT, data: _Encoded, k: int, pad: int, batch_size: int,
                 folder: Path):
        self.gpt, self.data, self.k, self.pad, self.batch_size = gpt, data, k, pad, batch_size
        self.folder, self.file = folder, None
        row_bytes = gpt.config.n_embd * 4  # float32, as the residual stream
        self.offsets = np.concatenate([[0], np.cumsum(data.lengths)]) * row_bytes
        self.nbytes = int(self.offsets[-1])

    @torch.no_grad()
    def _fill(self, device, autocast) -> None:
        file = tempfile.TemporaryFile(dir=self.folder, prefix=".frozen-states-")
        try:
            for b in batches_by_length(self.data.lengths, self.batch_size, 0, 0, shuffle=False):
                x, lengths, _ = self.data.batch(b, self.pad)
                with autocast():
                    h = self.gpt.hidden_states(torch.from_numpy(x).to(device), stop=self.k)
                h = h.float().cpu().numpy()
                for row, i in enumerate(b):
                    file.seek(int(self.offsets[i]))
                    file.write(h[row, :lengths[row]].tobytes())
            file.flush()
        except BaseException:
            file.close()
            raise
        self.file = file

    def batch(self, index: np.ndarray, width: int, device, autocast) -> tuple[int, torch.Tensor]:
        """``(k, (len(index), width, n_embd))``: the rows of ``index`` as the forward takes them."""
        if self.file is None:
            self._fill(device, autocast)
        out = np.zeros((len(index), width, self.gpt.config.n_embd), dtype=np.float32)
        for row, i in enumerate(index):
            want = int(self.offsets[i + 1] - self.offsets[i])
            if want == 0:
                continue
            self.file.seek(int(self.offsets[i]))
            if self.file.readinto(memoryview(out[row, :self.data.lengths[i]]).cast("B")) != want:
                raise OSError(f"{self.folder}: the frozen blocks' temporary file was cut short")
        return self.k, torch.from_numpy(out).to(device)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _to(arrays, device):
    out = [torch.from_numpy(a) for a in arrays]
    if device.type == "cuda":
        out = [t.pin_memory().to(device, non_blocking=True) for t in out]
    return out


def _states(data: _Encoded, index: np.ndarray, x: torch.Tensor, autocast):
    """The frozen blocks' output for a batch, when ``data`` keeps it. If its file cannot be
    written or read (a full disk), the blocks are run every step from then on."""
    if data.states is None:
        return None
    try:
        return data.states.batch(index, x.shape[1], x.device, autocast)
    except OSError as e:
        warnings.warn(f"the frozen blocks' output is recomputed at every step: {e}",
                      stacklevel=2)
        data.states.close()
        data.states = None
        return None


@torch.no_grad()
def _predict(model: nn.Module, data: _Encoded, batch_size: int, pad: int, device, autocast,
             rank: int = 0, world: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities (N, C), mean loss); each rank takes every world-th batch."""
    was = model.training
    model.eval()
    batches = batches_by_length(data.lengths, batch_size, 0, 0, shuffle=False)
    mine = []
    for b in batches[rank::world]:
        x, lengths, y = _to(data.batch(b, pad), device)
        with autocast():
            logits = model(x, lengths, _states(data, b, x, autocast)).float()
        mine.append((b, logits.softmax(-1).cpu().numpy()))
    model.train(was)
    parts = [p for got in gather(mine, world) for p in got]
    n_classes = parts[0][1].shape[1] if parts else 0
    probs = np.zeros((len(data.labels), n_classes), dtype=np.float32)
    for b, p in parts:
        probs[b] = p
    picked = probs[np.arange(len(probs)), data.labels] if len(probs) else np.zeros(0)
    loss = float(-np.log(np.maximum(picked, 1e-12)).mean()) if len(picked) else None
    return probs, loss


def class_metrics(truth: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, the confusion matrix (rows: truth) and precision/recall/F1 per label."""
    C = len(labels)
    cm = np.zeros((C, C), dtype=np.int64)
    np.add.at(cm, (truth, pred), 1)
    per = {}
    for i, name in enumerate(labels):
        tp, predicted, actual = cm[i, i], cm[:, i].sum(), cm[i].sum()
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        per[name] = {"precision": float(p), "recall": float(r),
                     "f1": float(2 * p * r / (p + r)) if p + r else 0.0, "support": int(actual)}
    return {"accuracy": float((truth == pred).mean()) if len(truth) else None,
            "confusion": cm.tolist(), "per_class": per}


def _plot_confusion(path: Path, cm: list, labels: list[str], title: str) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return
    cm = np.asarray(cm)
    fig = Figure(figsize=(1.2 * len(labels) + 2.5, 1.2 * len(labels) + 2))
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > cm.max() / 2 else "black")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        FigureCanvasAgg(fig).print_png(str(tmp))


def finetune_classify(config: FinetuneConfig | None = None, *, config_file=None,
                      **overrides) -> dict:
    """Fine-tunes a pretrained GPT as a text classifier; returns the report (also written to
    ``out_dir/report.json`` and ``report.md``, with ``confusion.png``).

    The saved classifier is the run's best checkpoint (by validation loss): the GPT's weights,
    ``head.safetensors`` and, in config.json, ``classifier`` (labels, pooling, max_length).
    Load it with :meth:`Classifier.load`.

    Args:
        config: a :class:`~gristmill.config.FinetuneConfig`; ``config_file`` (TOML/YAML/JSON)
            and ``overrides`` (its keys) replace fields, checked.

    Raises:
        FinetuneDataError: bad data (file and line named); ValueError: bad settings;
        TrainingError: NaN loss, out of memory.
    """
    return _run(config, config_file, overrides, "classify", _classify)


def _run(config, config_file, overrides, kind: str, body) -> dict:
    """Settings resolved and checked, the process group and output folder set up, then
    ``body`` (the kind's own run); the process group is closed however it ends."""
    cfg = resolve_config(config_file, overrides, cls=FinetuneConfig, base=config)
    inputs = [cfg.data, cfg.val_data, cfg.test_data, cfg.model if Path(cfg.model).exists()
              else ""]
    _settle(cfg, kind)
    rank, world, device, owns_pg = setup_distributed(cfg)
    try:
        out_dir, resume_from, state = _start(cfg, kind, inputs, rank, world)
        return body(cfg, rank, world, device, out_dir, resume_from, state)
    finally:
        _finish(owns_pg)


def _classify(cfg, rank, world, device, out_dir, resume_from, state) -> dict:
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    labels, splits = _classify_data(cfg)
    if len(labels) < 2:
        raise FinetuneDataError(f"{cfg.data}: one label only ({labels[0]!r}); a classifier "
                                "needs two or more")
    if not splits["val"]:
        raise ValueError("the validation split is empty: more data, a larger val fraction "
                         "(--split) or --val-data")
    gpt, tok = _base_model(cfg, resume_from)
    limit = min(cfg.max_length or gpt.config.block_size, gpt.config.block_size)
    train = _Encoded(tok, splits["train"], labels, limit, cfg.pooling)
    if cfg.pooling == "padded" and not cfg.max_length:  # the book: to the longest training text
        limit = max(1, int(train.kept.max(initial=1)))
        train.pad_to(limit)
    enc = {"train": train, **{k: _Encoded(tok, splits[k], labels, limit, cfg.pooling)
                              for k in ("val", "test")}}
    pad = tok.eot_token
    torch.manual_seed(cfg.seed)
    model = ClassifierModel(gpt, len(labels), cfg.pooling)
    trainable = _choose_trainable(model, gpt, cfg, cfg.train_blocks, model.head)
    if resume_from is not None:
        model.head.load_state_dict(load_extra_weights(resume_from, HEAD))
        if cfg.lora_rank > 0:
            _restore_lora(model, resume_from)
    _, autocast = _autocast(cfg, device)
    # this process's budget, and never more than half the disk's free space
    k = frozen_blocks(gpt)
    room = min(cfg.cache_mb * 2**20, shutil.disk_usage(out_dir).free // 2)
    for name in ("train", "val", "test"):  # train first: it is read every epoch
        states = _FrozenStates(gpt, enc[name], k, pad, cfg.batch_size * 2, out_dir)
        if k and 0 < states.nbytes <= room:
            enc[name].states = states
            room -= states.nbytes

    def train_batch(m, index, dev):
        x, lengths, y = _to(train.batch(index, pad), dev)
        return F.cross_entropy(m(x, lengths, _states(train, index, x, autocast)).float(), y)

    def evaluate(m, r, w):
        probs, loss = _predict(m, enc["val"], cfg.batch_size * 2, pad, device, autocast, r, w)
        return {"val_loss": loss, "val_accuracy": float((probs.argmax(1) == enc["val"].labels)
                                                        .mean())}

    meta = {"task": "classify",
            "classifier": {"labels": labels, "pooling": cfg.pooling, "max_length": limit}}
    task = _Task(model, gpt, train.lengths, train_batch, evaluate, meta,
                 lambda: {HEAD: model.head.state_dict()},
                 (lambda: _lora_tensors(model)) if cfg.lora_rank > 0 else None)
    say(f"gristmill finetune classify: {len(labels)} labels, {len(splits['train'])}/"
        f"{len(splits['val'])}/{len(splits['test'])} train/val/test texts, "
        f"{trainable:,} of {sum(p.numel() for p in model.parameters()):,} parameters trained"
        + (f", resuming from {resume_from.name}" if resume_from else ""))
    try:
        result = _fit(task, cfg, out_dir, tok, resume_from, state, rank, world, device, say)
        # -- the report: the saved classifier (best checkpoint) on val and test
        best = find_checkpoint(out_dir, "best")
        if _best_in_memory(task, best, result["step"]):
            clf = Classifier(model, tok, labels, limit)
        else:  # LoRA layers in memory, merged weights on disk: a fresh copy
            clf = Classifier.load(best, device=device, tokenizer=tok)
        report = {"task": "classify", "checkpoint": str(best), "labels": labels,
                  "examples": {k: len(v) for k, v in splits.items()},
                  "trainable_params": trainable,
                  "steps": result["step"], "epoch_seconds": result["epoch_seconds"],
                  "epoch_cpu_seconds": result["epoch_cpu_seconds"],
                  "train_loss": result["train_loss"]}
        for name in ("val", "test"):
            if not splits[name]:
                continue
            probs, loss = _predict(clf.model, enc[name], cfg.batch_size * 2, pad, device,
                                   autocast, rank, world)
            report[name] = {"loss": loss,
                            **class_metrics(enc[name].labels, probs.argmax(1), labels)}
        report["cached_blocks"] = {n: k for n, e in enc.items() if e.states is not None}
        if master:
            write_json_atomic(out_dir / REPORT_JSON, report)
            write_atomic(out_dir / REPORT_MD, _classify_markdown(report))
            shown = "test" if "test" in report else "val"
            if cfg.plot:
                _plot_confusion(out_dir / CONFUSION_PNG, report[shown]["confusion"], labels,
                                f"{shown}: accuracy {report[shown]['accuracy']:.1%}")
        return report
    finally:  # the temporary files' space back now, not when a traceback lets them go
        for data in enc.values():
            if data.states is not None:
                data.states.close()


def _best_in_memory(task: _Task, best: Path, step: int) -> bool:
    """Makes the model in memory the best checkpoint's (reading its weights into it, without a
    second model), unless it holds LoRA layers and is not that checkpoint already."""
    if best.name == f"ckpt-{step:07d}":
        return True
    if task.lora_state is not None:
        return False
    # what did not train is what is in memory already: only the rest is read
    trained = [k for k, p in task.gpt.named_parameters() if p.requires_grad]
    task.gpt.load_state_dict(load_extra_weights(best, WEIGHTS, keys=trained), strict=False)
    extra = task.extra_weights()
    for name in extra:
        task.module.get_submodule(name.split(".")[0]).load_state_dict(
            load_extra_weights(best, name))
    return True


def _lora_tensors(module: nn.Module) -> dict:
    from gristmill.lora import lora_state_dict

    return lora_state_dict(module)


def _classify_markdown(report: dict) -> str:
    lines = ["# Classification report", "", f"Checkpoint: `{report['checkpoint']}`  ",
             f"Examples (train/val/test): {report['examples']['train']}/"
             f"{report['examples']['val']}/{report['examples']['test']}  ",
             f"Trainable parameters: {report['trainable_params']:,}", ""]
    for name in ("val", "test"):
        if name not in report:
            continue
        r = report[name]
        lines += [f"## {name}: accuracy {r['accuracy']:.2%}, loss {r['loss']:.4f}", "",
                  "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | "
                  f"{v['support']} |" for k, v in r["per_class"].items()]
        lines += ["", "Confusion matrix (rows: true, columns: predicted; order "
                  f"{', '.join(report['labels'])}): `{r['confusion']}`", ""]
    return "\n".join(lines)


class Classifier:
    """A fine-tuned classifier: ``Classifier.load(run).predict(texts)``.

    >>> clf = Classifier.load("runs/spam")  # doctest: +SKIP
    >>> clf.labels, clf.predict(["Free entry! Text WIN to 80086"])  # doctest: +SKIP
    (['ham', 'spam'], ['spam'])
    """

    def __init__(self, model: ClassifierModel, tokenizer, labels: list[str], max_length: int):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.labels, self.max_length = list(labels), max_length

    @classmethod
    def load(cls, path, which: str = "best", device=None, tokenizer=None) -> Classifier:
        """From a ``gristmill finetune classify`` run (its best or latest checkpoint) or one
        of its checkpoints.

        Raises:
            ValueError: ``path`` is not a classifier's; CheckpointError: a damaged file.
        """
        ckpt = find_checkpoint(path, which)
        _, meta = read_run_state(ckpt)
        info = meta.get("classifier")
        if meta.get("task") != "classify" or not isinstance(info, dict):
            raise ValueError(f"{ckpt}: not a classifier (one written by gristmill finetune "
                             "classify)")
        gpt = load_model(ckpt)
        model = ClassifierModel(gpt, len(info["labels"]), info.get("pooling", "last"))
        model.head.load_state_dict(load_extra_weights(ckpt, HEAD))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        tok = tokenizer if tokenizer is not None and not isinstance(tokenizer, str) \
            else tokenizer_for(ckpt, gpt, tokenizer)
        return cls(model.to(device), tok, info["labels"], int(info["max_length"]))

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(N, labels) probabilities."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [LabelledText(t, self.labels[0], i + 1) for i, t in enumerate(texts)]
        if not rows:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        device = next(self.model.parameters()).device
        enc = _Encoded(self.tokenizer, rows, self.labels, self.max_length, self.model.pooling)
        enc.lengths = np.maximum(enc.lengths, 1)  # an empty text reads one pad token
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) \
            if device.type == "cuda" else contextlib.nullcontext
        return _predict(self.model, enc, batch_size, self.tokenizer.eot_token, device,
                        autocast)[0]

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[str]:
        """The most likely label of each text."""
        return [self.labels[i] for i in self.predict_proba(texts, batch_size).argmax(1)]


# ---- instruction fine-tuning -----------------------------------------------------------------


def _instruct_data(cfg: FinetuneConfig) -> dict[str, list[tuple[Instruction, str]]]:
    """train/val/test records, each with the file it came from."""
    if not cfg.data:
        raise ValueError("no data: pass --data FILE (alpaca .json/.jsonl or chat .jsonl)")
    rows = [(r, cfg.data) for r in read_instructions(cfg.data)]
    if cfg.val_data or cfg.test_data:
        return {"train": rows,
                "val": [(r, cfg.val_data) for r in read_instructions(cfg.val_data)]
                if cfg.val_data else [],
                "test": [(r, cfg.test_data) for r in read_instructions(cfg.test_data)]
                if cfg.test_data else []}
    fractions = parse_fractions(cfg.split, _DEFAULTS["instruct"]["split"])
    parts = split_indices(len(rows), fractions, None)  # in order, as the book
    return {name: [rows[i] for i in idx] for name, idx in zip(("train", "val", "test"), parts)}


class _Examples:
    """Instruction examples as flat arrays: token ids, a target flag per id, offsets."""

    def __init__(self, tokenizer, rows, block_size: int, loss_on_prompt: bool):
        self.tokens, self.targets, self.offsets = encode_segments_batch(
            tokenizer, [segments_of(r) for r, _ in rows])
        if loss_on_prompt:
            self.targets = np.ones_like(self.targets)
        sizes = np.diff(self.offsets)
        too_long = np.flatnonzero(sizes - 1 > block_size)
        if len(too_long):
            r, path = rows[too_long[0]]
            raise FinetuneDataError(f"{path}:{r.line}: the example is {sizes[too_long[0]]:,} "
                                    f"tokens, longer than the model's context of {block_size:,} "
                                    "(+1); shorten it or leave it out")
        self.lengths = sizes - 1

    def batch(self, index: np.ndarray, pad: int):
        return collate_instruct(self.tokens, self.targets, self.offsets, index, pad, IGNORE)


@torch.no_grad()
def _lm_loss(model, data: _Examples, batch_size: int, pad: int, device, autocast,
             rank: int = 0, world: int = 1) -> float | None:
    """Mean loss per labelled token over ``data`` (token-weighted across batches)."""
    if not len(data.lengths):
        return None
    was = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for b in batches_by_length(data.lengths, batch_size, 0, 0, shuffle=False)[rank::world]:
        x, y = _to(data.batch(b, pad), device)
        with autocast():
            loss, n = model(x, y)
        total += torch.stack([loss.double(), n.double()])
    model.train(was)
    if world > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1].clamp(min=1))


def finetune_instruct(config: FinetuneConfig | None = None, *, config_file=None,
                      **overrides) -> dict:
    """Instruction fine-tuning (SFT) of a pretrained GPT on Alpaca records or chat
    conversations (see :mod:`gristmill.prompts`); the loss is on the responses only (each
    ended by end-of-text, which is a target) unless ``loss_on_prompt``.

    After training: the validation loss, the test set's responses (greedy, by the best
    checkpoint) in ``out_dir/test_responses.json`` (the records with ``model_response``
    added), and with ``judge_url`` a 0-100 score of each by a judge model. The checkpoints
    are plain GPT checkpoints with ``"template": "alpaca"`` in config.json, so ``gristmill
    sample``/``chat`` load them.

    Raises:
        FinetuneDataError: bad data (file and line named), an example longer than the context;
        ValueError: bad settings; TrainingError: NaN loss, out of memory.
    """
    return _run(config, config_file, overrides, "instruct", _instruct)


def _instruct(cfg, rank, world, device, out_dir, resume_from, state) -> dict:
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    splits = _instruct_data(cfg)
    gpt, tok = _base_model(cfg, resume_from)
    block = gpt.config.block_size
    data = {k: _Examples(tok, v, block, cfg.loss_on_prompt) for k, v in splits.items()}
    pad = tok.eot_token
    model = ResponseLoss(gpt)
    trainable = _choose_trainable(gpt, gpt, cfg, cfg.train_blocks, None)  # adapters: GPT names
    if resume_from is not None and cfg.lora_rank > 0:
        _restore_lora(gpt, resume_from)
    _, autocast = _autocast(cfg, device)
    train = data["train"]

    def train_batch(m, index, dev):
        x, y = _to(train.batch(index, pad), dev)
        loss, n = m(x, y)
        return loss / n.clamp(min=1)

    def evaluate(m, r, w):
        return {"val_loss": _lm_loss(m, data["val"], cfg.batch_size, pad, device, autocast, r, w)}

    meta = {"task": "instruct", "template": "alpaca"}
    lora = (lambda: _lora_tensors(gpt)) if cfg.lora_rank > 0 else None
    task = _Task(model, gpt, train.lengths, train_batch, evaluate, meta, dict, lora)
    say(f"gristmill finetune instruct: {len(splits['train'])}/{len(splits['val'])}/"
        f"{len(splits['test'])} train/val/test examples, {trainable:,} of "
        f"{sum(p.numel() for p in model.parameters()):,} parameters trained"
        + (f", resuming from {resume_from.name}" if resume_from else ""))
    result = _fit(task, cfg, out_dir, tok, resume_from, state, rank, world, device, say)
    report = {"task": "instruct", "checkpoint": None, "template": "alpaca",
              "examples": {k: len(v) for k, v in splits.items()}, "trainable_params": trainable,
              "steps": result["step"], "epoch_seconds": result["epoch_seconds"],
              "epoch_cpu_seconds": result["epoch_cpu_seconds"],
              "train_loss": result["train_loss"], "val_loss": result.get("val_loss")}
    if cfg.lora_rank > 0 and master:
        from gristmill.lora import save_adapter

        report["adapter"] = str(save_adapter(gpt, out_dir / "adapter", _lora_config(cfg),
                                             cfg.model))
    best = find_checkpoint(out_dir, "best")
    report["checkpoint"] = str(best)
    if cfg.generate and splits["test"] and master:
        in_memory = _best_in_memory(task, best, result["step"])
        responses = _test_responses(gpt if in_memory else load_model(best).to(device), tok,
                                    splits["test"], cfg, device)
        if cfg.judge_url:
            from gristmill.judge import score_responses

            scores = score_responses(responses, cfg.judge_url, cfg.judge_model,
                                     progress=cfg.progress)
            for r, s in zip(responses, scores):
                r["score"] = s
            got = [s for s in scores if s is not None]
            report["judge"] = {"model": cfg.judge_model, "url": cfg.judge_url,
                               "scored": len(got), "of": len(scores),
                               "mean_score": sum(got) / len(got) if got else None}
        write_json_atomic(out_dir / RESPONSES, responses)
        report["responses"] = str(out_dir / RESPONSES)
    if master:
        write_json_atomic(out_dir / REPORT_JSON, report)
        write_atomic(out_dir / REPORT_MD, _instruct_markdown(report))
    return report


def _judge_fields(example: Instruction) -> dict:
    if example.kind == "alpaca":
        r = example.record
        return {"instruction": r["instruction"], "input": r.get("input") or "",
                "output": r["output"]}
    messages = example.record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    user = [m["content"] for m in messages[:last] if m["role"] == "user"]
    return {"instruction": user[-1] if user else "", "input": "",
            "output": messages[last]["content"]}


def _test_responses(gpt: GPT, tok, rows, cfg: FinetuneConfig, device) -> list[dict]:
    """Greedy responses of the model to the test prompts, in batches of similar length."""
    from gristmill.sample import generate

    gpt.eval()
    _, autocast = _autocast(cfg, device)
    block = gpt.config.block_size
    prompts = [encode_segments_batch(tok, [segments_of(r, with_response=False)])[0].tolist()
               for r, _ in rows]
    for (r, path), p in zip(rows, prompts):
        if len(p) >= block:
            raise FinetuneDataError(f"{path}:{r.line}: the prompt is {len(p):,} tokens, leaving "
                                    f"no room for a response in the context of {block:,}")
    out: list[Any] = [None] * len(rows)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    size = max(1, cfg.batch_size)
    bar = progress_bar(cfg.progress, desc="test responses", total=len(rows), unit="prompt")
    for start in range(0, len(order), size):
        idx = order[start:start + size]
        batch = [prompts[i] for i in idx]
        room = min(cfg.max_new_tokens, block - max(map(len, batch)))
        with torch.no_grad(), autocast():
            outs = generate(gpt, batch, temperature=0.0, max_new_tokens=room,
                            eot_token=tok.eot_token)
        for i, ids in zip(idx, outs):
            if ids and ids[-1] == tok.eot_token:
                ids = ids[:-1]
            out[i] = tok.decode(ids).strip()
        bar.update(len(idx))
    bar.close()
    return [{**_judge_fields(r), **({"messages": r.record["messages"]} if r.kind == "messages"
                                    else {}), "model_response": text, "line": r.line}
            for (r, _), text in zip(rows, out)]


def _instruct_markdown(report: dict) -> str:
    val = report.get("val_loss")
    lines = ["# Instruction fine-tuning report", "", f"Checkpoint: `{report['checkpoint']}`  ",
             f"Examples (train/val/test): {report['examples']['train']}/"
             f"{report['examples']['val']}/{report['examples']['test']}  ",
             f"Trainable parameters: {report['trainable_params']:,}  ",
             f"Validation loss: {val:.4f}  " if val is not None else "Validation loss: -  "]
    if "responses" in report:
        lines.append(f"Test responses: `{report['responses']}`  ")
    judge = report.get("judge")
    if judge:
        mean = judge["mean_score"]
        lines.append(f"Judge ({judge['model']}): mean score "
                     f"{'-' if mean is None else f'{mean:.1f}'} over {judge['scored']} of "
                     f"{judge['of']} responses  ")
    return "\n".join(lines) + "\n"
