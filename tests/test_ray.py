"""The Ray engine gives the local engine's result: same documents kept and removed, same
dedup clusters (``duplicate_of``), same report counts; also when a task fails once."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
from gristmill.dedup import DedupConfig
from gristmill.prep import PrepConfig, read_documents
from gristmill.prep import prep as local_prep

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'gristmill[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'gristmill[ray]')")

from gristmill import ray_engine  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"GRISTMILL_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data) -> Path:
    """Three files of real English with exact copies (case and spacing changed), near copies
    (a word changed), a short document and a bad record, spread across the files."""
    docs = []
    for d in read_documents(shared_data / "bench-en.jsonl.zst"):
        docs.append({"id": d.id, "text": d.text, "source": d.metadata.get("source")})
        if len(docs) == 240:
            break
    rng = random.Random(7)
    extra = []
    for i, d in enumerate(rng.sample(docs, 40)):
        text = d["text"]
        if i % 2:
            text = text.upper().replace(" ", "  ")  # an exact duplicate after normalisation
        else:
            words = text.split(" ")
            words[len(words) // 2] = "zebra"  # a near duplicate
            text = " ".join(words)
        extra.append({"id": f"copy-{i}", "text": text, "source": "copies"})
    extra.append({"id": "short", "text": "Too short.", "source": "copies"})
    everything = docs + extra
    rng.shuffle(everything)
    root = tmp_path_factory.mktemp("corpus")
    for k in range(3):
        lines = [json.dumps(r) for r in everything[k::3]]
        if k == 1:
            lines.insert(5, "{not json")
        (root / f"part-{k}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _config(**kw) -> PrepConfig:
    return PrepConfig(preset="c4", keep_removed=True, skip_bad=True, batch_size=40,
                      dedup={"exact": True, "minhash": True}, **kw)


def _records(directory: Path, pattern: str) -> list[dict]:
    rows = []
    for path in sorted(directory.glob(pattern)):
        for d in read_documents(path, id_field="id"):
            rows.append({"id": d.id, "text": d.text, **d.metadata})
    return rows


def _assert_same(local: Path, distributed: Path, local_report: dict, ray_report: dict) -> None:
    # The same documents, in the same (input) order, with the same fields.
    assert _records(distributed, "docs-*") == _records(local, "docs-*")
    assert _records(distributed / "removed", "removed-*") == _records(local / "removed", "removed-*")
    assert _records(distributed / "deduped", "docs-*") == _records(local / "deduped", "docs-*")
    # The same removals, each naming the same original (the same clusters).
    assert _records(distributed / "deduped", "removed-*") == _records(local / "deduped", "removed-*")
    for key in ("docs_in", "bytes_in", "docs_out", "bytes_out", "docs_removed", "bad_records",
                "bad_record_messages", "filters", "examples", "filter_specs", "docs_final"):
        assert ray_report[key] == local_report[key], key
    assert set(ray_report) == set(local_report)
    ld, rd = local_report["dedup"], ray_report["dedup"]
    for key in ("documents_in", "documents_kept", "documents_removed", "removed", "minhash", "config"):
        assert rd[key] == ld[key], key
    assert rd["documents_kept"] + rd["documents_removed"] == rd["documents_in"] == ray_report["docs_out"]


@pytest.fixture(scope="module")
def local_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    report = local_prep([corpus], out, _config())
    assert report["dedup"]["removed"]["exact"] > 0 and report["dedup"]["removed"]["minhash"] > 0
    assert report["bad_records"] == 1 and report["docs_removed"] > 0
    return out, report


def test_ray_matches_local(ray_cluster, corpus, local_run, tmp_path):
    local_out, local_report = local_run
    report = ray_engine.prep([corpus], tmp_path / "ray", _config())
    _assert_same(local_out, tmp_path / "ray", local_report, report)
    # A finished directory returns its report without running again.
    assert ray_engine.prep([corpus], tmp_path / "ray", _config()) == report


def test_tasks_failing_once_change_nothing(ray_cluster, corpus, local_run, tmp_path, monkeypatch):
    """One task raises and one task's worker process dies; Ray retries them, each overwrites
    its own shards, and the output and counts are exactly the local ones."""
    markers = [tmp_path / "raised-once", tmp_path / "exited-once"]
    monkeypatch.setenv(ray_engine.FAILURE_ENV, f"raise:{markers[0]},exit:{markers[1]}")
    local_out, local_report = local_run
    report = ray_engine.prep([corpus], tmp_path / "ray", _config())
    assert all(m.exists() for m in markers), "the failures were not injected"
    _assert_same(local_out, tmp_path / "ray", local_report, report)


def test_prep_on_filesystem_urls(ray_cluster, corpus, local_run, tmp_path):
    """Inputs and outputs given as URLs go through pyarrow's filesystem (file:// here: its
    LocalFileSystem) and give the local engine's output; no temporary files are left."""
    local_out, local_report = local_run
    out = tmp_path / "ray"
    report = ray_engine.prep([corpus.as_uri()], out.as_uri() + "/", _config())
    # Bad-record messages name the file by its URL.
    assert report["bad_record_messages"][0].startswith(corpus.as_uri())
    _assert_same(local_out, out, local_report,
                 {**report, "bad_record_messages": [m.replace("file://", "") for m in report["bad_record_messages"]]})
    assert report["shards"] == sorted(q.name for q in out.glob("docs-*"))
    assert json.loads((out / "report.json").read_text("utf-8")) == report
    assert (out / "report.html").exists() and (out / "deduped" / "dedup-report.json").exists()
    assert not [q for q in out.rglob(".*") if q.name != ".gristmill-output.json"], "temporary files left behind"
    assert ray_engine.prep([corpus.as_uri()], out.as_uri(), _config()) == report  # finished: reused


def test_readers_open_urls(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    rows = [{"id": f"d{i}", "text": f"text {i}", "n": i} for i in range(5)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    (tmp_path / "c.jsonl").write_bytes(data)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "e.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    local = list(read_documents(tmp_path, txt_mode="paragraphs"))
    assert len(local) == 22
    assert list(read_documents(tmp_path.as_uri(), txt_mode="paragraphs")) == local


def test_unknown_url_scheme_is_named(tmp_path, corpus):
    with pytest.raises(ValueError, match="nosuch://bucket/raw"):
        ray_engine.prep(["nosuch://bucket/raw"], tmp_path / "out", _config())
    with pytest.raises(ValueError, match="nosuch://bucket/clean"):
        ray_engine.prep([corpus], "nosuch://bucket/clean", _config())
    with pytest.raises(ValueError, match="give a local out_dir"):
        ray_engine.tokenize([corpus], (tmp_path / "tok").as_uri(), "gpt2")


def test_standalone_dedup_matches_local(ray_cluster, local_run, tmp_path):
    from gristmill.dedup import dedup as local_dedup

    local_out, _ = local_run
    shards = sorted(local_out.glob("docs-*"))
    cfg = DedupConfig(exact=True, minhash=True, bands=20, rows=5)
    expected = local_dedup(shards, tmp_path / "local", cfg)
    got = ray_engine.dedup(shards, tmp_path / "ray", cfg, block_docs=25)
    for key in ("documents_in", "documents_kept", "removed", "minhash"):
        assert got[key] == expected[key], key
    assert _records(tmp_path / "ray", "docs-*") == _records(tmp_path / "local", "docs-*")
    assert _records(tmp_path / "ray", "removed-*") == _records(tmp_path / "local", "removed-*")


def test_pipeline_prep_stage_on_ray(ray_cluster, corpus, local_run, tmp_path):
    from gristmill.pipeline import _check, _stage_prep

    cfg = {"inputs": [str(corpus)], "out_dir": str(tmp_path), "engine": "ray"}
    _check(cfg)
    settings = {"preset": "c4", "skip_bad": True, "batch_size": 40, "dedup": {"exact": True, "minhash": True}}
    summary = _stage_prep(settings, cfg, tmp_path / "prep", {}, False)
    _, local_report = local_run
    assert summary["docs_final"] == local_report["docs_final"]
    assert summary["docs_out"] == local_report["docs_out"]
    with pytest.raises(ValueError, match="engine must be"):
        _check({**cfg, "engine": "spark"})


def test_what_ray_does_not_do_is_refused(tmp_path, corpus):
    with pytest.raises(NotImplementedError, match="line and span dedup"):
        ray_engine.prep([corpus], tmp_path, PrepConfig(dedup={"lines": True}))
    with pytest.raises(NotImplementedError, match="threshold"):
        ray_engine.dedup([corpus], tmp_path, DedupConfig(threshold=0.8))


def test_missing_ray_says_how_to_install(monkeypatch, capsys, corpus, tmp_path):
    from gristmill.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'gristmill\[ray\]'"):
        ray_engine.require_ray()
    assert main(["prep", str(corpus), "-o", str(tmp_path), "--engine", "ray"]) == 1
    assert "install it with: pip install 'gristmill[ray]'" in capsys.readouterr().err
    assert main(["tokenize", str(corpus), "-o", str(tmp_path / "tok"), "--engine", "ray"]) == 1
    assert "install it with: pip install 'gristmill[ray]'" in capsys.readouterr().err


# ---- tokenize ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_corpus(tmp_path_factory, shared_data) -> Path:
    """Real English in a .jsonl.zst, a .jsonl (a record without an id, blank lines) and a .txt."""
    import zstandard

    docs = []
    for d in read_documents(shared_data / "bench-en.jsonl.zst"):
        docs.append({"id": d.id, "text": d.text[:3000]})
        if len(docs) == 120:
            break
    root = tmp_path_factory.mktemp("token-corpus")
    lines = "\n".join(json.dumps(r) for r in docs[:70]) + "\n"
    (root / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    rest = [json.dumps(r) for r in docs[70:]]
    rest[3] = json.dumps({"text": "no id here <|endoftext|> as text"})
    (root / "b.jsonl").write_text("\n\n".join(rest) + "\n", encoding="utf-8")
    (root / "c.txt").write_text("the last document, from a text file", encoding="utf-8")
    return root


_TOKENIZE = {"shard_size": 4096, "val_fraction": 0.1, "eot": "prepend"}


def _dataset_files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def local_tokenized(token_corpus, tmp_path_factory) -> dict[str, bytes]:
    from gristmill.shards import write_shards

    out = tmp_path_factory.mktemp("local-tokens")
    write_shards([token_corpus], out, "gpt2", **_TOKENIZE)
    files = _dataset_files(out)
    assert sum(name.startswith("train_") and name.endswith(".bin") for name in files) > 3
    assert "val_000000.bin" in files
    return files


def test_ray_tokenize_is_byte_identical(ray_cluster, token_corpus, local_tokenized, tmp_path, monkeypatch):
    """Documents cross shards, a val split, ids from every reader; one encoding task raises
    and one worker dies on the way, and Ray's retries change nothing."""
    markers = [tmp_path / "raised-once", tmp_path / "exited-once"]
    monkeypatch.setenv(ray_engine.FAILURE_ENV, f"raise:{markers[0]},exit:{markers[1]}")
    manifest = ray_engine.tokenize([token_corpus], tmp_path / "ray", "gpt2", block_docs=16, **_TOKENIZE)
    assert all(m.exists() for m in markers), "the failures were not injected"
    assert manifest == tmp_path / "ray" / "manifest.json"
    assert _dataset_files(tmp_path / "ray") == local_tokenized


def test_ray_tokenize_resumes(ray_cluster, token_corpus, tmp_path, monkeypatch):
    """A run killed after some blocks is rerun: it skips what is written, without encoding
    it again, and the dataset is the local one."""
    calls = {"n": 0}
    add = ray_engine._add_block

    def dying(writer, ids, tokens, offsets):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return add(writer, ids, tokens, offsets)

    from gristmill.shards import write_shards

    # No val split: a val shard that is not full yet would make the rerun start at 0.
    settings = {"shard_size": 2048}
    write_shards([token_corpus], tmp_path / "local", "gpt2", **settings)
    monkeypatch.setattr(ray_engine, "_add_block", dying)
    with pytest.raises(KeyboardInterrupt):
        ray_engine.tokenize([token_corpus], tmp_path / "ray", "gpt2", block_docs=16, **settings)
    assert not (tmp_path / "ray" / "manifest.json").exists()
    monkeypatch.setattr(ray_engine, "_add_block", add)
    located = []
    locate = ray_engine._locate
    monkeypatch.setattr(ray_engine, "_locate", lambda *a: located.append(locate(*a)) or located[-1])
    ray_engine.tokenize([token_corpus], tmp_path / "ray", "gpt2", block_docs=16, **settings)
    assert located and located[0] > (0, 0), "the rerun started from the beginning"
    assert _dataset_files(tmp_path / "ray") == _dataset_files(tmp_path / "local")


def test_ray_tokenize_cli_and_pipeline(ray_cluster, token_corpus, local_tokenized, tmp_path):
    from gristmill.cli import main

    args = ["tokenize", str(token_corpus), "-o", str(tmp_path / "cli"), "--engine", "ray", "-q",
            "--shard-size", "4096", "--val-fraction", "0.1", "--eot", "prepend"]
    assert main(args) == 0
    assert _dataset_files(tmp_path / "cli") == local_tokenized
    # The pipeline's engine key applies to its tokenize stage too.
    from gristmill import Tokenizer
    from gristmill.pipeline import _stage_tokenize

    prep_dir = tmp_path / "prep"
    prep_dir.mkdir()
    (prep_dir / "docs-00000.jsonl.zst").write_bytes((token_corpus / "a.jsonl.zst").read_bytes())
    Tokenizer.from_name("gpt2").save(tmp_path / "tok")
    dirs = {"prep": prep_dir, "tokenizer": tmp_path / "tok"}
    for engine in ("local", "ray"):
        cfg = {"inputs": [], "out_dir": str(tmp_path), "engine": engine}
        _stage_tokenize({"shard_size": 4096}, cfg, tmp_path / engine, dirs, False)
    assert _dataset_files(tmp_path / "ray") == _dataset_files(tmp_path / "local")


def test_add_encoded_checks_its_input(tmp_path):
    import numpy as np
    from gristmill import Tokenizer, _core

    tok = Tokenizer.from_name("gpt2")
    w = _core.ShardWriter(str(tmp_path), tokenizer_name="gpt2", fingerprint=tok.fingerprint,
                          n_vocab=tok.n_vocab, eot_token=tok.eot_token, tokenizer_path=None,
                          eot="append", shard_size=100, val_fraction=0.0, val_docs=None, text_field="text")
    tokens, offsets = tok.encode_batch_to_numpy(["hello world", "bye"])
    with pytest.raises(ValueError, match="3 offsets for 1 documents"):
        w.add_encoded(["a"], tokens, offsets)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        w.add_encoded(["a", "b"], np.array([1, 60000, 2], dtype=np.uint32), offsets)
    with pytest.raises(TypeError, match="uint16 or uint32"):
        w.add_encoded(["a", "b"], tokens.astype(np.int64), offsets)
    assert w.add_encoded(["a", "b"], tokens, offsets) == len(tokens) + 2
