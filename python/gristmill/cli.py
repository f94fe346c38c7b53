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
    t.add_argument("--vocab-size", type=int, default=32768,
                   help="ids in all: 256 bytes + merges + special tokens (default 32768)")
    t.add_argument("--pattern", default="gpt2",
                   help="pre-tokenizer: gpt2, cl100k, o200k or a regex (default gpt2)")
    t.add_argument("--special-token", action="append", dest="special_tokens", metavar="TOKEN",
                   help="a special token (repeatable; default <|endoftext|>), ids after the merges")
    t.add_argument("--min-frequency", type=int, default=2,
                   help="never merge pairs seen fewer times (default 2)")
    t.add_argument("--text-field", default="text", help="text field of jsonl/parquet records")
    t.add_argument("--name", help="tokenizer name (default: the output directory's name)")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    t.set_defaults(func=_run_tokenizer_train)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _run_tokenizer_train(args) -> int:
    from gristmill.tokenizer import ENDOFTEXT
    from gristmill.tokenizer_train import format_stats, train_tokenizer

    out = Path(args.output)
    tok, stats = train_tokenizer(
        [Path(f) for f in args.files],
        args.vocab_size,
        args.pattern,
        args.special_tokens if args.special_tokens is not None else [ENDOFTEXT],
        min_frequency=args.min_frequency,
        progress=not args.quiet,
        name=args.name or out.resolve().name,
        text_field=args.text_field,
    )
    tok.save(out)
    print(format_stats(stats, tok))
    print(f"saved:          {out}/ (tokenizer.tiktoken, tokenizer.json, tokenizer_config.json)")
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
    _add_tokenizer(sub)
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
