#!/usr/bin/env bash
# Before/after: two lameduck binaries and nginx's proxy_pass (the peer) in front of one nginx
# `return 200` backend, measured in interleaved rounds so that the machine's noise hits all three
# alike. Reports the median of the rounds: requests/s, p50/p99, and the proxy's CPU per request
# (user+sys from /proc/PID/stat, divided by the requests served).
#
#   bench/compare.sh BEFORE_BIN [AFTER_BIN]      # AFTER_BIN defaults to a fresh release build
#   ROUNDS=5 DURATION=5s CONNS=64 bench/compare.sh /tmp/lameduck-before
#
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -uo pipefail
BENCH_NAME=compare
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/common.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
BEFORE=${1:?usage: bench/compare.sh BEFORE_BIN [AFTER_BIN]}
if [[ -n ${2:-} ]]; then AFTER=$2; else build_lameduck; AFTER=$LAMEDUCK; fi
install_missing nginx:nginx-light wrk:wrk curl:curl

start_nginx_backend
start_nginx_proxy

start_lameduck before "$BEFORE" "http://127.0.0.1:$P_BACKEND"
start_lameduck after "$AFTER" "http://127.0.0.1:$P_BACKEND"
PORT[nginx]=$P_NGINX

pids_of() {
  case $1 in
    nginx) echo "$NGINX_PID" $(ps -o pid= --ppid "$NGINX_PID") ;;
    *) echo "${PIDOF[$1]}" ;;
  esac
}

TARGETS=(nginx before after)
CLK_TCK=$(getconf CLK_TCK)
log "$ROUNDS interleaved rounds of wrk -t1 -c$CONNS -d$DURATION; load $(cut -d' ' -f1-3 /proc/loadavg)"
for t in "${TARGETS[@]}"; do # warm-up
  wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:${PORT[$t]}/" >/dev/null 2>&1
done
for round in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    out="$TMP/wrk-$t-$round.txt"
    pp=$(pids_of "$t")
    c0=$(cpu_ticks $pp)
    wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:${PORT[$t]}/" >"$out" 2>&1
    c1=$(cpu_ticks $pp)
    n=$(awk '/requests in/ {print $1}' "$out")
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
    cpu=$(awk -v d="$((c1 - c0))" -v h="$CLK_TCK" -v n="${n:-0}" 'BEGIN {printf "%.1f", n ? 1e6 * d / h / n : 0}')
    echo "$t $rps $p50 $p99 $cpu" >>"$TMP/rows"
    log "round $round $t: $rps req/s, p50 ${p50}us, p99 ${p99}us, ${cpu}us CPU/request"
  done
done

echo
echo "Machine: $(nproc) cores, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo | sed 's/^ *//'); load at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t1 -c$CONNS -d$DURATION, $ROUNDS interleaved rounds, medians; backend: nginx return 200 (1 worker)"
echo
echo "| proxy | req/s | p50 µs | p99 µs | CPU µs/request | req/s vs nginx | CPU vs nginx |"
echo "|---|---:|---:|---:|---:|---:|---:|"
declare -A M
for t in "${TARGETS[@]}"; do
  for col in 2 3 4 5; do
    M[$t,$col]=$(awk -v t="$t" -v c="$col" '$1 == t {print $c}' "$TMP/rows" | median)
  done
done
for t in "${TARGETS[@]}"; do
  awk -v t="$t" -v r="${M[$t,2]}" -v p50="${M[$t,3]}" -v p99="${M[$t,4]}" -v cpu="${M[$t,5]}" \
    -v nr="${M[nginx,2]}" -v ncpu="${M[nginx,5]}" \
    'BEGIN {printf "| %s | %.0f | %.0f | %.0f | %.1f | %.2f× | %.2f× |\n", t, r, p50, p99, cpu, r / nr, cpu / ncpu}'
done
