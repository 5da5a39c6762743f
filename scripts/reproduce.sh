#!/usr/bin/env bash
# Reproduce docs/results.md through the real CLI (see scripts/reproduce.py for what runs):
#   scripts/reproduce.sh                 # cpu-seeds: every kind, 3 seeds, 2 learning rates (about 320 core-minutes)
#   scripts/reproduce.sh --plan          # the runs and their estimated core-minutes; runs nothing
#   scripts/reproduce.sh --size cpu      # the same plus the footprint sweep, paper settings, longer runs
#   scripts/reproduce.sh --smoke         # minutes: the whole pipeline at tiny sizes
#   scripts/reproduce.sh --gpu           # one GPU: larger model, longer documents
#   scripts/reproduce.sh --kinds none,elastic --only mqar --steps 400
# Environment: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/reproduce.py "$@"
