"""The whole flow: `gristmill quickstart --tiny` end to end, and an interrupted `gristmill run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from gristmill.pipeline import quickstart_config, run  # noqa: E402


def _tiny_config(out: Path, steps: int = 12) -> dict:
    cfg = quickstart_config(out, tiny=True)
    cfg["train"].update(max_steps=steps, eval_interval=steps // 2, eval_batches=2, plot=False, progress=False)
    cfg["sample"]["max_new_tokens"] = 8
    return cfg


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qs")
    env = {**os.environ, "GRISTMILL_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "gristmill", "quickstart", "--tiny", "--no-progress", "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out) in proc.stdout
    return out


def test_quickstart_artefacts_are_valid(quickstart_dir):
    from gristmill import ShardDataset, Tokenizer
    from gristmill.sample import sample_text

    report = json.loads((quickstart_dir / "report.json").read_text())
    assert set(report["stages"]) == {"prep", "tokenizer", "tokenize", "train", "sample"}
    assert (quickstart_dir / "report.md").read_text().startswith("# gristmill pipeline report")
    prep = report["stages"]["prep"]["summary"]
    assert prep["docs_final"] <= prep["docs_out"] <= prep["docs_in"] and prep["docs_final"] > 1000
    tok = Tokenizer.load(quickstart_dir / "tokenizer")
    assert tok.n_vocab == 512
    ds = ShardDataset(quickstart_dir / "tokenize")
    ds.verify()
    ds.check_tokenizer(tok)
    assert ds.num_tokens("train") > 100_000 and ds.num_tokens("val") > 0
    from importlib import resources

    corpus = resources.files("gristmill").joinpath("data", "tinyshakespeare.txt").read_text("utf-8")
    first = tok.decode(ds.document(0).tolist())
    assert first and first in corpus
    assert (quickstart_dir / "train" / "loss.png").stat().st_size > 1000
    assert (quickstart_dir / "sample" / "samples.txt").read_text().count("=== prompt") == 2
    text = sample_text(quickstart_dir / "train", ["ROMEO:"], max_new_tokens=5, seed=0)
    assert isinstance(text[0], str)


@pytest.mark.parametrize("tiny", [True, False])
def test_quickstart_samples_fit_the_context(tiny, tmp_path):
    # The full quickstart is too slow for the tests: check that its sample stage cannot ask
    # for more than the model's context (a prompt has at most as many tokens as bytes).
    cfg = quickstart_config(tmp_path, tiny=tiny)
    longest = max(len(p.encode("utf-8")) for p in cfg["sample"]["prompts"])
    assert longest + cfg["sample"]["max_new_tokens"] <= cfg["train"]["seq_len"]


def test_rerun_skips_up_to_date_stages(quickstart_dir, capsys):
    cfg = quickstart_config(quickstart_dir, tiny=True)
    report = run(cfg, progress=False)
    assert all(stage["skipped"] for stage in report["stages"].values())
    cfg["sample"]["max_new_tokens"] = 3  # only the last stage changes
    report = run(cfg, progress=False)
    assert [s for s, r in report["stages"].items() if not r["skipped"]] == ["sample"]


def _content(path: Path):
    if path.suffix != ".safetensors":
        return path.read_bytes()
    # The safetensors header's metadata order varies from process to process (a hash map in
    # the writer), so compare the metadata as a dict and the tensors bit for bit.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}


def _artefacts(out: Path) -> dict:
    keep = ("docs-", "tokenizer.tiktoken", ".bin", "model.safetensors", "samples.txt")
    return {str(p.relative_to(out)): _content(p) for p in sorted(out.rglob("*"))
            if p.is_file() and any(k in p.name for k in keep)}


@pytest.mark.parametrize("kill_in", ["train"])
def test_killed_during_a_stage_then_rerun(tmp_path, kill_in):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # Both runs in fresh processes: torch's thread count (which earlier tests in this process
    # may have changed) decides the float summation order, so it must be the same for both.
    # The first checkpoint comes at step 4 of 24, so the kill below lands well before the end
    # (with one at step 12, a fast moment could finish training between two looks).
    for out in (whole, killed):
        cfg = _tiny_config(out, steps=24)
        cfg["train"]["eval_interval"] = 4
        (tmp_path / f"{out.name}.json").write_text(json.dumps(cfg))
    cfg_path = tmp_path / "killed.json"

    def script(path):
        return f"import json; from gristmill.pipeline import run; run(json.load(open({str(path)!r})), progress=False)"

    subprocess.run([sys.executable, "-c", script(tmp_path / "whole.json")], check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-c", script(cfg_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Kill it once training has written its first checkpoint.
    deadline = time.time() + 600
    while time.time() < deadline and not list((killed / "train").glob("ckpt-*")):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    record = json.loads((killed / kill_in / "stage.json").read_text())
    assert not record["complete"]
    subprocess.run([sys.executable, "-c", script(cfg_path)], check=True, capture_output=True)
    a, b = _artefacts(whole), _artefacts(killed)
    assert a.keys() == b.keys()
    assert a == b


# ---- output folders: nothing of the user's is deleted (issue 18) ----------------------------


def test_quickstart_keeps_a_file_it_did_not_write(tmp_path):
    # `mkdir -p qs/train && echo mine > qs/train/mine.txt && gristmill quickstart --tiny -o qs`
    # deleted mine.txt (a first run removed each stage folder).
    qs = tmp_path / "qs"
    (qs / "train").mkdir(parents=True)
    (qs / "train" / "mine.txt").write_text("mine\n")
    proc = subprocess.run([sys.executable, "-m", "gristmill", "quickstart", "--tiny", "--no-progress", "-o", str(qs)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "train/mine.txt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (qs / "train" / "mine.txt").read_text() == "mine\n"
    assert sorted(str(p.relative_to(qs)) for p in qs.rglob("*")) == ["train", "train/mine.txt"]


def test_inputs_inside_out_dir_are_refused(tmp_path):
    # A pipeline whose inputs sit in out_dir/prep/ deleted its own inputs.
    out = tmp_path / "run"
    (out / "prep").mkdir(parents=True)
    (out / "prep" / "raw.txt").write_text("To be, or not to be.\n\nThat is the question.\n")
    cfg = _tiny_config(out)
    cfg["inputs"] = [str(out / "prep" / "raw.txt")]
    with pytest.raises(ValueError, match="holds the input"):
        run(cfg, progress=False, log=lambda s: None)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["prep", "prep/raw.txt"]


def test_a_redone_stage_removes_only_its_own_files(tmp_path):
    out = tmp_path / "run"
    cfg = _tiny_config(out, steps=4)
    run(cfg, progress=False, log=lambda s: None)
    (out / "sample" / "notes.txt").write_text("mine")
    cfg["sample"]["max_new_tokens"] = 3  # the sample stage is redone
    with pytest.raises(ValueError, match=r"sample/: holds files this run did not write \(notes.txt\)"):
        run(cfg, progress=False, log=lambda s: None)
    assert (out / "sample" / "notes.txt").read_text() == "mine"
    assert (out / "sample" / "samples.txt").exists()  # refused before any work
    (out / "sample" / "notes.txt").unlink()
    report = run(cfg, progress=False, log=lambda s: None)
    assert [s for s, r in report["stages"].items() if not r["skipped"]] == ["sample"]
    # Changed tokenizer settings: every stage from the tokenizer on is redone in place.
    cfg["tokenizer"]["vocab_size"] = 300
    report = run(cfg, progress=False, log=lambda s: None)
    assert [s for s, r in report["stages"].items() if not r["skipped"]] == ["tokenizer", "tokenize", "train", "sample"]
    with pytest.raises(ValueError, match="holds the output of gristmill run"):
        from gristmill.prep import PrepConfig, prep

        prep(cfg["inputs"], out, PrepConfig(preset="none"))
