#!/usr/bin/env python3
"""Mixed load for bench/soak.sh, and the soak's verdict. Plain asyncio on raw sockets, no deps.

    soak_load.py load PORT --duration S --stats FILE [--scale X]
        Runs every kind of client below against 127.0.0.1:PORT (lameduck in front of the repo's
        test backend) for S seconds, rewriting FILE (JSON) every second and once at the end.
        FILE.line holds the totals as "ok errors aborted" for a shell to read.
    soak_load.py report SAMPLES STATS --warmup S --duration S
        Reads the samples bench/soak.sh took (TSV) and the final load statistics, prints the
        samples table and the verdict as Markdown; exit status 1 if RSS or fds were not flat after
        warm-up or the load saw unexpected errors.

Kinds of client (numbers at --scale 1; --scale multiplies rates and client counts):
    keepalive   12 keep-alive connections, each pausing 0..50 ms between small requests
                (GET /hello, /headers, /download?bytes=4096, POST /echo of 1 KiB; each connection
                replaced after 300 requests): ~300 requests/s in all (the test backend's streamed
                answers, /echo and /download, take ~40 ms: its Nagle against the client's delayed
                ACK, direct as through lameduck).
    newconn     ~75/s: a new connection per GET /hello, half with Connection: close, half closed
                by the client after the response.
    big         2 connections: 1 MiB POST /echo (echo checked byte for byte) or 1 MiB
                GET /download, each pausing 0.17..0.5 s between transfers, on the same connection
                or (30%) a new one: ~3/s of each.
    sse         18 clients in a loop: GET /sse?n=20&ms=100; half read all 20 events and the end of
                the stream, half drop the connection after 1..15 events (FIN or RST).
    ws          12 clients in a loop: WebSocket handshake on /ws, 1..6 messages (10 B..16 KiB)
                echoed and checked, then a close handshake (60%) or a drop without a close frame,
                FIN or RST (40%).
    abort       ~25/s, clients that give up mid-exchange: close while /slow?ms=1000 is pending,
                mid-way through an 8 MiB download (FIN or RST), mid-way through a 1 MiB upload,
                mid-way through a request head, right after sending a request.
An exchange that should succeed and does not (status other than expected, short or wrong body,
reset, timeout after 30 s) counts as an error; aborts are counted apart and never errors, unless
what was read before the abort was wrong.
"""

import argparse
import asyncio
import base64
import collections
import json
import os
import random
import socket
import struct
import sys
import time

HOST = "127.0.0.1"
MIB = 1024 * 1024
TIMEOUT = 30.0


class Stats:
    def __init__(self):
        self.kinds = collections.defaultdict(lambda: {"ok": 0, "err": 0, "aborted": 0})
        self.errors = collections.Counter()
        self.statuses = collections.Counter()  # status codes lameduck answered, all kinds
        self.bytes_up = 0
        self.bytes_down = 0
        self.started = time.monotonic()

    def ok(self, kind):
        self.kinds[kind]["ok"] += 1

    def aborted(self, kind):
        self.kinds[kind]["aborted"] += 1

    def err(self, kind, what):
        self.kinds[kind]["err"] += 1
        self.errors[f"{kind}: {what}"[:160]] += 1

    def totals(self):
        return {k: sum(v[k] for v in self.kinds.values()) for k in ("ok", "err", "aborted")}

    def dump(self, path, final=False):
        data = {
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "final": final,
            **self.totals(),
            "kinds": dict(sorted(self.kinds.items())),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors.most_common(20)),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }
        for name, text in ((path, json.dumps(data, indent=1)),
                           (path + ".line", "{ok} {err} {aborted}\n".format(**data))):
            with open(name + ".tmp", "w") as f:
                f.write(text)
            os.replace(name + ".tmp", name)


class Bad(Exception):
    """The exchange went wrong in a way a correct proxy would not cause."""


STATS = Stats()


# ------------------------------------------------------------------ HTTP/1.1 on raw streams
async def connect(port):
    reader, writer = await asyncio.open_connection(HOST, port, limit=256 * 1024)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


def close(writer, reset=False):
    """FIN, or with reset=True an RST (SO_LINGER 0), as a client that vanishes would."""
    if reset:
        try:
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        writer.transport.abort()
    else:
        writer.close()


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise Bad(f"bad status line {lines[0][:40]!r}")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    status = int(parts[1])
    STATS.statuses[status] += 1
    return status, headers


async def body_chunks(reader, headers):
    """Yields the body's pieces: by Content-Length, chunked, or up to EOF."""
    if "content-length" in headers:
        left = int(headers["content-length"])
        while left:
            data = await reader.read(min(left, 65536))
            if not data:
                raise Bad(f"body short by {left} bytes")
            left -= len(data)
            yield data
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return
            left = size
            while left:
                data = await reader.read(min(left, 65536))
                if not data:
                    raise Bad("EOF inside a chunk")
                left -= len(data)
                yield data
            if await reader.readexactly(2) != b"\r\n":
                raise Bad("chunk not followed by CRLF")
    else:
        while data := await reader.read(65536):
            yield data


async def read_body(reader, headers):
    out = bytearray()
    async for data in body_chunks(reader, headers):
        out += data
    STATS.bytes_down += len(out)
    return bytes(out)


def request(method, path, body=b"", extra=""):
    head = f"{method} {path} HTTP/1.1\r\nHost: soak\r\n{extra}"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def exchange(reader, writer, method, path, body=b"", extra="", expect=200):
    """One request and its whole response on an open connection: (headers, body)."""
    writer.write(request(method, path, body, extra))
    STATS.bytes_up += len(body)
    status, headers = await read_head(reader)
    data = await read_body(reader, headers)
    await writer.drain()
    if status != expect:
        raise Bad(f"status {status} for {method} {path.split('?')[0]}")
    return headers, data


def describe(exc):
    if isinstance(exc, Bad):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed early"
    return f"{type(exc).__name__}: {exc}"


async def guarded(kind, coro):
    """Runs one exchange (or session) with the timeout; counts an exception as an error."""
    try:
        await asyncio.wait_for(coro, TIMEOUT)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the soak
        STATS.err(kind, describe(exc))


# ------------------------------------------------------------------ the kinds of client
SMALL = os.urandom(1024)
BIG = os.urandom(MIB)


async def keepalive_conn(port, deadline, interval):
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(connect(port), TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            STATS.err("keepalive", describe(exc))
            await asyncio.sleep(1)
            continue
        try:
            for _ in range(300):
                if time.monotonic() >= deadline:
                    break
                pick = random.random()
                if pick < 0.6:
                    _, data = await asyncio.wait_for(
                        exchange(reader, writer, "GET", "/hello"), TIMEOUT)
                    if data != b"hello":
                        raise Bad("wrong /hello body")
                elif pick < 0.75:
                    await asyncio.wait_for(exchange(reader, writer, "GET", "/headers"), TIMEOUT)
                elif pick < 0.9:
                    _, data = await asyncio.wait_for(
                        exchange(reader, writer, "POST", "/echo", SMALL), TIMEOUT)
                    if data != SMALL:
                        raise Bad("wrong echo of 1 KiB")
                else:
                    _, data = await asyncio.wait_for(
                        exchange(reader, writer, "GET", "/download?bytes=4096"), TIMEOUT)
                    if len(data) != 4096:
                        raise Bad(f"4 KiB download gave {len(data)} bytes")
                STATS.ok("keepalive")
                await asyncio.sleep(random.uniform(0, 2) * interval)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            STATS.err("keepalive", describe(exc))
            await asyncio.sleep(0.2)
        finally:
            close(writer)


async def newconn_one(port):
    reader, writer = await connect(port)
    try:
        extra = "Connection: close\r\n" if random.random() < 0.5 else ""
        _, data = await exchange(reader, writer, "GET", "/hello", extra=extra)
        if data != b"hello":
            raise Bad("wrong /hello body")
        STATS.ok("newconn")
    finally:
        close(writer)


async def big_conn(port, deadline, interval):
    reader = writer = None
    while time.monotonic() < deadline:
        try:
            if writer is None or random.random() < 0.3:
                if writer is not None:
                    close(writer)
                reader, writer = await asyncio.wait_for(connect(port), TIMEOUT)
            if random.random() < 0.5:
                _, data = await asyncio.wait_for(
                    exchange(reader, writer, "POST", "/echo", BIG), TIMEOUT)
                if data != BIG:
                    raise Bad(f"1 MiB echo came back wrong ({len(data)} bytes)")
                STATS.ok("upload_1MiB")
            else:
                _, data = await asyncio.wait_for(
                    exchange(reader, writer, "GET", f"/download?bytes={MIB}"), TIMEOUT)
                if len(data) != MIB or data.count(b"x") != MIB:
                    raise Bad(f"1 MiB download came back wrong ({len(data)} bytes)")
                STATS.ok("download_1MiB")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            STATS.err("big", describe(exc))
            if writer is not None:
                close(writer)
            writer = None
        await asyncio.sleep(random.uniform(0.5, 1.5) * interval)
    if writer is not None:
        close(writer)


async def sse_one(port):
    n, ms = 20, 100
    drop_after = random.randint(1, 15) if random.random() < 0.5 else None
    reader, writer = await connect(port)
    reset = False
    try:
        writer.write(request("GET", f"/sse?n={n}&ms={ms}", extra="Accept: text/event-stream\r\n"))
        status, headers = await read_head(reader)
        if status != 200 or not headers.get("content-type", "").startswith("text/event-stream"):
            raise Bad(f"SSE answered {status} {headers.get('content-type')}")
        buf, seen = b"", 0
        async for data in body_chunks(reader, headers):
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if event != f"id: {seen}\ndata: event {seen}".encode():
                    raise Bad(f"SSE event {seen} wrong: {event[:40]!r}")
                seen += 1
            if drop_after is not None and seen >= drop_after:
                reset = random.random() < 0.5
                STATS.aborted("sse_dropped")
                return
        if seen != n or buf:
            raise Bad(f"SSE stream ended after {seen} of {n} events")
        STATS.ok("sse_complete")
    finally:
        close(writer, reset)


def ws_frame(opcode, payload):
    """A masked client frame, FIN set."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n:
        mask = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + payload


async def ws_read(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    if b1 & 0x80:
        raise Bad("masked frame from the server")
    return b0 & 0x0F, await reader.readexactly(n)


async def ws_one(port):
    reader, writer = await connect(port)
    reset = False
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(request("GET", "/ws", extra=(
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")))
        status, headers = await read_head(reader)
        if status != 101:
            raise Bad(f"WebSocket handshake answered {status}")
        for _ in range(random.randint(1, 6)):
            text = random.random() < 0.5
            size = random.choice((10, 200, 4096, 16384))
            payload = (b"t" * size) if text else os.urandom(size)
            writer.write(ws_frame(0x1 if text else 0x2, payload))
            STATS.bytes_up += size
            opcode, echoed = await ws_read(reader)
            STATS.bytes_down += len(echoed)
            if opcode != (0x1 if text else 0x2) or echoed != payload:
                raise Bad(f"WebSocket echo wrong (opcode {opcode}, {len(echoed)} bytes)")
            await asyncio.sleep(random.uniform(0, 0.2))
        if random.random() < 0.6:
            writer.write(ws_frame(0x8, struct.pack("!H", 1000)))
            opcode, payload = await ws_read(reader)
            if opcode != 0x8:
                raise Bad(f"expected a close frame, got opcode {opcode}")
            if await reader.read(1) != b"":
                raise Bad("data after the close frame")
            STATS.ok("ws_closed")
        else:
            reset = random.random() < 0.5
            STATS.aborted("ws_dropped")
    finally:
        close(writer, reset)


async def abort_one(port):
    """A client that gives up mid-exchange; only what it read before giving up is checked."""
    kind = random.choice(("slow", "download", "upload", "head", "request"))
    reader, writer = await connect(port)
    reset = random.random() < 0.5
    try:
        if kind == "slow":
            writer.write(request("GET", "/slow?ms=1000"))
            await asyncio.sleep(random.uniform(0.05, 0.5))
        elif kind == "download":
            writer.write(request("GET", f"/download?bytes={8 * MIB}"))
            status, headers = await read_head(reader)
            if status != 200:
                raise Bad(f"status {status} for GET /download")
            want, got = random.randint(16 * 1024, 2 * MIB), 0
            async for data in body_chunks(reader, headers):
                got += len(data)
                if got >= want:
                    break
            STATS.bytes_down += got
        elif kind == "upload":
            writer.write(request("POST", "/echo", extra=f"Content-Length: {MIB}\r\n")
                         + BIG[: random.randint(1, MIB - 1)])
            await asyncio.sleep(random.uniform(0, 0.1))
        elif kind == "head":
            writer.write(b"GET /hello HTTP/1.1\r\nHost: so")
            await asyncio.sleep(random.uniform(0, 0.1))
        else:
            writer.write(request("GET", random.choice(("/hello", f"/download?bytes={MIB}"))))
        await writer.drain()
        STATS.aborted(f"abort_{kind}")
    finally:
        close(writer, reset)


# ------------------------------------------------------------------ scheduling
async def poisson(rate, deadline, make, kind, cap):
    """Starts make() about `rate` times a second (exponential gaps), at most `cap` at once."""
    running = set()
    while time.monotonic() < deadline:
        await asyncio.sleep(random.expovariate(rate))
        if len(running) >= cap:
            STATS.err(kind, f"more than {cap} in flight at once (clients are not keeping up)")
            continue
        task = asyncio.create_task(guarded(kind, make()))
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        await asyncio.wait(running)


async def looping(deadline, make, kind, pause):
    while time.monotonic() < deadline:
        await guarded(kind, make())
        await asyncio.sleep(random.uniform(0, pause))


async def load(args):
    port, scale = args.port, args.scale
    deadline = time.monotonic() + args.duration
    STATS.dump(args.stats)

    async def dumper():
        while True:
            await asyncio.sleep(1)
            STATS.dump(args.stats)

    dumping = asyncio.create_task(dumper())
    n = lambda count: max(1, round(count * scale))
    jobs = [keepalive_conn(port, deadline, 0.025) for _ in range(n(12))]
    jobs += [big_conn(port, deadline, 0.33) for _ in range(n(2))]
    jobs.append(poisson(75 * scale, deadline, lambda: newconn_one(port), "newconn", 300))
    jobs.append(poisson(25 * scale, deadline, lambda: abort_one(port), "abort", 300))
    jobs += [looping(deadline, lambda: sse_one(port), "sse", 0.5) for _ in range(n(18))]
    jobs += [looping(deadline, lambda: ws_one(port), "ws", 0.3) for _ in range(n(12))]
    print(f"load on 127.0.0.1:{port} for {args.duration} s", file=sys.stderr, flush=True)
    await asyncio.gather(*jobs)
    dumping.cancel()
    STATS.dump(args.stats, final=True)
    t = STATS.totals()
    print(f"load done: {t['ok']} ok, {t['err']} errors, {t['aborted']} aborted on purpose",
          file=sys.stderr, flush=True)


# ------------------------------------------------------------------ verdict
def slope_per_min(points):
    """Least-squares slope of (t seconds, value) points, per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / var if var else 0.0


def report(args):
    rows = []
    with open(args.samples) as f:
        header = f.readline().split()
        for line in f:
            rows.append(dict(zip(header, line.split())))
    with open(args.stats) as f:
        stats = json.load(f)

    def num(row, key):
        return float(row[key]) if row.get(key, "-") not in ("-", "") else None

    table = ["| t (s) | phase | RSS (MiB) | open fds | threads | in flight | load ok | load errors | aborted on purpose |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append("| {t} | {phase} | {rss:.1f} | {fds} | {threads} | {inflight} | {ok} | {err} | {aborted} |".format(
            rss=num(r, "rss_kib") / 1024, **r))

    steady = [r for r in rows if r["phase"] == "load" and args.warmup <= float(r["t"]) <= args.duration]
    verdict_ok = True
    lines = []
    if len(steady) < 6:
        lines.append(f"- **not enough samples after warm-up** ({len(steady)}, need 6): no verdict")
        verdict_ok = False
    else:
        third = len(steady) // 3
        first, last = steady[:third], steady[-third:]
        span_min = (float(steady[-1]["t"]) - float(steady[0]["t"])) / 60
        for key, label, unit, scale, tol_of in (
            ("rss_kib", "RSS", "MiB", 1024, lambda base: max(2.0, 0.10 * base)),
            ("fds", "open fds", "", 1, lambda base: max(32.0, 0.25 * base)),
        ):
            vals = [num(r, key) / scale for r in steady]
            fmax = max(num(r, key) / scale for r in first)
            lmax = max(num(r, key) / scale for r in last)
            slope = slope_per_min([(float(r["t"]), num(r, key) / scale) for r in steady])
            tol = tol_of(fmax)
            growth_ok = lmax - fmax <= tol
            trend_ok = slope * span_min <= tol
            flat = growth_ok and trend_ok
            verdict_ok &= flat
            u = f" {unit}" if unit else ""
            lines.append(
                f"- **{label}: {'flat' if flat else 'NOT FLAT'}** — after warm-up min {min(vals):.1f}{u}, "
                f"max {max(vals):.1f}{u}; max of the first third {fmax:.1f}{u}, of the last third "
                f"{lmax:.1f}{u} (growth {lmax - fmax:+.1f}{u}, tolerance {tol:.1f}{u}); least-squares "
                f"slope {slope:+.3f}{u}/min, {slope * span_min:+.1f}{u} over the {span_min:.1f} min "
                f"after warm-up (tolerance {tol:.1f}{u})")
    before = [r for r in rows if r["phase"] == "before"]
    after = [r for r in rows if r["phase"] == "after"]
    if before and after:
        fb, fa = num(before[0], "fds"), num(after[-1], "fds")
        rb, ra = num(before[0], "rss_kib") / 1024, num(after[-1], "rss_kib") / 1024
        idle_ok = fa <= fb + 4
        verdict_ok &= idle_ok
        lines.append(
            f"- **idle fds {'back to the start' if idle_ok else 'NOT back to the start'}** — "
            f"{fa:.0f} open fds idle after the load, {fb:.0f} before it (allowed: at most 4 more); "
            f"RSS idle {ra:.1f} MiB after, {rb:.1f} MiB before (not judged: the allocator keeps freed "
            f"memory)")
    if stats["err"]:
        verdict_ok = False
        lines.append(f"- **load errors: {stats['err']}** (exchanges that should have succeeded and did not)")
    else:
        lines.append("- load errors: 0")
    five = {k: v for k, v in stats["statuses"].items() if k.startswith("5")}
    lines.append(f"- 5xx statuses lameduck answered: {five or 'none'}")
    out = ["### Verdict: " + ("PASS (flat, no errors)" if verdict_ok else "FAIL"), ""]
    out += lines
    out.append("")
    out.append("Rule: the samples from WARMUP to DURATION are split in thirds. A series is flat if the "
               "max of the last third exceeds the max of the first third by no more than the "
               "tolerance, and the least-squares slope times the post-warm-up span stays within "
               "the same tolerance. Tolerance: RSS max(2 MiB, 10% of the first third's max); open fds "
               "max(32, 25% of the first third's max) (the fd count moves with the connections in "
               "flight at the sampling instant). Idle 5 s after the load (clients gone, idle backend "
               "connections swept after 3 s), lameduck must hold at most 4 more fds than idle before "
               "it: one socket leaked per so many thousand connections, lost in the noise under "
               "load, shows there. Any load error fails the soak too.")
    out += ["", "### Samples", ""] + table
    out.append("")
    out.append("### Load")
    out.append("")
    out.append("| kind | ok | errors | aborted on purpose |")
    out.append("|---|---:|---:|---:|")
    for kind, c in stats["kinds"].items():
        out.append(f"| {kind} | {c['ok']} | {c['err']} | {c['aborted']} |")
    out.append(f"| **all** | {stats['ok']} | {stats['err']} | {stats['aborted']} |")
    out.append("")
    out.append(f"Statuses seen: {stats['statuses']}; {stats['bytes_up'] / MIB:.0f} MiB up, "
               f"{stats['bytes_down'] / MIB:.0f} MiB down (bodies and WebSocket payloads).")
    if stats["errors"]:
        out.append("")
        out.append("Errors (most frequent first):")
        out.append("")
        for what, count in stats["errors"].items():
            out.append(f"- {count} × {what}")
    print("\n".join(out))
    return 0 if verdict_ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("load")
    p.add_argument("port", type=int)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--stats", required=True)
    p.add_argument("--scale", type=float, default=1.0)
    r = sub.add_parser("report")
    r.add_argument("samples")
    r.add_argument("stats")
    r.add_argument("--warmup", type=float, required=True)
    r.add_argument("--duration", type=float, required=True)
    args = parser.parse_args()
    if args.cmd == "load":
        asyncio.run(load(args))
        return 0
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
