#!/usr/bin/env python3
"""Opens COUNT keep-alive client connections to 127.0.0.1:PORT, each sends one request and reads
its whole response, then all stay open and idle until this process gets SIGTERM or its stdin
closes. Prints `held N` once all are open (N: those whose request succeeded).

    idle_clients.py PORT COUNT [PATH]        # GET PATH (default /) over HTTP/1.1 keep-alive
    idle_clients.py PORT COUNT /ws --websocket
                                             # a WebSocket handshake, then the tunnel is held

Used by bench/run.sh to measure what an idle connection (or tunnel) costs a proxy.
"""

import asyncio
import base64
import os
import resource
import signal
import sys


async def one(port: int, path: str, websocket: bool):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if websocket:
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
    else:
        head = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n"
    writer.write(head.encode())
    await writer.drain()
    status = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    ok = status.split(b" ")[1:2] == [b"101" if websocket else b"200"]
    return ok, writer


async def main():
    port, count = int(sys.argv[1]), int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else "/"
    websocket = "--websocket" in sys.argv
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    writers, held = [], 0
    # In batches: a listen backlog overflowing would only add retransmit delays.
    for start in range(0, count, 200):
        batch = [one(port, path, websocket) for _ in range(start, min(count, start + 200))]
        for result in await asyncio.gather(*batch, return_exceptions=True):
            if isinstance(result, BaseException):
                print(f"connection failed: {result!r}", file=sys.stderr)
                continue
            ok, writer = result
            held += ok
            writers.append(writer)
    print(f"held {held}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.read(1) or stop.set())
    await stop.wait()
    for writer in writers:
        writer.close()


asyncio.run(main())
