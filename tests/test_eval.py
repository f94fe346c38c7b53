"""Evaluation: loss / perplexity / bits per byte on shards, text and document files; choices
scored with a shared KV cache equal a full forward of context + ending, example by example;
HellaSwag's and the generic task formats, few-shot prompts, suites and their centred score,
the report folder; bad task files are one-line errors naming file and line."""

from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from gristmill.checkpoint import save_weights
from gristmill.cli import main
from gristmill.eval import (
    TaskFormatError,
    TaskSpec,
    evaluate,
    prepare_task,
    read_suite,
    read_task,
    reference_scores,
    run_suite,
    run_task,
    score_choices,
    score_tasks,
    write_report,
)
from gristmill.model import GPT, GPTConfig
from gristmill.outputs import OutputFolderError
from text_shards import byte_tokenizer, text_shards

torch.set_num_threads(1)  # tiny models: one thread is fastest and deterministic


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    """A byte-level tiny model (weights scaled up, so choices get clearly different scores)
    saved as a checkpoint with its tokenizer."""
    torch.manual_seed(0)
    tok = byte_tokenizer()
    model = GPT(GPTConfig(block_size=64, vocab_size=tok.n_vocab, n_layer=2, n_head=2,
                          n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(6)
    d = tmp_path_factory.mktemp("ckpt")
    save_weights(model, d / "model.safetensors")
    tok.save(d / "tokenizer")
    return d, model, tok


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


WORDS = ("the cat sat on a mat while dogs ran far from home and sun set slowly over hills "
         "rain fell softly").split()


def _phrase(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _mc_records(n, seed=0, choices=4, ctx=(2, 8)):
    rng = random.Random(seed)
    return [{"context": _phrase(rng, *ctx), "choices": [_phrase(rng, 1, 4) for _ in range(choices)],
             "label": rng.randrange(choices)} for _ in range(n)]


# ---- loss, perplexity, bits per byte ---------------------------------------------------------


def test_evaluate_loss_perplexity_bits_per_byte(byte_model, shared_data, tmp_path):
    path, model, tok = byte_model
    text = (shared_data / "tinyshakespeare.txt").read_text("utf-8")[:5000]
    tokens = np.asarray(tok.encode_ordinary(text))
    r = evaluate(path, text, batch_size=4, seq_len=64)
    with torch.no_grad():  # the same windows, scored directly
        nats, n = 0.0, 0
        for s in range(0, len(tokens) - 1, 64):
            x = torch.as_tensor(tokens[s: s + 65])
            logits = model(x[None, :-1])[0][0]
            nats += torch.nn.functional.cross_entropy(logits[: len(x) - 1], x[1:],
                                                      reduction="sum").item()
            n += len(x) - 1
    assert r["tokens"] == n == len(tokens) - 1
    assert r["loss"] == pytest.approx(nats / n, rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(nats / n), rel=1e-5)
    # one byte per token: bits per byte is the loss in bits
    assert r["bits_per_byte"] == pytest.approx(r["loss"] / math.log(2), rel=1e-6)
    ds = text_shards(text, tmp_path / "shards", tok, val_fraction=0.5)
    on_shards = evaluate(model, ds, tok, batch_size=4, seq_len=32)
    assert on_shards["tokens"] > 0 and on_shards["loss"] > 0
    assert evaluate(model, tmp_path / "shards", tok, batch_size=4, seq_len=32) == on_shards
    with pytest.raises(ValueError, match="fingerprint"):
        evaluate(model, ds, "gpt2")


def test_bits_per_byte_on_document_files(byte_model, shared_data, tmp_path, capsys):
    zstandard = pytest.importorskip("zstandard")
    path, model, tok = byte_model
    text = (shared_data / "tinyshakespeare.txt").read_text("utf-8")
    docs = [p for p in text.split("\n\n") if p.strip()][:30]
    (tmp_path / "notes.txt").write_text(docs[0], encoding="utf-8")
    lines = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    (tmp_path / "docs.jsonl").write_bytes(lines)
    (tmp_path / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    # the reference: end-of-text + each document, windows of 32, end-of-text never a target
    stream = np.concatenate([[tok.eot_token, *tok.encode_ordinary(d)] for d in docs])
    nats, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(stream) - 1, 32):
            x = torch.as_tensor(stream[s: s + 33])
            y = x[1:].masked_fill(x[1:] == tok.eot_token, -1)
            logits = model(x[None, :-1])[0][0]
            nats += torch.nn.functional.cross_entropy(logits[: len(y)], y, ignore_index=-1,
                                                      reduction="sum").item()
            n += int((y >= 0).sum())
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    for name in ("docs.jsonl", "docs.jsonl.zst"):
        r = evaluate(model, tmp_path / name, tok, batch_size=4, seq_len=32)
        assert r["documents"] == len(docs) and r["tokens"] == n and r["bytes"] == n_bytes
        assert r["loss"] == pytest.approx(nats / n, rel=1e-5)
        assert r["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    assert main(["eval", str(path), "--data", str(tmp_path / "notes.txt"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bits/byte" in out and f"{len(docs[0].encode()):,} bytes" in out and "1 documents" in out
    text_shards(text[:4000], tmp_path / "shards", tok, val_fraction=0.5)
    assert main(["eval", str(path), "--data", str(tmp_path / "shards"), "--no-progress",
                 "--seq-len", "32"]) == 0
    assert "nats/token" in capsys.readouterr().out


# ---- scoring the choices ---------------------------------------------------------------------


def _random_items(rng, n, vocab, window):
    items = []
    for _ in range(n):
        lc = rng.randint(1, window - 2)
        long_one = rng.random() < 0.15  # an ending that fills the window exactly
        ends = []
        for k in range(rng.randint(2, 5)):
            le = window + 1 - lc if long_one and k == 0 else rng.randint(1, min(6, window + 1 - lc))
            ends.append([rng.randrange(vocab) for _ in range(le)])
        items.append(([rng.randrange(vocab) for _ in range(lc)], ends))
    return items


@pytest.mark.parametrize("batch_tokens", [1, 200, 4096])
def test_shared_cache_scores_equal_a_full_forward(byte_model, batch_tokens):
    _, model, tok = byte_model
    items = _random_items(random.Random(batch_tokens), 30, tok.n_vocab, model.config.block_size)
    items.append(([5], [[7], [8], [9]]))  # single-token endings: the context pass alone
    got = score_choices(model, items, batch_tokens=batch_tokens)
    for (ctx, ends), scores in zip(items, got):
        ref = reference_scores(model, ctx, ends)
        assert [g for _, g in scores] == [g for _, g in ref]
        assert np.allclose([s for s, _ in scores], [s for s, _ in ref], atol=1e-4, rtol=0)
        assert int(np.argmax([s for s, _ in scores])) == int(np.argmax([s for s, _ in ref]))
    assert model.training is False
    with pytest.raises(ValueError, match="window"):
        score_choices(model, [([1] * 60, [[1] * 6])])


def test_task_choices_equal_the_reference_example_by_example(byte_model, tmp_path):
    path, model, tok = byte_model
    rng = random.Random(3)
    hella = [{"ind": i, "ctx": _phrase(rng, 2, 8), "label": rng.randrange(4),
              "endings": [_phrase(rng, 1, 4) for _ in range(4)], "activity_label": "x"}
             for i in range(25)]
    hella[0]["label"] = "2"  # HF's copies keep it as a string
    task = _jsonl(tmp_path / "hellaswag_val.jsonl", hella)
    result = run_task(path, task, name="hellaswag")
    assert result["examples"] == 25 and result["truncated"] == 0
    hits = {"acc": 0, "acc_norm": 0, "acc_norm_tokens": 0}
    for rec, pred in zip(hella, result["predictions"]):
        ctx = tok.encode_ordinary(rec["ctx"])  # llm.c: context, then " " + ending
        ends = [tok.encode_ordinary(" " + e) for e in rec["endings"]]
        lls = np.array([s for s, _ in reference_scores(model, ctx, ends)])
        assert np.allclose(pred["logprobs"], lls, atol=1e-4)
        label = int(rec["label"])
        picks = {"acc": np.argmax(lls),
                 "acc_norm": np.argmax(lls / [len(e.encode()) for e in rec["endings"]]),
                 "acc_norm_tokens": np.argmax(lls / [len(e) for e in ends])}
        assert (pred["pred"], pred["pred_norm"], pred["pred_norm_tokens"]) == tuple(
            int(picks[k]) for k in ("acc", "acc_norm", "acc_norm_tokens"))
        for k, p in picks.items():
            hits[k] += p == label
    for k, v in hits.items():
        assert result[k] == pytest.approx(v / 25)
    assert result["random_baseline"] == pytest.approx(0.25)
    assert result["centered"] == pytest.approx((result["acc_norm"] - 0.25) / 0.75)


def test_fewshot_prompts_and_the_generic_format(byte_model, tmp_path):
    _, model, tok = byte_model
    recs = _mc_records(8, seed=1, choices=3)
    recs[5]["fewshot"] = [{"context": "q", "choices": ["a", "b"], "label": 1}]
    path = _jsonl(tmp_path / "mc.jsonl", recs)
    task = prepare_task(TaskSpec("mc", str(path), num_fewshot=2), tok, 10_000)
    for i, (ctx, ends) in enumerate(task.items):
        prompt = tok.decode(ctx)
        assert prompt.endswith(recs[i]["context"])
        assert [tok.decode(e) for e in ends] == [" " + c for c in recs[i]["choices"]]
        if i == 5:  # its own solved example, not drawn ones
            assert prompt == "q b\n\n" + recs[5]["context"]
            continue
        shots = prompt[: -len(recs[i]["context"])].split("\n\n")[:-1]
        assert len(shots) == 2 and all(s != f"{recs[i]['context']} " for s in shots)
        solved = {f"{r['context']} {r['choices'][r['label']]}"
                  for j, r in enumerate(recs) if j != i}
        assert set(shots) <= solved
    again = prepare_task(TaskSpec("mc", str(path), num_fewshot=2), tok, 10_000)
    assert again.items == task.items  # the draw is seeded per example
    # trailing whitespace of the context moves to the choices, as the harness does
    _jsonl(tmp_path / "sp.jsonl", [{"context": "a b ", "choices": ["c", "d"], "label": 0}])
    sp = prepare_task(TaskSpec("sp", str(tmp_path / "sp.jsonl")), tok, 100)
    assert tok.decode(sp.items[0][0]) == "a b" and tok.decode(sp.items[0][1][0]) == "  c"


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("record,message", [
    ({"context": "a", "choices": ["b", "c"]}, "line 2: missing field 'label'"),
    ({"ctx": "a", "label": 0}, "line 2: missing field 'endings'"),
    ({"context": "a", "choices": ["b", "c"], "label": 2}, "line 2: label 2 is out of range for 2"),
    ({"context": "a", "choices": ["b", "c"], "label": -1}, "line 2: label -1 is out of range"),
    ({"context": "a", "choices": "bc", "label": 0}, "line 2: field 'choices' must be a list"),
    ({"context": "a", "choices": ["b", ""], "label": 0}, "line 2: field 'choices' must be a list"),
    ({"context": 3, "choices": ["b", "c"], "label": 0}, "line 2: field 'context' must be a str"),
    ({"context": "a", "choices": ["b", "c"], "label": 0.5}, "line 2: field 'label' must be an int"),
    ({"context": "a", "choices": ["b", "c"], "label": "\u00b2"}, "line 2: field 'label' must be"),
    ({"context": "a", "choices": ["b", "c"], "label": 0, "fewshot": [{"context": "x"}]},
     "line 2: fewshot 0: missing field 'choices'"),
    ([1, 2], "line 2: expected a JSON object"),
])
def test_bad_records_are_named_by_file_and_line(byte_model, tmp_path, capsys, record, message):
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps(_mc_records(1)[0]) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(TaskFormatError, match=re.escape(message)):
        read_task(path)
    ckpt = byte_model[0]
    assert main(["eval", str(ckpt), "--task", "t", "--data", str(path), "--no-progress",
                 "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: {message}" in err, err
    assert not (tmp_path / "out").exists()


def test_unreadable_lines_and_empty_files(tmp_path):
    good = '{"context": "a", "choices": ["b", "c"], "label": 0}'
    (tmp_path / "j.jsonl").write_text(good + "\n{oops\n")
    with pytest.raises(TaskFormatError, match=r"j.jsonl: line 2: invalid JSON"):
        read_task(tmp_path / "j.jsonl")
    (tmp_path / "u.jsonl").write_bytes(b'{"context": "\xff"}\n')
    with pytest.raises(TaskFormatError, match=r"u.jsonl: line 1: invalid UTF-8"):
        read_task(tmp_path / "u.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(TaskFormatError, match=r"e.jsonl: line 1: no examples"):
        read_task(tmp_path / "e.jsonl")
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_task(tmp_path / "nothing.jsonl")
    zstandard = pytest.importorskip("zstandard")
    packed = zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r) + "\n" for r in _mc_records(300)).encode())
    (tmp_path / "t.jsonl.zst").write_bytes(packed)
    assert len(read_task(tmp_path / "t.jsonl.zst")) == 300
    assert len(read_task(tmp_path / "t.jsonl.zst", limit=7)) == 7
    (tmp_path / "cut.jsonl.zst").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(TaskFormatError, match=r"cut.jsonl.zst: line \d+: "):
        read_task(tmp_path / "cut.jsonl.zst")


def test_long_contexts_error_or_are_left_truncated(byte_model, tmp_path, capsys):
    ckpt, model, tok = byte_model
    recs = _mc_records(4)
    recs[2]["context"] = "x" * 100 + " end"  # 104 byte tokens: more than the 64-token window
    path = _jsonl(tmp_path / "long.jsonl", recs)
    with pytest.raises(TaskFormatError, match=r"long.jsonl: line 3: context \(104 tokens\)"):
        prepare_task(TaskSpec("long", str(path)), tok, 64)
    task = prepare_task(TaskSpec("long", str(path)), tok, 64, truncate_context=True)
    assert task.truncated == 1
    ctx, ends = task.items[2]
    assert len(ctx) + max(map(len, ends)) == 65 and tok.decode(ctx).endswith("x end")
    assert main(["eval", str(ckpt), "--task", "long", "--data", str(path), "--no-progress",
                 "-o", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 3" in err and "--truncate-context" in err
    assert main(["eval", str(ckpt), "--task", "long", "--data", str(path), "--no-progress",
                 "--truncate-context", "-o", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["tasks"][0]["truncated"] == 1 and "| 1 |" in capsys.readouterr().out


_value = st.one_of(st.none(), st.booleans(), st.integers(-3, 6), st.floats(allow_nan=False),
                   st.text(max_size=5), st.lists(st.text(max_size=4), max_size=5))
_record = st.one_of(
    st.fixed_dictionaries({"context": st.text(max_size=20),
                           "choices": st.lists(st.text(min_size=1, max_size=8), min_size=2,
                                               max_size=5),
                           "label": st.integers(0, 4)}),
    st.dictionaries(st.sampled_from(["context", "choices", "label", "ctx", "endings", "fewshot"]),
                    _value, max_size=4),
    _value,
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_record, min_size=1, max_size=6), junk=st.binary(max_size=20))
def test_task_reader_accepts_good_records_and_names_bad_ones(tmp_path, records, junk):
    """Any record is an Example equal to what it says, or a TaskFormatError naming its line;
    nothing else escapes the reader."""
    path = tmp_path / "prop.jsonl"
    lines = [json.dumps(r).encode() for r in records] + ([junk] if junk.strip() else [])
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    try:
        examples = read_task(path)
    except TaskFormatError as e:
        assert str(e).startswith(f"{path}: line ") and "\n" not in str(e)
        return
    good = [r for r in records if isinstance(r, dict)]
    assert len(examples) == len(good)
    for ex, r in zip(examples, good):
        keys = ("ctx", "endings") if "ctx" in r or "endings" in r else ("context", "choices")
        assert ex.context == r[keys[0]] and ex.choices == r[keys[1]]
        assert 0 <= ex.label < len(ex.choices) and ex.label == int(r["label"])


# ---- suites and the report -------------------------------------------------------------------


def _suite(tmp_path, body: str):
    (tmp_path / "suite.toml").write_text(body)
    return tmp_path / "suite.toml"


def test_suite_score_is_the_mean_centred_metric(byte_model, tmp_path):
    ckpt, model, tok = byte_model
    _jsonl(tmp_path / "a.jsonl", _mc_records(12, seed=4))
    _jsonl(tmp_path / "b.jsonl", _mc_records(10, seed=5, choices=2))
    suite = _suite(tmp_path, '[[task]]\nname = "a"\npath = "a.jsonl"\nnum_fewshot = 1\n'
                   'metric = "acc"\n\n[[task]]\nname = "b"\npath = "b.jsonl"\n'
                   'random_baseline = 0.4\nlimit = 6\n')
    specs = read_suite(suite)
    assert [s.name for s in specs] == ["a", "b"] and specs[0].path == str(tmp_path / "a.jsonl")
    result = run_suite(ckpt, suite, truncate_context=True)  # byte tokens: few-shot is long
    a, b = result["tasks"]
    assert a["centered"] == pytest.approx((a["acc"] - 0.25) / 0.75)
    assert b["examples"] == 6 and b["centered"] == pytest.approx((b["acc_norm"] - 0.4) / 0.6)
    assert result["score"] == pytest.approx((a["centered"] + b["centered"]) / 2)
    # the same from prepared tasks (what training runs every N steps)
    tasks = [prepare_task(s, tok, 64, truncate_context=True) for s in specs]
    assert score_tasks(model, tasks)["score"] == pytest.approx(result["score"])


@pytest.mark.parametrize("body,message", [
    ('[[task]]\nname = "a"\npath = "a.jsonl"\nnum_fewshots = 1\n',
     "suite.toml: task 1: unknown config key 'num_fewshots' (did you mean 'num_fewshot'?)"),
    ('[[task]]\nname = "a"\n', "suite.toml: task 1: missing field 'path'"),
    ('[[task]]\nname = "a"\npath = "a.jsonl"\nmetric = "f1"\n',
     "suite.toml: task 1 (a): metric must be one of acc, acc_norm, acc_norm_tokens"),
    ('[[task]]\nname = "a"\npath = "a.jsonl"\nnum_fewshot = "x"\n',
     "suite.toml: task 1: config key 'num_fewshot' wants int"),
    ('[[task]]\nname = "a"\npath = "zz.jsonl"\n', "suite.toml: task 1 (a): path"),
    ('[[task]]\nname = "a"\npath = "a.jsonl"\n[[task]]\nname = "a"\npath = "a.jsonl"\n',
     "suite.toml: task 2 (a): a second task named 'a'"),
    ('tasks = 1\n', "suite.toml: unknown config key 'tasks' (did you mean 'task'?)"),
    ('task = 1\n', "suite.toml: expected one or more [[task]] tables"),
])
def test_bad_suites_are_one_line_errors(byte_model, tmp_path, capsys, body, message):
    _jsonl(tmp_path / "a.jsonl", _mc_records(3))
    suite = _suite(tmp_path, body)
    with pytest.raises(ValueError, match=re.escape(message)):
        read_suite(suite)
    assert main(["eval", str(byte_model[0]), "--suite", str(suite), "--no-progress",
                 "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_report_folder_is_claimed_and_rewritten_only_by_eval(byte_model, tmp_path, capsys):
    ckpt, _, _ = byte_model
    _jsonl(tmp_path / "t.jsonl", _mc_records(6))
    out = tmp_path / "report"
    args = ["eval", str(ckpt), "--task", "t", "--data", str(tmp_path / "t.jsonl"),
            "--no-progress", "-o", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| t | 6 | 0 |" in printed and "examples in" in printed
    names = {p.name for p in out.iterdir()}
    assert {"report.json", "report.md", "report.png", "predictions.jsonl"} <= names
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"][0]["examples"] == 6 and "predictions" not in report["tasks"][0]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert main(args) == 0  # its own folder: rewritten
    (out / "mine.txt").write_text("keep")
    assert main(args) == 1 and "mine.txt" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep"
    with pytest.raises(OutputFolderError):
        write_report(tmp_path, {"tasks": [], "score": None}, inputs=[tmp_path / "t.jsonl"])


def test_example_suite_runs():
    """examples/eval: the suite built from held-out text loads and scores."""
    from conftest import ROOT

    suite = ROOT / "examples" / "eval" / "suite.toml"
    specs = read_suite(suite)
    assert {s.name for s in specs} >= {"cloze", "next_sentence"}
    for s in specs:
        s.limit = 5
    tok = byte_tokenizer()
    model = GPT(GPTConfig(block_size=512, vocab_size=tok.n_vocab, n_layer=1, n_head=2,
                          n_embd=16)).eval()
    result = run_suite(model, specs, tokenizer=tok, truncate_context=True)
    assert all(t["examples"] == 5 for t in result["tasks"]) and result["score"] is not None


def test_training_runs_eval_tasks_and_plots_them_beside_the_loss(shared_data, tmp_path, capsys):
    from gristmill.train import train

    text = (shared_data / "tinyshakespeare.txt").read_text("utf-8")[:20_000]
    ds = text_shards(text, tmp_path / "shards")
    _jsonl(tmp_path / "a.jsonl", _mc_records(8, seed=7))
    suite = _suite(tmp_path, '[[task]]\nname = "a"\npath = "a.jsonl"\n')
    out = tmp_path / "run"
    train(dataset=ds, out_dir=str(out), model="tiny", n_layer=1, n_embd=32, block_size=64,
          batch_size=2, seq_len=32, max_steps=4, eval_interval=4, eval_tasks=str(suite),
          eval_tasks_interval=2, eval_batches=1, progress=False, warmup_steps=1)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    scored = [r for r in records if "tasks_score" in r]
    assert [r["step"] for r in scored] == [2, 4] and set(scored[0]["tasks"]) == {"a"}
    assert "tasks score" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(out / "loss.png").size[0] > Image.open(out / "loss.png").size[1] * 2
    with pytest.raises(TaskFormatError, match="suite.toml: task 1: missing field 'path'"):
        _suite(tmp_path, '[[task]]\nname = "a"\n')
        train(dataset=ds, out_dir=str(tmp_path / "run2"), model="tiny", n_layer=1, n_embd=32,
              block_size=64, max_steps=1, eval_tasks=str(suite), progress=False)


_suite_value = st.one_of(st.none(), st.booleans(), st.integers(-2, 5), st.floats(-1, 2),
                         st.sampled_from(["a", "a.jsonl", "acc", "acc_norm", "zz", ""]),
                         st.lists(st.integers(), max_size=2))
_task_table = st.dictionaries(
    st.sampled_from(["name", "path", "num_fewshot", "metric", "random_baseline", "delimiter",
                     "limit", "seed", "oops"]), _suite_value, max_size=6)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tasks=st.lists(_task_table, max_size=3))
def test_suite_reader_gives_specs_or_one_line_naming_the_file(tmp_path, tasks):
    _jsonl(tmp_path / "a.jsonl", _mc_records(2))
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"task": tasks}))
    try:
        specs = read_suite(path)
    except ValueError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e), str(e)
        return
    assert len(specs) == len(tasks) >= 1
    for spec, t in zip(specs, tasks):
        assert spec.name == str(t["name"]) and spec.path == str(tmp_path / str(t["path"]))
        assert spec.metric in ("acc", "acc_norm", "acc_norm_tokens") and spec.num_fewshot >= 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_shared_cache_scores_on_cuda(byte_model):
    _, model, tok = byte_model
    gpu = GPT(model.config).cuda().eval()
    gpu.load_state_dict(model.state_dict())
    items = _random_items(random.Random(5), 20, tok.n_vocab, model.config.block_size)
    got = score_choices(gpu, items, batch_tokens=300)
    for (ctx, ends), scores in zip(items, got):
        ref = reference_scores(model, ctx, ends)
        assert np.allclose([s for s, _ in scores], [s for s, _ in ref], atol=1e-3, rtol=0)
    half = score_choices(gpu.to(torch.bfloat16), items)  # bf16: choices mostly the same
    agree = np.mean([np.argmax([s for s, _ in a]) == np.argmax([s for s, _ in b])
                     for a, b in zip(half, got)])
    assert agree >= 0.8
