"""The ``gristmill`` command: one sub-command per stage.

Each stage registers its sub-command in a small ``_add_<stage>`` function below; the work
itself lives in the stage's module, so the CLI stays a thin layer of argument parsing.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

from gristmill import __version__


def _load_tokenizer(spec: str):
    from gristmill.tokenizer import Tokenizer

    p = Path(spec)
    return Tokenizer.load(p) if p.exists() else Tokenizer.from_name(spec)


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
    ids = args.ids or sys.stdin.read().split()
    sys.stdout.write(tok.decode([int(i) for i in ids]))
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
    from gristmill.train import TrainingError, train

    try:
        result = train(config_file=args.config_file, **overrides_from_args(args))
    except TrainingError as e:
        print(f"gristmill train: error: {e}", file=sys.stderr)
        return 1
    if result["checkpoint"]:
        print(f"done at step {result['step']}: checkpoint {result['checkpoint']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gristmill",
        description="From raw web text to a trained GPT: prep, tokenizer, tokenize, train, sample.",
    )
    parser.add_argument("--version", action="version", version=f"gristmill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_encode(sub)
    _add_decode(sub)
    _add_train(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (OSError, ValueError) as e:
        # Bad input: one clear line, no traceback.
        print(f"gristmill {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"gristmill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
