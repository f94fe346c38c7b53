"""Training loop: learning, exact resume, accumulation, DDP (gloo, 2 processes), errors, CLI.

The data is real shards of Tiny Shakespeare (tests/text_shards.py); the tokenizer is byte-level
so the tiny models train in seconds on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gristmill.checkpoint import load_model
from gristmill.cli import main
from gristmill.config import TrainConfig
from gristmill.train import TrainingError, lr_at, train
from text_shards import Accumulated, MergedRanks, byte_tokenizer, text_shards

torch.set_num_threads(1)  # tiny models: one thread is fastest and deterministic

TINY = {"model": "tiny", "n_layer": 2, "n_embd": 32, "block_size": 64, "batch_size": 4, "seq_len": 32,
            "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "progress": False, "plot": False, "eval_batches": 4}


@pytest.fixture(scope="module")
def shakespeare(shared_data, tmp_path_factory):
    text = (shared_data / "tinyshakespeare.txt").read_text("utf-8")
    return text_shards(text, tmp_path_factory.mktemp("shakespeare"))


@pytest.fixture(scope="module")
def small(shared_data, tmp_path_factory):
    text = (shared_data / "tinyshakespeare.txt").read_text("utf-8")[:100_000]
    return text_shards(text, tmp_path_factory.mktemp("small"))


def _weights(ckpt):
    return load_model(ckpt).state_dict()


def test_tiny_model_learns_shakespeare_below_unigram_entropy(shakespeare, tmp_path):
    counts = np.bincount(shakespeare.tokens("train"), minlength=shakespeare.n_vocab)
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())  # ~3.3 nats/byte
    result = train(dataset=shakespeare, out_dir=str(tmp_path), **{
        **TINY, "n_embd": 64, "batch_size": 16, "seq_len": 64, "max_steps": 200,
        "warmup_steps": 20, "eval_interval": 100, "eval_batches": 10, "plot": True})
    assert result["val_loss"] < unigram_entropy - 0.6, (result["val_loss"], unigram_entropy)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 201))
    assert {"lr", "grad_norm", "tokens_per_s", "mfu", "tokens"} <= set(steps[0])
    assert [r["step"] for r in log if "val_loss" in r] == [100, 200]


def test_resume_is_bitwise_identical_on_cpu(small, tmp_path):
    run = {**TINY, "dropout": 0.1, "max_steps": 8, "lr_decay_steps": 8, "eval_interval": 4,
           "keep_last": 1}
    whole = train(dataset=small, out_dir=str(tmp_path / "whole"), **run)
    first = train(dataset=small, out_dir=str(tmp_path / "split"), **{**run, "max_steps": 5})
    second = train(dataset=small, out_dir=str(tmp_path / "split"), **run)
    assert first["losses"] + second["losses"] == whole["losses"]  # exact, not approximate
    a, b = _weights(whole["checkpoint"]), _weights(second["checkpoint"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the log reads as one run; checkpoints: the last one and the best one are kept
    log = (tmp_path / "split" / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in log if '"loss"' in r] == list(range(1, 9))
    kept = sorted(p.name for p in (tmp_path / "split").glob("ckpt-*"))
    best = json.loads((tmp_path / "split" / "best.json").read_text())["checkpoint"]
    assert kept[-1] == "ckpt-0000008" and best in kept and len(kept) <= 2
    state = json.loads((tmp_path / "split" / "ckpt-0000008" / "state.json").read_text())
    assert state["step"] == 8 and state["samplers"][0]["batches"] == 8


def test_gradient_accumulation_equals_one_big_batch(small, tmp_path):
    run = {**TINY, "max_steps": 4, "eval_interval": 100, "sampling": "sequential"}
    big = train(dataset=Accumulated(small, 4), out_dir=str(tmp_path / "big"),
                **{**run, "batch_size": 16})
    acc = train(dataset=small, out_dir=str(tmp_path / "acc"),
                **{**run, "batch_size": 4, "tokens_per_step": 16 * 32})
    np.testing.assert_allclose(acc["losses"], big["losses"], rtol=1e-5)
    a, b = _weights(big["checkpoint"]), _weights(acc["checkpoint"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_gloo_equal_single_process(small, tmp_path, shared_data, mode):
    """torchrun, 2 CPU processes: DDP in one go; FSDP stopped at step 2 and resumed."""
    run = {**TINY, "max_steps": 4, "lr_decay_steps": 4, "eval_interval": 2, "eval_batches": 2}
    runs = [run] if mode == "ddp" else [{**run, "fsdp": True, "max_steps": 2},
                                        {**run, "fsdp": True}]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).parent / "ddp_train_worker.py"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(worker), str(small.path), str(tmp_path / mode), *map(json.dumps, runs)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = train(dataset=MergedRanks(small, 2), out_dir=str(tmp_path / "ref"),
                **{**run, "batch_size": 2 * run["batch_size"]})
    log = [json.loads(r) for r in (tmp_path / mode / "log.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([r["loss"] for r in log if "loss" in r], ref["losses"], rtol=1e-5)
    np.testing.assert_allclose([r["val_loss"] for r in log if "val_loss" in r][-1],
                               ref["val_loss"], rtol=1e-5)
    a, b = _weights(tmp_path / mode / "ckpt-0000004"), _weights(ref["checkpoint"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    state = json.loads((tmp_path / mode / "ckpt-0000004" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["samplers"]) == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(small, tmp_path, monkeypatch):
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at step 4.*ckpt-0000002"):
        train(dataset=small, out_dir=str(tmp_path), **{**TINY, "max_steps": 6,
                                                       "eval_interval": 2, "eval_batches": 1})
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-0000002"]


def test_clear_errors(small, tmp_path):
    with pytest.raises(ValueError, match="fingerprint"):
        train(dataset=small, out_dir=str(tmp_path), tokenizer="gpt2", **TINY)
    with pytest.raises(ValueError, match="not a multiple"):
        train(dataset=small, out_dir=str(tmp_path), tokens_per_step=1000, **TINY)
    with pytest.raises(ValueError, match="exceeds the model's block_size"):
        train(dataset=small, out_dir=str(tmp_path), **{**TINY, "seq_len": 65})
    with pytest.raises(FileNotFoundError, match="gristmill tokenize"):
        train(data=str(tmp_path / "missing"), out_dir=str(tmp_path), **TINY)
    with pytest.raises(ValueError, match="unknown config key"):
        train(dataset=small, out_dir=str(tmp_path), n_layers=3)


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_out_dir_holding_other_files_is_refused_before_any_step(small, tmp_path, capsys):
    # train overwrote a user's log.jsonl and loss.png, and with resume=auto loaded a user's
    # own ckpt-* folder (and would later have pruned it).
    from gristmill import OutputFolderError

    out = tmp_path / "mine"
    out.mkdir()
    (out / "log.jsonl").write_text("my log\n")
    (out / "loss.png").write_bytes(b"my plot")
    before = _tree(out)
    with pytest.raises(OutputFolderError, match=r"mine/: holds files this run did not write \(log.jsonl, loss.png\)"):
        train(dataset=small, out_dir=str(out), **{**TINY, "max_steps": 1})
    assert _tree(out) == before
    (out / "ckpt-0000001").mkdir()
    (out / "ckpt-0000001" / "weights.pt").write_bytes(b"my weights")
    before = _tree(out)
    flags = [f"--{k}={v}" for k, v in {**TINY, "max_steps": 1}.items()]
    assert main(["train", f"--data={small.path}", f"--out_dir={out}", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gristmill train: ") and err.count("\n") == 1, err
    assert "holds files this run did not write (ckpt-0000001/weights.pt, log.jsonl, loss.png)" in err, err
    assert _tree(out) == before


def test_a_run_made_before_markers_still_resumes(small, tmp_path):
    out = tmp_path / "run"
    train(dataset=small, out_dir=str(out), **{**TINY, "max_steps": 2})
    marker = out / ".gristmill-output.json"
    assert json.loads(marker.read_text()) == {"command": "train"}
    marker.unlink()  # as runs were written before markers existed
    assert train(dataset=small, out_dir=str(out), **{**TINY, "max_steps": 3})["step"] == 3
    assert marker.exists()


def test_tokenizer_is_checked_and_saved_with_the_checkpoint(small, tmp_path):
    tok = byte_tokenizer()
    tok.save(tmp_path / "tok")
    result = train(dataset=small, out_dir=str(tmp_path / "run"), tokenizer=str(tmp_path / "tok"),
                   **{**TINY, "max_steps": 1})
    ckpt = Path(result["checkpoint"])
    assert (ckpt / "tokenizer" / "tokenizer.tiktoken").exists()
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["tokenizer_fingerprint"] == tok.fingerprint
    assert meta["model"]["n_embd"] == 32 and meta["train"]["max_steps"] == 1


def test_lr_schedules():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    wsd = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=10, max_steps=100, schedule="wsd",
                      decay_frac=0.2)
    assert lr_at(79, wsd) == 1.0 and lr_at(90, wsd) == pytest.approx(0.5)
    assert lr_at(100, wsd) == 0.0


def test_cli_train(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--tokens_per_step" in out and "--n-layer" in out
    assert main(["train", f"--data={tmp_path / 'none'}", "--max_steps=1"]) == 1
    assert "gristmill tokenize" in capsys.readouterr().err
    assert main(["train", "--max_steps=many"]) == 1
    assert "wants int" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_compile_trains(small, tmp_path):
    result = train(dataset=small, out_dir=str(tmp_path), compile=True,
                   **{**TINY, "max_steps": 20, "eval_interval": 20})
    assert result["losses"][-1] < result["losses"][0]
    meta = json.loads((Path(result["checkpoint"]) / "config.json").read_text())
    assert meta["train"]["compile"] and "_orig_mod" not in str(_weights(result["checkpoint"]))


@pytest.mark.slow
def test_compile_on_cpu_matches_eager_and_saves_plain_names(small, tmp_path):
    # torch.compile (inductor, C++ on CPU) is the path CUDA runs too: same losses as eager
    # within float tolerance, and checkpoints without the "_orig_mod." prefix.
    settings = {**TINY, "max_steps": 3, "eval_interval": 3}
    eager = train(dataset=small, out_dir=str(tmp_path / "eager"), **settings)
    compiled = train(dataset=small, out_dir=str(tmp_path / "compiled"), compile=True, **settings)
    np.testing.assert_allclose(compiled["losses"], eager["losses"], rtol=1e-4)
    meta = json.loads((Path(compiled["checkpoint"]) / "config.json").read_text())
    assert meta["train"]["compile"] and "_orig_mod" not in str(list(_weights(compiled["checkpoint"])))
