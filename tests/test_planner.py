"""The compute planner against Hoffmann et al. 2022 (Chinchilla), the model's own parameter
counts, and its parser and errors; ``gristmill plan`` end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from gristmill.cli import main
from gristmill.planner import (
    PlanError,
    count_params,
    format_quantity,
    parse_quantity,
    peak_flops_for,
    plan,
    preset_params,
    presets,
)
from hypothesis import given
from hypothesis import strategies as st

# Hoffmann et al. 2022, Table 3 (Approach 1's projections): parameters, FLOPs, tokens.
CHINCHILLA_TABLE_3 = [
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
]


@pytest.mark.parametrize(("params", "flops", "tokens"), CHINCHILLA_TABLE_3)
def test_twenty_tokens_per_parameter_reproduces_chinchilla_table_3(params, flops, tokens):
    # The table's own FLOPs are 6 N D (its tokens are rounded: within 5%).
    assert 6 * params * tokens == pytest.approx(flops, rel=0.05)
    # From the model size: the tokens (the paper's fit gives 20-22 per parameter).
    p = plan(params=params)
    assert p.tokens_per_param == 20
    assert p.tokens == pytest.approx(tokens, rel=0.12)
    # From the compute: the compute-optimal size and tokens.
    q = plan(flops=flops)
    assert q.params == pytest.approx(params, rel=0.12)
    assert q.tokens == pytest.approx(tokens, rel=0.12)
    assert q.optimal_params == q.params and q.flops == pytest.approx(flops)


def test_chinchilla_70b_and_1_4t_tokens_both_ways():
    assert plan(params=70e9).tokens == pytest.approx(1.4e12)
    assert plan(tokens=1.4e12).params == pytest.approx(70e9)
    assert plan(flops=5.76e23).params == pytest.approx(70e9, rel=0.02)  # Gopher's budget
    # Gopher (280B on 300B tokens) had Chinchilla's compute; 6 N D puts it 12% lower.
    gopher = plan(params=280e9, tokens=300e9)
    assert gopher.tokens_per_param == pytest.approx(300 / 280)
    assert gopher.optimal_params == pytest.approx(70e9, rel=0.1)
    assert gopher.optimal_tokens == pytest.approx(1.4e12, rel=0.1)


def test_any_two_give_the_rest():
    base = plan(params=124e6, tokens=2.5e9, gpu="A100", mfu=0.5, price=2.0)
    assert base.flops == 6 * 124e6 * 2.5e9
    assert base.gpu_hours == pytest.approx(base.flops / (312e12 * 0.5) / 3600)
    assert base.dollars == pytest.approx(2.0 * base.gpu_hours)
    common = {"gpu": "A100", "mfu": 0.5, "price": 2.0}
    for given_ in ({"params": 124e6, "flops": base.flops},
                   {"tokens": 2.5e9, "gpu_hours": base.gpu_hours},
                   {"params": 124e6, "dollars": base.dollars},
                   {"tokens": 2.5e9, "tokens_per_param": 2.5e9 / 124e6}):
        p = plan(**given_, **common)
        assert p.params == pytest.approx(124e6) and p.tokens == pytest.approx(2.5e9), given_
    p = plan(flops=base.flops, tokens_per_param=100)
    assert p.tokens / p.params == pytest.approx(100) and p.flops == pytest.approx(base.flops)
    assert plan(gpu_hours=10, gpus=8).hours == pytest.approx(10 / 8)
    assert plan(gpu_hours=10, peak_flops=1e15, mfu=1).flops == pytest.approx(3.6e19)


def test_preset_batch_steps_and_learning_rate():
    p = plan(params=124e6)
    assert p.preset == "gpt2" and p.preset_params == preset_params("gpt2")
    assert p.seq_len == 1024 and p.tokens_per_step == 524288 and p.lr == pytest.approx(6e-4)
    assert p.steps == math.ceil(p.tokens / p.tokens_per_step)
    assert "--model=gpt2" in p.train_flags() and f"--tokens={round(p.tokens)}" in p.train_flags()
    assert plan(params=350e6).preset == "gpt2-medium"
    assert plan(params=350e6).lr == pytest.approx(3e-4)
    big = plan(params=70e9)
    assert big.preset == "gpt2-xl" and "--n_layer=" + str(big.shape["n_layer"]) in big.train_flags()
    assert big.shape["params"] == pytest.approx(70e9, rel=0.1)
    # A small budget still gets enough steps: the batch shrinks.
    small = plan(params=3e6, tokens=10e6)
    assert small.steps >= 100 and small.tokens_per_step % small.seq_len == 0
    assert small.steps * small.tokens_per_step >= small.tokens


def test_parameter_counts_are_the_models():
    torch = pytest.importorskip("torch")
    from gristmill.model import GPT, PRESETS, GPTConfig

    shapes = presets()
    assert set(shapes) == set(PRESETS)
    for name, shape in PRESETS.items():
        cfg = GPTConfig.from_preset(name)
        assert {k: getattr(cfg, k) for k in shapes[name]} == shapes[name]
        assert {k: shapes[name][k] for k in shape} == shape
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        for name in PRESETS:
            assert preset_params(name) == GPT(GPTConfig.from_preset(name)).num_params(), name
        for kw in ({"bias": False}, {"vocab_size": 1000, "vocab_multiple": 7}):
            cfg = GPTConfig(n_layer=3, n_head=2, n_embd=48, block_size=16, **kw)
            assert count_params(3, 48, cfg.vocab_size, vocab_multiple=cfg.vocab_multiple,
                                bias=cfg.bias) == GPT(cfg).num_params()


def test_planner_does_not_import_torch():
    code = ("import sys, gristmill.planner as p; p.plan(params=1e9); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_peak_flops_by_device_name():
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for("NVIDIA GH200 480GB") == 989e12
    assert peak_flops_for("h200") == 989e12
    assert peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for("a TPU") is None


@given(mantissa=st.floats(0.001, 999.0), suffix=st.sampled_from(["", "k", "M", "B", "T", "P"]))
def test_quantities_parse(mantissa, suffix):
    scale = {"": 1, "k": 1e3, "M": 1e6, "B": 1e9, "T": 1e12, "P": 1e15}[suffix]
    text = f"{mantissa:.6g}{suffix}"
    assert parse_quantity(text) == pytest.approx(float(f"{mantissa:.6g}") * scale)
    assert parse_quantity(text.lower()) == parse_quantity(text)
    value = float(f"{mantissa:.6g}") * scale
    assert parse_quantity(format_quantity(value)) == pytest.approx(value, rel=5e-3)


@given(st.text(max_size=12))
def test_anything_else_is_one_line_naming_the_flag(text):
    try:
        value = parse_quantity(text, "--params")
    except PlanError as e:
        assert str(e).startswith("--params: expected") and "\n" not in str(e)
    else:
        assert value > 0 and math.isfinite(value)


@pytest.mark.parametrize(("kw", "message"), [
    ({}, "give params, tokens or a compute budget"),
    ({"params": 1e9, "tokens": 1e9, "flops": 1e20}, "give two of"),
    ({"flops": 1e20, "gpu_hours": 3}, "give one of flops, gpu_hours and dollars"),
    ({"dollars": 100}, "dollars needs price"),
    ({"params": 1e9, "gpu": "TPU"}, "no peak FLOP/s known for 'TPU'"),
    ({"params": 1e9, "mfu": 1.5}, "mfu must be in"),
    ({"params": -1.0}, "params must be a positive number"),
    ({"params": 1e9, "gpus": 0}, "gpus must be at least 1"),
])
def test_plan_errors(kw, message):
    with pytest.raises(PlanError, match=message):
        plan(**kw)


def test_cli_plan(capsys):
    assert main(["plan", "--params", "124M", "--gpu", "H200", "--price", "3", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "preset gpt2" in out and "2.48B (20 per parameter)" in out and "$" in out
    assert "gristmill train --data=DIR --model=gpt2" in out
    assert main(["plan", "--flops", "5.76e23", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["params"] == pytest.approx(69.3e9, rel=0.01) and d["train_flags"]
    assert main(["plan", "--params", "70B", "--tokens", "1.4T", "--flops", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gristmill plan: give two of") and "\n" not in err
    assert main(["plan", "--params", "lots"]) == 1
    assert "--params: expected a positive number" in capsys.readouterr().err
    assert main(["plan", "--params", "1B", "--gpus", "2.5"]) == 1
    assert "--gpus: expected a whole number" in capsys.readouterr().err
