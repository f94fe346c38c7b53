"""GPT model: HF GPT-2 parity (import and export), presets, init, padding, checkpoints, config."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gristmill.checkpoint import from_hf, load_model, load_weights, save_hf, save_weights
from gristmill.config import resolve_config
from gristmill.model import GPT, GPTConfig, KVCache

torch.set_num_threads(1)  # tiny models: one thread is fastest and deterministic


def _hf_model(vocab=1000, n_layer=2, n_head=4, n_embd=64, n_positions=64, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                                  n_positions=n_positions, vocab_size=vocab,
                                  bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_import_from_hf_matches_transformers_logits(tmp_path, fmt):
    hf = _hf_model()
    if fmt == "safetensors":
        hf.save_pretrained(tmp_path)
    else:  # OpenAI's original layout: bare GPT2Model keys, attn.bias buffers, a pickle
        hf.config.save_pretrained(tmp_path)
        sd = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()
              if k != "lm_head.weight"}
        sd["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        torch.save(sd, tmp_path / "pytorch_model.bin")
    ours = from_hf(tmp_path).eval()
    assert ours.config.vocab_size == 1000 and ours.config.padded_vocab_size == 1024
    x = torch.randint(0, 1000, (3, 40))
    with torch.no_grad():
        expected = hf(x).logits
        got, _ = ours(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


def test_export_to_hf_loads_in_transformers_with_same_logits(tmp_path):
    torch.manual_seed(1)
    ours = GPT(GPTConfig(block_size=64, vocab_size=500, n_layer=2, n_head=2, n_embd=32)).eval()
    save_hf(ours, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 500, (2, 64))
    with torch.no_grad():
        assert (hf(x).logits - ours(x)[0]).abs().max().item() <= 1e-4
    # and back again: the round trip is exact
    again = from_hf(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(x)[0], ours(x)[0])


def test_export_without_bias_gives_zero_biases(tmp_path):
    ours = GPT(GPTConfig(block_size=32, vocab_size=100, n_layer=1, n_head=2, n_embd=16,
                         bias=False)).eval()
    save_hf(ours, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 100, (1, 32))
    with torch.no_grad():
        assert (hf(x).logits - ours(x)[0]).abs().max().item() <= 1e-4


def test_from_hf_rejects_other_architectures(tmp_path):
    hf = _hf_model()
    hf.config.activation_function = "relu"
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="activation_function"):
        from_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_hf(tmp_path / "nowhere")


@pytest.mark.parametrize("name,params", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
                                         ("gpt2-large", 774_030_080),
                                         ("gpt2-xl", 1_557_611_200)])
def test_presets_have_gpt2_sizes(name, params):
    with torch.device("meta"):  # no memory, no init cost
        model = GPT(GPTConfig.from_preset(name, vocab_multiple=1))
    assert model.num_params(non_embedding=False) == params
    assert GPTConfig.from_preset(name).padded_vocab_size == 50304


def test_config_is_checked():
    with pytest.raises(ValueError, match="unknown model preset"):
        GPTConfig.from_preset("gpt3")
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        GPTConfig.from_dict({"n_layers": 2})
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPTConfig(n_embd=100, n_head=3)


@pytest.mark.parametrize("field,value", [
    ("n_head", 0), ("n_layer", -1), ("n_layer", 1.5), ("block_size", True), ("vocab_size", "x"),
    ("n_embd", None), ("vocab_multiple", []), ("dropout", -0.1), ("dropout", 1.0),
    ("dropout", float("nan")), ("dropout", "x"), ("dropout", None), ("dropout", True),
    ("bias", 1), ("bias", None), ("n_head", 10**9)])
def test_config_values_are_checked(field, value):
    # A wrong type or range is a ValueError naming the field, never a TypeError or
    # ZeroDivisionError from deep inside the model.
    with pytest.raises(ValueError, match=field) as e:
        GPTConfig.from_dict({"n_layer": 2, "n_head": 2, "n_embd": 64, field: value})
    assert "\n" not in str(e.value)
    # what configs and CLIs write is still fine: an integer dropout, numpy sizes
    import numpy as np

    cfg = GPTConfig(n_layer=np.int64(2), n_head=2, n_embd=64, dropout=0)
    assert type(cfg.n_layer) is int and cfg.dropout == 0.0 and type(cfg.dropout) is float


def test_gpt2_init_and_weight_tying():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, vocab_size=1000, n_layer=8, n_head=4, n_embd=256)
    model = GPT(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in model.transformer.h])
    fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert fc.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(b.attn.c_attn.bias.abs().sum() == 0 for b in model.transformer.h)


def test_pad_logits_never_leave_the_model():
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=100))
    with torch.no_grad():
        model.lm_head.weight[100:] = 100.0  # pad rows that would win every argmax
    logits, loss = model(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long))
    assert logits.shape == (2, 5, 100)
    assert loss.item() < 20  # the pad columns do not enter the softmax


def test_optimizer_decays_only_matrices():
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=100))
    opt = model.configure_optimizer(lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params(non_embedding=False)


def test_kv_cache_forward_equals_full_forward():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=100)).eval()
    x = torch.randint(0, 100, (2, 20))
    cache = KVCache(model.config, 2, 32)
    with torch.no_grad():
        full, _ = model(x)
        parts = [model(x[:, :7], cache=cache)[0], model(x[:, 7:12], cache=cache)[0]]
        parts += [model(x[:, i:i + 1], cache=cache)[0] for i in range(12, 20)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_flops_per_token_formula():
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=100))
    n = model.num_params()
    assert model.flops_per_token(128) == 6 * n + 12 * 2 * 2 * 32 * 128


def test_weights_round_trip_and_compile_prefix(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=100, dropout=0.1))
    sd = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}  # as torch.compile saves
    save_weights(model, tmp_path / "model.safetensors", sd)
    loaded = load_weights(tmp_path / "model.safetensors")
    assert loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert load_model(tmp_path).config == model.config  # a checkpoint directory


def test_config_overrides_and_files(tmp_path):
    cfg = resolve_config(overrides={"n_layer": "4", "compile": "true", "lr": "1e-3",
                                    "dropout": "none"})
    assert (cfg.n_layer, cfg.compile, cfg.lr, cfg.dropout) == (4, True, 1e-3, None)
    with pytest.raises(ValueError, match="did you mean 'batch_size'"):
        resolve_config(overrides={"batchsize": 4})
    with pytest.raises(ValueError, match="wants int"):
        resolve_config(overrides={"max_steps": "ten"})
    (tmp_path / "run.toml").write_text('model = "tiny"\nmax_steps = 50\n[model_shape]\nn_embd = 32\n')
    cfg = resolve_config(tmp_path / "run.toml", {"max_steps": "60"})
    assert (cfg.model, cfg.max_steps, cfg.n_embd) == ("tiny", 60, 32)
    (tmp_path / "run.yaml").write_text("model: mini\nbatch_size: 3\n")
    assert resolve_config(tmp_path / "run.yaml").batch_size == 3


def test_import_gristmill_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, gristmill, gristmill.cli, gristmill.config; gristmill.cli.build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "print(gristmill.TrainConfig().model)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "gpt2", out.stderr
    import gristmill

    assert gristmill.GPT is GPT


@pytest.mark.parametrize("layout", [{}, {"position": "rotary", "norm": "rmsnorm", "bias": False}])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_hidden_states_in_two_parts_equal_one_pass(layout, k):
    """The first k blocks' residual stream (stop=k), then the rest from it (start=k), give
    what one pass gives: what fine-tuning with frozen first blocks relies on."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=3, n_head=2, n_embd=16,
                        **layout)).eval()
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        whole = gpt.hidden_states(idx)
        first = gpt.hidden_states(idx, stop=k)
        rest = gpt.hidden_states(idx, start=k, inputs=first)
    assert torch.allclose(rest, whole, atol=1e-6)
    assert k == 3 or not torch.allclose(first, whole)  # no final norm on the first part


def test_hidden_states_in_parts_refuses_a_cache_or_missing_inputs():
    gpt = GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=16))
    idx = torch.randint(0, 97, (1, 4))
    with pytest.raises(ValueError, match="start=1 needs inputs"):
        gpt.hidden_states(idx, start=1)
    with pytest.raises(ValueError, match="not with a KV cache"):
        gpt.hidden_states(idx, stop=1, cache=KVCache(gpt.config, 1, 16))
