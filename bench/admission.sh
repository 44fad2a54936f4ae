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

log() { printf '[admission %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
    die "apt-get install ${need[*]} failed"
fi
(cd "$ROOT" && cargo build --release -q) || die "build failed"
LAMEDUCK="$ROOT/target/release/lameduck"

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
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
