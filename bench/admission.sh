#!/usr/bin/env bash
# The cost of admission control and metrics on the hot path: wrk (keep-alive, 64 connections)
# through lameduck to nginx `return 200`, with and without `--max-concurrency 10000` and
# `--metrics-path`, rounds interleaved so machine noise hits every variant alike.
#
#   bench/admission.sh            # ~2 min once lameduck is built
#   ROUNDS=5 WRK_DURATION=10s bench/admission.sh
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
WRK_DURATION=${WRK_DURATION:-8s}

BENCH_NAME=admission
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
install_missing nginx:nginx-light wrk:wrk curl:curl python3:python3
build_lameduck

wait_http() {
  for _ in $(seq 100); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.05
  done
  return 1
}

P_BACKEND=$(free_port)
cat >"$TMP/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP; proxy_temp_path $TMP; fastcgi_temp_path $TMP; uwsgi_temp_path $TMP; scgi_temp_path $TMP;
  server { listen 127.0.0.1:$P_BACKEND; keepalive_requests 1000000; location / { return 200 "ok"; } }
}
NGINX
nginx -p "$TMP" -c "$TMP/nginx.conf" &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_BACKEND/" || die "nginx did not start"

declare -A FLAGS=(
  [plain]=""
  [concurrency]="--max-concurrency 10000"
  [metrics]="--metrics-path /metrics"
  [both]="--max-concurrency 10000 --metrics-path /metrics"
)
VARIANTS=(plain concurrency metrics both)
declare -A PORT TOTAL
for v in "${VARIANTS[@]}"; do
  PORT[$v]=$(free_port)
  # shellcheck disable=SC2086
  "$LAMEDUCK" --port "${PORT[$v]}" --bind 127.0.0.1 --upstream "http://127.0.0.1:$P_BACKEND" ${FLAGS[$v]} 2>"$TMP/$v.log" &
  PIDS+=($!)
  wait_http "http://127.0.0.1:${PORT[$v]}/ready" || die "lameduck ($v) did not start"
  wrk -t2 -c64 -d2s "http://127.0.0.1:${PORT[$v]}/" >/dev/null # warm-up
  TOTAL[$v]=0
done

rows=()
for round in $(seq "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    rps=$(wrk -t2 -c64 -d"$WRK_DURATION" "http://127.0.0.1:${PORT[$v]}/" | awk '/^Requests\/sec/ {print $2}')
    log "round $round $v: $rps req/s"
    rows+=("| $round | $v | $rps |")
    TOTAL[$v]=$(python3 -c "print(${TOTAL[$v]} + $rps)")
  done
done
{
  echo "## Admission and metrics overhead ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, git $(cd "$ROOT" && git rev-parse --short HEAD))"
  echo
  echo "wrk -t2 -c64 -d$WRK_DURATION through lameduck to nginx \`return 200\`, $ROUNDS interleaved rounds."
  echo
  echo "| round | variant | req/s |"
  echo "|---|---|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "| variant | flags | mean req/s | vs plain |"
  echo "|---|---|---:|---:|"
  for v in "${VARIANTS[@]}"; do
    python3 -c "
m = ${TOTAL[$v]} / $ROUNDS; p = ${TOTAL[plain]} / $ROUNDS
print(f'| $v | \`${FLAGS[$v]:-none}\` | {m:.0f} | {100 * m / p:.1f}% |')"
  done
  echo
  echo "Metrics scraped at the end: $(curl -s "http://127.0.0.1:${PORT[both]}/metrics" | grep -c '^lameduck_') samples."
} | tee "$ROOT/bench/admission-results.md"
