"""The modern recipe's layout options and optimizer, each against a written-out reference.

Rotary positions against complex-number RoPE and transformers' Llama rotary; RMSNorm against its
formula and transformers' LlamaRMSNorm; QK-norm, ReLU², an untied head, the logit soft-cap and
zero-initialised projections through a whole model written out with plain tensor operations;
Muon against its update rule written out; checkpoints of the new layouts, the refusals of
incompatible options, KV-cached generation and a short training run with ``recipe=modern``.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gristmill.checkpoint import load_model, load_weights, save_hf, save_weights
from gristmill.config import LAYOUT_CHOICES, RECIPES, TrainConfig, resolve_config
from gristmill.model import (
    GPT,
    GPT2_LAYOUT,
    GPTConfig,
    apply_rotary,
    config_from_hf,
    rotary_tables,
)
from gristmill.sample import generate
from gristmill.train import TrainingError, train
from text_shards import text_shards

torch.set_num_threads(1)  # tiny models: one thread is fastest and deterministic

MODERN = {k: v for k, v in RECIPES["modern"].items() if k != "optimizer"}
# every layout option away from GPT-2's at once (the preset leaves the head tied and uncapped)
ALL = {**MODERN, "tie_embeddings": False, "logit_softcap": 15.0}


def _config(**kw) -> GPTConfig:
    return GPTConfig(**{"block_size": 32, "vocab_size": 97, "n_layer": 2, "n_head": 4,
                        "n_embd": 32, **kw})


def _randomise(model: GPT, seed: int = 0) -> GPT:
    """Every parameter random (zero_init's zeros and the norms' ones would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


# ---- written-out references ------------------------------------------------------------------


def rope_complex(x, positions, theta=10000.0):
    """RoPE as the paper writes it: each pair (x[i], x[i + D/2]) a complex number, multiplied
    by e^{i·pos·theta^(-2i/D)}."""
    D = x.shape[-1]
    freqs = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = positions.to(torch.float64)[:, None] * freqs  # (T, D/2)
    z = torch.complex(x[..., : D // 2].double(), x[..., D // 2:].double())
    z = z * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def rms_norm(x, weight, eps=1e-5):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def layer_norm(x, weight, bias, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    out = (x - mu) / torch.sqrt(var + eps) * weight
    return out if bias is None else out + bias


def reference_logits(model: GPT, idx):
    """The model's logits computed from its state dict with plain operations: no nn modules,
    no SDPA, complex-number RoPE, the norms' formulas, softmax attention written out."""
    c = model.config
    sd = model.state_dict()
    H, D = c.n_head, c.n_embd // c.n_head
    T = idx.shape[1]
    pos = torch.arange(T)

    def lin(x, name):
        y = x @ sd[name + ".weight"].T
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    def norm(x, name):
        if c.norm == "rmsnorm":
            return rms_norm(x, sd[name + ".weight"])
        return layer_norm(x, sd[name + ".weight"], sd.get(name + ".bias"))

    x = sd["transformer.wte.weight"][idx]
    if c.position == "learned":
        x = x + sd["transformer.wpe.weight"][pos]
    for i in range(c.n_layer):
        p = f"transformer.h.{i}."
        h = norm(x, p + "ln_1")
        q, k, v = lin(h, p + "attn.c_attn").split(c.n_embd, dim=-1)
        q, k, v = (t.view(*t.shape[:2], H, D).transpose(1, 2) for t in (q, k, v))
        if c.qk_norm:
            q, k = rms_norm(q, sd[p + "attn.q_norm.weight"]), rms_norm(k, sd[p + "attn.k_norm.weight"])
        if c.position == "rotary":
            q, k = rope_complex(q, pos, c.rope_theta), rope_complex(k, pos, c.rope_theta)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = x + lin(y, p + "attn.c_proj")
        h = lin(norm(x, p + "ln_2"), p + "mlp.c_fc")
        h = torch.relu(h) ** 2 if c.activation == "relu2" else \
            0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
        x = x + lin(h, p + "mlp.c_proj")
    x = norm(x, "transformer.ln_f")
    logits = (x @ sd["lm_head.weight"].T)[..., : c.vocab_size]
    if c.logit_softcap:
        logits = c.logit_softcap * torch.tanh(logits / c.logit_softcap)
    return logits


# ---- the pieces ------------------------------------------------------------------------------


def test_rotary_matches_complex_rope_and_transformers_llama():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 11, 16), torch.randn(2, 3, 11, 16)
    pos = torch.arange(5, 16)  # an offset, as a KV cache gives
    cos, sin = rotary_tables(pos, 16, 500.0)
    ours = apply_rotary(q, cos, sin)
    assert torch.allclose(ours, rope_complex(q, pos, 500.0), atol=1e-5)
    # transformers' Llama: cos/sin of the full head size (the halves repeated), per row
    full_cos = torch.cat([cos, cos], -1)[None].expand(2, -1, -1)
    full_sin = torch.cat([sin, sin], -1)[None].expand(2, -1, -1)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, full_cos, full_sin)
    assert torch.allclose(ours, hf_q, atol=1e-6)
    assert torch.allclose(apply_rotary(k, cos, sin), hf_k, atol=1e-6)
    # per-row positions (left-padded batches): row b rotated by its own positions
    rows = torch.stack([pos, pos - 5])
    cos_b, sin_b = rotary_tables(rows, 16, 500.0)
    out = apply_rotary(q, cos_b, sin_b)
    assert torch.allclose(out[0], ours[0], atol=1e-6)
    assert torch.allclose(out[1], rope_complex(q[1], pos - 5, 500.0), atol=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        ci, si = rotary_tables(torch.tensor([i]), 8)
        cj, sj = rotary_tables(torch.tensor([j]), 8)
        return float((apply_rotary(q, ci, si) * apply_rotary(k, cj, sj)).sum())

    assert score(7, 3) == pytest.approx(score(24, 20), abs=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-4)


def test_rmsnorm_matches_formula_and_transformers():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    model = _randomise(GPT(_config(norm="rmsnorm", bias=False)))
    norm = model.transformer.h[0].ln_1
    assert isinstance(norm, torch.nn.RMSNorm)
    x = torch.randn(3, 5, 32) * 4
    hf = LlamaRMSNorm(32, eps=1e-5)
    with torch.no_grad():
        hf.weight.copy_(norm.weight)
        assert torch.allclose(norm(x), rms_norm(x, norm.weight), atol=1e-5)
        assert torch.allclose(norm(x), hf(x), atol=1e-5)
    assert not any("bias" in k for k in model.state_dict() if "ln" in k)


@pytest.mark.parametrize("options", [
    {},  # GPT-2
    {"position": "rotary"},
    {"norm": "rmsnorm"},
    {"qk_norm": True},
    {"activation": "relu2"},
    {"tie_embeddings": False},
    {"logit_softcap": 5.0},
    MODERN,
    ALL,
], ids=lambda o: "all" if o is ALL else ",".join(o) or "gpt2")
def test_model_matches_written_out_reference(options):
    model = _randomise(GPT(_config(**options)))
    idx = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        got, _ = model(idx)
        want = reference_logits(model, idx)
    assert got.shape == want.shape == (2, 20, 97)
    assert (got - want).abs().max().item() <= 1e-4


def test_softcap_bounds_logits_as_the_formula():
    torch.manual_seed(0)
    capped = _randomise(GPT(_config(logit_softcap=2.0)))
    plain = GPT(_config())
    plain.load_state_dict(capped.state_dict())
    idx = torch.randint(0, 97, (1, 16))
    with torch.no_grad():
        raw, c = plain.eval()(idx)[0], capped(idx)[0]
    assert raw.abs().max() > 2.0 and c.abs().max() < 2.0
    assert torch.allclose(c, 2.0 * torch.tanh(raw / 2.0), atol=1e-5)


def test_untied_head_and_zero_init():
    torch.manual_seed(0)
    model = GPT(_config(tie_embeddings=False, zero_init=True, bias=False))
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert float(model.transformer.wte.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    zero = [n for n, p in model.named_parameters() if not p.any()]
    assert sorted(zero) == sorted(["lm_head.weight"] + [
        f"transformer.h.{i}.{m}.c_proj.weight" for i in range(2) for m in ("attn", "mlp")])
    # every output projection at zero: the model starts at the uniform distribution
    idx = torch.randint(0, 97, (2, 16))
    assert float(model(idx, idx)[1].detach()) == pytest.approx(math.log(97), abs=1e-5)
    # tied: zero_init leaves the embedding (which is the head) alone
    tied = GPT(_config(zero_init=True))
    assert tied.transformer.wte.weight.any() and not tied.transformer.h[0].mlp.c_proj.weight.any()
    # parameter accounting: the untied input table does no matmul
    assert model.num_params() == model.num_params(False) - 128 * 32 - 32 * 32  # wte, wpe
    rotary = GPT(_config(position="rotary"))
    assert "transformer.wpe.weight" not in rotary.state_dict()
    assert rotary.num_params() == rotary.num_params(False)


def test_gpt2_default_is_the_gpt2_layout():
    c = GPTConfig()
    assert c.layout == "gpt2" and c.non_gpt2_options() == {}
    assert set(GPT2_LAYOUT) == {"position", "norm", "activation", "qk_norm", "tie_embeddings",
                                "logit_softcap", "zero_init", "rope_theta"}
    assert GPTConfig(rope_theta=500.0).layout == "gpt2"  # unused without rotary
    assert GPTConfig(position="rotary").non_gpt2_options() == {"position": "rotary"}
    for name, choices in LAYOUT_CHOICES.items():
        assert getattr(c, name) == choices[0]


@pytest.mark.parametrize("field,value,match", [
    ("position", "alibi", "position must be learned or rotary"),
    ("norm", "batchnorm", "norm must be layernorm or rmsnorm"),
    ("activation", "swiglu", "activation must be gelu or relu2"),
    ("qk_norm", "yes", "qk_norm must be true or false"),
    ("logit_softcap", -1.0, "logit_softcap must be 0"),
    ("logit_softcap", float("inf"), "logit_softcap must be 0"),
    ("rope_theta", 1.0, "rope_theta must be a number above 1"),
])
def test_bad_layout_values_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        _config(**{field: value})


def test_rotary_needs_an_even_head_size():
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(n_embd=12, n_head=4, position="rotary")


# ---- Muon ------------------------------------------------------------------------------------


def newton_schulz(g, steps=5, eps=1e-7):
    """Muon's orthogonalisation written out (Jordan et al. 2024): the quintic iteration on
    g / ||g||_F, on the wide orientation."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


def test_muon_groups_and_steps_match_the_written_out_update():
    torch.manual_seed(0)
    model = GPT(_config(**ALL))
    opt = model.configure_optimizer(1e-3, 0.1, optimizer="muon", muon_lr=0.05,
                                    muon_momentum=0.9)
    names = {id(p): n for n, p in model.named_parameters()}
    adamw, muon = opt.optimizers["adamw"], opt.optimizers["muon"]
    muon_names = sorted(names[id(p)] for g in muon.param_groups for p in g["params"])
    assert muon_names == sorted(n for n, p in model.named_parameters()
                                if n.startswith("transformer.h.") and p.dim() == 2)
    adamw_names = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert {"transformer.wte.weight", "lm_head.weight", "transformer.ln_f.weight",
            "transformer.h.0.attn.q_norm.weight"} <= adamw_names
    assert len(muon_names) + len(adamw_names) == len(list(model.parameters()))
    assert muon.param_groups[0]["lr_scale"] == pytest.approx(50.0)
    # two steps of the c_attn weight (3C x C) by the rule written out
    w = model.transformer.h[0].attn.c_attn.weight
    before, buf = w.detach().clone(), torch.zeros_like(w)
    for step in range(2):
        idx = torch.randint(0, 97, (2, 16))
        opt.zero_grad()
        model(idx, idx)[1].backward()
        g = w.grad.detach().clone()
        opt.step()
        buf = 0.9 * buf + g
        update = newton_schulz(g + 0.9 * buf)  # Nesterov
        lr = 0.05 * math.sqrt(max(1, w.shape[0] / w.shape[1]))  # Keller's shape scaling
        before = before * (1 - 0.05 * 0.1) - lr * update
        assert torch.allclose(w.detach(), before, atol=2e-5), step
    # the orthogonalised update's singular values sit near 1 (NS5 aims at (0.7, 1.2))
    s = torch.linalg.svdvals(newton_schulz(torch.randn(96, 32)))
    assert 0.5 < float(s.min()) and float(s.max()) < 1.3
    # the state dict holds both optimizers and loads back
    state = opt.state_dict()
    assert set(state) == {"adamw", "muon"}
    opt.load_state_dict(state)
    with pytest.raises(ValueError, match="another optimizer"):
        opt.load_state_dict(adamw.state_dict())


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="optimizer must be adamw or muon"):
        GPT(_config()).configure_optimizer(1e-3, 0.1, optimizer="sgd")


def test_muon_on_a_torch_without_it_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    with pytest.raises(ValueError, match=r"needs torch\.optim\.Muon \(PyTorch 2\.9 or later\)"):
        GPT(_config()).configure_optimizer(1e-3, 0.1, optimizer="muon")
    with pytest.raises(ValueError, match=r"Muon \(from recipe 'modern'\) needs torch\.optim\.Muon"):
        train(recipe="modern", data=str(tmp_path / "none"))


# ---- checkpoints and Hugging Face ------------------------------------------------------------


def test_modern_layout_round_trips_through_gristmill_weights(tmp_path):
    model = _randomise(GPT(_config(**ALL)))
    save_weights(model, tmp_path / "model.safetensors")
    again = load_weights(tmp_path / "model.safetensors").eval()
    assert again.config == model.config
    idx = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        assert torch.equal(again(idx)[0], model(idx)[0])
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def test_old_config_without_layout_fields_loads_as_gpt2(tmp_path):
    from safetensors.torch import save_file

    model = _randomise(GPT(_config()))
    old = {k: v for k, v in model.config.to_dict().items() if k not in GPT2_LAYOUT}
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(tensors, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt", "gristmill_config": json.dumps(old)})
    again = load_weights(tmp_path / "model.safetensors")
    assert again.config.layout == "gpt2" and again.config == model.config


def test_save_hf_refuses_other_layouts_before_writing(tmp_path):
    model = GPT(_config(position="rotary", qk_norm=True))
    with pytest.raises(ValueError) as e:
        save_hf(model, tmp_path / "hf")
    msg = str(e.value)
    assert "\n" not in msg and "position=rotary" in msg and "qk_norm=True" in msg
    assert "Hugging Face GPT-2" in msg and str(tmp_path / "hf") in msg
    assert not (tmp_path / "hf").exists()


def test_hf_import_refuses_layout_options(tmp_path):
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50))
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="qk_norm=True cannot apply"):
        config_from_hf(hf.config.to_dict(), qk_norm=True)
    assert config_from_hf(hf.config.to_dict(), dropout=0.1).layout == "gpt2"
    with pytest.raises(ValueError, match="qk_norm=True"):
        load_model(tmp_path, qk_norm=True)


# ---- generation with the KV cache ------------------------------------------------------------


def _greedy_without_cache(model, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


def test_kv_cached_generation_equals_uncached_for_the_modern_layout():
    model = _randomise(GPT(_config(**ALL)), seed=3)
    prompts = [[5, 17, 3, 88, 9, 41, 2], [60, 1]]  # different lengths: left-padded together
    got = generate(model, prompts, temperature=0, max_new_tokens=12)
    for prompt, out in zip(prompts, got):
        assert out == _greedy_without_cache(model, prompt, 12)
        assert generate(model, [prompt], temperature=0, max_new_tokens=12)[0] == out


def test_cached_logits_equal_full_forward_with_rotary():
    from gristmill.model import KVCache

    model = _randomise(GPT(_config(**ALL)), seed=4)
    idx = torch.randint(0, 97, (2, 12))
    cache = KVCache(model.config, 2, 12)
    with torch.no_grad():
        full, _ = model(idx)
        first, _ = model(idx[:, :7], cache=cache)
        rest, _ = model(idx[:, 7:9], cache=cache)  # a chunk over a non-empty cache
        last, _ = model(idx[:, 9:], cache=cache)
    assert torch.allclose(torch.cat([first, rest, last], 1), full, atol=1e-5)


# ---- config and training ---------------------------------------------------------------------


def test_recipe_settings_and_refusals(tmp_path):
    cfg = resolve_config(overrides={"recipe": "modern", "qk_norm": "false"})
    assert cfg.setting("optimizer") == "muon" and cfg.setting("position") == "rotary"
    assert cfg.setting("qk_norm") is False  # a key set wins over the recipe
    assert TrainConfig().setting("position") is None  # gpt2: the preset's own
    path = tmp_path / "run.toml"
    path.write_text('[model]\nrecipe = "nanogpt"\n')
    with pytest.raises(ValueError, match=r"run\.toml: config key 'recipe' must be gpt2 or "
                                         r"modern, got 'nanogpt'"):
        resolve_config(path)
    with pytest.raises(ValueError, match="config key 'norm' must be layernorm or rmsnorm"):
        resolve_config(overrides={"norm": "batch"})
    with pytest.raises(ValueError, match="'recipe' must be"):
        TrainConfig(recipe="fast")
    with pytest.raises(ValueError, match="Muon .*fsdp=true"):
        train(recipe="modern", fsdp=True, data=str(tmp_path / "none"))


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=12))
def test_any_unknown_recipe_or_optimizer_is_one_line(name):
    for key, known in (("recipe", RECIPES), ("optimizer", ("adamw", "muon"))):
        if name in known or name.lower() in ("none", "null", ""):
            continue
        with pytest.raises(ValueError) as e:
            resolve_config(overrides={key: name})
        assert str(e.value).startswith(f"command line: config key '{key}'") or \
            str(e.value).startswith(f"config key '{key}' must be")
        assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def small(shared_data, tmp_path_factory):
    text = (shared_data / "tinyshakespeare.txt").read_text("utf-8")[:60_000]
    return text_shards(text, tmp_path_factory.mktemp("small"))


TINY = {"model": "tiny", "n_layer": 2, "n_embd": 32, "block_size": 64, "batch_size": 4,
        "seq_len": 32, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "progress": False,
        "plot": False, "eval_batches": 2}


def test_modern_recipe_trains_resumes_and_refuses_changing_a_loaded_layout(small, tmp_path):
    out = tmp_path / "run"
    first = train(dataset=small, out_dir=str(out), recipe="modern", max_steps=8,
                  eval_interval=4, **TINY)
    model = load_model(out, "latest")
    assert model.config.layout == "gristmill" and model.config.position == "rotary"
    assert model.config.non_gpt2_options() == {k: v for k, v in MODERN.items() if k != "bias"}
    assert model.config.bias is False
    assert first["losses"][-1] < first["losses"][0]
    # the schedule scales the Muon group by muon_lr / lr: AdamW's lr is the logged one
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert max(r["lr"] for r in log if "loss" in r) == pytest.approx(3e-3)
    # resumed from the step-4 checkpoint, the run ends where the straight one did: both
    # optimizers' states came back
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "ckpt-0000008")
    train(dataset=small, out_dir=str(resumed), recipe="modern", max_steps=8, eval_interval=4,
          **TINY)
    a, b = load_model(out, "latest").state_dict(), load_model(resumed, "latest").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a loaded model keeps its layout: the recipe cannot change a gpt2 checkpoint
    gpt2 = tmp_path / "gpt2"
    train(dataset=small, out_dir=str(gpt2), max_steps=2, eval_interval=2, **TINY)
    with pytest.raises(ValueError, match=r"has position=learned; position=rotary \(from recipe "
                                         r"'modern'\) cannot change a loaded model's layout"):
        train(dataset=small, out_dir=str(tmp_path / "again"), recipe="modern", max_steps=2,
              **{**TINY, "model": str(gpt2)})
    # resuming with another optimizer is named, not a KeyError from torch
    with pytest.raises(TrainingError, match="does not fit optimizer=muon"):
        train(dataset=small, out_dir=str(gpt2), optimizer="muon", max_steps=4, eval_interval=2,
              **TINY)
