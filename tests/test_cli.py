"""The ``gristmill`` command's errors: one line, exit 1 (2 for usage), no traceback unless
``--debug`` / ``GRISTMILL_DEBUG=1``; a missing optional package names the extra to install."""

from __future__ import annotations

import ast
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from gristmill import Tokenizer, TokenizerError, cli
from gristmill.cli import main

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "gristmill"


def _one_line(err: str, command: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert err.startswith(f"gristmill {command}: ") and "Traceback" not in err, err
    return err[len(f"gristmill {command}: "):-1]


# ---- the error line ---------------------------------------------------------------------------


def test_decode_of_a_negative_id_is_one_line(capsys):
    assert main(["decode", "--", "-1"]) == 1
    assert _one_line(capsys.readouterr().err, "decode") == "token id -1 is not in the vocabulary"


def test_decode_of_a_word_says_what_is_expected(capsys):
    assert main(["decode", "31373", "hello"]) == 1
    what = _one_line(capsys.readouterr().err, "decode")
    assert "'hello' is not a token id" in what and "integers" in what


def test_missing_file_is_named_without_errno(capsys, tmp_path):
    missing = tmp_path / "missing.txt"
    assert main(["encode", str(missing)]) == 1
    assert _one_line(capsys.readouterr().err, "encode") == f"{missing}: No such file or directory"


def test_stage_errors_are_printed_as_raised(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    assert main(["tokenize", str(bad), "-o", str(tmp_path / "out"), "-q"]) == 1
    what = _one_line(capsys.readouterr().err, "tokenize")
    assert "bad.jsonl" in what and "error:" not in what


def test_a_sub_command_s_errors_carry_its_whole_name(capsys, tmp_path):
    rc = main(["tokenizer", "train", str(tmp_path / "none.txt"), "-o", str(tmp_path / "t"), "-q"])
    assert rc == 1
    assert "none.txt" in _one_line(capsys.readouterr().err, "tokenizer train")


def test_tokenizer_train_never_writes_over_a_user_s_files(capsys, tmp_path, monkeypatch):
    # `tokenizer train -o dir` silently replaced the user's tokenizer.json and friends in dir.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a b c ab ab abc " * 50)
    out = tmp_path / "dir"
    out.mkdir()
    mine = {"tokenizer.json": "my HF tokenizer", "tokenizer_config.json": "{}", "README.md": "mine"}
    for name, text in mine.items():
        (out / name).write_text(text)
    argv = ["tokenizer", "train", str(corpus), "-o", str(out), "--vocab-size", "260", "-q"]
    from gristmill import tokenizer_train

    trained = []
    real = tokenizer_train.train_tokenizer
    monkeypatch.setattr(tokenizer_train, "train_tokenizer", lambda *a, **k: trained.append(1) or real(*a, **k))
    assert main(argv) == 1
    what = _one_line(capsys.readouterr().err, "tokenizer train")
    assert what.startswith(f"{out}/: holds files this run did not write (README.md, tokenizer.json, "
                           "tokenizer_config.json)") and "--overwrite" in what, what
    assert not trained  # refused before training
    assert {p.name: p.read_text() for p in out.iterdir()} == mine
    # --overwrite: only the tokenizer's own files are replaced.
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    assert (out / "README.md").read_text() == "mine"
    assert Tokenizer.load(out).n_vocab == 260 and (out / "tokenizer.json").read_text() != mine["tokenizer.json"]
    # An output folder that is the input folder is refused, even with --overwrite.
    assert main(["tokenizer", "train", str(tmp_path), "-o", str(tmp_path), "--overwrite", "-q"]) == 1
    assert "is the input" in _one_line(capsys.readouterr().err, "tokenizer train")


def test_bad_tokenizer_files_are_one_line(capsys, tmp_path):
    empty = tmp_path / "empty.tiktoken"
    empty.write_bytes(b"")
    assert main(["encode", "-t", str(empty), str(empty)]) == 1
    assert "empty.tiktoken" in _one_line(capsys.readouterr().err, "encode")
    saved = Tokenizer.from_name("gpt2").save(tmp_path / "tok", hf_json=False)
    (saved / "tokenizer_config.json").write_text("{oops")
    assert main(["decode", "-t", str(saved), "1"]) == 1
    assert "tokenizer_config.json: line 1" in _one_line(capsys.readouterr().err, "decode")
    assert main(["decode", "-t", "no-such-tokenizer", "1"]) == 1
    assert "unknown tokenizer 'no-such-tokenizer'" in _one_line(capsys.readouterr().err, "decode")


def test_unexpected_errors_are_one_line_that_points_to_debug(capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "_run_decode", boom)
    assert main(["decode", "1"]) == 1
    what = _one_line(capsys.readouterr().err, "decode")
    assert what.startswith("RuntimeError: boom second line") and "--debug" in what


def test_interrupt_is_130_and_a_closed_pipe_is_quiet(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run_decode", interrupted)
    assert main(["decode", "1"]) == 130
    assert _one_line(capsys.readouterr().err, "decode") == "interrupted"

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_run_decode", closed)
    assert main(["decode", "1"]) == 1
    assert capsys.readouterr().err == ""


def test_debug_flag_or_environment_shows_the_traceback(monkeypatch):
    monkeypatch.delenv("GRISTMILL_DEBUG", raising=False)
    with pytest.raises(TokenizerError, match="token id -1"):
        main(["--debug", "decode", "--", "-1"])
    with pytest.raises(TokenizerError, match="token id -1"):
        main(["decode", "--debug", "--", "-1"])
    monkeypatch.setenv("GRISTMILL_DEBUG", "1")
    with pytest.raises(TokenizerError, match="token id -1"):
        main(["decode", "--", "-1"])
    monkeypatch.setenv("GRISTMILL_DEBUG", "0")
    assert main(["decode", "--", "-1"]) == 1


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["decode", "--no-such-flag"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["tokenize"])
    assert e.value.code == 2


def test_no_traceback_on_stderr_for_bad_inputs(tmp_path):
    empty = tmp_path / "empty.tiktoken"
    empty.write_bytes(b"")
    trunc = tmp_path / "trunc.jsonl.gz"
    trunc.write_bytes(gzip.compress(b'{"text": "hello"}\n' * 1000)[:-20])
    runs = [
        ["decode", "--", "-1"],
        ["decode", "x"],
        ["encode", str(tmp_path / "missing.txt")],
        ["encode", "-t", str(empty), "-"],
        ["tokenize", str(trunc), "-o", str(tmp_path / "out"), "-q"],
    ]
    for argv in runs:
        r = subprocess.run([sys.executable, "-m", "gristmill", *argv], capture_output=True,
                           text=True, input="", env={**_env(), "GRISTMILL_DEBUG": ""})
        assert r.returncode == 1, (argv, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, (argv, r.stderr)
        assert r.stderr.startswith(f"gristmill {argv[0]}: "), (argv, r.stderr)


# ---- missing optional packages ----------------------------------------------------------------


@pytest.mark.parametrize("module, line", [
    ("torch", "needs torch, which is not installed: pip install 'gristmill[train]'"),
    ("torch.distributed", "needs torch, which is not installed: pip install 'gristmill[train]'"),
    ("safetensors", "needs safetensors, which is not installed: pip install 'gristmill[train]'"),
    ("matplotlib", "needs matplotlib, which is not installed: pip install 'gristmill[train]'"),
    ("yaml", "needs pyyaml, which is not installed: pip install 'gristmill[train]'"),
    ("ray", "needs ray, which is not installed: pip install 'gristmill[ray]'"),
    ("pyarrow.parquet", "needs pyarrow, which is not installed: pip install 'gristmill[prep]'"),
    ("datasets", "needs datasets, which is not installed: pip install datasets"),
    ("tqdm", "needs tqdm, which is not installed: pip install tqdm"),
    ("somethingelse", "needs somethingelse, which is not installed: pip install somethingelse"),
])
def test_missing_package_line(monkeypatch, module, line):
    # As where the package is not installed at all: its top module is not imported either
    # (in a full test run torch and pyarrow are, which reads as "installed but lacking a part").
    monkeypatch.delitem(sys.modules, module.split(".")[0], raising=False)
    assert cli.missing_package_message(ModuleNotFoundError(name=module)) == line


def test_a_part_missing_from_an_installed_package_says_upgrade():
    import numpy  # noqa: F401  (installed, so the message asks for a newer one)

    assert cli.missing_package_message(ModuleNotFoundError(name="numpy.newpart")) == (
        "needs numpy.newpart, which this numpy lacks: pip install -U numpy")


def _block(monkeypatch, *modules: str) -> None:
    """Makes ``import m`` fail for each module, and forgets gristmill modules that import them."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)
    for name in ("gristmill.train", "gristmill.model", "gristmill.sample"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_train_without_torch_names_the_extra(capsys, monkeypatch, tmp_path):
    _block(monkeypatch, "torch")
    assert main(["train", "--data", str(tmp_path), "--out_dir", str(tmp_path / "o")]) == 1
    assert _one_line(capsys.readouterr().err, "train") == (
        "needs torch, which is not installed: pip install 'gristmill[train]'")


def test_parquet_without_pyarrow_names_the_extra(capsys, monkeypatch, tmp_path):
    _block(monkeypatch, "pyarrow", "pyarrow.parquet")
    (tmp_path / "docs.parquet").write_bytes(b"PAR1")
    assert main(["tokenize", str(tmp_path / "docs.parquet"), "-o", str(tmp_path / "o"), "-q"]) == 1
    what = _one_line(capsys.readouterr().err, "tokenize")
    assert "needs pyarrow" in what and what.endswith("pip install 'gristmill[prep]'")


# ---- extras match the imports -----------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Top-level names of the modules a file imports, outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text("utf-8"))
    found: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _requirement_names(requirements: list[str]) -> set[str]:
    import re

    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in requirements}


def test_every_import_is_installed_by_base_or_the_extra_the_message_names():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    base = _requirement_names(project["dependencies"])
    extras = {k: _requirement_names(v) for k, v in project["optional-dependencies"].items()}
    stdlib = set(sys.stdlib_module_names) | {"tomli"}  # tomli: the base's tomllib before 3.11
    third_party = set().union(*(_imports(p) for p in PACKAGE.glob("*.py"))) - stdlib - {"gristmill"}
    assert {"torch", "tqdm", "numpy"} <= third_party  # the scan sees function-level imports
    for module in sorted(third_party):
        package, extra = cli.OPTIONAL_PACKAGES.get(module, (module, None))
        if extra is None:
            assert package in base, f"{module} is imported but {package} is not a dependency"
        else:
            assert package in extras[extra], f"{module}: {package} is not in [{extra}]"
    assert "tqdm" in base  # progress bars are on by default in the byte-level stages
    assert {"torch", "safetensors", "matplotlib", "pyyaml"} <= extras["train"]
    assert "ray" in extras["ray"] and "pyarrow" in extras["prep"]


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "GRISTMILL_DEBUG"}


_BASE_ONLY = """
import sys
for m in {blocked!r}:
    sys.modules[m] = None  # as if not installed
from gristmill.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_byte_level_stages_need_no_extra(tmp_path, shared_data):
    """prep, dedup, tokenizer training and tokenize on .jsonl, .gz, .zst and .txt with only the
    base dependencies importable."""
    import zstandard

    text = (shared_data / "tinyshakespeare.txt").read_text("utf-8")
    paras = [p for p in text.split("\n\n") if p.strip()][:300]
    lines = [json.dumps({"id": str(i), "text": p}) + "\n" for i, p in enumerate(paras)]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text("".join(lines[:100]))
    (src / "b.jsonl.gz").write_bytes(gzip.compress("".join(lines[100:200]).encode()))
    (src / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress("".join(lines[200:]).encode()))
    (src / "d.txt").write_text("\n\n".join(paras[:50]))
    blocked = ["torch", "safetensors", "matplotlib", "yaml", "ray", "pyarrow", "zstandard",
               "datasets", "tiktoken", "tokenizers", "transformers"]
    script = _BASE_ONLY.format(blocked=blocked)
    runs = [
        ["prep", str(src), "-o", str(tmp_path / "prep"), "--preset", "none"],
        ["dedup", str(src), "-o", str(tmp_path / "dedup")],
        ["tokenizer", "train", str(src), "-o", str(tmp_path / "tok"), "--vocab-size", "300"],
        ["tokenize", str(src), "-o", str(tmp_path / "shards"), "-t", str(tmp_path / "tok")],
    ]
    for argv in runs:
        r = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                           env=_env(), cwd=tmp_path)
        assert r.returncode == 0, (argv, r.stderr[-2000:])
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] == 300 + 1  # d.txt is one document


def test_each_finetune_kind_offers_only_its_own_keys(capsys):
    for kind in ("classify", "instruct"):
        with pytest.raises(SystemExit):
            main(["finetune", kind, "--help"])
        text = capsys.readouterr().out
        assert "--lr" in text and "--seed" in text  # the keys both kinds share
        assert ("--loss-on-prompt" in text) == ("--max-new-tokens" in text) == (kind == "instruct")
        assert ("--text-field" in text) == (kind == "classify")
