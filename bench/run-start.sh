#!/bin/bash
# The "coffer run and Unseal" numbers of BENCHMARKS.md on one machine: starts a sim keyd on
# loopback (keyring apps; role app, the workload's sim signer, may unseal in namespace bench),
# then runs `coffer bench keyd-unseal` and `coffer bench run-start` against it.
#
#   cargo build --release -p coffer
#   bench/run-start.sh [all|keyd-unseal|run-start] [extra flags for the bench command]
#
# With `all` the extra flags go to both commands, so pass only flags both accept (--value-size,
# --json); name one command to tune it (--duration, --concurrency, --batch; --values, --runs).
# R overrides the binary directory (default target/release); PORT keyd's port (17444).
# Plaintexts are random bench values; coffer run writes them only under /dev/shm (tmpfs).
set -eu
R="${R:-$PWD/target/release}"
PORT="${PORT:-17444}"
WHAT="${1:-all}"
[ $# -gt 0 ] && shift
case "$WHAT" in all|keyd-unseal|run-start) ;; *) echo "usage: $0 [all|keyd-unseal|run-start] [flags]" >&2; exit 2;; esac
COFFER="$R/coffer"
[ -x "$COFFER" ] || { echo "no $COFFER: run cargo build --release -p coffer first (or set R)" >&2; exit 1; }

D=$(mktemp -d /tmp/coffer-run-start.XXXX)
KP=
cleanup() { [ -n "$KP" ] && kill "$KP" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
signer() { # the sim signer of the platform state in $1 (created if missing)
    "$COFFER" attest evidence --platform sim --state-dir "$1" --output "$D/ev.json" 2>/dev/null
    "$COFFER" attest verify --evidence "$D/ev.json" 2>/dev/null | sed -n 's/.*"signer": *"\([0-9a-f]*\)".*/\1/p'
}
role_policy() { printf 'version: 1\nallow_simulation: true\nroles:\n  - name: %s\n    sim: { signer: ["%s"] }\n' "$1" "$2"; }

"$COFFER" keyd init --platform sim --data-dir "$D/keyd" >/dev/null 2>&1
"$COFFER" keyd keyring create apps --platform sim --data-dir "$D/keyd" >/dev/null 2>&1
role_policy app "$(signer "$D/workload")" > "$D/policy.yaml"
role_policy keyd "$(signer "$D/keyd")" > "$D/keyd-policy.yaml"
printf 'keyrings:\n  apps:\n    unseal:\n      - role: app\n        namespaces: ["bench"]\n' > "$D/keyd.yaml"
"$COFFER" --log-level warn keyd serve --platform sim --data-dir "$D/keyd" --listen "127.0.0.1:$PORT" \
    --policy "$D/policy.yaml" --config "$D/keyd.yaml" 2> "$D/keyd.log" &
KP=$!
for _ in $(seq 100); do grep -q "listening on" "$D/keyd.log" && break; sleep 0.1; done
grep -q "listening on" "$D/keyd.log" || { cat "$D/keyd.log" >&2; exit 1; }

client=(--keyd "127.0.0.1:$PORT" --keyring apps --namespace bench --platform sim
        --state-dir "$D/workload" --keyd-policy "$D/keyd-policy.yaml")
echo "# $(date -u +%FT%TZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $("$COFFER" --version)"
if [ "$WHAT" != run-start ]; then
    echo "\$ coffer bench keyd-unseal ${client[*]} $*"
    "$COFFER" --log-level error bench keyd-unseal "${client[@]}" --keyd-pid "$KP" "$@"
fi
if [ "$WHAT" != keyd-unseal ]; then
    echo "\$ coffer bench run-start ${client[*]} $*"
    "$COFFER" --log-level error bench run-start "${client[@]}" --exe "$COFFER" "$@"
fi
