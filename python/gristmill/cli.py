"""The ``gristmill`` command: one sub-command per stage.

Each stage registers its sub-command in a small ``_add_<stage>`` function below; the work
itself lives in the stage's module, so the CLI stays a thin layer of argument parsing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import types
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Optional

from gristmill import __version__
from gristmill.defaults import SAMPLE, TOKENIZE, TOKENIZER
from gristmill.engines import ENGINES, run_stage

#: Optional packages: import name -> (what pip calls it, the extra that installs it). A name
#: not here is a base dependency (or a dependency of one); tests/test_cli.py checks this table
#: against pyproject.toml and every import under gristmill/.
OPTIONAL_PACKAGES = {
    "torch": ("torch", "train"),
    "safetensors": ("safetensors", "train"),
    "matplotlib": ("matplotlib", "train"),
    "yaml": ("pyyaml", "train"),
    "ray": ("ray", "ray"),
    "pyarrow": ("pyarrow", "prep"),  # parquet files and URLs
}
_PACKAGE_NAMES = {"yaml": "pyyaml"}  # import name -> pip name, where they differ


def _load_tokenizer(spec: str):
    from gristmill.tokenizer import Tokenizer

    return Tokenizer.resolve(spec)


# ---- encode -------------------------------------------------------------------------------


def _add_encode(sub) -> None:
    p = sub.add_parser(
        "encode",
        help="encode text files to token ids (or count tokens)",
        description="Encode text with a tokenizer. With no FILE, encodes the small corpus "
        "shipped with gristmill and prints the token count, throughput and first ids.",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="UTF-8 text files ('-' for stdin)")
    p.add_argument(
        "--tokenizer", "-t", default="gpt2",
        help="built-in name (gpt2) or a saved tokenizer directory / .tiktoken / tokenizer.json",
    )
    p.add_argument("--count", action="store_true", help="print only the number of tokens per file")
    p.add_argument(
        "--allow-special", action="store_true",
        help="encode special-token text (<|endoftext|>) as the special token",
    )
    p.set_defaults(func=_run_encode)


def _run_encode(args) -> int:
    tok = _load_tokenizer(args.tokenizer)
    special = {"allowed_special": "all"} if args.allow_special else {"disallowed_special": ()}
    if not args.files:
        text = resources.files("gristmill").joinpath("data", "tinyshakespeare.txt").read_text("utf-8")
        tok.encode_ordinary(text[:1000])  # warm-up: builds the character tables
        t0 = time.perf_counter()
        ids = tok.encode(text, **special)
        dt = time.perf_counter() - t0
        mb = len(text.encode("utf-8")) / 1e6
        print(f"tokenizer:   {tok.name} (n_vocab {tok.n_vocab})")
        print(f"text:        tinyshakespeare.txt, {mb:.2f} MB (shipped with gristmill)")
        print(f"tokens:      {len(ids):,}")
        print(f"throughput:  {mb / dt:.1f} MB/s, {len(ids) / dt / 1e6:.2f} M tokens/s (one thread)")
        print(f"first ids:   {ids[:16]}")
        return 0
    for name in args.files:
        text = sys.stdin.read() if name == "-" else Path(name).read_text("utf-8")
        if args.count:
            print(f"{tok.count(text, **special)}\t{name}")
        else:
            print(" ".join(map(str, tok.encode(text, **special))))
    return 0


# ---- decode -------------------------------------------------------------------------------


def _add_decode(sub) -> None:
    p = sub.add_parser("decode", help="decode token ids (whitespace-separated) to text")
    p.add_argument("ids", nargs="*", help="token ids; read from stdin when none are given")
    p.add_argument("--tokenizer", "-t", default="gpt2")
    p.set_defaults(func=_run_decode)


def _run_decode(args) -> int:
    tok = _load_tokenizer(args.tokenizer)
    ids = []
    for word in args.ids or sys.stdin.read().split():
        try:
            ids.append(int(word))
        except ValueError:
            raise ValueError(f"{word!r} is not a token id; expected whitespace-separated "
                             "integers") from None
    sys.stdout.write(tok.decode(ids))
    return 0


# ---- train --------------------------------------------------------------------------------


def _add_train(sub) -> None:
    from gristmill.config import add_config_arguments

    p = sub.add_parser(
        "train",
        help="train a GPT on token shards (torchrun --nproc-per-node N -m gristmill train ...)",
        description="Train a GPT-2 model on a shard dataset. Settings come from the defaults, "
        "then CONFIG (TOML/YAML), then --key=value flags; each is checked. Continues from the "
        "last checkpoint in --out_dir when there is one.",
    )
    p.add_argument("config_file", nargs="?", metavar="CONFIG", help="TOML/YAML/JSON settings")
    add_config_arguments(p)
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from gristmill.config import overrides_from_args
    from gristmill.train import train

    result = train(config_file=args.config_file, **overrides_from_args(args))
    if result["checkpoint"]:
        print(f"done at step {result['step']}: checkpoint {result['checkpoint']}")
    return 0


# ---- tokenize -----------------------------------------------------------------------------


def _add_tokenize(sub) -> None:
    p = sub.add_parser(
        "tokenize",
        help="encode documents into llm.c-compatible token shards",
        description="Encode documents (jsonl[.gz|.zst], parquet, txt; files or directories) in "
        "parallel into fixed-size token shards with a manifest. Rerunning a killed run resumes "
        "from its last complete shard.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or directories of documents")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the dataset directory")
    p.add_argument(
        "--tokenizer", "-t", default=TOKENIZE["tokenizer"],
        help="built-in name (gpt2) or a saved tokenizer directory / .tiktoken / tokenizer.json",
    )
    p.add_argument("--shard-size", type=int, default=TOKENIZE["shard_size"], metavar="N",
                   help="tokens per shard")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-fraction", type=float, default=TOKENIZE["val_fraction"], metavar="F",
                     help="fraction of documents for the val split, spread evenly")
    val.add_argument("--val-docs", type=int, default=None, metavar="N",
                     help="the first N documents go to the val split")
    p.add_argument("--text-field", default=TOKENIZE["text_field"],
                   help="the text's field in jsonl/parquet records")
    p.add_argument("--eot", choices=("append", "prepend"), default=TOKENIZE["eot"],
                   help="put end-of-text after each document or before it (llm.c)")
    p.add_argument("--txt-mode", choices=("file", "paragraphs"), default=TOKENIZE["txt_mode"],
                   help=".txt inputs: one document per file, or per blank-line-separated block")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_engine_args(p)
    p.set_defaults(func=_run_tokenize)


def _run_tokenize(args) -> int:
    import json


    tok = _load_tokenizer(args.tokenizer)
    t0 = time.perf_counter()
    settings = {"shard_size": args.shard_size, "val_fraction": args.val_fraction, "val_docs": args.val_docs,
                "eot": args.eot, "text_field": args.text_field, "txt_mode": args.txt_mode,
                "progress": not args.quiet}
    # Paths, not documents: JSON lines are then read and parsed by the core beside the encoder.
    inputs = args.inputs if args.engine == "ray" else [Path(p) for p in args.inputs]
    manifest = run_stage("tokenize", inputs, args.output, tok, engine=args.engine,
                         address=args.address, **settings)
    dt = time.perf_counter() - t0
    m = json.loads(Path(manifest).read_text("utf-8"))
    for name, split in m["splits"].items():
        print(f"{name:5s}  {split['tokens']:>14,} tokens  {split['documents']:>10,} documents  "
              f"{len(split['shards'])} shards")
    print(f"wrote {manifest} ({m['dtype']}, tokenizer {m['tokenizer']['name']}) in {dt:.1f}s")
    return 0


# ---- prep ---------------------------------------------------------------------------------


def _parse_value(text: str):
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _add_prep(sub) -> None:
    p = sub.add_parser(
        "prep",
        help="clean a corpus: C4 / Gopher / FineWeb filters, with a report",
        description="Read documents (.txt, .jsonl[.gz|.zst], .parquet, directories), run the "
        "filters of a preset in the Rust core, and write clean jsonl.zst or parquet shards, "
        "report.json and report.html to DIR. A killed run rerun with the same arguments "
        "resumes where it stopped.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or directories")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--preset", choices=["c4", "c4-datatrove", "gopher", "fineweb", "none"],
                   help="filter preset (default c4)")
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file of PrepConfig settings")
    p.add_argument("--set", action="append", default=[], metavar="FILTER.PARAM=VALUE",
                   help="set a filter parameter, e.g. c4.min_words_per_line=3 (JSON values)")
    p.add_argument("--disable", action="append", default=[], metavar="FILTER",
                   help="switch a filter off by name (repeatable)")
    p.add_argument("--normalize", action="store_true", default=None,
                   help="apply Unicode NFC and whitespace clean-up first")
    p.add_argument("--badwords-file", metavar="FILE", help="bad-words list (default: LDNOOBW en)")
    p.add_argument("--text-field", help="field holding the text (default text)")
    p.add_argument("--id-field", help="field holding the id (default id)")
    p.add_argument("--txt-mode", choices=["file", "paragraphs"], help="one document per .txt file or per paragraph")
    p.add_argument("--format", dest="output_format", choices=["jsonl.zst", "jsonl", "parquet"])
    p.add_argument("--docs-per-shard", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--keep-removed", action="store_true", default=None,
                   help="also write removed documents with the reason (DIR/removed/)")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="skip bad records (counted in the report) instead of stopping")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output of a run with other inputs or settings (only prep's own files)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_engine_args(p)
    p.set_defaults(func=_run_prep)


def _add_engine_args(p) -> None:
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local (default), or ray: the same result computed with Ray Data "
                   "(needs pip install 'gristmill[ray]')")
    p.add_argument("--address", metavar="ADDR",
                   help="with --engine ray: the Ray cluster to join (default: start a local one)")


def _run_prep(args) -> int:
    from gristmill.prep import PrepConfig, format_report

    settings = {
        key: getattr(args, key)
        for key in ("preset", "normalize", "badwords_file", "text_field", "id_field", "txt_mode",
                    "output_format", "docs_per_shard", "batch_size", "keep_removed", "skip_bad")
        if getattr(args, key) is not None
    }
    config = PrepConfig.from_file(args.config, **settings) if args.config else PrepConfig.from_dict(settings)
    for item in args.set:
        target, sep, value = item.partition("=")
        name, dot, param = target.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set {item!r}: expected FILTER.PARAM=VALUE")
        config.params.setdefault(name, {})[param] = _parse_value(value)
    config.disable.extend(args.disable)
    report = run_stage("prep", args.inputs, args.output, config, engine=args.engine,
                       address=args.address, progress=not args.no_progress,
                       overwrite=args.overwrite)
    print(format_report(report))
    print(f"wrote {len(report['shards'])} shard(s), report.json and report.html to {args.output}")
    return 0


# ---- dedup --------------------------------------------------------------------------------


def _add_dedup(sub) -> None:
    p = sub.add_parser(
        "dedup",
        help="remove exact, line, span and near-duplicate (MinHash) duplicates",
        description="Deduplicate documents into DIR: kept documents in docs-NNNNN shards, removed "
        "ones (with dedup_method and duplicate_of) in removed-NNNNN shards, counts in "
        "dedup-report.json. With no method flag: --exact --minhash. Rerun the same command to "
        "resume an interrupted run.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".jsonl[.gz|.zst], .parquet, .txt or directories")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--exact", action="store_true", help="exact duplicates (normalised text hash)")
    p.add_argument("--lines", action="store_true", help="C4 line dedup: a shared line kept in one document")
    p.add_argument("--spans", action="store_true", help="3-sentence span dedup (datatrove style)")
    p.add_argument("--minhash", action="store_true", help="near-duplicates by MinHash LSH")
    from gristmill.dedup import DedupConfig as D  # its defaults are the command's

    p.add_argument("--bands", type=int, default=D.bands, help="LSH bands")
    p.add_argument("--rows", type=int, default=D.rows, help="rows per band")
    p.add_argument("--ngram", type=int, default=D.ngram, help="words per shingle")
    p.add_argument("--seed", type=int, default=D.seed, help="seed of the MinHash permutations")
    p.add_argument(
        "--threshold", type=float, default=None,
        help="also require this Jaccard similarity (estimated from signatures) for a merge",
    )
    p.add_argument("--memory-limit", default=D.memory_limit, help="working memory of every pass; peak RSS is about this + 64 MB")
    p.add_argument("--work-dir", default=None, help="indexes and checkpoints (default DIR/.dedup-work)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output of a run with another configuration (only dedup's own files)")
    p.add_argument("--format", default=D.fmt, choices=("jsonl.zst", "jsonl", "parquet"), help="output format")
    p.add_argument("--text-field", default="text", help="field holding the text")
    p.add_argument("--id-field", default="id", help="field holding the id")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_engine_args(p)
    p.set_defaults(func=_run_dedup)


def _run_dedup(args) -> int:
    from gristmill.dedup import DedupConfig

    methods = {m: getattr(args, m) for m in ("exact", "lines", "spans", "minhash")}
    if not any(methods.values()):
        methods.update(exact=True, minhash=True)
    config = DedupConfig(
        **methods, bands=args.bands, rows=args.rows, ngram=args.ngram, seed=args.seed,
        threshold=args.threshold, memory_limit=args.memory_limit, fmt=args.format,
    )
    work_dir = {"work_dir": args.work_dir} if args.work_dir else {}  # the local engine's
    report = run_stage(
        "dedup", args.inputs, args.output, config, engine=args.engine, address=args.address,
        progress=not args.no_progress, text_field=args.text_field, id_field=args.id_field,
        overwrite=args.overwrite, **work_dir,
    )
    removed = ", ".join(f"{k} {v:,}" for k, v in report["removed"].items() if v) or "none"
    print(f"documents:  {report['documents_in']:,} in, {report['documents_kept']:,} kept")
    print(f"removed:    {report['documents_removed']:,} ({removed})")
    if methods["lines"] or methods["spans"]:
        print(
            f"cut:        {report['lines_cut']:,} lines, {report['sentences_cut']:,} sentences "
            f"from {report['documents_changed']:,} kept documents"
        )
    print(f"report:     {Path(args.output) / 'dedup-report.json'}")
    return 0


# ---- tokenizer ----------------------------------------------------------------------------


def _add_tokenizer(sub) -> None:
    p = sub.add_parser("tokenizer", help="train byte-level BPE tokenizers")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    t = tsub.add_parser(
        "train",
        help="train a byte-level BPE tokenizer on text files",
        description="Train a byte-level BPE tokenizer (tiktoken-exact ids) on FILES: .txt "
        "(one UTF-8 document each), .jsonl[.gz|.zst] or .parquet (the --text-field of each "
        "record), or directories of them. Writes tokenizer.tiktoken, tokenizer.json (HF "
        "tokenizers) and tokenizer_config.json to DIR.",
    )
    t.add_argument("files", nargs="+", metavar="FILE", help="input files or directories")
    t.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    t.add_argument("--vocab-size", type=int, default=TOKENIZER["vocab_size"],
                   help="ids in all: 256 bytes + merges + special tokens")
    t.add_argument("--pattern", default=TOKENIZER["pattern"],
                   help="pre-tokenizer: gpt2, cl100k, o200k or a regex")
    t.add_argument("--special-token", action="append", dest="special_tokens", metavar="TOKEN",
                   help="a special token (repeatable; default <|endoftext|>), ids after the merges")
    t.add_argument("--min-frequency", type=int, default=TOKENIZER["min_frequency"],
                   help="never merge pairs seen fewer times")
    t.add_argument("--text-field", default=TOKENIZER["text_field"],
                   help="text field of jsonl/parquet records")
    t.add_argument("--name", help="tokenizer name (default: the output directory's name)")
    t.add_argument("--overwrite", action="store_true",
                   help="write into a DIR holding other files, replacing only the tokenizer's three")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    t.set_defaults(func=_run_tokenizer_train)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _run_tokenizer_train(args) -> int:
    from gristmill.tokenizer import claim_save_folder
    from gristmill.tokenizer_train import format_stats, train_tokenizer

    out = Path(args.output)
    claim_save_folder(out, overwrite=args.overwrite, inputs=args.files)  # before training
    tok, stats = train_tokenizer(
        [Path(f) for f in args.files],
        args.vocab_size,
        args.pattern,
        args.special_tokens if args.special_tokens is not None else list(TOKENIZER["special_tokens"]),
        min_frequency=args.min_frequency,
        progress=not args.quiet,
        name=args.name or out.resolve().name,
        text_field=args.text_field,
    )
    tok.save(out, overwrite=args.overwrite)
    print(format_stats(stats, tok))
    print(f"saved:          {out}/ (tokenizer.tiktoken, tokenizer.json, tokenizer_config.json)")
    return 0



# ---- run / quickstart ------------------------------------------------------------------------


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a whole pipeline from a TOML config (prep, tokenizer, tokenize, train, sample)",
        description="Run every stage of a pipeline config, skipping stages whose outputs are "
        "complete and up to date and resuming interrupted ones. See gristmill.pipeline.",
    )
    p.add_argument("config", help="pipeline TOML file")
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_run)


def _run_run(args) -> int:
    from gristmill.pipeline import run

    report = run(args.config, force=args.force, progress=not args.no_progress)
    print(f"report: {report['out_dir']}/report.md")
    return 0


def _add_quickstart(sub) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole flow on the corpus shipped with gristmill, in a few minutes on a CPU",
        description="Clean the shipped tinyshakespeare corpus, train a tokenizer, write shards, "
        "train a small GPT and sample from it; prints each stage's figures and where the "
        "report, loss plot and samples are. Uses a GPU when there is one.",
    )
    p.add_argument("-o", "--out", default="gristmill-quickstart", help="output folder")
    p.add_argument("--tiny", action="store_true", help="a much smaller run (seconds; for tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_quickstart)


def _run_quickstart(args) -> int:
    from gristmill.pipeline import quickstart

    quickstart(args.out, tiny=args.tiny, progress=not args.no_progress)
    return 0


# ---- sample / eval ------------------------------------------------------------------------


def _model_args(p) -> None:
    p.add_argument("checkpoint", help="checkpoint dir, training out_dir (its best checkpoint), "
                   "or a Hugging Face GPT-2 directory")
    p.add_argument("--tokenizer", "-t", default=None,
                   help="default: the checkpoint's own copy (or GPT-2's for 50257 tokens)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 on CUDA, float32 on CPU")


def _load_for_inference(args):
    import torch

    from gristmill.checkpoint import load_model, tokenizer_for

    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype != "auto" else (
        "bfloat16" if device.startswith("cuda") else "float32")
    model = load_model(args.checkpoint).to(device=device, dtype=getattr(torch, dtype)).eval()
    return model, tokenizer_for(args.checkpoint, model, args.tokenizer, required=False)


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample", help="generate text from a checkpoint (streams as it goes)",
        description="Generate text with a KV cache: greedy (--temperature 0), sampling "
        "(temperature, top-k, top-p, min-p, penalties) or beam search (--num-beams).",
    )
    _model_args(p)
    p.add_argument("--prompt", "-p", action="append", default=None,
                   help="prompt text (repeat for a batch); default: end-of-text")
    p.add_argument("--prompt-file", type=Path, help="a file whose whole text is one prompt")
    p.add_argument("--max-new-tokens", "-n", type=int, default=SAMPLE["max_new_tokens"], help="tokens to generate")
    p.add_argument("--temperature", type=float, default=SAMPLE["temperature"], help="0: greedy")
    p.add_argument("--top-k", type=int, default=SAMPLE["top_k"], help="keep the k most likely (0: off)")
    p.add_argument("--top-p", type=float, default=SAMPLE["top_p"], help="nucleus sampling")
    p.add_argument("--min-p", type=float, default=SAMPLE["min_p"], help="drop tokens below min-p x the top one")
    p.add_argument("--repetition-penalty", type=float, default=SAMPLE["repetition_penalty"], help=">1 discourages repeats")
    p.add_argument("--frequency-penalty", type=float, default=SAMPLE["frequency_penalty"], help="per earlier occurrence")
    p.add_argument("--presence-penalty", type=float, default=SAMPLE["presence_penalty"], help="once per token seen")
    p.add_argument("--num-beams", type=int, default=SAMPLE["num_beams"], help="beam search when > 1")
    p.add_argument("--length-penalty", type=float, default=SAMPLE["length_penalty"], help="beam scores / length ** this")
    p.add_argument("--early-stopping", choices=["false", "true", "never"], default="false")
    p.add_argument("--num-samples", type=int, default=1, help="completions per prompt")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=SAMPLE["seed"], help="random seed (default: unseeded)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-stream", action="store_true", help="print each completion when done")
    p.set_defaults(func=_run_sample)


def _run_sample(args) -> int:
    import torch

    from gristmill.sample import SamplingConfig, TextStream, generate, generate_steps

    model, tok = _load_for_inference(args)
    if tok is None:
        raise ValueError(f"no tokenizer found with {args.checkpoint}; pass --tokenizer")
    texts = list(args.prompt or [])
    if args.prompt_file:
        texts.append(args.prompt_file.read_text("utf-8"))
    texts = texts or [""]
    early = {"false": False, "true": True, "never": "never"}[args.early_stopping]
    beams = args.num_beams > 1
    cfg = SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
        num_beams=args.num_beams, length_penalty=args.length_penalty, early_stopping=early,
        num_return_sequences=args.num_samples if beams else 1, stop_strings=tuple(args.stop),
        seed=args.seed)
    prompts = [tok.encode(t, allowed_special="all") or [tok.eot_token] for t in texts]
    room = model.config.block_size - max(map(len, prompts))
    if room < 1:
        raise ValueError(f"prompt longer than the model's block_size {model.config.block_size}")
    if cfg.max_new_tokens > room:
        print(f"note: max_new_tokens lowered to {room} (block_size "
              f"{model.config.block_size})", file=sys.stderr)
        cfg.max_new_tokens = room
    if args.compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    order = [(i, t) for i, t in enumerate(texts) for _ in range(1 if beams else args.num_samples)]
    stops = {tok.eot_token}
    t0, n_tokens = time.perf_counter(), 0
    if len(order) == 1 and not beams and not args.no_stream:
        stream = TextStream(tok, cfg.stop_strings)
        sys.stdout.write(texts[0])
        for tokens, _ in generate_steps(model, [prompts[0]], cfg, eot_token=tok.eot_token,
                                        token_bytes=tok.decode_single_token_bytes):
            n_tokens += 1
            if int(tokens[0]) in stops:
                break
            sys.stdout.write(stream.push(int(tokens[0])))
            sys.stdout.flush()
        sys.stdout.write(stream.flush() + "\n")
    else:
        outs = generate(model, [prompts[i] for i, _ in order], cfg, eot_token=tok.eot_token,
                        token_bytes=tok.decode_single_token_bytes)
        if beams:
            order = [(i, t) for i, t in enumerate(texts) for _ in range(cfg.num_return_sequences)]
        for k, ((_, text), out) in enumerate(zip(order, outs)):
            n_tokens += len(out)
            if out and out[-1] in stops:
                out = out[:-1]
            data = tok.decode_bytes(out)
            for s in cfg.stop_strings:
                data = data.split(s.encode("utf-8"))[0]
            if k:
                print("\n" + "-" * 40)
            print(text + data.decode("utf-8", errors="replace"))
    dt = time.perf_counter() - t0
    print(f"[{n_tokens} tokens in {dt:.2f} s: {n_tokens / dt:.1f} tok/s on "
          f"{next(model.parameters()).device}]", file=sys.stderr)
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="loss, perplexity and bits per byte of a checkpoint",
        description="Evaluate a checkpoint on a shard dataset's split or on a text file; every "
        "token after the first is predicted once.",
    )
    _model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="shard dataset directory (or its manifest.json)")
    src.add_argument("--text", type=Path, help="a UTF-8 text file")
    p.add_argument("--split", default="val")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=None, help="default: the model's block_size")
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from gristmill.sample import evaluate

    model, tok = _load_for_inference(args)
    if args.data:
        from gristmill.shards import ShardDataset

        data = ShardDataset(args.data)
    else:
        data = args.text.read_text("utf-8")
    r = evaluate(model, data, tok, split=args.split, batch_size=args.batch_size,
                 seq_len=args.seq_len, max_batches=args.max_batches,
                 progress=not args.no_progress)
    bpb = f", {r['bits_per_byte']:.4f} bits/byte" if r["bits_per_byte"] is not None else ""
    print(f"loss {r['loss']:.4f} nats/token, perplexity {r['perplexity']:.3f}{bpb} "
          f"({r['tokens']:,} tokens)")
    return 0


class _ShowDefaults(argparse.HelpFormatter):
    """Adds "(default: X)" to each option's help, from the value argparse will use (which
    comes from gristmill.defaults or the stage's config), unless the help already says."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = action.option_strings and not (
            default is None or default is False or default is argparse.SUPPRESS)
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Every (sub-)command's parser: shows the defaults in --help, takes --debug."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _ShowDefaults)
        super().__init__(*args, **kwargs)
        # SUPPRESS: a sub-command's parser must not reset what `gristmill --debug CMD` set.
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show the traceback of an error (or set GRISTMILL_DEBUG=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gristmill",
        description="From raw web text to a trained GPT: prep, tokenizer, tokenize, train, sample.",
    )
    parser.add_argument("--version", action="version", version=f"gristmill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_encode(sub)
    _add_decode(sub)
    _add_tokenize(sub)
    _add_prep(sub)
    _add_dedup(sub)
    _add_train(sub)
    _add_tokenizer(sub)
    _add_run(sub)
    _add_quickstart(sub)
    _add_sample(sub)
    _add_eval(sub)
    return parser


# ---- errors -------------------------------------------------------------------------------

# What a user can cause (bad input, a missing file, a damaged checkpoint, a bad setting): the
# message is the whole story. The project's error types (InputFormatError, TokenizerError,
# ShardFormatError, DedupError, FilterConfigError) are ValueErrors; EOFError is a truncated
# stream; a training error is matched by name (importing gristmill.train needs torch). An
# ImportError the project raised itself (no module name) says what to install.
_USER_ERRORS = (OSError, ValueError, EOFError)
_USER_ERROR_NAMES = {"TrainingError", "SafetensorError"}


def missing_package_message(e: ModuleNotFoundError) -> str:
    """What to install for a missing module: the extra that brings it, else the package.

    >>> missing_package_message(ModuleNotFoundError(name="torch.nn"))
    "needs torch, which is not installed: pip install 'gristmill[train]'"
    """
    module = (e.name or "").split(".")[0]
    package, extra = OPTIONAL_PACKAGES.get(module, (_PACKAGE_NAMES.get(module, module), None))
    how = f"pip install 'gristmill[{extra}]'" if extra else f"pip install {package}"
    if module != e.name and isinstance(sys.modules.get(module), types.ModuleType):
        # The package is there but lacks a part (torch.distributed.fsdp in an old torch).
        return f"needs {e.name}, which this {package} lacks: {how.replace('install', 'install -U', 1)}"
    return f"needs {package}, which is not installed: {how}"


def _error_line(e: BaseException) -> str:
    """The one line that tells a user what went wrong and what to do."""
    if type(e).__name__.startswith("RayTaskError") and isinstance(getattr(e, "cause", None), Exception):
        e = e.cause  # raised in a Ray task: its text holds the remote traceback; the cause does not
    if isinstance(e, ModuleNotFoundError) and e.name and not e.name.startswith("gristmill"):
        return missing_package_message(e)
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        # "[Errno 2] No such file or directory: 'x'" as "x: No such file or directory"
        where = os.fsdecode(e.filename)
        if e.filename2 is not None:
            where += f" -> {os.fsdecode(e.filename2)}"
        return f"{where}: {e.strerror}"
    if isinstance(e, OSError) and e.strerror and not e.args[2:]:
        return e.strerror
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    if (isinstance(e, _USER_ERRORS) or type(e).__name__ in _USER_ERROR_NAMES
            or (isinstance(e, ImportError) and e.name is None)):
        return text or type(e).__name__
    # Not an error we expected anyone to cause: say so, and how to see where it came from.
    return (f"{type(e).__name__}: {text}" if text else type(e).__name__) + (
        " (unexpected: rerun with --debug for the traceback, and please report it)")


def _debug(args) -> bool:
    env = os.environ.get("GRISTMILL_DEBUG", "").strip().lower()
    return getattr(args, "debug", False) or env in ("1", "true", "yes", "on")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``gristmill`` command. Returns the exit status: 0, 1 for an error (one line on
    stderr: ``gristmill COMMAND: what, what to do``), 2 for usage, 130 when interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    command = " ".join(filter(None, (args.command, getattr(args, "tokenizer_command", None))))
    try:
        return args.func(args) or 0
    except BrokenPipeError:
        # `gristmill encode big.txt | head`: the reader has gone; nothing more to say.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (Exception, KeyboardInterrupt) as e:
        if _debug(args):
            raise
        from gristmill.progress import close_all

        close_all()  # a bar left mid-line would hide the start of the message
        if isinstance(e, KeyboardInterrupt):
            print(f"gristmill {command}: interrupted", file=sys.stderr)
            return 130
        print(f"gristmill {command}: {_error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
