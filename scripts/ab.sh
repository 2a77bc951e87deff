#!/usr/bin/env bash
# Interleaved A/B pairs of quorate builds on one benchmark cell (issue #22): for each
# round, every build in turn gets a fresh 3-node cluster (configured as
# scripts/bench.sh configures it: one runtime thread per node) and one
# `quorate-bench run`; then the medians per build. One run on this 2-core VM spreads
# ±5–15 % at 64 clients and more at one client, so a change is judged on the medians
# of interleaved pairs, never on one run.
#
#   scripts/ab.sh [options] NAME=BINARY[:VAR=VALUE] [NAME=BINARY[:VAR=VALUE] ...]
#
#   --workload hot|rate   (default hot)
#   --clients N           (default 64)
#   --requests N          attempts per run (default 30000; 1 client: use ~3000)
#   --route leader|round-robin   (default leader)
#   --rounds N            (default 3)
#
# `:VAR=VALUE` runs that build's nodes with one environment variable set, e.g. the same
# binary twice: n3=target/release/quorate n1=target/release/quorate:QUORATE_SERVER_BATCH_MAX_IN_FLIGHT=1
# `:protocol=stream` instead sends that build's decisions over decision streams
# (`quorate-bench --protocol stream`): http=target/release/quorate stream=target/release/quorate:protocol=stream
#
# Example (a build of the previous commit against this tree's):
#   scripts/ab.sh --clients 64 before=/tmp/quorate-before after=target/release/quorate
#
# Prints one line per run and a median line per build: ops/s, p50/p99, CPU µs per
# decision for the whole cluster and per node (l = leader, f = follower), from
# /proc as quorate-bench measures it. Nothing leaves 127.0.0.1.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench_cluster.sh
source "$ROOT/scripts/bench_cluster.sh"
WORKLOAD=hot CLIENTS=64 REQUESTS=30000 ROUTE=leader ROUNDS=3
BUILDS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --workload) WORKLOAD=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --route) ROUTE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *=*) BUILDS+=("$1"); shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ ${#BUILDS[@]} -ge 1 ]] || { echo "give at least one NAME=BINARY" >&2; exit 2; }
(cd "$ROOT" && cargo build --release -q -p quorate-bench --bin quorate-bench)
BENCH="$ROOT/target/release/quorate-bench"
WORK=$(mktemp -d /tmp/quorate-ab.XXXXXX)
PIDS=()
trap bench_cleanup EXIT

# Ports well away from bench.sh's and the tests'.
API=(28101 28102 28103) RAFT=(28201 28202 28203)

one_run() { # name binary env-assignment out
  local name=$1 bin=$2 env=$3 out=$4 protocol=http
  if [[ $env == protocol=* ]]; then protocol=${env#protocol=} env=""; fi
  rm -rf "$WORK/data"
  bench_cluster_config "$WORK/cluster.toml" quorate-ab "$WORK/data" "${API[@]}" "${RAFT[@]}"
  PIDS=()
  for i in 1 2 3; do
    env ${env:+"$env"} QUORATE_LOG=warn "$bin" serve --config "$WORK/cluster.toml" --node "$i" \
      >"$WORK/node-$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 0 1 2; do
    "$BENCH" wait-ready --url "http://127.0.0.1:${API[$i]}/readyz" --timeout-s 60 >/dev/null
  done
  "$BENCH" run --system quorate --workload "$WORKLOAD" --clients "$CLIENTS" \
    --requests "$REQUESTS" --route "$ROUTE" --protocol "$protocol" \
    --targets "127.0.0.1:${API[0]},127.0.0.1:${API[1]},127.0.0.1:${API[2]}" \
    --pids "${PIDS[0]},${PIDS[1]},${PIDS[2]}" --pid-names 1,2,3 \
    --out "$WORK/$name.jsonl" >/dev/null 2>"$WORK/run.err" \
    || { cat "$WORK/run.err" "$WORK"/node-*.log >&2; exit 1; }
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
  tail -n 1 "$WORK/$name.jsonl" >>"$out"
}

for round in $(seq 1 "$ROUNDS"); do
  for b in "${BUILDS[@]}"; do
    name=${b%%=*} rest=${b#*=}
    bin=${rest%%:*} env=""
    [[ $rest == *:* ]] && env=${rest#*:}
    one_run "$name" "$bin" "$env" "$WORK/all-$name.jsonl"
    python3 - "$name" "$WORK/all-$name.jsonl" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[2])][-1]
procs = " / ".join(f"{p['role'][0]}{p['user_us_per_op'] + p['sys_us_per_op']:.0f}" for p in r["server_procs"])
cpu = r["server_user_us_per_op"] + r["server_sys_us_per_op"]
print(f"{sys.argv[1]:>10}  ops/s {r['ops_per_s']:>7.0f}  p50 {r['p50_ms']:.2f}  p99 {r['p99_ms']:.2f} ms  "
      f"CPU {cpu:>5.0f} us/decision ({procs})  over-admissions {r['over_admissions']}", flush=True)
PY
  done
done

echo "medians over $ROUNDS rounds ($WORKLOAD, $CLIENTS clients, $ROUTE):"
for b in "${BUILDS[@]}"; do
  name=${b%%=*}
  python3 - "$name" "$WORK/all-$name.jsonl" <<'PY'
import json, statistics, sys
rs = [json.loads(l) for l in open(sys.argv[2])]
med = lambda f: statistics.median(f(r) for r in rs)
cpu = med(lambda r: r["server_user_us_per_op"] + r["server_sys_us_per_op"])
print(f"{sys.argv[1]:>10}  ops/s {med(lambda r: r['ops_per_s']):>7.0f}  p50 {med(lambda r: r['p50_ms']):.2f}  "
      f"p99 {med(lambda r: r['p99_ms']):.2f} ms  CPU {cpu:>5.0f} us/decision")
PY
done
