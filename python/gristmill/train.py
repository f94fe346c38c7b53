"""Training loop: shards in, checkpoints, log.jsonl and loss.png out.

Read in run order: the learning-rate schedule, the distributed set-up, the RNG state, the run
log, validation, then :func:`train`, one loop without indirection. Run it as
``gristmill train --data=DIR --model=gpt2 ...`` or, on N GPUs,
``torchrun --nproc-per-node N -m gristmill train ...``; or call :func:`train` from Python.

Checkpoints are folders ``out_dir/ckpt-NNNNNNN/`` (layout: :mod:`gristmill.checkpoint`) holding
the weights, the optimizer, the step, sampler positions and every RNG, so an interrupted run
resumes exactly where the last checkpoint left it (bitwise, on CPU); a damaged checkpoint is
named before any step.

>>> train(data="shards/", model="tiny", max_steps=100)  # doctest: +SKIP
{'step': 100, 'train_loss': ..., 'val_loss': ..., ...}
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from gristmill.checkpoint import (
    LOSS_PLOT,
    RUN_LOG,
    claim_out_dir,
    list_checkpoints,
    load_model,
    load_optimizer_state,
    prune_checkpoints,
    read_best,
    read_run_state,
    save_checkpoint,
    update_best,
)
from gristmill.config import (
    DATA_ORDER_KEYS,
    LAYOUT_KEYS,
    MODEL_KEYS,
    TrainConfig,
    resolve_config,
)
from gristmill.model import GPT, PRESETS, GPTConfig, clean_state_dict
from gristmill.outputs import OutputFolderError
from gristmill.planner import peak_flops_for, steps_for
from gristmill.progress import progress_bar
from gristmill.storage import atomic_file, write_atomic
from gristmill.tokenizer import Tokenizer


class TrainingError(RuntimeError):
    """The run cannot go on: NaN loss, out of memory, or checkpoints that do not fit."""


# ---- learning-rate schedule ------------------------------------------------------------------


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine decay
    to ``min_lr``, or warmup-stable-decay (constant, then linear to ``min_lr``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    end = cfg.lr_decay_steps or cfg.max_steps
    if cfg.schedule == "constant" or step >= end:
        return cfg.lr if cfg.schedule == "constant" else cfg.min_lr
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, end - cfg.warmup_steps)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
    if cfg.schedule == "wsd":
        decay_start = max(cfg.warmup_steps, end - int(cfg.decay_frac * end))
        if step < decay_start:
            return cfg.lr
        return cfg.lr + (step - decay_start) / max(1, end - decay_start) * (cfg.min_lr - cfg.lr)
    raise ValueError(f"schedule must be cosine, wsd or constant, got {cfg.schedule!r}")


# ---- distributed set-up ----------------------------------------------------------------------


def setup_distributed(cfg: TrainConfig):
    """(rank, world_size, device, owns_process_group) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    return rank, world, device, owns


def gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def mean_across(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world
    return value


# ---- RNG state: every generator the run touches ----------------------------------------------


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state(device) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": _b64(torch.get_rng_state()),
        "cuda": _b64(torch.cuda.get_rng_state(device).cpu()) if device.type == "cuda" else None,
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    if state.get("cuda") and device.type == "cuda":
        torch.cuda.set_rng_state(_unb64(state["cuda"]), device)
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# ---- run log: log.jsonl and loss.png ---------------------------------------------------------


class RunLog:
    """Appends one JSON line per step (and per evaluation); draws loss.png from them."""

    def __init__(self, out_dir: Path, start_step: int):
        self.path, self.png = out_dir / RUN_LOG, out_dir / LOSS_PLOT
        self.records = []
        if start_step and self.path.exists():  # drop what a crashed run logged past the ckpt
            for line in self.path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    r = json.loads(line)
                    if r.get("step", 0) <= start_step:
                        self.records.append(r)
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run)

    def write(self, record: dict) -> None:
        self.records.append(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def plot(self) -> None:
        try:  # the Agg canvas directly: no pyplot, no global backend switch
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            return
        train = [(r["step"], r["loss"]) for r in self.records if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in self.records if r.get("val_loss") is not None]
        tasks = [r for r in self.records if r.get("tasks_score") is not None]
        fig = Figure(figsize=(14 if tasks else 8, 4.5))
        ax = fig.add_subplot(1, 2 if tasks else 1, 1)
        if tasks:  # the eval_tasks suite beside the loss
            from gristmill.eval import plot_task_scores

            plot_task_scores(fig.add_subplot(1, 2, 2), tasks)
        if train:
            s, v = zip(*train)
            ax.plot(s, v, lw=0.6, alpha=0.4, label="train")
            k = max(1, len(v) // 50)  # a moving average shows the trend through the noise
            smooth = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(s[k - 1:], smooth, lw=1.5, label=f"train (mean of {k})")
        if val:
            s, v = zip(*val)
            ax.plot(s, v, "o-", lw=1.5, label="val")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        with atomic_file(self.png) as tmp:
            FigureCanvasAgg(fig).print_png(str(tmp))

    def close(self) -> None:
        self.file.close()


# ---- validation ------------------------------------------------------------------------------


def _to_device(batch: np.ndarray, device):
    t = torch.from_numpy(batch.astype(np.int64))
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    return t[:, :-1], t[:, 1:]


def next_batch(sampler, device, *, packing: str = "off", doc_mask: bool = False):
    """The sampler's next batch as ``(x, y, attn_mask)``: with ``packing="pad"`` the targets
    of padding are -1 (not trained on); with ``doc_mask`` the mask that keeps each token to its
    own document (:func:`gristmill.shards.document_attention_mask`), else None."""
    batch = sampler.next_batch()
    x, y = _to_device(batch, device)
    if packing == "pad":
        lengths = torch.as_tensor(sampler.last_lengths())
        if bool((lengths < batch.shape[1]).any()):
            keep = torch.arange(y.shape[1]) < lengths[:, None] - 1  # target j is token j + 1
            y = y.masked_fill(~keep.to(y.device), -1)
    mask = None
    if doc_mask:
        from gristmill.shards import document_attention_mask

        mask = document_attention_mask(sampler.last_segments()[:, :-1], device)
    return x, y, mask


def _num_tokens(ds, split: str) -> int:
    try:
        return int(ds.num_tokens(split=split))
    except (KeyError, ValueError, FileNotFoundError):
        return 0


@torch.no_grad()
def validation_loss(model, ds, split="val", batch_size=8, seq_len=1024, max_batches=20,
                    device="cpu", autocast=contextlib.nullcontext, rank=0,
                    world_size=1, doc_mask=False) -> float | None:
    """Mean loss over up to ``max_batches`` sequential batches of ``split`` (None if empty):
    the loop's validation (windows; with ``doc_mask``, attention kept to each document, as
    the run trained). ``gristmill eval`` is :func:`gristmill.eval.evaluate`."""
    device = torch.device(device)
    n = _num_tokens(ds, split)
    batch_size = min(batch_size, (n - 1) // (seq_len * world_size))  # a small split: fewer rows
    if batch_size < 1:
        return None
    batches = max(1, min(max_batches, (n - 1) // (batch_size * seq_len * world_size)))
    sampler = ds.sampler(split=split, batch_size=batch_size, seq_len=seq_len, mode="sequential",
                         seed=0, rank=rank, world_size=world_size)
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    for _ in range(batches):
        x, y, mask = next_batch(sampler, device, doc_mask=doc_mask)
        with autocast():
            total += model(x, y, attn_mask=mask)[1].float()
    model.train(was_training)
    return mean_across(total / batches, world_size).item()


def _eval_tasks(cfg: TrainConfig, tokenizer, block_size: int):
    """The ``eval_tasks`` suite, read and tokenized once before step 0 (None without one)."""
    if not cfg.eval_tasks:
        return None
    if tokenizer is None:
        raise ValueError("eval_tasks needs the run's tokenizer: set tokenizer=NAME|DIR")
    from gristmill.eval import prepare_task, read_suite

    return [prepare_task(spec, tokenizer, block_size, truncate_context=True)
            for spec in read_suite(cfg.eval_tasks)]


# ---- MFU -------------------------------------------------------------------------------------

def peak_flops(device) -> float | None:
    """The device's dense bf16 peak FLOP/s (:data:`gristmill.planner.PEAK_BF16_FLOPS`); None
    off CUDA or for a GPU the table does not know."""
    if device.type != "cuda":
        return None
    return peak_flops_for(torch.cuda.get_device_name(device))


# ---- the loop --------------------------------------------------------------------------------


def _open_dataset(cfg: TrainConfig, dataset):
    if dataset is not None:
        return dataset
    if not cfg.data:
        raise ValueError("no data: pass --data=DIR (a shard dataset from `gristmill tokenize`)")
    if not Path(cfg.data).exists():
        raise FileNotFoundError(f"shard dataset {cfg.data} not found; write one with "
                                "`gristmill tokenize`")
    from gristmill.shards import ShardDataset

    return ShardDataset(cfg.data)


def _check_data(ds, vocab_size: int, verify: bool) -> None:
    """Before step 0: every token id inside the model's vocabulary (a token outside it fails
    deep in torch mid-run, naming no shard), and with ``verify`` every checksum."""
    check = getattr(ds, "check", None)
    if check is not None:  # a caller's dataset may not have one
        check(vocab_size=vocab_size, verify=verify)


def _build_model(cfg: TrainConfig, ds, resume_from: Path | None) -> GPT:
    # A key left unset takes the recipe's value (cfg.setting), else the preset's.
    overrides = {k: cfg.setting(k) for k in MODEL_KEYS if cfg.setting(k) is not None}
    if resume_from is not None:
        return load_model(resume_from)  # size and checksum checked
    if cfg.model in PRESETS:
        return GPT(GPTConfig.from_preset(cfg.model, **{"vocab_size": ds.n_vocab, **overrides}))
    model = load_model(cfg.model, **{k: v for k, v in overrides.items() if k == "dropout"})
    for k in LAYOUT_KEYS:  # a loaded model keeps its layout: a different one is refused
        if k in overrides and overrides[k] != getattr(model.config, k):
            source = f"recipe {cfg.recipe!r}" if getattr(cfg, k) is None else "its key"
            raise ValueError(f"{cfg.model} has {k}={getattr(model.config, k)}; {k}="
                             f"{overrides[k]} (from {source}) cannot change a loaded model's "
                             "layout: start a preset with it, or leave it unset")
    if model.config.vocab_size < ds.n_vocab:
        raise ValueError(f"{cfg.model} has {model.config.vocab_size} tokens, the shards "
                         f"{ds.n_vocab}")
    return model


def _check_length(cfg: TrainConfig) -> None:
    """tokens and tokens_per_param each set max_steps: one at most, neither negative."""
    if cfg.tokens and cfg.tokens_per_param:
        raise ValueError("config keys 'tokens' and 'tokens_per_param' both set the run's length "
                         f"(max_steps); give one (got tokens={cfg.tokens}, tokens_per_param="
                         f"{cfg.tokens_per_param})")
    for key in ("tokens", "tokens_per_param"):
        if getattr(cfg, key) < 0 or not math.isfinite(getattr(cfg, key)):
            raise ValueError(f"config key {key!r} must be 0 (use max_steps) or positive, got "
                             f"{getattr(cfg, key)}")


def check_recipe(cfg: TrainConfig) -> None:
    """Refuses, before anything is read or built, an optimizer this run cannot use: Muon on
    a torch without ``torch.optim.Muon``, or under FSDP (it needs whole matrices)."""
    if cfg.setting("optimizer") != "muon":
        return
    source = f"recipe {cfg.recipe!r}" if cfg.optimizer is None else "optimizer=muon"
    if cfg.fsdp:
        raise ValueError(f"Muon (from {source}) does not run under fsdp=true: it needs whole "
                         "matrices; use DDP (fsdp=false) or optimizer=adamw")
    if not hasattr(torch.optim, "Muon"):
        raise ValueError(f"Muon (from {source}) needs torch.optim.Muon (PyTorch 2.9 or later); "
                         f"this is torch {torch.__version__}: upgrade it or set optimizer=adamw")


def train(config: TrainConfig | None = None, *, dataset=None, config_file=None,
          **overrides) -> dict:
    """Trains a GPT; returns ``{"step", "train_loss", "val_loss", "best_val_loss",
    "checkpoint", "losses"}`` (``losses``: the train loss of each step run here).

    Args:
        config: a :class:`TrainConfig` (default: the defaults).
        dataset: an object with the ShardDataset interface, used instead of ``config.data``.
        config_file: a TOML/YAML/JSON file of keys applied before ``overrides``.
        **overrides: config keys, checked like ``--key=value`` flags.

    Raises:
        ValueError: bad configuration, or shards that do not fit the tokenizer or model.
        FileNotFoundError: missing shards or checkpoints.
        TrainingError: NaN loss (the last good checkpoint is kept), out of memory.
    """
    cfg = resolve_config(config_file, overrides, base=config)
    check_recipe(cfg)
    _check_length(cfg)
    rank, world, device, owns_pg = setup_distributed(cfg)
    master = rank == 0
    out_dir = Path(cfg.out_dir)
    try:
        return _train(cfg, dataset, rank, world, device, master, out_dir)
    finally:
        if owns_pg:
            dist.destroy_process_group()


def _train(cfg, dataset, rank, world, device, master, out_dir) -> dict:
    say = print if master else (lambda *a, **k: None)
    # -- data and tokenizer
    ds = _open_dataset(cfg, dataset)
    tokenizer = None
    if cfg.tokenizer:
        tokenizer = Tokenizer.resolve(cfg.tokenizer)
        ds.check_tokenizer(tokenizer)
    elif callable(getattr(ds, "tokenizer", None)):  # the copy a ShardDataset keeps beside it
        with contextlib.suppress(OSError, ValueError):
            tokenizer = ds.tokenizer()
    # -- the out_dir: new, empty or a training run's, before anything in it is read or written
    # (a user's ckpt-* would be resumed from and pruned). Rank 0 looks; every rank stops on a
    # refusal (one that went on alone would wait for the others forever).
    refusal = None
    if master:
        try:
            claim_out_dir(out_dir, [p] if (p := getattr(ds, "path", None)) is not None else [])
        except OutputFolderError as e:
            refusal = str(e)
    refusal = gather(refusal, world)[0]
    if refusal is not None:
        raise OutputFolderError(refusal)
    # -- where we start from
    # Rank 0 decides (the others may look before its last rename lands); out_dir must be on
    # a file system all ranks share.
    ckpts = gather(list_checkpoints(out_dir) if master and out_dir.exists() else None, world)[0]
    if cfg.resume == "no" and ckpts:
        raise ValueError(f"{out_dir} already has checkpoints ({ckpts[-1].name}); use resume=auto "
                         "to continue, or another out_dir")
    if cfg.resume == "must" and not ckpts:
        raise FileNotFoundError(f"resume=must but {out_dir} has no checkpoint")
    if cfg.resume not in ("auto", "must", "no"):
        raise ValueError(f"resume must be auto, must or no, got {cfg.resume!r}")
    resume_from = ckpts[-1] if ckpts else None
    state, saved = read_run_state(resume_from) if resume_from else (None, None)
    if out_dir.exists():  # every rank: one that went on alone would wait for the others forever
        read_best(out_dir)  # a damaged best.json stops the run now, not at its first checkpoint
    if state is not None:
        if state["world_size"] != world:
            raise TrainingError(f"{resume_from} was written by {state['world_size']} process(es); "
                                f"resume with the same number (now {world})")
        changed = [k for k in DATA_ORDER_KEYS if saved["train"].get(k) != getattr(cfg, k)]
        if changed:
            say(f"warning: {', '.join(changed)} differ from the checkpoint; the resumed run "
                "will not see the same batches")
    # -- model
    torch.manual_seed(cfg.seed)
    model = raw_model = _build_model(cfg, ds, resume_from).to(device)
    mcfg = raw_model.config
    _check_data(ds, mcfg.vocab_size, cfg.verify)
    tasks = _eval_tasks(cfg, tokenizer, mcfg.block_size)
    T = cfg.seq_len or mcfg.block_size
    B = cfg.batch_size
    if T > mcfg.block_size:
        raise ValueError(f"seq_len {T} exceeds the model's block_size {mcfg.block_size}")
    micro_tokens = B * T * world
    if cfg.tokens_per_step and cfg.tokens_per_step % micro_tokens:
        raise ValueError(f"tokens_per_step {cfg.tokens_per_step} is not a multiple of "
                         f"batch_size*seq_len*world_size = {B}*{T}*{world} = {micro_tokens}")
    accum = max(1, cfg.tokens_per_step // micro_tokens)
    tokens_per_step = micro_tokens * accum
    if cfg.tokens or cfg.tokens_per_param:  # the run's length from its tokens (the planner's)
        target = cfg.tokens or cfg.tokens_per_param * raw_model.num_params()
        cfg = dataclasses.replace(cfg, max_steps=steps_for(target, tokens_per_step))
        say(f"training on {target:,.0f} tokens: max_steps={cfg.max_steps:,} of "
            f"{tokens_per_step:,} tokens")
    # -- precision
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.type == "cuda" else
                                                   "float32")
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be auto, bfloat16 or float32, got {dtype!r}")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if cfg.tf32 else "highest")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) \
        if dtype == "bfloat16" else contextlib.nullcontext
    # -- sharding, optimizer, compile, DDP
    if cfg.fsdp:
        if world == 1:
            raise ValueError("fsdp=true needs torchrun with more than one process")
        from torch.distributed.fsdp import fully_shard

        # forward returns logits as a slice (pad columns cut off); nothing edits it in place.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view")
        for block in raw_model.transformer.h:
            fully_shard(block)
        fully_shard(raw_model)
    optimizer = raw_model.configure_optimizer(cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                              device_type=device.type,
                                              optimizer=cfg.setting("optimizer") or "adamw",
                                              muon_lr=cfg.muon_lr, muon_momentum=cfg.muon_momentum)
    if resume_from is not None:
        optim_sd = load_optimizer_state(resume_from, device)
        if cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(raw_model, optimizer, optim_sd,
                                     options=StateDictOptions(full_state_dict=True,
                                                             broadcast_from_rank0=True))
        else:
            try:
                optimizer.load_state_dict(optim_sd)
            except (KeyError, ValueError) as e:  # saved by a run with another optimizer
                raise TrainingError(f"{resume_from}: its optimizer state does not fit optimizer="
                                    f"{cfg.setting('optimizer') or 'adamw'} ({e}); resume with "
                                    "the optimizer the run started with") from None
    if cfg.compile:
        model = torch.compile(model)
    if world > 1 and not cfg.fsdp:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                        else None)
    # -- data order and RNG: everything a resumed run must continue exactly
    # Windows unless packing is asked for: a caller's dataset (dataset=...) may not pack.
    packing = {"packing": cfg.packing} if cfg.packing != "off" else {}
    sampler = ds.sampler(split="train", batch_size=B, seq_len=T, mode=cfg.sampling,
                         seed=cfg.seed, rank=rank, world_size=world, **packing)
    torch.manual_seed(cfg.seed + rank)  # dropout differs per rank
    step, tokens_seen, best_val = 0, 0, None
    if state is not None:
        step, tokens_seen, best_val = state["step"], state["tokens_seen"], state["best_val_loss"]
        sampler.load_state_dict(state["samplers"][rank])
        set_rng_state(state["rng"][rank], device)
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(out_dir, step) if master else None
    flops_tok = raw_model.flops_per_token(T)
    peak = cfg.peak_flops or peak_flops(device)
    say(f"gristmill train: {raw_model.num_params() / 1e6:.2f}M parameters, {world} process(es) on "
        f"{device.type}, {dtype}, {accum} micro-step(s) of {B}x{T} = {tokens_per_step:,} "
        f"tokens/step" + (f", resuming from {resume_from.name}" if resume_from else ""))
    say(json.dumps({**cfg.to_dict(), "model_config": mcfg.to_dict()}, separators=(", ", "=")))

    def checkpoint(val_loss):
        if cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_sd = get_model_state_dict(raw_model, options=opts)
            optim_sd = get_optimizer_state_dict(raw_model, optimizer, options=opts)
        else:
            model_sd, optim_sd = raw_model.state_dict(), optimizer.state_dict()
        samplers = gather(sampler.state_dict(), world)
        rngs = gather(rng_state(device), world)
        path = _save(model_sd, optim_sd, samplers, rngs, val_loss) if master else None
        if world > 1:
            dist.barrier()  # nobody reads out_dir before the checkpoint is in place
        return path

    def _save(model_sd, optim_sd, samplers, rngs, val_loss):
        run_state = {"step": step, "tokens_seen": tokens_seen, "best_val_loss": best_val,
                     "world_size": world, "samplers": samplers, "rng": rngs,
                     "schedule": {"kind": cfg.schedule, "lr": lr_at(max(0, step - 1), cfg)}}
        meta = {"format": "gristmill-checkpoint-1", "step": step, "val_loss": val_loss,
                "model": mcfg.to_dict(), "train": cfg.to_dict(),
                "n_vocab": ds.n_vocab, "eot_token": ds.eot_token,
                "tokenizer_fingerprint": ds.tokenizer_fingerprint}
        path = save_checkpoint(out_dir, step, raw_model, clean_state_dict(model_sd), optim_sd,
                               run_state, meta, tokenizer)
        update_best(out_dir, path, step, val_loss)
        prune_checkpoints(out_dir, cfg.keep_last)
        return path

    bar = progress_bar(master and cfg.progress, total=cfg.max_steps, initial=step, unit="step")
    losses, val_loss, last_ckpt = [], None, resume_from
    model.train()
    t_last = time.perf_counter()
    try:
        while step < cfg.max_steps:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:  # Muon's group: its own peak (lr_scale)
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss_sum, used = torch.zeros((), device=device), 0.0
            for micro in range(accum):
                last = micro == accum - 1
                x, y, mask = next_batch(sampler, device, packing=cfg.packing,
                                        doc_mask=cfg.doc_mask)
                if cfg.packing != "off":
                    used += sampler.last_utilisation() / accum
                if cfg.fsdp:
                    raw_model.set_requires_gradient_sync(last)
                sync = model.no_sync() if world > 1 and not cfg.fsdp and not last \
                    else contextlib.nullcontext()
                with sync:
                    with autocast():
                        _, loss = model(x, y, attn_mask=mask)
                    (loss / accum).backward()
                loss_sum += loss.detach()
            loss_value = mean_across(loss_sum / accum, world).item()
            if not math.isfinite(loss_value):
                raise TrainingError(
                    f"loss is {loss_value} at step {step + 1}; stopped before the optimizer "
                    f"step. Last good checkpoint: {last_ckpt or 'none'}. Try a lower lr "
                    f"({cfg.lr}), more warmup_steps, or grad_clip")
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            losses.append(loss_value)
            now = time.perf_counter()
            dt, t_last = now - t_last, now
            tok_s = tokens_per_step / dt
            mfu = flops_tok * tok_s / (peak * world) if peak else None
            record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm":
                      float(grad_norm), "tokens": tokens_seen, "dt_ms": dt * 1e3,
                      "tokens_per_s": tok_s, "mfu": mfu}
            if cfg.packing != "off":  # this rank's share of its row slots that are real tokens
                record["utilisation"] = used
            if master:
                log.write(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}",
                                    tok_s=f"{tok_s:,.0f}", **({"mfu": f"{mfu:.1%}"} if mfu
                                                             else {}))
                elif step % cfg.log_interval == 0:
                    say(f"step {step}: loss {loss_value:.4f}, lr {lr:.3e}, grad norm "
                        f"{float(grad_norm):.3f}, {tok_s:,.0f} tok/s"
                        + (f", MFU {mfu:.1%}" if mfu else ""))
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                val_loss = validation_loss(model, ds, "val", B, T, cfg.eval_batches, device,
                                           autocast, rank, world, doc_mask=cfg.doc_mask)
                if val_loss is not None:
                    best_val = val_loss if best_val is None else min(best_val, val_loss)
                last_ckpt = checkpoint(val_loss) or last_ckpt
                if master:
                    if val_loss is not None:
                        log.write({"step": step, "val_loss": val_loss,
                                   "val_ppl": math.exp(min(val_loss, 50))})
                        (bar.write if bar else say)(f"step {step}: val loss {val_loss:.4f}, "
                                                    f"ppl {math.exp(min(val_loss, 50)):.2f}")
                    if cfg.plot:
                        log.plot()
                t_last = time.perf_counter()  # evaluation is not training time
            if tasks and (step % (cfg.eval_tasks_interval or cfg.eval_interval) == 0
                          or step == cfg.max_steps):
                from gristmill.eval import score_tasks

                with autocast():  # every rank: an FSDP model's forward needs them all
                    scored = score_tasks(raw_model, tasks)
                if master:
                    named = {t["name"]: t[t["metric"]] for t in scored["tasks"]}
                    log.write({"step": step, "tasks_score": scored["score"], "tasks": named})
                    (bar.write if bar else say)(
                        f"step {step}: tasks score {scored['score']:.4f} ("
                        + ", ".join(f"{k} {v:.3f}" for k, v in named.items()) + ")")
                    if cfg.plot:
                        log.plot()
                t_last = time.perf_counter()
    except torch.OutOfMemoryError as e:
        raise TrainingError(
            f"out of memory at step {step + 1} with micro-batches of {B}x{T} tokens: lower "
            f"batch_size (tokens_per_step={cfg.tokens_per_step or tokens_per_step} keeps the "
            "step size through gradient accumulation) or seq_len, or try compile=true / "
            "fsdp=true") from e
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    return {"step": step, "train_loss": losses[-1] if losses else None, "val_loss": val_loss,
            "best_val_loss": best_val, "checkpoint": str(last_ckpt) if last_ckpt else None,
            "losses": losses}


if __name__ == "__main__":
    from gristmill.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
