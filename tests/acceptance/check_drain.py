#!/usr/bin/env python3
"""Acceptance check A: SIGTERM lameduck with slow requests and SSE streams in flight.

    python3 tests/acceptance/check_drain.py --backend node      # or --backend uvicorn
    python3 tests/acceptance/check_drain.py --backend uvicorn-unix --slow 20

`uvicorn-unix`: lameduck --upstream unix:/PATH, uvicorn --uds "$LAMEDUCK_UPSTREAM_SOCKET"; a stale
socket file (its listener closed) is left at PATH beforehand, as a killed earlier run would.

Starts `lameduck -- <backend>` on 127.0.0.1, puts --slow requests (each answered after
--duration s) and --sse event streams (lasting --duration s) in flight, sends SIGTERM to lameduck
and checks:
  A1 every in-flight request/stream completes with 200 and its whole body
  A2 /ready answers 503 "draining" within --ready-budget-ms of the SIGTERM
  A3 /health stays 200 for the whole drain (until lameduck exits)
  A4 a new request after the SIGTERM gets 503 {"error":"shutting_down"} at once
  A5 lameduck exits 0 within --exit-budget s of the last completion
  A6 nothing of the child's is left running (pgrep + /proc scan of the run's env tag)
  A7 (uvicorn-unix) the stale socket file did not make lameduck ready before uvicorn had bound:
     lameduck logged the upstream as unix:PATH, and its first request was answered by uvicorn
Exit status 0 when every check passes, 1 otherwise.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402

SSE_INTERVAL_MS = 500


def slow_client(port, i, ms, rec, started):
    rec.update(kind="slow", id=f"s{i}", start=c.now())
    conn = http.client.HTTPConnection(c.HOST, port, timeout=30)
    try:
        conn.request("GET", f"/slow?ms={ms}&id=s{i}")
        started.release()
        resp = conn.getresponse()
        rec["headers_at"] = c.now()
        body = resp.read()
        rec.update(status=resp.status, nbytes=len(body),
                   body_ok=(body == c.slow_body(f"s{i}")),
                   connection=resp.getheader("connection"))
    except Exception as e:  # noqa: BLE001
        rec.update(status=None, body_ok=False, error=repr(e))
    finally:
        rec["end"] = c.now()
        conn.close()


def sse_client(port, i, n, rec, started):
    rec.update(kind="sse", id=f"e{i}", start=c.now(), event_times=[])
    conn = http.client.HTTPConnection(c.HOST, port, timeout=30)
    data = b""
    try:
        conn.request("GET", f"/sse?n={n}&interval={SSE_INTERVAL_MS}&id=e{i}")
        started.release()
        resp = conn.getresponse()
        rec["headers_at"] = c.now()
        rec["status"] = resp.status
        rec["content_type"] = resp.getheader("content-type")
        rec["connection"] = resp.getheader("connection")
        while True:
            line = resp.readline()
            if not line:
                break
            data += line
            if line == b"\n":
                rec["event_times"].append(c.now())
        rec.update(nbytes=len(data), body_ok=(data == c.sse_body(n, f"e{i}")))
    except Exception as e:  # noqa: BLE001
        rec.update(body_ok=False, error=repr(e), nbytes=len(data))
        rec.setdefault("status", None)
    finally:
        rec["end"] = c.now()
        conn.close()


def probe_loop(port, stop, out):
    """/health and /ready every ~25 ms on fresh connections, until told to stop."""
    while not stop.is_set():
        for path in ("/health", "/ready"):
            t = c.now()
            try:
                status, headers, body = c.http_get(port, path, timeout=2)
                out.append((t, c.now(), path, status, body[:200]))
            except Exception as e:  # noqa: BLE001
                out.append((t, c.now(), path, None, repr(e)))
        stop.wait(0.025)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["node", "uvicorn", "uvicorn-unix"], required=True)
    ap.add_argument("--slow", type=int, default=100)
    ap.add_argument("--sse", type=int, default=20)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds each slow request/stream lasts")
    ap.add_argument("--sigterm-after", type=float, default=1.0,
                    help="seconds after the load starts to send SIGTERM (streams are then mid-way)")
    ap.add_argument("--grace-period", default="30s")
    ap.add_argument("--ready-budget-ms", type=float, default=100.0)
    ap.add_argument("--reject-budget-ms", type=float, default=100.0)
    ap.add_argument("--exit-budget", type=float, default=1.5)
    ap.add_argument("--out", default=None, help="directory for logs (default: a new temp dir)")
    args = ap.parse_args()

    out_dir = args.out or tempfile.mkdtemp(prefix="lameduck-acc-")
    os.makedirs(out_dir, exist_ok=True)
    up_port = c.fixed_port()
    sock_dir = None
    upstream = up_port
    if args.backend == "uvicorn-unix":
        sock_dir = tempfile.mkdtemp(prefix="lameduck-acc-uds-")
        up_port = os.path.join(sock_dir, "app.sock")
        upstream = f"unix:{up_port}"
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(up_port)
        stale.close()
    try:
        return drain(args, out_dir, up_port, upstream)
    finally:
        if sock_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)


def drain(args, out_dir, up_port, upstream):
    log_path = os.path.join(out_dir, f"drain-{args.backend}.lameduck.log")
    ms = int(args.duration * 1000)
    n_events = max(1, int(ms / SSE_INTERVAL_MS))
    total = args.slow + args.sse
    results = {}

    stale_before = isinstance(up_port, str) and os.path.exists(up_port)
    proc = c.spawn(c.lameduck_argv(0, upstream, args.backend, grace=args.grace_period), log_path)
    watcher = c.ExitWatcher(proc)
    port = c.wait_listening(log_path, proc)
    c.log(f"A[{args.backend}]: lameduck on {c.HOST}:{port}, backend on {up_port}, log {log_path}")
    if not c.wait_until(lambda: c.ready_json(port)[0] == 200, timeout=30):
        c.log("FAIL: lameduck never became ready\n" + c.tail(log_path))
        return 1
    warm_st, h, _ = c.http_get(port, "/slow?ms=0&id=warm")
    warm_by = h.get("x-backend")
    c.log(f"ready; warm-up request -> {warm_st}")

    # Find the backend process (lameduck's child) before the shutdown, for the report.
    child_pids = [p for p in c.tagged_pids() if p != proc.pid]
    c.log("backend processes: " + "; ".join(c.describe_pid(p) for p in child_pids))

    # ---- put the load in flight
    recs = [dict() for _ in range(total)]
    started = threading.Semaphore(0)
    threads = []
    for i in range(args.slow):
        threads.append(threading.Thread(target=slow_client, args=(port, i, ms, recs[i], started), daemon=True))
    for j in range(args.sse):
        threads.append(threading.Thread(target=sse_client, args=(port, j, n_events, recs[args.slow + j], started), daemon=True))
    t_load = c.now()
    for t in threads:
        t.start()
    all_sent = all(started.acquire(timeout=10) for _ in range(total))

    active = {"n": None}

    def all_in_flight():
        st, js = c.ready_json(port)
        active["n"] = js.get("active_requests")
        return st == 200 and js.get("active_requests", 0) >= total

    ok_in_flight = c.wait_until(all_in_flight, timeout=args.duration * 0.6, interval=0.01)
    ok_headers = c.wait_until(lambda: all("headers_at" in r for r in recs[args.slow:]),
                              timeout=args.duration * 0.6)
    time.sleep(max(0.0, t_load + args.sigterm_after - c.now()))
    sse_events = sum(len(r.get("event_times", [])) for r in recs[args.slow:])
    sse_headers = sum(1 for r in recs[args.slow:] if "headers_at" in r)
    c.log(f"in flight per /ready: {active['n']} of {total}; SIGTERM at {c.now() - t_load:.3f}s after load start "
          f"(SSE streams with headers received: {sse_headers}/{args.sse}, "
          f"SSE events received so far: {sse_events})")
    # Without this the drain would have less (or nothing) to wait for, and A1/A5 prove little.
    in_flight_detail = (f"/ready reported {active['n']} of {total} active; every request sent: {all_sent}; "
                        f"SSE headers received {sse_headers}/{args.sse}, SSE events so far {sse_events}; "
                        f"SIGTERM {c.now() - t_load:.3f}s after the load started")

    probes = []
    stop_probes = threading.Event()
    prober = threading.Thread(target=probe_loop, args=(port, stop_probes, probes), daemon=True)

    # ---- SIGTERM
    t0 = c.now()
    wall0 = time.time()
    os.kill(proc.pid, signal.SIGTERM)
    # A2: /ready 503 draining, tight loop on fresh connections.
    ready_503_at = None
    ready_first = None
    ready_polls = []
    while c.now() - t0 < 2.0:
        try:
            st, _h, body = c.http_get(port, "/ready", timeout=1)
        except Exception as e:  # noqa: BLE001
            ready_polls.append((c.now() - t0, None, repr(e)))
            continue
        ready_polls.append((c.now() - t0, st, body))
        if st == 503:
            ready_503_at = c.now()
            ready_first = body
            break
        time.sleep(0.002)
    # A4: a new request right away.
    t_new = c.now()
    try:
        new_st, new_h, new_body = c.http_get(port, f"/slow?ms={ms}&id=new", timeout=10)
    except Exception as e:  # noqa: BLE001
        new_st, new_h, new_body = None, {}, repr(e).encode()
    new_latency = c.now() - t_new
    new_at = t_new - t0
    prober.start()

    # ---- wait for the in-flight work and lameduck's exit
    for t in threads:
        t.join(timeout=args.duration + 20)
    watcher.wait(timeout=60)
    stop_probes.set()
    prober.join(timeout=5)
    t_exit = watcher.exited_at

    # A6 right after the exit.
    leftovers_tag = [p for p in c.tagged_pids() if p != proc.pid]
    leftovers_pgrep = c.pgrep(c.backend_pattern(args.backend, up_port))
    ps_leftovers = [c.describe_pid(p) for p in sorted(set(leftovers_tag + leftovers_pgrep))]
    orig_children_alive = [p for p in child_pids if os.path.exists(f"/proc/{p}") and
                           c.describe_pid(p).split()[1] != "state=Z"]

    # ---- evaluate
    checks = []

    def check(name, ok, detail):
        checks.append((name, ok, detail))
        c.log(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")

    check("A0 all the load in flight at the SIGTERM", all_sent and ok_in_flight and ok_headers,
          in_flight_detail)

    bad = [r for r in recs if r.get("status") != 200 or not r.get("body_ok")]
    slow_recs, sse_recs = recs[:args.slow], recs[args.slow:]
    ends = [r["end"] for r in recs if "end" in r]
    last_end = max(ends) if ends else None
    slow_lat = [r["end"] - r["start"] for r in slow_recs if "end" in r]
    sse_lat = [r["end"] - r["start"] for r in sse_recs if "end" in r]
    first_event_lat = [r["event_times"][0] - r["start"] for r in sse_recs if r.get("event_times")]
    conn_close = sum(1 for r in recs if (r.get("connection") or "").lower() == "close")
    check("A1 in-flight complete", not bad and len(ends) == total,
          f"{total - len(bad)}/{total} with 200 and whole body "
          f"(slow {sum(1 for r in slow_recs if r.get('status') == 200 and r.get('body_ok'))}/{args.slow}, "
          f"sse {sum(1 for r in sse_recs if r.get('status') == 200 and r.get('body_ok'))}/{args.sse}); "
          f"slow latency {min(slow_lat):.3f}-{max(slow_lat):.3f}s, sse duration {min(sse_lat):.3f}-{max(sse_lat):.3f}s, "
          f"first SSE event after {min(first_event_lat):.3f}-{max(first_event_lat):.3f}s; "
          f"{conn_close}/{total} responses carried Connection: close; "
          f"SIGTERM at {t0 - t_load:.3f}s after load start, last completion {last_end - t0:.3f}s after SIGTERM")
    for r in bad[:10]:
        c.log(f"   bad: {r.get('id')} status={r.get('status')} nbytes={r.get('nbytes')} error={r.get('error')} "
              f"end={r.get('end', 0) - t0:+.3f}s")

    if ready_503_at is not None:
        lat_ms = (ready_503_at - t0) * 1000
        body = json.loads(ready_first)
        check("A2 /ready 503 draining", lat_ms <= args.ready_budget_ms and body.get("status") == "draining",
              f"first 503 answered {lat_ms:.1f} ms after SIGTERM (poll #{len(ready_polls)}), body {ready_first.decode()}")
    else:
        check("A2 /ready 503 draining", False, f"no 503 within 2 s; polls: {ready_polls[:5]}")

    # /health until exit; anything answered after the exit began is irrelevant.
    drain_end = t_exit if t_exit else c.now()
    health = [p for p in probes if p[2] == "/health" and p[1] <= drain_end]
    health_bad = [p for p in health if p[3] != 200]
    # probes that failed only because lameduck already exited (refused after exit) are not counted
    health_bad = [p for p in health_bad if not (t_exit and p[0] >= t_exit - 0.05 and p[3] is None)]
    ready_probes = [p for p in probes if p[2] == "/ready" and p[1] <= drain_end]
    ready_not503 = [p for p in ready_probes if p[3] not in (503, None)]
    last_health = max((p[1] for p in health if p[3] == 200), default=None)
    check("A3 /health 200 during drain", bool(health) and not health_bad,
          f"{len(health) - len(health_bad)}/{len(health)} /health probes 200 between SIGTERM and exit"
          + (f" (last 200 at {last_health - t0:.3f}s after SIGTERM)" if last_health else "")
          + f"; /ready probes in that time: {len(ready_probes) - len(ready_not503)}/{len(ready_probes)} 503"
          + "".join(f"\n      bad: t={p[0] - t0:+.3f}s {p[2]} -> {p[3]} {p[4]!r}" for p in (health_bad + ready_not503)[:8]))

    new_ok = (new_st == 503 and b"shutting_down" in new_body and new_latency * 1000 <= args.reject_budget_ms)
    check("A4 new request rejected at once", new_ok,
          f"GET /slow sent {new_at * 1000:.1f} ms after SIGTERM -> {new_st} in {new_latency * 1000:.1f} ms, "
          f"body {new_body[:120]!r}, Connection: {new_h.get('connection')}, Retry-After: {new_h.get('retry-after')}")

    if t_exit is None:
        check("A5 exit 0 soon after last completion", False, "lameduck did not exit within the bound")
    else:
        gap = t_exit - last_end
        check("A5 exit 0 soon after last completion", watcher.code == 0 and 0 <= gap <= args.exit_budget,
              f"exit status {watcher.code}, exited {gap:.3f}s after the last completion "
              f"({t_exit - t0:.3f}s after SIGTERM)")

    check("A6 no child process left", not ps_leftovers and not orig_children_alive,
          f"backend pids before shutdown {child_pids}; after exit: pgrep -f {c.backend_pattern(args.backend, up_port)!r} "
          f"-> {leftovers_pgrep}, env-tag scan -> {leftovers_tag}"
          + "".join(f"\n      left: {d}" for d in ps_leftovers))

    if args.backend == "uvicorn-unix":
        with open(log_path, errors="replace") as f:
            logged = f"upstream=unix:{up_port}" in f.read()
        check("A7 stale socket file not taken for the backend", stale_before and logged and warm_st == 200
              and warm_by == "uvicorn",
              f"stale socket file at {up_port} before the start: {stale_before}; upstream logged as "
              f"unix:PATH: {logged}; first request -> {warm_st} from x-backend {warm_by!r}")

    c.log(f"lameduck log ({log_path}), SIGTERM sent at wall {time.strftime('%H:%M:%S', time.gmtime(wall0))}"
          f".{int(wall0 * 1000) % 1000:03d}Z:\n" + c.tail(log_path, 30))
    failed = [n for n, ok, _ in checks if not ok]
    c.log(f"A[{args.backend}]: {len(checks) - len(failed)} passed, {len(failed)} failed")
    with open(os.path.join(out_dir, f"drain-{args.backend}.json"), "w") as f:
        json.dump([{"check": n, "pass": ok, "detail": d} for n, ok, d in checks], f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    c.run_main(main)
