#!/usr/bin/env bash
# The long fuzz run (issue 18): every parser's property tests with many more cases than CI's.
#   Rust: each parser's `mod fuzz` (tiktoken, tokenizer.json, GPT-2 files, shard headers,
#         indexes, manifests, datasets, JSON lines, zstd), PROPTEST_CASES per property;
#   Python: tests/test_fuzz.py (the same files through the public API, plus configs and
#         checkpoints), GRISTMILL_FUZZ examples per test.
# Usage: benches/fuzz.sh [CASES]   (default 10000 Rust cases, 3000 Python examples; about
# 20 minutes on 2 cores). A failure prints the smallest input found; proptest also saves it under
# proptest-regressions/ and hypothesis under .hypothesis/, so a rerun tries it first.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-10000}
examples=$(( cases < 3000 ? cases : 3000 ))

echo "== Rust: cargo test --lib fuzz, PROPTEST_CASES=$cases"
PROPTEST_CASES=$cases cargo test --lib fuzz

echo "== Python: tests/test_fuzz.py, GRISTMILL_FUZZ=$examples"
GRISTMILL_FUZZ=$examples python -m pytest tests/test_fuzz.py -q
