#!/usr/bin/env bash
# Runs a researcher can move, name and read (issue 26's bar), from a fresh directory, on the CPU:
#   1. train 5 steps; move the run elsewhere; `generate` and `eval --device cpu` from the moved run,
#      in a third directory that has neither the data nor the tokenizer
#   2. two trainings with different overrides and no run.dir both succeed, into different directories
#   3. `export --out a/b/c` and `eval --out x/y/z.json` create their parent folders
#   4. `elastic` alone exits 0 with multi-line help; `elastic list kinds` names all nine kinds
#   5. `generate --file DOC --prompt Q` succeeds
# Usage: scripts/portable-check.sh [WORKDIR]   (default: a new temporary folder; about 2 minutes)
# Prints one PASS/FAIL line per check and exits 1 if any failed. ELASTIC overrides the command
# (default: python -m elastic_cli with this checkout first on PYTHONPATH).
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d -t elastic-portable-XXXXXX)}
PY=${PYTHON:-$REPO/.venv/bin/python}
case $PY in */*) PY="$(cd "$(dirname "$PY")" 2>/dev/null && pwd)/$(basename "$PY")";; esac  # the checks cd away
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
read -r -a ELASTIC <<< "${ELASTIC:-$PY -m elastic_cli}"
FAILED=0
check() {  # check NAME CMD...: run CMD, PASS on exit 0, else FAIL with the last lines of its output
  local name=$1 log
  shift
  log=$(mktemp)
  if "$@" > "$log" 2>&1; then echo "PASS  $name"; else echo "FAIL  $name"; tail -5 "$log" | sed 's/^/      /'; FAILED=1; fi
  rm -f "$log"
}
el() { "${ELASTIC[@]}" "$@"; }

mkdir -p "$WORK/fresh" "$WORK/elsewhere" "$WORK/third"
cd "$WORK/fresh" || exit 2
echo "workdir $WORK"
# A fresh directory: a few source files as documents, the recipe's tokenizer path, prepared data.
mkdir -p src tokenizers
cp "$REPO"/elastic_cli/*.py src/
cp "$REPO/tokenizers/code-8k.model" tokenizers/
el prepare src --tokenizer tokenizers/code-8k.model --out data/stdlib > prepare.log 2>&1 || { cat prepare.log; exit 2; }
cp "$REPO/recipes/tiny.yaml" tiny.yaml
SMALL=(train.eval_every=0 run.device=cpu)

# 1. train 5 steps, move the run, generate and eval from the moved run in a directory with nothing else
check "train 5 steps into its own directory" el train tiny.yaml train.steps=5 "${SMALL[@]}"
RUN=runs/tiny--train.steps-5
check "the run directory is named after the override ($RUN)" test -f "$RUN/checkpoints/latest"
check "the checkpoint carries its tokenizer" bash -c "ls $RUN/checkpoints/step_*/tokenizer.model"
mv "$RUN" "$WORK/elsewhere/moved"
rm -rf tokenizers  # nothing of the original directory is needed any more
cd "$WORK/third" || exit 2
check "generate from the moved run" el generate "$WORK/elsewhere/moved" "def main(" --max-new-tokens 16 --temperature 0
check "eval --device cpu from the moved run" el eval "$WORK/elsewhere/moved" --device cpu --data "$WORK/fresh/data/stdlib" --max-docs 2 --no-gain
cd "$WORK/fresh" || exit 2

# 2. two trainings, different overrides, no run.dir
check "train with memory.kind=none" el train tiny.yaml train.steps=2 memory.kind=none "${SMALL[@]}"
check "train with train.lr=1e-3" el train tiny.yaml train.steps=2 train.lr=1e-3 "${SMALL[@]}"
check "... into different directories" test -f runs/tiny--memory.kind-none--train.steps-2/checkpoints/latest -a \
  -f runs/tiny--train.lr-1e-3--train.steps-2/checkpoints/latest

# 3. outputs create their parent folders
if "$PY" -c "import transformers" 2> /dev/null; then
  check "export --out a/b/c" el export "$WORK/elsewhere/moved" --out a/b/c
  check "... a loadable folder" test -f a/b/c/model.safetensors -a -f a/b/c/tokenizer.model
else
  echo "SKIP  export --out a/b/c (transformers is not installed)"
fi
check "eval --out x/y/z.json" el eval "$WORK/elsewhere/moved" --data data/stdlib --max-docs 2 --no-gain --out x/y/z.json
check "... written" test -s x/y/z.json

# 4. help and lists
check "elastic alone exits 0 with multi-line help" bash -c "test \$(${ELASTIC[*]} | wc -l) -gt 10"
check "elastic list kinds names all nine kinds" bash -c "out=\$(${ELASTIC[*]} list kinds) && for k in none elastic xl memorizing melodi infinity armt caching rmt; do grep -q \"^\$k \" <<< \"\$out\" || exit 1; done"

# 5. ask about a document
printf 'def area(r):\n    return 3.14159 * r * r\n' > doc.py
check "generate --file DOC --prompt Q" el generate "$WORK/elsewhere/moved" --file doc.py --prompt "def volume(" --max-new-tokens 16 --temperature 0

[ "$FAILED" = 0 ] && echo "all checks passed ($WORK)" || echo "some checks failed ($WORK)"
exit "$FAILED"
