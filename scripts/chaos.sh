#!/usr/bin/env bash
# Chaos soak (issue #5): three real `quorate serve` processes on loopback, peer links
# through fault-injecting proxies, clients on every node, random faults from a seed
# (kills, SIGSTOP pauses, partitions, one-way cuts, node replacement, clock skew), then a checker
# that must find 0 violations. Prints the full log and, at the end, the summary:
# operations, faults injected by kind, unknown outcomes, recovery times, violations.
#
#   scripts/chaos.sh                       # 10 minutes, random seed (printed)
#   scripts/chaos.sh --minutes 30 --seed 7 # replay / longer run
#   scripts/chaos.sh --release             # optimized node and test binaries
#
# Options:
#   --minutes N   duration of the fault phase (default 10; fractions allowed)
#   --seed S      seed of the fault schedule and the clients (default: random)
#   --release     build in release mode (slower to build, faster nodes)
#   --out FILE    also write the summary to FILE (default target/chaos/summary-<seed>.txt)
#
# The full log goes to target/chaos/soak-<seed>.log. The short, fixed-seed version of
# this run is part of `cargo test` (tests/chaos.rs, bounded_chaos_run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MINUTES=10
SEED=""
PROFILE=()
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --release) PROFILE=(--release); shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "$SEED" ]]; then
  SEED=$(( ($(date +%s) * 7919 + $$) % 1000000007 ))
fi
mkdir -p target/chaos
OUT=${OUT:-target/chaos/summary-$SEED.txt}
LOG=target/chaos/soak-$SEED.log

echo "chaos soak: ${MINUTES} min, seed $SEED, log $LOG, summary $OUT"
# Build first so the fault phase's clock does not include compilation.
cargo test -p quorate --test chaos "${PROFILE[@]}" --no-run
set +e
QUORATE_CHAOS_MINUTES="$MINUTES" QUORATE_CHAOS_SEED="$SEED" QUORATE_CHAOS_SUMMARY="$OUT" \
  cargo test -p quorate --test chaos "${PROFILE[@]}" -- --ignored --exact soak --nocapture \
  2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
echo
echo "command: scripts/chaos.sh --minutes $MINUTES --seed $SEED ${PROFILE[*]}"
[[ -f "$OUT" ]] && cat "$OUT"
exit "$status"
