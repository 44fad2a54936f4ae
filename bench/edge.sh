#!/usr/bin/env bash
# The edge under pressure: 3,000 idle keep-alive client connections plus 300 slowloris clients
# (request heads sent a byte at a time, never finished) held open against the proxy, while wrk
# measures ordinary requests beside them. Reported for lameduck and, in the same run, nginx's
# proxy_pass, both in front of one nginx `return 200` backend: requests/s, p50/p99, and how
# many of the held connections each proxy still had open at the end (slowloris ones should
# have been closed by the header-read timeout).
#
#   bench/edge.sh [LAMEDUCK_BIN]        # default: a fresh release build
#   IDLE=3000 SLOW=300 DURATION=10s bench/edge.sh
#
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -uo pipefail
BENCH_NAME=edge
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/common.sh"
IDLE=${IDLE:-3000}
SLOW=${SLOW:-300}
DURATION=${DURATION:-10s}
if [[ -n ${1:-} ]]; then LAMEDUCK=$1; else build_lameduck; fi
install_missing nginx:nginx-light wrk:wrk curl:curl
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

start_nginx_backend
start_nginx_proxy
"$LAMEDUCK" --port 0 --bind 127.0.0.1 --upstream "http://127.0.0.1:$P_BACKEND" >"$TMP/ld.log" 2>&1 &
LD_PID=$!
PIDS+=($LD_PID)
P_LAMEDUCK=$(lameduck_port "$TMP/ld.log")
wait_http "http://127.0.0.1:$P_LAMEDUCK/ready" || die "lameduck never became ready"

# The held connections: IDLE that each send one request and keep the connection, SLOW that
# dribble a request head one byte every 2 s. Prints how many of each are still open every
# second; stops when its stdin closes.
cat >"$TMP/hold.py" <<'EOF'
import asyncio, sys
port, idle_n, slow_n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
open_idle, open_slow = set(), set()

async def idle(i):
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); await w.drain()
        await r.readuntil(b"ok")
        open_idle.add(i)
        await r.read()          # until the proxy closes it
    except Exception:
        pass
    open_idle.discard(i)

async def slow(i):
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        open_slow.add(i)
        closed = asyncio.create_task(r.read())   # whatever the proxy answers, until it closes
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10000:
            w.write(bytes([b])); await w.drain()
            await asyncio.wait([closed], timeout=2)
            if closed.done():
                break
    except Exception:
        pass
    open_slow.discard(i)

async def main():
    tasks = [asyncio.create_task(idle(i)) for i in range(idle_n)]
    tasks += [asyncio.create_task(slow(i)) for i in range(slow_n)]
    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, sys.stdin.read)
    while not stop.done():
        print(len(open_idle), len(open_slow), flush=True)
        await asyncio.wait([stop], timeout=1)
    for t in tasks:
        t.cancel()

asyncio.run(main())
EOF

rss_kib() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status"; }
echo "| proxy | held idle / slowloris at the start | after the run | req/s | p50 | p99 | lameduck RSS |"
echo "|---|---|---|---:|---:|---:|---:|"
for target in nginx lameduck; do
  port=$P_NGINX; [[ $target == lameduck ]] && port=$P_LAMEDUCK
  exec {hold_in}> >(python3 "$TMP/hold.py" "$port" "$IDLE" "$SLOW" >"$TMP/hold-$target.log" 2>&1)
  for _ in $(seq 60); do
    read -r idle_open slow_open < <(tail -1 "$TMP/hold-$target.log" 2>/dev/null) || true
    [[ ${idle_open:-0} -ge $IDLE ]] && break
    sleep 1
  done
  start="${idle_open:-0} / ${slow_open:-0}"
  log "$target: holding $start; wrk -t1 -c64 -d$DURATION beside them"
  wrk -t1 -c64 -d"$DURATION" --latency "http://127.0.0.1:$port/" >"$TMP/wrk-$target.txt" 2>&1
  read -r idle_open slow_open < <(tail -1 "$TMP/hold-$target.log") || true
  rss="-"; [[ $target == lameduck ]] && rss="$(awk -v k="$(rss_kib "$LD_PID")" 'BEGIN {printf "%.1f MiB", k / 1024}')"
  exec {hold_in}>&-
  sleep 2
  rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$TMP/wrk-$target.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$TMP/wrk-$target.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$TMP/wrk-$target.txt")
  echo "| $target | $start | $idle_open / $slow_open | $rps | $p50 | $p99 | $rss |"
done
echo
echo "Machine: $(nproc) cores; load at end $(cut -d' ' -f1-3 /proc/loadavg). Slowloris clients send one byte every 2 s."
