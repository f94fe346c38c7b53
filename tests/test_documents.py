"""Documents through the core: .jsonl.zst needs no Python zstd package, and a truncated or
damaged compressed file is refused, naming it, by every stage that reads documents."""

import gzip
import json
import subprocess
import sys

import gristmill
import pytest
from gristmill import _core
from gristmill.cli import main
from gristmill.documents import Document, DocumentWriter, InputFormatError, read_documents

zstandard = pytest.importorskip("zstandard")


def _jsonl(n: int) -> bytes:
    words = "the quick brown fox jumps over the lazy dog".split()
    lines = [json.dumps({"id": str(i), "text": " ".join(words[(i + j) % 9] for j in range(60)) + f" {i}"})
             for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def corpus(tmp_path):
    data = _jsonl(400)
    whole = zstandard.ZstdCompressor().compress(data)
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "a.jsonl.zst").write_bytes(whole)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "a.jsonl.zst").write_bytes(whole[: len(whole) * 3 // 4])
    return tmp_path


def test_zstd_written_by_the_core_has_a_checksum_and_reads_back(tmp_path):
    docs = [Document(str(i), f"text {i} é", {"n": i}) for i in range(10)]
    with DocumentWriter(tmp_path, docs_per_shard=4) as w:
        for d in docs:
            w.write(d)
    frame = (tmp_path / "docs-00000.jsonl.zst").read_bytes()
    params = zstandard.get_frame_parameters(frame)
    assert params.has_checksum and params.content_size > 0
    assert list(read_documents(tmp_path)) == docs
    # zstandard, an independent decoder, reads the core's frames
    text = zstandard.ZstdDecompressor().decompress(frame).decode()
    assert json.loads(text.splitlines()[0]) == {"id": "0", "text": "text 0 é", "n": 0}


def test_truncated_zst_is_refused_not_read_short(corpus):
    assert len(list(read_documents(corpus / "good"))) == 400
    for skip_bad in (False, True):
        with pytest.raises(InputFormatError, match=r"a\.jsonl\.zst: line \d+: .*truncated"):
            list(read_documents(corpus / "cut", skip_bad=skip_bad))


def test_damaged_zst_checksum_is_refused(tmp_path):
    frame = bytearray(_core.zstd_compress(_jsonl(50)))
    frame[-1] ^= 0xFF  # the content checksum
    (tmp_path / "a.jsonl.zst").write_bytes(bytes(frame))
    with pytest.raises(InputFormatError, match=r"a\.jsonl\.zst: .*damaged"):
        list(read_documents(tmp_path / "a.jsonl.zst"))


@pytest.mark.parametrize("name, data", [
    ("a.jsonl.gz", gzip.compress(_jsonl(3000))[:4000]),
    ("a.jsonl.zst", b"definitely not zstd"),
    ("a.jsonl.gz", b"definitely not gzip"),
])
def test_damaged_compressed_files_are_one_line_errors(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputFormatError, match=name.replace(".", r"\.") + ": line"):
        list(read_documents(tmp_path / name))


def test_lone_surrogate_escapes_become_replacement_characters(tmp_path):
    """As tiktoken and the tokenize stage do: such a string has no UTF-8 form."""
    (tmp_path / "a.jsonl").write_bytes(
        b'{"text": "a \\ud800 b", "tags": ["\\udfff"]}\n{"text": "pair \\ud83d\\ude00"}\n')
    docs = list(read_documents(tmp_path / "a.jsonl"))
    assert docs[0].text == "a \ufffd b" and docs[0].metadata == {"tags": ["\ufffd"]}
    assert docs[1].text == "pair \U0001F600"
    out = tmp_path / "out"
    report = gristmill.prep([tmp_path / "a.jsonl"], out, gristmill.PrepConfig(preset="none"))
    assert report["docs_in"] == 2


@pytest.mark.parametrize("command", [
    ["prep", "{cut}", "-o", "{out}", "--preset", "none", "--no-progress"],
    ["dedup", "{cut}", "-o", "{out}", "--no-progress"],
    ["tokenizer", "train", "{cut}", "-o", "{out}", "--vocab-size", "300", "-q"],
    ["tokenize", "{cut}", "-o", "{out}", "-q"],
])
def test_every_stage_refuses_a_truncated_zst(corpus, capsys, command):
    args = [a.format(cut=corpus / "cut", out=corpus / "out") for a in command]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "a.jsonl.zst" in err and ("truncated" in err or "incomplete" in err), err


def test_byte_level_stages_need_no_python_zstd(corpus, tmp_path):
    """The base install has no zstandard: prep, dedup, tokenizer training and tokenize read
    and write .jsonl.zst through the core alone."""
    script = f"""
import sys
sys.modules["zstandard"] = None  # importing it now fails, as where it is not installed
from gristmill.cli import main
src, out = {str(corpus / "good")!r}, {str(tmp_path / "o")!r}
assert main(["prep", src, "-o", out + "/prep", "--preset", "none", "--no-progress"]) == 0
assert main(["dedup", out + "/prep", "-o", out + "/dedup", "--no-progress"]) == 0
assert main(["tokenizer", "train", out + "/dedup", "-o", out + "/tok", "--vocab-size", "300", "-q"]) == 0
assert main(["tokenize", out + "/dedup", "-o", out + "/shards", "-t", out + "/tok", "-q"]) == 0
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
