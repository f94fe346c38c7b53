"""One set of defaults: the CLI, the Python API and pipeline files agree (issue: the same
setting had different defaults in different entry points)."""

import argparse
import inspect

import pytest
from gristmill import defaults
from gristmill.cli import build_parser
from gristmill.shards import write_shards
from gristmill.tokenizer import Tokenizer


def _subparser(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _cli_defaults(*names: str) -> dict:
    return {a.dest: a.default for a in _subparser(*names)._actions}


def _api_defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_tokenizer_train_defaults_agree():
    cli, api = _cli_defaults("tokenizer", "train"), _api_defaults(Tokenizer.train)
    for key in ("vocab_size", "pattern", "min_frequency", "text_field"):
        assert cli[key] == api[key] == defaults.TOKENIZER[key], key
    assert tuple(api["special_tokens"]) == defaults.TOKENIZER["special_tokens"]


def test_tokenize_defaults_agree():
    cli, api = _cli_defaults("tokenize"), _api_defaults(write_shards)
    for key in ("shard_size", "val_fraction", "eot", "text_field", "txt_mode"):
        assert cli[key] == api[key] == defaults.TOKENIZE[key], key
    assert cli["tokenizer"] == defaults.TOKENIZE["tokenizer"]


def test_sample_defaults_agree():
    pytest.importorskip("torch")
    from gristmill.sample import SamplingConfig

    cli, api = _cli_defaults("sample"), SamplingConfig()
    for key, value in defaults.SAMPLE.items():
        assert getattr(api, key) == value, key
        if key in cli:
            assert cli[key] == value, key


def test_pipeline_stages_take_the_same_defaults(tmp_path, monkeypatch):
    """A pipeline file that leaves a setting out gets the API's default: the stage passes only
    the settings it was given."""
    from gristmill import pipeline

    seen = {}

    def fake_train(texts, **kwargs):
        seen["tokenizer"] = kwargs
        raise RuntimeError("stop")

    monkeypatch.setattr(Tokenizer, "train", staticmethod(fake_train))
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "docs-00000.jsonl").write_text('{"text": "hello"}\n')
    with pytest.raises(RuntimeError):
        pipeline._stage_tokenizer({}, {"inputs": []}, tmp_path / "tok", {"prep": tmp_path / "prep"}, False)
    for key in ("vocab_size", "pattern", "special_tokens"):
        assert seen["tokenizer"].get(key, defaults.TOKENIZER[key]) == defaults.TOKENIZER[key]


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tokenizer", "train", "--help"])
    out = capsys.readouterr().out
    assert f"(default: {defaults.TOKENIZER['vocab_size']})" in out


def test_dedup_defaults_agree():
    from gristmill.dedup import DedupConfig

    cli, api = _cli_defaults("dedup"), DedupConfig()
    for key in ("bands", "rows", "ngram", "seed", "memory_limit"):
        assert cli[key] == getattr(api, key), key
    assert cli["output_format"] == api.fmt if "output_format" in cli else cli["format"] == api.fmt
