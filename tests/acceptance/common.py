"""Shared helpers for the lameduck acceptance harness (Python 3.11 standard library only).

Every process the harness starts is recorded and carries LAMEDUCK_ACC_TAG=<unique tag> in its
environment (inherited by lameduck's child and its descendants), so leftovers can be found in
/proc and killed by pid on exit.  Only 127.0.0.1 is ever contacted.
"""

import atexit
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
LAMEDUCK = os.environ.get("LAMEDUCK_BIN", os.path.join(ROOT, "target", "release", "lameduck"))
NODE = shutil.which("node") or "node"
PYTHON = sys.executable
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
HOST = "127.0.0.1"

TAG = f"lameduck-acc-{os.getpid()}-{random.randrange(1 << 30)}"

_procs: list[subprocess.Popen] = []
_lock = threading.Lock()


def now() -> float:
    return time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}] {msg}", flush=True)


# --------------------------------------------------------------------------- ports
#
# lameduck itself always gets `--port 0` where the port is not what a check is about, and the
# harness reads the port it bound from its `listening` log line (wait_listening): no race.
# A port that must be known before a process starts (a backend that lameduck spawns and names in
# PORT, HAProxy's frontend, a replica restarted on the same port, a port a config file sets)
# comes from fixed_port(): outside the kernel's ephemeral range, which the kernel never hands out
# for port 0 or outgoing connections, so nothing else grabs it between the pick and the bind.


def _reserved_range() -> tuple[int, int]:
    """(first, count): the larger gap below or above the ephemeral range, from 10000 up."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except OSError:
        low, high = 32768, 60999
    below = (min(10000, low), low - min(10000, low))
    above = (high + 1, 65535 - high)
    return below if below[1] >= above[1] else above


_RANGE = _reserved_range()
# Start at a pid-dependent point so that two harness runs side by side pick different ports.
_next_port = [(os.getpid() * 7919) % _RANGE[1]]


def fixed_port() -> int:
    """A port outside the ephemeral range, never handed out twice by this process, that a trial
    bind finds free now."""
    first, count = _RANGE
    for _ in range(count):
        port = first + _next_port[0] % count
        _next_port[0] += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port outside the ephemeral range")


def listening_port(text: str) -> int | None:
    """The port in lameduck's first `listening` log line, text (`INFO listening
    address=127.0.0.1:41234`) or JSON (`{"message":"listening","address":...}`)."""
    for line in text.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("message") == "listening":
                address = obj.get("address") or obj.get("fields", {}).get("address", "")
                return int(address.rsplit(":", 1)[1])
            continue
        m = re.search(r"\blistening\b.*\baddress=\S*:(\d+)\b", line)
        if m:
            return int(m.group(1))
    return None


def wait_listening(log_path: str, proc: subprocess.Popen, timeout: float = 30.0,
                   offset: int = 0) -> int:
    """Waits for lameduck (proc) to log where it listens in log_path (read from byte `offset`)
    and returns the port. Raises if it exits first or takes longer than `timeout`."""
    deadline = now() + timeout
    while True:
        try:
            with open(log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            text = ""
        port = listening_port(text)
        if port is not None:
            return port
        if proc.poll() is not None:
            raise RuntimeError(f"lameduck exited ({proc.returncode}) before listening:\n{text[-2000:]}")
        if now() > deadline:
            raise RuntimeError(f"lameduck did not log `listening` within {timeout} s:\n{text[-2000:]}")
        time.sleep(0.01)


# --------------------------------------------------------------------------- processes

def spawn(argv: list[str], log_path: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env["LAMEDUCK_ACC_TAG"] = TAG
    env.pop("PORT", None)
    if env_extra:
        env.update(env_extra)
    out = open(log_path, "ab")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    out.close()
    with _lock:
        _procs.append(proc)
    return proc


def tagged_pids(also: str | None = None) -> list[int]:
    """Pids of live (non-zombie) processes whose environment carries this run's tag (and the
    NAME=value entry `also`, if given)."""
    needle = f"LAMEDUCK_ACC_TAG={TAG}".encode()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if needle in env and (also is None or also.encode() in env):
            state = stat.rsplit(b")", 1)[1].split()[0]
            if state != b"Z":
                found.append(int(d))
    return found


def describe_pid(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        rest = stat.rsplit(b")", 1)[1].split()
        return f"pid={pid} state={rest[0].decode()} ppid={rest[1].decode()} cmd={cmd!r}"
    except OSError:
        return f"pid={pid} (gone)"


def pgrep(pattern: str) -> list[int]:
    """pgrep -f, minus ourselves."""
    r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    me = os.getpid()
    return [int(p) for p in r.stdout.split() if int(p) != me]


def cleanup() -> None:
    """Kill (by pid) everything this run started that is still alive."""
    with _lock:
        procs = list(_procs)
    for p in procs:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid in tagged_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass



def run_main(main) -> None:
    """Runs a check script's main(): logs the load around it, always stops what it started,
    and exits with main's status."""
    log("load average at start: %.2f %.2f %.2f" % os.getloadavg())
    try:
        sys.exit(main())
    finally:
        log("load average at end: %.2f %.2f %.2f" % os.getloadavg())
        cleanup()

def _on_signal(signum, _frame):
    cleanup()
    sys.exit(128 + signum)


atexit.register(cleanup)
signal.signal(signal.SIGINT, _on_signal)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


class ExitWatcher:
    """Records the monotonic time at which a process exited, and its status."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.exited_at: float | None = None
        self.code: int | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        self.code = self.proc.wait()
        self.exited_at = now()
        self.done.set()

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout)


# --------------------------------------------------------------------------- HTTP

def http_get(port: int, path: str, timeout: float = 5.0, method: str = "GET"):
    """One request on a fresh connection: (status, headers dict with lower-case names, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def wait_until(pred, timeout: float, interval: float = 0.05) -> bool:
    deadline = now() + timeout
    while now() < deadline:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(interval)
    return False


def ready_json(port: int):
    status, _h, body = http_get(port, "/ready", timeout=2)
    return status, json.loads(body)


# --------------------------------------------------------------------------- expected bodies

def slow_body(ident: str) -> bytes:
    return f"slow:{ident}:".encode() + b"x" * 1000 + b":end\n"


def sse_body(n: int, ident: str) -> bytes:
    out = b""
    for i in range(1, n + 1):
        out += f'id: {i}\nevent: tick\ndata: {{"i":{i},"id":"{ident}"}}\n\n'.encode()
    return out + b"event: done\ndata: end\n\n"


# --------------------------------------------------------------------------- backends

def backend_argv(kind: str) -> list[str]:
    """The COMMAND that binds 127.0.0.1:$PORT (a fixed_port()), or for `uvicorn-unix` the Unix
    socket lameduck names in $LAMEDUCK_UPSTREAM_SOCKET."""
    if kind == "uvicorn-unix":
        return [
            "/bin/sh", "-c",
            'exec "$0" -m uvicorn asgi_app:app --app-dir "$1" --uds "$LAMEDUCK_UPSTREAM_SOCKET" '
            "--log-level warning --no-access-log",
            PYTHON, HERE,
        ]
    if kind == "node":
        return [NODE, os.path.join(HERE, "node_backend.js")]
    if kind == "uvicorn":
        # sh only expands $PORT and then execs uvicorn, so uvicorn itself is lameduck's child.
        return [
            "/bin/sh", "-c",
            'exec "$0" -m uvicorn asgi_app:app --app-dir "$1" --host 127.0.0.1 --port "$PORT" '
            "--log-level warning --no-access-log",
            PYTHON, HERE,
        ]
    raise ValueError(kind)


def backend_pattern(kind: str, port: int | str) -> str:
    """pgrep -f pattern for a backend of this kind (`port`: the socket path for `uvicorn-unix`);
    the node backend cannot be told apart by its command line, so callers also use the
    environment tag (tagged_pids)."""
    if kind == "node":
        return "node_backend.js"
    if kind == "uvicorn-unix":
        return f"uvicorn asgi_app:app .*--uds {port}"
    return f"uvicorn asgi_app:app .*--port {port}"


def lameduck_argv(port: int, upstream_port: int | str, backend: str, grace: str = "30s",
                  drain_delay: str | None = None) -> list[str]:
    """port 0: lameduck picks one; read it with wait_listening. `upstream_port` may be a whole
    `--upstream` value instead (`unix:/PATH`)."""
    upstream = upstream_port if isinstance(upstream_port, str) else f"http://{HOST}:{upstream_port}"
    argv = [LAMEDUCK, "--port", str(port), "--bind", HOST,
            "--upstream", upstream, "--grace-period", grace]
    if drain_delay:
        argv += ["--drain-delay", drain_delay]
    return argv + ["--"] + backend_argv(backend)


def report(out: str, name: str, results: list, **extra) -> int:
    """Writes OUT/NAME.json (each (check, pass, detail) in RESULTS, then EXTRA), logs how many
    checks passed (with the load average), and returns the exit status: 1 if any failed."""
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump({"results": [{"check": n, "pass": ok, "detail": d} for n, ok, d in results],
                   **extra}, f, indent=1, default=str)
    failed = [n for n, ok, _ in results if not ok]
    log(f"{len(results) - len(failed)}/{len(results)} checks passed"
        + (f"; FAILED: {', '.join(failed)}" if failed else "") + f"; load {os.getloadavg()}")
    return 1 if failed else 0


def tail(path: str, n: int = 40) -> str:
    try:
        with open(path, "r", errors="replace") as f:
            lines = f.readlines()
        return "".join(lines[-n:])
    except OSError:
        return "(no log)"
