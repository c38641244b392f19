#!/usr/bin/env bash
# Runs the fuzz targets one after another, N minutes each (default 10), at
# the lowest CPU priority, one libFuzzer process at a time:
#   tests/fuzz/run.sh [MINUTES] [TARGET...]
# Works on a stable toolchain (RUSTC_BOOTSTRAP=1 unlocks the -Z flags
# cargo-fuzz passes). SANITIZER=none skips AddressSanitizer. Each run's
# libFuzzer output goes to tests/fuzz/logs/<target>.log (ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
minutes=${1:-10}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(wire_decode wire_extensions http_request request_target lsd_search release)
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/tests/fuzz/target}
export RUSTC_BOOTSTRAP=1
mkdir -p tests/fuzz/logs
status=0
# Largest input per target: above the parser's own size limit, so the
# "too long" paths are reached (libFuzzer's default is 4096 bytes).
max_len() {
  case $1 in
    http_request) echo 20480 ;;   # MAX_HEAD is 16 KiB
    request_target) echo 9216 ;;  # MAX_TARGET is 8 KiB
    *) echo 4096 ;;               # LSD's MAX_MSG is 2 KiB
  esac
}
for t in "${targets[@]}"; do
  mkdir -p "tests/fuzz/corpus/$t"
  echo "== $t: $minutes min"
  # First corpus dir: where libFuzzer writes new inputs; the seeds are read only.
  if nice -n 19 cargo fuzz run --fuzz-dir tests/fuzz -s "${SANITIZER:-address}" "$t" \
    "tests/fuzz/corpus/$t" "tests/fuzz/seeds/$t" -- \
    -max_total_time=$((minutes * 60)) -max_len="$(max_len "$t")" -print_final_stats=1 \
    >"tests/fuzz/logs/$t.log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs' \
      "tests/fuzz/logs/$t.log" || true
  else
    echo "   $t FAILED (crash or build error): see tests/fuzz/logs/$t.log"
    status=1
  fi
done
exit $status
