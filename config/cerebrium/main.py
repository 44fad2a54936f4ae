"""The app behind lameduck: an ordinary FastAPI app.

It has no SIGTERM handler, no request counter and no /ready or /health route: lameduck answers
Cerebrium's checks, drains on SIGTERM, and signals this process only once nothing is in flight.
"""

import asyncio

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

app = FastAPI()


@app.post("/hello")
def hello() -> dict:
    return {"message": "Hello from behind lameduck"}


@app.get("/stream")
async def stream(tokens: int = 20) -> StreamingResponse:
    """A slow token stream, like a generation: a SIGTERM in the middle does not cut it."""

    async def events():
        for i in range(tokens):
            await asyncio.sleep(0.25)
            yield f"data: token {i}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
