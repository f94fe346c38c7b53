"""The benchmark suite at its small size, as a smoke test: it must run, never judged on timings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_run_all_small(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benches" / "run_all.py"), "--size", "small", "--strict", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    stages = {r["stage"] for r in summary["results"] if "error" not in r}
    assert stages == {"encode", "tokenizer_train", "prep", "dedup", "loader", "train_step", "sample",
                      "speedrun", "finetune", "lora", "eval", "serve"}
    assert (tmp_path / "summary.md").read_text().startswith("# gristmill benchmarks")
    assert (tmp_path / "summary.png").stat().st_size > 1000


GPU_CHECK = ROOT / "benches" / "gpu_check.sh"


def test_gpu_check_parses_and_keeps_a_used_folder(tmp_path):
    subprocess.run(["bash", "-n", str(GPU_CHECK)], check=True)
    (tmp_path / "mine.txt").write_text("not the check's")
    proc = subprocess.run(["bash", str(GPU_CHECK), "--cpu", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    """Every step of the GPU check at its smallest, on the CPU (about two minutes here)."""
    out = tmp_path / "check"
    env = {**os.environ, "GPU_CHECK_TESTS": str(ROOT / "tests" / "test_planner.py")}
    proc = subprocess.run(["bash", str(GPU_CHECK), "--cpu", str(out)], capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["dry_run"] and summary["ok"] and summary["install"]["torch"]
    steps = {s["name"]: s["status"] for s in summary["steps"]}
    assert steps == {"install": "ok", "cuda_tests": "ok", "train_step": "ok", "sample": "ok",
                     "speedrun": "ok" if (ROOT / "benches" / "bench_speedrun.py").exists()
                     else "skipped"}
    assert summary["figures"]["train_step"]["rows"] and summary["figures"]["sample"]["rows"]
