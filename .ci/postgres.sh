#!/usr/bin/env bash
# Installs (if missing) and starts a PostgreSQL server on loopback for the
# settlement tests, with a role and a database `meshpay`. Prints the URL to
# put in MESHPAY_TEST_POSTGRES. Safe to run again.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi
version="$(ls /usr/lib/postgresql | sort -n | tail -1)"
if ! pg_lsclusters -h | awk '{print $2}' | grep -qx main; then
  pg_createcluster "$version" main >&2
fi
pg_ctlcluster "$version" main start >&2 || true
for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 && break
  sleep 0.2
done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='meshpay'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE ROLE meshpay LOGIN PASSWORD 'meshpay'\"" >&2
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='meshpay'\"" | grep -q 1 \
  || su postgres -c "createdb -O meshpay meshpay" >&2
echo "postgres://meshpay:meshpay@127.0.0.1:5432/meshpay"
