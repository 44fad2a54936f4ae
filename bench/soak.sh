#!/usr/bin/env bash
# lameduck soak: DURATION seconds of mixed load through lameduck in front of the repo's test
# backend (keep-alive and new connections, small and 1 MiB bodies both ways, SSE streams read to
# the end or dropped, WebSockets closed properly or dropped, clients that give up mid-request or
# mid-response: see bench/soak_load.py), sampling lameduck's RSS, open fds and threads every
# SAMPLE_EVERY seconds. Verdict: RSS and fds flat after WARMUP, and no load errors; exit 1 if not.
# The report goes to RESULTS (default bench/soak-results.md). Everything runs on 127.0.0.1; every
# process started here is stopped on exit and the temporary directory removed.
#
#   bench/soak.sh                             # 10 minutes once built
#   DURATION=90 WARMUP=20 RESULTS=/dev/stdout bench/soak.sh
#   SCALE=2 bench/soak.sh                     # twice the request rates
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-600}
SAMPLE_EVERY=${SAMPLE_EVERY:-10}
WARMUP=${WARMUP:-60}
SCALE=${SCALE:-1}
RESULTS=${RESULTS:-$ROOT/bench/soak-results.md}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
METRICS_PATH=/__soak_metrics

BENCH_NAME=soak
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
install_missing python3:python3 curl:curl

log "building lameduck and the test backend (cargo build --release)"
(cd "$ROOT" && cargo build --release -q --bin lameduck --example test-backend) || die "build failed"
LAMEDUCK="$TARGET/release/lameduck"
BACKEND="$TARGET/release/examples/test-backend"

# ---------------------------------------------------------------- backend and lameduck
PORT=0 "$BACKEND" >"$TMP/backend.out" 2>"$TMP/backend.err" &
BACKEND_PID=$!
PIDS+=($!)
P_BACKEND=""
for _ in $(seq 100); do
  P_BACKEND=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/backend.out" 2>/dev/null)
  [[ -n $P_BACKEND ]] && break
  sleep 0.1
done
[[ -n $P_BACKEND ]] || die "the test backend did not print its port"

"$LAMEDUCK" --port 0 --bind 127.0.0.1 --upstream "http://127.0.0.1:$P_BACKEND" \
  --metrics-path "$METRICS_PATH" --grace-period 5s 2>"$TMP/lameduck.log" &
LD_PID=$!
PIDS+=($!)
P_LD=$(lameduck_port "$TMP/lameduck.log")
wait_http "http://127.0.0.1:$P_LD/hello" || die "lameduck does not answer /hello"
log "backend pid $BACKEND_PID on :$P_BACKEND, lameduck pid $LD_PID on :$P_LD"

# ---------------------------------------------------------------- sampling
SAMPLES="$TMP/samples.tsv"
STATS="$TMP/stats.json"
printf 't\tphase\trss_kib\tfds\tthreads\tinflight\tok\terr\taborted\n' >"$SAMPLES"

# sample T PHASE: one row of lameduck's numbers and the load's running totals.
sample() {
  local rss threads fds inflight ok=- err=- aborted=-
  kill -0 "$LD_PID" 2>/dev/null || die "lameduck exited during the soak (log: $(tail -3 "$TMP/lameduck.log"))"
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$LD_PID/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$LD_PID/status")
  fds=$(find "/proc/$LD_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  inflight=$(curl -s -m 2 "http://127.0.0.1:$P_LD$METRICS_PATH" |
    awk '/^lameduck_requests_in_flight / {print $2}')
  [[ -f $STATS.line ]] && read -r ok err aborted <"$STATS.line"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rss" "$fds" "$threads" \
    "${inflight:--}" "$ok" "$err" "$aborted" >>"$SAMPLES"
  log "t=$1 s $2: RSS $((rss / 1024)) MiB, $fds fds, $threads threads, ${inflight:--} in flight; load ok $ok, errors $err, aborted $aborted"
}

now() { echo "${EPOCHREALTIME/./}"; } # microseconds
sleep_until() {
  local left=$(($1 - $(now)))
  ((left > 0)) && sleep "$(printf '%d.%06d' $((left / 1000000)) $((left % 1000000)))"
}

sample 0 before
TICKS0=$(cpu_ticks "$LD_PID")
TICKS0_BACKEND=$(cpu_ticks "$BACKEND_PID")
log "load for $DURATION s (scale $SCALE), sampling every $SAMPLE_EVERY s, warm-up $WARMUP s"
T0=$(now)
python3 "$ROOT/bench/soak_load.py" load "$P_LD" --duration "$DURATION" --stats "$STATS" \
  --scale "$SCALE" 2>"$TMP/load.err" &
LOAD_PID=$!
PIDS+=($!)
LOAD_TICKS=0
for ((t = SAMPLE_EVERY; t <= DURATION; t += SAMPLE_EVERY)); do
  sleep_until $((T0 + t * 1000000))
  kill -0 "$LOAD_PID" 2>/dev/null || die "the load generator exited early: $(tail -5 "$TMP/load.err")"
  LOAD_TICKS=$(cpu_ticks "$LOAD_PID")
  sample "$t" load
done
LD_TICKS=$(($(cpu_ticks "$LD_PID") - TICKS0))
BACKEND_TICKS=$(($(cpu_ticks "$BACKEND_PID") - TICKS0_BACKEND))
wait "$LOAD_PID"
load_status=$?
((load_status == 0)) || die "the load generator failed ($load_status): $(tail -5 "$TMP/load.err")"
# Idle again: the clients are gone and lameduck's idle backend connections (3 s) swept.
sleep 5
sample $((($(now) - T0) / 1000000)) after
METRICS=$(curl -s -m 2 "http://127.0.0.1:$P_LD$METRICS_PATH")

# ---------------------------------------------------------------- report
HZ=$(getconf CLK_TCK)
cpu_pct() { awk -v t="$1" -v hz="$HZ" -v d="$DURATION" 'BEGIN {printf "%.0f%%", 100 * t / hz / d}'; }
verdict=$(python3 "$ROOT/bench/soak_load.py" report "$SAMPLES" "$STATS" --warmup "$WARMUP" --duration "$DURATION")
verdict_status=$?
log_levels=$(sed 's/\x1b\[[0-9;]*m//g' "$TMP/lameduck.log" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep=", "}')
log_notable=$(sed 's/\x1b\[[0-9;]*m//g' "$TMP/lameduck.log" | grep -E '^\S+ +(WARN|ERROR)' |
  sed -E 's/^\S+ +//; s/[0-9]+(\.[0-9]+)?(ms|µs|s)\b/N\2/g; s/(address|remote|peer)=[0-9.:]+/\1=…/g' |
  sort | uniq -c | sort -rn | head -10)
{
  echo "## Soak ($(date -u +%Y-%m-%dT%H:%MZ), git $(cd "$ROOT" && git rev-parse --short HEAD))"
  echo
  echo "- machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r), $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM"
  echo "- command: \`DURATION=$DURATION SAMPLE_EVERY=$SAMPLE_EVERY WARMUP=$WARMUP SCALE=$SCALE bench/soak.sh\`"
  echo "- lameduck \`--port 0 --bind 127.0.0.1 --upstream http://127.0.0.1:PORT --metrics-path $METRICS_PATH --grace-period 5s\`, backend \`target/release/examples/test-backend\`, load \`bench/soak_load.py\` (one Python process)"
  echo "- CPU over the load (share of one core): lameduck $(cpu_pct "$LD_TICKS"), test backend $(cpu_pct "$BACKEND_TICKS"), load generator $(cpu_pct "$LOAD_TICKS")"
  echo "- samples: lameduck's VmRSS (/proc/PID/status), open fds (/proc/PID/fd), threads, requests in flight (its metrics), the load's running totals; \`before\`: idle before the load, \`after\`: idle 5 s after it"
  echo
  echo "$verdict"
  echo
  statuses=$(echo "$METRICS" | sed -n 's/^lameduck_requests_total{code="\([0-9]*\)"} \([0-9]*\)/\1: \2/p' | paste -sd, - | sed 's/,/, /g')
  backend_errors=$(echo "$METRICS" | sed -n 's/^lameduck_backend_errors_total{detail="\([^"]*\)"} \([0-9]*\)/\1: \2/p' | paste -sd, - | sed 's/,/, /g')
  echo "lameduck's own metrics at the end: answers by status ${statuses:-none}; backend errors ${backend_errors:-none}."
  echo
  echo "lameduck's log, lines by level: ${log_levels:-none}."
  if [[ -n $log_notable ]]; then
    echo
    echo "Most frequent warnings and errors (numbers and addresses elided):"
    echo
    echo '```'
    echo "$log_notable"
    echo '```'
  fi
} >"$TMP/report.md"
cat "$TMP/report.md" >"$RESULTS"
[[ $RESULTS == /dev/stdout ]] || cat "$TMP/report.md"
if ((verdict_status == 0)); then log "PASS: flat after warm-up, no load errors"; else log "FAIL: see the verdict above"; fi
exit "$verdict_status"
