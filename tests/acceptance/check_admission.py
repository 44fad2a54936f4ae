#!/usr/bin/env python3
"""Acceptance check C: admission, configuration and observability (SPEC §7), from the outside.

    python3 tests/acceptance/check_admission.py [--out DIR] [--only 1,4,9]

Runs the release binary in front of a plain Node backend (admission_backend.js) on 127.0.0.1 and
checks:
  C1 --max-concurrency 2 --queue-timeout 10s: with 2 slow requests in flight /ready is 503
     at_capacity, a 3rd request queues and then gets 200; C1b meanwhile the metrics say queued 1,
     in flight 3; C1c lameduck then exits 0 on SIGTERM
  C2 --max-concurrency 1 --queue-timeout 0s: the 2nd request gets 503 in under 0.5 s
  C3 a backend that binds its port only after 2.5 s: /ready says "starting"; an early request is
     held and answered 200
  C4 cerebrium.toml in the working directory (prefixed and unprefixed schema) sets the port, the
     grace period, the concurrency and the ready/health paths
  C5 --config FILE works; flag > env var > config file
  C6 --drain-delay 2s: new requests are proxied (200) while /ready is 503, then refused
  C7 --metrics-path: parses with prometheus_client (scraped plainly and as Prometheus does); in-flight and
     request counts match the traffic sent; C7b Accept: text/plain;version=0.0.4 gets that format
  C8 --log-format json: every stderr line is JSON; --access-log: one line per request with method,
     path, status, bytes, duration
  C9 --grace-period banana exits 2 with one line naming the option; a broken TOML config file
     exits 2 with one line naming the file
Exit status 0 when every check passes, 1 otherwise.  Needs node and `pip install prometheus_client`.
"""

import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402

BACKEND = os.path.join(c.HERE, "admission_backend.js")
OUT = ""
RESULTS: list[dict] = []


# --------------------------------------------------------------------------- bookkeeping

def record(cid: str, name: str, ok: bool, detail: str) -> None:
    RESULTS.append(dict(id=cid, name=name, ok=ok, detail=detail))
    c.log(f"{'PASS' if ok else 'FAIL'} {cid} {name}: {detail}")


# --------------------------------------------------------------------------- processes

def clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LAMEDUCK_") and k not in ("PORT", "RUST_LOG")}
    env["LAMEDUCK_ACC_TAG"] = c.TAG
    if extra:
        env.update(extra)
    return env


_run_no = [0]


class Lameduck:
    """One lameduck process with stdout and stderr kept apart."""

    def __init__(self, args: list[str], *, name: str, cwd: str, port: int | None = 0,
                 env: dict | None = None, backend: bool = True, upstream: bool = True):
        """port 0: `--port 0`, and the port is read from the `listening` log line.  None: the
        configuration sets it (the caller sets self.port)."""
        _run_no[0] += 1
        self.name = f"{_run_no[0]:02d}-{name}"
        self.port = port
        self.up = c.fixed_port()
        argv = [c.LAMEDUCK]
        if port is not None:
            argv += ["--port", str(port), "--bind", c.HOST]
        if upstream:
            argv += ["--upstream", f"http://{c.HOST}:{self.up}"]
        argv += args
        if backend:
            argv += ["--", c.NODE, BACKEND]
        self.argv = argv
        self.err_path = os.path.join(OUT, f"{self.name}.stderr")
        self.out_path = os.path.join(OUT, f"{self.name}.stdout")
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env=clean_env(env), cwd=cwd, start_new_session=True)
        with c._lock:
            c._procs.append(self.proc)
        self.started = c.now()
        if port == 0:
            self.port = c.wait_listening(self.err_path, self.proc)
        c.log(f"started {self.name}: {' '.join(argv[1:])} (pid {self.proc.pid}, cwd {cwd}, "
              f"port {self.port})")

    def stderr(self) -> str:
        with open(self.err_path, "r", errors="replace") as f:
            return f.read()

    def stderr_lines(self) -> list[str]:
        return [l for l in self.stderr().splitlines() if l.strip()]

    def wait_ready(self, path: str = "/ready", port: int | None = None, timeout: float = 15) -> bool:
        port = port or self.port
        ok = c.wait_until(lambda: c.http_get(port, path, timeout=2)[0] == 200, timeout)
        if not ok:
            c.log(f"{self.name}: not ready on {port}{path}; stderr tail:\n{c.tail(self.err_path)}")
        return ok

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def run_cli(args: list[str], cwd: str, env: dict | None = None, timeout: float = 10):
    """lameduck without a backend that is expected to exit by itself (errors, --print-config)."""
    r = subprocess.run([c.LAMEDUCK] + args, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, env=clean_env(env), cwd=cwd, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def new_dir(name: str) -> str:
    d = os.path.join(OUT, f"cwd-{name}")
    os.makedirs(d, exist_ok=True)
    return d


# --------------------------------------------------------------------------- HTTP

class Req(threading.Thread):
    """One request on its own connection, in a thread; records status, body, timings."""

    def __init__(self, port: int, path: str, method: str = "GET", body: bytes | None = None,
                 timeout: float = 20):
        super().__init__(daemon=True)
        self.port, self.path, self.method, self.body, self.timeout = port, path, method, body, timeout
        self.status = None
        self.headers: dict = {}
        self.resp_body = b""
        self.error = None
        self.t_start = None
        self.t_end = None

    def run(self):
        self.t_start = c.now()
        conn = http.client.HTTPConnection(c.HOST, self.port, timeout=self.timeout)
        try:
            conn.request(self.method, self.path, body=self.body)
            resp = conn.getresponse()
            self.resp_body = resp.read()
            self.status = resp.status
            self.headers = {k.lower(): v for k, v in resp.getheaders()}
        except Exception as e:  # noqa: BLE001
            self.error = repr(e)
        finally:
            self.t_end = c.now()
            conn.close()

    @property
    def elapsed(self) -> float | None:
        return None if self.t_end is None else self.t_end - self.t_start

    def go(self) -> "Req":
        self.start()
        return self

    def desc(self) -> str:
        if self.error:
            return f"{self.method} {self.path} -> error {self.error}"
        return (f"{self.method} {self.path} -> {self.status} {self.resp_body[:80]!r}"
                f" in {self.elapsed:.3f}s")


def get(port, path, timeout=5.0, method="GET"):
    try:
        return c.http_get(port, path, timeout=timeout, method=method)
    except Exception as e:  # noqa: BLE001
        return None, {}, repr(e).encode()


def jget(port, path, timeout=5.0):
    s, h, b = get(port, path, timeout)
    try:
        return s, json.loads(b)
    except ValueError:
        return s, b


def wait_active(port, n, timeout=15.0, path="/ready") -> bool:
    return c.wait_until(lambda: jget(port, path, 2)[1].get("active_requests") == n, timeout)


def port_listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((c.HOST, port)) == 0


def drain_budget(ld: Lameduck) -> str | None:
    """The `budget` lameduck logs when it starts draining (grace - child_stop_timeout - 1s)."""
    m = re.search(r"draining.*budget=(\S+)", ld.stderr())
    return m.group(1) if m else None


def stderr_excerpt(ld: Lameduck, pattern: str | None = None, n: int = 12) -> str:
    lines = ld.stderr_lines()
    if pattern:
        lines = [l for l in lines if re.search(pattern, l)]
    return "\n      ".join(lines[-n:])


# --------------------------------------------------------------------------- metrics

def parse_metrics(port: int):
    """Scrapes twice, as a classic scraper (no Accept) and as Prometheus does (OpenMetrics
    preferred, the classic text format accepted), and parses each answer with the
    prometheus_client parser for the Content-Type it came with:
    {kind: {samples: {sample name: [(labels, value)]}, families, error, content_type, text}}."""
    from prometheus_client.parser import text_string_to_metric_families as classic
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
    prometheus_accept = ("application/openmetrics-text;version=1.0.0;q=0.75,"
                         "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    out = {}
    for kind, accept in (("classic", None), ("prometheus", prometheus_accept)):
        conn = http.client.HTTPConnection(c.HOST, port, timeout=5)
        conn.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
        r = conn.getresponse()
        text = r.read().decode(errors="replace")
        conn.close()
        ctype = r.getheader("content-type") or ""
        parser = om if ctype.startswith("application/openmetrics-text") else classic
        samples: dict = {}
        fams = []
        try:
            for fam in parser(text):
                fams.append((fam.name, fam.type))
                for s in fam.samples:
                    samples.setdefault(s.name, []).append((dict(s.labels), s.value))
            out[kind] = dict(samples=samples, families=fams, error=None)
        except Exception as e:  # noqa: BLE001
            out[kind] = dict(samples=samples, families=fams, error=repr(e))
        out[kind].update(content_type=ctype, text=text)
    return out


def sample(parsed: dict, name: str, **labels):
    for lab, val in parsed["samples"].get(name, []):
        if all(lab.get(k) == v for k, v in labels.items()):
            return val
    return None


# =========================================================================== checks

def check_1(cwd):
    ld = Lameduck(["--max-concurrency", "2", "--queue-timeout", "10s", "--metrics-path", "/metrics"],
                  name="c1-capacity", cwd=cwd)
    try:
        if not ld.wait_ready():
            record("C1", "at_capacity + queueing", False, "lameduck never became ready")
            return
        a = Req(ld.port, "/slow?ms=3000&id=a").go()
        b = Req(ld.port, "/slow?ms=3000&id=b").go()
        t_ab = c.now()
        got2 = wait_active(ld.port, 2)
        rs, rj = jget(ld.port, "/ready")
        hs, hj = jget(ld.port, "/health")
        ready_ok = (got2 and rs == 503 and isinstance(rj, dict) and rj.get("status") == "at_capacity"
                    and rj.get("active_requests") == 2 and rj.get("max_concurrency") == 2)
        creq = Req(ld.port, "/fast?id=c", timeout=15).go()
        t_c = c.now()
        metrics = {}

        def queued_one():
            metrics.update(parse_metrics(ld.port)["prometheus"])
            return sample(metrics, "lameduck_requests_queued") == 1
        c.wait_until(queued_one, 10)
        c_waiting = creq.t_end is None
        queued = sample(metrics, "lameduck_requests_queued")
        inflight = sample(metrics, "lameduck_requests_in_flight")
        rs2, rj2 = jget(ld.port, "/ready")
        for r in (a, b, creq):
            r.join(15)
        after = jget(ld.port, "/ready")
        a_end = max(a.t_end or 0, b.t_end or 0)
        c_ok = (creq.status == 200 and creq.resp_body == b"fast:c\n" and c_waiting
                and creq.t_end is not None and creq.t_end >= min(a.t_end or 1e18, b.t_end or 1e18) - 0.05)
        detail = (f"/ready with 2 in flight: {rs} {rj}; /health {hs} {hj}; 3rd request queued "
                  f"{creq.elapsed:.2f}s (sent {t_c - t_ab:.2f}s after the slow ones, which ended "
                  f"{(a.t_end - t_ab):.2f}s/{(b.t_end - t_ab):.2f}s) -> {creq.status} {creq.resp_body!r}; "
                  f"while queued: metrics in_flight={inflight} queued={queued}, /ready {rs2} {rj2}; "
                  f"slow ones: {a.status},{b.status}; /ready afterwards {after[0]} {after[1]}")
        ok = ready_ok and c_ok and a.status == 200 and b.status == 200 and after[0] == 200
        record("C1", "max-concurrency 2, queue-timeout 10s", ok, detail)
        record("C1b", "queued request visible in metrics", queued == 1 and inflight == 3,
               f"lameduck_requests_queued={queued} (want 1), lameduck_requests_in_flight={inflight} "
               f"(want 3: queued ones included)")
        rc = ld.stop()
        record("C1c", "idle lameduck exits 0 on SIGTERM", rc == 0, f"exit {rc}")
    finally:
        ld.kill()


def check_2(cwd):
    ld = Lameduck(["--max-concurrency", "1", "--queue-timeout", "0s"],
                  name="c2-queue0", cwd=cwd)
    try:
        if not ld.wait_ready():
            record("C2", "queue-timeout 0s", False, "lameduck never became ready")
            return
        a = Req(ld.port, "/slow?ms=2500&id=a").go()
        got1 = wait_active(ld.port, 1)
        rs, rj = jget(ld.port, "/ready")
        t = c.now()
        s, h, body = get(ld.port, "/fast?id=second")
        dt = c.now() - t
        a.join(10)
        s3, _h3, b3 = get(ld.port, "/fast?id=third")
        rc = ld.stop()
        ok = got1 and s == 503 and dt < 0.5 and a.status == 200 and s3 == 200 and rc == 0
        record("C2", "max-concurrency 1, queue-timeout 0s", ok,
               f"2nd request -> {s} in {dt * 1000:.0f} ms, body {body!r}, Retry-After="
               f"{h.get('retry-after')!r}, Connection={h.get('connection')!r}; /ready meanwhile {rs} {rj}; "
               f"holder -> {a.status}; request after the slot freed -> {s3} {b3!r}; exit {rc}")
    finally:
        ld.kill()


def check_3(cwd):
    ld = Lameduck([], name="c3-slowstart", cwd=cwd, env={"BIND_DELAY_MS": "2500"})
    try:
        t0 = ld.started
        # the first answer of /ready (once lameduck listens)
        first = None
        deadline = c.now() + 5
        while c.now() < deadline:
            s, j = jget(ld.port, "/ready", 1)
            if s is not None:
                first = (round(c.now() - t0, 3), s, j)
                break
            time.sleep(0.02)
        hs, hj = jget(ld.port, "/health")
        early = Req(ld.port, "/fast?id=early", timeout=20).go()
        t_early = c.now() - t0
        time.sleep(0.5)
        mid = jget(ld.port, "/ready")
        early.join(20)
        ready_at = None
        if c.wait_until(lambda: get(ld.port, "/ready", 1)[0] == 200, 10):
            ready_at = c.now() - t0
        answered_at = early.t_end - t0 if early.t_end else None
        rc = ld.stop()
        ok = (rc == 0 and first is not None and first[1] == 503 and isinstance(first[2], dict)
              and first[2].get("status") == "starting" and early.status == 200
              and early.resp_body == b"fast:early\n" and answered_at is not None and answered_at >= 2.4)
        record("C3", "backend binding after 2.5 s", ok,
               f"first /ready at {first[0] if first else None}s after spawn: "
               f"{first[1] if first else None} {first[2] if first else None}; /health then {hs} {hj}; "
               f"/ready at {t_early + 0.5:.2f}s: {mid[0]} {mid[1]}; early request sent at {t_early:.2f}s "
               f"-> {early.status} {early.resp_body!r} at {answered_at if answered_at is None else round(answered_at, 2)}s "
               f"(held {early.elapsed:.2f}s); /ready 200 from ~{ready_at and round(ready_at, 2)}s; "
               f"log: {stderr_excerpt(ld, 'backend is up|starting', 3)}; exit {rc}")
    finally:
        ld.kill()


CEREBRIUM_PREFIXED = """\
[cerebrium.deployment]
name = "acceptance-app"
python_version = "3.11"

[cerebrium.hardware]
cpu = 2
memory = 4.0

[cerebrium.runtime.custom]
port = {port}
entrypoint = ["lameduck", "--", "node", "server.js"]
readycheck_endpoint = "{ready}"
healthcheck_endpoint = "{health}"

[cerebrium.scaling]
min_replicas = 0
max_replicas = 3
response_grace_period = {grace}
replica_concurrency = {conc}
"""

CEREBRIUM_UNPREFIXED = """\
[deployment]
name = "acceptance-app"

[runtime.custom]
port = {port}
entrypoint = ["lameduck", "--", "node", "server.js"]
readycheck_endpoint = "{ready}"
healthcheck_endpoint = "{health}"

[scaling]
min_replicas = 0
response_grace_period = {grace}
replica_concurrency = {conc}
"""


def _pc_line(text: str, key: str) -> str:
    for line in text.splitlines():
        if line.startswith(key + " ") or line.startswith(key + "="):
            return re.sub(r"\s+", " ", line.strip())
    return "(missing)"


def check_4_one(cid, label, template, grace, conc, ready, health):
    d = new_dir(f"c4-{label}")
    # The port is what this check is about: a fixed one (see common.py), not 0.
    port = c.fixed_port()
    with open(os.path.join(d, "cerebrium.toml"), "w") as f:
        f.write(template.format(port=port, grace=grace, conc=conc, ready=ready, health=health))
    rc, out, err = run_cli(["--print-config"], cwd=d)
    pc = {k: _pc_line(out, k) for k in ("port", "grace_period", "max_concurrency", "ready_path", "health_path")}
    pc_ok = (rc == 0
             and re.match(rf"port = {port} # cerebrium\.toml", pc["port"]) is not None
             and re.match(rf'grace_period = "?{grace}s?"? # cerebrium\.toml', pc["grace_period"]) is not None
             and re.match(rf"max_concurrency = {conc} # cerebrium\.toml", pc["max_concurrency"]) is not None
             and re.match(rf'ready_path = "{ready}" # cerebrium\.toml', pc["ready_path"]) is not None
             and re.match(rf'health_path = "{health}" # cerebrium\.toml', pc["health_path"]) is not None)
    # No --port here: the port must come from cerebrium.toml.  --bind keeps it on 127.0.0.1.
    ld = Lameduck(["--bind", c.HOST], port=None, name=f"c4-{label}", cwd=d)
    ld.port = port
    try:
        up = ld.wait_ready(path=ready, port=port)
        rs, rj = jget(port, ready)
        hs, hj = jget(port, health)
        ds, _dh, db = get(port, "/ready")   # the default path: now the backend's
        listening = port_listening(port) and c.listening_port(ld.stderr()) == port
        log_line = stderr_excerpt(ld, "cerebrium", 3)
        log_ok = (f"grace_period={grace}" in log_line and f"port={port}" in log_line
                  and f"max_concurrency={conc}" in log_line and f"ready_path={ready}" in log_line
                  and f"health_path={health}" in log_line)
        rc2 = ld.stop()
        budget = drain_budget(ld)
        want_budget = f"{grace - 5 - 1}s"
        ok = (rc2 == 0 and up and listening and rs == 200 and isinstance(rj, dict)
              and rj.get("max_concurrency") == conc and hs == 200 and isinstance(hj, dict)
              and hj.get("status") == "healthy" and pc_ok and log_ok and budget == want_budget)
        record(cid, f"cerebrium.toml, {label} schema", ok,
               f"listening on cerebrium port {port}: {listening}; {ready} -> {rs} {rj}; {health} -> {hs} {hj}; "
               f"default /ready -> {ds} {db[:40]!r} (proxied to the backend); print-config rc={rc}: "
               f"{pc}; startup log: {log_line!r}; drain budget logged at SIGTERM: {budget} "
               f"(want {want_budget} = {grace}s - 5s - 1s); exit {rc2}")
    finally:
        ld.kill()


def check_4(cwd):
    check_4_one("C4a", "prefixed", CEREBRIUM_PREFIXED, 77, 3, "/cr-ready", "/cr-health")
    check_4_one("C4b", "unprefixed", CEREBRIUM_UNPREFIXED, 55, 2, "/u-ready", "/u-health")
    # both schemas in one file: the prefixed one wins (docs/configuration.md)
    d = new_dir("c4-both")
    both = (CEREBRIUM_PREFIXED.format(port=21111, grace=77, conc=3, ready="/p-ready", health="/p-health")
            + "\n" + CEREBRIUM_UNPREFIXED.format(port=22222, grace=55, conc=2, ready="/u-ready",
                                                 health="/u-health"))
    with open(os.path.join(d, "cerebrium.toml"), "w") as f:
        f.write(both)
    rc, out, err = run_cli(["--print-config"], cwd=d)
    lines = {k: _pc_line(out, k) for k in ("port", "grace_period", "max_concurrency", "ready_path")}
    ok = rc == 0 and "21111" in lines["port"] and "77" in lines["grace_period"] and \
        "= 3" in lines["max_concurrency"] and "/p-ready" in lines["ready_path"]
    record("C4c", "both schemas present: prefixed wins", ok, f"rc={rc} {lines} {err.strip()!r}")
    # explicit --cerebrium-toml FILE
    d2 = new_dir("c4-explicit")
    path = os.path.join(d, "cerebrium.toml")
    rc, out, err = run_cli(["--cerebrium-toml", path, "--print-config"], cwd=d2)
    record("C4d", "--cerebrium-toml FILE", rc == 0 and "21111" in _pc_line(out, "port"),
           f"rc={rc} {_pc_line(out, 'port')!r} {err.strip()!r}")


def check_5(cwd):
    d = new_dir("c5")
    # The port is what this check is about: a fixed one (see common.py), not 0.
    port = c.fixed_port()
    up = c.fixed_port()
    cfg = os.path.join(d, "lameduck.toml")
    with open(cfg, "w") as f:
        f.write(f'port = {port}\nbind = "127.0.0.1"\nupstream = "http://127.0.0.1:{up}"\n'
                f'grace_period = "40s"\nmax_concurrency = 5\nready_path = "/cfg-ready"\n'
                f'queue_timeout = 3\n')
    # A: the file alone
    ld = Lameduck(["--config", cfg], port=None, upstream=False, name="c5-file", cwd=d)
    ld.port = port
    try:
        upA = ld.wait_ready("/cfg-ready", port)
        sA, jA = jget(port, "/cfg-ready")
        rcA = ld.stop()
        bA = drain_budget(ld)
    finally:
        ld.kill()
    okA = rcA == 0 and upA and sA == 200 and isinstance(jA, dict) and jA.get("max_concurrency") == 5 and bA == "34s"
    record("C5a", "--config FILE sets port, grace period, concurrency, ready path", okA,
           f"port {port} from file up={upA}; /cfg-ready -> {sA} {jA}; drain budget {bA} (want 34s = 40s-5s-1s); "
           f"exit {rcA}")

    # B: env beats file, flag beats env; LAMEDUCK_CONFIG names the file
    env = {"LAMEDUCK_CONFIG": cfg, "LAMEDUCK_MAX_CONCURRENCY": "6", "LAMEDUCK_GRACE_PERIOD": "20s",
           "LAMEDUCK_READY_PATH": "/env-ready"}
    ld = Lameduck(["--max-concurrency", "7", "--ready-path", "/flag-ready"], port=None, upstream=False,
                  name="c5-override", cwd=d, env=env)
    ld.port = port
    try:
        upB = ld.wait_ready("/flag-ready", port)
        sB, jB = jget(port, "/flag-ready")
        sE, _hE, bE = get(port, "/env-ready")
        sF, _hF, bF = get(port, "/cfg-ready")
        rcB = ld.stop()
        bB = drain_budget(ld)
    finally:
        ld.kill()
    okB = (rcB == 0 and upB and sB == 200 and isinstance(jB, dict) and jB.get("max_concurrency") == 7
           and bB == "14s" and bE == b"ok\n" and bF == b"ok\n")
    record("C5b", "flag > env > file (running)", okB,
           f"env LAMEDUCK_CONFIG=file, LAMEDUCK_MAX_CONCURRENCY=6, LAMEDUCK_GRACE_PERIOD=20s, "
           f"LAMEDUCK_READY_PATH=/env-ready; flags --max-concurrency 7 --ready-path /flag-ready: "
           f"/flag-ready -> {sB} {jB}; /env-ready -> {sE} {bE!r} and /cfg-ready -> {sF} {bF!r} "
           f"(want proxied 'ok'); drain budget {bB} (want 14s: env grace 20s beats file 40s); exit {rcB}")

    # C: the same matrix through --print-config, reading the source annotations
    rc, out, err = run_cli(["--config", cfg, "--max-concurrency", "7", "--print-config"], cwd=d,
                           env={"LAMEDUCK_GRACE_PERIOD": "20s", "LAMEDUCK_QUEUE_TIMEOUT": "9s"})
    lines = {k: _pc_line(out, k) for k in ("port", "grace_period", "max_concurrency", "queue_timeout",
                                             "ready_path")}
    okC = (rc == 0 and re.search(r"max_concurrency = 7 # flag", lines["max_concurrency"]) is not None
           and re.search(r'grace_period = "20s" # env LAMEDUCK_GRACE_PERIOD', lines["grace_period"])
           and re.search(r'queue_timeout = "9s" # env', lines["queue_timeout"])
           and re.search(r"port = %d # config file" % port, lines["port"])
           and re.search(r'ready_path = "/cfg-ready" # config file', lines["ready_path"]))
    record("C5c", "--print-config shows value sources", bool(okC), f"rc={rc} {lines}")


def check_6(cwd):
    ld = Lameduck(["--drain-delay", "2s", "--grace-period", "30s"],
                  name="c6-drain-delay", cwd=cwd)
    try:
        if not ld.wait_ready():
            record("C6", "drain delay", False, "lameduck never became ready")
            return
        holder = Req(ld.port, "/slow?ms=4500&id=holder").go()
        held = wait_active(ld.port, 1)
        ts = c.now()
        ld.proc.send_signal(signal.SIGTERM)
        obs = []
        # first: /ready alone, densely, until it turns 503 (at most 1 s)
        while c.now() < ts + 1.0:
            t = c.now()
            s, h, b = get(ld.port, "/ready", 2)
            obs.append((round(t - ts, 3), "/ready", s, b[:60], round(c.now() - t, 3)))
            if s == 503:
                break
            time.sleep(0.005)
        # then alternate /ready and a new request
        deadline = ts + 3.5
        i = 1
        while c.now() < deadline and ld.proc.poll() is None:
            path = "/ready" if i % 2 == 0 else f"/fast?id=n{i}"
            t = c.now()
            s, h, b = get(ld.port, path, 2)
            obs.append((round(t - ts, 3), path.split("?")[0], s, b[:60], round(c.now() - t, 3)))
            i += 1
            time.sleep(0.08)
        holder.join(10)
        rc = ld.proc.wait(15)
        readies = [o for o in obs if o[1] == "/ready"]
        in_delay = [o for o in obs if o[1] == "/fast" and o[0] < 1.8]
        after = [o for o in obs if o[1] == "/fast" and o[0] > 2.3]
        # the signal is handled asynchronously: a probe sent within a millisecond of kill() may
        # still see 200.  /ready must be 503 "draining" within 100 ms and stay so.
        first_r503 = min((o[0] for o in readies if o[2] == 503), default=None)
        ready_ok = (first_r503 is not None and first_r503 <= 0.1
                    and all(o[2] == 503 and b"draining" in o[3] for o in readies if o[0] >= first_r503))
        delay_ok = len(in_delay) >= 5 and all(o[2] == 200 and o[3].startswith(b"fast:") for o in in_delay)
        after_ok = len(after) >= 2 and all(o[2] == 503 and b"shutting_down" in o[3] for o in after)
        last200 = max((o[0] for o in obs if o[1] == "/fast" and o[2] == 200), default=None)
        first503 = min((o[0] for o in obs if o[1] == "/fast" and o[2] == 503), default=None)
        ok = held and ready_ok and delay_ok and after_ok and holder.status == 200 and rc == 0
        record("C6", "--drain-delay 2s", ok,
               f"/ready after SIGTERM: {len(readies)} polls, statuses {[o[2] for o in readies]}, first 503 "
               f"'draining' at {first_r503}s; new /fast during delay: "
               f"{sum(1 for o in in_delay if o[2] == 200)}/{len(in_delay)} got 200; last 200 at {last200}s, "
               f"first 503 at {first503}s after SIGTERM; after 2.3 s: "
               f"{[(o[0], o[2], o[3]) for o in after[:2]]}...; holder -> {holder.status}; exit {rc}; "
               f"log: {stderr_excerpt(ld, 'drain|admitting', 4)}")
        if not ok:
            c.log("C6 observations:\n" + "\n".join(map(str, obs)))
    finally:
        ld.kill()


def check_7(cwd):
    ld = Lameduck(["--metrics-path", "/metrics"], name="c7-metrics", cwd=cwd)
    try:
        if not ld.wait_ready():
            record("C7", "metrics", False, "lameduck never became ready")
            return
        p0 = parse_metrics(ld.port)
        for i in range(5):
            get(ld.port, f"/fast?id=f{i}")
        for _ in range(2):
            get(ld.port, "/status?code=404")
        get(ld.port, "/status?code=500")
        for _ in range(3):      # probes and the metrics path are not counted
            get(ld.port, "/ready"); get(ld.port, "/health"); get(ld.port, "/metrics")
        slows = [Req(ld.port, f"/slow?ms=2000&id=s{i}").go() for i in range(3)]
        wait_active(ld.port, 3)
        p1 = parse_metrics(ld.port)
        for r in slows:
            r.join(10)
        # The client has its response a moment before lameduck counts the request finished.
        wait_active(ld.port, 0)
        p2 = parse_metrics(ld.port)
        for moment, parsed in (("during", p1), ("after", p2)):
            for kind in ("classic", "prometheus"):
                with open(os.path.join(OUT, f"c7-metrics-{moment}-{kind}.txt"), "w") as f:
                    f.write(parsed[kind]["text"])
        rows = []
        # One format for every scraper: the classic text format, which Prometheus accepts too.
        all_ok = all(p2[kind]["content_type"].startswith("text/plain; version=0.0.4")
                     for kind in ("classic", "prometheus"))
        for kind in ("classic", "prometheus"):
            a, b, z = p1[kind], p2[kind], p0[kind]
            vals = dict(
                inflight_during=sample(a, "lameduck_requests_in_flight"),
                inflight_after=sample(b, "lameduck_requests_in_flight"),
                ok_during=sample(a, "lameduck_requests_total", code="200"),
                ok_after=sample(b, "lameduck_requests_total", code="200"),
                nf_after=sample(b, "lameduck_requests_total", code="404"),
                e500_after=sample(b, "lameduck_requests_total", code="500"),
                hist_count_after=sample(b, "lameduck_request_duration_seconds_count"),
                phase_ready=sample(b, "lameduck_phase", phase="ready"),
                cut=sample(b, "lameduck_requests_cut_total"),
                queued=sample(b, "lameduck_requests_queued"),
                total_before=sum(v for _l, v in z["samples"].get("lameduck_requests_total", [])),
            )
            ok = (a["error"] is None and b["error"] is None and z["error"] is None
                  and vals["inflight_during"] == 3 and vals["inflight_after"] == 0
                  and vals["ok_during"] == 5 and vals["ok_after"] == 8 and vals["nf_after"] == 2
                  and vals["e500_after"] == 1 and vals["hist_count_after"] == 11
                  and vals["phase_ready"] == 1 and vals["cut"] == 0 and vals["queued"] == 0
                  and vals["total_before"] == 0)
            all_ok = all_ok and ok
            types = {n: t for n, t in b["families"]}
            rows.append(f"{kind}: parse errors {a['error'] or b['error'] or z['error']}; {vals}; "
                        f"families {types}")
        record("C7", "metrics parse and match the traffic", all_ok,
               f"Content-Types {p1['classic']['content_type']!r} / {p1['prometheus']['content_type']!r}; "
               f"sent 5x200 + 2x404 + 1x500 + 3 slow "
               f"(+ 9 probe/metrics hits, not to be counted); " + " | ".join(rows))
        # what a classic (0.0.4) scraper gets when it asks for text/plain
        conn = http.client.HTTPConnection(c.HOST, ld.port, timeout=5)
        conn.request("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
        r = conn.getresponse()
        text = r.read().decode(errors="replace")
        conn.close()
        ctype = r.getheader("content-type") or ""
        rc = ld.stop()
        record("C7b", "a classic scraper asking for text/plain 0.0.4 gets it", r.status == 200
               and ctype.startswith("text/plain") and "version=0.0.4" in ctype
               and "# EOF" not in text and rc == 0,
               f"GET /metrics with Accept: text/plain;version=0.0.4 -> {r.status}, Content-Type {ctype!r}; "
               f"exit {rc}")
    finally:
        ld.kill()


ACCESS_KEYS = ("method", "path", "status", "bytes", "duration_ms")


def check_8(cwd):
    ld = Lameduck(["--log-format", "json", "--access-log", "--max-concurrency", "1",
                   "--queue-timeout", "0s"], name="c8-json", cwd=cwd)
    try:
        if not ld.wait_ready():
            record("C8", "json logs", False, "lameduck never became ready")
            return
        sent = []   # (method, path without query, status, body length)

        def do(method, path, body=None):
            conn = http.client.HTTPConnection(c.HOST, ld.port, timeout=10)
            conn.request(method, path, body=body)
            r = conn.getresponse()
            data = r.read()
            conn.close()
            sent.append((method, path.split("?")[0], r.status, len(data)))
            return r.status

        do("GET", "/fast?id=1")
        do("GET", "/status?code=404")
        do("POST", "/fast?id=post", body=b"hello world")
        do("GET", "/slow?ms=300&id=s")
        do("HEAD", "/fast?id=head")
        for _ in range(3):
            get(ld.port, "/ready"); get(ld.port, "/health")
        holder = Req(ld.port, "/slow?ms=1200&id=h").go()
        held = wait_active(ld.port, 1)
        refused = do("GET", "/fast?id=refused")   # 503 at_capacity (queue-timeout 0s)
        holder.join(10)
        sent.append(("GET", "/slow", holder.status, len(holder.resp_body)))
        rc = ld.stop()   # the log is complete once lameduck has exited
        lines = ld.stderr_lines()
        bad, objs = [], []
        for l in lines:
            try:
                o = json.loads(l)
                if not isinstance(o, dict):
                    raise ValueError("not an object")
                objs.append(o)
            except ValueError:
                bad.append(l)
        with open(ld.out_path, "rb") as f:
            stdout = f.read()
        access = [o for o in objs if all(k in o for k in ("method", "path", "status"))]
        probe_lines = [o for o in access if o.get("path") in ("/ready", "/health")]
        unmatched = list(sent)
        problems = []
        for o in access:
            key = (o.get("method"), o.get("path"), o.get("status"), o.get("bytes"))
            if key in unmatched:
                unmatched.remove(key)
            elif o.get("path") not in ("/ready", "/health"):
                problems.append(f"unexpected access line {o}")
            if not all(k in o for k in ACCESS_KEYS) or not isinstance(o.get("duration_ms"), (int, float)):
                problems.append(f"missing field/number in {o}")
        slow = [o for o in access if o.get("path") == "/slow" and o.get("bytes") == len(b"slow:s\n")]
        if slow and slow[0]["duration_ms"] < 290:
            problems.append(f"/slow?ms=300 logged duration_ms={slow[0]['duration_ms']}")
        ok_json = not bad and bool(objs) and rc == 0
        ok_access = (held and refused == 503 and not unmatched and not problems and not probe_lines
                     and len(access) == len(sent))
        record("C8a", "--log-format json: every stderr line is a JSON object", ok_json,
               f"{len(lines)} stderr lines, {len(bad)} not JSON {bad[:3]}; stdout {len(stdout)} bytes; "
               f"fields of first line: {sorted(objs[0]) if objs else None}; exit {rc}")
        record("C8b", "--access-log: one JSON line per request", ok_access,
               f"sent {len(sent)} proxied requests {sent} (refused one -> {refused}); {len(access)} access "
               f"lines; unmatched requests {unmatched}; probe lines {len(probe_lines)}; problems {problems}; "
               f"example {access[0] if access else None}")
    finally:
        ld.kill()


def check_9(cwd):
    rc, out, err = run_cli(["--grace-period", "banana"], cwd=cwd)
    lines = [l for l in err.splitlines() if l.strip()]
    ok = rc == 2 and len(lines) == 1 and "--grace-period" in lines[0] and "banana" in lines[0] and not out
    record("C9a", "--grace-period banana", ok, f"exit {rc}, stderr {lines}, stdout {out!r}")

    d = new_dir("c9")
    cases = {
        "broken-value.toml": "port = 9000\ngrace_period = \n",
        "broken-header.toml": "port = 9000\n[[[\n",
        "broken-quote.toml": 'grace_period = "30s\nport = 9000\n',
    }
    all_ok, rows = True, []
    for name, text in cases.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
        rc, out, err = run_cli(["--config", name], cwd=d)
        lines = [l for l in err.splitlines() if l.strip()]
        ok = rc == 2 and len(lines) == 1 and name in lines[0]
        all_ok = all_ok and ok
        rows.append(f"{name}: exit {rc}, {len(lines)} stderr line(s) {lines}")
    record("C9b", "broken TOML config exits 2 in one line naming the file", all_ok, "; ".join(rows))
    # extra: bad value and unknown key in a well-formed file; bad env var
    with open(os.path.join(d, "badval.toml"), "w") as f:
        f.write('grace_period = "banana"\n')
    with open(os.path.join(d, "unknown.toml"), "w") as f:
        f.write('grace_periods = "30s"\n')
    extra = []
    for args, env in ((["--config", "badval.toml"], None), (["--config", "unknown.toml"], None),
                      ([], {"LAMEDUCK_GRACE_PERIOD": "banana"})):
        rc, out, err = run_cli(args, cwd=d, env=env)
        extra.append((args or list(env.items()), rc, err.strip()))
    ok = all(r[1] == 2 and len(r[2].splitlines()) == 1 for r in extra)
    record("C9d", "bad value / unknown key / bad env var exit 2 in one line", ok, str(extra))


CHECKS = {"1": check_1, "2": check_2, "3": check_3, "4": check_4, "5": check_5, "6": check_6,
          "7": check_7, "8": check_8, "9": check_9}


def main():
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="directory for logs and results (default: a new /tmp/lameduck-acc-* dir)")
    ap.add_argument("--only", default=",".join(CHECKS), help="comma-separated check numbers, e.g. 1,4,9")
    args = ap.parse_args()
    OUT = args.out or tempfile.mkdtemp(prefix="lameduck-acc-admission-")
    os.makedirs(OUT, exist_ok=True)
    if not os.path.exists(c.LAMEDUCK):
        print(f"no lameduck binary at {c.LAMEDUCK}: run cargo build --release", file=sys.stderr)
        return 2
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        print("prometheus_client missing: python3 -m pip install prometheus_client", file=sys.stderr)
        return 2
    c.log(f"lameduck {c.LAMEDUCK}; logs in {OUT}; load average {open('/proc/loadavg').read().split()[:3]}")
    cwd = new_dir("plain")   # an empty working directory: no cerebrium.toml
    for key in args.only.split(","):
        key = key.strip()
        try:
            CHECKS[key](cwd)
        except Exception:  # noqa: BLE001
            record(f"C{key}", "exception", False, traceback.format_exc().strip().splitlines()[-1])
            traceback.print_exc()
    c.cleanup()
    left = c.tagged_pids()
    if left:
        record("C0", "no processes left", False, ", ".join(c.describe_pid(p) for p in left))
    failed = [r for r in RESULTS if not r["ok"]]
    with open(os.path.join(OUT, "admission.json"), "w") as f:
        json.dump(dict(results=RESULTS), f, indent=2)
    print("\n=================== summary")
    for r in RESULTS:
        tag = "PASS" if r["ok"] else "FAIL"
        print(f"{tag:4}  {r['id']:4} {r['name']}")
    print(f"logs and admission.json in {OUT}; load average {open('/proc/loadavg').read().split()[:3]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
