"""Fine-tuning: the response-only mask, length-grouped batches, the readers (bad lines named),
a classifier that learns the SMS spam data, exact resume, Hugging Face GPT-2 folders, the
judge through a local stub, and the commands.

Models are tiny with random weights and GPT-2's tokenizer; runs are a few dozen steps.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")
pytest.importorskip("safetensors")

from gristmill.checkpoint import list_checkpoints, load_extra_weights, save_hf, save_weights
from gristmill.cli import main
from gristmill.finetune import Classifier, finetune_classify, finetune_instruct
from gristmill.finetune_data import (
    FinetuneDataError,
    batches_by_length,
    collate_instruct,
    json_records,
    read_instructions,
    read_labelled,
    segments_of,
)
from gristmill.model import GPT, GPTConfig
from gristmill.prompts import Segment, alpaca_prompt, encode_segments, encode_segments_batch
from gristmill.tokenizer import Tokenizer

torch.set_num_threads(1)  # tiny models: one thread is fastest and deterministic

FAST = {"progress": False, "plot": False, "batch_size": 8, "lr": 1e-3}


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.from_name("gpt2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A folder holding a tiny random GPT with GPT-2's vocabulary (save_weights' file)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny")
    save_weights(GPT(GPTConfig.from_preset("tiny", vocab_size=50257, n_embd=32)),
                 folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def sms(shared_data, tmp_path_factory):
    """A balanced slice of the SMS data (every spam text and as many ham ones), headerless."""
    lines = (shared_data / "sms-spam-collection.tsv").read_text("utf-8").splitlines()
    spam = [x for x in lines if x.startswith("spam\t")][:300]
    ham = [x for x in lines if x.startswith("ham\t")][:300]
    path = tmp_path_factory.mktemp("sms") / "sms.tsv"
    path.write_text("\n".join(x for pair in zip(ham, spam) for x in pair) + "\n", "utf-8")
    return path


# ---- the mask ---------------------------------------------------------------------------------


def test_response_mask_keeps_the_first_end_of_text_and_hides_prompt_and_padding(gpt2):
    records = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
               {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}]
    examples = [segments_of(type("R", (), {"record": r, "kind": "alpaca"})()) for r in records]
    tokens, targets, offsets = encode_segments_batch(gpt2, examples)
    eot = gpt2.eot_token
    x, y = collate_instruct(tokens, targets, offsets, np.array([0, 1]), pad=eot)
    for row, r in enumerate(records):
        prompt = gpt2.encode_ordinary(alpaca_prompt(r["instruction"], r["input"]))
        response = gpt2.encode_ordinary(r["output"])
        ids = prompt + response + [eot]
        n = len(ids) - 1
        assert x[row, :n].tolist() == ids[:-1]
        assert (x[row, n:] == eot).all()  # padding
        want = [-100] * (len(prompt) - 1) + response + [eot]
        assert y[row, :n].tolist() == want  # the prompt masked, the first end-of-text a target
        assert (y[row, n:] == -100).all()  # padding masked
    # loss on the prompt too: exactly the book's collate (ch. 7 custom_collate_fn)
    book = pytest.importorskip("llms_from_scratch.ch07")
    full = np.ones_like(targets)
    x2, y2 = collate_instruct(tokens, full, offsets, np.array([0, 1]), pad=eot)
    items = [tokens[offsets[i]:offsets[i + 1] - 1].tolist() for i in range(2)]
    bx, by = book.custom_collate_fn(items, pad_token_id=eot)
    assert x2.tolist() == bx.tolist() and y2.tolist() == by.tolist()


def test_chat_messages_train_on_every_assistant_turn(gpt2):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Bye."}]
    ex = type("R", (), {"record": {"messages": messages}, "kind": "messages"})()
    ids, tgt = encode_segments(gpt2, segments_of(ex))
    picked = [i for i, t in zip(ids, tgt) if t]
    eot = gpt2.eot_token
    assert picked == gpt2.encode_ordinary("Hello.") + [eot] + gpt2.encode_ordinary("Bye.") + [eot]
    prompt = encode_segments(gpt2, segments_of(ex, with_response=False))[0]
    assert gpt2.decode(prompt).endswith("### Instruction:\nBye\n\n### Response:\n")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.text(max_size=12), st.booleans(), st.booleans()),
                         max_size=4), max_size=5))
def test_encode_segments_batch_equals_one_at_a_time(examples):
    tok = Tokenizer.from_name("gpt2")
    segs = [[Segment(t, target, end) for t, target, end in ex] for ex in examples]
    tokens, targets, offsets = encode_segments_batch(tok, segs)
    assert len(offsets) == len(segs) + 1
    for i, ex in enumerate(segs):
        ids, tgt = encode_segments(tok, ex)
        assert tokens[offsets[i]:offsets[i + 1]].tolist() == ids
        assert targets[offsets[i]:offsets[i + 1]].tolist() == tgt


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=200), st.integers(1, 16),
       st.integers(0, 5))
def test_length_batches_cover_every_example_once(lengths, batch_size, epoch):
    lengths = np.array(lengths)
    batches = batches_by_length(lengths, batch_size, 7, epoch, pool=4)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    again = batches_by_length(lengths, batch_size, 7, epoch, pool=4)
    assert all((a == b).all() for a, b in zip(batches, again))  # a resumed run sees the same


def test_length_batches_pad_less_than_padding_to_the_longest(gpt2, sms):
    rows = read_labelled(sms, "1", "0")
    lengths = np.array([len(x) for x in gpt2.encode_ordinary_batch([r.text for r in rows])])
    batches = batches_by_length(lengths, 8, 0, 0)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < 0.5 * len(lengths) * lengths.max()


# ---- readers ----------------------------------------------------------------------------------


_json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(
                               st.text(max_size=5), c, max_size=3), max_leaves=8)


@settings(max_examples=80, deadline=None)
@given(st.lists(_json_value, max_size=6), st.lists(st.integers(0, 2), min_size=6, max_size=6),
       st.booleans())
def test_json_records_give_each_value_with_its_line(values, gaps, as_array):
    if not as_array:  # JSON lines hold records; a first line "[..." reads as an array
        values = [{"v": v} for v in values]
    parts = ["\n" * gap + json.dumps(v) for v, gap in zip(values, gaps)]
    text = "[" + ",\n".join(parts) + "]\n" if as_array else "\n".join(parts) + "\n"
    want = [(v, 1 + sum(gaps[:i + 1]) + i) for i, v in enumerate(values)]
    assert json_records(text) == want


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
                                  min_size=1, max_size=20).filter(str.strip),
                          st.sampled_from(["ham", "spam", "eggs"])), min_size=1, max_size=8),
       st.sampled_from(["tsv", "csv", "jsonl"]))
def test_read_labelled_round_trips(tmp_path_factory, rows, fmt):
    path = tmp_path_factory.mktemp("rows") / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows),
                        "utf-8")
        got = read_labelled(path)
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["label", "text"])
        w.writerows([(lab, t) for t, lab in rows])
        path.write_text(buf.getvalue(), "utf-8")
        got = read_labelled(path)
    else:
        rows = [(t.replace("\t", " "), lab) for t, lab in rows]
        rows = [(t, lab) for t, lab in rows if t.strip()]
        if not rows:
            return
        path.write_text("".join(f"{lab}\t{t}\n" for t, lab in rows), "utf-8")
        got = read_labelled(path, "1", "0")
        assert [r.line for r in got] == list(range(1, len(rows) + 1))
    assert [(r.text, r.label) for r in got] == [(t, lab) for t, lab in rows]


def test_read_labelled_keeps_quotes_in_tsv_as_text(shared_data):
    rows = read_labelled(shared_data / "sms-spam-collection.tsv", "1", "0")
    assert len(rows) == 5574 and rows[-1].line == 5574  # one row per line, as the file has
    assert sum(r.label == "spam" for r in rows) == 747
    assert any(r.text.startswith('"') for r in rows)


def test_instruction_data_reads_with_lines(shared_data):
    rows = read_instructions(shared_data / "instruction-data.json")
    assert len(rows) == 1100 and rows[0].line == 2 and rows[0].kind == "alpaca"
    assert rows[1].line == 7


@pytest.mark.parametrize("name, content, args, where, what", [
    ("a.csv", "label,body\nham,hi\n", {}, "a.csv:1", "no column 'text'"),
    ("a.tsv", "ham\thi\nspam\t  \n", {"text_field": "1", "label_field": "0"}, "a.tsv:2",
     "empty text"),
    ("a.tsv", "ham\thi\nspam\n", {"text_field": "1", "label_field": "0"}, "a.tsv:2",
     "1 column"),
    ("a.jsonl", '{"text": "hi", "label": "x"}\n\n{"txt": "yo", "label": "y"}\n', {}, "a.jsonl:3",
     "no field 'text'"),
    ("a.jsonl", '{"text": "hi", "label": "x"}\n{"text": "yo", \n', {}, "a.jsonl:2",
     "not valid JSON"),
])
def test_bad_labelled_data_names_file_and_line(tmp_path, name, content, args, where, what):
    (tmp_path / name).write_text(content, "utf-8")
    with pytest.raises(FinetuneDataError) as e:
        read_labelled(tmp_path / name, **args)
    assert where in str(e.value) and what in str(e.value) and "\n" not in str(e.value)


def test_bad_instruction_names_file_and_line(tmp_path):
    path = tmp_path / "i.json"
    path.write_text('[\n  {"instruction": "a", "input": "", "output": "b"},\n'
                    '  {"instruction": "c", "input": ""}\n]', "utf-8")
    with pytest.raises(FinetuneDataError, match=r"i\.json:3: field 'output'"):
        read_instructions(path)


def test_unknown_label_in_the_test_file_is_named(tiny, tmp_path):
    (tmp_path / "train.tsv").write_text("ham\thello there\nspam\twin cash now\n" * 4, "utf-8")
    (tmp_path / "val.tsv").write_text("ham\thi\nspam\tprize\n", "utf-8")
    (tmp_path / "test.tsv").write_text("ham\tok\neggs\tspam and eggs\n", "utf-8")
    with pytest.raises(FinetuneDataError, match=r"test\.tsv:2: label 'eggs' is not among"):
        finetune_classify(data=str(tmp_path / "train.tsv"), val_data=str(tmp_path / "val.tsv"),
                          test_data=str(tmp_path / "test.tsv"), text_field="1", label_field="0",
                          model=str(tiny), out_dir=str(tmp_path / "out"), **FAST)


def test_an_instruction_longer_than_the_context_is_named(tmp_path):
    torch.manual_seed(0)
    save_weights(GPT(GPTConfig.from_preset("tiny", vocab_size=50257, n_embd=32, block_size=64)),
                 tmp_path / "m" / "model.safetensors") if (tmp_path / "m").mkdir() is None else None
    records = [{"instruction": "Say hi.", "input": "", "output": "Hi."}] * 3
    records.insert(1, {"instruction": "word " * 100, "input": "", "output": "x"})
    (tmp_path / "i.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    with pytest.raises(FinetuneDataError, match=r"i\.jsonl:2: the example is \d+ tokens, longer "
                                                r"than the model's context of 64"):
        finetune_instruct(data=str(tmp_path / "i.jsonl"), model=str(tmp_path / "m"),
                          out_dir=str(tmp_path / "out"), **FAST)


@pytest.mark.parametrize("vocab_multiple, head_trains", [(1, True), (64, True), (1, False)])
def test_lm_loss_sum_equals_cross_entropy_over_the_full_logits(vocab_multiple, head_trains):
    """The chunked head-and-loss gives the loss and every gradient of the plain path: full
    (B, T, vocab) logits and F.cross_entropy with -100 ignored; also with a padded vocabulary,
    a frozen head, and in chunks of a few rows."""
    from gristmill.finetune import lm_loss_sum, response_loss

    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_preset("tiny", vocab_size=50257, n_embd=32,
                                    vocab_multiple=vocab_multiple))
    gpt.lm_head.weight.requires_grad_(head_trains)
    x, y = torch.randint(0, 50257, (3, 20)), torch.randint(0, 50257, (3, 20))
    y[0, :5] = y[2, 15:] = -100

    def grads(loss):
        gpt.zero_grad()
        loss.backward()
        return loss.item(), {k: p.grad.clone() for k, p in gpt.named_parameters()
                             if p.grad is not None}

    want, want_g = grads(F.cross_entropy(gpt(x)[0].flatten(0, 1), y.flatten(), ignore_index=-100))
    got, got_g = grads(response_loss(gpt, x, y))
    assert got == pytest.approx(want, rel=1e-6) and got_g.keys() == want_g.keys()
    for k in want_g:
        torch.testing.assert_close(got_g[k], want_g[k], rtol=1e-4, atol=1e-7, msg=k)
    # in chunks of 4 rows, and without gradients
    h = gpt.hidden_states(x)[y != -100].detach().requires_grad_()
    t = y[y != -100]
    whole = lm_loss_sum(gpt, h, t)
    (g_whole,) = torch.autograd.grad(whole, h)
    chunks = lm_loss_sum(gpt, h, t, rows=4)
    (g_chunks,) = torch.autograd.grad(chunks, h)
    assert chunks.item() == pytest.approx(whole.item(), rel=1e-6)
    torch.testing.assert_close(g_chunks, g_whole)
    with torch.no_grad():
        assert lm_loss_sum(gpt, h, t).item() == pytest.approx(whole.item(), rel=1e-6)
    with pytest.raises(ValueError, match="rows must be >= 1, got 0"):
        lm_loss_sum(gpt, h, t, rows=0)


def test_lm_loss_sum_under_bf16_autocast_is_close():
    from gristmill.finetune import response_loss

    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_preset("tiny", vocab_size=50257, n_embd=32))
    x, y = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy(gpt(x)[0].flatten(0, 1).float(), y.flatten())
        got = response_loss(gpt, x, y)
    (gw,) = torch.autograd.grad(got, gpt.lm_head.weight)
    (ww,) = torch.autograd.grad(want, gpt.lm_head.weight)
    assert got.item() == pytest.approx(want.item(), rel=1e-2)
    assert (gw - ww).abs().max() < 0.02 * ww.abs().max()


# ---- classification ---------------------------------------------------------------------------


def test_classifier_learns_sms_spam_above_chance(tiny, sms, tmp_path):
    out = tmp_path / "spam"
    report = finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                               out_dir=str(out), train_blocks=-1, max_steps=50, **{
                                   **FAST, "batch_size": 16, "plot": True})
    assert report["labels"] == ["ham", "spam"]
    assert report["examples"] == {"train": 420, "val": 60, "test": 120}
    assert report["test"]["accuracy"] > 0.75, report["test"]
    assert set(report["test"]["per_class"]["spam"]) == {"precision", "recall", "f1", "support"}
    assert np.sum(report["test"]["confusion"]) == 120
    assert len(report["epoch_cpu_seconds"]) == len(report["epoch_seconds"])
    for name in ("report.json", "report.md", "confusion.png", "loss.png", "log.jsonl"):
        assert (out / name).stat().st_size > 0, name
    clf = Classifier.load(out)
    texts = ["Congratulations! You have won a free prize. Text WIN to 80086 now!",
             "Are we still meeting for lunch at noon?"]
    assert clf.predict(texts) == [clf.labels[i] for i in clf.predict_proba(texts).argmax(1)]
    assert np.allclose(clf.predict_proba(texts).sum(1), 1, atol=1e-5)
    # the same classifier from the command line
    assert main(["classify", str(out), *texts]) == 0


def test_only_the_last_block_the_final_norm_and_the_head_train_by_default(tiny, sms, tmp_path):
    from gristmill.checkpoint import load_model

    report = finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                               out_dir=str(tmp_path / "o"), max_steps=3, pooling="mean", **FAST)
    base, tuned = load_model(tiny).state_dict(), load_model(tmp_path / "o").state_dict()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith(("transformer.h.1.", "transformer.ln_f.")) for k in changed)
    assert report["trainable_params"] == sum(
        v.numel() for k, v in base.items() if k.startswith(("transformer.h.1.", "transformer.ln_f."))
    ) + 32 * 2 + 2


@pytest.mark.parametrize("pooling", ["eot", "last", "mean", "padded"])
def test_each_pooling_reads_what_it_says(tiny, sms, tmp_path, gpt2, pooling):
    """padded (the default, the book's): the last position of the text padded with end-of-text
    to max_length; eot: an end-of-text token appended to the text; last: the text's last token;
    mean: the mean over the text's tokens. Batched with texts of other lengths, as a run
    batches them."""
    out = tmp_path / pooling
    finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                      out_dir=str(out), max_steps=2, pooling=pooling, max_length=12, **FAST)
    clf = Classifier.load(out, device="cpu")
    assert clf.model.pooling == pooling
    texts = ["Win a free prize now, text WIN to 80086! Reply STOP to end, 150p/msg", "ok",
             "See you at lunch tomorrow?"]
    gpt, head = clf.model.gpt, clf.model.head
    with torch.no_grad():
        want = []
        for t in texts:
            ids = gpt2.encode(t)[:11 if pooling == "eot" else 12]
            ids += {"eot": [gpt2.eot_token], "padded": [gpt2.eot_token] * (12 - len(ids))}.get(
                pooling, [])
            h = gpt.hidden_states(torch.tensor([ids]))[0]
            want.append(head(h.mean(0) if pooling == "mean" else h[-1]).softmax(-1))
    assert np.allclose(clf.predict_proba(texts), torch.stack(want).numpy(), atol=1e-5)


@pytest.mark.parametrize("pooling,blocks", [("eot", 1), ("padded", 1), ("eot", 0)])
def test_the_frozen_blocks_computed_once_train_as_recomputed(tiny, sms, tmp_path, pooling,
                                                             blocks):
    """With only the last block (or only the final norm and the head) training, the frozen
    blocks' output is kept per text (the report says for which splits) and a run equals one
    that recomputes it every step."""
    common = dict(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                  max_steps=6, pooling=pooling, train_blocks=blocks, **FAST)
    kept = finetune_classify(out_dir=str(tmp_path / "kept"), **common)
    again = finetune_classify(out_dir=str(tmp_path / "again"), cache_mb=0, **common)
    k = 2 - blocks  # the tiny GPT has two blocks
    assert kept["cached_blocks"] == {"train": k, "val": k, "test": k}
    assert again["cached_blocks"] == {}
    logs = [[json.loads(x)["loss"] for x in (tmp_path / d / "log.jsonl").read_text().splitlines()
             if '"loss"' in x] for d in ("kept", "again")]
    assert np.allclose(logs[0], logs[1], rtol=1e-5, atol=1e-6)
    assert kept["test"]["loss"] == pytest.approx(again["test"]["loss"], rel=1e-5)


@pytest.mark.parametrize("change", [{"train_blocks": -1}, {"dropout": 0.1}, {"lora_rank": 2},
                                    {"cache_mb": 1}])
def test_nothing_is_kept_that_could_change_or_overflow(tiny, sms, tmp_path, change):
    """Every weight training, dropout or LoRA in the first blocks: their output changes, so it
    is recomputed. A budget smaller than the training split's states keeps only what fits."""
    r = finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                          out_dir=str(tmp_path / "o"), max_steps=2, pooling="eot", **change,
                          **FAST)
    assert r["cached_blocks"] == ({"val": 1, "test": 1} if "cache_mb" in change else {})


def test_a_full_disk_falls_back_to_recomputing(tiny, sms, tmp_path, monkeypatch):
    """The frozen blocks' file cannot be written: a warning, and the run goes on without it."""
    import errno

    import gristmill.finetune as ft

    def full(self, device, autocast):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ft._FrozenStates, "_fill", full)
    with pytest.warns(UserWarning, match="recomputed at every step: .*No space left"):
        r = finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                              out_dir=str(tmp_path / "o"), max_steps=3, **FAST)
    assert r["cached_blocks"] == {} and r["test"]["accuracy"] is not None


def test_padded_pads_to_the_longest_training_text(tiny, sms, gpt2, tmp_path):
    """The book's layout: without max_length, every text padded to the longest training text
    (within the context); a longer text at prediction is cut to it."""
    finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                      out_dir=str(tmp_path / "o"), max_steps=2, pooling="padded", **FAST)
    clf = Classifier.load(tmp_path / "o", device="cpu")
    from gristmill.finetune_data import read_labelled, split_indices

    rows = read_labelled(sms, "1", "0")
    train = [rows[i] for i in split_indices(len(rows), (0.7, 0.1, 0.2), 123)[0]]
    longest = max(len(gpt2.encode(r.text)) for r in train)
    assert clf.max_length == min(longest, clf.model.gpt.config.block_size)
    long_text = "free prize " * 200
    assert clf.predict_proba([long_text]).shape == (1, 2)


def test_the_report_is_the_best_checkpoint_s(tiny, sms, tmp_path):
    """The best checkpoint (by validation loss), not the last, is read back into the model in
    memory (what trained only) and reported; it equals the classifier loaded from disk."""
    r = finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                          out_dir=str(tmp_path / "o"), max_steps=12, eval_interval=1,
                          keep_last=1, **{**FAST, "lr": 2e-2})
    assert Path(r["checkpoint"]).name != "ckpt-0000012"  # a run where best is not last
    clf = Classifier.load(r["checkpoint"], device="cpu")
    from gristmill.finetune_data import read_labelled, split_indices

    rows = read_labelled(sms, "1", "0")
    test = [rows[i] for i in split_indices(len(rows), (0.7, 0.1, 0.2), 123)[2]]
    probs = clf.predict_proba([t.text for t in test])
    truth = np.array([clf.labels.index(t.label) for t in test])
    loss = -np.log(probs[np.arange(len(test)), truth]).mean()
    assert r["test"]["loss"] == pytest.approx(loss, rel=1e-5)


def test_a_negative_cache_budget_is_one_line(tiny, sms, tmp_path):
    with pytest.raises(ValueError, match="cache_mb must be >= 0 \\(0: no cache\\), got -5"):
        finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                          out_dir=str(tmp_path / "o"), max_steps=1, cache_mb=-5, **FAST)


def test_a_bad_pooling_is_one_line_naming_the_key(tiny, sms, tmp_path, capsys):
    with pytest.raises(ValueError, match="'pooling' must be padded or eot or last or mean, got"):
        finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                          out_dir=str(tmp_path / "o"), max_steps=1, pooling="first", **FAST)
    args = ["finetune", "classify", "--data", str(sms), "--text-field", "1", "--label-field",
            "0", "--model", str(tiny), "--out-dir", str(tmp_path / "p"), "--pooling", "first"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("gristmill finetune: config key 'pooling' must be padded or eot or last or "
                   "mean, got 'first'")


@pytest.mark.parametrize("setting", [{"dropout": 0.1, "train_blocks": -1},
                                     {}])  # the default: the frozen block's output kept
def test_classify_resume_is_exact(tiny, sms, tmp_path, setting):
    common = dict(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                  eval_interval=4, keep_last=3, **setting, **FAST)
    finetune_classify(out_dir=str(tmp_path / "once"), max_steps=8, **common)
    finetune_classify(out_dir=str(tmp_path / "twice"), max_steps=4, **common)
    finetune_classify(out_dir=str(tmp_path / "twice"), max_steps=8, **common)  # resumes at 4
    a, b = list_checkpoints(tmp_path / "once")[-1], list_checkpoints(tmp_path / "twice")[-1]
    assert a.name == b.name == "ckpt-0000008"
    for name in ("model.safetensors", "head.safetensors"):
        sa, sb = load_extra_weights(a, name), load_extra_weights(b, name)
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    la = [json.loads(x) for x in (tmp_path / "once" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "twice" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in la if "loss" in r] == [r["loss"] for r in lb if "loss" in r]


def test_hugging_face_gpt2_folder_fine_tunes(sms, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    folder = save_hf(GPT(GPTConfig.from_preset("tiny", vocab_size=50257, n_embd=32)),
                     tmp_path / "hf")
    transformers.GPT2LMHeadModel.from_pretrained(folder)  # a real HF folder
    report = finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(folder),
                               out_dir=str(tmp_path / "out"), max_steps=2, **FAST)
    assert report["steps"] == 2
    assert Classifier.load(tmp_path / "out").labels == ["ham", "spam"]


# ---- instruction fine-tuning ------------------------------------------------------------------


class _Judge(BaseHTTPRequestHandler):
    def do_POST(self):  # an OpenAI-compatible chat endpoint that always scores 73
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "73"}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_instruct_writes_val_loss_responses_and_judge_scores(tiny, shared_data, tmp_path):
    records = json.loads((shared_data / "instruction-data.json").read_text("utf-8"))[:60]
    data = tmp_path / "data" / "instructions.json"
    data.parent.mkdir()
    data.write_text(json.dumps(records, indent=1), "utf-8")
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "sft"
        report = finetune_instruct(data=str(data), model=str(tiny), out_dir=str(out),
                                   max_steps=4, max_new_tokens=4,
                                   judge_url=f"http://127.0.0.1:{server.server_port}", **FAST)
    finally:
        server.shutdown()
    assert report["examples"] == {"train": 51, "val": 3, "test": 6}
    assert report["val_loss"] > 0 and report["judge"]["mean_score"] == 73
    responses = json.loads((out / "test_responses.json").read_text())
    assert [r["instruction"] for r in responses] == [r["instruction"] for r in records[54:]]
    assert all(isinstance(r["model_response"], str) and r["score"] == 73 for r in responses)
    assert sorted(p.name for p in data.parent.iterdir()) == ["instructions.json"]  # input untouched
    meta = json.loads((list_checkpoints(out)[-1] / "config.json").read_text())
    assert meta["template"] == "alpaca" and meta["task"] == "instruct"


def test_instruct_resume_is_exact_with_loss_on_prompt(tiny, shared_data, tmp_path):
    common = dict(data=str(shared_data / "instruction-data.json"), model=str(tiny),
                  split="0.95,0.01,0.04", eval_interval=2, keep_last=3, generate=False,
                  loss_on_prompt=True, dropout=0.1, **FAST)
    finetune_instruct(out_dir=str(tmp_path / "once"), max_steps=4, **common)
    finetune_instruct(out_dir=str(tmp_path / "twice"), max_steps=2, **common)
    finetune_instruct(out_dir=str(tmp_path / "twice"), max_steps=4, **common)
    a = load_extra_weights(list_checkpoints(tmp_path / "once")[-1], "model.safetensors")
    b = load_extra_weights(list_checkpoints(tmp_path / "twice")[-1], "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_classifier_trains_only_adapters_and_head(tiny, sms, tmp_path):
    pytest.importorskip("gristmill.lora")
    report = finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                               out_dir=str(tmp_path / "o"), max_steps=3, lora_rank=4,
                               lora_targets="attn,mlp", **FAST)
    # rank 4 on c_attn (32->96), attn c_proj, c_fc (32->128), mlp c_proj, 2 layers; head 32x2+2
    per_layer = 4 * (32 + 96) + 4 * (32 + 32) + 4 * (32 + 128) + 4 * (128 + 32)
    assert report["trainable_params"] == 2 * per_layer + 66
    assert Classifier.load(tmp_path / "o").predict(["hello"])[0] in ("ham", "spam")


# ---- commands ---------------------------------------------------------------------------------


def test_cli_finetune_classify_and_a_bad_file(tiny, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in
                            [("good day", "pos"), ("bad day", "neg")] * 20), "utf-8")
    args = ["finetune", "classify", "--data", str(data), "--model", str(tiny), "--out-dir",
            str(tmp_path / "o"), "--max-steps", "2", "--progress", "false", "--plot", "false"]
    assert main(args) == 0
    assert "test: accuracy" in capsys.readouterr().out
    data.write_text('{"text": "x", "label": "a"}\n{"text": "", "label": "b"}\n', "utf-8")
    assert main([*args[:-8], "--out-dir", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gristmill finetune: ") and "d.jsonl:2: empty text" in err
    assert len(err.splitlines()) == 1


def test_the_output_folder_is_apart_from_the_input(tiny, sms):
    from gristmill.outputs import OutputFolderError

    with pytest.raises(OutputFolderError, match="holds the input"):
        finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                          out_dir=str(Path(sms).parent), **FAST)


def test_two_processes_under_torchrun(tiny, sms, tmp_path):
    import os
    import subprocess
    import sys

    args = ["finetune", "classify", "--data", str(sms), "--text-field", "1", "--label-field", "0",
            "--model", str(tiny), "--out-dir", str(tmp_path / "ddp"), "--max-steps", "2",
            "--progress", "false", "--plot", "false", "--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "gristmill", *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test: accuracy") == 1  # rank 0 reports
    state = json.loads((tmp_path / "ddp" / "ckpt-0000002" / "state.json").read_text())
    assert state["world_size"] == 2
    assert Classifier.load(tmp_path / "ddp").labels == ["ham", "spam"]


def test_lora_resume_is_exact_and_the_checkpoint_holds_merged_weights(tiny, sms, tmp_path):
    pytest.importorskip("gristmill.lora")
    common = dict(data=str(sms), text_field="1", label_field="0", model=str(tiny), lora_rank=2,
                  lora_dropout=0.1, eval_interval=2, keep_last=3, **FAST)
    finetune_classify(out_dir=str(tmp_path / "once"), max_steps=4, **common)
    finetune_classify(out_dir=str(tmp_path / "twice"), max_steps=2, **common)
    finetune_classify(out_dir=str(tmp_path / "twice"), max_steps=4, **common)
    a, b = list_checkpoints(tmp_path / "once")[-1], list_checkpoints(tmp_path / "twice")[-1]
    for name in ("adapter.safetensors", "head.safetensors", "model.safetensors"):
        sa, sb = load_extra_weights(a, name), load_extra_weights(b, name)
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    meta = json.loads((a / "config.json").read_text())
    assert meta["lora"]["merged"] is True
    base = load_extra_weights(tiny, "model.safetensors")
    tuned = load_extra_weights(a, "model.safetensors")
    assert not torch.equal(base["transformer.h.0.attn.c_attn.weight"],
                           tuned["transformer.h.0.attn.c_attn.weight"])  # adapters folded in
    assert torch.equal(base["transformer.h.0.mlp.c_fc.weight"], tuned["transformer.h.0.mlp.c_fc.weight"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_classify_and_instruct(tiny, sms, shared_data, tmp_path):
    report = finetune_classify(data=str(sms), text_field="1", label_field="0", model=str(tiny),
                               out_dir=str(tmp_path / "c"), max_steps=4, device="cuda", **FAST)
    assert report["test"]["accuracy"] is not None
    assert Classifier.load(tmp_path / "c", device="cuda").predict(["hi"])[0] in ("ham", "spam")
    report = finetune_instruct(data=str(shared_data / "instruction-data.json"), model=str(tiny),
                               split="0.95,0.01,0.04", out_dir=str(tmp_path / "i"), max_steps=4,
                               max_new_tokens=4, device="cuda", **FAST)
    assert report["val_loss"] > 0 and (tmp_path / "i" / "test_responses.json").exists()
