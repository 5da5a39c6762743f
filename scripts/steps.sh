# Sourced by scripts/gpu-check.sh and scripts/bench-cpu.sh from the repository root:
#   parse_args LINES ARGS...   --dry-run sets DRY=1; -h/--help prints lines LINES (e.g. 2,17) of the
#                              calling script's header; anything else exits 2
#   step NAME LIMIT_S CMD...   run CMD under a time limit, log to $OUT/NAME.log, append the command to
#                              $OUT/commands.txt and {"step", "rc", "seconds", "limit_s"} to $OUT/steps.jsonl;
#                              with DRY=1 print the step and its limit instead, and write nothing.
step() {  # step NAME LIMIT_S CMD...: run CMD under a time limit, log to $OUT/NAME.log, record rc and seconds
  local name=$1 limit=$2
  shift 2
  if [ "$DRY" = 1 ]; then
    echo "[$name, at most ${limit} s] $*"
    return 0
  fi
  echo "$*" >> "$OUT/commands.txt"
  local t0 rc=0
  t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  printf '{"step": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" \
    >> "$OUT/steps.jsonl"
  echo "$(basename "$0" .sh): $name rc=$rc ($(( $(date +%s) - t0 )) s; log $OUT/$name.log)"
}

parse_args() {
  local lines=$1 arg
  shift
  DRY=0
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY=1 ;;
      -h|--help) sed -n "${lines}p" "$SCRIPT" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) echo "$(basename "$SCRIPT"): unknown argument $arg (use --dry-run or --help)" >&2; exit 2 ;;
    esac
  done
}
