#!/usr/bin/env bash
# Reproduce docs/results.md through the real CLI (see scripts/reproduce.py for what runs):
#   scripts/reproduce.sh                 # CPU size, about 90 minutes on 2 cores
#   scripts/reproduce.sh --smoke         # minutes: the whole pipeline at tiny sizes
#   scripts/reproduce.sh --gpu           # one GPU: larger model, longer documents
#   scripts/reproduce.sh --kinds none,elastic --only mqar
# Environment: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/reproduce.py "$@"
