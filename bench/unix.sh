#!/usr/bin/env bash
# lameduck in front of one nginx `return 200` backend (1 worker) that listens both on TCP loopback
# and on a Unix socket: `--upstream http://127.0.0.1:PORT` against `--upstream unix:/PATH`,
# measured in interleaved rounds so that the machine's noise hits both alike. Reports the median
# of the rounds: requests/s, p50/p99, lameduck's CPU per request and the backend's (user+sys from
# /proc/PID/stat, divided by the requests served).
#
#   bench/unix.sh [BIN]                           # BIN defaults to a fresh release build
#   ROUNDS=5 DURATION=5s CONNS=64 bench/unix.sh
#
# Everything listens on 127.0.0.1 or in a temporary directory; every process started here is
# stopped on exit, and the directory (with the socket) removed.
set -uo pipefail
BENCH_NAME=unix
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/common.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
if [[ -n ${1:-} ]]; then LAMEDUCK=$1; else build_lameduck; fi
install_missing nginx:nginx-light wrk:wrk curl:curl

# The backend: one nginx worker, on a TCP port and a Unix socket at once.
SOCK="$TMP/backend/app.sock"
start_nginx_backend "unix:$SOCK"
curl -s -o /dev/null --unix-socket "$SOCK" http://localhost/ || die "the backend's socket does not answer"

start_lameduck tcp "$LAMEDUCK" "http://127.0.0.1:$P_BACKEND"
start_lameduck unix "$LAMEDUCK" "unix:$SOCK"

per_request() { awk -v d="$1" -v h="$CLK_TCK" -v n="${2:-0}" 'BEGIN {printf "%.1f", n ? 1e6 * d / h / n : 0}'; }

TARGETS=(tcp unix)
CLK_TCK=$(getconf CLK_TCK)
BACKEND_PIDS="$BACKEND_PID $(ps -o pid= --ppid "$BACKEND_PID")"
log "$ROUNDS interleaved rounds of wrk -t1 -c$CONNS -d$DURATION; load $(cut -d' ' -f1-3 /proc/loadavg)"
for t in "${TARGETS[@]}"; do # warm-up
  wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:${PORT[$t]}/" >/dev/null 2>&1
done
for round in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    out="$TMP/wrk-$t-$round.txt"
    c0=$(cpu_ticks "${PIDOF[$t]}")
    b0=$(cpu_ticks $BACKEND_PIDS)
    wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:${PORT[$t]}/" >"$out" 2>&1
    c1=$(cpu_ticks "${PIDOF[$t]}")
    b1=$(cpu_ticks $BACKEND_PIDS)
    n=$(awk '/requests in/ {print $1}' "$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$out")
    [[ -z $non2xx ]] || die "$t: $non2xx non-2xx answers"
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
    cpu=$(per_request $((c1 - c0)) "$n")
    bcpu=$(per_request $((b1 - b0)) "$n")
    echo "$t $rps $p50 $p99 $cpu $bcpu" >>"$TMP/rows"
    log "round $round $t: $rps req/s, p50 ${p50}us, p99 ${p99}us, lameduck ${cpu}us + backend ${bcpu}us CPU/request"
  done
done

echo
echo "Machine: $(nproc) cores, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo | sed 's/^ *//'); load at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t1 -c$CONNS -d$DURATION, $ROUNDS interleaved rounds, medians; backend: nginx return 200 (1 worker) on TCP loopback and a Unix socket"
echo
echo "| upstream | req/s | p50 µs | p99 µs | lameduck CPU µs/request | backend CPU µs/request | lameduck CPU vs TCP |"
echo "|---|---:|---:|---:|---:|---:|---:|"
declare -A M
for t in "${TARGETS[@]}"; do
  for col in 2 3 4 5 6; do
    M[$t,$col]=$(awk -v t="$t" -v c="$col" '$1 == t {print $c}' "$TMP/rows" | median)
  done
done
for t in "${TARGETS[@]}"; do
  awk -v t="$t" -v r="${M[$t,2]}" -v p50="${M[$t,3]}" -v p99="${M[$t,4]}" -v cpu="${M[$t,5]}" \
    -v bcpu="${M[$t,6]}" -v tcpu="${M[tcp,5]}" \
    'BEGIN {printf "| %s | %.0f | %.0f | %.0f | %.1f | %.1f | %.2f× |\n", t, r, p50, p99, cpu, bcpu, cpu / tcpu}'
done
