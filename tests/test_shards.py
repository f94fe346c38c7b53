"""Token shards: round trips, llm.c compatibility, sampler properties, faults and resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from gristmill import Tokenizer
from gristmill.cli import main as cli_main
from gristmill.documents import Document, read_documents
from gristmill.outputs import OutputFolderError
from gristmill.shards import (
    FORMAT,
    ShardDataset,
    ShardFormatError,
    open_shard,
    sliding_window_dataset,
    torch_batches,
    write_shards,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.from_name("gpt2")


@pytest.fixture(scope="module")
def big_vocab(gpt2) -> Tokenizer:
    """GPT-2's ranks with special tokens above 65,536: shards must be uint32."""
    specials = {"<|endoftext|>": 70_000, "<|pad|>": 65_536}
    return Tokenizer.from_ranks(gpt2.mergeable_ranks(), "gpt2", specials, name="gpt2-big")


@pytest.fixture(scope="module")
def paragraphs(shared_data) -> list[Document]:
    """Real text: Tiny Shakespeare's blank-line-separated blocks, then the Taylor Swift article."""
    docs = list(read_documents(shared_data / "tinyshakespeare.txt", txt_mode="paragraphs"))[:1500]
    docs += list(read_documents(shared_data / "taylorswift.txt", txt_mode="paragraphs"))
    return docs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, gpt2, paragraphs) -> ShardDataset:
    """Several shards (the last short), documents crossing shard ends, a val split."""
    out = tmp_path_factory.mktemp("ds")
    write_shards(paragraphs, out, gpt2, shard_size=9_973, val_fraction=0.05)
    return ShardDataset(out, verify=True)


def shard_bounds(ds: ShardDataset, split: str = "train") -> np.ndarray:
    counts = [s["tokens"] for s in ds.manifest["splits"][split]["shards"]]
    return np.concatenate([[0], np.cumsum(counts)])


def all_files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---- round trips ----------------------------------------------------------------------------


def test_round_trip_uint16_matches_tiktoken(dataset, gpt2, paragraphs, shared_data):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    enc = tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(shared_data / "gpt2.tiktoken")),
        special_tokens={"<|endoftext|>": 50256},
    )
    assert dataset.dtype == np.uint16 and dataset.n_vocab == 50257 and dataset.eot_token == 50256
    dataset.check_tokenizer(gpt2)
    is_val = [math.floor((i + 1) * 0.05) > math.floor(i * 0.05) for i in range(len(paragraphs))]
    train = [d for d, v in zip(paragraphs, is_val) if not v]
    val = [d for d, v in zip(paragraphs, is_val) if v]
    assert dataset.num_documents("train") == len(train)
    assert dataset.num_documents("val") == len(val) > 0
    for split, docs in (("train", train), ("val", val)):
        expected = []
        for i, d in enumerate(docs):
            ids = enc.encode_ordinary(d.text)
            assert dataset.document(i, split).tolist() == ids
            assert dataset.document_id(i, split) == d.id
            expected += ids + [50256]
        assert dataset.tokens(split).tolist() == expected
    assert gpt2.decode(dataset.document(-1)) == train[-1].text


def test_round_trip_uint32(tmp_path, big_vocab, paragraphs):
    docs = [d.text for d in paragraphs[:300]]
    write_shards(docs, tmp_path, big_vocab, shard_size=2_000, eot="prepend", val_docs=20)
    ds = ShardDataset(tmp_path, verify=True)
    assert ds.dtype == np.uint32 and ds.eot_token == 70_000
    header = np.fromfile(tmp_path / "train_000000.bin", dtype="<i4", count=3)
    assert header.tolist() == [FORMAT["magic"], FORMAT["version_uint32"], 2_000]
    assert FORMAT["version_uint32"] not in (1, 7)
    toks = ds.tokens("train")
    assert toks.dtype == np.uint32 and toks[0] == 70_000  # prepended, as llm.c does
    for i in range(0, 280, 7):
        assert big_vocab.decode(ds.document(i)) == docs[20 + i]
        assert ds.document_id(i) == str(20 + i)
    assert [big_vocab.decode(ds.document(i, "val")) for i in range(20)] == docs[:20]
    assert ds.tokenizer().fingerprint == big_vocab.fingerprint


def test_inputs_of_every_kind_give_the_same_shards(tmp_path, gpt2, paragraphs):
    import zstandard

    docs = paragraphs[:200]
    jsonl = tmp_path / "docs.jsonl.zst"
    lines = "".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in docs)
    jsonl.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))

    class FakeHFDataset:  # the slice of datasets.Dataset that write_shards uses
        column_names = ("id", "text")

        def iter(self, batch_size):
            for i in range(0, len(docs), batch_size):
                part = docs[i : i + batch_size]
                yield {"id": [d.id for d in part], "text": [d.text for d in part]}

    inputs = {
        "documents": docs,
        "dicts": ({"id": d.id, "text": d.text} for d in docs),  # a generator: streamed
        "path": jsonl,
        "paths": [jsonl],
        "hf": FakeHFDataset(),
    }
    outputs = {}
    for name, src in inputs.items():
        write_shards(src, tmp_path / name, gpt2, shard_size=3_000)
        outputs[name] = all_files(tmp_path / name)
    first = outputs.pop("documents")
    for name, files in outputs.items():
        assert files == first, name


def test_cli_tokenize_writes_the_same_dataset(tmp_path, gpt2, shared_data, capsys):
    src = tmp_path / "in.jsonl"
    docs = [d for _, d in zip(range(150), read_documents(shared_data / "bench-en.jsonl.zst"))]
    src.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in docs))
    rc = cli_main(
        ["tokenize", str(src), "-o", str(tmp_path / "cli"), "--tokenizer", "gpt2",
         "--shard-size", "50000", "--val-docs", "5", "-q"]
    )
    assert rc == 0 and "train" in capsys.readouterr().out
    write_shards(read_documents(src), tmp_path / "api", gpt2, shard_size=50_000, val_docs=5)
    assert all_files(tmp_path / "cli") == all_files(tmp_path / "api")


def _awkward_jsonl_lines(paragraphs) -> list[str]:
    """Records the core's JSON-lines reader must read as gristmill.prep does."""
    lines = [json.dumps({"id": d.id, "text": d.text, "meta": {"n": [1, 2.5, None]}}) for d in paragraphs]
    lines[3] = json.dumps({"text": paragraphs[3].text})  # no id: "<file>:<line>"
    lines[5] = json.dumps({"id": 17, "text": "int id"})
    lines[6] = json.dumps({"id": 1e20, "text": "float id"})
    lines[7] = json.dumps({"id": 0.5, "text": "float id", "id2": True})
    lines[8] = json.dumps({"id": None, "text": "null id"})
    lines[9] = '{"text": "lone \\ud800 surrogate and a pair \\ud83d\\ude00", "id": "sur\\udfff"}'
    lines[10] = json.dumps({"text": "caf\u00e9 \u4e2d\u6587 <|endoftext|>", "id": "x"}, ensure_ascii=False)
    lines[11] = json.dumps({"text": "", "id": "empty"})
    lines.insert(12, "")
    lines.insert(13, "   \t")
    return lines


def test_core_jsonl_reader_matches_read_documents(tmp_path, gpt2, paragraphs):
    import zstandard

    lines = _awkward_jsonl_lines(paragraphs[:300])
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_text("\n".join(lines[:150]) + "\n", "utf-8")
    (src / "b.txt").write_text("a text file in between", "utf-8")
    body = ("\n".join(lines[150:]) + "\r\n").encode()  # no trailing "\n" issue, CRLF end
    (src / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    write_shards(src, tmp_path / "core", gpt2, shard_size=2_000, val_fraction=0.1)
    write_shards(read_documents(src), tmp_path / "python", gpt2, shard_size=2_000, val_fraction=0.1)
    assert all_files(tmp_path / "core") == all_files(tmp_path / "python")
    ds = ShardDataset(tmp_path / "core")
    ids = [ds.document_id(i, split) for split in ds.splits for i in range(ds.num_documents(split))]
    assert {"17", "1e+20", "0.5", "a.jsonl:4", "a.jsonl:9", "sur\ufffd"} <= set(ids)


@pytest.mark.parametrize("parts", [1, 5])
def test_core_jsonl_reader_resumes_a_killed_run(tmp_path, gpt2, paragraphs, parts):
    import zstandard

    lines = _awkward_jsonl_lines(paragraphs[:400])
    if parts == 1:
        src = tmp_path / "in.jsonl"
        src.write_text("\n".join(lines) + "\n", "utf-8")
    else:  # prep's layout: a directory of .jsonl.zst files, read as one stream
        src = tmp_path / "in"
        src.mkdir()
        step = -(-len(lines) // parts)
        for i in range(parts):
            body = ("\n".join(lines[i * step:(i + 1) * step]) + "\n").encode()
            (src / f"docs-{i:05d}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    write_shards(src, tmp_path / "whole", gpt2, shard_size=1_500, val_fraction=0.1)
    write_shards(read_documents(src), tmp_path / "python", gpt2, shard_size=1_500, val_fraction=0.1)
    assert all_files(tmp_path / "whole") == all_files(tmp_path / "python")

    def dying():
        for i, d in enumerate(read_documents(src)):
            if i == 250:
                raise KeyboardInterrupt
            yield d

    with pytest.raises(KeyboardInterrupt):
        write_shards(dying(), tmp_path / "killed", gpt2, shard_size=1_500, val_fraction=0.1)
    assert not (tmp_path / "killed" / "manifest.json").exists()
    write_shards(src, tmp_path / "killed", gpt2, shard_size=1_500, val_fraction=0.1)
    assert all_files(tmp_path / "killed") == all_files(tmp_path / "whole")


@pytest.mark.parametrize(
    ("body", "line", "what"),
    [
        (b'{"text": "a"}\n\n{"text": 5}\n', 3, "found int"),
        (b'{"text": "a"}\n{"text": "a"\n', 2, "invalid JSON"),
        (b'{"text": "\xff"}\n', 1, "invalid UTF-8 at byte 10"),
        (b"", 1, "empty file"),
    ],
)
def test_core_jsonl_reader_names_file_and_line(tmp_path, gpt2, body, line, what):
    from gristmill.documents import InputFormatError

    src = tmp_path / "bad.jsonl"
    src.write_bytes(body)
    with pytest.raises(InputFormatError, match=rf"bad\.jsonl: line {line}: .*{what}"):
        write_shards(src, tmp_path / "out", gpt2)
    with pytest.raises(InputFormatError, match=rf"bad\.jsonl: line {line}: .*{what}"):
        write_shards(read_documents(src), tmp_path / "out2", gpt2)


# ---- llm.c compatibility --------------------------------------------------------------------


def llmc_read_tokens(path: Path) -> np.ndarray:
    """A reader written from llm.c's documented format (dev/data/data_common.py, llmc/dataloader.h,
    train_gpt2.py): a header of 256 int32, magic 20240520, version 1, token count; then uint16
    tokens; the file must be exactly 1024 + 2 * count bytes."""
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(256 * 4), dtype=np.int32)
        assert header[0] == 20240520, "magic number mismatch in the data .bin file"
        assert header[1] == 1, "unsupported version"
        ntok = int(header[2])
        tokens = np.frombuffer(f.read(), dtype=np.uint16)
    assert len(tokens) == ntok, "number of tokens read does not match header"
    assert os.path.getsize(path) == 1024 + 2 * ntok
    return tokens


def modded_nanogpt_read_tokens(path: Path):
    """The same, the way modded-nanogpt's loader reads a shard: torch.from_file for the header,
    then readinto a uint16 tensor."""
    import torch

    header = torch.from_file(str(path), False, 256, dtype=torch.int32)
    assert header[0] == 20240520 and header[1] == 1
    num_tokens = int(header[2])
    with open(path, "rb", buffering=0) as f:
        tokens = torch.empty(num_tokens, dtype=torch.uint16)
        f.seek(256 * 4)
        nbytes = f.readinto(tokens.numpy())
        assert nbytes == 2 * num_tokens
    return tokens


def test_llmc_readers_accept_our_uint16_shards(dataset):
    shards = dataset.manifest["splits"]["train"]["shards"]
    ours = np.concatenate([llmc_read_tokens(dataset.path / s["file"]) for s in shards])
    np.testing.assert_array_equal(ours, dataset.tokens("train"))
    theirs = modded_nanogpt_read_tokens(dataset.path / shards[0]["file"])
    np.testing.assert_array_equal(theirs.numpy(), dataset.tokens("train", 0, shards[0]["tokens"]))


def test_llmc_readers_refuse_our_uint32_shards(tmp_path, big_vocab):
    write_shards(["some text"], tmp_path, big_vocab)
    with pytest.raises(AssertionError, match="unsupported version"):
        llmc_read_tokens(tmp_path / "train_000000.bin")


def test_we_read_shards_written_as_llmc_writes_them(tmp_path):
    tokens = np.array([50256, 15496, 11, 995, 0, 65535], dtype=np.uint16)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, len(tokens)]
    path = tmp_path / "fineweb_val_000000.bin"
    with open(path, "wb") as f:  # as llm.c's write_datafile does
        f.write(header.tobytes())
        f.write(tokens.tobytes())
    view = open_shard(path)
    np.testing.assert_array_equal(view, tokens)
    assert not view.flags.writeable and not view.flags.owndata


# ---- the sampler ----------------------------------------------------------------------------

sampler_args = {
    "batch_size": st.integers(1, 6),
    "seq_len": st.integers(1, 48),
    "world_size": st.integers(1, 3),
    "mode": st.sampled_from(["random", "sequential"]),
    "seed": st.integers(0, 2**32),
    "stride_frac": st.floats(0.25, 1.5),
}
hyp = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def make(ds, rank=0, **kw):
    stride_frac = kw.pop("stride_frac", 1.0)
    kw["stride"] = max(1, round(kw["seq_len"] * stride_frac))
    return ds.sampler("train", rank=rank, **kw)


@hyp
@given(**sampler_args)
def test_windows_stay_inside_one_shard(dataset, **kw):
    bounds = shard_bounds(dataset)
    s = make(dataset, **kw)
    stride, row = s._kwargs["stride"], kw["seq_len"] + 1
    for _ in range(8):
        batch = s.next_batch()
        assert batch.shape == (kw["batch_size"], row) and batch.dtype == np.uint16
        for r, start in zip(batch, s.last_starts()):
            shard = np.searchsorted(bounds, start, side="right") - 1
            assert start + row <= bounds[shard + 1], "window crosses a shard end"
            assert (start - bounds[shard]) % stride == 0, "window off the shard's tiling"
            np.testing.assert_array_equal(r, dataset.tokens("train", start, start + row))


@hyp
@given(**sampler_args)
def test_ranks_are_disjoint_and_an_epoch_covers_every_window_once(dataset, **kw):
    kw["seq_len"] = max(kw["seq_len"], 16)  # keeps an epoch short
    ranks = [make(dataset, rank=r, **kw) for r in range(kw["world_size"])]
    per_epoch = ranks[0].batches_per_epoch
    seen: list[int] = []
    for _ in range(per_epoch):
        for s in ranks:
            s.next_batch()
            seen.extend(s.last_starts().tolist())
            assert s.epoch == 0
    assert len(seen) == len(set(seen)), "a window was served twice in one epoch"
    bounds, stride, row = shard_bounds(dataset), ranks[0]._kwargs["stride"], kw["seq_len"] + 1
    shard_windows = [(n - row) // stride + 1 if n >= row else 0 for n in np.diff(bounds)]
    global_batch = kw["batch_size"] * kw["world_size"]
    if kw["mode"] == "random":
        assert sum(shard_windows) - len(seen) < global_batch
    else:  # llm.c: each shard's whole global batches, in order
        expected = [
            int(bounds[i]) + k * stride
            for i, n in enumerate(shard_windows)
            for k in range(n // global_batch * global_batch)
        ]
        assert sorted(seen) == expected
    ranks[0].next_batch()
    assert ranks[0].epoch == 1


@hyp
@given(k=st.integers(0, 30), packing=st.booleans(), **sampler_args)
def test_resume_after_k_batches_equals_the_uninterrupted_stream(dataset, k, packing, **kw):
    kw["packing"] = packing
    kw["seq_len"] = max(kw["seq_len"], 8)
    rank = kw["world_size"] - 1
    a = make(dataset, rank=rank, **dict(kw))
    for _ in range(k):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    b = make(dataset, rank=rank, **dict(kw))
    b.load_state_dict(state)
    for _ in range(6):
        np.testing.assert_array_equal(a.next_batch(), b.next_batch())


def test_packed_rows_hold_whole_documents(dataset):
    eot = dataset.eot_token
    docs = {tuple(dataset.document(i).tolist()) for i in range(dataset.num_documents())}
    for mode in ("sequential", "random"):
        s = dataset.sampler(batch_size=4, seq_len=128, mode=mode, packing=True, seed=3)
        for _ in range(40):
            batch = s.next_batch()
            for row, n, start in zip(batch, s.last_lengths(), s.last_starts()):
                assert (row[n:] == eot).all()
                if n < len(row):
                    assert row[n - 1] == eot, "a padded row ends with a whole document"
                parts = np.split(row[:n], np.flatnonzero(row[:n] == eot) + 1)
                for part in parts[1:-1]:  # every document after the first is whole
                    assert tuple(part[:-1].tolist()) in docs
                if mode == "sequential":
                    np.testing.assert_array_equal(row[:n], dataset.tokens("train", start, start + n))


def test_sampler_errors(dataset):
    with pytest.raises(ValueError, match="rank must be in"):
        dataset.sampler(batch_size=2, seq_len=8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="a global batch needs"):
        dataset.sampler(batch_size=10_000, seq_len=1024)
    with pytest.raises(ValueError, match="no split"):
        dataset.sampler("test", batch_size=2, seq_len=8)
    s = dataset.sampler(batch_size=2, seq_len=8)
    other = dataset.sampler(batch_size=2, seq_len=8, seed=1)
    with pytest.raises(ValueError, match="seed 1"):
        s.load_state_dict(other.state_dict())
    old_version = {**s.state_dict(), "format": "gristmill-sampler-1"}
    with pytest.raises(ValueError, match="another gristmill version"):
        s.load_state_dict(old_version)
    with pytest.raises(ValueError, match="shape"):
        s.next_batch(out=np.zeros((2, 8), np.uint16))


def test_next_batch_fills_out_in_place(dataset):
    a = dataset.sampler(batch_size=3, seq_len=16, seed=5)
    b = dataset.sampler(batch_size=3, seq_len=16, seed=5)
    out = np.zeros((3, 17), np.uint16)
    assert a.next_batch(out=out) is out
    np.testing.assert_array_equal(out, b.next_batch())


# ---- torch ----------------------------------------------------------------------------------


def test_torch_batches_are_shifted_int64_pairs(dataset):
    import torch

    ref = dataset.sampler(batch_size=4, seq_len=32, seed=9)
    it = iter(torch_batches(dataset.sampler(batch_size=4, seq_len=32, seed=9), num_batches=3))
    for x, y in it:
        batch = torch.from_numpy(ref.next_batch().astype(np.int64))
        assert x.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
        assert torch.equal(x, batch[:, :-1]) and torch.equal(y, batch[:, 1:])
    loader = torch.utils.data.DataLoader(
        torch_batches(dataset.sampler(batch_size=4, seq_len=32, seed=9), num_batches=4),
        batch_size=None,
    )
    assert len(list(loader)) == 4


@pytest.mark.cuda
@pytest.mark.skipif("not __import__('torch').cuda.is_available()")
def test_torch_batches_on_cuda(dataset):  # pragma: no cover - needs a GPU
    ref = dataset.sampler(batch_size=4, seq_len=32, seed=2)
    for x, y in torch_batches(dataset.sampler(batch_size=4, seq_len=32, seed=2), device="cuda", num_batches=5):
        batch = ref.next_batch().astype(np.int64)
        assert x.is_cuda and (x.cpu().numpy() == batch[:, :-1]).all()


def test_torch_loader_resumes_exactly_with_workers(dataset):
    import torch

    kw = dict(batch_size=2, seq_len=16, seed=3)
    stream = iter(torch_batches(dataset.sampler(**kw)))
    want = [next(stream) for _ in range(7)]
    loader = dataset.sampler(**kw).torch_loader(num_workers=2)
    batches = iter(loader)
    got = [next(batches) for _ in range(3)]
    state = loader.state_dict()
    del batches  # shuts the workers down
    again = dataset.sampler(**kw).torch_loader(num_workers=2)
    again.load_state_dict(state)
    batches = iter(again)
    got += [next(batches) for _ in range(4)]
    del batches
    assert len(got) == len(want)
    for (x, y), (wx, wy) in zip(got, want):
        assert torch.equal(x, wx) and torch.equal(y, wy)


def test_sampler_state_after_dataloader_workers_is_refused(dataset):
    import torch

    sampler = dataset.sampler(batch_size=2, seq_len=16, seed=3)
    loader = torch.utils.data.DataLoader(torch_batches(sampler), batch_size=None, num_workers=2)
    batches = iter(loader)
    next(batches)
    del batches
    with pytest.raises(RuntimeError, match="DataLoader workers.*torch_loader"):
        sampler.state_dict()


def test_sliding_window_dataset_is_the_books(tmp_path, gpt2, paragraphs):
    import torch

    text = "".join(d.text + "\n" for d in paragraphs[:120])
    write_shards([text], tmp_path, gpt2)  # one document, one shard
    ds = ShardDataset(tmp_path)
    ids = gpt2.encode(text, allowed_special="all") + [gpt2.eot_token]
    max_length, stride = 16, 5
    # Ch. 2's GPTDatasetV1, restated: windows every `stride` tokens, targets shifted by one.
    ref = [(ids[i : i + max_length], ids[i + 1 : i + max_length + 1]) for i in range(0, len(ids) - max_length, stride)]
    windows = sliding_window_dataset(ds, max_length=max_length, stride=stride)
    assert len(windows) == len(ref)
    for i in (0, 1, len(ref) // 2, len(ref) - 1):
        assert windows[i][0].tolist() == ref[i][0] and windows[i][1].tolist() == ref[i][1]
    loader = torch.utils.data.DataLoader(windows, batch_size=8, shuffle=False, drop_last=True)
    s = ds.sampler(batch_size=8, seq_len=max_length, stride=stride, mode="sequential")
    for x, y in loader:
        batch = s.next_batch().astype(np.int64)
        assert (x.numpy() == batch[:, :-1]).all() and (y.numpy() == batch[:, 1:]).all()
    assert s.epoch == 0


# ---- faults ---------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path, gpt2, paragraphs) -> Path:
    write_shards(paragraphs[:200], tmp_path, gpt2, shard_size=2_000)
    return tmp_path


def test_truncated_shard(small):
    path = small / "train_000001.bin"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ShardFormatError) as e:
        ShardDataset(small)
    msg = str(e.value)
    assert "train_000001.bin" in msg and "header says 2000 tokens (int32 at byte 8)" in msg
    assert "should be 5024 bytes, but it is 5021 bytes" in msg
    with pytest.raises(ShardFormatError, match="header"):
        (small / "train_000000.bin").write_bytes(b"\x00" * 10)
        open_shard(small / "train_000000.bin")


def test_flipped_byte_fails_the_checksum(small):
    path = small / "train_000002.bin"
    data = bytearray(path.read_bytes())
    data[3000] ^= 0x10
    path.write_bytes(bytes(data))
    ds = ShardDataset(small)  # the header is intact: opening succeeds
    with pytest.raises(ShardFormatError, match=r"train_000002.bin: checksum of bytes 1024..5024 is xxh3-64:\w+, expected"):
        ds.verify()


def test_wrong_magic_and_version(small):
    path = small / "train_000000.bin"
    data = bytearray(path.read_bytes())
    data[0:4] = np.int32(20240801).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match="train_000000.bin: magic at byte 0 is 20240801, expected 20240520"):
        ShardDataset(small)
    data[0:4] = np.int32(20240520).tobytes()
    data[4:8] = np.int32(7).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match=r"version at byte 4 is 7, expected 1 \(uint16\) or 2"):
        ShardDataset(small)


def test_manifest_that_disagrees_with_its_files(small):
    m = json.loads((small / "manifest.json").read_text())
    m["splits"]["train"]["shards"][0]["tokens"] += 1
    m["splits"]["train"]["tokens"] += 1
    (small / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardFormatError, match="lists 2001 tokens for .*train_000000.bin, the file holds 2000"):
        ShardDataset(small)


def test_tokenizer_mismatch(small, big_vocab):
    ds = ShardDataset(small)
    with pytest.raises(ShardFormatError, match="tokens were made by tokenizer 'gpt2'"):
        ds.check_tokenizer(big_vocab)


def test_rewriting_with_other_settings_is_refused(small, gpt2, paragraphs):
    before = all_files(small)
    assert write_shards(paragraphs[:200], small, gpt2, shard_size=2_000) == small / "manifest.json"
    assert all_files(small) == before
    with pytest.raises(ValueError, match="another shard_size"):
        write_shards(paragraphs[:200], small, gpt2, shard_size=3_000)


# ---- output folders: nothing written over what tokenize did not write --------------------------


def _raw_folder(tmp_path: Path, paragraphs) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text("".join(json.dumps({"text": d.text}) + "\n" for d in paragraphs[:50]))
    return raw


def test_tokenize_into_its_input_is_refused_before_any_work(tmp_path, gpt2, paragraphs, capsys):
    # `tokenize raw -o raw` wrote .bin/.idx/manifest.json into the input folder.
    raw = _raw_folder(tmp_path, paragraphs)
    before = all_files(raw)
    assert cli_main(["tokenize", str(raw), "-o", str(raw), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gristmill tokenize: ") and err.count("\n") == 1, err
    assert f"{raw}/: is the input" in err, err
    assert cli_main(["tokenize", str(raw), "-o", str(raw / "shards"), "-q"]) == 1
    assert "is inside the input" in capsys.readouterr().err
    with pytest.raises(OutputFolderError, match="is the input"):
        write_shards(raw, raw, gpt2)
    with pytest.raises(OutputFolderError, match="holds the input"):
        write_shards([raw / "a.jsonl"], raw, gpt2)
    assert all_files(raw) == before  # not even a marker or a progress file


def test_ray_tokenize_checks_its_output_folder_before_starting_ray(tmp_path, gpt2, paragraphs, monkeypatch):
    pytest.importorskip("ray")
    from gristmill import ray_engine

    monkeypatch.setattr(ray_engine, "init", lambda *a, **k: pytest.fail("Ray was started"))
    raw = _raw_folder(tmp_path, paragraphs)
    before = all_files(raw)
    with pytest.raises(OutputFolderError, match="is the input"):
        ray_engine.tokenize([raw], raw, gpt2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=r"holds files this run did not write \(notes.txt\)"):
        ray_engine.tokenize([raw], tmp_path / "out", gpt2)
    assert all_files(raw) == before and os.listdir(tmp_path / "out") == ["notes.txt"]


def test_tokenize_refuses_a_folder_holding_other_files(tmp_path, gpt2, paragraphs):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "manifest.json").write_text('{"mine": true}')
    with pytest.raises(OutputFolderError, match=r"holds files this run did not write \(manifest.json, notes.txt\)"):
        write_shards(paragraphs[:50], out, gpt2)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "notes.txt"]
    # Shards with neither manifest nor progress file: the core's refusal, now in one line first.
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "train_000000.bin").write_bytes(b"not mine")
    with pytest.raises(OutputFolderError, match=r"^\S*stray/: holds files this run did not write \(train_000000.bin\)"):
        write_shards(paragraphs[:50], stray, gpt2)
    assert (stray / "train_000000.bin").read_bytes() == b"not mine"


def test_tokenize_takes_back_a_dataset_written_before_markers(tmp_path, gpt2, paragraphs):
    out = tmp_path / "old"
    manifest = write_shards(paragraphs[:200], out, gpt2, shard_size=2_000)
    before = all_files(out)
    for marker in out.rglob(".gristmill-output.json"):
        marker.unlink()  # as gristmill wrote it before markers existed
    assert write_shards(paragraphs[:200], out, gpt2, shard_size=2_000) == manifest
    assert all_files(out) == {k: v for k, v in before.items() if k != "tokenizer/.gristmill-output.json"}


def _edit_manifest(d: Path, edit) -> None:
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))


def _put_token(path: Path, at: int, token: int) -> None:
    """Writes uint16 ``token`` at token ``at`` of a shard, header untouched."""
    data = bytearray(path.read_bytes())
    data[1024 + 2 * at : 1026 + 2 * at] = np.uint16(token).tobytes()
    path.write_bytes(bytes(data))


def test_wrong_checksum_in_the_manifest_is_blamed_on_the_manifest(small):
    def edit(m):
        m["splits"]["train"]["shards"][1]["checksum"] = "xxh3-64:0123456789abcdef"

    _edit_manifest(small, edit)
    with pytest.raises(ShardFormatError) as e:
        ShardDataset(small)
    msg = str(e.value)
    assert msg.startswith(f"{small / 'manifest.json'}: lists checksum xxh3-64:0123456789abcdef "
                          f"for {small / 'train_000001.bin'}, but its tokens hash to"), msg


def test_wrong_checksum_in_the_index_is_blamed_on_the_index(small):
    path = small / "train_000001.idx"
    data = bytearray(path.read_bytes())
    data[32] ^= 1  # the index's copy of the shard's checksum
    path.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match=r"train_000001.idx: checksum at byte 32 is xxh3-64:\w+, "
                                               r"expected xxh3-64:\w+ \(the tokens of .*train_000001.bin"):
        ShardDataset(small)


@pytest.mark.parametrize("entry", ["file", "index"])
@pytest.mark.parametrize("where", ["../outside.bin", "/abs/train_000000.bin", "sub/../../x.bin"])
def test_manifest_entries_outside_the_dataset_are_refused(small, entry, where):
    def edit(m):
        m["splits"]["train"]["shards"][0][entry] = where

    _edit_manifest(small, edit)
    with pytest.raises(ShardFormatError) as e:
        ShardDataset(small)
    assert str(e.value) == (
        f"{small / 'manifest.json'}: split \"train\" shard 0: {entry} \"{where}\" is outside the "
        "dataset folder; entries must be paths relative to manifest.json, without '..'"
    )


def test_the_manifest_records_each_shards_largest_token(dataset):
    for split in dataset.splits:
        bounds = shard_bounds(dataset, split)
        for i, entry in enumerate(dataset.manifest["splits"][split]["shards"]):
            assert entry["max_token"] == int(dataset.tokens(split, bounds[i], bounds[i + 1]).max())


def _out_of_vocab(small: Path, *, record: bool) -> str:
    """Token 1234 of train_000001.bin becomes 50300; the manifest records it if ``record``,
    else (an older manifest) records no largest token at all. Returns the shard's path."""
    _put_token(small / "train_000001.bin", 1234, 50300)

    def edit(m):
        for s in m["splits"]["train"]["shards"]:
            del s["max_token"]
        if record:
            m["splits"]["train"]["shards"][1]["max_token"] = 50300

    _edit_manifest(small, edit)
    return str(small / "train_000001.bin")


@pytest.mark.parametrize("record", [True, False])
def test_tokens_outside_the_model_vocab_are_named(small, record):
    ShardDataset(small).check(vocab_size=50257)  # gpt2's own: fine
    path = _out_of_vocab(small, record=record)
    ds = ShardDataset(small)
    largest = "largest recorded 50300" if record else "largest in the shard 50300"
    with pytest.raises(ShardFormatError) as e:
        ds.check(vocab_size=50257)
    assert str(e.value) == (
        f"{path}: token id 50300 at token 1234 ({largest}) is outside the model's vocabulary "
        "of 50257; retokenize with the model's tokenizer or use a model with a larger vocab"
    )
    ds.check(vocab_size=50301)


def test_verify_catches_a_manifest_that_misstates_the_largest_token(small):
    def edit(m):
        m["splits"]["train"]["shards"][0]["max_token"] = 7

    _edit_manifest(small, edit)
    ds = ShardDataset(small)
    ds.check(vocab_size=50257)  # what is recorded is trusted without verify
    with pytest.raises(ShardFormatError, match=r"manifest.json: lists 7 as the largest token of "
                                               r".*train_000000.bin, the file's largest is \d+"):
        ds.check(vocab_size=50257, verify=True)


TRAIN_TINY = {"model": "tiny", "n_layer": 1, "n_embd": 32, "block_size": 32, "batch_size": 2,
              "max_steps": 1, "eval_interval": 1, "eval_batches": 1, "progress": False,
              "plot": False, "device": "cpu"}


def test_train_checks_the_data_before_step_0(small, tmp_path_factory, capsys):
    pytest.importorskip("torch")
    from gristmill.train import train

    out = tmp_path_factory.mktemp("run")
    path = _out_of_vocab(small, record=True)
    with pytest.raises(ShardFormatError, match=f"^{path}: token id 50300 at token 1234"):
        train(data=str(small), out_dir=str(out), **TRAIN_TINY)
    assert not list(out.glob("ckpt-*"))
    # A damaged byte (tokens in range) is found by --verify, before any step.
    _put_token(small / "train_000001.bin", 1234, 11)
    flags = [f"--{k}={v}" for k, v in TRAIN_TINY.items()]
    assert cli_main(["train", f"--data={small}", f"--out_dir={out}", "--verify", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gristmill train: ") and err.count("\n") == 1, err
    assert "train_000001.bin: checksum of bytes 1024..5024" in err, err
    assert not list(out.glob("ckpt-*"))


KILLED_WRITER = textwrap.dedent(
    """
    import itertools, os, signal, sys, time
    import gristmill.shards as shards
    from gristmill import Tokenizer
    from gristmill.documents import read_documents

    src, out, kill_at, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    shards._BATCH_DOCS = 50

    def docs():
        for i, d in enumerate(itertools.islice(read_documents(src, txt_mode="paragraphs"), 4000)):
            if i == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(delay)
            yield d

    shards.write_shards(docs(), out, Tokenizer.from_name("gpt2"), shard_size=3_000, val_fraction=0.1)
    """
)


@pytest.mark.parametrize("how", ["self-kill at doc 1234", "killed from outside"])
def test_killed_writer_resumes_to_identical_bytes(tmp_path, gpt2, shared_data, how):
    src = shared_data / "tinyshakespeare.txt"
    docs = list(read_documents(src, txt_mode="paragraphs"))[:4000]
    whole = tmp_path / "whole"
    write_shards(docs, whole, gpt2, shard_size=3_000, val_fraction=0.1)

    out = tmp_path / "killed"
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    if how.startswith("self"):
        proc = subprocess.run([sys.executable, str(script), str(src), str(out), "1234", "0"], check=False)
        assert proc.returncode == -signal.SIGKILL
    else:
        proc = subprocess.Popen([sys.executable, str(script), str(src), str(out), "-1", "0.0005"])
        deadline = time.monotonic() + 120
        while not (out / "train_000005.bin").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the writer made no progress"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    assert (out / "train_000002.bin").exists()
    write_shards(docs, out, gpt2, shard_size=3_000, val_fraction=0.1)
    assert all_files(out) == all_files(whole)
