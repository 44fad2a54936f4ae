#!/usr/bin/env python3
"""Acceptance check S: long-lived traffic (SPEC §6) from the outside, with real third-party
clients and servers.

    python3 tests/acceptance/check_streaming.py [--out DIR]

Two lameduck instances run side by side, both with --grace-period 4s --child-stop-timeout 1s:
  A: default (http1) upstream, spawning `python -m uvicorn streaming_app:app ...`
  G: --upstream-protocol http2, spawning the grpcio server grpc_server.py (insecure port)

S1 through A:  S1a an SSE event arrives at once (the app writes one, waits 2 s, writes another)
               S1b a WebSocket echo works (python `websockets` client)
               S1c `curl --http2-prior-knowledge` gets 200 over HTTP/2
               S1d S1a's stream over HTTP/2 (curl -N): the first event arrives at once
S2 through G:  S2a a grpcio unary call works (reply and custom trailing metadata)
               S2b a grpcio server-streaming call works (all messages, status OK)
S3 the deadline: in flight at once, 4 SSE streams written in pieces, 3 idle WebSockets, 4 requests
   waiting 30 s for their headers (all through A) and a server-streaming gRPC call (through G);
   SIGTERM to both at the same moment (S3: once all of it is in flight), then:
               S3a every SSE stream ends cleanly with the server_restarting event last, no torn event
               S3g at least one stream was cut between the two halves of an event (so S3a's
                   "no torn event" was put to the test)
               S3b every WebSocket client sees close code 1001
               S3h and so does the backend, for every WebSocket
               S3c every waiting request gets 503 {"error":"shutting_down"} with Retry-After
               S3d the gRPC client gets UNAVAILABLE (14)
               S3e each lameduck exits with status 1 in under 4 s after SIGTERM
               S3f nothing of the children is left running (right after the exits, 0.5 s later)
Every check decides the exit status.
Exit status 0 when every check passes, 1 otherwise.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402
import streaming_app as app  # noqa: E402

SHUTDOWN_EVENT = b'event: error\ndata: {"error":"server_restarting","resume":true}'
GRPC_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]

results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str) -> None:
    results.append((name, ok, detail))
    c.log(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")


# --------------------------------------------------------------------------- setup

def gen_stubs(out: str) -> str:
    stubs = os.path.join(out, "stubs")
    os.makedirs(stubs, exist_ok=True)
    subprocess.run(
        [c.PYTHON, "-m", "grpc_tools.protoc", "-I", c.HERE, f"--python_out={stubs}",
         f"--grpc_python_out={stubs}", "grpc_demo.proto"],
        check=True, timeout=60)
    sys.path.insert(0, stubs)
    return stubs


def lameduck_common(port: int, up: int, args) -> list[str]:
    return [c.LAMEDUCK, "--port", str(port), "--bind", c.HOST,
            "--upstream", f"http://{c.HOST}:{up}",
            "--grace-period", args.grace, "--child-stop-timeout", args.child_stop]


def wait_ready(port: int, timeout: float) -> bool:
    return c.wait_until(lambda: c.http_get(port, "/ready", timeout=1)[0] == 200, timeout, 0.1)


def active(port: int):
    try:
        return c.ready_json(port)[1].get("active_requests")
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------- S1

def s1a_sse_first_event(port: int) -> None:
    conn = http.client.HTTPConnection(c.HOST, port, timeout=10)
    t0 = c.now()
    times, data, err = [], b"", None
    try:
        conn.request("GET", "/sse2")
        resp = conn.getresponse()
        t_headers = c.now() - t0
        while True:
            line = resp.readline()
            if not line:
                break
            data += line
            if line == b"\n":
                times.append(c.now() - t0)
    except Exception as e:  # noqa: BLE001
        err, t_headers = repr(e), None
    finally:
        conn.close()
    ok = (err is None and len(times) == 2 and times[0] < 0.5 and times[1] - times[0] > 1.5
          and data == b"".join(app.SSE2_EVENTS))
    check("S1a SSE first event at once (HTTP/1.1)", ok,
          f"headers {fmt(t_headers)}, event1 at {fmt(times[0] if times else None)}, "
          f"event2 at {fmt(times[1] if len(times) > 1 else None)}, body_ok={data == b''.join(app.SSE2_EVENTS)}"
          + (f", error={err}" if err else ""))


def s1d_sse_over_h2(port: int) -> None:
    """The same stream via curl over HTTP/2 prior knowledge (HTTP/2 client, HTTP/1.1 backend)."""
    t0 = c.now()
    p = subprocess.Popen(
        ["curl", "-sS", "-N", "--noproxy", "*", "--http2-prior-knowledge", "--max-time", "10",
         f"http://{c.HOST}:{port}/sse2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    times, data = [], b""
    for line in p.stdout:
        data += line
        if line == b"\n":
            times.append(c.now() - t0)
    p.wait(timeout=15)
    body_ok = data == b"".join(app.SSE2_EVENTS)
    # curl's own start-up is in the first time: the bound is looser than S1a's.
    ok = (p.returncode == 0 and body_ok and len(times) == 2 and times[0] < 1.0
          and times[1] - times[0] > 1.5)
    check("S1d SSE first event at once (HTTP/2, curl --http2-prior-knowledge -N)", ok,
          f"rc={p.returncode}, event times {[fmt(t) for t in times]}, body_ok={body_ok}, "
          f"stderr={p.stderr.read().decode().strip()!r}")


def s1b_websocket_echo(port: int) -> None:
    from websockets.sync.client import connect
    try:
        t0 = c.now()
        with connect(f"ws://{c.HOST}:{port}/ws?id=echo", open_timeout=5, close_timeout=5) as ws:
            t_open = c.now() - t0
            ws.send("hello lameduck")
            text = ws.recv(timeout=5)
            ws.send(b"\x00\x01binary\xff")
            binary = ws.recv(timeout=5)
            big = "x" * 200_000
            ws.send(big)
            big_back = ws.recv(timeout=5)
            ws.close()
            code = ws.close_code
        bin_ok = binary == b"\x00\x01binary\xff"
        ok = text == "hello lameduck" and bin_ok and big_back == big and code == 1000
        check("S1b WebSocket echo (websockets client)", ok,
              f"open in {fmt(t_open)}, text echo {text == 'hello lameduck'}, binary echo "
              f"{bin_ok}, 200 KB echo {big_back == big}, close code {code}")
    except Exception as e:  # noqa: BLE001
        check("S1b WebSocket echo (websockets client)", False, f"error={e!r}")


def s1c_curl_h2(port: int) -> None:
    r = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--http2-prior-knowledge", "--max-time", "5",
         "-o", "-", "-w", "\n%{http_code} %{http_version}", f"http://{c.HOST}:{port}/hello"],
        capture_output=True, timeout=15)
    out = r.stdout.decode(errors="replace")
    body, _, tail = out.rpartition("\n")
    ok = r.returncode == 0 and tail == "200 2" and body == "hello\n"
    check("S1c curl --http2-prior-knowledge", ok,
          f"rc={r.returncode}, status/version '{tail}', body {body!r}"
          + (f", stderr={r.stderr.decode().strip()!r}" if r.stderr else ""))


# --------------------------------------------------------------------------- S2

def s2_grpc(port: int) -> None:
    import grpc
    import grpc_demo_pb2 as pb
    import grpc_demo_pb2_grpc as pb_grpc
    with grpc.insecure_channel(f"{c.HOST}:{port}", options=GRPC_OPTIONS) as ch:
        stub = pb_grpc.DemoStub(ch)
        try:
            t0 = c.now()
            reply, call = stub.Echo.with_call(pb.EchoRequest(text="hi"), timeout=10)
            trailers = dict(call.trailing_metadata() or ())
            # Trailers pass through (SPEC §3, §6): the server's custom one included.
            ok = (reply.text == "echo:hi" and call.code() == grpc.StatusCode.OK
                  and trailers.get("x-demo-trailer") == "unary")
            check("S2a gRPC unary, with trailing metadata", ok,
                  f"reply {reply.text!r}, status {call.code().name}, in {fmt(c.now() - t0)}, "
                  f"trailing metadata x-demo-trailer={trailers.get('x-demo-trailer')!r}")
        except grpc.RpcError as e:
            check("S2a gRPC unary", False, f"{e.code().name}: {e.details()!r}")
        try:
            t0 = c.now()
            n, pad = 20, 40_000
            call = stub.Count(pb.CountRequest(n=n, interval_ms=20, pad_bytes=pad, id="s2"), timeout=15)
            msgs = list(call)
            seq_ok = [m.i for m in msgs] == list(range(1, n + 1)) and all(
                len(m.pad) == pad and m.id == "s2" for m in msgs)
            ok = seq_ok and call.code() == grpc.StatusCode.OK
            check("S2b gRPC server streaming", ok,
                  f"{len(msgs)}/{n} messages of {pad} B, in order and intact {seq_ok}, "
                  f"status {call.code().name}, in {fmt(c.now() - t0)}")
        except grpc.RpcError as e:
            check("S2b gRPC server streaming", False, f"{e.code().name}: {e.details()!r}")


# --------------------------------------------------------------------------- S3 clients

def sse_pieces_client(port, i, args, rec):
    """Raw HTTP/1.1 client (a socket, chunked decoding by hand) so that a missing final chunk is
    seen: http.client's readline() returns b"" on a truncated chunked body without raising."""
    ident = f"e{i}"
    rec.update(id=ident, events=0, data=b"", error=None, status=None, final_chunk=False)
    sock = None
    try:
        sock = socket.create_connection((c.HOST, port), timeout=20)
        sock.sendall(f"GET /ssepieces?id={ident}&n=100000&gap_in={args.gap_in}&gap_between="
                     f"{args.gap_between} HTTP/1.1\r\nHost: {c.HOST}:{port}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        f = sock.makefile("rb")
        status_line = f.readline()
        rec["status"] = int(status_line.split()[1])
        headers = {}
        while True:
            line = f.readline()
            if not line:
                raise EOFError("connection closed inside the response headers")
            if line in (b"\r\n", b"\n"):
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        rec["headers"] = headers
        if headers.get("transfer-encoding", "").lower() != "chunked":
            raise ValueError(f"response not chunked: {headers}")
        while True:
            size_line = f.readline()
            if not size_line:
                raise EOFError("connection closed before the final (zero-size) chunk")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    line = f.readline()
                    if not line:
                        raise EOFError("connection closed inside the final chunk's trailer section")
                    if line in (b"\r\n", b"\n"):
                        break
                rec["final_chunk"] = True
                rec["final_at"] = c.now()
                break
            chunk = f.read(size)
            if len(chunk) < size or f.read(2) != b"\r\n":
                raise EOFError("connection closed inside a chunk")
            rec["data"] += chunk
            n = rec["data"].count(b"\n\n")
            if n > rec["events"]:
                rec["events"] = n
                rec["last_event_at"] = c.now()
                rec["last_event_wall"] = time.time()
        # After the final chunk: does lameduck close the connection (Connection: close)?
        sock.settimeout(2)
        try:
            rec["closed_after"] = f.read(1) == b""
        except OSError:
            rec["closed_after"] = False
    except Exception as e:  # noqa: BLE001
        rec["error"] = repr(e)
    finally:
        rec["end"] = c.now()
        if sock:
            sock.close()


def ws_idle_client(port, i, rec, opened: threading.Semaphore):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect
    rec.update(id=f"w{i}", error=None, rcvd=None, sent=None)
    try:
        with connect(f"ws://{c.HOST}:{port}/ws?id=w{i}", open_timeout=5, close_timeout=5,
                     ping_interval=None) as ws:
            ws.send(f"ping-{i}")
            rec["echo_ok"] = ws.recv(timeout=5) == f"ping-{i}"
            opened.release()
            try:
                msg = ws.recv(timeout=20)
                rec["error"] = f"unexpected message {msg!r}"
            except ConnectionClosed as e:
                rec["end"] = c.now()
                rec["rcvd"] = e.rcvd.code if e.rcvd else None
                rec["rcvd_reason"] = e.rcvd.reason if e.rcvd else None
                rec["sent"] = e.sent.code if e.sent else None
                rec["exc"] = type(e).__name__
    except Exception as e:  # noqa: BLE001
        rec["error"] = repr(e)
        rec.setdefault("end", c.now())
        opened.release()


def waiter_client(port, i, args, rec):
    rec.update(id=f"r{i}", error=None, status=None)
    conn = http.client.HTTPConnection(c.HOST, port, timeout=args.wait_s + 5)
    try:
        conn.request("GET", f"/wait?s={args.wait_s}&id=r{i}")
        resp = conn.getresponse()
        rec["headers_at"] = c.now()
        rec["status"] = resp.status
        rec["headers"] = {k.lower(): v for k, v in resp.getheaders()}
        rec["body"] = resp.read()
    except Exception as e:  # noqa: BLE001
        rec["error"] = repr(e)
    finally:
        rec["end"] = c.now()
        conn.close()


def grpc_stream_client(port, args, rec, first: threading.Event):
    import grpc
    import grpc_demo_pb2 as pb
    import grpc_demo_pb2_grpc as pb_grpc
    rec.update(msgs=0, in_order=True, intact=True, code=None, details=None, error=None)
    pad = 40_000
    try:
        with grpc.insecure_channel(f"{c.HOST}:{port}", options=GRPC_OPTIONS) as ch:
            stub = pb_grpc.DemoStub(ch)
            call = stub.Count(pb.CountRequest(n=100000, interval_ms=50, pad_bytes=pad, id="g1"),
                              timeout=30)
            try:
                for m in call:
                    rec["msgs"] += 1
                    rec["in_order"] &= m.i == rec["msgs"]
                    rec["intact"] &= len(m.pad) == pad and m.id == "g1"
                    if rec["msgs"] >= 2:
                        first.set()
                rec["code"] = call.code().name
            except grpc.RpcError as e:
                rec["code"] = e.code().name
                rec["code_value"] = e.code().value[0]
                rec["details"] = e.details()
                rec["trailers"] = dict(e.trailing_metadata() or ())
    except Exception as e:  # noqa: BLE001
        rec["error"] = repr(e)
    finally:
        rec["end"] = c.now()
        first.set()


# --------------------------------------------------------------------------- S3 evaluation

def sse_verdict(rec, ident):
    """(ok, description) for one stream ended at the deadline."""
    data = rec["data"]
    if rec["error"] or rec["status"] != 200 or not rec["final_chunk"]:
        return False, (f"status {rec['status']}, error {rec['error']}, final chunk {rec['final_chunk']}, "
                       f"{len(data)} B, tail {data[-100:]!r}")
    if not data.endswith(b"\n\n"):
        return False, f"body does not end at an event boundary: tail {data[-80:]!r}"
    events = data[:-2].split(b"\n\n")
    if events[-1] != SHUTDOWN_EVENT:
        return False, f"last event is {events[-1][:120]!r}, not server_restarting"
    before = events[:-1]
    for k, ev in enumerate(before, 1):
        first, second = app.sse_event_halves(k, ident)
        if ev + b"\n\n" != first + second:
            return False, f"event {k} of {len(before)} before the shutdown event is torn/wrong: {ev[:120]!r}"
    return True, (f"{len(before)} complete events then server_restarting, final chunk, "
                  f"connection closed after: {rec.get('closed_after')}")


def seconds(d: str) -> float:
    if d.endswith("ms"):
        return float(d[:-2]) / 1000
    if d.endswith("s"):
        return float(d[:-1])
    if d.endswith("m"):
        return float(d[:-1]) * 60
    return float(d)


def mid_event_at_cut(rec, halves) -> str | None:
    """Whether the backend had written the first half of the next event before the shutdown event
    reached the client (so lameduck held back a torn event): a description, or None if unknown."""
    k = rec["data"].count(b"\n\n") - 1  # complete tick events before the shutdown event
    cut = rec.get("last_event_wall")
    t_half = halves.get((rec["id"], k + 1))
    if cut is None:
        return None
    if t_half is not None and t_half < cut:
        return f"yes (half of event {k + 1} written {1000 * (cut - t_half):.0f} ms before)"
    return "no (at an event boundary)"


def fmt(t):
    return "n/a" if t is None else f"{t:.3f}s"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="keep logs and results here (default: a new /tmp/lameduck-acc-streaming-*)")
    ap.add_argument("--grace", default="4s")
    ap.add_argument("--child-stop", default="1s")
    ap.add_argument("--exit-budget", type=float, default=4.0, help="seconds from SIGTERM to exit (default 4)")
    ap.add_argument("--sse", type=int, default=4)
    ap.add_argument("--websockets", type=int, default=3)
    ap.add_argument("--waiters", type=int, default=4)
    ap.add_argument("--wait-s", type=float, default=30)
    ap.add_argument("--gap-in", type=int, default=300, help="ms between the two writes of one SSE event")
    ap.add_argument("--gap-between", type=int, default=50, help="ms between SSE events")
    args = ap.parse_args()

    out = args.out or tempfile.mkdtemp(prefix="lameduck-acc-streaming-")
    os.makedirs(out, exist_ok=True)
    c.log(f"output in {out}; lameduck {c.LAMEDUCK}; tag {c.TAG}; load {os.getloadavg()}")
    stubs = gen_stubs(out)
    import grpc  # noqa: F401  (fail early if missing)
    import websockets  # noqa: F401
    import uvicorn  # noqa: F401

    ua, ug = c.fixed_port(), c.fixed_port()
    app_log = os.path.join(out, "app_events.jsonl")
    log_a = os.path.join(out, "lameduck_A_uvicorn.log")
    log_g = os.path.join(out, "lameduck_G_grpc.log")
    argv_a = lameduck_common(0, ua, args) + [
        "--", c.PYTHON, "-m", "uvicorn", "streaming_app:app", "--app-dir", c.HERE,
        "--host", c.HOST, "--port", str(ua), "--log-level", "warning", "--no-access-log"]
    argv_g = lameduck_common(0, ug, args) + [
        "--upstream-protocol", "http2",
        "--", c.PYTHON, os.path.join(c.HERE, "grpc_server.py"), "--port", str(ug), "--stubs", stubs]
    c.log("A: " + " ".join(argv_a))
    c.log("G: " + " ".join(argv_g))
    pa = c.spawn(argv_a, log_a, {"STREAMING_APP_LOG": app_log})
    pg = c.spawn(argv_g, log_g)
    wa, wg = c.ExitWatcher(pa), c.ExitWatcher(pg)
    la, lg = c.wait_listening(log_a, pa), c.wait_listening(log_g, pg)
    if not (wait_ready(la, 60) and wait_ready(lg, 60)):
        c.log("a lameduck did not become ready")
        print("--- A\n" + c.tail(log_a) + "--- G\n" + c.tail(log_g))
        return 1
    c.log(f"both ready: A on {la} (uvicorn {ua}), G on {lg} (grpcio {ug})")

    # ---- S1, S2
    s1a_sse_first_event(la)
    s1d_sse_over_h2(la)
    s1b_websocket_echo(la)
    s1c_curl_h2(la)
    s2_grpc(lg)

    # ---- S3: put everything in flight
    base_a = active(la)
    sse_recs = [{} for _ in range(args.sse)]
    ws_recs = [{} for _ in range(args.websockets)]
    wait_recs = [{} for _ in range(args.waiters)]
    grpc_rec: dict = {}
    ws_open = threading.Semaphore(0)
    grpc_first = threading.Event()
    threads = []
    for i, r in enumerate(sse_recs):
        threads.append(threading.Thread(target=sse_pieces_client, args=(la, i, args, r), daemon=True))
    for i, r in enumerate(ws_recs):
        threads.append(threading.Thread(target=ws_idle_client, args=(la, i, r, ws_open), daemon=True))
    for i, r in enumerate(wait_recs):
        threads.append(threading.Thread(target=waiter_client, args=(la, i, args, r), daemon=True))
    threads.append(threading.Thread(target=grpc_stream_client, args=(lg, args, grpc_rec, grpc_first),
                                    daemon=True))
    for t in threads:
        t.start()
    for _ in range(args.websockets):
        ws_open.acquire(timeout=10)
    grpc_first.wait(10)
    expect_a = args.sse + args.websockets + args.waiters
    ok_load = c.wait_until(
        lambda: all(r.get("events", 0) >= 2 for r in sse_recs) and (active(la) or 0) >= expect_a
        and (active(lg) or 0) >= 1, 15, 0.05)
    c.log(f"in flight: A active_requests={active(la)} (expected {expect_a}, before load {base_a}), "
          f"G active_requests={active(lg)}, SSE events so far {[r.get('events') for r in sse_recs]}, "
          f"gRPC messages so far {grpc_rec.get('msgs')}, load ready={ok_load}")
    # Without it, S3 would test a deadline with less (or nothing) in flight.
    check("S3 everything in flight before the SIGTERM", ok_load,
          f"A active_requests={active(la)} (want {expect_a}), G active_requests={active(lg)} (want 1), "
          f"SSE events so far {[r.get('events') for r in sse_recs]} (want >= 2 each)")

    # Make the drain deadline (SIGTERM + grace - child_stop - 1 s) land part-way through an SSE
    # event, i.e. after its first half was written: aim at the middle of the first-half gap of
    # stream 0 (the streams are paced alike, give or take some drift).
    period = (args.gap_in + args.gap_between) / 1000
    budget = seconds(args.grace) - seconds(args.child_stop) - 1.0
    last = sse_recs[0].get("last_event_at", c.now())
    wake = last + args.gap_between / 1000 + args.gap_in / 2000 - (budget % period)
    while wake < c.now():
        wake += period
    time.sleep(max(0, wake - c.now()))

    t_kill = c.now()
    os.kill(pa.pid, signal.SIGTERM)
    os.kill(pg.pid, signal.SIGTERM)
    t_kill2 = c.now()
    c.log(f"SIGTERM sent to A (pid {pa.pid}) and G (pid {pg.pid}) {1000 * (t_kill2 - t_kill):.2f} ms apart")

    wa.wait(15)
    wg.wait(15)
    left_now = c.tagged_pids()
    for t in threads:
        t.join(timeout=max(0.1, t_kill + 40 - c.now()))
    time.sleep(0.5)
    left_later = c.tagged_pids()

    # ---- S3 verdicts
    rel = lambda t: None if t is None else t - t_kill  # noqa: E731
    sse_ok, sse_lines = True, []
    for r in sse_recs:
        ok, why = sse_verdict(r, r["id"])
        sse_ok &= ok
        sse_lines.append(f"{r['id']}: {'ok' if ok else 'BAD'} {why}, ended at +{fmt(rel(r.get('end')))}")
    check("S3a SSE streams end with server_restarting, no torn event", sse_ok,
          f"{sum(1 for r in sse_recs if sse_verdict(r, r['id'])[0])}/{len(sse_recs)}; " + "; ".join(sse_lines))

    ws_ok = all(r.get("rcvd") == 1001 and not r.get("error") for r in ws_recs)
    check("S3b WebSockets get close 1001", ws_ok, "; ".join(
        f"{r['id']}: received close {r.get('rcvd')} {r.get('rcvd_reason')!r}, replied {r.get('sent')}, "
        f"{r.get('exc') or ''} at +{fmt(rel(r.get('end')))}" + (f" error={r['error']}" if r.get("error") else "")
        for r in ws_recs))
    try:
        with open(app_log) as f:
            seen = [json.loads(line) for line in f]
    except OSError:
        seen = []
    halves = {(e["id"], e["i"]): e["t"] for e in seen if "sse_half" in e}
    mids = [mid_event_at_cut(r, halves) for r in sse_recs]
    # S3a's "no torn event" means something only if some stream was cut between the two halves
    # of an event (the SIGTERM is timed for that; each event is mid-way 300 of every 350 ms).
    mid_cut = sum(1 for m in mids if m and m.startswith("yes"))
    check("S3g the deadline fell inside an event (S3a exercised)", mid_cut >= 1,
          f"{mid_cut}/{len(mids)} streams were mid-event at the cut: "
          + "; ".join(f"{r['id']}: {m}" for r, m in zip(sse_recs, mids)))
    # SPEC §6: the close frame with 1001 goes to the backend too.
    backend_codes = {e["id"]: e["ws_disconnect"] for e in seen
                     if "ws_disconnect" in e and e["id"].startswith("w")}
    check("S3h the backend's WebSockets get close 1001 too",
          all(backend_codes.get(r["id"]) == 1001 for r in ws_recs),
          "uvicorn app saw WebSocket disconnect codes "
          + (", ".join(f"{k}={v}" for k, v in sorted(backend_codes.items())) or "none"))

    def waiter_good(r):
        try:
            body = json.loads(r.get("body") or b"null")
        except ValueError:
            body = None
        return (r.get("status") == 503 and body == {"error": "shutting_down"}
                and "retry-after" in r.get("headers", {}))
    check("S3c waiting requests get 503 shutting_down + Retry-After", all(waiter_good(r) for r in wait_recs),
          "; ".join(f"{r['id']}: {r.get('status')} {r.get('body')!r} Retry-After="
                    f"{r.get('headers', {}).get('retry-after')!r} Connection="
                    f"{r.get('headers', {}).get('connection')!r} at +{fmt(rel(r.get('headers_at')))}"
                    + (f" error={r['error']}" if r.get("error") else "") for r in wait_recs))

    g = grpc_rec
    check("S3d gRPC stream gets UNAVAILABLE (14)", g.get("code") == "UNAVAILABLE" and not g.get("error"),
          f"status {g.get('code')} ({g.get('code_value')}), details {g.get('details')!r}, "
          f"{g.get('msgs')} messages received (in order {g.get('in_order')}, intact {g.get('intact')}), "
          f"ended at +{fmt(rel(g.get('end')))}" + (f", error={g['error']}" if g.get("error") else ""))

    for name, w, log_path in (("A", wa, log_a), ("G", wg, log_g)):
        took = None if w.exited_at is None else w.exited_at - t_kill
        ok = w.code == 1 and took is not None and took < args.exit_budget
        check(f"S3e lameduck {name} exits 1 in < {args.exit_budget:g} s", ok,
              f"status {w.code}, exited {fmt(took)} after SIGTERM")

    pats = [f"uvicorn streaming_app:app .*--port {ua}", f"grpc_server.py --port {ug}"]
    pg_left = {p: c.pgrep(p) for p in pats}
    ok = not left_now and not left_later and not any(pg_left.values())
    check("S3f nothing of the children left", ok,
          f"tagged live processes right after both exits: {[c.describe_pid(p) for p in left_now]}, "
          f"0.5 s later: {[c.describe_pid(p) for p in left_later]}, pgrep: {pg_left}")

    for name, log_path in (("A (uvicorn)", log_a), ("G (grpcio)", log_g)):
        print(f"---- lameduck {name} log ({log_path})")
        print(c.tail(log_path, 60), end="")

    return c.report(
        out, "streaming", results,
        sse=[{k: (v.decode(errors="replace")[-300:] if isinstance(v, bytes) else v)
              for k, v in r.items()} for r in sse_recs],
        websockets=ws_recs,
        waiters=[{k: (v.decode(errors="replace") if isinstance(v, bytes) else v) for k, v in r.items()}
                 for r in wait_recs],
        grpc=grpc_rec,
        exit={"A": [wa.code, rel(wa.exited_at)], "G": [wg.code, rel(wg.exited_at)]})


if __name__ == "__main__":
    c.run_main(main)
