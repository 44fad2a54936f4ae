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

start_nginx_backend

# instructions BIN REQUESTS: total instructions lameduck ran to start, serve REQUESTS, and stop.
instructions() {
  local out="$TMP/callgrind.out" log="$TMP/ld.log" port pid
  rm -f "$out".*
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" --trace-children=no \
    "$1" --port 0 --bind 127.0.0.1 --upstream "http://127.0.0.1:$P_BACKEND" --grace-period 5s \
    >"$log" 2>&1 &
  pid=$!
  PIDS+=($pid)
  port=$(lameduck_port "$log" 600) # valgrind starts slowly
  wait_http "http://127.0.0.1:$port/ready" || die "lameduck never became ready under valgrind"
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
