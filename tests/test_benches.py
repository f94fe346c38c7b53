"""The benchmark suite at its small size, as a smoke test: it must run, never judged on timings."""

import json
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
    assert stages == {"encode", "tokenizer_train", "prep", "dedup", "loader", "train_step", "sample"}
    assert (tmp_path / "summary.md").read_text().startswith("# gristmill benchmarks")
    assert (tmp_path / "summary.png").stat().st_size > 1000
