#!/usr/bin/env bash
# One GPU, at most 8 minutes: measure what has never been measured on a GPU, and write
# docs/results-gpu.md from it (no number in it is typed by hand).
#
#   scripts/gpu-check.sh             # on a machine with one CUDA GPU
#   scripts/gpu-check.sh --dry-run   # print the steps and their time limits, run nothing
#
# Steps (each under its own time limit; a failed or timed-out step is reported as such):
#   1. tests  the GPU-marked tests (pytest -m gpu): fused attention vs reference, compile vs eager
#   2. bench  `elastic bench` on CUDA at the code-32k model shape, bf16, train.compile=true (per block),
#             kinds none and elastic: the accelerator-path counts, MFU and up to 50 warm train steps
#             each (tokens/s, peak memory; compile time reported apart), the Elastic Memory kernels,
#             eval peak memory and generation after a 1M-token history. --deadline 270: a phase that
#             would start later is skipped, and bench.json is rewritten after every phase, so a run
#             cut short keeps what it measured
#   3. report scripts/results_bench.py: $OUT/*.json -> docs/results-gpu.md and docs/results-gpu.json
# Environment: PYTHON (default python3), OUT (default runs/gpu-check), RESULTS (default
# docs/results-gpu.md), HISTORY (default 1048576 tokens), STEPS (default 50 train steps per kind).
set -euo pipefail

SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
. scripts/steps.sh  # parse_args, step NAME LIMIT_S CMD...
parse_args 2,17 "$@"
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu-check}
RESULTS=${RESULTS:-docs/results-gpu.md}
HISTORY=${HISTORY:-1048576}
STEPS=${STEPS:-50}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
if [ "$DRY" = 0 ]; then  # a dry run writes nothing
  mkdir -p "$OUT"
  : > "$OUT/steps.jsonl"
  : > "$OUT/commands.txt"
fi
if [ "$DRY" = 0 ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu-check.sh: no CUDA device is visible to $PY" >&2
  exit 2
fi
# 120 + 330 + 30 s = 8 minutes at most, compilation included (the bench aims at 270 s: --deadline)
step tests 120 "$PY" -m pytest -q -m gpu --junitxml "$OUT/tests.xml" tests
step bench 330 "$PY" -m elastic_cli bench --recipe recipes/code-32k.yaml --device cuda --quick \
  --kinds none,elastic --history "$HISTORY" --train-steps "$STEPS" --deadline 270 --json "$OUT/bench.json" \
  train.dtype=bf16 train.compile=true train.micro_batch=1
step report 30 "$PY" scripts/results_bench.py "$OUT" --out "$RESULTS"
[ "$DRY" = 1 ] || echo "gpu-check: wrote $RESULTS"
