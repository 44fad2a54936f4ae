#!/usr/bin/env bash
# CPU instructions per proxied request, counted by valgrind (callgrind): the same count whatever
# else the shared machine is doing, so two builds compare exactly where wall-clock benchmarks
# are noise. Each binary serves N and then 3N keep-alive requests (ab -k -c16) in front of an
# nginx `return 200` backend; the difference divided by 2N is the cost of one request, startup
# excluded.
#
#   bench/instructions.sh BIN [BIN...]        # e.g. /tmp/lameduck-before target/release/lameduck
#   N=4000 bench/instructions.sh BIN
set -uo pipefail
BENCH_NAME=instructions
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/common.sh"
(($#)) || die "usage: bench/instructions.sh BIN [BIN...]"
N=${N:-4000}
install_missing nginx:nginx-light ab:apache2-utils valgrind:valgrind curl:curl

P_BACKEND=$(free_port)
mkdir -p "$TMP/backend"
USER_LINE=""
[[ $EUID -eq 0 ]] && USER_LINE="user root;"
cat >"$TMP/backend/nginx.conf" <<EOF
$USER_LINE
worker_processes 1;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_BACKEND; location / { return 200 "ok"; } }
}
EOF
nginx -p "$TMP/backend" -c "$TMP/backend/nginx.conf" -g 'daemon off;' 2>"$TMP/backend.log" &
PIDS+=($!)

# instructions BIN REQUESTS: total instructions lameduck ran to start, serve REQUESTS, and stop.
instructions() {
  local out="$TMP/callgrind.out" log="$TMP/ld.log" port="" pid
  rm -f "$out".*
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" --trace-children=no \
    "$1" --port 0 --bind 127.0.0.1 --upstream "http://127.0.0.1:$P_BACKEND" --grace-period 5s \
    >"$log" 2>&1 &
  pid=$!
  PIDS+=($pid)
  for _ in $(seq 300); do
    port=$(sed -n 's/.*listening.*address=[0-9.]*:\([0-9]*\).*/\1/p' "$log" | head -1)
    [[ -n $port ]] && curl -s -o /dev/null -m 2 "http://127.0.0.1:$port/ready" && break
    sleep 0.2
  done
  [[ -n $port ]] || { cat "$log" >&2; die "lameduck did not start under valgrind"; }
  ab -q -k -c 16 -n "$2" "http://127.0.0.1:$port/" >"$TMP/ab.txt" 2>&1 || { cat "$TMP/ab.txt" >&2; die "ab failed"; }
  grep -q "^Failed requests: *0" "$TMP/ab.txt" || { cat "$TMP/ab.txt" >&2; die "requests failed"; }
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null
  awk '/^summary:/ {print $2}' "$out".* | awk '{s += $1} END {print s}'
}

log "N=$N: each binary serves $N then $((3 * N)) keep-alive requests under callgrind"
echo "| binary | instructions per request |"
echo "|---|---:|"
for bin in "$@"; do
  small=$(instructions "$bin" "$N")
  large=$(instructions "$bin" "$((3 * N))")
  per=$(awk -v a="$small" -v b="$large" -v n="$N" 'BEGIN {printf "%.0f", (b - a) / (2 * n)}')
  log "$bin: $small for $N, $large for $((3 * N))"
  echo "| $bin | $per |"
done
