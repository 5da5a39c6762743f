# Sourced by scripts/gpu-check.sh and scripts/bench-cpu.sh (which set OUT and DRY):
#   step NAME LIMIT_S CMD...   run CMD under a time limit, log to $OUT/NAME.log, append the command to
#                              $OUT/commands.txt and {"step", "rc", "seconds", "limit_s"} to $OUT/steps.jsonl;
#                              with DRY=1 print the step and its limit instead.
step() {  # step NAME LIMIT_S CMD...: run CMD under a time limit, log to $OUT/NAME.log, record rc and seconds
  local name=$1 limit=$2
  shift 2
  echo "$*" >> "$OUT/commands.txt"
  if [ "$DRY" = 1 ]; then
    echo "[$name, at most ${limit} s] $*"
    return 0
  fi
  local t0 rc=0
  t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  printf '{"step": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" \
    >> "$OUT/steps.jsonl"
  echo "$(basename "$0" .sh): $name rc=$rc ($(( $(date +%s) - t0 )) s; log $OUT/$name.log)"
}
