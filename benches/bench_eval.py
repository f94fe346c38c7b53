"""Multiple-choice evaluation throughput: gristmill vs lm-evaluation-harness's ``hf`` model.

The same random GPT-2 weights in both (a gristmill model exported with ``save_hf``, the GPT-2
tokenizer beside it), the same local multiple-choice task written as JSON lines from the
benchmark corpus, run through the harness (``simple_evaluate`` on a task YAML) with its
``hf`` model and with gristmill's harness model, and through ``gristmill.eval`` directly.
Per-example choices (acc and acc_norm) are checked identical to ``hf``'s before anything is
reported. Two shapes of task: 5-shot prompts (long shared contexts, short endings: where
running the context once pays most) and HellaSwag-like zero-shot ones.

    python benches/bench_eval.py [--size small|full] [--examples N] [--batch-size 32]

small (the default): 2 layers of 128, 40 examples per task. full: gpt2 (124M), 200 examples.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
sys.path.insert(0, os.path.dirname(__file__))
import gristmill.harness  # noqa: E402,F401  (registers --model gristmill)
import lm_eval  # noqa: E402
import torch  # noqa: E402
from common import load_corpus, parser, report  # noqa: E402
from gristmill.checkpoint import save_hf, save_weights  # noqa: E402
from gristmill.eval import TaskSpec, prepare_task, score_tasks  # noqa: E402
from gristmill.model import GPT, GPTConfig  # noqa: E402
from gristmill.sample import prepare_model  # noqa: E402
from gristmill.tokenizer import Tokenizer  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402


def _words(texts: list[str]) -> list[list[str]]:
    return [t.split() for t in texts if len(t.split()) > 200]


def make_task(docs: list[list[str]], n: int, shots: int, rng: random.Random) -> list[dict]:
    """Questions from the corpus: a passage, then its true continuation against three
    continuations of other passages; ``shots`` solved questions written before each one."""
    def question():
        d = rng.choice(docs)
        i = rng.randrange(len(d) - 120)
        ctx = " ".join(d[i: i + rng.randint(30, 60)])
        true_end = " ".join(d[i + 60: i + 60 + rng.randint(10, 25)])
        others = []
        for _ in range(3):
            o = rng.choice(docs)
            j = rng.randrange(len(o) - 30)
            others.append(" ".join(o[j: j + rng.randint(10, 25)]))
        choices = [true_end, *others]
        rng.shuffle(choices)
        return ctx, choices, choices.index(true_end)

    records = []
    for _ in range(n):
        prefix = ""
        for _ in range(shots):
            c, ch, lab = question()
            prefix += f"{c} {ch[lab]}\n\n"
        ctx, choices, label = question()
        records.append({"context": prefix + ctx, "choices": choices, "label": label})
    return records


def main() -> None:
    p = parser("eval", __doc__)
    p.set_defaults(size="small")  # full takes most of an hour on a CPU
    p.add_argument("--batch-size", type=int, default=32, help="hf's batch size (sequences)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--examples", type=int, default=None, help="examples per task (default: "
                   "the size's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    if args.size == "small":
        shape, n = {"n_layer": 2, "n_head": 4, "n_embd": 128}, 40
    else:
        shape, n = {}, 200
    n = args.examples or n
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2", **shape)).eval()
    tok = Tokenizer.from_name("gpt2")
    docs = _words(load_corpus(4_000_000))
    rows, meta_tasks = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours = tmp / "run"
        ours.mkdir()
        save_weights(model, ours / "model.safetensors")
        tok.save(ours / "tokenizer")
        hf = save_hf(model, tmp / "hf")
        tok.save_hf_json(hf / "tokenizer.json")
        (hf / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
            "bos_token": "<|endoftext|>", "model_max_length": model.config.block_size}))
        for name, shots in (("mc_5shot", 5), ("mc_0shot", 0)):
            records = make_task(docs, n, shots, random.Random(shots))
            data = tmp / f"{name}.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in records))
            tasks = tmp / "tasks"
            tasks.mkdir(exist_ok=True)
            (tasks / f"{name}.yaml").write_text(
                f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                f"    test: {data}\n  cache_dir: {tmp / 'datasets'}\ntest_split: test\n"
                'output_type: multiple_choice\ndoc_to_text: "{{context}}"\n'
                'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
                "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
            manager = TaskManager(include_path=str(tasks), include_defaults=False)

            def harness(model_name, model_args, batch_size=None, name=name, manager=manager):
                t0 = time.perf_counter()
                out = lm_eval.simple_evaluate(model=model_name, model_args=model_args,
                                              tasks=[name], task_manager=manager,
                                              log_samples=True, batch_size=batch_size)
                if device == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
                return dt, [(s["acc"], s["acc_norm"]) for s in samples], out["results"][name]

            def native(name=name, data=data):
                t0 = time.perf_counter()  # loading the checkpoint counts, as for the others
                m, _ = prepare_model(ours, tok, device, getattr(torch, dtype))
                task = prepare_task(TaskSpec(name, str(data)), tok, m.config.block_size)
                r = score_tasks(m, [task])["tasks"][0]
                if device == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                picks = [(float(p["pred"] == p["label"]), float(p["pred_norm"] == p["label"]))
                         for p in r["predictions"]]
                return dt, picks, r

            common_args = f"device={device},dtype={dtype}"
            runs = [
                ("lm-eval hf", lambda: harness("hf", f"pretrained={hf},{common_args}",
                                               args.batch_size)),
                ("lm-eval gristmill", lambda: harness(
                    "gristmill", f"pretrained={ours},{common_args}")),
                ("gristmill eval", native),
            ]
            native()  # warm-up: allocator, kernels
            base, ref = None, None
            for tool, fn in runs:
                dt, picks, _ = fn()
                ref = ref or picks
                same = picks == ref
                if not same:
                    raise SystemExit(f"{tool}: per-example choices differ from lm-eval hf's")
                ex_s = n / dt
                base = base or ex_s
                rows.append({"tool": tool, "task": name, "examples": n, "seconds": dt,
                             "examples/s": ex_s, "vs hf": f"{ex_s / base:.2f}x",
                             "same choices": same})
            ctx = [len(tok.encode_ordinary(r["context"])) for r in records]
            meta_tasks[name] = {"mean_context_tokens": sum(ctx) / len(ctx), "choices": 4}
    name = torch.cuda.get_device_name() if device == "cuda" else \
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    c = model.config
    print(f"\ndevice: {name}; GPT-2 {c.n_layer}L/{c.n_embd}d, {dtype}; hf batch size "
          f"{args.batch_size}; tasks: " + ", ".join(
              f"{k} ({v['mean_context_tokens']:.0f} context tokens)" for k, v in
              meta_tasks.items()) + "\n")
    report("eval", rows, ["tool", "task", "examples", "seconds", "examples/s", "vs hf",
                          "same choices"], args.out,
           {"device": name, "dtype": dtype, "hf_batch_size": args.batch_size,
            "model": {"n_layer": c.n_layer, "n_embd": c.n_embd}, "tasks": meta_tasks,
            "versions": {"torch": torch.__version__, "lm_eval": lm_eval.__version__}})


if __name__ == "__main__":
    main()
