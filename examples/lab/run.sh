#!/usr/bin/env bash
# A lab mesh on one machine: a settlement service and N meshpay nodes on
# loopback, chained as node1 <- node2 <- ... <- nodeN (each dials the
# previous one); node N loads an allowance online, pays node N-1 a few
# times offline, every ledger converges, and the receipts reach settlement
# through node1, the only gateway, sealed; every outbox empties.
#
#   bash examples/lab/run.sh [N]        (N = 3..20, default 4)
#
# Everything lives in a temporary directory that is printed at the start;
# the nodes are stopped when the script ends. Each step prints what it
# does, so a person can follow along (or copy the commands).
set -euo pipefail
N=${1:-4}
if ! [[ "$N" =~ ^[0-9]+$ ]] || (( N < 3 || N > 20 )); then
  echo "usage: $0 [N]  with 3 <= N <= 20" >&2
  exit 2
fi
cd "$(dirname "$0")/../.."
cargo build --release -q -p meshpay-node
M=$PWD/target/release/meshpay
LAB=$(mktemp -d -t meshpay-lab.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
say() { printf '\n== %s\n' "$*"; }

say "lab directory: $LAB"
ISSUER=$("$M" issuer new --out "$LAB/issuer.key")
echo "issuer root key: $ISSUER"

say "the settlement service (the issuer's side, online)"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$LAB/operator.token"
"$M" settlement serve --data-dir "$LAB/settlement" --issuer-key "$LAB/issuer.key" \
  --listen 127.0.0.1:0 --operator-token-file "$LAB/operator.token" 2>"$LAB/settlement.log" &
PIDS+=($!)
for _ in $(seq 100); do [[ -s "$LAB/settlement/settlement.addr" ]] && break; sleep 0.1; done
SETTLEMENT="http://$(cat "$LAB/settlement/settlement.addr")"
echo "settlement at $SETTLEMENT"
http() {  # http METHOD PATH [JSON]: call the service, print the JSON answer
  python3 - "$SETTLEMENT" "$@" "$(cat "$LAB/operator.token")" <<'PY'
import json, sys, urllib.request
url, method, path = sys.argv[1], sys.argv[2], sys.argv[3]
body = sys.argv[4].encode() if len(sys.argv) > 5 else None
req = urllib.request.Request(url + path, data=body, method=method,
    headers={"Content-Type": "application/json", "Authorization": "Bearer " + sys.argv[-1]})
print(urllib.request.urlopen(req).read().decode())
PY
}

addr_of() {  # the libp2p address of a running node
  "$M" status --json --data-dir "$1" |
    python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["listening"][0]+"/p2p/"+v["peer_id"])'
}
wait_up() {
  for _ in $(seq 100); do "$M" status --data-dir "$1" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "node $1 did not start" >&2; exit 1
}

PREV=""
for i in $(seq 1 "$N"); do
  D="$LAB/node$i"
  "$M" init --data-dir "$D" --issuer "$ISSUER" --no-mdns >/dev/null
  ARGS=(node run --data-dir "$D" --listen /ip4/127.0.0.1/tcp/0 --no-mdns --sync-interval 1)
  [[ -n "$PREV" ]] && ARGS+=(--peer "$PREV")
  [[ "$i" == 1 ]] && ARGS+=(--settlement "$SETTLEMENT")   # node1 is the gateway
  RUST_LOG=info "$M" "${ARGS[@]}" 2>"$D/node.log" &
  PIDS+=($!)
  wait_up "$D"
  PREV=$(addr_of "$D")
  echo "node$i up at $PREV"
done

say "node$N's owner deposits 150.00 EUR and loads a 100.00 EUR allowance (online, before the ship sails)"
WALLET=$("$M" status --json --data-dir "$LAB/node$N" | python3 -c 'import json,sys; print(json.load(sys.stdin)["wallet"])')
http POST /v1/deposits "{\"wallet\": \"$WALLET\", \"amount\": 15000, \"reference\": \"lab-till-1\"}"
"$M" allowance load --data-dir "$LAB/node$N" --settlement "$SETTLEMENT" --amount 100.00

say "node$N pays node$((N-1)) three times (its neighbour on the mesh)"
for amount in 4.50 12.00 3.20; do
  TOKEN=$("$M" request --data-dir "$LAB/node$((N-1))" "$amount" --memo "lab")
  echo "node$((N-1)) asks $amount; node$N pays: $("$M" pay --data-dir "$LAB/node$N" "$TOKEN")"
done

say "the ledgers converge across the chain (node1 never met node$N)"
for _ in $(seq 60); do
  DIGESTS=$(for i in $(seq 1 "$N"); do "$M" status --json --data-dir "$LAB/node$i" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ledger_digest"])'; done | sort -u | wc -l)
  [[ "$DIGESTS" == 1 ]] && break
  sleep 0.5
done
for i in $(seq 1 "$N"); do
  printf 'node%-3s ' "$i"; "$M" status --data-dir "$LAB/node$i" | grep ledger
done
say "node$((N-1))'s history"
"$M" history --data-dir "$LAB/node$((N-1))"
[[ "$DIGESTS" == 1 ]] && echo "all $N ledgers agree" || { echo "ledgers did not converge" >&2; exit 1; }

say "the receipts travel sealed to node1, which uploads them; acknowledgements come back"
for _ in $(seq 60); do
  LEFT=$(for i in $(seq 1 "$N"); do "$M" status --json --data-dir "$LAB/node$i" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["outbox"] + v["carried"])'; done | awk '{s+=$1} END {print s}')
  [[ "$LEFT" == 0 ]] && break
  sleep 0.5
done
PAYEE=$("$M" status --json --data-dir "$LAB/node$((N-1))" | python3 -c 'import json,sys; print(json.load(sys.stdin)["wallet"])')
echo "node$((N-1))'s online balance: $(http GET "/v1/accounts/$PAYEE")"
[[ "$LEFT" == 0 ]] && echo "every receipt settled; every outbox is empty" || { echo "outboxes not empty" >&2; exit 1; }
