"""Sampling: parity with transformers' generate (greedy, beam, batched), KV cache vs
recomputation, padding, sampling filters checked statistically, stop conditions, streaming of
split UTF-8 characters, CLI (loss and bits per byte: tests/test_eval.py)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gristmill.checkpoint import from_hf, save_weights
from gristmill.cli import main
from gristmill.model import GPT, GPTConfig
from gristmill.sample import (
    Penalties,
    SamplingConfig,
    TextStream,
    filter_logits,
    generate,
    sample_text,
    stream_text,
)
from text_shards import byte_tokenizer

torch.set_num_threads(1)  # tiny models: one thread is fastest and deterministic

V = 1000
EOS = V - 1
PROMPTS = [[5, 17, 300, 2, 9], [42], [7, 7, 7, 100, 200, 300, 400, 1, 2], [600, 3]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same random GPT-2 weights in transformers and in gristmill (imported)."""
    torch.manual_seed(0)
    # A wider init than GPT-2's 0.02 gives varied, non-repeating greedy outputs.
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=V,
                                  initializer_range=0.2, bos_token_id=EOS, eos_token_id=EOS,
                                  pad_token_id=EOS)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    d = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(d)
    return hf, from_hf(d).eval()


def _hf_generate(hf, prompts, eos, **kw):
    """HF generate on left-padded prompts; new tokens, cut after the first eos."""
    L = max(map(len, prompts))
    ids = torch.tensor([[EOS] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=kw.pop("max_new_tokens", 20),
                      do_sample=False, eos_token_id=eos, pad_token_id=EOS, **kw)
    rows = out[:, L:].tolist()
    return [r[: r.index(eos) + 1] if eos is not None and eos in r else r for r in rows]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_transformers(pair, prompt):
    hf, ours = pair
    plain = _hf_generate(hf, [prompt], None)
    assert generate(ours, [prompt], temperature=0, max_new_tokens=20) == plain
    assert len(set(plain[0])) > 5  # a varied sequence, not one token repeated
    eos = plain[0][6]  # a token greedy emits: stopping on it must end both at the same place
    ours_eos = generate(ours, [prompt], temperature=0, max_new_tokens=20, eot_token=eos)
    assert ours_eos == _hf_generate(hf, [prompt], eos)
    assert ours_eos[0][-1] == eos
    rep = generate(ours, [prompt], temperature=0, max_new_tokens=20, repetition_penalty=1.5)
    assert rep == _hf_generate(hf, [prompt], None, repetition_penalty=1.5)


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping",
                         [(4, 1.0, False), (3, 0.5, True), (5, 2.0, "never"), (2, -1.0, False)])
def test_beam_search_equals_transformers(pair, num_beams, length_penalty, early_stopping):
    hf, ours = pair
    kw = {"num_beams": num_beams, "num_return_sequences": 2, "length_penalty": length_penalty,
          "early_stopping": early_stopping, "max_new_tokens": 12}
    for prompt in PROMPTS[:3]:
        free = _hf_generate(hf, [prompt], None, **kw)
        assert generate(ours, [prompt], eot_token=None, **kw) == free
        eos = free[0][3]  # stop on a token the best beam emits: hypotheses end early
        got = generate(ours, [prompt], eot_token=eos, **kw)
        assert got == _hf_generate(hf, [prompt], eos, **kw)


def test_batched_left_padding_equals_transformers_and_one_by_one(pair):
    hf, ours = pair
    batched = generate(ours, PROMPTS, temperature=0, max_new_tokens=15)
    assert batched == [generate(ours, [p], temperature=0, max_new_tokens=15)[0] for p in PROMPTS]
    assert batched == _hf_generate(hf, PROMPTS, None, max_new_tokens=15)
    beams = generate(ours, PROMPTS, num_beams=3, max_new_tokens=10)
    assert beams == [generate(ours, [p], num_beams=3, max_new_tokens=10)[0] for p in PROMPTS]
    # rows stop at different times; the others go on unchanged
    eos = batched[0][4]
    stopped = generate(ours, PROMPTS, temperature=0, max_new_tokens=15, eot_token=eos)
    assert stopped[0] == batched[0][:5]
    assert stopped == [generate(ours, [p], temperature=0, max_new_tokens=15, eot_token=eos)[0]
                       for p in PROMPTS]


def test_kv_cache_equals_recomputation(pair):
    _, ours = pair
    prompt = PROMPTS[2]
    cached = generate(ours, [prompt], temperature=0, max_new_tokens=30)[0]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(30):  # the quadratic way: the whole sequence every step
            seq.append(int(ours(torch.tensor([seq]))[0][0, -1].argmax()))
    assert cached == seq[len(prompt):]


def test_sampling_is_seeded_and_temperature_zero_limit_is_greedy(pair):
    _, ours = pair
    a = generate(ours, PROMPTS, max_new_tokens=20, seed=7, top_k=50)
    assert a == generate(ours, PROMPTS, max_new_tokens=20, seed=7, top_k=50)
    assert a != generate(ours, PROMPTS, max_new_tokens=20, seed=8, top_k=50)
    greedy = generate(ours, PROMPTS, temperature=0, max_new_tokens=20)
    assert generate(ours, PROMPTS, temperature=1e-6, max_new_tokens=20, seed=3) == greedy


@pytest.fixture(scope="module")
def small_vocab_model():
    torch.manual_seed(3)
    model = GPT(GPTConfig(block_size=16, vocab_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(8)  # an uneven next-token distribution (top 0.27)
    return model


@pytest.mark.parametrize("kw", [{"top_k": 5}, {"top_p": 0.6}, {"min_p": 0.2},
                                {"temperature": 0.5, "top_k": 10, "top_p": 0.9}])
def test_sampled_tokens_follow_the_filtered_distribution(small_vocab_model, kw):
    n = 20000
    prompt = [3, 1, 4]
    with torch.no_grad():
        logits = small_vocab_model(torch.tensor([prompt]))[0][0, -1]
    filtered = filter_logits(logits, kw.get("temperature", 1.0), kw.get("top_k", 0),
                             kw.get("top_p", 1.0), kw.get("min_p", 0.0))
    expected = filtered.softmax(-1).numpy()
    allowed = set(np.flatnonzero(expected > 0))
    assert 1 < len(allowed) < 32
    firsts = [out[0] for out in generate(small_vocab_model, [prompt] * n, max_new_tokens=1,
                                         seed=0, **kw)]
    assert set(firsts) <= allowed  # excluded tokens never appear
    freq = np.bincount(firsts, minlength=32) / n
    assert np.abs(freq - expected).max() < 0.02  # ~6 standard deviations at most


def test_filters_exact_k_and_top_token_kept():
    scores = torch.tensor([[2.0, 2.0, 2.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(scores, top_k=2)).sum() == 2  # ties not all kept
    peaked = torch.tensor([[5.0, 1.0, 0.5, 0.0]])
    assert torch.isfinite(filter_logits(peaked, top_p=1e-9)).tolist() == [[True, False, False,
                                                                            False]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(filter_logits(probs, top_p=0.8)).sum() == 2  # 0.5 + 0.3 reaches 0.8
    assert torch.isfinite(filter_logits(probs, top_p=0.81)).sum() == 3
    assert torch.isfinite(filter_logits(probs, min_p=0.5)).sum() == 2  # >= 0.25


def test_frequency_and_presence_penalties():
    cfg = SamplingConfig(frequency_penalty=0.5, presence_penalty=1.0, repetition_penalty=2.0)
    pen = Penalties(cfg, [[1]], 1, 4, "cpu")
    for t in (2, 2, 3):
        pen.add(torch.tensor([t]))
    got = pen(torch.tensor([[1.0, 1.0, -1.0, 4.0]]))
    # token 1: in the prompt (repetition only); 2: twice; 3: once (and repetition for both)
    assert got.tolist() == [[1.0, 0.5, -2.0 - 1.0 - 1.0, 2.0 - 0.5 - 1.0]]


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    """A byte-level tiny model saved as a checkpoint with its tokenizer."""
    torch.manual_seed(0)
    tok = byte_tokenizer()
    model = GPT(GPTConfig(block_size=64, vocab_size=tok.n_vocab, n_layer=1, n_head=2,
                          n_embd=32)).eval()
    d = tmp_path_factory.mktemp("ckpt")
    save_weights(model, d / "model.safetensors")
    tok.save(d / "tokenizer")
    return d, model, tok


def test_stop_strings_across_tokens_and_sample_text(byte_model):
    path, model, tok = byte_model
    prompt = "ab"
    ids = generate(model, [tok.encode(prompt)], temperature=0, max_new_tokens=30)[0]
    full = tok.decode_bytes(ids)
    stop = full[9:12].decode("latin-1")  # three bytes = three tokens
    first = full.find(full[9:12])
    if any(b >= 0x80 for b in full[:12]):
        pytest.skip("greedy output not ASCII for this seed")
    texts = sample_text(path, [prompt], temperature=0, max_new_tokens=30, stop_strings=[stop])
    assert texts == [full[:first].decode()]
    steps = generate(model, [tok.encode(prompt)], temperature=0, max_new_tokens=30,
                     stop_strings=[stop], token_bytes=tok.decode_single_token_bytes)[0]
    assert len(steps) == first + 3  # generation stopped on the token completing the string
    assert "".join(stream_text(path, prompt, temperature=0, max_new_tokens=30,
                               stop_strings=[stop])) == texts[0]


def test_streaming_never_splits_a_character():
    from gristmill import Tokenizer

    tok = Tokenizer.from_name("gpt2")
    text = "naïve café — 日本語のテキスト 😀🎉 done"
    ids = tok.encode(text)
    assert any(not _valid_utf8(tok.decode_single_token_bytes(i)) for i in ids)
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    held = TextStream(tok, stop_strings=["テキ"])
    assert "".join([held.push(i) for i in ids] + [held.flush()]) == "naïve café — 日本語の"


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_cli_sample_and_eval(byte_model, tmp_path, capsys):
    path, model, tok = byte_model
    assert main(["sample", str(path), "-p", "ab", "-n", "12", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    expected = "ab" + tok.decode(generate(model, [tok.encode("ab")], temperature=0,
                                          max_new_tokens=12)[0])
    assert out == expected + "\n" and "tok/s" in err
    assert main(["sample", str(path), "-p", "ab", "-p", "x", "-n", "5", "--num-beams", "2",
                 "--num-samples", "2"]) == 0
    assert capsys.readouterr().out.count("-" * 40) == 3
    (tmp_path / "t.txt").write_text("hello world, hello world")
    assert main(["eval", str(path), "--text", str(tmp_path / "t.txt"), "--no-progress"]) == 0
    assert "bits/byte" in capsys.readouterr().out
    assert main(["sample", str(tmp_path / "nothing")]) == 1
