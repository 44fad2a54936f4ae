#!/usr/bin/env bash
# lameduck next to nginx (proxy_pass, upstream keep-alive) and HAProxy (mode http, http-reuse
# always), all three in front of the same nginx `return 200` backend, in one run:
#
#   1. load: wrk -t1 -c64 --latency keep-alive, ROUNDS interleaved rounds (the order rotates each
#      round); medians of requests/s, p50, p99 and the proxy's CPU µs per request (user+sys ticks
#      of all the proxy's processes from /proc/PID/stat over the round, divided by the requests
#      served; the backend is not counted);
#   2. memory per idle keep-alive client: the proxy's RSS (VmRSS summed over its processes) idle
#      after the load, then with 1,000 and 10,000 clients that each got one 200 and stay open
#      (bench/idle_clients.py); KiB per connection = (RSS with - RSS idle) / N;
#   3. memory per WebSocket tunnel: 1,000 tunnels held through each proxy to the test backend's
#      /ws echo (fresh proxy instances, warmed up with 1 s of wrk);
#   4. 1 GiB streamed up and down through lameduck (and directly, for reference): throughput and
#      lameduck's peak RSS while it streams.
#
#   bench/run.sh [LAMEDUCK_BIN]          # ~4 min; LAMEDUCK_BIN defaults to a fresh release build
#   ROUNDS=3 DURATION=3s bench/run.sh    # shorter
#   IDLE_COUNTS="1000" WS_TUNNELS=0 STREAM_BYTES=0 bench/run.sh   # skip parts
#
# Prints a markdown report and writes it to bench/results.md (overwritten). Everything listens on
# 127.0.0.1; nginx and HAProxy run from the temporary directory, never the system configuration;
# every process started here is stopped on exit and the temporary directory removed.
set -uo pipefail
BENCH_NAME=run
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The command as given, with the settings that came from the environment, for the report.
COMMAND="bench/run.sh${1:+ $1}"
for v in CARGO_TARGET_DIR STREAM_REPS STREAM_BYTES WS_TUNNELS IDLE_COUNTS SETTLE CONNS DURATION ROUNDS; do
  [[ -n ${!v+set} ]] && COMMAND="$v=${!v} $COMMAND"
done
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
IDLE_COUNTS=${IDLE_COUNTS:-1000 10000}
WS_TUNNELS=${WS_TUNNELS:-1000}
SETTLE=${SETTLE:-2}
STREAM_BYTES=${STREAM_BYTES:-1073741824}
STREAM_REPS=${STREAM_REPS:-2}
RESULTS="$ROOT/bench/results.md"

# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
STARTED=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
install_missing nginx:nginx-light haproxy:haproxy wrk:wrk curl:curl python3:python3
# 10,000 clients: every process started from here on may open up to the hard limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "building lameduck and the test backend (cargo build --release --bins --examples)"
(cd "$ROOT" && cargo build --release -q --bins --examples) || die "build failed"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
LAMEDUCK=${1:-$BIN_DIR/lameduck}
TEST_BACKEND="$BIN_DIR/examples/test-backend"
[[ -x $LAMEDUCK && -x $TEST_BACKEND ]] || die "$LAMEDUCK or $TEST_BACKEND missing"

# ------------------------------------------------------------------------------ helpers

# Every proxy instance has a NAME: PORT[NAME], PID[NAME] (nginx: the master), KIND[NAME].
declare -A PORT PID KIND

start_nginx() { # NAME UPSTREAM_PORT [PROBE_PATH]
  start_nginx_proxy "$1" "$2" "${3:-/}"
  PORT[$1]=$P_NGINX PID[$1]=$NGINX_PID KIND[$1]=nginx
}

start_haproxy() { # NAME UPSTREAM_PORT [PROBE_PATH]
  local name=$1 cfg="$TMP/$1.cfg" port
  port=$(free_port)
  # HAProxy counts two open files per connection (client and server side), so within a hard
  # limit of 20,000 it would allow under 10,000 connections and refuse to start with more
  # (strict-limits). Idle clients hold no server connection here (http-reuse always), so 15,000
  # client connections fit: no strict-limits turns that refusal into a warning.
  cat >"$cfg" <<CONF
global
  nbthread $(nproc)
  maxconn 15000
  ulimit-n $(ulimit -Hn)
  no strict-limits
defaults
  mode http
  maxconn 15000
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
  timeout tunnel 1h
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$port
  default_backend be
backend be
  server s1 127.0.0.1:$2
CONF
  haproxy -db -f "$cfg" >"$TMP/$name.log" 2>&1 &
  PORT[$name]=$port PID[$name]=$! KIND[$name]=haproxy
  PIDS+=($!)
  wait_http "http://127.0.0.1:$port${3:-/}" || { cat "$TMP/$name.log" >&2; die "HAProxy $name did not start"; }
}

start_lameduck_at() { # NAME UPSTREAM_PORT
  start_lameduck "$1" "$LAMEDUCK" "http://127.0.0.1:$2" --grace-period 5s
  PID[$1]=${PIDOF[$1]} KIND[$1]=lameduck
}

start_test_backend() { # sets P_TEST
  env PORT=0 "$TEST_BACKEND" >"$TMP/test-backend.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    P_TEST=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/test-backend.log")
    [[ -n $P_TEST ]] && return 0
    sleep 0.1
  done
  die "the test backend did not print its port"
}

proxy_pids() { # NAME: the pids of all the proxy's processes, one a line
  echo "${PID[$1]}"
  [[ ${KIND[$1]} == nginx ]] && pgrep -P "${PID[$1]}"
}
rss_kib() { # NAME: VmRSS summed over the proxy's processes
  local t=0 p v
  for p in $(proxy_pids "$1"); do
    v=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$p/status" 2>/dev/null)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }
per_conn() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {printf "%.1f", n ? (b - a) / n : 0}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b != 0) printf "%.2f×", a / b; else print "-"}'; }
thousands() { sed ':a; s/\B[0-9]\{3\}\>/,&/; ta' <<<"$1"; }

# hold NAME COUNT [PATH [--websocket]]: COUNT clients held open against the proxy by
# idle_clients.py until release; sets HELD (how many got their 200 / 101).
hold() {
  local name=$1 n=$2 log="$TMP/hold.log"
  : >"$log"
  exec {HOLD_FD}> >(exec python3 "$ROOT/bench/idle_clients.py" "${PORT[$name]}" "$n" "${@:3}" >"$log" 2>&1)
  HOLD_PID=$!
  PIDS+=("$HOLD_PID")
  HELD=""
  for _ in $(seq 1200); do
    HELD=$(sed -n 's/^held \([0-9]*\)$/\1/p' "$log")
    [[ -n $HELD ]] && break
    kill -0 "$HOLD_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z $HELD ]]; then
    cat "$log" >&2
    die "$name: idle_clients.py did not report its $n connections"
  fi
  ((HELD == n)) || log "$name: only $HELD of $n clients got their answer ($(grep -c 'failed' "$log") failed)"
  sleep "$SETTLE"
}
release() { # closes the clients of the last hold, and gives the proxy a second to see it
  exec {HOLD_FD}>&-
  for _ in $(seq 100); do
    kill -0 "$HOLD_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill "$HOLD_PID" 2>/dev/null
  sleep 1
}

# ------------------------------------------------------------------------------ setup

start_nginx_backend
start_nginx nginx "$P_BACKEND"
start_haproxy haproxy "$P_BACKEND"
start_lameduck_at lameduck "$P_BACKEND"
TARGETS=(nginx haproxy lameduck)
for t in "${TARGETS[@]}"; do
  body=$(curl -s -m 5 "http://127.0.0.1:${PORT[$t]}/")
  [[ $body == ok ]] || die "$t answered '$body' instead of 'ok'"
done
log "backend :$P_BACKEND; nginx :${PORT[nginx]}, haproxy :${PORT[haproxy]}, lameduck :${PORT[lameduck]}"

# ------------------------------------------------------------------------------ 1. load

CLK_TCK=$(getconf CLK_TCK)
declare -A M # M[proxy,column]: medians over the rounds
load() {
  local round i t out pp=() c0 c1 n rps p50 p99 cpu errs
  log "1. load: $ROUNDS interleaved rounds of wrk -t1 -c$CONNS -d$DURATION --latency"
  for t in "${TARGETS[@]}"; do # warm-up
    wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:${PORT[$t]}/" >/dev/null 2>&1
  done
  : >"$TMP/rows"
  for round in $(seq "$ROUNDS"); do
    for i in "${!TARGETS[@]}"; do # rotated: each proxy goes first in turn
      t=${TARGETS[$(((i + round - 1) % ${#TARGETS[@]}))]}
      out="$TMP/wrk-$t-$round.txt"
      mapfile -t pp < <(proxy_pids "$t")
      c0=$(cpu_ticks "${pp[@]}")
      wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:${PORT[$t]}/" >"$out" 2>&1
      c1=$(cpu_ticks "${pp[@]}")
      n=$(awk '/requests in/ {print $1}' "$out")
      [[ -n $n ]] || { cat "$out" >&2; die "wrk against $t gave no result"; }
      rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
      p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
      p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
      cpu=$(awk -v d="$((c1 - c0))" -v h="$CLK_TCK" -v n="$n" 'BEGIN {printf "%.1f", n ? 1e6 * d / h / n : 0}')
      # non-2xx answers plus socket errors (connect, read, write, timeout)
      errs=$(awk '/Non-2xx/ {e += $NF} /Socket errors/ {gsub(/,/, ""); e += $4 + $6 + $8 + $10} END {print e + 0}' "$out")
      echo "$t $round $rps $p50 $p99 $cpu $errs" >>"$TMP/rows"
      log "  round $round $t: $rps req/s, p50 ${p50} µs, p99 ${p99} µs, ${cpu} µs CPU/request, $errs errors"
    done
  done
  local col
  for t in "${TARGETS[@]}"; do
    for col in 3 4 5 6; do
      M[$t,$col]=$(awk -v t="$t" -v c="$col" '$1 == t {print $c}' "$TMP/rows" | median)
    done
    M[$t,errs]=$(awk -v t="$t" '$1 == t {e += $7} END {print e + 0}' "$TMP/rows")
  done
}

# ------------------------------------------------------------------------------ 2. idle clients

declare -A IDLE_RSS RSS_WITH HELD_N RSS_AFTER
idle_memory() {
  local t n
  log "2. memory: idle RSS, then with ${IDLE_COUNTS// / and } idle keep-alive clients"
  sleep 1 # the load's connections closed
  for t in "${TARGETS[@]}"; do
    IDLE_RSS[$t]=$(rss_kib "$t")
    for n in $IDLE_COUNTS; do
      hold "$t" "$n"
      RSS_WITH[$t,$n]=$(rss_kib "$t")
      HELD_N[$t,$n]=$HELD
      release
      RSS_AFTER[$t]=$(rss_kib "$t")
      log "  $t: idle $(mib "${IDLE_RSS[$t]}"), with $HELD clients $(mib "${RSS_WITH[$t,$n]}")" \
        "= $(per_conn "${IDLE_RSS[$t]}" "${RSS_WITH[$t,$n]}" "$HELD") KiB each; closed: $(mib "${RSS_AFTER[$t]}")"
    done
  done
}

# ------------------------------------------------------------------------------ 3. WebSocket tunnels

declare -A WS_IDLE WS_WITH WS_HELD WS_AFTER
websocket_memory() {
  local t
  log "3. memory: $WS_TUNNELS WebSocket tunnels through fresh proxies to the test backend's /ws"
  start_test_backend
  start_nginx nginx-ws "$P_TEST" /hello
  start_haproxy haproxy-ws "$P_TEST" /hello
  start_lameduck_at lameduck-ws "$P_TEST"
  for t in nginx-ws haproxy-ws lameduck-ws; do
    wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:${PORT[$t]}/hello" >/dev/null 2>&1
  done
  sleep 1
  for t in nginx-ws haproxy-ws lameduck-ws; do
    WS_IDLE[$t]=$(rss_kib "$t")
    hold "$t" "$WS_TUNNELS" /ws --websocket
    WS_WITH[$t]=$(rss_kib "$t")
    WS_HELD[$t]=$HELD
    release
    WS_AFTER[$t]=$(rss_kib "$t")
    log "  $t: idle $(mib "${WS_IDLE[$t]}"), with $HELD tunnels $(mib "${WS_WITH[$t]}")" \
      "= $(per_conn "${WS_IDLE[$t]}" "${WS_WITH[$t]}" "$HELD") KiB each; closed: $(mib "${WS_AFTER[$t]}")"
  done
}

# ------------------------------------------------------------------------------ 4. streaming

# stream NAME VIA(direct|lameduck) up|down: STREAM_REPS transfers of STREAM_BYTES to /count or from
# /download of the test backend, the fastest kept, with lameduck-ws's VmRSS sampled every 50 ms
# meanwhile. No `Expect: 100-continue` (curl would wait for the 100 up to 1 s).
STREAMS=()
declare -A S_OK S_SECS S_ALL S_RSS0 S_PEAK
stream() {
  local name=$1 port=${PORT[lameduck-ws]} res code secs bytes sampler
  [[ $2 == direct ]] && port=$P_TEST
  STREAMS+=("$name")
  S_RSS0[$name]=$(rss_kib lameduck-ws)
  echo "${S_RSS0[$name]}" >"$TMP/peak"
  (
    max=0
    while v=$(awk '$1 == "VmRSS:" {print $2}' "/proc/${PID[lameduck-ws]}/status" 2>/dev/null); do
      ((v > max)) && { max=$v; echo "$max" >"$TMP/peak"; }
      sleep 0.05
    done
  ) &
  sampler=$!
  S_OK[$name]=0 S_SECS[$name]="" S_ALL[$name]=""
  for _ in $(seq "$STREAM_REPS"); do
    if [[ $3 == up ]]; then
      res=$(curl -sS -m 120 -H 'Expect:' -T "$TMP/big.bin" -o "$TMP/count" \
        -w '%{http_code} %{time_total}' "http://127.0.0.1:$port/count")
      bytes=$(cat "$TMP/count" 2>/dev/null)
    else
      res=$(curl -sS -m 120 -o /dev/null -w '%{http_code} %{time_total} %{size_download}' \
        "http://127.0.0.1:$port/download?bytes=$STREAM_BYTES")
      bytes=${res##* }
    fi
    read -r code secs _ <<<"$res"
    if [[ $code == 200 && $bytes == "$STREAM_BYTES" ]]; then
      S_OK[$name]=$((S_OK[$name] + 1))
    else
      log "  $name: HTTP $code, ${bytes:-no} bytes of $STREAM_BYTES arrived"
    fi
    S_ALL[$name]+="${S_ALL[$name]:+, }$(printf '%.2f' "$secs")"
    if [[ -z ${S_SECS[$name]} ]] || awk -v a="$secs" -v b="${S_SECS[$name]}" 'BEGIN {exit !(a < b)}'; then
      S_SECS[$name]=$secs
    fi
  done
  kill "$sampler" 2>/dev/null
  wait "$sampler" 2>/dev/null
  read -r "S_PEAK[$name]" <"$TMP/peak"
  log "  $name: ${S_ALL[$name]} s, lameduck RSS $(mib "${S_RSS0[$name]}") -> peak $(mib "${S_PEAK[$name]}")"
}
streaming() {
  log "4. streaming: $STREAM_BYTES bytes up and down, directly and through lameduck, $STREAM_REPS times each"
  truncate -s "$STREAM_BYTES" "$TMP/big.bin" # sparse: no disk space, reads are zeros
  cat "$TMP/big.bin" >/dev/null               # into the page cache, or the first upload pays for it
  stream "upload (PUT, Content-Length), direct" direct up
  stream "upload (PUT, Content-Length), lameduck" lameduck up
  stream "download, direct" direct down
  stream "download, lameduck" lameduck down
  rm -f "$TMP/big.bin"
}

# ------------------------------------------------------------------------------ report

report() {
  local t n cols k kn
  cat <<EOF
# lameduck, nginx and HAProxy side by side

\`$COMMAND\` — $(date -u '+%Y-%m-%d %H:%M UTC'), lameduck $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | grep -q . && echo ' (+ uncommitted changes)'), took $(((SECONDS - STARTED) / 60)) min $(((SECONDS - STARTED) % 60)) s

- machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo), $(uname -sr)
- load average (1/5/15 min): $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end — the machine is not isolated
- $(nginx -v 2>&1); $(haproxy -v 2>&1 | head -1 | sed 's/ - https.*//'); $(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//'); $("$LAMEDUCK" --version)
- everything on 127.0.0.1: client, proxy and backend share the $(nproc) cores
- backend: nginx, 1 worker, \`return 200 "ok"\`. nginx: worker_processes auto, upstream keepalive 128.
  HAProxy: mode http, nbthread $(nproc), http-reuse always. lameduck: \`--upstream\` at the backend, defaults.

## 1. Load

\`wrk -t1 -c$CONNS -d$DURATION --latency\`, keep-alive, \`GET /\`; $ROUNDS interleaved rounds, medians.
CPU µs/request: user+sys of all the proxy's processes over the round (nginx master and workers), from
/proc/PID/stat, divided by the requests served; the backend is not counted.

| proxy | req/s | p50 µs | p99 µs | CPU µs/request | req/s vs nginx | CPU/request vs nginx | errors |
|---|---:|---:|---:|---:|---:|---:|---:|
EOF
  for t in "${TARGETS[@]}"; do
    printf '| %s | %.0f | %.0f | %.0f | %.1f | %s | %s | %s |\n' "$t" "${M[$t,3]}" "${M[$t,4]}" \
      "${M[$t,5]}" "${M[$t,6]}" "$(ratio "${M[$t,3]}" "${M[nginx,3]}")" \
      "$(ratio "${M[$t,6]}" "${M[nginx,6]}")" "${M[$t,errs]}"
  done
  echo
  echo "errors: non-2xx answers and socket errors, summed over the rounds. Each round (req/s, CPU µs/request):"
  echo
  echo "| round |$(printf ' %s |' "${TARGETS[@]}")"
  echo "|---:|$(printf -- '---:|%.0s' "${TARGETS[@]}")"
  for n in $(seq "$ROUNDS"); do
    cols=""
    for t in "${TARGETS[@]}"; do
      cols+=$(awk -v t="$t" -v r="$n" '$1 == t && $2 == r {printf " %s, %s |", $3, $6}' "$TMP/rows")
    done
    echo "| $n |$cols"
  done

  if [[ -n $IDLE_COUNTS ]]; then
    cat <<EOF

## 2. Memory per idle keep-alive client

RSS: VmRSS summed over the proxy's processes (nginx: master and $(($(proxy_pids nginx | wc -l) - 1)) workers; pages they share
count once per process, alike in every step), idle after the load above, then with N clients open (each
sent one request, got its 200 and stays open; bench/idle_clients.py), ${SETTLE} s after the last one got
its answer. The clients are closed between steps. KiB per connection = (RSS with N - RSS idle) / N.
Last column: RSS 1 s after the last clients closed.

EOF
    local head="| proxy | idle RSS |" line="|---|---:|"
    for n in $IDLE_COUNTS; do
      head+=" RSS, $(thousands "$n") clients | KiB/conn | vs nginx |"
      line+="---:|---:|---:|"
    done
    echo "$head RSS after |"
    echo "$line---:|"
    for t in "${TARGETS[@]}"; do
      cols=""
      for n in $IDLE_COUNTS; do
        k=$(per_conn "${IDLE_RSS[$t]}" "${RSS_WITH[$t,$n]}" "${HELD_N[$t,$n]}")
        kn=$(per_conn "${IDLE_RSS[nginx]}" "${RSS_WITH[nginx,$n]}" "${HELD_N[nginx,$n]}")
        cols+=" $(mib "${RSS_WITH[$t,$n]}")$( ((HELD_N[$t,$n] == n)) || echo " (${HELD_N[$t,$n]} held)") | $k | $(ratio "$k" "$kn") |"
      done
      echo "| $t | $(mib "${IDLE_RSS[$t]}") |$cols $(mib "${RSS_AFTER[$t]}") |"
    done
  fi

  if ((WS_TUNNELS > 0)); then
    cat <<EOF

## 3. Memory per WebSocket tunnel

Fresh instances of the three proxies in front of the test backend (\`cargo build --release --examples\`,
target/release/examples/test-backend, a hyper server whose /ws echoes), each warmed up by 1 s of wrk on
/hello; idle RSS, then RSS with $(thousands "$WS_TUNNELS") WebSocket tunnels open (handshake answered 101, then idle),
${SETTLE} s after the last handshake; and 1 s after they closed.

| proxy | idle RSS | RSS, $(thousands "$WS_TUNNELS") tunnels | KiB/tunnel | vs nginx | RSS after |
|---|---:|---:|---:|---:|---:|
EOF
    kn=$(per_conn "${WS_IDLE[nginx-ws]}" "${WS_WITH[nginx-ws]}" "${WS_HELD[nginx-ws]}")
    for t in nginx-ws haproxy-ws lameduck-ws; do
      k=$(per_conn "${WS_IDLE[$t]}" "${WS_WITH[$t]}" "${WS_HELD[$t]}")
      echo "| ${t%-ws} | $(mib "${WS_IDLE[$t]}") | $(mib "${WS_WITH[$t]}")$( ((WS_HELD[$t] == WS_TUNNELS)) || echo " (${WS_HELD[$t]} held)") | $k | $(ratio "$k" "$kn") | $(mib "${WS_AFTER[$t]}") |"
    done
  fi

  if ((STREAM_BYTES > 0)); then
    cat <<EOF

## 4. Streaming $(awk -v b="$STREAM_BYTES" 'BEGIN {printf "%.0f MiB", b / 1048576}') through lameduck

$STREAM_REPS transfers each way with curl, to the test backend's /count (reads and counts the body) and from
its /download (64 KiB chunks); "direct" skips lameduck; MB/s of the fastest. lameduck's RSS (the WebSocket
instance above) sampled every 50 ms during the transfers.

| transfer | complete | seconds, each | MB/s | lameduck RSS before | lameduck peak RSS during |
|---|---:|---:|---:|---:|---:|
EOF
    for n in "${STREAMS[@]}"; do
      if [[ $n == *lameduck ]]; then cols="$(mib "${S_RSS0[$n]}") | $(mib "${S_PEAK[$n]}")"; else cols="- | -"; fi
      echo "| $n | ${S_OK[$n]} of $STREAM_REPS | ${S_ALL[$n]} | $(awk -v b="$STREAM_BYTES" -v s="${S_SECS[$n]}" 'BEGIN {printf "%.0f", (s > 0) ? b / s / 1e6 : 0}') | $cols |"
    done
  fi

  local warn
  warn=$(cat "$TMP"/lameduck*.log | grep -cE ' (WARN|ERROR) ')
  echo
  echo "WARN/ERROR lines logged by lameduck during the run: $warn."
}

load
[[ -n $IDLE_COUNTS ]] && idle_memory
((WS_TUNNELS > 0)) && websocket_memory
if ((STREAM_BYTES > 0)); then
  [[ -n ${PORT[lameduck-ws]:-} ]] || { start_test_backend; start_lameduck_at lameduck-ws "$P_TEST"; }
  streaming
fi
report >"$TMP/report.md"
cp "$TMP/report.md" "$RESULTS"
echo
cat "$TMP/report.md"
log "written to $RESULTS in $((SECONDS - STARTED)) s"
