#!/usr/bin/env python3
"""Acceptance check B: rolling restart of two replicas behind HAProxy under steady load.

    python3 tests/acceptance/check_rolling.py --mode lameduck   # replicas = lameduck -- node
    python3 tests/acceptance/check_rolling.py --mode direct     # replicas = bare node (baseline)

HAProxy (127.0.0.1) balances round-robin over two replicas and health-checks each one every
300 ms (`option httpchk GET /ready` for lameduck, `GET /` for the bare backends;
`inter 300 fastinter 300 downinter 300 fall 1 rise 1`).  --workers client threads send requests
continuously for --duration s (each a GET /slow with a delay drawn from MIX_MS, over keep-alive
connections to HAProxy), plus --sse-workers threads streaming /sse (3 s streams).
Meanwhile replica 1 gets SIGTERM, is waited for, started again and waited for until HAProxy
sees it UP; then the same for replica 2.  Every non-200 answer, wrong body or connection error
is a failure.  With --mode lameduck the expected failure count is zero (exit status 1 otherwise);
--mode direct only reports.
"""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402

MIX_MS = [0, 0, 10, 20, 50, 100, 200, 500, 1000]

HAPROXY_CFG = """\
global
    maxconn 4096
    stats socket {sock} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    timeout check 1s
    retries {retries}
{redispatch}

frontend fe
    bind 127.0.0.1:{hport}
    default_backend be

backend be
    balance roundrobin
    option httpchk GET {check_path}
    http-check expect status 200
    default-server inter 300 fastinter 300 downinter 300 fall 1 rise 1
    server r1 127.0.0.1:{p1} check
    server r2 127.0.0.1:{p2} check
"""


class Replica:
    def __init__(self, name, mode, out_dir, drain_delay, grace, label):
        self.name, self.mode = name, mode
        # Fixed ports: HAProxy's config names them, and a restarted replica must come back on them.
        self.public = c.fixed_port()
        self.upstream = c.fixed_port() if mode == "lameduck" else self.public
        self.log_path = os.path.join(out_dir, f"rolling-{label}-{name}.log")
        self.drain_delay, self.grace = drain_delay, grace
        self.proc = None
        self.watcher = None

    def start(self):
        env = {"BACKEND_NAME": self.name}
        if self.mode == "lameduck":
            argv = c.lameduck_argv(self.public, self.upstream, "node", grace=self.grace,
                                   drain_delay=self.drain_delay)
        else:
            argv = c.backend_argv("node")
            env["PORT"] = str(self.public)
        with open(self.log_path, "a") as f:
            f.write(f"---- start at {time.strftime('%H:%M:%S')} ----\n")
        self.proc = c.spawn(argv, self.log_path, env)
        self.watcher = c.ExitWatcher(self.proc)

    def is_ready(self):
        path = "/ready" if self.mode == "lameduck" else "/"
        return c.http_get(self.public, path, timeout=1)[0] == 200


def haproxy_stat(sock_path):
    """{server name: status} from the stats socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    s.connect(sock_path)
    s.sendall(b"show stat\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        if not line:
            continue
        row = dict(zip(header, line.split(",")))
        if row.get("pxname") == "be" and row.get("svname") in ("r1", "r2"):
            out[row["svname"]] = row.get("status")
    return out


def worker(wid, hport, stop_at, results, rng):
    conn = None
    reused = False
    n = 0
    while c.now() < stop_at:
        n += 1
        ms = rng.choice(MIX_MS)
        ident = f"w{wid}-{n}"
        rec = {"kind": "req", "id": ident, "ms": ms, "start": c.now(), "reused_conn": reused}
        try:
            if conn is None:
                conn = http.client.HTTPConnection(c.HOST, hport, timeout=15)
                reused = False
                rec["reused_conn"] = False
            conn.request("GET", f"/slow?ms={ms}&id={ident}")
            resp = conn.getresponse()
            body = resp.read()
            rec.update(status=resp.status, backend=resp.getheader("x-backend"),
                       ok=(resp.status == 200 and body == c.slow_body(ident)))
            if not rec["ok"]:
                rec["body"] = body[:200]
            if resp.will_close:
                conn.close()
                conn = None
            else:
                reused = True
        except Exception as e:  # noqa: BLE001
            rec.update(status=None, ok=False, error=repr(e))
            if conn is not None:
                conn.close()
            conn = None
        rec["end"] = c.now()
        results.append(rec)
    if conn is not None:
        conn.close()


def sse_worker(wid, hport, stop_at, results, n_events):
    n = 0
    while c.now() < stop_at:
        n += 1
        ident = f"e{wid}-{n}"
        rec = {"kind": "sse", "id": ident, "start": c.now()}
        conn = http.client.HTTPConnection(c.HOST, hport, timeout=15)
        try:
            conn.request("GET", f"/sse?n={n_events}&interval=500&id={ident}")
            resp = conn.getresponse()
            body = resp.read()
            rec.update(status=resp.status, backend=resp.getheader("x-backend"),
                       ok=(resp.status == 200 and body == c.sse_body(n_events, ident)))
            if not rec["ok"]:
                rec["body"] = body[:200]
        except Exception as e:  # noqa: BLE001
            rec.update(status=None, ok=False, error=repr(e))
        finally:
            conn.close()
        rec["end"] = c.now()
        results.append(rec)


def stat_poller(sock_path, stop, events, t_base):
    last = {}
    while not stop.is_set():
        try:
            st = haproxy_stat(sock_path)
            for k, v in st.items():
                if last.get(k) != v:
                    events.append((c.now(), f"haproxy: {k} {last.get(k)} -> {v}"))
                    last[k] = v
        except Exception:  # noqa: BLE001
            pass
        stop.wait(0.02)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["lameduck", "direct"], required=True)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--sse-workers", type=int, default=2)
    ap.add_argument("--drain-delay", default="1s")
    ap.add_argument("--grace-period", default="30s")
    ap.add_argument("--retries", type=int, default=0, help="HAProxy `retries` (0: the LB hides nothing)")
    ap.add_argument("--redispatch", action="store_true", help="add `option redispatch`")
    ap.add_argument("--first-kill-at", type=float, default=3.0)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds between replica 1 UP again and SIGTERM to replica 2")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    out_dir = args.out or tempfile.mkdtemp(prefix="lameduck-acc-")
    os.makedirs(out_dir, exist_ok=True)
    label = f"{args.mode}-retries{args.retries}{'-redispatch' if args.redispatch else ''}"
    replicas = [Replica(n, args.mode, out_dir, args.drain_delay, args.grace_period, label) for n in ("r1", "r2")]
    hport = c.fixed_port()
    sock_path = os.path.join(out_dir, f"haproxy-{label}.sock")
    cfg_path = os.path.join(out_dir, f"haproxy-{label}.cfg")
    with open(cfg_path, "w") as f:
        f.write(HAPROXY_CFG.format(
            sock=sock_path, retries=args.retries,
            redispatch="    option redispatch" if args.redispatch else "",
            hport=hport, check_path="/ready" if args.mode == "lameduck" else "/",
            p1=replicas[0].public, p2=replicas[1].public))
    chk = subprocess.run([c.HAPROXY, "-c", "-f", cfg_path], capture_output=True, text=True)
    if chk.returncode != 0:
        c.log(f"haproxy config invalid:\n{chk.stdout}{chk.stderr}")
        return 1

    c.log(f"B[{label}]: haproxy on {hport}; " + ", ".join(
        f"{r.name}: public {r.public}" + (f" -> node {r.upstream}" if args.mode == "lameduck" else " (node)")
        for r in replicas) + f"; logs in {out_dir}")
    for r in replicas:
        r.start()
    for r in replicas:
        if not c.wait_until(r.is_ready, timeout=30):
            c.log(f"FAIL: replica {r.name} never became ready\n{c.tail(r.log_path)}")
            return 1
    hap = c.spawn([c.HAPROXY, "-db", "-f", cfg_path], os.path.join(out_dir, f"haproxy-{label}.log"))
    if not c.wait_until(lambda: haproxy_stat(sock_path) == {"r1": "UP", "r2": "UP"}, timeout=10):
        c.log("FAIL: haproxy never saw both replicas UP")
        return 1
    c.log("both replicas UP in haproxy; starting load")

    events = []
    results = []
    t_start = c.now()
    stop_at = t_start + args.duration
    stop_stats = threading.Event()
    threading.Thread(target=stat_poller, args=(sock_path, stop_stats, events, t_start), daemon=True).start()
    rng = random.Random(args.seed)
    threads = [threading.Thread(target=worker, args=(i, hport, stop_at, results, random.Random(rng.random())), daemon=True)
               for i in range(args.workers)]
    threads += [threading.Thread(target=sse_worker, args=(i, hport, stop_at, results, 6), daemon=True)
                for i in range(args.sse_workers)]
    for t in threads:
        t.start()

    def ev(msg):
        events.append((c.now(), msg))
        c.log(f"  t={c.now() - t_start:6.3f}s {msg}")

    restart_ok = True
    exit_codes = {}
    leftovers = {}
    time.sleep(args.first_kill_at)
    for r in replicas:
        ev(f"SIGTERM {r.name} (pid {r.proc.pid})")
        t_kill = c.now()
        os.kill(r.proc.pid, signal.SIGTERM)
        if not r.watcher.wait(timeout=45):
            ev(f"{r.name} did not exit; giving up")
            restart_ok = False
            break
        exit_codes[r.name] = r.watcher.code
        left = c.tagged_pids(also=f"BACKEND_NAME={r.name}")
        leftovers[r.name] = [c.describe_pid(p) for p in left]
        ev(f"{r.name} exited with {r.watcher.code} after {r.watcher.exited_at - t_kill:.3f}s; "
           f"processes of {r.name} left: {len(left)}")
        r.start()
        ev(f"{r.name} started again (pid {r.proc.pid})")
        if not c.wait_until(r.is_ready, timeout=30, interval=0.02):
            ev(f"{r.name} never became ready again")
            restart_ok = False
            break
        ev(f"{r.name} ready")
        # Give haproxy at least two check intervals with the new process in place, so an UP
        # left over from before the restart (a bare backend can die and come back between two
        # checks) does not count.
        time.sleep(0.65)
        if not c.wait_until(lambda: haproxy_stat(sock_path).get(r.name) == "UP", timeout=10, interval=0.02):
            ev(f"haproxy never saw {r.name} UP again")
            restart_ok = False
            break
        ev(f"haproxy sees {r.name} UP")
        if r is replicas[0]:
            time.sleep(args.settle)
    t_seq_end = c.now()
    if c.now() > stop_at:
        # Restarts without load behind them prove nothing: the run does not count.
        ev(f"the restart sequence outlasted the {args.duration}s load")
        restart_ok = False
    for t in threads:
        t.join(timeout=args.duration + 30)
    stop_stats.set()

    # ---- report
    results.sort(key=lambda r: r["start"])
    reqs = [r for r in results if r["kind"] == "req"]
    sses = [r for r in results if r["kind"] == "sse"]
    fails = [r for r in results if not r.get("ok")]
    by_kind = {}
    for r in fails:
        key = f"status {r['status']}" if r.get("status") is not None else r.get("error", "?").split("(")[0]
        by_kind[key] = by_kind.get(key, 0) + 1
    per_backend = {}
    for r in results:
        if r.get("ok"):
            per_backend[r.get("backend")] = per_backend.get(r.get("backend"), 0) + 1
    rate = 100.0 * len(fails) / max(1, len(results))
    c.log("timeline:")
    for t, msg in sorted(events):
        c.log(f"  t={t - t_start:6.3f}s {msg}")
    c.log(f"B[{label}]: {len(results)} requests ({len(reqs)} plain over {args.workers} workers, "
          f"{len(sses)} SSE streams over {args.sse_workers} workers) in {max(r['end'] for r in results) - t_start:.1f}s; "
          f"{len(fails)} failed ({rate:.2f}%) {by_kind}; successes per backend {per_backend}; "
          f"replica exit codes {exit_codes}; processes left after each exit {leftovers}")
    for r in fails[:15]:
        c.log(f"   failed: {r['id']} ({r['kind']}, ms={r.get('ms')}) started t={r['start'] - t_start:.3f}s "
              f"ended t={r['end'] - t_start:.3f}s status={r.get('status')} error={r.get('error')} "
              f"body={r.get('body')!r} reused_conn={r.get('reused_conn')}")
    if len(fails) > 15:
        c.log(f"   ... {len(fails) - 15} more")
    if args.mode == "lameduck":
        for r in replicas:
            c.log(f"{r.name} log ({r.log_path}):\n" + c.tail(r.log_path, 40))
    with open(os.path.join(out_dir, f"rolling-{label}.json"), "w") as f:
        json.dump({"label": label, "total": len(results), "failed": len(fails), "failure_rate_pct": rate,
                   "by_kind": by_kind, "per_backend": per_backend, "exit_codes": exit_codes,
                   "restart_ok": restart_ok, "leftovers": leftovers}, f, indent=1)
    ok = restart_ok and (args.mode != "lameduck" or (not fails and all(v == 0 for v in exit_codes.values())
                                                       and not any(leftovers.values())))
    verdict = "PASS" if ok else "FAIL"
    if args.mode == "direct":
        verdict = "INFO" if restart_ok else "FAIL"
    c.log(f"{verdict} B[{label}]: {len(fails)} failed of {len(results)} ({rate:.2f}%)")
    return 0 if ok else 1


if __name__ == "__main__":
    c.run_main(main)
