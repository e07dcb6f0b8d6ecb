#!/bin/bash
# Ten taps between two `meshpay node run --ble-emulated` processes on this
# machine (an emulated air, see docs/ble.md): prints each `meshpay pay
# --nearby` round trip, then the payer's "connection to receipt" times
# sorted. MESHPAY=path/to/meshpay (default: meshpay on PATH), MTU=23..517.
set -e
M=${MESHPAY:-meshpay}
R=$(mktemp -d)
I=$($M issuer new --out $R/issuer.key)
for n in payer shop; do $M init --data-dir $R/$n --issuer $I --no-mdns >/dev/null; done
$M node run --data-dir $R/payer --no-mdns --listen /ip4/127.0.0.1/tcp/0 --ble-emulated $R/air --ble-position 0,0 --ble-mtu ${MTU:-247} 2>$R/payer.log & P1=$!
$M node run --data-dir $R/shop --no-mdns --listen /ip4/127.0.0.1/tcp/0 --ble-emulated $R/air --ble-position 1,0 --ble-mtu ${MTU:-247} 2>$R/shop.log & P2=$!
trap "kill $P1 $P2; rm -rf $R" EXIT
sleep 2
W=$($M status --json --data-dir $R/payer | python3 -c 'import json,sys;print(json.load(sys.stdin)["wallet"])')
A=$($M issuer allowance --key $R/issuer.key --wallet $W --amount 100.00)
$M allowance add --data-dir $R/payer $A
sleep 2
for i in $(seq 1 10); do
  $M request --data-dir $R/shop 1.00 >/dev/null
  s=$(date +%s.%N)
  $M pay --data-dir $R/payer --nearby --amount 1.00 >/dev/null
  e=$(date +%s.%N)
  echo "cli $(python3 -c "print(round(($e-$s)*1000))") ms"
  sleep 1.5
done
grep "payment to" $R/payer.log | sed 's/.*, \([0-9.]*\) ms.*/\1/' | sort -n | tr '\n' ' '; echo
