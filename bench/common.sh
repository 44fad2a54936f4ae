# shellcheck shell=bash
# Shared by the bench/*.sh scripts: logging, installing what is missing, building lameduck, a
# temporary directory, stopping every process started (PIDS) on exit, and the nginx backend and
# proxy they measure against. Set BENCH_NAME and ROOT before sourcing.
# shellcheck disable=SC2034 # LAMEDUCK, P_NGINX, NGINX_PID, ...: set here for the scripts

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$BENCH_NAME" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# install_missing COMMAND:PACKAGE ...
install_missing() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  if ((${#need[@]})); then
    log "installing: ${need[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; } ||
      die "apt-get install ${need[*]} failed"
  fi
}

build_lameduck() {
  log "building lameduck (cargo build --release)"
  (cd "$ROOT" && cargo build --release -q) || die "build failed"
  LAMEDUCK="${CARGO_TARGET_DIR:-$ROOT/target}/release/lameduck"
}

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL [STATUS]: polls until URL answers STATUS (default 200), at most 10 s.
wait_http() {
  for _ in $(seq 100); do
    [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "$1") == "${2:-200}" ]] && return 0
    sleep 0.1
  done
  return 1
}

# cpu_ticks PID...: user+sys clock ticks the processes have used so far.
cpu_ticks() {
  local t=0 p v
  for p in "$@"; do
    v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

NGINX_USER=""
[[ $EUID -eq 0 ]] && NGINX_USER="user root;" # workers must read $TMP (mode 0700)

# start_nginx_backend [LISTEN]: nginx (1 worker) answering `return 200 "ok"` on P_BACKEND (and on
# LISTEN too, e.g. `unix:/path`); its master's pid in BACKEND_PID.
start_nginx_backend() {
  P_BACKEND=$(free_port)
  mkdir -p "$TMP/backend"
  cat >"$TMP/backend/nginx.conf" <<CONF
$NGINX_USER
worker_processes 1;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$P_BACKEND;
    ${1:+listen $1;}
    location / { return 200 "ok"; }
  }
}
CONF
  nginx -p "$TMP/backend" -c "$TMP/backend/nginx.conf" -g 'daemon off;' 2>"$TMP/backend.log" &
  BACKEND_PID=$!
  PIDS+=($!)
  wait_http "http://127.0.0.1:$P_BACKEND/" || die "the nginx backend did not start"
}

# The open-files limit nginx workers ask for: the hard limit, at most 65536 (asking for more than
# the hard limit fails with an alert in the error log).
NOFILE=$(ulimit -Hn)
[[ $NOFILE =~ ^[0-9]+$ ]] && ((NOFILE <= 65536)) || NOFILE=65536

# start_nginx_proxy [NAME [UPSTREAM_PORT [PROBE_PATH]]]: nginx proxy_pass to UPSTREAM_PORT (default
# P_BACKEND) with a keep-alive pool, WebSocket upgrades passed through, on P_NGINX (master
# NGINX_PID), files under $TMP/NAME (default proxy); up once PROBE_PATH (default /) answers 200.
# Room for tens of thousands of connections.
start_nginx_proxy() {
  local name=${1:-proxy} upstream=${2:-$P_BACKEND} probe=${3:-/}
  P_NGINX=$(free_port)
  mkdir -p "$TMP/$name"
  cat >"$TMP/$name/nginx.conf" <<CONF
$NGINX_USER
worker_processes auto;
worker_rlimit_nofile $NOFILE;
pid $TMP/$name/nginx.pid;
error_log $TMP/$name/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream backend { server 127.0.0.1:$upstream; keepalive 128; }
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 1h;
    }
  }
}
CONF
  nginx -p "$TMP/$name" -c "$TMP/$name/nginx.conf" -g 'daemon off;' 2>"$TMP/$name.log" &
  NGINX_PID=$!
  PIDS+=($!)
  wait_http "http://127.0.0.1:$P_NGINX$probe" || { cat "$TMP/$name.log" "$TMP/$name/error.log" >&2; die "the nginx proxy $name did not start"; }
}

# to_us LATENCY: a wrk latency (850.00us, 2.31ms, 1.02s) in microseconds ("nan" if unreadable).
to_us() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.0f", v }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.0f", v * 1000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.0f", v * 1e6 }
    else print "nan" }'
}

# median: the median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# start_lameduck NAME BIN UPSTREAM [ARG...]: BIN with --port 0 in front of UPSTREAM, its log in
# $TMP/NAME.log; its pid in PIDOF[NAME] and the port it bound (from its `listening` line) in
# PORT[NAME], once /ready answers 200.
declare -A PORT PIDOF
start_lameduck() {
  local name=$1 bin=$2 upstream=$3 log="$TMP/$1.log"
  shift 3
  "$bin" --port 0 --bind 127.0.0.1 --upstream "$upstream" "$@" >"$log" 2>&1 &
  PIDOF[$name]=$!
  PIDS+=($!)
  PORT[$name]=$(lameduck_port "$log")
  wait_http "http://127.0.0.1:${PORT[$name]}/ready" || die "lameduck $name never became ready"
}

# lameduck_port LOG [TENTHS]: the port a lameduck started with `--port 0` logged in its
# `listening` line, waiting for it at most TENTHS tenths of a second (default 100).
lameduck_port() {
  local port=""
  for _ in $(seq "${2:-100}"); do
    port=$(sed -n 's/.*listening.*address=[0-9.]*:\([0-9]*\).*/\1/p' "$1" | head -1)
    [[ -n $port ]] && { echo "$port"; return 0; }
    sleep 0.1
  done
  cat "$1" >&2
  die "lameduck did not log its port"
}
