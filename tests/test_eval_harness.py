"""The lm-evaluation-harness model: on local tasks (multiple choice, rolling log-likelihood,
generation), per-example results equal the harness's own ``hf`` model on the same weights
exported with ``save_hf``; contexts longer than the window are cut as ``hf`` cuts them. Fully
offline: the tasks read JSON lines the test writes, and every network connection fails."""

from __future__ import annotations

import json
import random
import socket

import pytest

lm_eval = pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from gristmill.checkpoint import save_hf, save_weights
from gristmill.model import GPT, GPTConfig
from gristmill.tokenizer import Tokenizer

torch.set_num_threads(1)
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
TASKS = ("gm_mc", "gm_roll", "gm_gen")
WORDS = "the cat sat on a mat while dogs ran far away from home and the sun set slowly".split()


@pytest.fixture
def offline(monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(self, address, *a, **k):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"test_eval_harness: no network ({address})")
        return real(self, address, *a, **k)

    real = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The same random weights as a gristmill checkpoint and as a HF folder (save_hf, with the
    GPT-2 tokenizer), and three local tasks over one JSONL file."""
    root = tmp_path_factory.mktemp("harness")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():  # wider weights: clearly different scores per choice
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(5)
    ours = root / "run"
    ours.mkdir()
    save_weights(model, ours / "model.safetensors")
    tok = Tokenizer.from_name("gpt2")
    tok.save(ours / "tokenizer")
    hf = save_hf(model, root / "hf")
    tok.save_hf_json(hf / "tokenizer.json")
    (hf / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
        "bos_token": "<|endoftext|>", "model_max_length": 64}))
    rng = random.Random(0)

    def phrase(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    records = []
    for i in range(8):
        long_ctx = i % 4 == 0  # longer than the 64-token window: cut from the left
        ctx = phrase(70, 90) if long_ctx else phrase(3, 20)
        choices = [phrase(1, 6) for _ in range(4)]
        records.append({"context": ctx + ("." if i % 3 else ""), "choices": choices,
                        "label": rng.randrange(4), "text": phrase(5, 150)})
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    tasks = root / "tasks"
    tasks.mkdir()
    head = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {root / 'hf-datasets'}\ntest_split: test\n")
    (tasks / "gm_mc.yaml").write_text(
        "task: gm_mc\n" + head + 'output_type: multiple_choice\ndoc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (tasks / "gm_roll.yaml").write_text(
        "task: gm_roll\n" + head + 'output_type: loglikelihood_rolling\ndoc_to_text: ""\n'
        'doc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n'
        "  - metric: bits_per_byte\n")
    (tasks / "gm_gen.yaml").write_text(
        "task: gm_gen\n" + head + 'output_type: generate_until\ndoc_to_text: "{{context}}"\n'
        'doc_to_target: "{{choices[label]}}"\ngeneration_kwargs:\n  until: ["\\n", "."]\n'
        "  max_gen_toks: 8\n  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
    return {"ours": ours, "hf": hf, "tasks": tasks, "root": root}


def _run(setup, model: str, model_args: str, **kw) -> dict:
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(TASKS),
                                   task_manager=TaskManager(include_path=str(setup["tasks"]),
                                                            include_defaults=False),
                                   log_samples=True, **kw)


def test_model_is_registered_and_declared_as_an_entry_point():
    import importlib.metadata as md

    from conftest import ROOT
    from gristmill.harness import GristmillLM
    from lm_eval.api.registry import get_model

    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    target = project["entry-points"]["lm_eval.models"]["gristmill"]
    assert md.EntryPoint("gristmill", target, "lm_eval.models").load() is GristmillLM
    assert get_model("gristmill") is GristmillLM
    assert get_model("hf").__name__ == "HFLM"  # registering ours kept the harness's own


def test_per_example_results_equal_the_harness_hf_model(setup, offline):
    args = "device=cpu,dtype=float32"
    ours = _run(setup, "gristmill", f"pretrained={setup['ours']},{args},batch_tokens=300")
    theirs = _run(setup, "hf", f"pretrained={setup['hf']},{args}", batch_size=4)
    for task in TASKS:
        a = sorted(ours["samples"][task], key=lambda s: s["doc_id"])
        b = sorted(theirs["samples"][task], key=lambda s: s["doc_id"])
        assert len(a) == len(b) == 8
        for x, y in zip(a, b):
            if task == "gm_gen":
                assert x["resps"] == y["resps"], x["doc_id"]
                continue
            for (got,), (want,) in zip(x["resps"], y["resps"]):
                if task == "gm_mc":
                    assert got[1] == want[1]  # greedy flags
                    got, want = got[0], want[0]
                assert got == pytest.approx(want, abs=1e-4), (task, x["doc_id"])
            if task == "gm_mc":  # the same choice picked, example by example
                assert x["acc"] == y["acc"] and x["acc_norm"] == y["acc_norm"]
    gen = [s["resps"][0][0] for s in ours["samples"]["gm_gen"]]
    assert any(gen) and all("." not in g and "\n" not in g for g in gen)
    for task in TASKS:
        for metric, value in ours["results"][task].items():
            if isinstance(value, float):
                assert value == pytest.approx(theirs["results"][task][metric], rel=1e-4), metric


def test_harness_command_line_runs_gristmill(setup, offline, capsys, monkeypatch):
    """``python -m gristmill.harness`` is the harness's command line with the model known."""
    from gristmill.harness import main
    from lm_eval.tasks import TaskManager

    # Only the test's tasks: indexing the thousands the harness ships takes most of a minute.
    init = TaskManager.__init__
    monkeypatch.setattr(TaskManager, "__init__", lambda self, *a, include_defaults=True, **k:
                        init(self, *a, include_defaults=False, **k))
    monkeypatch.chdir(setup["root"])
    main(["--model", "gristmill", "--model_args", f"pretrained={setup['ours']}", "--device",
          "cpu", "--tasks", "gm_mc", "--include_path", str(setup["tasks"]), "--limit", "3"])
    out = capsys.readouterr().out
    assert "gm_mc" in out and "acc" in out
