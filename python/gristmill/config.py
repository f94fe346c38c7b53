# ruff: noqa: UP007, UP045  (Optional/Union: get_type_hints must evaluate them on Python 3.9)
"""Run configuration for ``gristmill train``: one dataclass, a config file, checked overrides.

Defaults come from :class:`TrainConfig`; a TOML or YAML file replaces some; ``--key=value``
flags replace more. Every key is checked against the dataclass and every value against the
field's type, so a typo is an error rather than a silently ignored setting. This module does
not import torch, so the ``gristmill`` command can list the keys quickly.

>>> cfg = resolve_config(overrides={"n_layer": "4", "lr": "3e-4"})
>>> cfg.n_layer, cfg.lr
(4, 0.0003)
>>> resolve_config(overrides={"n_layers": "4"})
Traceback (most recent call last):
...
ValueError: command line: unknown config key 'n_layers' (did you mean 'n_layer'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union


def _f(default, help: str, choices: tuple = ()):
    """A config field: its default, its --help line and, for a string, the values it takes."""
    return field(default=default, metadata={"help": help, "choices": choices})


#: What each ``recipe`` sets for the keys a run leaves unset. ``modern`` bundles what
#: benches/bench_speedrun.py measured to reach a given loss fastest (README, "Faster to a given
#: loss"): an untied head and the logit soft-cap did not pay there (the tied head reached the
#: target in fewer steps; the cap never bit and cost a fifth of the step on CPU), so they stay
#: options (tie_embeddings=false, logit_softcap=15) outside the preset.
RECIPES: dict[str, dict] = {
    "gpt2": {},
    "modern": {"position": "rotary", "norm": "rmsnorm", "qk_norm": True, "activation": "relu2",
               "zero_init": True, "bias": False, "optimizer": "muon"},
}
#: The model keys that change the layout (not the size): GPT-2's unless a recipe or key says.
LAYOUT_KEYS = ("position", "norm", "activation", "qk_norm", "tie_embeddings", "logit_softcap",
               "zero_init")
#: The values of the layout keys that are words (GPTConfig checks them too); GPT-2's first.
LAYOUT_CHOICES: dict[str, tuple[str, ...]] = {
    "position": ("learned", "rotary"),
    "norm": ("layernorm", "rmsnorm"),
    "activation": ("gelu", "relu2"),
}


@dataclass
class TrainConfig:
    # data
    data: str = _f("", "shard dataset directory or its manifest.json")
    tokenizer: str = _f("", "tokenizer (built-in name or directory) checked against the shards "
                            "and saved with each checkpoint")
    out_dir: str = _f("out", "checkpoints, log.jsonl and loss.png go here")
    verify: bool = _f(False, "check every shard's checksum before step 0 (reads all the data; "
                             "token ids are checked against the model's vocabulary always)")
    # model
    model: str = _f("gpt2", "preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny, mini) or a "
                            "HF GPT-2 / gristmill checkpoint directory to start from")
    block_size: Optional[int] = _f(None, "context length (default: the preset's)")
    n_layer: Optional[int] = _f(None, "transformer blocks (default: the preset's)")
    n_head: Optional[int] = _f(None, "attention heads (default: the preset's)")
    n_embd: Optional[int] = _f(None, "model width (default: the preset's)")
    dropout: Optional[float] = _f(None, "dropout probability (default 0)")
    bias: Optional[bool] = _f(None, "biases in Linear and LayerNorm (default true)")
    vocab_multiple: Optional[int] = _f(None, "pad the vocabulary to a multiple of this (64)")
    recipe: str = _f("gpt2", "gpt2 (nanoGPT's GPT-2 recipe) or modern (rotary, RMSNorm, QK-norm, "
                             "ReLU², zero-initialised projections, no biases, Muon): the "
                             "defaults of the layout and optimizer keys left unset",
                     tuple(RECIPES))
    position: Optional[str] = _f(None, "learned or rotary positions (default: the recipe's)",
                                 LAYOUT_CHOICES["position"])
    norm: Optional[str] = _f(None, "layernorm or rmsnorm (default: the recipe's)",
                             LAYOUT_CHOICES["norm"])
    activation: Optional[str] = _f(None, "MLP activation: gelu or relu2 (default: the recipe's)",
                                   LAYOUT_CHOICES["activation"])
    qk_norm: Optional[bool] = _f(None, "RMSNorm queries and keys (default: the recipe's)")
    tie_embeddings: Optional[bool] = _f(None, "the head shares the token embedding (default: "
                                              "the recipe's)")
    logit_softcap: Optional[float] = _f(None, "cap*tanh(logits/cap), 0: off (default: the "
                                              "recipe's)")
    zero_init: Optional[bool] = _f(None, "output projections start at zero (default: the "
                                         "recipe's)")
    resume: str = _f("auto", "auto: continue from out_dir if it has checkpoints; must: fail if "
                             "it has none; no: fail if it has some")
    # batch
    batch_size: int = _f(8, "sequences per micro-batch per process")
    seq_len: int = _f(0, "tokens per sequence (0: block_size)")
    tokens_per_step: int = _f(0, "tokens per optimizer step over all processes; reached by "
                                 "gradient accumulation (0: one micro-batch)")
    sampling: str = _f("random", "random or sequential batches")
    packing: str = _f("off", "rows: off (windows of the token stream), pad (whole documents, "
                             "padded; padding is not trained on) or bestfit (each row starts at "
                             "a document and is filled best-fit, the last document cropped)",
                      ("off", "pad", "bestfit"))
    doc_mask: bool = _f(False, "attention limited to the current document (a mask from the "
                               "shards' document index; slower attention kernels)")
    # optimizer and schedule
    max_steps: int = _f(1000, "optimizer steps")
    tokens: int = _f(0, "train on this many tokens: sets max_steps (0: use max_steps)")
    tokens_per_param: float = _f(0.0, "train on this many tokens per model parameter: sets "
                                      "max_steps (20: Chinchilla-optimal; 0: use max_steps)")
    lr: float = _f(6e-4, "peak learning rate")
    min_lr: float = _f(6e-5, "learning rate at the end of the decay")
    warmup_steps: int = _f(100, "linear warmup steps")
    schedule: str = _f("cosine", "cosine, wsd (warmup-stable-decay) or constant")
    lr_decay_steps: int = _f(0, "step at which the decay ends (0: max_steps)")
    decay_frac: float = _f(0.2, "wsd: fraction of lr_decay_steps spent decaying")
    weight_decay: float = _f(0.1, "AdamW weight decay (>=2-D weights only)")
    optimizer: Optional[str] = _f(None, "adamw, or muon (Muon for the blocks' matrices, AdamW "
                                        "for the rest; default: the recipe's)", ("adamw", "muon"))
    muon_lr: float = _f(0.02, "Muon's peak learning rate (scheduled as lr is)")
    muon_momentum: float = _f(0.95, "Muon's momentum")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0: no clipping)")
    # evaluation, checkpoints, logging
    eval_interval: int = _f(250, "steps between validation runs and checkpoints")
    eval_batches: int = _f(20, "validation batches per run")
    eval_tasks: str = _f("", "a suite of multiple-choice tasks (TOML; see `gristmill eval "
                             "--suite`) scored during training and plotted beside the loss")
    eval_tasks_interval: int = _f(0, "steps between runs of eval_tasks (0: eval_interval)")
    keep_last: int = _f(2, "checkpoints kept besides the best")
    log_interval: int = _f(10, "steps between console lines (log.jsonl gets every step)")
    progress: bool = _f(True, "show a progress bar")
    plot: bool = _f(True, "write loss.png at each evaluation")
    peak_flops: float = _f(0.0, "device peak FLOP/s for MFU (0: look up the GPU)")
    # system
    device: str = _f("auto", "auto, cpu, cuda, cuda:N")
    dtype: str = _f("auto", "auto (bfloat16 on CUDA, else float32), bfloat16, float32")
    compile: bool = _f(False, "torch.compile the model")
    fsdp: bool = _f(False, "shard the model with FSDP (under torchrun) instead of DDP")
    tf32: bool = _f(True, "allow TF32 matmuls on CUDA")
    seed: int = _f(1337, "random seed")

    def __post_init__(self):  # resolve_config names the file; this catches TrainConfig(...)
        for f in dataclasses.fields(self):
            check_choice(f, getattr(self, f.name))

    def setting(self, key: str) -> Any:
        """A layout or optimizer key's value: the one set, else the recipe's, else None (the
        preset's or loaded model's own; AdamW for ``optimizer``)."""
        value = getattr(self, key)
        return RECIPES[self.recipe].get(key) if value is None else value

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FinetuneConfig:
    """Settings of ``gristmill finetune classify|instruct`` (:mod:`gristmill.finetune`); a
    field left at None takes the task's default (the book's: ch. 6 for classify, ch. 7 for
    instruct)."""

    # data
    data: str = _f("", "training data (classify: .tsv/.csv/.jsonl; instruct: alpaca .json/"
                       ".jsonl or chat 'messages' .jsonl); split unless val_data/test_data are given")
    val_data: str = _f("", "a separate validation file")
    test_data: str = _f("", "a separate test file")
    split: str = _f("", "train,val,test fractions of data (classify: 0.7,0.1,0.2 shuffled with "
                        "seed; instruct: 0.85,0.05,0.1 in file order)")
    text_field: str = _f("text", "classify: the text's field or column (a number for a file "
                                 "without header, from 0)")
    label_field: str = _f("label", "classify: the label's field or column")
    balance: bool = _f(False, "classify: undersample every label to the rarest one's count")
    max_length: int = _f(0, "classify: texts are cut to this many tokens, an appended "
                            "end-of-text included, and padded to it with pooling padded (0: the "
                            "context; padded: the longest training text)")
    loss_on_prompt: bool = _f(False, "instruct: also train on the prompt tokens")
    # model
    model: str = _f("", "a gristmill run or checkpoint, a Hugging Face GPT-2 folder, or a preset "
                        "(random weights, for tests)")
    tokenizer: str = _f("", "default: the model's own (GPT-2's for 50257 tokens)")
    out_dir: str = _f("out-finetune", "checkpoints, log.jsonl, loss.png and reports go here")
    resume: str = _f("auto", "auto, must or no, as for training")
    pooling: str = _f("padded", "classify: read the last position of texts padded with "
                                "end-of-text to max_length or the longest training text "
                                "(padded: the book's), an end-of-text token appended to each "
                                "text (eot), the last real token (last) or the mean of the real "
                                "tokens (mean)",
                      choices=("padded", "eot", "last", "mean"))
    train_blocks: Optional[int] = _f(None, "train the last N blocks, the final norm and the head "
                                           "(-1: every weight; default: classify 1, instruct -1)")
    lora_rank: int = _f(0, "LoRA rank (0: no LoRA); base weights frozen")
    lora_alpha: float = _f(16.0, "LoRA alpha (scale alpha/rank)")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    lora_targets: str = _f("attn", "comma-separated: attn, mlp, head")
    dropout: Optional[float] = _f(None, "dropout probability (default: the model's)")
    cache_mb: int = _f(4096, "classify: MiB of disk per process (a temporary file in out_dir, "
                             "at most half the free space) for the frozen blocks' outputs, "
                             "computed once per text when only the last blocks train, without "
                             "dropout (0: recompute them every step)")
    # optimizer and schedule
    epochs: Optional[int] = _f(None, "passes over the training data (default: classify 5, "
                                     "instruct 2)")
    max_steps: int = _f(0, "stop after this many steps (0: epochs decide)")
    batch_size: int = _f(8, "examples per step per process, grouped by length")
    lr: float = _f(5e-5, "learning rate")
    min_lr: float = _f(0.0, "learning rate at the end of a cosine or wsd decay")
    warmup_steps: int = _f(0, "linear warmup steps")
    schedule: str = _f("constant", "constant, cosine or wsd")
    lr_decay_steps: int = _f(0, "step at which the decay ends (0: the last step)")
    decay_frac: float = _f(0.2, "wsd: fraction of the steps spent decaying")
    weight_decay: float = _f(0.1, "AdamW weight decay (>=2-D weights only)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.999, "AdamW beta2")
    grad_clip: float = _f(0.0, "clip the gradient norm to this (0: no clipping)")
    # evaluation, checkpoints, logging
    eval_interval: int = _f(0, "steps between validation runs and checkpoints (0: each epoch)")
    keep_last: int = _f(1, "checkpoints kept besides the best")
    max_new_tokens: int = _f(256, "instruct: tokens generated per test response")
    generate: bool = _f(True, "instruct: write the test set's responses after training")
    judge_url: str = _f("", "instruct: score the test responses with a judge model at this "
                            "OpenAI-compatible URL (e.g. a local Ollama)")
    judge_model: str = _f("llama3", "instruct: the judge model's name")
    log_interval: int = _f(10, "steps between console lines (log.jsonl gets every step)")
    progress: bool = _f(True, "show a progress bar")
    plot: bool = _f(True, "write loss.png (and the confusion matrix) at each evaluation")
    # system
    device: str = _f("auto", "auto, cpu, cuda, cuda:N")
    dtype: str = _f("auto", "auto (bfloat16 on CUDA, else float32), bfloat16, float32")
    seed: int = _f(123, "random seed (split, batch order, dropout, head init)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: FinetuneConfig keys a resumed run must agree on: which batches it sees, what it trains.
FINETUNE_RESUME_KEYS = ("data", "val_data", "test_data", "split", "balance", "batch_size", "seed",
                        "max_length", "epochs", "loss_on_prompt", "pooling", "train_blocks",
                        "lora_rank", "lora_alpha", "lora_targets")

MODEL_KEYS = ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "vocab_multiple",
              *LAYOUT_KEYS)
# Keys that decide which batches a run sees: a resumed run must agree on them to be exact.
DATA_ORDER_KEYS = ("batch_size", "seq_len", "tokens_per_step", "sampling", "packing", "seed")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_choice(f: dataclasses.Field, value: Any, shown: Any = None) -> None:
    """A value outside the field's ``choices`` (when it has some; None is "unset") is a
    ValueError naming the key and the values it takes."""
    choices = f.metadata.get("choices")
    if choices and value is not None and value not in choices:
        raise ValueError(f"config key {f.name!r} must be {' or '.join(choices)}, got "
                         f"{value if shown is None else shown!r}")


def parse_value(key: str, raw: Any, typ: Any) -> Any:
    """Converts ``raw`` (a string from the command line, or a file's value) to ``typ``."""
    origin_args = typing.get_args(typ)
    if typing.get_origin(typ) is Union and type(None) in origin_args:
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        typ = next(a for a in origin_args if a is not type(None))
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config key {key!r} wants true/false, got {raw!r}")
    try:
        if typ is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            value = int(float(raw)) if isinstance(raw, str) and "e" in raw.lower() else int(raw)
            return value
        if typ is float:
            return float(raw)
        if typ is str:
            if not isinstance(raw, (str, int, float)):
                raise ValueError
            return str(raw)
    except (TypeError, ValueError):
        raise ValueError(f"config key {key!r} wants {typ.__name__}, got {raw!r}") from None
    raise TypeError(f"unsupported config type {typ} for {key!r}")


def read_config_file(path: Union[str, Path]) -> dict:
    """The one reader of gristmill's config files (pipeline, prep, training): a table from a
    .toml, .yaml/.yml or .json file. A file that can't be read or parsed is a ValueError
    naming it (an OSError for a missing one)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"{path}: config files are .toml, .yaml, .yml or .json")
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); expected a config file") from None
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as e:
                raise ValueError(str(e).replace("\n", " ")) from None
    except ValueError as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{path}: not a valid {suffix[1:]} file: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of key = value")  # noqa: TRY004 (a config error)
    return data


def check_keys(keys: Any, known: Any, source: str = "config") -> None:
    """The one check of a config's keys: an unknown one is a ValueError naming ``source``, the
    key and the closest known key, so that a typo is an error, never a setting ignored."""
    known = list(known)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ValueError(f"{source}: unknown config key {key!r}{hint}")


def _flatten(table: dict) -> dict:
    """A training config's sections ([model], [train]) flattened into one table."""
    flat: dict = {}
    for k, v in table.items():
        flat.update(v if isinstance(v, dict) else {k: v})
    return flat


def resolve_config(path=None, overrides: Optional[dict] = None, cls=TrainConfig, base=None):
    """Defaults (or ``base``), then the file at ``path``, then ``overrides``; all checked.

    Raises:
        ValueError: for an unknown key or a value of the wrong type.
    """
    types = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = dataclasses.asdict(base) if base is not None else {}
    sources = [(str(path), _flatten(read_config_file(path)))] if path else []
    for name, table in sources + [("command line", overrides or {})]:
        table = {key.replace("-", "_"): raw for key, raw in table.items()}
        check_keys(table, types, name)
        for key, raw in table.items():
            try:
                values[key] = parse_value(key, raw, types[key])
                check_choice(fields[key], values[key], raw)
            except ValueError as e:
                if not path or name != str(path):
                    raise
                raise ValueError(f"{path}: {e}") from None  # a file's value: name the file
    return cls(**values)


def add_config_arguments(parser, cls=TrainConfig, skip: tuple = ()) -> None:
    """One ``--key`` option per field (``--n_layer`` and ``--n-layer`` both work); a true/false
    key alone means true (``--verify`` is ``--verify=true``). Fields whose help begins with one
    of ``skip`` (``"instruct:"``: a key of the other fine-tuning kind) get no option."""
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        if skip and f.metadata.get("help", "").startswith(skip):
            continue
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        flag = {"nargs": "?", "const": "true"} if types[f.name] is bool else {}
        parser.add_argument(*names, dest=f"cfg_{f.name}", metavar="V", default=None,
                            help=f"{f.metadata.get('help', '')} [{f.default}]", **flag)


def overrides_from_args(args, cls=TrainConfig) -> dict:
    return {f.name: getattr(args, f"cfg_{f.name}") for f in dataclasses.fields(cls)
            if getattr(args, f"cfg_{f.name}", None) is not None}
