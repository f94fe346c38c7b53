#!/usr/bin/env bash
# The GPU check: everything on the CUDA path, in one run of under 8 minutes on one H100-class GPU,
# its figures written as JSON into a results folder.
#
#   bash benches/gpu_check.sh [--cpu] [OUT_DIR]
#
# Steps (each with its own time limit, all within GPU_CHECK_BUDGET seconds):
#   install     python3 + torch + gristmill importable, CUDA available (the machine may have no
#               Rust: build the wheel elsewhere and `pip install --no-deps gristmill-*.whl`)
#   cuda_tests  pytest -m cuda (tests marked as needing a GPU)
#   train_step  benches/bench_train_step.py: GPT-2 124M, T=1024, bf16 + torch.compile, tokens/s
#               and MFU, gristmill's train() against a nanoGPT-style loop
#   sample      benches/bench_sample.py on the GPU (bf16), gristmill vs transformers
#   speedrun    benches/bench_speedrun.py --device cuda --size small: time to a validation loss
#               (GPU_CHECK_SPEEDRUN_SIZE=full for the README's row; it takes longer)
#
# OUT_DIR (default bench-results/gpu-check-<UTC time>) must be new or empty; it gets
# gpu_check.json (the summary: install, each step's status, time and figures), each step's
# JSON and log, and cuda_tests.xml. Nothing else is written.
#
# --cpu (or GPU_CHECK_DRY=1): a dry run on the CPU, every step at its smallest (what the tests
# run, to keep this script working where no GPU is).
#
# Environment: PYTHON (default python3), GRISTMILL_SHARED_DATA (default ../shared/data: the
# tests' and benchmarks' data), GPU_CHECK_BUDGET (seconds, default 460), GPU_CHECK_TESTS (what
# pytest collects, default tests), GPU_CHECK_SPEEDRUN_SIZE (small or full).

set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-0}
if [ "${1:-}" = "--cpu" ]; then
    DRY=1
    shift
fi
OUT=${1:-$ROOT/bench-results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
BUDGET=${GPU_CHECK_BUDGET:-460}
TESTS=${GPU_CHECK_TESTS:-tests}
SPEEDRUN_SIZE=${GPU_CHECK_SPEEDRUN_SIZE:-small}
export GRISTMILL_SHARED_DATA=${GRISTMILL_SHARED_DATA:-$ROOT/../shared/data}
export PYTHONDONTWRITEBYTECODE=1  # nothing written outside OUT_DIR

if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
    echo "gpu_check: $OUT is not empty; give a new folder (nothing there is overwritten)" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2

START=$(date +%s)
DEADLINE=$((START + BUDGET))
STEPS="$OUT/.steps.tsv"
: > "$STEPS"

say() { echo "gpu_check: $*"; }

# record NAME STATUS RC SECONDS NOTE: one line of the summary.
record() {
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$STEPS"
    say "$1: $2 (${4}s)${5:+ - $5}"
}

# run_step NAME LIMIT COMMAND...: runs COMMAND with its output in NAME.log, for at most LIMIT
# seconds and never past the deadline; exit statuses in OK_RC (default 0) are success.
run_step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - $(date +%s)))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -le 5 ]; then
        record "$name" skipped "" 0 "no time left in the ${BUDGET}s budget"
        return
    fi
    say "$name: $* (at most ${limit}s)"
    local t0=$(date +%s)
    timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local dt=$(($(date +%s) - t0))
    if [[ " ${OK_RC:-0} " == *" $rc "* ]]; then
        record "$name" ok "$rc" "$dt" ""
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        record "$name" timeout "$rc" "$dt" "stopped after ${limit}s; see $name.log"
    else
        record "$name" failed "$rc" "$dt" "$(tail -n 1 "$OUT/$name.log" | cut -c1-300)"
    fi
}

# ---- install -----------------------------------------------------------------------------
say "results in $OUT$([ "$DRY" = 1 ] && echo ' (CPU dry run)')"
t0=$(date +%s)
"$PY" - "$OUT/install.json" "$DRY" > "$OUT/install.log" 2>&1 <<'EOF'
import importlib.util, json, os, platform, sys
out, dry = sys.argv[1], sys.argv[2] == "1"
info = {"python": sys.version.split()[0], "platform": platform.platform()}
try:
    import gristmill, torch
    info.update(gristmill=gristmill.__version__, gristmill_path=os.path.dirname(gristmill.__file__),
                torch=torch.__version__, cuda=torch.cuda.is_available(),
                torch_cuda=torch.version.cuda)
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        from gristmill.planner import peak_flops_for
        info["peak_bf16_flops"] = peak_flops_for(info["device"])
except Exception as e:  # noqa: BLE001 - reported, not raised
    info["error"] = f"{type(e).__name__}: {e}"
info["missing"] = [m for m in ("pytest", "transformers", "zstandard", "matplotlib")
                   if importlib.util.find_spec(m) is None]
data = os.environ["GRISTMILL_SHARED_DATA"]
info["shared_data"] = data if os.path.isdir(data) else None
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(info, f, indent=2)
os.replace(tmp, out)
print(json.dumps(info))
if "error" in info:
    sys.exit(f"cannot import gristmill and torch: {info['error']}")
if not dry and not info["cuda"]:
    sys.exit("torch.cuda.is_available() is False: no GPU (use --cpu for a dry run)")
EOF
rc=$?
if [ $rc -ne 0 ]; then
    record install failed "$rc" $(($(date +%s) - t0)) "$(tail -n 1 "$OUT/install.log")"
else
    record install ok 0 $(($(date +%s) - t0)) ""
    if grep -q '"shared_data": null' "$OUT/install.json"; then
        say "warning: $GRISTMILL_SHARED_DATA is missing: tests and benchmarks that read it fail"
    fi
fi

# ---- the steps -----------------------------------------------------------------------------
if [ $rc -eq 0 ]; then
    if [ "$DRY" = 1 ]; then
        BENCH=(--size small --threads 1)
        TRAIN_ARGS=(--no-compile)
        SPEED=(--device cpu --size small --threads 1)
    else
        BENCH=()
        TRAIN_ARGS=()
        SPEED=(--device cuda --size "$SPEEDRUN_SIZE")
    fi
    # pytest's 5 is "no test selected": where none is marked, that is no failure.
    OK_RC="0 5" run_step cuda_tests 150 "$PY" -m pytest -m cuda "$TESTS" -q -p no:cacheprovider \
        --junitxml="$OUT/cuda_tests.xml"
    run_step train_step 200 "$PY" benches/bench_train_step.py "${BENCH[@]}" "${TRAIN_ARGS[@]}" \
        --out "$OUT/train_step.json"
    run_step sample 90 "$PY" benches/bench_sample.py "${BENCH[@]}" --out "$OUT/sample.json"
    if [ -f benches/bench_speedrun.py ]; then
        run_step speedrun 240 "$PY" benches/bench_speedrun.py "${SPEED[@]}" \
            --out "$OUT/speedrun.json"
    else
        record speedrun skipped "" 0 "benches/bench_speedrun.py is not in this checkout: no \
speedrun row"
    fi
fi

# ---- the summary ---------------------------------------------------------------------------
"$PY" - "$OUT" "$DRY" "$START" "$BUDGET" <<'EOF'
import json, os, sys, time
import xml.etree.ElementTree as ET

out, dry, start, budget = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])


def read(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


steps = []
with open(os.path.join(out, ".steps.tsv")) as f:
    for line in f:
        name, status, rc, seconds, note = line.rstrip("\n").split("\t")
        step = {"name": name, "status": status, "rc": int(rc) if rc else None,
                "seconds": int(seconds), "note": note or None}
        for suffix in (".log", ".json", ".xml"):
            if os.path.exists(os.path.join(out, name + suffix)):
                step[suffix[1:]] = name + suffix
        steps.append(step)
figures = {}
xml = os.path.join(out, "cuda_tests.xml")
if os.path.exists(xml):
    try:
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                  if c.find("failure") is not None or c.find("error") is not None]
        figures["cuda_tests"] = {**n, "passed": n["tests"] - n["failures"] - n["errors"]
                                 - n["skipped"], "failed": failed}
    except (ET.ParseError, AttributeError, ValueError) as e:
        figures["cuda_tests"] = {"error": f"unreadable junit xml: {e}"}
for name in ("train_step", "sample", "speedrun"):
    data = read(name + ".json")
    if data is not None:
        figures[name] = {"device": data.get("device"), "rows": data.get("rows")}
summary = {"format": "gristmill-gpu-check-1", "dry_run": dry,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
           "seconds": round(time.time() - start), "budget_seconds": budget,
           "install": read("install.json"), "steps": steps, "figures": figures,
           "ok": all(s["status"] in ("ok", "skipped") for s in steps)
           and any(s["name"] == "install" and s["status"] == "ok" for s in steps)}
tmp = os.path.join(out, "gpu_check.json.tmp")
with open(tmp, "w") as f:
    json.dump(summary, f, indent=2)
os.replace(tmp, os.path.join(out, "gpu_check.json"))
os.remove(os.path.join(out, ".steps.tsv"))
print(f"gpu_check: {'ok' if summary['ok'] else 'FAILED'} in {summary['seconds']}s; "
      f"summary: {os.path.join(out, 'gpu_check.json')}")
sys.exit(0 if summary["ok"] else 1)
EOF
