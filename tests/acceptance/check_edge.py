#!/usr/bin/env python3
"""Acceptance check E: lameduck at the edge, facing clients that were never meant to reach the
servers behind it (protocol strictness, slow clients, HTTP/2 floods).

    python3 tests/acceptance/check_edge.py [--out DIR]

Two lameduck instances:
  A: defaults, spawning the README's quick start backend, `python3 -m http.server`
  B: --header-read-timeout 2s --idle-timeout 3s, spawning node_backend.js (/slow, /sse)

E1 through A: responses to HTTP/1.1 clients are HTTP/1.1 (http.server speaks HTTP/1.0), and two
   requests share one kept-alive connection (E1a files, E1b http.server's 404 page)
E2 through A, raw sockets: two Host headers, an absolute-form target that disagrees with Host,
   control characters, obs-fold, Content-Length with Transfer-Encoding, an unknown transfer
   coding: 400; a 100 KB header: 431; a 9 KB request line: 414; each with lameduck's JSON body
   and Connection: close, and none reaches http.server (E2z: its request log is checked)
E3 through B: E3a a head that never ends gets 408 (JSON) after 2 s; E3b a kept-alive connection
   is closed after 3 s idle (not after 2 s); E3c a 5 s response and E3d an event stream with
   4 s gaps are untouched
E4 HTTP/2 (prior knowledge, raw frames): E4a SETTINGS advertise 100 concurrent streams and a
   32 KiB header list (through A); E4b the 101st concurrent stream is refused (through B);
   E4c a 40 KB header list gets 431 (through A)
E5-E9 floods through B, each on one connection, while a bystander makes HTTP/1.1 and HTTP/2
   requests through the same lameduck: rapid reset (CVE-2023-44487), CONTINUATION flood
   (CVE-2024-27316 and kin), PING flood (CVE-2019-9512), SETTINGS flood (CVE-2019-9515), a
   window that never opens (initial window 0, no WINDOW_UPDATE): each gets GOAWAY and a closed
   connection within its budget
E10 the bystander saw no failure and no request over 2 s; lameduck's memory grew by less than
   64 MiB over all the floods; both lameducks still answer /health
Requires the Python package h2 (hyperframe, hpack). Exit status 0 when every check passes.
"""

import argparse
import http.client
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402

import hpack  # noqa: E402
from hyperframe.frame import (  # noqa: E402
    ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame,
    SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str) -> None:
    results.append((name, ok, detail))
    c.log(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


# --------------------------------------------------------------------------- HTTP/1, raw

def raw_exchange(port: int, data: bytes, timeout: float = 10.0):
    """Sends data on a new connection; returns (status, headers, body, closed, seconds)."""
    start = c.now()
    s = socket.create_connection((c.HOST, port), timeout=timeout)
    try:
        try:
            s.sendall(data)
        except OSError:
            pass  # refused before all was read: the answer is still there to read
        buf = b""
        closed = False
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                hdrs = parse_headers(head)
                n = int(hdrs.get("content-length", "-1"))
                if n >= 0 and len(rest) >= n and hdrs.get("connection") != "close":
                    break
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1]) if lines[0].startswith(b"HTTP/") else None
        return status, parse_headers(head), body, closed, c.now() - start
    finally:
        s.close()


def parse_headers(head: bytes) -> dict:
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out[name.decode(errors="replace").strip().lower()] = value.decode(errors="replace").strip()
    return out


def json_detail(body: bytes):
    try:
        obj = json.loads(body)
        return obj.get("error"), obj.get("detail")
    except ValueError:
        return None, None


# --------------------------------------------------------------------------- HTTP/2, raw

class H2:
    """A raw HTTP/2 connection: frames out as written, frames in parsed by a reader thread."""

    def __init__(self, port: int, settings: dict | None = None):
        self.sock = socket.create_connection((c.HOST, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.lock = threading.Lock()
        self.frames: list[tuple[float, Frame]] = []
        self.server_settings: dict = {}
        self.goaway = None  # (time, error code, debug data)
        self.closed_at = None
        self.write_error = None
        self.streams: dict[int, dict] = {}
        self.changed = threading.Condition(self.lock)
        # A connection window that never limits the server: only a stream's own may (E9).
        self.sock.sendall(PREFACE + SettingsFrame(0, settings=settings or {}).serialize()
                          + WindowUpdateFrame(0, window_increment=1 << 30).serialize())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        self.sock.settimeout(None)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self.changed:
                    self.closed_at = c.now()
                    self.changed.notify_all()
                return
            buf += chunk
            at = 0
            while len(buf) - at >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buf[at:at + 9]))
                if len(buf) - at < 9 + length:
                    break
                frame.parse_body(memoryview(buf[at + 9:at + 9 + length]))
                at += 9 + length
                self._on_frame(frame)
            buf = buf[at:]

    def _on_frame(self, frame):
        with self.changed:
            self.frames.append((c.now(), frame))
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.server_settings.update(frame.settings)
                self._send_locked(SettingsFrame(0, flags=["ACK"]).serialize())
            elif isinstance(frame, GoAwayFrame) and self.goaway is None:
                self.goaway = (c.now(), frame.error_code, bytes(frame.additional_data))
            elif isinstance(frame, HeadersFrame):
                st = self.streams.setdefault(frame.stream_id, {"data": 0})
                try:
                    st["headers"] = dict(self.decoder.decode(bytes(frame.data)))
                except Exception as e:  # noqa: BLE001
                    st["headers"] = {"error": repr(e)}
                if "END_STREAM" in frame.flags:
                    st["end"] = True
            elif isinstance(frame, DataFrame):
                st = self.streams.setdefault(frame.stream_id, {"data": 0})
                st["data"] += len(frame.data)
                if "END_STREAM" in frame.flags:
                    st["end"] = True
            elif isinstance(frame, RstStreamFrame):
                self.streams.setdefault(frame.stream_id, {"data": 0})["reset"] = frame.error_code
            self.changed.notify_all()

    def _send_locked(self, data: bytes) -> bool:
        if self.write_error is not None:
            return False
        try:
            self.sock.sendall(data)
            return True
        except OSError as e:
            self.write_error = repr(e)
            return False

    def send(self, data: bytes) -> bool:
        with self.lock:
            return self._send_locked(data)

    def headers(self, stream_id: int, path: str, extra=(), end_stream=True, end_headers=True) -> bytes:
        """A request's HEADERS frame, and as many CONTINUATION frames as its size needs."""
        block = self.encoder.encode([(":method", "GET"), (":scheme", "http"),
                                     (":authority", "edge.test"), (":path", path), *extra])
        pieces = [block[i:i + 16384] for i in range(0, len(block), 16384)] or [b""]
        out = b""
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            flags = ["END_HEADERS"] if last and end_headers else []
            if i == 0:
                flags += ["END_STREAM"] if end_stream else []
                out += HeadersFrame(stream_id, data=piece, flags=flags).serialize()
            else:
                out += ContinuationFrame(stream_id, data=piece, flags=flags).serialize()
        return out

    def wait(self, pred, timeout: float) -> bool:
        deadline = c.now() + timeout
        with self.changed:
            while not pred():
                left = deadline - c.now()
                if left <= 0:
                    return False
                self.changed.wait(left)
            return True

    def wait_closed(self, timeout: float) -> bool:
        return self.wait(lambda: self.closed_at is not None, timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- bystander

class Bystander:
    """Requests through lameduck in a loop while the floods run: HTTP/1.1 (a new connection each
    time) and HTTP/2 (one connection, a new stream each time)."""

    def __init__(self, port: int):
        self.port = port
        self.stop = threading.Event()
        self.h1 = {"ok": 0, "failed": [], "slowest": 0.0}
        self.h2 = {"ok": 0, "failed": [], "slowest": 0.0}
        self.threads = [threading.Thread(target=self._h1, daemon=True),
                        threading.Thread(target=self._h2, daemon=True)]
        for t in self.threads:
            t.start()

    def _h1(self):
        while not self.stop.is_set():
            start = c.now()
            try:
                status, _, body = c.http_get(self.port, "/", timeout=10)
                took = c.now() - start
                if status == 200 and body == b"ok\n":
                    self.h1["ok"] += 1
                else:
                    self.h1["failed"].append(f"{status} {body[:80]!r}")
                self.h1["slowest"] = max(self.h1["slowest"], took)
            except Exception as e:  # noqa: BLE001
                self.h1["failed"].append(repr(e))
            self.stop.wait(0.05)

    def _h2(self):
        conn = H2(self.port)
        stream = 1
        while not self.stop.is_set():
            start = c.now()
            sid = stream
            stream += 2
            if not conn.send(conn.headers(sid, "/")):
                self.h2["failed"].append(f"write: {conn.write_error}")
                return
            done = conn.wait(lambda: conn.streams.get(sid, {}).get("end") or conn.closed_at, 10)
            took = c.now() - start
            st = conn.streams.get(sid, {})
            status = st.get("headers", {}).get(":status")
            if done and st.get("end") and status == "200":
                self.h2["ok"] += 1
            else:
                self.h2["failed"].append(f"stream {sid}: {st}, closed {conn.closed_at is not None}")
                if conn.closed_at is not None:
                    return
            self.h2["slowest"] = max(self.h2["slowest"], took)
            self.stop.wait(0.05)
        conn.close()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(15)


# --------------------------------------------------------------------------- checks

def e1_http10_backend(port: int) -> None:
    for name, path, expect in (("E1a files", "/hello.txt", 200), ("E1b 404 page", "/nope", 404)):
        conn = http.client.HTTPConnection(c.HOST, port, timeout=10)
        seen = []
        try:
            for _ in range(2):
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                seen.append((resp.status, resp.version, resp.getheader("connection"),
                             id(conn.sock) if conn.sock else None))
            ok = (all(s == expect and v == 11 and cl is None for s, v, cl, _ in seen)
                  and seen[0][3] is not None and seen[0][3] == seen[1][3])
        except Exception as e:  # noqa: BLE001
            ok = False
            seen.append(repr(e))
        finally:
            conn.close()
        check(f"{name}: HTTP/1.1 and kept alive", ok, f"(status, version, connection, socket) {seen}")


E2_CASES = [
    # (name, raw request, status, detail or None for any body)
    ("two Host", b"GET /e2-two-host HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "duplicate_host"),
    ("authority vs Host", b"GET http://a/e2-mismatch HTTP/1.1\r\nHost: b\r\n\r\n", 400,
     "host_mismatch"),
    ("control character", b"GET /e2-ctl HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n", 400,
     "control_character"),
    ("obs-fold", b"GET /e2-fold HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n", 400,
     "obsolete_line_folding"),
    ("CL + TE", b"POST /e2-clte HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "content_length_with_transfer_encoding"),
    ("unknown coding", b"POST /e2-gzip HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n"
     b"\r\n0\r\n\r\n", 400, "unsupported_transfer_coding"),
    ("100 KB header", b"GET /e2-huge HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n",
     431, "header_section_too_large"),
    ("9 KB request line", b"GET /e2-long" + b"l" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414,
     "request_line_too_long"),
]


def e2_malformed(port: int, backend_log: str) -> None:
    for name, data, status, detail in E2_CASES:
        try:
            got, hdrs, body, closed, _ = raw_exchange(port, data)
            error, got_detail = json_detail(body)
            ok = (got == status and got_detail == detail and hdrs.get("connection") == "close"
                  and hdrs.get("content-type") == "application/json" and closed)
            info = f"{got} {body[:100]!r} connection={hdrs.get('connection')} closed={closed}"
        except Exception as e:  # noqa: BLE001
            ok, info = False, repr(e)
        check(f"E2 {name}: {status} {detail}", ok, info)
    # A request that does reach http.server, after them: once it is in the log, any of them
    # that got through would be too.
    marker = f"/e2z-marker-{os.getpid()}"
    c.http_get(port, marker)
    ok_marker = c.wait_until(lambda: marker in open(backend_log, errors="replace").read(), 5)
    with open(backend_log, errors="replace") as f:
        log = f.read()
    leaked = [name for name, data, *_ in E2_CASES
              if re.search(rb"/e2-[a-z-]+", data).group().decode() in log]
    check("E2z none of them reached the backend", not leaked and ok_marker,
          f"found in http.server's log: {leaked}; control request logged: {ok_marker}")


def e3_timers(port: int) -> None:
    status, hdrs, body, closed, took = raw_exchange(port, b"GET /slow?ms=1 HTTP/1.1\r\nHost: a\r\n")
    check("E3a a head that never ends: 408 after 2 s, closed",
          status == 408 and json_detail(body) == ("request_timeout", "header_read_timeout")
          and closed and 1.8 <= took < 8,
          f"{status} {body!r} closed={closed} after {took:.2f} s")

    s = socket.create_connection((c.HOST, port), timeout=15)
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    buf = b""
    while b"ok\n" not in buf:
        buf += s.recv(4096)
    start = c.now()
    rest = s.recv(4096)
    took = c.now() - start
    s.close()
    check("E3b a kept-alive connection idle for 3 s is closed (not at 2 s)",
          rest == b"" and 2.5 <= took < 9, f"closed after {took:.2f} s, got {rest!r}")

    start = c.now()
    status, _, body = c.http_get(port, "/slow?ms=5000&id=e3", timeout=20)
    check("E3c a 5 s response is not cut", status == 200 and body == c.slow_body("e3"),
          f"{status}, {len(body)} bytes after {c.now() - start:.1f} s")

    start = c.now()
    status, _, body = c.http_get(port, "/sse?n=2&interval=4000&id=e3", timeout=30)
    check("E3d an event stream with 4 s gaps is not cut",
          status == 200 and body.endswith(b"event: done\ndata: end\n\n") and body.count(b"event: tick") == 2,
          f"{status}, {body[-60:]!r} after {c.now() - start:.1f} s")


def e4_http2_limits(port_a: int, port_b: int) -> None:
    conn = H2(port_a)
    conn.wait(lambda: conn.server_settings, 5)
    st = conn.server_settings
    check("E4a SETTINGS: 100 concurrent streams, 32 KiB header list",
          st.get(3) == 100 and st.get(6) == 32768, f"server settings {st}")
    conn.send(conn.headers(1, "/", extra=[("x-big", "b" * 40_000)]))
    conn.wait(lambda: 1 in conn.streams and (conn.streams[1].get("end") or "reset" in conn.streams[1]), 5)
    s1 = conn.streams.get(1, {})
    check("E4c a 40 KB header list gets 431", s1.get("headers", {}).get(":status") == "431",
          f"stream 1: {s1}")
    conn.close()

    conn = H2(port_b)
    conn.wait(lambda: conn.server_settings, 5)
    conn.send(b"".join(conn.headers(1 + 2 * i, "/slow?ms=3000") for i in range(101)))
    last = 1 + 2 * 100
    conn.wait(lambda: "reset" in conn.streams.get(last, {}), 5)
    refused = conn.streams.get(last, {}).get("reset")
    conn.wait(lambda: sum(1 for s in conn.streams.values() if s.get("end")) >= 100, 15)
    done = sum(1 for sid, s in conn.streams.items() if s.get("end") and sid != last)
    check("E4b the 101st concurrent stream is refused, the 100 others answered",
          refused == 7 and done == 100, f"stream {last} reset with {refused} (7 = REFUSED_STREAM), "
          f"{done} answered")
    conn.close()


def flood(name: str, port: int, budget: float, run) -> dict:
    """Opens a connection, runs the flood on it, and checks GOAWAY and the close within budget."""
    conn = H2(port)
    conn.wait(lambda: conn.server_settings, 5)
    start = c.now()
    sent = run(conn)
    closed = conn.wait_closed(budget)
    goaway = conn.goaway
    took = (conn.closed_at or c.now()) - start
    detail = (f"sent {sent}; GOAWAY {None if goaway is None else (goaway[1], goaway[2], round(goaway[0] - start, 2))}; "
              f"closed {closed} after {took:.2f} s")
    check(f"{name}: GOAWAY and closed within {budget:g} s", goaway is not None and closed, detail)
    conn.close()
    return {"sent": sent, "goaway": goaway and [goaway[1], goaway[2].decode(errors="replace")],
            "closed_after": took}


def rapid_reset(conn: H2) -> int:
    sent = 0
    for i in range(5000):
        sid = 1 + 2 * i
        if not conn.send(conn.headers(sid, "/slow?ms=2000") + RstStreamFrame(sid, error_code=8).serialize()):
            break
        sent += 1
        if conn.goaway:
            break
    return sent


def continuation_flood(conn: H2) -> int:
    if not conn.send(conn.headers(1, "/", end_headers=False)):
        return 0
    sent = 0
    for i in range(100_000):
        block = conn.encoder.encode([(f"x-flood-{i}", "v" * 50)])
        if not conn.send(ContinuationFrame(1, data=block).serialize()):
            break
        sent += 1
        if conn.goaway:
            break
    return sent


def control_flood(frame: bytes):
    def run(conn: H2) -> int:
        batch = frame * 1000
        sent = 0
        deadline = c.now() + 10
        while c.now() < deadline and not conn.goaway:
            if not conn.send(batch):
                break
            sent += 1000
        return sent
    return run


def closed_window(conn: H2) -> int:
    # Stream window 0 from the start: the server may send headers, never data.
    conn.send(SettingsFrame(0, settings={4: 0}).serialize())
    conn.send(conn.headers(1, "/sse?n=100000&interval=1&id=win"))
    conn.wait(lambda: "headers" in conn.streams.get(1, {}), 10)
    return 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="keep logs and results here (default: a new /tmp/lameduck-acc-edge-*)")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="lameduck-acc-edge-")
    os.makedirs(out, exist_ok=True)
    c.log(f"output in {out}; lameduck {c.LAMEDUCK}; tag {c.TAG}")

    docroot = os.path.join(out, "docroot")
    os.makedirs(docroot, exist_ok=True)
    with open(os.path.join(docroot, "hello.txt"), "w") as f:
        f.write("hello\n")
    ua, ub = c.fixed_port(), c.fixed_port()
    log_a = os.path.join(out, "lameduck_A_http_server.log")
    log_b = os.path.join(out, "lameduck_B_node.log")
    argv_a = [c.LAMEDUCK, "--port", "0", "--bind", c.HOST, "--upstream", f"http://{c.HOST}:{ua}",
              "--", c.PYTHON, "-m", "http.server", str(ua), "--bind", c.HOST, "--directory", docroot]
    argv_b = [c.LAMEDUCK, "--port", "0", "--bind", c.HOST, "--upstream", f"http://{c.HOST}:{ub}",
              "--header-read-timeout", "2s", "--idle-timeout", "3s",
              "--", *c.backend_argv("node")]
    pa = c.spawn(argv_a, log_a, {"PYTHONUNBUFFERED": "1"})
    pb = c.spawn(argv_b, log_b)
    la, lb = c.wait_listening(log_a, pa), c.wait_listening(log_b, pb)
    for port in (la, lb):
        if not c.wait_until(lambda: c.http_get(port, "/ready", timeout=1)[0] == 200, 30, 0.1):
            print(c.tail(log_a), c.tail(log_b))
            return 1
    c.log(f"ready: A on {la} (http.server {ua}), B on {lb} (node {ub})")

    e1_http10_backend(la)
    e2_malformed(la, log_a)
    e3_timers(lb)
    e4_http2_limits(la, lb)

    rss_before = rss_kib(pb.pid)
    bystander = Bystander(lb)
    time.sleep(0.5)
    floods = {
        "E5 rapid reset": flood("E5 rapid reset", lb, 10, rapid_reset),
        "E6 CONTINUATION flood": flood("E6 CONTINUATION flood", lb, 10, continuation_flood),
        "E7 PING flood": flood("E7 PING flood", lb, 10, control_flood(
            PingFrame(0, opaque_data=b"flooding").serialize())),
        "E8 SETTINGS flood": flood("E8 SETTINGS flood", lb, 10, control_flood(
            SettingsFrame(0, settings={4: 65535}).serialize())),
        # Idle timeout 3 s, then GOAWAY and at most 2 s for the connection to close.
        "E9 window never opens": flood("E9 window never opens", lb, 10, closed_window),
    }
    time.sleep(0.5)
    bystander.finish()
    rss_after = rss_kib(pb.pid)
    h1, h2 = bystander.h1, bystander.h2
    ok = (not h1["failed"] and not h2["failed"] and h1["ok"] > 20 and h2["ok"] > 20
          and h1["slowest"] < 2 and h2["slowest"] < 2)
    check("E10a the bystander was unaffected", ok,
          f"HTTP/1.1 {h1['ok']} ok, slowest {h1['slowest']:.3f} s, failed {h1['failed'][:3]}; "
          f"HTTP/2 {h2['ok']} ok, slowest {h2['slowest']:.3f} s, failed {h2['failed'][:3]}")
    grew = rss_after - rss_before
    check("E10b lameduck's memory grew by less than 64 MiB", 0 <= rss_before and grew < 64 * 1024,
          f"RSS {rss_before} KiB before the floods, {rss_after} KiB after")
    alive = [c.http_get(p, "/health", timeout=5)[0] for p in (la, lb)]
    check("E10c both lameducks still answer /health", alive == [200, 200], f"{alive}")

    for name, path in (("A", log_a), ("B", log_b)):
        print(f"---- lameduck {name} log ({path})")
        print(c.tail(path, 30), end="")
    return c.report(out, "edge", results, floods=floods, bystander={"http1": h1, "http2": h2},
                    rss_kib=[rss_before, rss_after])


if __name__ == "__main__":
    c.run_main(main)
