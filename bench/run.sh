#!/usr/bin/env bash
# lameduck benchmark: throughput / latency against nginx (and HAProxy), idle RSS,
# and memory while streaming 1 GiB up and down.
#
#   bench/run.sh                  # everything, ~1.5 min once lameduck is built
#   WRK_DURATION=5s bench/run.sh  # shorter load runs
#
# Everything listens on 127.0.0.1 only, on free ports picked from 18000 upwards.
# nginx / HAProxy / python run from a private temporary directory, never the
# system configuration. Every process started here is stopped on exit.
# Results: printed as markdown and written to bench/results.md (overwritten).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS="$ROOT/bench/results.md"
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-64}
WRK_DURATION=${WRK_DURATION:-10s}
WRK_WARMUP=${WRK_WARMUP:-2s}
XFER_BYTES=$((1024 * 1024 * 1024)) # 1 GiB
XFER_MAX_TIME=${XFER_MAX_TIME:-90}  # seconds, per transfer

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --------------------------------------------------------------------------
# dependencies
# --------------------------------------------------------------------------
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if ((${#need[@]})); then
  log "installing: ${need[*]}"
  SUDO=""
  [[ $EUID -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null ||
    die "apt-get install ${need[*]} failed"
fi
for c in nginx wrk curl python3 cargo timeout; do
  command -v "$c" >/dev/null 2>&1 || die "$c not found"
done
HAVE_HAPROXY=0
command -v haproxy >/dev/null 2>&1 && HAVE_HAPROXY=1

# --------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "building lameduck (cargo build --release)"
(cd "$ROOT" && timeout 600 cargo build --release --quiet --bin lameduck) || die "cargo build failed"
LAMEDUCK="$ROOT/target/release/lameduck"
[[ -x $LAMEDUCK ]] || die "$LAMEDUCK missing after build"

# --------------------------------------------------------------------------
# process bookkeeping and cleanup
# --------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/lameduck-bench.XXXXXX)
PIDS=()
cleanup() {
  local pid i
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  # lameduck drains on SIGTERM; nginx/haproxy/python stop quickly. Bounded wait.
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port is free if nothing accepts a connection on it (pure bash, no ss needed).
# Sets PORT to the next port nobody accepts on (pure bash, no ss needed).
NEXT_PORT=18000
pick_port() {
  local p
  for ((p = NEXT_PORT; p < 18999; p++)); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      NEXT_PORT=$((p + 1))
      PORT=$p
      return 0
    fi
  done
  die "no free port in 18000-18999"
}

# wait_http URL [expected-status] : poll until the URL answers (at most 10 s)
wait_http() {
  local url=$1 want=${2:-200} code end=$((SECONDS + 10))
  while ((SECONDS < end)); do
    code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url" 2>/dev/null)
    [[ $code == "$want" ]] && return 0
    sleep 0.1
  done
  return 1
}

status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null; }
mib() { awk -v kb="${1:-0}" 'BEGIN {printf "%.1f MiB", kb / 1024}'; }

# --------------------------------------------------------------------------
# ports, files, configs
# --------------------------------------------------------------------------
pick_port; P_BACKEND=$PORT
pick_port; P_NGXPROXY=$PORT
pick_port; P_HAPROXY=$PORT
pick_port; P_LAMEDUCK=$PORT
pick_port; P_SINK=$PORT

mkdir -p "$TMP/www" "$TMP/backend" "$TMP/proxy" "$TMP/out"
truncate -s "$XFER_BYTES" "$TMP/www/big.bin" # sparse: no disk space, reads are zeros

USER_LINE=""
[[ $EUID -eq 0 ]] && USER_LINE="user root;" # workers must read $TMP (mode 0700)

nginx_common() { # $1 = prefix dir
  cat <<EOF
$USER_LINE
worker_processes auto;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() {
  cat <<EOF
  access_log off;
  client_body_temp_path $1/client_body;
  proxy_temp_path $1/proxy_temp;
  fastcgi_temp_path $1/fastcgi_temp;
  uwsgi_temp_path $1/uwsgi_temp;
  scgi_temp_path $1/scgi_temp;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  sendfile on;
  default_type application/octet-stream;
EOF
}

# Fast backend: "ok" on every path, a 1 GiB sparse file under /files/, and
# /upload forwarded unbuffered to a python sink that reads and counts the body.
cat >"$TMP/backend/nginx.conf" <<EOF
$(nginx_common "$TMP/backend")
http {
$(nginx_http_common "$TMP/backend")
  upstream sink { server 127.0.0.1:$P_SINK; keepalive 8; }
  server {
    listen 127.0.0.1:$P_BACKEND backlog=4096;
    location / { return 200 "ok"; }
    location = /nginx_status { stub_status; }
    location /files/ { alias $TMP/www/; }
    location /upload {
      client_max_body_size 0;
      proxy_request_buffering off;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 120s;
      proxy_send_timeout 120s;
      proxy_pass http://sink;
    }
  }
}
EOF

# nginx reverse proxy in front of the backend, with a keep-alive pool.
cat >"$TMP/proxy/nginx.conf" <<EOF
$(nginx_common "$TMP/proxy")
http {
$(nginx_http_common "$TMP/proxy")
  upstream backend {
    server 127.0.0.1:$P_BACKEND;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$P_NGXPROXY backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF

cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  server s1 127.0.0.1:$P_BACKEND maxconn 1024
EOF

# Upload sink: reads Content-Length or chunked bodies in 1 MiB pieces, keeps
# nothing, answers with the number of body bytes it received.
cat >"$TMP/sink.py" <<'EOF'
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 20

class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _drain(self, n, buf):
        got = 0
        mv = memoryview(buf)
        while got < n:
            r = self.rfile.readinto(mv[: min(CHUNK, n - got)])
            if not r:
                raise ConnectionError("EOF in body")
            got += r
        return got

    def _body(self):
        buf = bytearray(CHUNK)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            total = 0
            while True:
                size = int(self.rfile.readline(4096).split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(4096) not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                total += self._drain(size, buf)
                self.rfile.readline(4096)
        return self._drain(int(self.headers.get("Content-Length", "0")), buf)

    def _handle(self):
        n = self._body()
        out = b"%d\n" % n
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_PUT = do_POST = _handle

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
EOF

# --------------------------------------------------------------------------
# start everything
# --------------------------------------------------------------------------
log "ports: backend=$P_BACKEND nginx-proxy=$P_NGXPROXY haproxy=$P_HAPROXY lameduck=$P_LAMEDUCK sink=$P_SINK"
python3 "$TMP/sink.py" "$P_SINK" >"$TMP/sink.log" 2>&1 &
PIDS+=($!)
nginx -e "$TMP/backend/error.log" -p "$TMP/backend" -c "$TMP/backend/nginx.conf" -g 'daemon off;' \
  >"$TMP/backend/stdout.log" 2>&1 &
PIDS+=($!)
nginx -e "$TMP/proxy/error.log" -p "$TMP/proxy" -c "$TMP/proxy/nginx.conf" -g 'daemon off;' \
  >"$TMP/proxy/stdout.log" 2>&1 &
NGXPROXY_PID=$!
PIDS+=($!)
if ((HAVE_HAPROXY)); then
  haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
  HAPROXY_PID=$!
  PIDS+=($!)
fi

wait_http "http://127.0.0.1:$P_BACKEND/" || { cat "$TMP/backend/error.log" "$TMP/backend/stdout.log" >&2; die "nginx backend did not start"; }
wait_http "http://127.0.0.1:$P_NGXPROXY/" || { cat "$TMP/proxy/error.log" "$TMP/proxy/stdout.log" >&2; die "nginx proxy did not start"; }
if ((HAVE_HAPROXY)) && ! wait_http "http://127.0.0.1:$P_HAPROXY/"; then
  log "HAProxy did not start, skipping it:"; cat "$TMP/haproxy.log" >&2; HAVE_HAPROXY=0
fi
for ((i = 0; i < 50; i++)); do
  (exec 3<>"/dev/tcp/127.0.0.1/$P_SINK") 2>/dev/null && break
  sleep 0.1
done

"$LAMEDUCK" --port "$P_LAMEDUCK" --bind 127.0.0.1 --upstream "http://127.0.0.1:$P_BACKEND" \
  --grace-period 10s >"$TMP/lameduck.log" 2>&1 &
LD_PID=$!
PIDS+=($LD_PID)
wait_http "http://127.0.0.1:$P_LAMEDUCK/ready" 200 || { cat "$TMP/lameduck.log" >&2; die "lameduck never became ready"; }
RSS_READY=$(status_kb "$LD_PID" VmRSS)
HWM_READY=$(status_kb "$LD_PID" VmHWM)
log "lameduck ready (pid $LD_PID), VmRSS $(mib "$RSS_READY")"

# sanity: every target answers "ok"
for p in "$P_BACKEND" "$P_NGXPROXY" "$P_LAMEDUCK" $( ((HAVE_HAPROXY)) && echo "$P_HAPROXY"); do
  body=$(curl -s -m 5 "http://127.0.0.1:$p/")
  [[ $body == ok ]] || die "port $p answered '$body' instead of 'ok'"
done

# --------------------------------------------------------------------------
# 1. wrk
# --------------------------------------------------------------------------
# to_ms 2.31ms|850.00us|1.02s|1.00m -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
    else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.2f", v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
    else printf "?" }'
}

# CPU time (clock ticks, user+system) used so far by the given pids
cpu_ticks() {
  local t=0 p v
  for p in "$@"; do
    v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
proxy_pids() {
  case $1 in
    nginx-proxy) echo "$NGXPROXY_PID" $(ps -o pid= --ppid "$NGXPROXY_PID") ;;
    haproxy) echo "$HAPROXY_PID" ;;
    lameduck) echo "$LD_PID" ;;
  esac
}
# TCP connections the backend nginx has accepted so far (stub_status)
backend_accepts() {
  curl -s -m 2 "http://127.0.0.1:$P_BACKEND/nginx_status" | awk 'NR == 3 {print $1}'
}
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

declare -A RPS P50 P99 NON2XX SOCKERR CPU_S CPU_US CONNS
TARGETS=("direct" "nginx-proxy")
declare -A URL=(
  [direct]="http://127.0.0.1:$P_BACKEND/"
  [nginx-proxy]="http://127.0.0.1:$P_NGXPROXY/"
  [haproxy]="http://127.0.0.1:$P_HAPROXY/"
  [lameduck]="http://127.0.0.1:$P_LAMEDUCK/"
)
((HAVE_HAPROXY)) && TARGETS+=("haproxy")
TARGETS+=("lameduck")

for t in "${TARGETS[@]}"; do
  log "wrk $t: warm-up $WRK_WARMUP, then $WRK_DURATION (-t$WRK_THREADS -c$WRK_CONNS)"
  timeout 60 wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_WARMUP" "${URL[$t]}" >/dev/null 2>&1
  out="$TMP/out/wrk-$t.txt"
  pp=$(proxy_pids "$t")
  acc0=$(backend_accepts)
  cpu0=$(cpu_ticks $pp)
  timeout 120 wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_DURATION" --latency "${URL[$t]}" >"$out" 2>&1
  cpu1=$(cpu_ticks $pp)
  acc1=$(backend_accepts)
  # minus the one connection of our own stub_status request
  CONNS[$t]=$((${acc1:-0} - ${acc0:-0} - 1))
  RPS[$t]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
  P50[$t]=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
  P99[$t]=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
  NON2XX[$t]=$(awk -F': *' '/Non-2xx or 3xx responses/ {print $2}' "$out")
  NON2XX[$t]=${NON2XX[$t]:-0}
  SOCKERR[$t]=$(sed -n 's/^ *Socket errors: *//p' "$out")
  SOCKERR[$t]=${SOCKERR[$t]:-none}
  [[ -n ${RPS[$t]} ]] || { cat "$out" >&2; log "wrk $t produced no result"; RPS[$t]=0; }
  total_req=$(awk '/requests in/ {print $1}' "$out")
  if [[ -n $pp ]]; then
    CPU_S[$t]=$(awk -v d="$((cpu1 - cpu0))" -v h="$CLK_TCK" 'BEGIN {printf "%.1f", d / h}')
    CPU_US[$t]=$(awk -v d="$((cpu1 - cpu0))" -v h="$CLK_TCK" -v n="${total_req:-0}" \
      'BEGIN {if (n > 0) printf "%.1f", 1e6 * d / h / n; else print "-"}')
  else
    CPU_S[$t]="-"; CPU_US[$t]="-"
  fi
  log "  $t: ${RPS[$t]} req/s, p99 ${P99[$t]} ms, non-2xx ${NON2XX[$t]}, socket errors: ${SOCKERR[$t]}"
  sleep 1
done
sleep 1
RSS_LOAD=$(status_kb "$LD_PID" VmRSS)
HWM_LOAD=$(status_kb "$LD_PID" VmHWM)
kill -0 "$LD_PID" 2>/dev/null || die "lameduck died during the load test"

# --------------------------------------------------------------------------
# 3. 1 GiB streaming transfers
# --------------------------------------------------------------------------
# Peak VmRSS of lameduck while a transfer runs, sampled every 50 ms.
start_sampler() {
  (
    max=0
    while kill -0 "$LD_PID" 2>/dev/null; do
      v=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$LD_PID/status" 2>/dev/null)
      if [[ -n $v ]] && ((v > max)); then max=$v; echo "$max" >"$1"; fi
      sleep 0.05
    done
  ) &
  SAMPLER=$!
}
stop_sampler() { kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; }

declare -A X_CODE X_BYTES X_SECS X_MBS X_ALL X_PEAK X_NOTE
XFERS=()
XFER_REPS=${XFER_REPS:-2}
# xfer NAME VIA(direct|lameduck) KIND(upload-cl|upload-chunked|download)
# Runs the transfer XFER_REPS times, keeps the fastest; payload bytes are what the
# backend counted (uploads) or what curl received (download), so chunk framing is not counted.
xfer() {
  local name=$1 via=$2 kind=$3 port res peakf="$TMP/out/peak-$1" rep code bytes secs mbs got
  [[ $via == lameduck ]] && port=$P_LAMEDUCK || port=$P_BACKEND
  XFERS+=("$name")
  rm -f "$peakf"
  [[ $via == lameduck ]] && start_sampler "$peakf"
  X_MBS[$name]=-1; X_ALL[$name]=""; X_NOTE[$name]=""
  for ((rep = 1; rep <= XFER_REPS; rep++)); do
    rm -f "$TMP/out/body"
    case $kind in
      upload-cl) # PUT with Content-Length, file read by curl (sparse: zeros)
        res=$(curl -sS -m "$XFER_MAX_TIME" -o "$TMP/out/body" -T "$TMP/www/big.bin" \
          -w '%{http_code} %{size_upload} %{time_total}' \
          "http://127.0.0.1:$port/upload" 2>"$TMP/out/err") ;;
      upload-chunked) # PUT, Transfer-Encoding: chunked, from a generator pipe
        res=$(head -c "$XFER_BYTES" /dev/zero | curl -sS -m "$XFER_MAX_TIME" -o "$TMP/out/body" -T - \
          -w '%{http_code} %{size_upload} %{time_total}' \
          "http://127.0.0.1:$port/upload" 2>"$TMP/out/err") ;;
      download)
        res=$(curl -sS -m "$XFER_MAX_TIME" -o /dev/null \
          -w '%{http_code} %{size_download} %{time_total}' \
          "http://127.0.0.1:$port/files/big.bin" 2>"$TMP/out/err") ;;
    esac
    read -r code bytes secs <<<"$res"
    if [[ $kind == upload-* ]]; then
      got=$(tr -d '\n' <"$TMP/out/body" 2>/dev/null)
      [[ $got =~ ^[0-9]+$ ]] && bytes=$got || bytes=0
    fi
    mbs=$(awk -v b="${bytes:-0}" -v t="${secs:-0}" 'BEGIN {if (t > 0) printf "%.0f", b / t / 1e6; else print 0}')
    log "  $name #$rep: HTTP $code, $bytes payload bytes in $secs s = $mbs MB/s"
    X_ALL[$name]+="${X_ALL[$name]:+ / }$mbs"
    if [[ $code != 200 || $bytes != "$XFER_BYTES" ]]; then
      X_NOTE[$name]+="run $rep: HTTP $code, $bytes of $XFER_BYTES bytes $(head -c 150 "$TMP/out/err" | tr '\n' ' ') "
    fi
    if ((mbs > X_MBS[$name])); then
      X_MBS[$name]=$mbs; X_CODE[$name]=$code; X_BYTES[$name]=$bytes; X_SECS[$name]=$secs
    fi
  done
  [[ $via == lameduck ]] && stop_sampler
  X_PEAK[$name]="-"
  [[ -f $peakf ]] && X_PEAK[$name]=$(mib "$(cat "$peakf")")
  [[ -z ${X_NOTE[$name]} ]] && X_NOTE[$name]="ok: all bytes arrived"
}

xfer "upload Content-Length, direct" direct upload-cl
xfer "upload Content-Length, lameduck" lameduck upload-cl
xfer "upload chunked (pipe), direct" direct upload-chunked
xfer "upload chunked (pipe), lameduck" lameduck upload-chunked
RSS_UP=$(status_kb "$LD_PID" VmRSS)
HWM_UP=$(status_kb "$LD_PID" VmHWM)
xfer "download, direct" direct download
xfer "download, lameduck" lameduck download
sleep 0.5
RSS_END=$(status_kb "$LD_PID" VmRSS)
HWM_END=$(status_kb "$LD_PID" VmHWM)
kill -0 "$LD_PID" 2>/dev/null || die "lameduck died during the transfers"

# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
OTHERS=$(ps -eo pid=,comm= | awk '$2 ~ /^(rustc|cargo|node|lameduck|nginx|haproxy|wrk|python3?)$/' | wc -l)
LD_WARN=$(grep -cE 'WARN|ERROR' "$TMP/lameduck.log")
wrk_version=$(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//')
nginx_version=$(nginx -v 2>&1)
haproxy_version=$( ((HAVE_HAPROXY)) && haproxy -v 2>&1 | head -1 | sed 's/ - https.*//' || echo "not installed")
git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git_dirty=$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | grep -q . && echo " (+ uncommitted changes)")

report() {
  local t name base=${RPS[direct]:-0}
  cat <<EOF
# lameduck benchmark

- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- machine: nproc=$(nproc), $(uname -srm), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)
- lameduck: $("$LAMEDUCK" --version 2>&1), git $git_rev$git_dirty, $(rustc --version 2>/dev/null)
- tools: $nginx_version; $wrk_version; $haproxy_version; $(curl --version | head -1 | cut -d' ' -f1-2)
- load average (1/5/15 min) at start: $LOAD_START, at end: $LOAD_END (the machine is not isolated:
  anything else running competes with the benchmark; rustc/cargo/node/nginx/... processes at end, including ours: $OTHERS)
- everything on 127.0.0.1 on the same $(nproc)-core machine: client, proxy and backend compete for CPU
- backend: nginx (worker_processes auto), \`return 200 "ok"\`; nginx proxy: keepalive pool of 64,
  HTTP/1.1 upstream; HAProxy: nbthread 2, http-reuse always; lameduck: no child, --upstream at the backend

## Throughput and latency

wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION --latency (keep-alive), after a $WRK_WARMUP warm-up, \`GET /\` -> 200 "ok"

| target | req/s | vs direct | p50 (ms) | p99 (ms) | non-2xx | socket errors | proxy CPU (s) | proxy CPU µs/req | backend conns opened |
|---|---:|---:|---:|---:|---:|---|---:|---:|---:|
EOF
  for t in "${TARGETS[@]}"; do
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "${RPS[$t]}" \
      "$(awk -v a="${RPS[$t]}" -v b="$base" 'BEGIN {if (b > 0) printf "%.0f%%", 100 * a / b; else print "-"}')" \
      "${P50[$t]}" "${P99[$t]}" "${NON2XX[$t]}" "${SOCKERR[$t]}" "${CPU_S[$t]}" "${CPU_US[$t]}" "${CONNS[$t]}"
  done
  cat <<EOF

proxy CPU = user+system CPU time of the proxy process(es) during the timed run (all nginx-proxy workers;
on a $(nproc)-core machine shared with wrk and the backend). backend conns opened = TCP connections the
backend accepted during the timed run (stub_status; $WRK_CONNS expected for direct, ~0 for a proxy
that keeps its upstream connections alive).
EOF
  cat <<EOF

## lameduck memory (pid $LD_PID)

| moment | VmRSS | VmHWM (peak so far) |
|---|---:|---:|
| idle, right after /ready = 200 | $(mib "$RSS_READY") | $(mib "$HWM_READY") |
| after the wrk runs | $(mib "$RSS_LOAD") | $(mib "$HWM_LOAD") |
| after the 1 GiB uploads | $(mib "$RSS_UP") | $(mib "$HWM_UP") |
| after the 1 GiB download (end) | $(mib "$RSS_END") | $(mib "$HWM_END") |

## 1 GiB streaming transfers

Uploads: \`curl -T\` (PUT) to \`/upload\` -> nginx (\`proxy_request_buffering off\`) -> python sink that reads
and discards the body and answers with the byte count. "direct" goes to the nginx backend, skipping lameduck.
Download: nginx serves a 1 GiB sparse file (\`truncate -s 1G\`), \`curl -o /dev/null\`.
Each transfer runs $XFER_REPS times; the fastest is shown. MB/s = 10^6 payload bytes/s (chunk framing not counted).
Peak RSS during = max VmRSS of lameduck sampled every 50 ms during that transfer.

| transfer | HTTP | payload bytes | seconds (best) | MB/s (best) | MB/s (each run) | lameduck peak RSS during | notes |
|---|---:|---:|---:|---:|---:|---:|---|
EOF
  for name in "${XFERS[@]}"; do
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "${X_CODE[$name]}" "${X_BYTES[$name]}" \
      "${X_SECS[$name]}" "${X_MBS[$name]}" "${X_ALL[$name]}" "${X_PEAK[$name]}" "${X_NOTE[$name]}"
  done
  cat <<EOF

lameduck peak RSS over the whole run (VmHWM at the end): **$(mib "$HWM_END")**.
WARN/ERROR lines in lameduck's log during the run: $LD_WARN
EOF
}

REPORT=$(report)
{
  echo "$REPORT"
  echo
  echo "## Raw wrk output"
  for t in "${TARGETS[@]}"; do
    printf '\n### %s\n\n```\n%s\n```\n' "$t" "$(cat "$TMP/out/wrk-$t.txt")"
  done
  if ((LD_WARN > 0)); then
    printf '\n## lameduck WARN/ERROR lines (first 20)\n\n```\n%s\n```\n' \
      "$(grep -E 'WARN|ERROR' "$TMP/lameduck.log" | head -20)"
  fi
} >"$RESULTS"

echo
echo "$REPORT"
echo
log "written to $RESULTS"
