"""Document-aligned batches through the binding: best-fit packing, utilisation, the documents of
a row, the document attention mask, and training with them (exact resume included).

The data is real text (Tiny Shakespeare's paragraphs as documents, byte-level tokens); the
packer itself is tested against a written-out reference in rust/shards/sampler.rs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from text_shards import text_shards

torch = pytest.importorskip("torch")

from gristmill.model import GPT, GPTConfig  # noqa: E402
from gristmill.shards import document_attention_mask, packing_name  # noqa: E402
from gristmill.train import next_batch, train  # noqa: E402

torch.set_num_threads(1)

hyp = settings(max_examples=15, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def ds(shared_data, tmp_path_factory):
    text = (shared_data / "tinyshakespeare.txt").read_text("utf-8")[:60_000]
    return text_shards(text, tmp_path_factory.mktemp("docs"), shard_size=7_919)


@pytest.fixture(scope="module")
def docs(ds):
    """Each train document's record (tokens and end-of-text) by its start."""
    out, start = {}, 0  # documents lie one after another from token 0
    for i in range(ds.num_documents()):
        tokens = np.append(ds.document(i), ds.eot_token)  # its record: text, end-of-text
        out[start] = tokens
        start += len(tokens)
    assert start == ds.num_tokens()
    return out


def test_bestfit_rows_start_at_documents_are_full_and_hold_document_heads(ds, docs):
    for mode in ("random", "sequential"):
        ranks = [ds.sampler(batch_size=3, seq_len=63, mode=mode, packing="bestfit", pool=40,
                            rank=r, world_size=2, seed=4) for r in range(2)]
        used: set[int] = set()
        while ranks[0].epoch == 0:
            for s in ranks:
                batch = s.next_batch()
                segs, starts = s.last_segments(), s.last_starts()
                assert (s.last_lengths() == 64).all()  # no padding
                cropped = s.last_cropped()
                assert s.last_utilisation() == pytest.approx(3 * 64 / (3 * 64 + cropped.sum()))
                for row, seg, start, cut in zip(batch, segs, starts, cropped):
                    assert int(start) in docs, "a row starts mid-document"
                    pieces = np.split(row, np.flatnonzero(np.diff(seg)) + 1)
                    assert len(pieces) == seg[-1] + 1
                    found = []
                    for k, piece in enumerate(pieces):
                        # Each piece is the head of a document; only the last may be cut.
                        heads = [d for d, t in docs.items() if len(t) >= len(piece)
                                 and (t[: len(piece)] == piece).all()
                                 and (len(t) == len(piece) or k == len(pieces) - 1)]
                        assert heads, f"piece {k} is no document's head"
                        found.append(heads)
                    if s.epoch == 0:
                        assert int(start) not in used, "a document starts two rows in an epoch"
                        used.add(int(start))
                    assert cut >= 0
        assert len(used) > 10


@hyp
@given(k=st.integers(0, 25), mode=st.sampled_from(["random", "sequential"]),
       pool=st.integers(1, 60), seq_len=st.integers(8, 80), world=st.integers(1, 2))
def test_bestfit_resume_after_k_batches_equals_the_uninterrupted_stream(ds, k, mode, pool,
                                                                         seq_len, world):
    kw = {"batch_size": 2, "seq_len": seq_len, "mode": mode, "packing": "bestfit", "pool": pool,
          "rank": world - 1, "world_size": world, "seed": 11}
    try:
        a = ds.sampler(**kw)
        for _ in range(k):
            a.next_batch()
    except ValueError as e:  # pools of few short documents may fill too few rows
        assert "pack best-fit into" in str(e)
        return
    state = json.loads(json.dumps(a.state_dict()))
    b = ds.sampler(**kw)
    b.load_state_dict(state)
    for _ in range(5):
        np.testing.assert_array_equal(a.next_batch(), b.next_batch())
        np.testing.assert_array_equal(a.last_segments(), b.last_segments())
        np.testing.assert_array_equal(a.last_cropped(), b.last_cropped())


def test_window_segments_follow_the_document_index(ds, docs):
    s = ds.sampler(batch_size=4, seq_len=100, seed=2)
    for _ in range(5):
        s.next_batch()
        for start, seg in zip(s.last_starts(), s.last_segments()):
            new = np.array([int(start) + i in docs for i in range(1, 101)])
            np.testing.assert_array_equal(np.diff(seg), new.astype(np.int32))
            assert seg[0] == 0


def test_padded_rows_utilisation_and_untrained_padding(ds):
    s = ds.sampler(batch_size=4, seq_len=200, packing=True, seed=1)
    eot = ds.eot_token
    for _ in range(10):
        x, y, mask = next_batch(s, torch.device("cpu"), packing="pad", doc_mask=True)
        lengths = s.last_lengths()
        assert s.last_utilisation() == pytest.approx(lengths.sum() / (4 * 201))
        for j, n in enumerate(lengths):
            assert (y[j, n - 1:] == -1).all() and (y[j, : n - 1] >= 0).all()
            assert (x[j, n:] == eot).all()
        assert mask.shape == (4, 1, 200, 200)
    windows = ds.sampler(batch_size=4, seq_len=64)
    windows.next_batch()
    assert windows.last_utilisation() == 1.0 and (windows.last_cropped() == 0).all()


def test_document_mask_equals_running_each_document_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=97)).eval()
    lengths = [5, 9, 1, 17]  # one row of four documents
    idx = torch.randint(0, 97, (1, sum(lengths)))
    segs = np.repeat(np.arange(len(lengths)), lengths)[None]
    mask = document_attention_mask(segs)
    # The mask, written out: causal and within a document.
    ref = torch.tensor([[[[segs[0, i] == segs[0, j] and j <= i for j in range(idx.shape[1])]
                          for i in range(idx.shape[1])]]])
    assert torch.equal(mask, ref)
    with torch.no_grad():
        packed = model(idx, attn_mask=mask)[0]
        at = 0
        for n in lengths:
            alone = model(idx[:, at:at + n], positions=torch.arange(at, at + n))[0]
            torch.testing.assert_close(packed[:, at:at + n], alone, rtol=1e-5, atol=1e-5)
            at += n


def test_bad_settings_are_refused(ds):
    with pytest.raises(ValueError, match="packing must be one of off, pad, bestfit"):
        ds.sampler(batch_size=2, seq_len=8, packing="best")
    with pytest.raises(ValueError, match="pool"):
        ds.sampler(batch_size=2, seq_len=8, packing="bestfit", pool=0)
    with pytest.raises(ValueError, match="pack best-fit into"):
        ds.sampler(batch_size=100_000, seq_len=8, packing="bestfit").next_batch()
    a = ds.sampler(batch_size=2, seq_len=8, packing="bestfit", pool=8)
    a.next_batch()
    with pytest.raises(ValueError, match="pool Some"):
        ds.sampler(batch_size=2, seq_len=8, packing="bestfit", pool=9).load_state_dict(
            a.state_dict())
    with pytest.raises(ValueError, match="packing bestfit"):
        ds.sampler(batch_size=2, seq_len=8, packing=True).load_state_dict(a.state_dict())
    assert packing_name(False) == "off" and packing_name(True) == "pad"


TINY = {"model": "tiny", "n_layer": 2, "n_embd": 32, "block_size": 64, "batch_size": 4,
        "seq_len": 32, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "progress": False,
        "plot": False, "eval_batches": 2}


def test_training_on_bestfit_rows_with_a_document_mask_resumes_exactly(ds, tmp_path):
    run = {**TINY, "packing": "bestfit", "doc_mask": True, "max_steps": 6, "eval_interval": 3,
           "keep_last": 1}
    whole = train(dataset=ds, out_dir=str(tmp_path / "whole"), **run)
    first = train(dataset=ds, out_dir=str(tmp_path / "split"), **{**run, "max_steps": 3})
    second = train(dataset=ds, out_dir=str(tmp_path / "split"), **run)
    assert first["losses"] + second["losses"] == whole["losses"]
    log = [json.loads(r) for r in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    used = [r["utilisation"] for r in log if "loss" in r]
    assert len(used) == 6 and all(0 < u <= 1 for u in used)


def test_tokens_per_param_sets_max_steps(ds, tmp_path, capsys):
    n = GPT(GPTConfig.from_preset("tiny", vocab_size=ds.n_vocab, n_layer=2, n_embd=32,
                                  block_size=64)).num_params()
    tokens_per_step = 4 * 32
    result = train(dataset=ds, out_dir=str(tmp_path / "r"), **{**TINY, "eval_interval": 10**6},
                   tokens=3 * tokens_per_step + 1, packing="pad")
    assert result["step"] == 4  # ceil: at least the tokens asked for
    assert all(math.isfinite(x) for x in result["losses"])
    with pytest.raises(ValueError, match="give one"):
        train(dataset=ds, out_dir=str(tmp_path / "x"), **TINY, tokens=10, tokens_per_param=1)
    with pytest.raises(ValueError, match="'tokens_per_param' must be 0"):
        train(dataset=ds, out_dir=str(tmp_path / "x"), **TINY, tokens_per_param=-1)
    with pytest.raises(ValueError, match="config key 'packing' must be"):
        train(dataset=ds, out_dir=str(tmp_path / "x"), **TINY, packing="tight")
    # tokens_per_param: the model's own count (a tiny model: a few steps per 0.001 ratio)
    result = train(dataset=ds, out_dir=str(tmp_path / "p"), **{**TINY, "eval_interval": 10**6},
                   tokens_per_param=0.002)
    assert result["step"] == math.ceil(0.002 * n / tokens_per_step)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bestfit_rows_with_a_document_mask_train_on_cuda_bf16_compiled(ds, tmp_path):
    run = {**TINY, "packing": "bestfit", "doc_mask": True, "device": "cuda", "compile": True,
           "max_steps": 6, "eval_interval": 6}
    result = train(dataset=ds, out_dir=str(tmp_path), **run)
    assert all(math.isfinite(x) for x in result["losses"]) and math.isfinite(result["val_loss"])
