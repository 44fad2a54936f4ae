"""Long-lived-traffic test backend for check_streaming.py: a bare ASGI app (no framework) served
by uvicorn (`python -m uvicorn streaming_app:app --app-dir tests/acceptance --port U`).

  GET /hello                         200 "hello\\n" at once
  GET /sse2                          text/event-stream: event 1 at once, 2 s pause, event 2, end
  GET /ssepieces?id=X&n=N&gap_in=MS&gap_between=MS
                                     text/event-stream, N events; each event is sent as TWO
                                     separate writes with `gap_in` ms between them, then `gap_between`
                                     ms before the next event
  GET /wait?s=30                     answers 200 after `s` seconds (headers included)
  WS  /ws?id=X                       WebSocket echo (text and bytes)
  POST /v1/chat/completions          OpenAI-style streaming chat completion: a chat.completion.chunk
                                     `data:` event every 200 ms (content "tok0 ", "tok1 ", ...), up to
                                     1000 of them, then `data: [DONE]` (check_sse_endings.py)

If STREAMING_APP_LOG names a file, WebSocket disconnects (with the close code the app saw) and
the wall-clock time of each first half of a /ssepieces event are appended to it as JSON lines.
"""

import asyncio
import json
import os
import time
from urllib.parse import parse_qs

LOG = os.environ.get("STREAMING_APP_LOG")


def note(**fields) -> None:
    if not LOG:
        return
    fields["t"] = time.time()
    with open(LOG, "a") as f:
        f.write(json.dumps(fields) + "\n")


def sse_event_halves(i: int, ident: str) -> tuple[bytes, bytes]:
    """Expected by the client too (check_streaming.py imports this)."""
    first = f'id: {i}\nevent: tick\ndata: {{"i":{i},'.encode()
    second = f'"id":"{ident}","pad":"{"p" * 64}"}}\n\n'.encode()
    return first, second


SSE2_EVENTS = (b"id: 1\nevent: tick\ndata: first\n\n", b"id: 2\nevent: tick\ndata: second\n\n")


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def start(send, status, content_type):
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")],
    })


async def websocket(scope, receive, send):
    query = parse_qs(scope.get("query_string", b"").decode())
    ident = query.get("id", ["?"])[0]
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            if message.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
            else:
                await send({"type": "websocket.send", "text": message.get("text") or ""})
        elif message["type"] == "websocket.disconnect":
            note(ws_disconnect=message.get("code"), id=ident)
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["type"] == "websocket":
        return await websocket(scope, receive, send)
    if scope["type"] != "http":
        return
    query = parse_qs(scope.get("query_string", b"").decode())
    path = scope["path"]
    more = {"type": "http.response.body", "more_body": True}
    if path == "/sse2":
        await start(send, 200, b"text/event-stream")
        await send({**more, "body": SSE2_EVENTS[0]})
        await asyncio.sleep(2.0)
        await send({**more, "body": SSE2_EVENTS[1]})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/ssepieces":
        ident = query.get("id", ["0"])[0]
        n = int(query.get("n", ["1000"])[0])
        gap_in = int(query.get("gap_in", ["300"])[0]) / 1000
        gap_between = int(query.get("gap_between", ["50"])[0]) / 1000
        await start(send, 200, b"text/event-stream")
        for i in range(1, n + 1):
            first, second = sse_event_halves(i, ident)
            await send({**more, "body": first})
            note(sse_half=1, id=ident, i=i)
            await asyncio.sleep(gap_in)
            await send({**more, "body": second})
            await asyncio.sleep(gap_between)
        await send({"type": "http.response.body", "body": b"event: done\ndata: end\n\n"})
    elif path == "/v1/chat/completions":
        while (await receive()).get("more_body"):
            pass
        await start(send, 200, b"text/event-stream")
        for i in range(1000):
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                     "model": "demo", "choices": [{"index": 0, "delta": {"content": f"tok{i} "},
                                                   "finish_reason": None}]}
            await send({**more, "body": f"data: {json.dumps(chunk)}\n\n".encode()})
            await asyncio.sleep(0.2)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
    elif path == "/wait":
        await asyncio.sleep(float(query.get("s", ["30"])[0]))
        await start(send, 200, b"text/plain")
        await send({"type": "http.response.body", "body": b"waited\n"})
    else:
        await start(send, 200, b"text/plain")
        await send({"type": "http.response.body", "body": b"hello\n"})
