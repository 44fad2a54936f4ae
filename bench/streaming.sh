#!/usr/bin/env bash
# lameduck streaming benchmark (issue: long-lived traffic):
#   1. added latency per server-sent event, direct vs through lameduck (p50/p99 over N events);
#   2. HTTP/2 throughput with h2load to an h2c backend (nghttpd), direct vs through lameduck
#      with --upstream-protocol http2.
# Everything runs on 127.0.0.1; every process started here is stopped on exit.
#
#   bench/streaming.sh            # ~1 min once lameduck is built
#   SSE_EVENTS=5000 bench/streaming.sh
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SSE_EVENTS=${SSE_EVENTS:-2000}
SSE_INTERVAL_MS=${SSE_INTERVAL_MS:-2}
H2_REQUESTS=${H2_REQUESTS:-200000}
H2_CLIENTS=${H2_CLIENTS:-16}
H2_STREAMS=${H2_STREAMS:-10}

BENCH_NAME=streaming
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
install_missing h2load:nghttp2-client nghttpd:nghttp2-server python3:python3
build_lameduck

wait_port() {
  for _ in $(seq 100); do
    (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# ---------------------------------------------------------------- 1. SSE latency
P_SSE=$(free_port)
P_LD=$(free_port)
python3 "$ROOT/bench/sse_latency.py" serve "$P_SSE" --events "$SSE_EVENTS" --interval-ms "$SSE_INTERVAL_MS" &
PIDS+=($!)
wait_port "$P_SSE" || die "SSE server did not start"
"$LAMEDUCK" --port "$P_LD" --bind 127.0.0.1 --upstream "http://127.0.0.1:$P_SSE" 2>"$TMP/ld-sse.log" &
PIDS+=($!)
wait_port "$P_LD" || die "lameduck did not start"
sleep 0.3

sse_direct=()
sse_proxied=()
for round in 1 2; do
  log "SSE round $round: $SSE_EVENTS events every ${SSE_INTERVAL_MS} ms, direct then through lameduck"
  sse_direct+=("$(python3 "$ROOT/bench/sse_latency.py" measure "http://127.0.0.1:$P_SSE/events" --events "$SSE_EVENTS")")
  sse_proxied+=("$(python3 "$ROOT/bench/sse_latency.py" measure "http://127.0.0.1:$P_LD/events" --events "$SSE_EVENTS")")
done

# ---------------------------------------------------------------- 2. HTTP/2 throughput
P_H2=$(free_port)
P_LD2=$(free_port)
mkdir -p "$TMP/htdocs"
printf 'ok' >"$TMP/htdocs/index.html"
nghttpd --no-tls -d "$TMP/htdocs" -n 1 "$P_H2" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$P_H2" || die "nghttpd did not start"
"$LAMEDUCK" --port "$P_LD2" --bind 127.0.0.1 --upstream "http://127.0.0.1:$P_H2" \
  --upstream-protocol http2 2>"$TMP/ld-h2.log" &
PIDS+=($!)
wait_port "$P_LD2" || die "lameduck (h2) did not start"
sleep 0.3

h2() {
  h2load -n "$H2_REQUESTS" -c "$H2_CLIENTS" -m "$H2_STREAMS" "http://127.0.0.1:$1/index.html" 2>&1 |
    awk '/^finished in/ {rps=$4} /^requests:/ {ok=$8; failed=$10} /^time for request:/ {mean=$6}
         END {printf "%s %s %s %s", rps, ok, failed, mean}'
}
log "h2load warm-up"
h2load -n 20000 -c "$H2_CLIENTS" -m "$H2_STREAMS" "http://127.0.0.1:$P_LD2/index.html" >/dev/null 2>&1
h2_direct=()
h2_proxied=()
for round in 1 2; do
  log "h2load round $round: $H2_REQUESTS requests, $H2_CLIENTS clients x $H2_STREAMS streams"
  h2_direct+=("$(h2 "$P_H2")")
  h2_proxied+=("$(h2 "$P_LD2")")
done

# ---------------------------------------------------------------- report
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
{
  echo "## Streaming benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, git $(cd "$ROOT" && git rev-parse --short HEAD))"
  echo
  echo "### Added latency per server-sent event ($SSE_EVENTS events, one every ${SSE_INTERVAL_MS} ms)"
  echo
  echo "| round | path | p50 µs | p90 µs | p99 µs | max µs |"
  echo "|---|---|---:|---:|---:|---:|"
  for i in 0 1; do
    for kind in direct proxied; do
      if [[ $kind == direct ]]; then j=${sse_direct[$i]}; else j=${sse_proxied[$i]}; fi
      echo "| $((i + 1)) | $kind | $(field "$j" p50_us) | $(field "$j" p90_us) | $(field "$j" p99_us) | $(field "$j" max_us) |"
    done
  done
  echo
  for i in 0 1; do
    echo "- round $((i + 1)): lameduck adds p50 $(python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(round(b['p50_us']-a['p50_us'],1))" "${sse_direct[$i]}" "${sse_proxied[$i]}") µs, p99 $(python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(round(b['p99_us']-a['p99_us'],1))" "${sse_direct[$i]}" "${sse_proxied[$i]}") µs"
  done
  echo
  echo "### HTTP/2 throughput (h2load -n $H2_REQUESTS -c $H2_CLIENTS -m $H2_STREAMS, backend nghttpd h2c)"
  echo
  echo "| round | path | req/s | succeeded | failed | mean time per request |"
  echo "|---|---|---:|---:|---:|---:|"
  for i in 0 1; do
    read -r a b c d <<<"${h2_direct[$i]}"
    echo "| $((i + 1)) | direct | $a | $b | $c | $d |"
    read -r a b c d <<<"${h2_proxied[$i]}"
    echo "| $((i + 1)) | lameduck (h2c both sides) | $a | $b | $c | $d |"
  done
} | tee "$ROOT/bench/streaming-results.md"
