#!/bin/bash
# Service mode through keyd replicas, on one machine, in one run (the machine is noisy, so only
# numbers from the same run are compared):
#
#   ratio     Decrypt throughput of `kms serve` standalone (its own keystore) against service
#             mode through one keyd, with the plugin's DEK cache off (--keyd-cache-ttl 0: every
#             Decrypt reaches keyd) and on (the default), same client load, rounds interleaved;
#   replicas  the same through one and through three replicas (--keyd a,b,c), cache off;
#   failover  Decrypt load through three replicas, one replica SIGKILLed by the load generator
#             (--kill-pid): the longest time without an answer, the calls in flight, latency
#             around the kill; then the replica restarted and the time until it serves again.
#
#   cargo build --release -p coffer      # or set R=target/debug (slower, same shape)
#   bench/keyd-replicas.sh [all|ratio|replicas|failover]
#
# Environment: R binary directory (target/release); PORT first keyd port (17450, then +1, +2);
# DURATION per run (10s); ROUNDS interleaved rounds (3); CONCURRENCY callers (16);
# PLUGIN_CPU / KEYD_CPU the CPUs for generator + plugin and for keyd (0 / 1; KEYD_CPU= leaves
# everything unpinned); KEYD_FLAGS extra `keyd serve` flags (e.g. "--audit-aggregate-interval
# 10s"); STORE=etcd serves every replica from one etcd (`etcd` on PATH, started on
# ETCD_PORT, default 17470, in the temporary directory) instead of its data directory. keyd's CPU (all replicas, from /proc) is printed beside each run. The replicas are copies of one data directory (same root secret and
# keyrings), each with its own audit log; keyd runs with --rate-limit 0.
set -eu
R="${R:-$PWD/target/release}"
PORT="${PORT:-17450}"
DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-3}"
CONCURRENCY="${CONCURRENCY:-16}"
PLUGIN_CPU="${PLUGIN_CPU-0}"
KEYD_CPU="${KEYD_CPU-1}"
KEYD_FLAGS="${KEYD_FLAGS:-}"
STORE="${STORE:-dir}"
ETCD_PORT="${ETCD_PORT:-17470}"
WHAT="${1:-all}"
case "$WHAT" in all|ratio|replicas|failover) ;; *) echo "usage: $0 [all|ratio|replicas|failover]" >&2; exit 2;; esac
COFFER="$R/coffer"
[ -x "$COFFER" ] || { echo "no $COFFER: run cargo build --release -p coffer first (or set R)" >&2; exit 1; }
if [ -n "$KEYD_CPU" ] && ! command -v taskset >/dev/null; then
    echo "taskset not found (util-linux): install it or run with KEYD_CPU= (no pinning)" >&2; exit 1
fi
# Command prefixes that pin to a CPU; taskset execs the command, so $! is the process itself.
PIN_PLUGIN=(); PIN_KEYD=()
[ -n "$KEYD_CPU" ] && PIN_PLUGIN=(taskset -c "$PLUGIN_CPU") && PIN_KEYD=(taskset -c "$KEYD_CPU")

D=$(mktemp -d /tmp/coffer-keyd-replicas.XXXX)
PIDS=()
KEYD_PIDS=(0 0 0)
cleanup() { for p in "${PIDS[@]}" "${KEYD_PIDS[@]}"; do [ "$p" != 0 ] && kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
signer() { # the sim signer of the platform state in $1 (created if missing)
    "$COFFER" attest evidence --platform sim --state-dir "$1" --output "$D/ev.json" 2>/dev/null
    "$COFFER" attest verify --evidence "$D/ev.json" 2>/dev/null | sed -n 's/.*"signer": *"\([0-9a-f]*\)".*/\1/p'
}
role_policy() { printf 'version: 1\nallow_simulation: true\nroles:\n  - name: %s\n    sim: { signer: ["%s"] }\n' "$1" "$2"; }
wait_log() { # file text: waits up to 20 s for text in file
    for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    cat "$1" >&2; return 1
}

"$COFFER" keyd init --platform sim --data-dir "$D/k0" >/dev/null 2>&1
"$COFFER" keyd keyring create cluster-a --platform sim --data-dir "$D/k0" >/dev/null 2>&1
cp -a "$D/k0" "$D/k1"; cp -a "$D/k0" "$D/k2"
STORE_FLAGS=()
if [ "$STORE" = etcd ]; then
    command -v etcd >/dev/null || { echo "STORE=etcd needs etcd on PATH (apt-get install etcd-server)" >&2; exit 1; }
    etcd --data-dir "$D/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-cluster "default=http://127.0.0.1:$((ETCD_PORT + 1))" > "$D/etcd.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        "$COFFER" keyd migrate --platform sim --data-dir "$D/k0" --to-etcd "127.0.0.1:$ETCD_PORT" \
            >/dev/null 2>&1 && break
        sleep 0.2
    done
    STORE_FLAGS=(--store etcd --etcd-endpoints "127.0.0.1:$ETCD_PORT")
fi
role_policy kms-plugin "$(signer "$D/p")" > "$D/policy.yaml"
role_policy keyd "$(signer "$D/k0")" > "$D/keyd-policy.yaml"
printf 'keyrings:\n  cluster-a:\n    wrap: [kms-plugin]\n    unwrap: [kms-plugin]\n    status: [kms-plugin]\n' > "$D/keyd.yaml"

start_keyd() { # i: starts replica i on PORT+i
    local i="$1"
    "${PIN_KEYD[@]}" "$COFFER" --log-level warn keyd serve --platform sim --data-dir "$D/k$i" \
        --listen "127.0.0.1:$((PORT + i))" --policy "$D/policy.yaml" --config "$D/keyd.yaml" \
        --rate-limit 0 --replica-id "keyd-$i" "${STORE_FLAGS[@]}" $KEYD_FLAGS 2>> "$D/keyd$i.log" &
    KEYD_PIDS[$i]=$!
}
start_plugin() { # name state-dir flags...: starts a plugin on socket $D/name.sock
    local name="$1" state="$2"; shift 2
    "${PIN_PLUGIN[@]}" "$COFFER" --log-level warn kms serve --platform sim --state-dir "$state" \
        --socket "$D/$name.sock" "$@" 2> "$D/$name.log" &
    PIDS+=($!)
    eval "PID_${name//-/_}=$!"
    for _ in $(seq 200); do [ -S "$D/$name.sock" ] && return 0; sleep 0.1; done
    cat "$D/$name.log" >&2; return 1
}
for i in 0 1 2; do start_keyd "$i"; done
for i in 0 1 2; do wait_log "$D/keyd$i.log" "listening on"; done
ONE="127.0.0.1:$PORT"
THREE="127.0.0.1:$PORT,127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))"
svc=(--keyd-keyring cluster-a --keyd-policy "$D/keyd-policy.yaml")
start_plugin standalone "$D/s"
start_plugin one-nocache "$D/p" --keyd "$ONE" "${svc[@]}" --keyd-cache-ttl 0
start_plugin three-nocache "$D/p" --keyd "$THREE" "${svc[@]}" --keyd-cache-ttl 0
start_plugin one-cache "$D/p" --keyd "$ONE" "${svc[@]}"
sleep 2 # service-mode plugins connect to keyd

keyd_ticks() { # CPU ticks (user + system) used so far by the running replicas
    local total=0 p
    for p in "${KEYD_PIDS[@]}"; do
        [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}
run() { # name [bench flags...]: one measured run; prints name, ops/s, p50, p99, CPU, errors
    local name="$1"; shift
    local pid_var="PID_${name//-/_}"
    local out t0 k0
    t0=$(date +%s%N); k0=$(keyd_ticks)
    out=$("${PIN_PLUGIN[@]}" "$COFFER" --log-level error bench kms --socket "$D/$name.sock" \
        --duration "$DURATION" --concurrency "$CONCURRENCY" --op decrypt \
        --plugin-pid "${!pid_var}" --json "$@")
    local n; n() { echo "$out" | grep -o "\"$1\": *[0-9.]*" | head -1 | sed 's/.*: *//'; }
    local keyd_cores
    keyd_cores=$(awk -v k="$(( $(keyd_ticks) - k0 ))" -v hz="$(getconf CLK_TCK)" -v ns="$(( $(date +%s%N) - t0 ))" \
        'BEGIN { printf "%.2f", k / hz / (ns / 1e9) }')
    local errors; errors=$(echo "$out" | tr -d ' \n' | sed -n 's/.*"errors":{\([^}]*\)}.*/\1/p')
    printf '%-32s %8.0f ops/s  p50 %6s µs  p99 %7s µs  plugin %s cores  keyd %s cores  errors %s\n' \
        "$name${*:+ $*}" "$(n ops_per_sec)" "$(n p50_us)" "$(n p99_us)" \
        "$(n plugin_cpu_cores | cut -c1-4)" "$keyd_cores" "${errors:-none}"
}

echo "# $(date -u +%FT%TZ), $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $("$COFFER" --version), binaries $R; plugin + generator on CPU ${PLUGIN_CPU:-any}, keyd on CPU ${KEYD_CPU:-any}; c$CONCURRENCY, $DURATION per run; keyd flags: ${KEYD_FLAGS:-none}; store: $STORE"
if [ "$WHAT" = all ] || [ "$WHAT" = ratio ] || [ "$WHAT" = replicas ]; then
    for round in $(seq "$ROUNDS"); do
        echo "## round $round"
        run standalone
        run one-nocache
        [ "$WHAT" != ratio ] && run three-nocache
        if [ "$WHAT" != replicas ]; then
            run one-cache
            # More distinct DEKs than the cache holds: every Decrypt reaches keyd again.
            run one-cache --ciphertexts 4096
        fi
    done
fi
if [ "$WHAT" = all ] || [ "$WHAT" = failover ]; then
    echo "## failover: replica 0 (pid ${KEYD_PIDS[0]}) SIGKILLed 3s into a 12s run through three replicas, restarted 3s later"
    unwraps() { grep -c '"event":"unwrap"' "$D/k0/audit.log" 2>/dev/null || true; }
    (
        sleep 7 # 1 s warm-up + kill at 3 s + 3 s
        before=$(unwraps)
        t0=$(date +%s%N)
        start_keyd 0
        for _ in $(seq 1000); do
            [ "$(unwraps)" -gt "$before" ] && break
            sleep 0.01
        done
        t1=$(date +%s%N)
        echo "restarted replica 0 served its first Decrypt $(( (t1 - t0) / 1000000 )) ms after it was started (start-up included)"
        echo "${KEYD_PIDS[0]}" > "$D/restarted.pid"
    ) > "$D/restart.txt" &
    RESTARTER=$!
    "${PIN_PLUGIN[@]}" "$COFFER" --log-level error bench kms --socket "$D/three-nocache.sock" \
        --duration 12s --concurrency "$CONCURRENCY" --op decrypt --plugin-pid "$PID_three_nocache" \
        --kill-pid "${KEYD_PIDS[0]}" --kill-after 3s
    wait "$RESTARTER"
    cat "$D/restart.txt"
    KEYD_PIDS[0]=$(cat "$D/restarted.pid" 2>/dev/null || echo 0)
fi
