#!/usr/bin/env bash
# The full `elastic bench` on the CPU at the tiny recipe, every memory kind (train step, Elastic
# Memory kernels, eval and generation after 4k / 1k and 1M tokens of history), and
# docs/results-cpu.md written from it (no number in it is typed by hand). About 34 minutes on a
# 2-vCPU machine (2,032 s, 100 timed train steps per kind); run it on a quiet machine (the train
# ratios are of CPU time, interleaved).
# One thread by default: on a 2-vCPU machine two threads leave no core for anything else, and the
# train ratio of the same code then swung between 0.91 and 0.97 from run to run (spread up to 0.6);
# set OMP_NUM_THREADS to measure with more. The page names the thread count the bench ran with.
#
#   scripts/bench-cpu.sh             # measure, then write the page
#   scripts/bench-cpu.sh --dry-run   # print the steps and their time limits, run nothing
#
# Environment: PYTHON (default .venv/bin/python when present, else python3), OUT (default
# runs/bench-cpu), RESULTS (default docs/results-cpu.md), OMP_NUM_THREADS (default 1), KINDS (default
# every kind; KINDS=none,elastic measures the issue-13 bars only: 512-850 s on a 2-vCPU AMD EPYC, AVX2).
set -euo pipefail

SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
. scripts/steps.sh  # parse_args, step NAME LIMIT_S CMD...
parse_args 2,11 "$@"
DEFAULT_PY=python3
[ -x .venv/bin/python ] && DEFAULT_PY=.venv/bin/python
PY=${PYTHON:-$DEFAULT_PY}
OUT=${OUT:-runs/bench-cpu}
RESULTS=${RESULTS:-docs/results-cpu.md}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ "$DRY" = 0 ]; then  # a dry run writes nothing
  mkdir -p "$OUT"
  : > "$OUT/steps.jsonl"
  : > "$OUT/commands.txt"
fi

KIND_ARGS=()
[ -n "${KINDS:-}" ] && KIND_ARGS=(--kinds "$KINDS")
step bench 7200 env OMP_NUM_THREADS="$OMP_NUM_THREADS" "$PY" -m elastic_cli bench --recipe recipes/tiny.yaml --device cpu \
  "${KIND_ARGS[@]}" --json "$OUT/bench.json"
step report 60 "$PY" scripts/results_bench.py "$OUT" --out "$RESULTS" --title "CPU bench"
[ "$DRY" = 1 ] || echo "bench-cpu: wrote $RESULTS"
