#!/usr/bin/env bash
# Comparative benchmark (issues #7, #22): quorate (3 nodes; clients round-robin over the
# nodes and, separately, straight to the leader) vs Redis + Lua (single node, no
# persistence) vs Redis + Lua with `appendfsync always` vs etcd (3 members), all on
# loopback on this machine, with server CPU per decision (user and system, per
# process); then quorate's state size, restart and catch-up times. Writes
# docs/benchmarks.md and prints it.
#
#   scripts/bench.sh              # full run (~15 min on 2 cores)
#   scripts/bench.sh --quick      # smoke run (~3 min): fewer requests and client counts
#
# Options:
#   --quick             short run
#   --systems LIST      comma-separated subset of quorate,redis,redis-aof,etcd (default:
#                       all; redis-aof = Redis with appendonly yes, appendfsync always)
#   --workloads LIST    subset of hot,spread,rate (default: all)
#   --clients LIST      client counts (default 1,16,64,256; quick: 16,64)
#   --routes LIST       how quorate clients reach the cluster: round-robin, round-robin-stream
#                       (round-robin over decision streams, POST /v1/stream), leader, and
#                       leader-stream (leader-direct over decision streams) (default all four)
#   --requests N        attempts per cell, same for every system
#   --no-state          skip quorate's state/restart/catch-up measurements
#   --fill-rate-keys N  rate keys the state section fills (default 1000000; quick: 100000)
#   --fill-leases N     leases the state section fills (default 100000; quick: 10000)
#   --profile           perf-profile the quorate leader and a follower (hot, 1 and 64 clients)
#   --no-install        never apt-get install
#   --keep              keep the temp dir (data, logs, raw results)
#   --out FILE          report path (default docs/benchmarks.md)
#
# QUORATE_BENCH_BIN=/path/to/quorate benchmarks another quorate build (a before/after
# comparison on the same machine) instead of this tree's release build.
#
# Every server is started here on non-default loopback ports with data in a temp dir,
# and stopped by PID on exit. Nothing is sent anywhere but 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/bench_cluster.sh
source "$ROOT/scripts/bench_cluster.sh"
CMDLINE="scripts/bench.sh $*"
QUICK=0
SYSTEMS=quorate,redis,redis-aof,etcd
WORKLOADS=hot,spread,rate
ROUTES=round-robin,round-robin-stream,leader,leader-stream
CLIENTS=""
REQUESTS=""
STATE=1
PROFILE=0
INSTALL=1
KEEP=0
OUT="$ROOT/docs/benchmarks.md"
FILL_RATE_KEYS_ARG=""
FILL_LEASES_ARG=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --systems) SYSTEMS=$2; shift ;;
    --workloads) WORKLOADS=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --routes) ROUTES=$2; shift ;;
    --requests) REQUESTS=$2; shift ;;
    --no-state) STATE=0 ;;
    --fill-rate-keys) FILL_RATE_KEYS_ARG=$2; shift ;;
    --fill-leases) FILL_LEASES_ARG=$2; shift ;;
    --profile) PROFILE=1 ;;
    --no-install) INSTALL=0 ;;
    --keep) KEEP=1 ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

# Attempts per cell: the same for every system; fewer at low client counts, where
# every system is latency-bound (overridden by --requests).
requests_for() { # clients
  if [[ -n $REQUESTS ]]; then echo "$REQUESTS"; return; fi
  if [[ $QUICK == 1 ]]; then
    if [[ $1 -le 16 ]]; then echo 1000; else echo 3000; fi
  else
    if [[ $1 -le 1 ]]; then echo 2000; elif [[ $1 -le 16 ]]; then echo 5000; else echo 20000; fi
  fi
}

if [[ $QUICK == 1 ]]; then
  CLIENTS=${CLIENTS:-16,64}
  MAX_SECONDS=20
  FILL_RATE_KEYS=100000
  FILL_LEASES=10000
else
  CLIENTS=${CLIENTS:-1,16,64,256}
  MAX_SECONDS=60
  FILL_RATE_KEYS=1000000
  FILL_LEASES=100000
fi
FILL_RATE_KEYS=${FILL_RATE_KEYS_ARG:-$FILL_RATE_KEYS}
FILL_LEASES=${FILL_LEASES_ARG:-$FILL_LEASES}

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
has() { [[ ",$1," == *",$2,"* ]]; }

# ---------------------------------------------------------------------------------------
# Install what is missing.
need=()
{ has "$SYSTEMS" redis || has "$SYSTEMS" redis-aof; } && ! command -v redis-server >/dev/null && need+=(redis-server)
has "$SYSTEMS" etcd && ! command -v etcd >/dev/null && need+=(etcd-server)
has "$SYSTEMS" etcd && ! command -v etcdctl >/dev/null && need+=(etcd-client)
[[ $PROFILE == 1 ]] && ! command -v perf >/dev/null && need+=(linux-perf)
if [[ ${#need[@]} -gt 0 ]]; then
  if [[ $INSTALL == 0 ]]; then echo "missing: ${need[*]} (and --no-install)" >&2; exit 1; fi
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# ---------------------------------------------------------------------------------------
# Build.
log "building release binaries"
BINS=(--bin quorate-bench)
PKGS=(-p quorate-bench)
if has "$SYSTEMS" quorate && [[ -z ${QUORATE_BENCH_BIN:-} ]]; then BINS+=(--bin quorate); PKGS+=(-p quorate); fi
(cd "$ROOT" && cargo build --release "${PKGS[@]}" "${BINS[@]}")
BENCH="$ROOT/target/release/quorate-bench"
QUORATE="${QUORATE_BENCH_BIN:-$ROOT/target/release/quorate}"

# ---------------------------------------------------------------------------------------
# Temp dir, process bookkeeping, cleanup.
WORK=$(mktemp -d /tmp/quorate-bench.XXXXXX)
RESULTS="$WORK/results.jsonl"
EXTRAS="$WORK/extras.tsv"
: >"$RESULTS"
: >"$EXTRAS"
declare -A PID=()

stop_pid() { # name signal
  local p=${PID[$1]:-}
  [[ -z $p ]] && return 0
  kill "-${2:-TERM}" "$p" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  unset "PID[$1]"
}

cleanup() {
  local rc=$?
  for name in "${!PID[@]}"; do stop_pid "$name" TERM; done
  if [[ $KEEP == 1 || $rc != 0 ]]; then
    log "kept $WORK (logs, data, raw results)"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

extra() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$EXTRAS"; }
jq_get() { # json key  (flat JSON from quorate-bench; no jq needed)
  sed -E "s/.*\"$2\":(null|\"[^\"]*\"|[0-9.]+).*/\1/" <<<"$1"
}

wait_until() { # timeout_s cmd...
  local t=$1; shift
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if [[ $SECONDS -ge $end ]]; then return 1; fi
    sleep 0.1
  done
}

# ---------------------------------------------------------------------------------------
# Servers.
# Non-default ports, unlikely to collide with a developer's `quorate up` (7101..) or
# test clusters; checked free before starting.
REDIS_PORT=26379
REDIS_AOF_PORT=26380
ETCD_CLIENT=(23791 23792 23793)
ETCD_PEER=(23801 23802 23803)
Q_API=(27101 27102 27103)
Q_RAFT=(27201 27202 27203)

ports_free() { # port...
  local p
  for p in "$@"; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
      echo "port $p is already in use; stop whatever listens there" >&2
      exit 1
    fi
  done
}

start_redis() {
  ports_free $REDIS_PORT
  mkdir -p "$WORK/redis"
  redis-server --bind 127.0.0.1 --port $REDIS_PORT --dir "$WORK/redis" \
    --appendonly no --save "" --daemonize no --loglevel warning \
    --logfile "$WORK/redis/redis.log" &
  PID[redis]=$!
  wait_until 20 bash -c "redis-cli -p $REDIS_PORT ping | grep -q PONG" || { echo "redis did not start" >&2; exit 1; }
  extra env "Redis" "$(redis-server --version | awk '{print $3}' | tr -d 'v=') — single node, appendonly no, save \"\" (no persistence)"
}

# The same Redis, persisting every write before answering it (one fsync per write, as
# quorate fsyncs every log entry before it acknowledges).
start_redis_aof() {
  ports_free $REDIS_AOF_PORT
  mkdir -p "$WORK/redis-aof"
  redis-server --bind 127.0.0.1 --port $REDIS_AOF_PORT --dir "$WORK/redis-aof" \
    --appendonly yes --appendfsync always --save "" --daemonize no --loglevel warning \
    --logfile "$WORK/redis-aof/redis.log" &
  PID[redis_aof]=$!
  wait_until 20 bash -c "redis-cli -p $REDIS_AOF_PORT ping | grep -q PONG" || { echo "redis (aof) did not start" >&2; exit 1; }
  extra env "Redis appendfsync always" "the same redis-server, appendonly yes, appendfsync always (every write fsync'd before the reply)"
}

start_etcd() {
  ports_free "${ETCD_CLIENT[@]}" "${ETCD_PEER[@]}"
  local cluster="" i
  for i in 0 1 2; do cluster+="${cluster:+,}e$((i + 1))=http://127.0.0.1:${ETCD_PEER[$i]}"; done
  for i in 0 1 2; do
    local n=e$((i + 1))
    mkdir -p "$WORK/etcd"
    etcd --name $n --data-dir "$WORK/etcd/$n" \
      --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-token quorate-bench \
      --initial-cluster-state new --logger zap --log-level warn \
      --auto-compaction-mode periodic --auto-compaction-retention 1m \
      >"$WORK/etcd/$n.log" 2>&1 &
    PID[etcd$i]=$!
  done
  for i in 0 1 2; do
    wait_until 60 bash -c "curl -fsS http://127.0.0.1:${ETCD_CLIENT[$i]}/health | grep -q '\"health\":\"true\"'" \
      || { echo "etcd member $i did not become healthy" >&2; exit 1; }
  done
  extra env "etcd" "$(etcd --version | awk '/etcd Version/{print $3}') — 3 members on loopback, fsync'd WAL, auto-compaction every minute"
}

quorate_config() {
  bench_cluster_config "$WORK/quorate/cluster.toml" quorate-bench "$WORK/quorate/data" \
    "${Q_API[@]}" "${Q_RAFT[@]}"
}

start_quorate_node() { # id
  local id=$1
  QUORATE_LOG=warn "$QUORATE" serve --config "$WORK/quorate/cluster.toml" --node "$id" \
    >>"$WORK/quorate/node-$id.log" 2>&1 &
  PID[q$id]=$!
}

start_quorate() {
  ports_free "${Q_API[@]}" "${Q_RAFT[@]}"
  mkdir -p "$WORK/quorate"
  quorate_config
  for id in 1 2 3; do start_quorate_node $id; done
  for i in 0 1 2; do
    "$BENCH" wait-ready --url "http://127.0.0.1:${Q_API[$i]}/readyz" --timeout-s 60 >/dev/null \
      || { echo "quorate node $((i + 1)) not ready; see $WORK/quorate/node-$((i + 1)).log" >&2; exit 1; }
  done
  extra env "quorate" "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') (+ working tree) — 3 nodes, release build, [server] worker_threads = 1, QUORATE_LOG=warn"
}

pids_of() {
  case $1 in
    quorate) echo "${PID[q1]:-},${PID[q2]:-},${PID[q3]:-}" ;;
    redis) echo "${PID[redis]:-}" ;;
    redis-aof) echo "${PID[redis_aof]:-}" ;;
    etcd) echo "${PID[etcd0]:-},${PID[etcd1]:-},${PID[etcd2]:-}" ;;
  esac
}

# Names of the pids of pids_of, in order (quorate: node ids, so the report can tell
# the leader's CPU from the followers').
pid_names_of() {
  case $1 in
    quorate) echo "1,2,3" ;;
    redis) echo "redis" ;;
    redis-aof) echo "redis-aof" ;;
    etcd) echo "etcd1,etcd2,etcd3" ;;
  esac
}

# The load generator's --system for a system of this script, plus its extra flags.
bench_system_of() {
  case $1 in
    redis-aof) echo "redis" ;;
    *) echo "$1" ;;
  esac
}

targets_of() {
  case $1 in
    quorate) echo "127.0.0.1:${Q_API[0]},127.0.0.1:${Q_API[1]},127.0.0.1:${Q_API[2]}" ;;
    redis) echo "127.0.0.1:$REDIS_PORT" ;;
    redis-aof) echo "127.0.0.1:$REDIS_AOF_PORT" ;;
    etcd) echo "127.0.0.1:${ETCD_CLIENT[0]},127.0.0.1:${ETCD_CLIENT[1]},127.0.0.1:${ETCD_CLIENT[2]}" ;;
  esac
}

quorate_leader_pid() {
  local leader
  leader=$("$BENCH" leader --target "127.0.0.1:${Q_API[0]}") || return 1
  echo "${PID[q$leader]}"
}

# ---------------------------------------------------------------------------------------
# Load.
sched=""
for c in ${CLIENTS//,/ }; do sched+="${sched:+, }$c clients: $(requests_for "$c")"; done
extra env "Load generator" "quorate-bench (2 tokio threads) on the same machine; attempts per cell ($sched); cell cap ${MAX_SECONDS} s"
extra env "Load average at start (1/5/15 min)" "$(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine competes for the CPUs)"

route_flags() { # route -> bench flags
  case $1 in
    leader-stream) echo "--route leader --protocol stream" ;;
    round-robin-stream) echo "--route round-robin --protocol stream" ;;
    *) echo "--route $1" ;;
  esac
}

bench_run() { # system workload clients [extra flags...]
  local sys=$1 w=$2 c=$3
  shift 3
  local label=()
  [[ $sys == redis-aof ]] && label=(--label "appendfsync always")
  "$BENCH" run --system "$(bench_system_of "$sys")" --workload "$w" --clients "$c" \
    --requests "$(requests_for "$c")" \
    --targets "$(targets_of "$sys")" --pids "$(pids_of "$sys")" --pid-names "$(pid_names_of "$sys")" \
    --max-seconds "$MAX_SECONDS" --out "$RESULTS" "${label[@]}" "$@"
}

run_system() { # system
  local sys=$1 w
  for w in ${WORKLOADS//,/ }; do
    local c
    for c in ${CLIENTS//,/ }; do
      if [[ $PROFILE == 1 && $sys == quorate && $w == hot && ( $c == 1 || $c == 64 ) ]]; then
        profile_run "$sys" "$w" "$c"
      elif [[ $sys == quorate ]]; then
        local route
        # shellcheck disable=SC2046 # route_flags prints separate flags
        for route in ${ROUTES//,/ }; do bench_run "$sys" "$w" "$c" $(route_flags "$route"); done
      else
        bench_run "$sys" "$w" "$c"
      fi
    done
  done
  # Supplementary cells for the hot-key target: no hold time; etcd's guard recipe.
  if has "$WORKLOADS" hot && [[ $sys != redis-aof ]]; then
    bench_run "$sys" hot 64 --hold-ms 0
    [[ $sys == etcd ]] && bench_run etcd hot 64 --etcd-sem guard
  fi
  return 0
}

# Mean batch sizes over the whole quorate session, from each node's counters: ops per
# log entry on the leader's batcher, writes per forwarding request on followers.
batch_sizes() {
  local id m
  for id in 1 2 3; do
    m=$(curl -fsS -m 5 "http://127.0.0.1:${Q_API[$((id - 1))]}/metrics" 2>/dev/null) || continue
    extra env "quorate node $id: log entries / ops (mean per entry); forward requests / writes (mean per request)" \
      "$(awk '$1=="quorate_batches_total"{b=$2} $1=="quorate_batched_ops_total"{o=$2}
              $1=="quorate_forward_batches_total"{fb=$2} $1=="quorate_forward_batched_ops_total"{fo=$2}
              END{printf "%d / %d (%.1f); %d / %d (%.1f)", b, o, (b ? o/b : 0), fb, fo, (fb ? fo/fb : 0)}' <<<"$m")"
  done
}

profile_run() { # system workload clients
  # The measured cells run without perf attached; then a separate run of the same
  # cell (clients straight to the leader) is profiled on the leader and on one
  # follower at once (its numbers are not reported). Appends to profile.txt.
  local route
  # shellcheck disable=SC2046 # route_flags prints separate flags
  for route in ${ROUTES//,/ }; do bench_run "$1" "$2" "$3" $(route_flags "$route"); done
  local leader lpid fpid id
  leader=$("$BENCH" leader --target "127.0.0.1:${Q_API[0]}") || return 0
  lpid=${PID[q$leader]}
  for id in 1 2 3; do [[ $id != "$leader" ]] && { fpid=${PID[q$id]}; break; }; done
  log "profiling quorate leader (pid $lpid) and a follower (pid $fpid) during a separate $2/$3 run"
  perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$lpid" -o "$WORK/perf-leader-$3.data" >/dev/null 2>&1 &
  local perf_l=$!
  perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$fpid" -o "$WORK/perf-follower-$3.data" >/dev/null 2>&1 &
  local perf_f=$!
  sleep 0.5
  "$BENCH" run --system "$1" --workload "$2" --clients "$3" --requests 1000000 --route leader \
    --targets "$(targets_of "$1")" --max-seconds 15 --out "$WORK/profile-run.jsonl" || true
  kill -INT $perf_l $perf_f 2>/dev/null || true
  wait $perf_l $perf_f 2>/dev/null || true
  set +o pipefail
  local role
  for role in leader follower; do
    local data="$WORK/perf-$role-$3.data"
    {
      echo "### $role, $2 workload, $3 clients (leader-direct)"
      echo
      echo '```'
      echo "perf record -e cpu-clock -F 499 --call-graph dwarf -p <$role pid>, 15 s (release build)"
      echo
      echo "== CPU by thread (comm) =="
      perf report -i "$data" --no-children --sort comm --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -8
      echo
      echo "== user vs kernel, by shared object =="
      perf report -i "$data" --no-children --sort dso --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -6
      echo
      echo "== top symbols (self time) =="
      perf report -i "$data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -25 | cut -c1-150
      echo
      echo "== inclusive time (children) of selected frames =="
      perf report -i "$data" --children --sort symbol --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' \
        | grep -E 'quorate_|openraft::|serde_json::|bincode::internal|__x64_sys_|hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_loop|reqwest::async_impl::client::Client::execute_request|tracing|prometheus' \
        | grep -v '{{closure}}' | head -30 | cut -c1-150
      echo '```'
      echo
    } >>"$WORK/profile.txt" || true
  done
  set -o pipefail
}

for sys in ${SYSTEMS//,/ }; do
  log "=== $sys ==="
  case $sys in
    redis) start_redis ;;
    redis-aof) start_redis_aof ;;
    etcd) start_etcd ;;
    quorate) start_quorate ;;
    *) echo "unknown system $sys" >&2; exit 2 ;;
  esac
  run_system "$sys"
  [[ $sys == quorate ]] && batch_sizes
  if [[ $sys == quorate && $STATE == 1 ]]; then
    : # state measurements below, on this cluster
  else
    case $sys in
      redis) stop_pid redis ;;
      redis-aof) stop_pid redis_aof ;;
      etcd) for i in 0 1 2; do stop_pid etcd$i; done ;;
      quorate) for id in 1 2 3; do stop_pid q$id; done ;;
    esac
  fi
done

# ---------------------------------------------------------------------------------------
# quorate: state size, restart, catch-up of a wiped follower.
if has "$SYSTEMS" quorate && [[ $STATE == 1 ]]; then
  log "filling quorate: $FILL_RATE_KEYS rate keys, $FILL_LEASES leases"
  fill=$("$BENCH" fill --targets "$(targets_of quorate)" --clients 64 \
    --rate-keys "$FILL_RATE_KEYS" --leases "$FILL_LEASES")
  log "fill: $fill"
  extra state "Fill" "$fill"
  sleep 3 # let housekeeping and any snapshot settle
  leader=$("$BENCH" leader --target "127.0.0.1:${Q_API[0]}")
  follower=$(( leader % 3 + 1 ))
  for id in 1 2 3; do
    rss=$(awk '/VmRSS/{print $2}' "/proc/${PID[q$id]}/status")
    hwm=$(awk '/VmHWM/{print $2}' "/proc/${PID[q$id]}/status")
    size=$(du -sb "$WORK/quorate/data/node-$id" | cut -f1)
    role=follower; [[ $id == "$leader" ]] && role=leader
    extra state "node $id ($role): RSS / peak RSS / data dir (raftlog/ + snapshot + sled/)" \
      "$((rss / 1024)) MiB / $((hwm / 1024)) MiB / $((size / 1024 / 1024)) MiB"
  done

  peer_addr="127.0.0.1:${Q_API[$((leader - 1))]}"
  node_addr="127.0.0.1:${Q_API[$((follower - 1))]}"

  # Runs after a node was (re)started: times readiness and catch-up, then checks the
  # node is still alive a few seconds later. Args: label.
  time_node() {
    local label=$1 out
    if out=$(RUST_BACKTRACE=0 "$BENCH" catch-up --node "$node_addr" --peer "$peer_addr" --timeout-s 300 --pid "${PID[q$follower]}"); then
      extra state "$label: until /readyz 200" "$(jq_get "$out" ready_ms) ms"
      extra state "$label: until applied index ≥ leader's commit index at start ($(jq_get "$out" target_index))" "$(jq_get "$out" caught_up_ms) ms"
    else
      extra state "$label" "**did not become ready and caught up** (within 300 s or before exiting): ${out:-no output}"
    fi
    sleep 3
    if kill -0 "${PID[q$follower]}" 2>/dev/null; then
      extra state "$label: node $follower RSS / data dir 3 s later" \
        "$(( $(awk '/VmRSS/{print $2}' "/proc/${PID[q$follower]}/status") / 1024 )) MiB / $(( $(du -sb "$WORK/quorate/data/node-$follower" | cut -f1) / 1024 / 1024 )) MiB"
    else
      local why
      why=$(grep -E 'ERROR|panicked|quorate:' "$WORK/quorate/node-$follower.log" | tail -1 | cut -c1-200 | tr '|' '/')
      extra state "$label: **node $follower exited**" "${why:-see node log}"
      unset "PID[q$follower]"
      start_quorate_node $follower # bring it back for the next step, if any
      sleep 1
    fi
  }

  log "restart of follower $follower with its state (SIGKILL, restart)"
  stop_pid q$follower KILL
  start_quorate_node $follower
  time_node "restart of follower $follower (SIGKILL → restart)"

  # A voter that lost its data must not rejoin as itself (README "Replacing a node"): it
  # should refuse and exit. Recorded as refused or, if it ever came back, as a failure.
  log "wiped follower $follower restarted without the membership call (must refuse)"
  stop_pid q$follower KILL
  rm -rf "$WORK/quorate/data/node-$follower"
  start_quorate_node $follower
  refuse_t0=$(date +%s%N)
  while kill -0 "${PID[q$follower]}" 2>/dev/null && (( ($(date +%s%N) - refuse_t0) < 60000000000 )); do sleep 0.1; done
  if kill -0 "${PID[q$follower]}" 2>/dev/null; then
    extra state "wiped follower $follower restarted as itself" "**still running after 60 s** (it should refuse to rejoin)"
    stop_pid q$follower KILL
  else
    extra state "wiped follower $follower restarted as itself (no membership call)" "refused and exited after $(( ($(date +%s%N) - refuse_t0) / 1000000 )) ms, as designed"
  fi
  unset "PID[q$follower]"

  # The documented way to replace a node: remove it, start it empty, add it back.
  log "wiped follower $follower replaced through the membership API"
  stop_pid q$follower KILL
  rm -rf "$WORK/quorate/data/node-$follower"
  t0=$(date +%s%N)
  del=$(curl -sS -m 60 -X DELETE "http://$peer_addr/v1/members/$follower" 2>&1 || true)
  start_quorate_node $follower
  sleep 0.2
  add=$(curl -sS -m 60 -X POST "http://$peer_addr/v1/members" -H 'content-type: application/json' \
    -d "{\"id\":$follower,\"api_addr\":\"$node_addr\",\"raft_addr\":\"127.0.0.1:${Q_RAFT[$((follower - 1))]}\"}" 2>&1 || true)
  t1=$(date +%s%N)
  if [[ $add == *'"members"'* ]]; then
    extra state "replace wiped follower $follower: DELETE /v1/members/$follower, start empty, POST /v1/members (returns once the learner caught up and was promoted)" "$(( (t1 - t0) / 1000000 )) ms"
    time_node "replaced follower $follower, after POST /v1/members returned"
  else
    extra state "replace wiped follower $follower via membership API" "**failed**: delete: ${del:0:120}; add: ${add:0:160}"
  fi
  for id in 1 2 3; do stop_pid q$id; done
fi

# ---------------------------------------------------------------------------------------
# Report.
mkdir -p "$(dirname "$OUT")"
"$BENCH" report --results "$RESULTS" --extras "$EXTRAS" \
  --profile "$WORK/profile.txt" --notes "$ROOT/crates/bench/notes.md" \
  --command "$CMDLINE" --data-dir "$WORK" --out "$OUT"
log "report written to $OUT"
