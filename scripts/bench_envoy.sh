#!/usr/bin/env bash
# Envoy's ShouldRateLimit (gRPC) beside POST /v1/rate/check (HTTP): latency under a
# closed-loop load on a local three-node cluster (release build, loopback, this
# machine). Envoy's default timeout for the call is 20 ms; the p99 column says how
# far from it quorate is.
#
#   scripts/bench_envoy.sh                       # 16 and 64 clients, via the leader
#   scripts/bench_envoy.sh --via follower        # include forwarding
#   scripts/bench_envoy.sh --clients 64 --requests 40000
#
# Prints a markdown table (protocol, clients, ops/s, p50/p99/p99.9/max ms). Nodes use
# ports 17401-17403 (API), 17501-17503 (Raft), 17601-17603 (gRPC), data in a temp
# dir, and are stopped by PID on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/bench_cluster.sh
source "$ROOT/scripts/bench_cluster.sh"
CLIENTS=16,64
REQUESTS=20000
VIA=leader
while [[ $# -gt 0 ]]; do
  case "$1" in
    --clients) CLIENTS=$2; shift ;;
    --requests) REQUESTS=$2; shift ;;
    --via) VIA=$2; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

(cd "$ROOT" && cargo build --release --locked -p quorate -p quorate-bench --bin quorate --bin quorate-bench)
QUORATE=$ROOT/target/release/quorate
BENCH=$ROOT/target/release/quorate-bench
WORK=$(mktemp -d -t quorate-envoy-bench.XXXXXX)
PIDS=()
trap bench_cleanup EXIT

cat >"$WORK/cluster.toml" <<EOF
cluster_id = "envoy-bench"
data_dir = "./data"
$(for i in 1 2 3; do printf '\n[[nodes]]\nid = %d\napi_addr = "127.0.0.1:1740%d"\nraft_addr = "127.0.0.1:1750%d"\ngrpc_addr = "127.0.0.1:1760%d"\n' "$i" "$i" "$i" "$i"; done)

[[envoy.domains]]
domain = "bench"

[[envoy.domains.descriptors]]
key = "remote_address"
rate_limit = { requests_per_unit = 1000000, unit = "hour" }
EOF

for id in 1 2 3; do
  QUORATE_LOG=warn "$QUORATE" serve --config "$WORK/cluster.toml" --node "$id" >>"$WORK/node-$id.log" 2>&1 &
  PIDS+=($!)
done
for i in 1 2 3; do
  "$BENCH" wait-ready --url "http://127.0.0.1:1740$i/readyz" --timeout-s 60 >/dev/null \
    || { echo "node $i not ready:"; tail -20 "$WORK/node-$i.log"; exit 1; } >&2
done
leader=$("$BENCH" leader --target 127.0.0.1:17401)
node=$leader
if [[ $VIA == follower ]]; then node=$(( leader % 3 + 1 )); fi
echo "leader: node $leader; measuring via node $node ($VIA); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BENCH" envoy --grpc "127.0.0.1:1760$node" --http "127.0.0.1:1740$node" --domain bench \
  --clients "$CLIENTS" --requests "$REQUESTS" --keys 10000 --limit 1000000
