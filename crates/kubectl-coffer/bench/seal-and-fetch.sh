#!/bin/bash
# kubectl coffer timings for BENCHMARKS.md: fetch-key with verification, sealing 1,000 values
# offline, re-sealing and inspecting them (release build, simulation platform, local keyd).
set -eu
R="${R:-$PWD/target/release}"   # run from the repository root after cargo build --release -p coffer -p kubectl-coffer
export PATH="$R:$PATH"
D=$(mktemp -d /tmp/b10.XXXX); cd $D
coffer keyd init --platform sim --data-dir $D/keyd >/dev/null 2>&1
coffer keyd keyring create apps --platform sim --data-dir $D/keyd >/dev/null 2>&1
printf 'version: 1\nallow_simulation: true\nroles: []\n' > callers.yaml
printf 'keyrings:\n  apps: {}\n' > keyd.yaml
coffer keyd serve --platform sim --data-dir $D/keyd --listen 127.0.0.1:17443 --policy callers.yaml --config keyd.yaml 2> keyd.log &
KP=$!
trap "kill $KP; rm -rf $D" EXIT
sleep 2
coffer attest evidence --platform sim --state-dir $D/keyd --output keyd-evidence.json 2>/dev/null
SIGNER=$(coffer attest verify --evidence keyd-evidence.json 2>/dev/null | sed -n 's/.*"signer": *"\([0-9a-f]*\)".*/\1/p')
printf 'version: 1\nallow_simulation: true\nroles:\n  - name: keyd\n    sim: { signer: ["%s"] }\n' "$SIGNER" > keyd-policy.yaml
# Seconds one run of a command takes; a failing run stops the script (no time for a failure).
t() { local s=$(date +%s.%N); "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; exit 1; }; local e=$(date +%s.%N); echo "$e - $s" | bc; }
echo "fetch-key with verification (sim), 10 runs, s:"
for i in $(seq 10); do t kubectl-coffer fetch-key --keyd 127.0.0.1:17443 --keyring apps --policy keyd-policy.yaml -o b$i.json; done | sort -n | tr '\n' ' '; echo
kubectl-coffer fetch-key --keyd 127.0.0.1:17443 --keyring apps --policy keyd-policy.yaml -o bundle.json 2>/dev/null
python3 - <<'PY'
import base64,os
lines=["apiVersion: v1","kind: Secret","metadata:","  name: big","  namespace: shop","stringData:"]
for i in range(1000):
    lines.append(f"  key-{i:04d}: {base64.b64encode(os.urandom(48)).decode()}")
open("big.yaml","w").write("\n".join(lines)+"\n")
PY
echo "seal -f of 1,000 values (64-byte strings), pinned bundle, kubectl-coffer directly, 5 runs, s:"
for i in $(seq 5); do t kubectl-coffer seal -f big.yaml --key-bundle bundle.json; done | sort -n | tr '\n' ' '; echo
echo "same through kubectl coffer, 5 runs, s:"
for i in $(seq 5); do t kubectl coffer seal -f big.yaml --key-bundle bundle.json; done | sort -n | tr '\n' ' '; echo
kubectl-coffer seal -f big.yaml --key-bundle bundle.json > sealed.yaml 2>/dev/null
echo "re-seal of the sealed output (all kept), 5 runs, s:"
for i in $(seq 5); do t kubectl-coffer seal -f sealed.yaml --key-bundle bundle.json; done | sort -n | tr '\n' ' '; echo
echo "inspect of 1,000 sealed values, 5 runs, s:"
for i in $(seq 5); do t kubectl-coffer inspect -f sealed.yaml --key-bundle bundle.json; done | sort -n | tr '\n' ' '; echo
echo "baseline: kubectl create secret generic --dry-run=client of 1 value, 5 runs, s:"
for i in $(seq 5); do t kubectl create secret generic x --from-literal a=b --dry-run=client -o yaml; done | sort -n | tr '\n' ' '; echo
ls -la sealed.yaml | awk '{print "sealed manifest bytes:", $5}'
