"""LoRA against peft on transformers' GPT-2: trainable parameter counts, adapters saved by one
and loaded by the other with the same logits, merging then exporting a plain GPT-2; the
settings and adapter files checked, bad ones refused in one line."""

from __future__ import annotations

import json
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from gristmill.checkpoint import from_hf, save_hf
from gristmill.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraConfig,
    LoraError,
    LoraLinear,
    apply_lora,
    load_adapter,
    lora_state_dict,
    merge_lora,
    save_adapter,
)
from gristmill.model import GPT, GPTConfig
from gristmill.outputs import OutputFolderError

torch.set_num_threads(1)
V = 100  # gristmill pads it to 128: a head adapter must still match transformers' 100 rows
PEFT_TARGETS = {"attn": ["attn.c_attn", "attn.c_proj"], "mlp": ["mlp.c_fc", "mlp.c_proj"],
                "head": ["lm_head"]}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=V,
                                  bos_token_id=V - 1, eos_token_id=V - 1)
    d = tmp_path_factory.mktemp("hf")
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    return d


def _hf(hf_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()


def _peft_model(hf_dir, rank, alpha, targets, **kw):
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, fan_in_fan_out=True,
                          target_modules=[m for t in targets for m in PEFT_TARGETS[t]], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fan_in_fan_out on lm_head, tied embedding notes
        return peft.get_peft_model(_hf(hf_dir), cfg)


def _ids(seed=1, shape=(2, 12)):
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


def _train_a_few_steps(model, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for i in range(steps):
        x = _ids(10 + i, (2, 13))
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# ---- settings --------------------------------------------------------------------------------


def test_defaults_and_target_strings():
    c = LoraConfig()
    assert (c.rank, c.alpha, c.dropout, c.targets, c.scaling) == (8, 16, 0.0, ("attn",), 2.0)
    assert LoraConfig(targets="attn, mlp,attn").targets == ("attn", "mlp")


@pytest.mark.parametrize("field,value,expected", [
    ("rank", 0, "rank: expected a positive integer, got 0"),
    ("rank", 2.5, "rank: expected a positive integer"),
    ("alpha", -1, "alpha: expected a positive number"),
    ("alpha", float("nan"), "alpha: expected a positive number"),
    ("dropout", 1.0, "dropout: expected a number in [0, 1)"),
    ("targets", ("attention",), "targets: expected some of attn, mlp, head, got 'attention'"),
    ("targets", (), "targets: expected some of attn, mlp, head"),
])
def test_bad_settings_are_one_line(field, value, expected):
    with pytest.raises(LoraError, match=r"^LoraConfig " + expected.replace("[", r"\[")
                       .replace("(", r"\(").replace(")", r"\)")) as e:
        LoraConfig(**{field: value})
    assert "\n" not in str(e.value)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=30))
def test_any_targets_string_is_parsed_or_refused(text):
    try:
        c = LoraConfig(targets=text)
    except LoraError as e:
        assert str(e).startswith("LoraConfig targets: expected some of attn, mlp, head")
    else:
        assert set(c.targets) <= {"attn", "mlp", "head"} and c.targets


# ---- the layers ------------------------------------------------------------------------------


@pytest.mark.parametrize("targets,rank", [(("attn",), 8), (("mlp",), 4), (("attn", "mlp"), 2),
                                          (("head",), 4), (("attn", "mlp", "head"), 16)])
def test_trainable_parameters_equal_peft(hf_dir, targets, rank):
    ours = from_hf(hf_dir)
    n = apply_lora(ours, LoraConfig(rank=rank, alpha=2 * rank, targets=targets))
    theirs = _peft_model(hf_dir, rank, 2 * rank, targets).get_nb_trainable_parameters()[0]
    assert n == theirs
    assert n == sum(p.numel() for p in ours.parameters() if p.requires_grad)


def test_a_fresh_adapter_changes_nothing_and_keeps_names_and_tying(hf_dir):
    ours = from_hf(hf_dir).eval()
    x = _ids()
    before = ours(x)[0]
    keys = set(ours.state_dict())
    apply_lora(ours, LoraConfig(rank=4, targets=("attn", "mlp", "head")))
    torch.testing.assert_close(ours(x)[0], before)  # B starts at zero
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert keys <= set(ours.state_dict())  # base weights keep their names
    lora = lora_state_dict(ours)
    assert set(ours.state_dict()) - keys == set(lora)
    assert "transformer.h.0.attn.c_attn.lora_A" in lora
    assert lora["lm_head.lora_B"].shape == (V, 4)  # not the padded 128 rows
    assert not any(p.requires_grad for n, p in ours.named_parameters() if "lora_" not in n)


def test_training_moves_only_the_adapters(hf_dir):
    ours = from_hf(hf_dir)
    base = {k: v.clone() for k, v in ours.state_dict().items()}
    apply_lora(ours, LoraConfig(rank=4, targets=("attn", "mlp")))
    _train_a_few_steps(ours)
    after = ours.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())
    assert all(v.abs().sum() > 0 for k, v in lora_state_dict(ours).items() if k.endswith("B"))


def test_dropout_only_while_training(hf_dir):
    ours = from_hf(hf_dir)
    apply_lora(ours, LoraConfig(rank=4, dropout=0.5))
    for layer in ours.modules():
        if isinstance(layer, LoraLinear):
            torch.nn.init.normal_(layer.lora_B)
    x = _ids()
    torch.manual_seed(0)
    assert not torch.equal(ours.train()(x)[0], ours(x)[0])
    ours.eval()
    assert torch.equal(ours(x)[0], ours(x)[0])


def test_apply_errors(hf_dir):
    ours = from_hf(hf_dir)
    apply_lora(ours, LoraConfig(rank=2))
    with pytest.raises(LoraError, match="already has a LoRA adapter"):
        apply_lora(ours, LoraConfig(rank=2))
    body = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(LoraError, match="no lm_head; pass its head"):
        apply_lora(body, LoraConfig(targets=("head",)))
    with pytest.raises(LoraError, match="no such nn.Linear layers"):
        apply_lora(body, LoraConfig(targets=("attn",)))
    with pytest.raises(LoraError, match="no module 'score'"):
        apply_lora(body, LoraConfig(targets=("head",)), head="score")


def test_a_classification_head_passed_in(hf_dir):
    ours = from_hf(hf_dir)
    score = torch.nn.Linear(32, 2)
    ours.score = score
    n = apply_lora(ours, LoraConfig(rank=4, targets=("head",)), head=score)
    assert n == 4 * 32 + 2 * 4 and isinstance(ours.score, LoraLinear)
    assert merge_lora(ours) == 1 and type(ours.score) is torch.nn.Linear


# ---- adapters in peft's format ---------------------------------------------------------------


@pytest.mark.parametrize("targets", [("attn",), ("attn", "mlp", "head")])
def test_adapter_saved_here_loads_in_peft_with_the_same_logits(hf_dir, tmp_path, targets):
    ours = from_hf(hf_dir)
    cfg = LoraConfig(rank=4, alpha=8, targets=targets)
    apply_lora(ours, cfg)
    _train_a_few_steps(ours)
    save_adapter(ours, tmp_path / "adapter", cfg, base_model_name_or_path="gpt2")
    written = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert written["r"] == 4 and written["lora_alpha"] == 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(_hf(hf_dir), tmp_path / "adapter").eval()
    x = _ids()
    with torch.no_grad():
        plain = _hf(hf_dir)(x).logits
        mine, peft_logits = ours(x)[0], theirs(x).logits
    assert (mine - plain).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(mine, peft_logits, atol=1e-4, rtol=0)


def test_adapter_saved_by_peft_loads_here_with_the_same_logits(hf_dir, tmp_path):
    torch.manual_seed(3)
    theirs = _peft_model(hf_dir, 4, 16, ("attn", "mlp", "head"), init_lora_weights=False).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it saves the tied embedding too (ignored when loading)
        theirs.save_pretrained(tmp_path / "peft")
    ours = from_hf(hf_dir).eval()
    cfg = load_adapter(ours, tmp_path / "peft")
    assert (cfg.rank, cfg.alpha, cfg.targets) == (4, 16, ("attn", "mlp", "head"))
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == \
        theirs.get_nb_trainable_parameters()[0]
    x = _ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x).logits, atol=1e-4, rtol=0)


def test_merge_then_save_hf_is_a_plain_gpt2(hf_dir, tmp_path):
    ours = from_hf(hf_dir)
    cfg = LoraConfig(rank=4, targets=("attn", "mlp"))
    apply_lora(ours, cfg)
    _train_a_few_steps(ours)
    x = _ids()
    with torch.no_grad():
        adapted = ours(x)[0]
    assert merge_lora(ours) == 8
    assert not any(isinstance(m, LoraLinear) for m in ours.modules()) and not lora_state_dict(ours)
    save_hf(ours, tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(_hf(tmp_path / "merged")(x).logits, adapted, atol=1e-4,
                                   rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(from_hf(tmp_path / "merged").eval()(x)[0], adapted, atol=1e-4,
                                   rtol=0)


def test_a_head_adapter_on_the_tied_embedding_is_not_merged(hf_dir):
    ours = from_hf(hf_dir)
    apply_lora(ours, LoraConfig(rank=2, targets=("attn", "head")))
    with pytest.raises(LoraError, match="lm_head.weight is tied to transformer.wte.weight"):
        merge_lora(ours)
    assert isinstance(ours.lm_head, LoraLinear)  # nothing merged


def test_save_adapter_claims_its_folder(hf_dir, tmp_path):
    ours = from_hf(hf_dir)
    cfg = LoraConfig(rank=2)
    with pytest.raises(LoraError, match="no LoRA adapters"):
        save_adapter(ours, tmp_path / "a", cfg)
    apply_lora(ours, cfg)
    with pytest.raises(LoraError, match="has rank 2, alpha 16; the config says rank 4"):
        save_adapter(ours, tmp_path / "a", LoraConfig(rank=4))
    save_adapter(ours, tmp_path / "a", cfg)
    save_adapter(ours, tmp_path / "a", cfg)  # its own folder: written again
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputFolderError, match="notes.txt"):
        save_adapter(ours, tmp_path / "mine", cfg)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def _saved(hf_dir, tmp_path, name="a"):
    ours = from_hf(hf_dir)
    cfg = LoraConfig(rank=2, targets=("attn",))
    apply_lora(ours, cfg)
    save_adapter(ours, tmp_path / name, cfg)
    return tmp_path / name


def test_bad_adapter_folders_are_one_line(hf_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _saved(hf_dir, tmp_path)
    cfg_file, weights = d / ADAPTER_CONFIG, d / ADAPTER_WEIGHTS
    good_cfg, good = cfg_file.read_text(), load_file(str(weights))

    def refused(match):
        with pytest.raises(LoraError, match=match) as e:
            load_adapter(from_hf(hf_dir), d)
        assert "\n" not in str(e.value)
        cfg_file.write_text(good_cfg)
        save_file(good, str(weights))

    cfg_file.write_text('{\n "r": 2,\n "lora_alpha": }')
    refused(r"adapter_config.json:3: not valid JSON")
    cfg_file.write_text(json.dumps({**json.loads(good_cfg), "use_dora": True}))
    refused(r"use_dora is True; gristmill loads plain LoRA adapters only")
    cfg_file.write_text(json.dumps({**json.loads(good_cfg), "r": 0}))
    refused(r"adapter_config.json: LoraConfig rank: expected a positive integer")
    cfg_file.write_text(json.dumps({**json.loads(good_cfg), "peft_type": "IA3"}))
    refused(r"peft_type is 'IA3'")
    save_file({**good, "base_model.model.transformer.h.9.attn.c_attn.lora_A.weight":
               torch.zeros(2, 32), "base_model.model.transformer.h.9.attn.c_attn.lora_B.weight":
               torch.zeros(96, 2)}, str(weights))
    refused(r"adapter_model.safetensors: tensor .*h.9.attn.c_attn.lora_A.weight: the model has "
            r"no layer transformer.h.9.attn.c_attn")
    key = "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"
    save_file({**good, key: torch.zeros(95, 2)}, str(weights))
    refused(r"lora_B.weight \(95, 2\); transformer.h.0.attn.c_attn with r=2 needs \(2, 32\) "
            r"and \(96, 2\)")
    save_file({k: v for k, v in good.items() if k != key}, str(weights))
    refused(r"transformer.h.0.attn.c_attn has lora_A but no lora_B")
    save_file({**good, "base_model.model.transformer.wte.weight": torch.zeros(V, 32)},
              str(weights))
    refused(r"tensor base_model.model.transformer.wte.weight: expected <module>.lora_A.weight")
    weights.write_bytes(b"not safetensors")
    refused(r"adapter_model.safetensors: not a readable safetensors file")
    weights.unlink()
    refused(r"adapter_model.safetensors: missing; expected a peft adapter folder")
    cfg_file.unlink()
    refused(r"adapter_config.json: missing; expected a peft adapter folder")


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["r", "lora_alpha", "lora_dropout", "peft_type",
                                        "use_dora", "bias", "modules_to_save", "rank_pattern"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-3, 70),
                                 st.floats(allow_nan=True), st.text(max_size=5),
                                 st.lists(st.integers(), max_size=2))))
def test_any_adapter_config_loads_or_is_refused_in_one_line(tmp_path_factory, changes):
    d = tmp_path_factory.mktemp("fuzz")
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=V, n_embd=32))
    cfg = LoraConfig(rank=2)
    apply_lora(model, cfg)
    save_adapter(model, d / "a", cfg)
    path = d / "a" / ADAPTER_CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    fresh = GPT(GPTConfig.from_preset("tiny", vocab_size=V, n_embd=32))
    try:
        loaded = load_adapter(fresh, d / "a")
    except LoraError as e:
        assert "\n" not in str(e) and str(path.parent) in str(e)
    else:
        assert loaded.rank == 2


@pytest.mark.cuda
def test_bf16_on_cuda(hf_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    ours = from_hf(hf_dir).to("cuda", torch.bfloat16)
    apply_lora(ours, LoraConfig(rank=4, targets=("attn", "mlp", "head")))
    assert all(p.device.type == "cuda" and p.dtype == torch.bfloat16
               for p in lora_state_dict(ours).values())
    x = _ids().cuda()
    _, loss = ours(x[:, :-1], x[:, 1:])
    loss.backward()
    assert ours.transformer.h[0].attn.c_attn.lora_A.grad is not None


def test_lora_state_dict_round_trip(hf_dir):
    from gristmill.lora import load_lora_state_dict

    ours = from_hf(hf_dir)
    cfg = LoraConfig(rank=3, alpha=6, targets=("mlp", "head"))
    apply_lora(ours, cfg)
    _train_a_few_steps(ours)
    fresh = from_hf(hf_dir).eval()
    load_lora_state_dict(fresh, lora_state_dict(ours), cfg)
    x = _ids()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)[0], ours(x)[0])
    with pytest.raises(LoraError, match=r"^adapter.safetensors: tensor lm_head.weight: expected "
                       r"<layer>.lora_A or <layer>.lora_B"):
        load_lora_state_dict(from_hf(hf_dir), {"lm_head.weight": torch.zeros(2, 2)}, cfg,
                             source="adapter.safetensors")
