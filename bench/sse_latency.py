#!/usr/bin/env python3
"""Added latency per server-sent event: an SSE server stamps each event with the time it wrote
it (CLOCK_MONOTONIC, shared by every process on the machine), a client subtracts that from the
time it read the event. Run it once against the server directly and once through a proxy; the
difference is what the proxy adds.

    sse_latency.py serve PORT [--events N] [--interval-ms MS]
    sse_latency.py measure URL [--events N]      # prints p50/p90/p99/max in microseconds as JSON
"""
import argparse
import json
import socket
import sys
import threading
import time


def serve(port: int, events: int, interval: float) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            if request.startswith(b"GET /health") or request.startswith(b"GET / "):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                return
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            next_at = time.monotonic()
            for i in range(events):
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                event = f"id: {i}\ndata: {time.monotonic_ns()}\n\n".encode()
                try:
                    conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                except OSError:
                    return
            try:
                conn.sendall(b"0\r\n\r\n")
            except OSError:
                pass

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def measure(url: str, events: int) -> dict:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    path = "/" + url.split("//", 1)[1].split("/", 1)[1] if "/" in url.split("//", 1)[1] else "/events"
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host_port}\r\nAccept: text/event-stream\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    buf = buf.split(b"\r\n\r\n", 1)[1]
    latencies = []
    # Chunked framing is ignored: events are found by their data lines.
    while len(latencies) < events:
        data = sock.recv(65536)
        now = time.monotonic_ns()
        if not data:
            break
        buf += data
        while b"data: " in buf:
            start = buf.index(b"data: ") + 6
            end = buf.find(b"\n", start)
            if end < 0:
                break
            latencies.append((now - int(buf[start:end])) / 1000.0)
            buf = buf[end + 1 :]
    sock.close()
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)
    return {
        "events": len(latencies),
        "p50_us": pick(0.50),
        "p90_us": pick(0.90),
        "p99_us": pick(0.99),
        "max_us": round(latencies[-1], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("port", type=int)
    s.add_argument("--events", type=int, default=2000)
    s.add_argument("--interval-ms", type=float, default=2.0)
    m = sub.add_parser("measure")
    m.add_argument("url")
    m.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    if args.cmd == "serve":
        serve(args.port, args.events, args.interval_ms / 1000.0)
        return 0
    print(json.dumps(measure(args.url, args.events)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
