#!/usr/bin/env bash
# Reproduce docs/results.md through the real CLI: long-range tasks (passkey retrieval, associative
# recall) and language modelling on the Python standard library, for every memory kind at a
# matched state footprint, then the tables and the loss-by-segment plot.
#
#   scripts/reproduce.sh           # CPU, about an hour: 8k-token task documents, segments of 256, 9 kinds
#   scripts/reproduce.sh --smoke   # a few minutes: tiny sizes, checks the pipeline end to end
#   scripts/reproduce.sh --gpu     # one GPU: a larger model, 16k-token documents, more steps
#
# Environment: PYTHON (default python3), KINDS (default: every memory kind),
# OUT (default runs/reproduce-<mode>), RESULTS (default docs/results.md; --smoke: $OUT/results.md).
# Every command run is appended to $OUT/commands.txt; a variant that fails is reported as failed.
set -euo pipefail

MODE=full
for arg in "$@"; do
  case "$arg" in
    --smoke) MODE=smoke ;;
    --gpu) MODE=gpu ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "reproduce.sh: unknown argument $arg (use --smoke or --gpu)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
KINDS=${KINDS:-none elastic xl memorizing melodi infinity armt caching rmt}
SEED=0
#              task_len count seg d_model layers heads mlp order task_steps lm_steps lm_segments batch eval_docs device
case "$MODE" in
  smoke) set -- 1024     40    128  32      2      2     96   32    4          4        4           2     4         cpu ;;
  full)  set -- 8192     120   256  128     2      4     384  64    12         60       8           4     12        cpu ;;
  gpu)   set -- 16384    2000  512  512     8      8     1536 128   2000       4000     16          16    200       cuda ;;
esac
TASK_LEN=$1 COUNT=$2 SEG=$3 D=$4 LAYERS=$5 HEADS=$6 MLP=$7 ORDER=$8 TASK_STEPS=$9
LM_STEPS=${10} LM_SEGS=${11} BATCH=${12} EVAL_DOCS=${13} DEVICE=${14}
OUT=${OUT:-runs/reproduce-$MODE}
DATA=$OUT/data
if [ "$MODE" = smoke ]; then RESULTS=${RESULTS:-$OUT/results.md}; else RESULTS=${RESULTS:-docs/results.md}; fi
mkdir -p "$OUT"
: > "$OUT/commands.txt"
printf 'mode=%s\nseed=%s\nkinds=%s\n' "$MODE" "$SEED" "$(echo $KINDS | tr ' ' ',')" > "$OUT/settings.txt"

run() {  # log the exact command, then run it; its output goes to $OUT/logs/<first word of $LOG>.log
  echo "$*" >> "$OUT/commands.txt"
  mkdir -p "$OUT/logs"
  "$@" > "$OUT/logs/$LOG.log" 2>&1
}

memory_overrides() {  # matched footprint: every kind holds about the floats of Elastic Memory of order $ORDER
  local kind=$1
  case "$kind" in
    none) echo "memory.kind=none" ;;
    elastic) echo "memory.kind=elastic memory.order=$ORDER memory.samples=$ORDER memory.schedule=uniform" ;;
    xl) echo "memory.kind=xl memory.layers=all memory.cache=$ORDER" ;;
    memorizing) echo "memory.kind=memorizing memory.layers=[$((LAYERS / 2))] memory.store=$((LAYERS * ORDER)) memory.topk=$((ORDER / 2))" ;;
    melodi) echo "memory.kind=melodi memory.layers=all memory.short_tokens=$((ORDER / 2)) memory.summary_tokens=$((ORDER / 4))" \
                 "memory.long_layer=$((LAYERS / 2)) memory.long_tokens=$((ORDER / 4)) memory.long_store=$((LAYERS * ORDER / 4))" ;;
    # sized per layer for order 64 (see each overlay's comment); the table reports the floats each holds
    infinity|armt|caching|rmt) echo "recipes/memory/$kind.yaml" ;;
    *) echo "memory.kind=$kind" ;;
  esac
}

train_and_eval() {  # $1 dataset name, $2 data dir, $3 tokenizer, $4 steps, $5 segments per window, $6 kind
  local name=$1 data=$2 tokenizer=$3 steps=$4 segs=$5 kind=$6 vocab
  vocab=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$data/meta.json")
  local dir=$OUT/runs/$name-$kind
  # shellcheck disable=SC2046
  LOG=train-$name-$kind run "$PY" -m elastic_cli train recipes/tiny.yaml \
      model.vocab_size="$vocab" model.d_model="$D" model.n_layer="$LAYERS" model.n_head="$HEADS" \
      model.mlp_hidden="$MLP" model.segment_len="$SEG" $(memory_overrides "$kind") \
      data.path="$data" data.tokenizer="$tokenizer" train.steps="$steps" train.warmup=$((steps / 10)) \
      train.global_batch="$BATCH" train.micro_batch=$((BATCH / 2 > 0 ? BATCH / 2 : 1)) train.segments="$segs" \
      train.bptt_segments=$(((segs + 3) / 4)) train.seed="$SEED" train.eval_every=0 train.save_every=0 \
      run.device="$DEVICE" run.dir="$dir" --overwrite || { echo "  $name/$kind: training failed (see $OUT/logs)"; return 0; }
  local compare=()
  [ "$kind" = elastic ] && compare=(--compare-schedules uniform,exponential)
  LOG=eval-$name-$kind run "$PY" -m elastic_cli eval --ckpt "$dir" --data "$data" --split test \
      --max-docs "$EVAL_DOCS" "${compare[@]}" --json "$OUT/eval/$name-$kind.json" \
      || echo "  $name/$kind: evaluation failed (see $OUT/logs)"
}

mkdir -p "$OUT/eval"
echo "reproduce ($MODE): data"
for task in passkey recall; do
  LOG=prepare-$task run "$PY" -m elastic_cli prepare --task "$task" --length "$TASK_LEN" --count "$COUNT" \
      --seed "$SEED" --test-frac 0.1 --tokenizer tokenizers/books-8k.model --out "$DATA/$task"
done
LOG=prepare-code run "$PY" -m elastic_cli prepare --corpus python-stdlib --tokenizer tokenizers/code-8k.model \
    --out "$DATA/code"

for kind in $KINDS; do
  echo "reproduce ($MODE): $kind"
  for task in passkey recall; do
    train_and_eval $task "$DATA/$task" tokenizers/books-8k.model "$TASK_STEPS" $((TASK_LEN / SEG)) "$kind"
  done
  train_and_eval code "$DATA/code" tokenizers/code-8k.model "$LM_STEPS" "$LM_SEGS" "$kind"
done

LOG=results run "$PY" scripts/results.py "$OUT" --out "$RESULTS" --mode "$MODE"
echo "reproduce ($MODE): wrote $RESULTS"
