"""Test backend for the lameduck acceptance harness: a bare ASGI app (no framework)
served by uvicorn, with the same routes as node_backend.js:

  GET /slow?ms=3000&id=X            answers after `ms` milliseconds with a fixed body
  GET /sse?n=6&interval=500&id=X    text/event-stream, one event every `interval` ms,
                                    n events, then a `done` event
  anything else                     200 "ok\\n" at once
"""

import asyncio
import os
from urllib.parse import parse_qs

NAME = os.environ.get("BACKEND_NAME", "uvicorn").encode()


def slow_body(ident: str) -> bytes:
    return f"slow:{ident}:".encode() + b"x" * 1000 + b":end\n"


def sse_event(i: int, ident: str) -> bytes:
    return f'id: {i}\nevent: tick\ndata: {{"i":{i},"id":"{ident}"}}\n\n'.encode()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    query = parse_qs(scope.get("query_string", b"").decode())
    ident = query.get("id", ["0"])[0]
    path = scope["path"]
    if path == "/slow":
        ms = int(query.get("ms", ["3000"])[0])
        await asyncio.sleep(ms / 1000)
        body = slow_body(ident)
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
                (b"x-backend", NAME),
            ],
        })
        await send({"type": "http.response.body", "body": body})
    elif path == "/sse":
        n = int(query.get("n", ["6"])[0])
        interval = int(query.get("interval", ["500"])[0])
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                (b"x-backend", NAME),
            ],
        })
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        for i in range(1, n + 1):
            await asyncio.sleep(interval / 1000)
            await send({"type": "http.response.body", "body": sse_event(i, ident), "more_body": True})
        await send({"type": "http.response.body", "body": b"event: done\ndata: end\n\n"})
    else:
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"x-backend", NAME)],
        })
        await send({"type": "http.response.body", "body": b"ok\n"})
