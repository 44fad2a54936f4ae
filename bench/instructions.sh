#!/usr/bin/env bash
# CPU instructions per proxied request, counted by valgrind (callgrind): the same count whatever
# else the shared machine is doing, so two builds compare exactly where wall-clock benchmarks
# are noise. Each binary serves keep-alive requests from 16 connections in front of an nginx
# `return 200` backend, in two runs, one three times as long as the other; the difference in
# instructions divided by the difference in requests is the cost of one request, startup
# excluded.
#
# The client: wrk (HTTP/1.1, as browsers, load balancers and SDKs speak; the default) for
# SECONDS and 3×SECONDS, or ab -k (HTTP/1.0 keep-alive, served by hyper) for N and 3N requests.
#
#   bench/instructions.sh BIN [BIN...]        # e.g. /tmp/lameduck-before target/release/lameduck
#   CLIENT=ab N=4000 bench/instructions.sh BIN
set -uo pipefail
BENCH_NAME=instructions
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/common.sh"
(($#)) || die "usage: bench/instructions.sh BIN [BIN...]"
N=${N:-4000}
SECONDS_SHORT=${SECONDS_SHORT:-3}
CLIENT=${CLIENT:-wrk}
install_missing nginx:nginx-light ab:apache2-utils wrk:wrk valgrind:valgrind curl:curl

start_nginx_backend

# instructions BIN SIZE: total instructions lameduck ran to start, serve a run of SIZE (requests
# for ab, seconds for wrk), and stop; and the requests served.
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
  local served
  if [[ $CLIENT == ab ]]; then
    ab -q -k -c 16 -n "$2" "http://127.0.0.1:$port/" >"$TMP/ab.txt" 2>&1 || { cat "$TMP/ab.txt" >&2; die "ab failed"; }
    grep -q "^Failed requests: *0" "$TMP/ab.txt" || { cat "$TMP/ab.txt" >&2; die "requests failed"; }
    served=$2
  else
    wrk -t1 -c16 -d"$2"s "http://127.0.0.1:$port/" >"$TMP/wrk.txt" 2>&1 || { cat "$TMP/wrk.txt" >&2; die "wrk failed"; }
    grep -q "Non-2xx\|Socket errors" "$TMP/wrk.txt" && { cat "$TMP/wrk.txt" >&2; die "requests failed"; }
    served=$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")
  fi
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null
  echo "$(awk '/^summary:/ {print $2}' "$out".* | awk '{s += $1} END {print s}') $served"
}

if [[ $CLIENT == ab ]]; then size=$N; else size=$SECONDS_SHORT; fi
log "$CLIENT: each binary serves two runs of keep-alive requests (sizes $size and $((3 * size))) under callgrind"
echo "| binary ($CLIENT) | instructions per request |"
echo "|---|---:|"
for bin in "$@"; do
  read -r i1 n1 < <(instructions "$bin" "$size")
  read -r i2 n2 < <(instructions "$bin" "$((3 * size))")
  per=$(awk -v a="$i1" -v b="$i2" -v n="$n1" -v m="$n2" 'BEGIN {printf "%.0f", (b - a) / (m - n)}')
  log "$bin: $i1 instructions for $n1 requests, $i2 for $n2"
  echo "| $bin | $per |"
done
