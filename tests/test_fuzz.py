"""Fuzzing every parser a user's file reaches (issue 18), through the public API.

JSON lines (plain, .gz, .zst), tokenizer files (tiktoken, tokenizer.json, GPT-2's
encoder.json + vocab.bpe, a saved tokenizer folder), shard datasets (shards, indexes,
manifest), pipeline and training configs, and checkpoints are fed arbitrary bytes and valid
files with a few bytes changed. The property, everywhere: the call works, or it raises one of
the project's errors (all ValueError or OSError subclasses) with a one-line message naming the
file. Never a Rust panic (pyo3's PanicException), another exception type, or a hang (a
watchdog ends the run with every thread's traceback). Where damage can be detected (a
compressed file's checksum, a shard's, a checkpoint's), reading damaged data must fail rather
than return other data.

The hypothesis profile "fuzz" (tests/conftest.py) sets the examples: a few dozen per test,
derandomized, by default (CI); ``GRISTMILL_FUZZ=long`` (or a number) for a long run, which
``benches/fuzz.sh`` does together with the Rust fuzz tests.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gzip
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import zstandard
from gpt2_bytes import bytes_to_unicode
from gristmill import Tokenizer, read_documents
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

FUZZ = hsettings.get_profile("fuzz")

# Seconds one call may take before the watchdog calls it a hang (generous: CI shares 2 cores).
HANG_SECONDS = 120


# ---- the property ---------------------------------------------------------------------------


@contextlib.contextmanager
def watchdog(seconds: int = HANG_SECONDS):
    """Ends the process with every thread's traceback if the block does not finish: a call
    stuck in the Rust core cannot be interrupted any other way."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@contextlib.contextmanager
def memory_cap(extra_bytes: int):
    """Caps the heap at its size now plus ``extra_bytes`` (Linux), so a damaged size field
    that asks for gigabytes fails fast here instead of swapping a shared machine."""
    try:
        import resource

        status = Path("/proc/self/status").read_text()
        data_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmData:"))
        old = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (data_kb * 1024 + extra_bytes, old[1]))
    except (ImportError, OSError, StopIteration, ValueError):
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, old)


def read_or_refuse(fn, *names):
    """``fn()``'s result, or None when it raised ValueError or OSError (the bases of every
    project error) with a one-line message naming one of ``names`` (files or folders). Any
    other exception, a panic included, propagates and fails the test."""
    with watchdog():
        try:
            return fn()
        except (ValueError, OSError) as e:
            message = str(e)
            assert any(str(n) in message for n in names), (
                f"{type(e).__name__} names none of {[str(n) for n in names]}: {message}")
            assert len(message.strip().splitlines()) == 1, f"not one line: {message!r}"
            return None


# ---- damage ---------------------------------------------------------------------------------

_INTERESTING = [b"4294967296", b"99999999999999999999", b"-1", b"1e999", b"null", b"[]", b"{}",
                b'""', b"\\ud800", b"\xff\xfe", b"\n", b"=", b"\x00", b'"', b"[[[[", b"nan"]

_edit = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("set"), st.floats(0, 1), st.sampled_from(b'{}[]",:= \n\\0123456789-eu')),
    st.tuples(st.just("insert"), st.floats(0, 1), st.one_of(st.sampled_from(_INTERESTING), st.binary(min_size=1, max_size=8))),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(0)),
)
edits = st.lists(_edit, min_size=1, max_size=4)


def damage(data: bytes, changes: list, start: int = 0, end: int | None = None) -> bytes:
    """``data`` with ``changes`` applied at positions within ``data[start:end]``."""
    out = bytearray(data)
    for kind, where, arg in changes:
        stop = len(out) if end is None else min(end, len(out))
        span = max(stop - start, 0)
        at = start + min(int(where * span), max(span - 1, 0))
        if kind == "insert":
            out[at:at] = arg
        elif not span:
            continue
        elif kind == "flip":
            out[at] ^= arg
        elif kind == "set":
            out[at] = arg
        elif kind == "delete":
            del out[at:at + arg]
        else:
            del out[at:]
    return bytes(out)


# ---- JSON lines -----------------------------------------------------------------------------

def _lines(integers, extremes: bool):
    """Lines of a JSON-lines file: records with ids and fields of every JSON type, junk, and
    (``extremes``) nesting, integers past what Python's json takes, and Infinity."""
    value = st.recursive(
        st.none() | st.booleans() | integers | st.floats(allow_nan=False, allow_infinity=extremes)
        | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    )
    record = st.fixed_dictionaries({"text": st.text(max_size=40)}, optional={"id": value, "x": value})
    lines = [
        record.map(lambda r: json.dumps(r, ensure_ascii=False).encode()),
        record.map(lambda r: json.dumps(r).encode()),
        st.binary(max_size=40),
        st.sampled_from([b"", b"  ", b"[]", b'"s"', b"{", b'{"text": "lone \\udc00"}', b'{"text": NaN}']),
    ]
    if extremes:
        lines += [
            st.integers(1, 3000).map(lambda d: b'{"text": "a", "x": ' + b"[" * d + b"]" * d + b"}"),
            st.integers(1, 6000).map(lambda n: b'{"text": "a", "id": ' + b"7" * n + b"}"),
        ]
    return st.one_of(*lines)


_line = _lines(st.integers(), extremes=True)


def _compress(body: bytes, suffix: str) -> bytes:
    if suffix == ".gz":
        return gzip.compress(body, mtime=0)
    if suffix == ".zst":
        return zstandard.ZstdCompressor(write_checksum=True).compress(body)
    return body


def _read(path: Path, skip_bad: bool = False):
    return [(d.id, d.text) for d in read_documents([path], skip_bad=skip_bad, bad_records=[])]


@FUZZ
@given(lines=st.lists(_line, max_size=8), suffix=st.sampled_from(["", ".gz", ".zst"]),
       raw=st.booleans(), skip_bad=st.booleans())
def test_json_lines_of_any_bytes(lines, suffix, raw, skip_bad):
    body = b"\n".join(lines)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"docs.jsonl{suffix}"
        # raw: the bytes as they are, whatever the name says (not gzip or zstd at all)
        path.write_bytes(body if raw else _compress(body, suffix))
        read_or_refuse(lambda: _read(path, skip_bad), path)


@FUZZ
@given(n=st.integers(1, 30), suffix=st.sampled_from(["", ".gz", ".zst"]), changes=edits)
def test_damaged_json_lines(n, suffix, changes):
    body = "".join(json.dumps({"id": i, "text": f"document {i} " + "word " * i}) + "\n" for i in range(n))
    whole = [(str(i), f"document {i} " + "word " * i) for i in range(n)]
    data = _compress(body.encode(), suffix)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"docs.jsonl{suffix}"
        path.write_bytes(damage(data, changes))
        got = read_or_refuse(lambda: _read(path), path)
        if suffix and got is not None:
            # A compressed file carries a checksum: damage is an error, never other documents.
            assert got == whole


@FUZZ
@given(n=st.integers(1, 30), suffix=st.sampled_from([".gz", ".zst"]), cut=st.floats(0, 1, exclude_max=True))
def test_cut_compressed_json_lines_are_refused(n, suffix, cut):
    body = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(n)).encode()
    data = _compress(body, suffix)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"docs.jsonl{suffix}"
        path.write_bytes(data[: int(cut * len(data))])
        # Never a short read, and never skipped as a bad record (issue 18, item 3); an empty
        # file is the one exception: --skip-bad skips it as the empty file it is.
        assert read_or_refuse(lambda: _read(path), path) is None
        bad: list = []
        read = lambda: list(read_documents([path], skip_bad=True, bad_records=bad))  # noqa: E731
        if read_or_refuse(read, path) is not None:
            assert cut * len(data) < 1 and len(bad) == 1 and "empty" in bad[0], bad


def _tokenized(path: Path, out: Path, tok: Tokenizer):
    """The (id, text) of every document of ``path`` as ``gristmill tokenize`` reads it: by the
    core's JSON-lines reader, into shards, back through the tokenizer."""
    from gristmill import ShardDataset, write_shards

    ds = ShardDataset(write_shards([path], out, tok, shard_size=256, val_fraction=0.0))
    n = ds.num_documents("train") if "train" in ds.splits else 0
    return [(ds.document_id(i), tok.decode(ds.document(i).tolist())) for i in range(n)]


@FUZZ
@given(lines=st.lists(_lines(st.integers(-(2**63), 2**64 - 1), extremes=False), max_size=6), zst=st.booleans())
def test_tokenize_reads_json_lines_as_prep_does(small_tokenizer, lines, zst):
    # The same file, two readers: prep's (Python) and tokenize's (the core). Both read it, with
    # the same documents, or both refuse it, naming it. Not compared: lines nested over ~990
    # deep, which Python's json refuses (prep says so) and the core reads; and the two known
    # differences below.
    body = b"\n".join(lines)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("docs.jsonl.zst" if zst else "docs.jsonl")
        path.write_bytes(_compress(body, ".zst") if zst else body)
        by_prep = read_or_refuse(lambda: _read(path), path)
        by_core = read_or_refuse(lambda: _tokenized(path, Path(d) / "ds", small_tokenizer), path)
        if by_prep is not None and by_core is not None:
            # The core names a list or object id by its type (jsonl.rs), Python by str().
            by_core = [(p[0] if c[0] in ("[list]", "{dict}") else c[0], c[1])
                       for p, c in zip(by_prep, by_core)] + by_core[len(by_prep):]
        assert by_prep == by_core, f"prep read {by_prep!r}, tokenize {by_core!r}"


def test_integer_ids_beyond_64_bits_read_alike(small_tokenizer, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "a", "id": 7777777777777777777777777777}\n')
    assert _tokenized(path, tmp_path / "ds", small_tokenizer) == _read(path) == [("7777777777777777777777777777", "a")]


def test_prep_output_with_nan_is_read_by_tokenize(small_tokenizer, tmp_path):
    """Python's json reads NaN and Infinity; prep's writer writes them as null (strict JSON),
    so the core's reader, and tokenize, read prep's output."""
    from gristmill.documents import Document, shard_bytes

    path = tmp_path / "docs-00000.jsonl"
    doc = Document("a", "hello", {"score": float("nan"), "more": [float("inf"), 1.5]})
    path.write_bytes(shard_bytes([doc], "jsonl"))
    assert _read(path) == [("a", "hello")]
    assert next(read_documents(path)).metadata == {"score": None, "more": [None, 1.5]}
    assert _tokenized(path, tmp_path / "ds", small_tokenizer) == [("a", "hello")]


# ---- tokenizer files ------------------------------------------------------------------------


class Fixture(dict):
    """A fixture's files or folders, shown by name in a failing example, not byte by byte."""

    def __repr__(self) -> str:
        return f"<{', '.join(self)}>"


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory) -> dict[str, bytes]:
    """A small vocabulary (256 bytes, 9 merges, <|endoftext|>) in every format it is read from."""
    ranks = {bytes([b]): b for b in range(256)}
    for i, t in enumerate(["he", "ll", "hell", "lo", " w", "or", " wor", "ld", " world"]):
        ranks[t.encode()] = 256 + i
    tok = Tokenizer.from_ranks(ranks, special_tokens={"<|endoftext|>": 265}, name="small")
    d = tok.save(tmp_path_factory.mktemp("tok"))
    spell = bytes_to_unicode()
    word = lambda b: "".join(spell[x] for x in b)  # noqa: E731
    encoder = {word(b): r for b, r in ranks.items()} | {"<|endoftext|>": 265}
    merges = "#version: 0.2\n" + "".join(f"{word(a)} {word(b)}\n" for a, b in tok.merges())
    files = {p.name: p.read_bytes() for p in d.iterdir()}
    files["encoder.json"] = json.dumps(encoder).encode()
    files["vocab.bpe"] = merges.encode()
    return Fixture(files)


@pytest.fixture(scope="module")
def small_tokenizer(tokenizer_files, tmp_path_factory) -> Tokenizer:
    d = tmp_path_factory.mktemp("small")
    for name in ("tokenizer.tiktoken", "tokenizer.json", "tokenizer_config.json"):
        (d / name).write_bytes(tokenizer_files[name])
    return Tokenizer.load(d)


def _use(tok: Tokenizer) -> None:
    text = "hello world <|endoftext|>"
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


def test_a_huge_rank_is_refused_not_allocated(tmp_path):
    # A rank of 4000000000 once made the core ask for 64 GB and abort the interpreter.
    import base64

    from gristmill import TokenizerError

    path = tmp_path / "x.tiktoken"
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)]
    path.write_text("".join(lines) + "IUE= 4000000000\n")
    with watchdog(), pytest.raises(TokenizerError, match=f"{path}: .*4000000000"):
        Tokenizer.load(path)


_TOKENIZER_FILES = ["tokenizer.tiktoken", "tokenizer.json", "encoder.json", "vocab.bpe", "tokenizer_config.json"]


@pytest.mark.parametrize("change", [(0, b"\xfb"), (None, b"4294967296")], ids=["not-utf8", "huge-id"])
def test_saved_tokenizer_config(tokenizer_files, tmp_path, change):
    for name in ("tokenizer.tiktoken", "tokenizer_config.json"):
        (tmp_path / name).write_bytes(tokenizer_files[name])
    at, data = change
    config = tokenizer_files["tokenizer_config.json"]
    config = data + config[1:] if at == 0 else config.replace(b"265", data)
    (tmp_path / "tokenizer_config.json").write_bytes(config)
    read_or_refuse(lambda: Tokenizer.load(tmp_path), tmp_path / "tokenizer_config.json")


@FUZZ
@given(which=st.sampled_from(_TOKENIZER_FILES), changes=edits, arbitrary=st.none() | st.binary(max_size=300))
def test_tokenizer_files(tokenizer_files, which, changes, arbitrary):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for name, data in tokenizer_files.items():
            (d / name).write_bytes(data)
        target = d / which
        target.write_bytes(arbitrary if arbitrary is not None else damage(tokenizer_files[which], changes))
        names = [target]
        if which in ("encoder.json", "vocab.bpe"):
            # Either file may be at fault: a changed id leaves a merge without one.
            names = [d / "encoder.json", d / "vocab.bpe"]
            load = lambda: Tokenizer.from_gpt2_files(*names)  # noqa: E731
        elif which == "tokenizer_config.json":
            load = lambda: Tokenizer.load(d)  # noqa: E731
        else:
            load = lambda: Tokenizer.load(target)  # noqa: E731
        tok = read_or_refuse(load, *names)
        if tok is not None:
            with watchdog():
                _use(tok) if which != "tokenizer.tiktoken" else tok.decode(tok.encode("hello world"))


# ---- shard datasets -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, small_tokenizer) -> Path:
    from gristmill import write_shards

    docs = [f"hello world {i} " * (i % 5 + 1) for i in range(40)]
    out = tmp_path_factory.mktemp("ds") / "ds"
    write_shards(docs, out, small_tokenizer, shard_size=64, val_docs=4)
    return out


def _read_dataset(path: Path):
    from gristmill import ShardDataset

    ds = ShardDataset(path)
    for split in ds.splits:
        ds.tokens(split)
        for i in range(ds.num_documents(split)):
            ds.document(i, split)
            ds.document_id(i, split)
    ds.verify()
    ds.check(ds.n_vocab)
    return ds


@FUZZ
@given(which=st.floats(0, 1, exclude_max=True), changes=edits)
def test_damaged_datasets(dataset, which, changes):
    files = sorted(p.name for p in dataset.iterdir() if p.is_file())
    name = files[int(which * len(files))]
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / "ds"
        shutil.copytree(dataset, copy)
        before = (copy / name).read_bytes()
        after = damage(before, changes)
        (copy / name).write_bytes(after)
        got = read_or_refuse(lambda: _read_dataset(copy), copy)
        if name.endswith((".bin", ".idx")) and after != before:
            assert got is None, f"{name} damaged, yet the dataset opened and verified"
        if name.endswith(".bin"):  # alone, as llm.c's shards are read
            from gristmill.shards import open_shard

            read_or_refuse(lambda: open_shard(copy / name).sum(), copy / name)


_POSITION = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1))


@FUZZ
@given(mode=st.sampled_from(["random", "sequential"]), packing=st.booleans(),
       position=st.fixed_dictionaries({k: _POSITION for k in ("epoch", "shard", "cursor", "offset", "batches")}),
       changes=st.none() | edits)
def test_damaged_sampler_states(dataset, mode, packing, position, changes):
    # A checkpoint's state.json hands the core its samplers' positions on resume: any position,
    # or a damaged state, loads (and draws batches) or is a ValueError, never a panic.
    from gristmill import ShardDataset

    ds = ShardDataset(dataset)
    make = lambda: ds.sampler(batch_size=2, seq_len=8, mode=mode, packing=packing)  # noqa: E731
    state = make().state_dict()
    if changes is None:
        state = {**state, **position}
    else:
        try:
            state = json.loads(damage(json.dumps(state).encode(), changes))
        except ValueError:
            return  # not JSON: the checkpoint's reader refuses it, naming state.json
    sampler = make()
    read_or_refuse(lambda: sampler.load_state_dict(state), "")  # the trainer names the file
    with watchdog():
        for _ in range(3):
            sampler.next_batch()


# ---- configs --------------------------------------------------------------------------------

_PIPELINE = b"""\
out_dir = "out"
inputs = ["docs.jsonl"]
engine = "local"

[prep]
preset = "c4"

[tokenizer]
vocab_size = 512

[tokenize]
shard_size = 4096

[train]
model = "tiny"
max_steps = 10
"""

_toml_value = st.one_of(
    st.integers(-5, 10**20).map(str), st.booleans().map(lambda b: str(b).lower()),
    st.text(max_size=8).map(json.dumps), st.just("[1, 2]"), st.just('["a", 3]'),
    st.just("{x = 1}"), st.just("1979-05-27"), st.just("nan"), st.just("[]"),
)
_toml_doc = st.lists(
    st.tuples(st.sampled_from(["out_dir", "inputs", "engine", "prep", "train", "tokenize", "max_steps",
                               "n_layer", "lr", "bias", "model", "dropout", "x"]), _toml_value),
    max_size=5, unique_by=lambda kv: kv[0],
).map(lambda kvs: "".join(f"{k} = {v}\n" for k, v in kvs).encode())


@FUZZ
@given(doc=st.one_of(_toml_doc, st.just(_PIPELINE)), changes=st.none() | edits)
def test_pipeline_configs(doc, changes):
    from gristmill.pipeline import load_config

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pipeline.toml"
        path.write_bytes(doc if changes is None else damage(doc, changes))
        cfg = read_or_refuse(lambda: load_config(path), path)
        if cfg is not None:
            # What the stages rely on, when the file sets it.
            assert all(isinstance(p, str) for p in cfg.get("inputs", []))
            assert isinstance(cfg.get("out_dir", ""), str)


_TRAIN = {
    ".toml": b'data = "ds"\nmodel = "tiny"\n[train]\nmax_steps = 10\nlr = 3e-4\nbias = false\n',
    ".json": b'{"data": "ds", "model": "tiny", "max_steps": 10, "lr": 0.0003, "bias": false}',
    ".yaml": b"data: ds\nmodel: tiny\nmax_steps: 10\nlr: 3.0e-4\nbias: false\n",
}


@FUZZ
@given(suffix=st.sampled_from(sorted(_TRAIN)), changes=edits, toml=st.none() | _toml_doc)
def test_training_configs(suffix, changes, toml):
    from gristmill.config import resolve_config

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"train{suffix}"
        if toml is not None:
            path = path.with_suffix(".toml")
            path.write_bytes(toml)
        else:
            path.write_bytes(damage(_TRAIN[suffix], changes))
        read_or_refuse(lambda: resolve_config(path), path)


# ---- checkpoints ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A training out_dir with one checkpoint, a bare weights file and a HF folder, of a tiny
    model."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from gristmill import checkpoint
    from gristmill.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=96, n_layer=1, block_size=32))
    root = tmp_path_factory.mktemp("ckpt")
    optim = torch.optim.AdamW(model.parameters())
    state = {"step": 3, "tokens_seen": 96, "best_val_loss": 4.5, "world_size": 1, "samplers": {},
             "rng": {}}
    ckpt = checkpoint.save_checkpoint(root / "run", 3, model, model.state_dict(), optim.state_dict(),
                                      state, {"step": 3, "val_loss": 4.5, "train": {"lr": 1e-3}})
    checkpoint.update_best(root / "run", ckpt, 3, 4.5)
    (root / "bare").mkdir()
    checkpoint.save_weights(model, root / "bare" / "model.safetensors")
    checkpoint.save_hf(model, root / "hf")
    return Fixture(run=root / "run", bare=root / "bare", hf=root / "hf")


def _safetensors_header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little") if len(data) >= 8 else len(data)


@FUZZ
@given(kind=st.sampled_from(["run", "bare", "hf"]), which=st.floats(0, 1, exclude_max=True),
       header_only=st.booleans(), changes=edits)
def test_damaged_checkpoints(checkpoints, kind, which, header_only, changes):
    from gristmill import checkpoint

    src = checkpoints[kind]
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / kind
        shutil.copytree(src, copy)
        files = sorted(p for p in copy.rglob("*") if p.is_file())
        target = files[int(which * len(files))]
        before = target.read_bytes()
        # Most of a weights file is tensor data: damage its JSON header half the time.
        end = _safetensors_header_end(before) if header_only and target.suffix == ".safetensors" else None
        after = damage(before, changes, 0, end)
        target.write_bytes(after)
        with memory_cap(3 << 30):
            model = read_or_refuse(lambda: checkpoint.load_model(copy), copy)
            if kind == "run":  # what resuming reads
                ckpt = copy / "ckpt-0000003"
                read_or_refuse(lambda: checkpoint.read_run_state(ckpt), copy)
                read_or_refuse(lambda: checkpoint.load_optimizer_state(ckpt), copy)
        checked = kind == "run" and target.name in ("model.safetensors",)
        if checked and after != before:
            assert model is None, f"{target.name} damaged, yet the checkpoint loaded"


def test_checkpoint_config_values(checkpoints, tmp_path):
    """Every field of a model's config (in the weights' metadata, or a HF config.json) set to
    a value no run writes: loading refuses it, naming the file, before building a model of
    that size (the heap is capped at 512 MB beyond its size, so a model built first fails)."""
    from gristmill import checkpoint
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    failures = []
    for kind in ("bare", "hf"):
        copy = tmp_path / kind
        shutil.copytree(checkpoints[kind], copy)
        weights = copy / "model.safetensors"
        if kind == "bare":
            with safe_open(str(weights), "pt") as f:
                meta = f.metadata()
            config, tensors = json.loads(meta["gristmill_config"]), load_file(str(weights))
        else:
            config = json.loads((copy / "config.json").read_text())
        for key in sorted(config):
            for value in (0, -1, 1.5, 10**9, "x", None, True, []):
                changed = {**config, key: value}
                if kind == "bare":
                    save_file(tensors, str(weights), metadata={**meta, "gristmill_config": json.dumps(changed)})
                else:
                    (copy / "config.json").write_text(json.dumps(changed))
                with memory_cap(512 << 20):
                    try:
                        read_or_refuse(lambda: checkpoint.load_model(copy), copy)  # noqa: B023
                    except BaseException as e:  # noqa: BLE001 (all collected, one report)
                        failures.append(f"{kind} {key}={value!r}: {type(e).__name__}: "
                                        f"{str(e).splitlines()[0][:100]}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)


def test_the_watchdog_and_the_property_work(tmp_path):
    assert read_or_refuse(lambda: 7, "x") == 7
    assert read_or_refuse(lambda: (_ for _ in ()).throw(ValueError(f"{tmp_path}: bad")), tmp_path) is None
    with pytest.raises(AssertionError, match="names none"):
        read_or_refuse(lambda: (_ for _ in ()).throw(ValueError("bad")), tmp_path)
    with pytest.raises(AssertionError, match="not one line"):
        read_or_refuse(lambda: (_ for _ in ()).throw(OSError(f"{tmp_path}: a\nb")), tmp_path)
    with pytest.raises(KeyError):  # any other type fails the test
        read_or_refuse(lambda: {}["x"], tmp_path)
    assert damage(b"abcdef", [("delete", 0.5, 2), ("insert", 0.0, b"X"), ("truncate", 0.99, 0)]) == b"Xabc"
