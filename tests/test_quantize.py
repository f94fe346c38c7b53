"""int8 weights: accuracy (bits per byte of a briefly trained model within 1%), memory, saved
copies that load with every command and quantize back to the same int8 model, refusals."""

from __future__ import annotations

import copy
from importlib import resources

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from gristmill.checkpoint import CheckpointError, load_model, save_weights
from gristmill.cli import main
from gristmill.eval import evaluate
from gristmill.model import GPT, GPTConfig
from gristmill.outputs import OutputFolderError
from gristmill.quantize import (
    QuantizeError,
    dequantize_state_dict,
    quantize,
    quantize_run,
    quantized_state_dict,
    weight_bytes,
)
from text_shards import byte_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    text = resources.files("gristmill").joinpath("data", "tinyshakespeare.txt").read_bytes()
    ids = np.frombuffer(text[:200_000], dtype=np.uint8).astype(np.int64)  # byte tokens
    return ids[:180_000], ids[180_000:]


@pytest.fixture(scope="module")
def trained(data):
    """A tiny byte-level model trained for a few seconds on Shakespeare."""
    train, _ = data
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=128, block_size=64, vocab_size=257))
    opt = model.configure_optimizer(lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(120):
        starts = torch.randint(0, len(train) - 65, (16,), generator=gen)
        batch = torch.stack([torch.as_tensor(train[s: s + 65]) for s in starts.tolist()])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 3.0  # it learned something: bytes alone are ~4.5 nats
    return model.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained):
    """The trained model as a weights folder, and its tokenizer saved beside it."""
    d = tmp_path_factory.mktemp("q")
    (d / "run").mkdir()
    save_weights(trained, d / "run" / "model.safetensors")
    byte_tokenizer().save(d / "tok")
    return d


def test_int8_bits_per_byte_within_one_percent(trained, data):
    _, val = data
    tok = byte_tokenizer()
    q = quantize(copy.deepcopy(trained), "int8")
    full = evaluate(trained, val, tok, batch_size=8)
    int8 = evaluate(q, val, tok, batch_size=8)
    assert int8["bits_per_byte"] <= full["bits_per_byte"] * 1.01
    assert abs(int8["bits_per_byte"] - full["bits_per_byte"]) / full["bits_per_byte"] < 0.01
    assert weight_bytes(q) < 0.6 * weight_bytes(trained)
    assert q.quantization == "int8"


def test_int4_needs_cuda_and_modes_are_checked(trained):
    with pytest.raises(QuantizeError, match="CUDA"):
        quantize(copy.deepcopy(trained), "int4")
    with pytest.raises(QuantizeError, match="expected one of"):
        quantize(copy.deepcopy(trained), "int3")
    with pytest.raises(QuantizeError, match="only int8"):
        quantized_state_dict(trained, "int4")


def test_saved_copy_quantizes_back_to_the_same_model(run, trained, tmp_path):
    out = quantize_run(run / "run", tmp_path / "int8")
    assert (out / "model.safetensors").stat().st_size < \
        0.6 * (run / "run" / "model.safetensors").stat().st_size
    loaded = load_model(out)
    assert loaded.quantization == "int8"
    x = torch.randint(0, 257, (2, 40))
    direct = quantize(copy.deepcopy(trained), "int8")
    again = quantize(loaded, "int8")
    with torch.no_grad():
        assert torch.equal(direct(x)[0], again(x)[0])
    with pytest.raises(QuantizeError, match="already a quantized"):
        quantize_run(out, tmp_path / "twice")
    # an output folder holding someone else's file is refused, and left as it was
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputFolderError, match="notes.txt"):
        quantize_run(run / "run", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    # rerun into its own folder: replaced
    assert quantize_run(run / "run", tmp_path / "int8") == out


def test_damaged_scales_are_named(trained):
    sd = quantized_state_dict(trained)
    key = next(k for k in sd if k.endswith(".weight_scale"))
    sd[key] = sd[key][:-1]
    with pytest.raises(QuantizeError, match="one scale per row"):
        dequantize_state_dict(sd)
    assert issubclass(QuantizeError, ValueError) and issubclass(CheckpointError, ValueError)


def test_cli_quantize_sample_eval(run, tmp_path, capsys):
    tok = str(run / "tok")
    out = tmp_path / "copy"
    assert main(["quantize", str(run / "run"), "-o", str(out)]) == 0
    assert "int8" in capsys.readouterr().out
    args = ["-t", tok, "-p", "ROMEO:", "-n", "12", "--temperature", "0", "--no-stream"]
    assert main(["sample", str(out), *args]) == 0
    from_copy = capsys.readouterr().out
    assert main(["sample", str(run / "run"), "--quantize", "int8", *args]) == 0
    assert capsys.readouterr().out == from_copy
    text = tmp_path / "val.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 5)
    assert main(["eval", str(out), "-t", tok, "--text", str(text), "--no-progress"]) == 0
    assert "bits/byte" in capsys.readouterr().out
    assert main(["sample", str(run / "run"), "--quantize", "int4", "--device", "cpu",
                 *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "int4" in err[0] and "CUDA" in err[0]
    assert main(["quantize", str(out), "-o", str(tmp_path / "again")]) == 1
    assert "already a quantized" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_cuda_weight_only_quantization(trained, data, mode):
    """torchao's weight-only kernels on CUDA: bits per byte close to bfloat16's."""
    pytest.importorskip("torchao")
    _, val = data
    tok = byte_tokenizer()
    base = copy.deepcopy(trained).to("cuda", torch.bfloat16)
    q = quantize(copy.deepcopy(trained).to("cuda", torch.bfloat16), mode)
    full = evaluate(base, val, tok, batch_size=8)["bits_per_byte"]
    got = evaluate(q, val, tok, batch_size=8)["bits_per_byte"]
    assert got <= full * (1.01 if mode == "int8" else 1.05)
    assert weight_bytes(q) < weight_bytes(base)
