"""Checkpoints: layout and checksums, and a damaged or missing file named in one line by
resume (train), load and the sample command; old checkpoints and HF GPT-2 folders still load."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gristmill import CheckpointError, load_model
from gristmill.checkpoint import load_optimizer_state, read_best, read_run_state
from gristmill.cli import main
from gristmill.train import train
from hypothesis import given, settings
from hypothesis import strategies as st
from text_shards import byte_tokenizer, text_shards

torch.set_num_threads(1)  # tiny models: one thread is fastest and deterministic

TINY = {"model": "tiny", "n_layer": 1, "n_embd": 32, "block_size": 32, "batch_size": 2,
        "seq_len": 16, "warmup_steps": 1, "progress": False, "plot": False, "eval_batches": 1,
        "eval_interval": 2, "keep_last": 1}
CKPT = "ckpt-0000002"


@pytest.fixture(scope="module")
def small(shared_data, tmp_path_factory):
    text = (shared_data / "tinyshakespeare.txt").read_text("utf-8")[:20_000]
    return text_shards(text, tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def run(small, tmp_path_factory):
    """A finished 2-step run: out_dir with ckpt-0000002 (also the best) and best.json."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(dataset=small, out_dir=str(out), max_steps=2, **TINY)
    return out


@pytest.fixture
def copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _keep_header_randomize_data(path):
    """Random bytes over the tensor data, the safetensors header intact: it still parses."""
    raw = path.read_bytes()
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    rng = np.random.default_rng(0)
    path.write_bytes(raw[:start] + rng.integers(0, 256, len(raw) - start, np.uint8).tobytes())


def damage(out, kind):
    """Damages `out` as `kind`; returns the file the error must name."""
    ckpt = out / CKPT
    weights, optim, best = ckpt / "model.safetensors", ckpt / "optimizer.pt", out / "best.json"
    if kind == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "empty-weights":
        weights.write_bytes(b"")
    elif kind == "random-weights":
        _keep_header_randomize_data(weights)
    elif kind == "missing-weights":
        weights.unlink()
    elif kind == "best-json-garbage":
        best.write_text('{"checkpoint": ')
        return best
    elif kind == "best-json-no-key":
        best.write_text('{"step": 2}')
        return best
    elif kind == "truncated-optimizer":
        optim.write_bytes(optim.read_bytes()[:1000])
        return optim
    return weights


WEIGHT_DEFECTS = ["truncated-weights", "empty-weights", "random-weights", "missing-weights"]
DEFECTS = [*WEIGHT_DEFECTS, "best-json-garbage", "best-json-no-key", "truncated-optimizer"]


def _one_line_naming(err, path):
    assert isinstance(err, CheckpointError), repr(err)
    msg = str(err)
    assert str(path) in msg and "\n" not in msg, msg
    return msg


# ---- the layout ------------------------------------------------------------------------------


def test_checkpoint_records_checksums_of_its_files(run):
    meta = json.loads((run / CKPT / "config.json").read_text())
    assert meta["format"] == "gristmill-checkpoint-1"
    for name in ("model.safetensors", "optimizer.pt", "state.json"):
        data = (run / CKPT / name).read_bytes()
        assert meta["files"][name] == {"bytes": len(data),
                                       "sha256": hashlib.sha256(data).hexdigest()}
    assert json.loads((run / "best.json").read_text())["checkpoint"] == CKPT
    hidden = [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert hidden == [".gristmill-output.json"]  # the run's marker; no temp left


# ---- damage, resuming ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DEFECTS)
def test_resume_from_damaged_checkpoint_is_one_line(small, copy, kind):
    bad = damage(copy, kind)
    log_before = (copy / "log.jsonl").read_text()
    with pytest.raises(ValueError) as e:
        train(dataset=small, out_dir=str(copy), max_steps=4, **TINY)
    msg = _one_line_naming(e.value, bad)
    assert "delete" in msg, msg
    assert (copy / "log.jsonl").read_text() == log_before  # refused before any step
    assert bad.name == "best.json" or (copy / CKPT).is_dir()  # nothing deleted for the user


def test_resume_after_deleting_the_damaged_checkpoint_starts_over(small, copy):
    damage(copy, "truncated-weights")
    shutil.rmtree(copy / CKPT)  # what the error says to do; no earlier one was kept
    (copy / "best.json").unlink()
    assert train(dataset=small, out_dir=str(copy), max_steps=2, **TINY)["step"] == 2


# ---- damage, loading and sampling ------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in DEFECTS if k != "truncated-optimizer"])
@pytest.mark.parametrize("target", ["out_dir", "ckpt"])
def test_load_of_damaged_checkpoint_is_one_line(copy, kind, target):
    bad = damage(copy, kind)
    if target == "ckpt" and bad.name == "best.json":
        load_model(copy / CKPT)  # best.json is not read for a named checkpoint
        return
    with pytest.raises(ValueError) as e:
        load_model(copy if target == "out_dir" else copy / CKPT)
    _one_line_naming(e.value, bad)


def test_load_ignores_the_optimizer(copy):
    damage(copy, "truncated-optimizer")
    assert load_model(copy).config.n_embd == 32


@pytest.mark.parametrize("kind", DEFECTS[:-1])
def test_cli_sample_of_damaged_checkpoint_is_one_line(copy, kind, capsys):
    bad = damage(copy, kind)
    assert main(["sample", str(copy), "-p", "ab", "-n", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gristmill sample: ") and err.count("\n") == 1 and str(bad) in err, err


# ---- older checkpoints and HF folders --------------------------------------------------------


def _drop_checksums(out):
    meta_file = out / CKPT / "config.json"
    meta = json.loads(meta_file.read_text())
    del meta["files"]
    meta_file.write_text(json.dumps(meta))


def test_checkpoint_without_checksums_still_loads_and_resumes(small, copy):
    _drop_checksums(copy)
    assert load_model(copy).config.n_embd == 32
    assert train(dataset=small, out_dir=str(copy), max_steps=4, **TINY)["step"] == 4


@pytest.mark.parametrize("kind", WEIGHT_DEFECTS)
def test_checkpoint_without_checksums_damaged_is_still_named(copy, kind):
    _drop_checksums(copy)
    bad = damage(copy, kind)
    with pytest.raises(ValueError) as e:
        load_model(copy)
    _one_line_naming(e.value, bad)


def test_checkpoint_without_checksums_truncated_optimizer_is_named_on_resume(small, copy):
    _drop_checksums(copy)
    bad = damage(copy, "truncated-optimizer")
    with pytest.raises(ValueError) as e:
        train(dataset=small, out_dir=str(copy), max_steps=4, **TINY)
    assert "delete" in _one_line_naming(e.value, bad)


def test_one_home_and_old_names_still_import():
    import gristmill
    import gristmill.checkpoint as ckpt
    import gristmill.model
    import gristmill.sample
    import gristmill.train

    assert gristmill.load_model is ckpt.load_model is gristmill.model.load_model
    assert gristmill.model.from_hf is ckpt.from_hf and gristmill.sample.tokenizer_for is \
        ckpt.tokenizer_for and gristmill.train.save_checkpoint is ckpt.save_checkpoint
    assert issubclass(gristmill.CheckpointError, ValueError)
    # validation in the loop and the eval command: two names for two jobs
    assert not hasattr(gristmill.train, "evaluate") and callable(gristmill.train.validation_loss)
    import gristmill.eval

    assert callable(gristmill.eval.evaluate) and not hasattr(gristmill.sample, "evaluate")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_folder_loads_and_damaged_is_one_line(tmp_path, fmt, capsys):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=32, vocab_size=257,
                                  bos_token_id=256, eos_token_id=256)
    hf = transformers.GPT2LMHeadModel(cfg)
    if fmt == "safetensors":
        hf.save_pretrained(tmp_path)
    else:  # the older layout: config.json and a pickle
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    byte_tokenizer().save(tmp_path / "tokenizer")
    assert load_model(tmp_path).config.vocab_size == 257
    assert main(["sample", str(tmp_path), "-p", "ab", "-n", "2"]) == 0
    capsys.readouterr()
    weights = tmp_path / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(ValueError) as e:
        load_model(tmp_path)
    _one_line_naming(e.value, weights)
    assert main(["sample", str(tmp_path), "-p", "ab"]) == 1
    assert str(weights) in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["bare", "hf"])
@pytest.mark.parametrize("field,value", [("n_layer", 10**9), ("n_embd", 1 << 20), ("block_size", 10**9),
                                         ("vocab_size", 10**9), ("n_head", 0), ("n_layer", 1.5),
                                         ("dropout", "x")])
def test_config_values_are_refused_before_building(tmp_path, monkeypatch, kind, field, value):
    """A config's bad or huge values (in the weights' metadata, or a HF config.json) are one
    line naming the config's file, checked against the tensors' shapes before a model of that
    size is built."""
    import gristmill.checkpoint as ckpt
    from gristmill.model import GPT, GPTConfig
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = GPT(GPTConfig.from_preset("tiny", vocab_size=96, n_layer=1, block_size=32))
    weights = tmp_path / "model.safetensors"
    hf_names = {"block_size": "n_positions"}
    if kind == "bare":
        ckpt.save_weights(model, weights)
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata()
        config = {**json.loads(meta["gristmill_config"]), field: value}
        save_file(load_file(str(weights)), str(weights),
                  metadata={**meta, "gristmill_config": json.dumps(config)})
        named = weights
    else:
        ckpt.save_hf(model, tmp_path)
        named = tmp_path / "config.json"
        if field == "dropout":
            field = "resid_pdrop"  # not read: a HF dropout is not this GPT's concern
            value = 0.1
        named.write_text(json.dumps({**json.loads(named.read_text()),
                                     hf_names.get(field, field): value}))

    def no_model(*a, **k):
        raise AssertionError("built a model before checking the config")

    monkeypatch.setattr(ckpt, "GPT", no_model)
    if field == "resid_pdrop":
        with pytest.raises(AssertionError, match="built a model"):
            load_model(tmp_path)  # a valid config reaches the build
        return
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    msg = _one_line_naming(e.value, named)
    assert hf_names.get(field, field) in msg or field in msg, msg


# ---- fuzzing: any damage to any file is a CheckpointError or loads, never another error -----


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from([f"{CKPT}/model.safetensors", f"{CKPT}/config.json",
                             f"{CKPT}/state.json", f"{CKPT}/optimizer.pt", "best.json"]),
       checksums=st.booleans(), cut=st.floats(0, 1), patch=st.binary(min_size=0, max_size=16),
       truncate=st.booleans())
def test_fuzzed_checkpoint_files_fail_only_as_checkpoint_errors(run, name, checksums, cut, patch,
                                                                truncate):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        shutil.copytree(run, out)
        if not checksums:
            _drop_checksums(out)
        f = out / name
        raw = f.read_bytes()
        at = int(cut * len(raw))
        f.write_bytes(raw[:at] if truncate else raw[:at] + patch + raw[at + len(patch):])
        for load in (lambda: load_model(out), lambda: read_best(out),
                     lambda: read_run_state(out / CKPT), lambda: load_optimizer_state(out / CKPT)):
            try:
                load()
            except CheckpointError as e:
                assert "\n" not in str(e) and str(out) in str(e), str(e)
