#!/usr/bin/env python3
"""Acceptance check F: what a real OpenAI SDK client tells its caller when the drain deadline
cuts its stream, for each way lameduck can end an event stream (SPEC §8).

    python3 tests/acceptance/check_sse_endings.py [--out DIR]

Needs the `openai` package (`python3 -m pip install openai uvicorn`). For each mode below, one
lameduck (--grace-period 3s --child-stop-timeout 1s: the deadline falls 1 s after SIGTERM)
spawns `uvicorn streaming_app:app`, whose POST /v1/chat/completions streams a chat.completion.chunk
every 200 ms. The OpenAI Python SDK (`OpenAI(base_url=...).chat.completions.create(stream=True)`,
no retries) reads it through lameduck; after 3 chunks lameduck gets SIGTERM. Recorded: the chunks
received, then the exception the SDK raised (its class, message, `type` and `code`), or none.

F1 on (default)     the SDK raises APIError; its message is the SDK's generic one, since the
                    data's `error` is a string without a `message`
F2 openai           APIError with message "The server is restarting; retry the request.",
                    type and code "server_restarting"
F3 custom data      --sse-shutdown-data with an OpenAI-style error object: APIError with that
                    object's message and type
F4 off (baseline)   no final event: the stream just ends and the SDK raises nothing; the caller
                    cannot tell a cut completion from a finished one (reported, passes when so)
Each mode also checks: at least 3 chunks arrived before the ending, and lameduck exited 1.
Exit status 0 when every check passes, 1 otherwise.
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402

OPENAI_MESSAGE = "The server is restarting; retry the request."
CUSTOM_MESSAGE = "Down for maintenance; retry in 30 s."
CUSTOM_DATA = json.dumps({"error": {"message": CUSTOM_MESSAGE, "type": "maintenance",
                                    "code": "maintenance"}}, indent=1)

# (id, mode label, extra lameduck args, expected (class, message, type) or None for no error)
MODES = [
    ("F1", "on", [], ("APIError", "An error occurred during streaming", None)),
    ("F2", "openai", ["--sse-shutdown-event", "openai"],
     ("APIError", OPENAI_MESSAGE, "server_restarting")),
    ("F3", "custom data", ["--sse-shutdown-data", CUSTOM_DATA],
     ("APIError", CUSTOM_MESSAGE, "maintenance")),
    ("F4", "off", ["--sse-shutdown-event", "off"], None),
]

results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str) -> None:
    results.append((name, ok, detail))
    c.log(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")


def sdk_client(port: int, rec: dict, started: threading.Event) -> None:
    """Streams a chat completion through lameduck with the OpenAI SDK, recording what it saw."""
    import openai

    client = openai.OpenAI(base_url=f"http://{c.HOST}:{port}/v1", api_key="unused",
                           max_retries=0, timeout=30)
    rec["chunks"] = 0
    rec["text"] = ""
    try:
        stream = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], stream=True)
        for chunk in stream:
            rec["chunks"] += 1
            rec["text"] += chunk.choices[0].delta.content or ""
            if rec["chunks"] == 3:
                started.set()
        rec["ended"] = "the stream ended normally (no exception)"
    except Exception as err:  # noqa: BLE001  (what the SDK raises is the observation)
        rec["exception"] = type(err).__name__
        rec["message"] = getattr(err, "message", str(err))
        rec["type"] = getattr(err, "type", None)
        rec["code"] = getattr(err, "code", None)
        rec["body"] = getattr(err, "body", None)
    finally:
        started.set()


def run_mode(ident: str, label: str, extra: list[str], expected, args, out: str) -> dict:
    up = c.fixed_port()
    log_path = os.path.join(out, f"lameduck_{ident}.log")
    argv = [c.LAMEDUCK, "--port", "0", "--bind", c.HOST, "--upstream", f"http://{c.HOST}:{up}",
            "--grace-period", args.grace, "--child-stop-timeout", args.child_stop, *extra,
            "--", c.PYTHON, "-m", "uvicorn", "streaming_app:app", "--app-dir", c.HERE,
            "--host", c.HOST, "--port", str(up), "--log-level", "warning", "--no-access-log"]
    c.log(f"{ident} ({label}): " + " ".join(argv))
    proc = c.spawn(argv, log_path)
    watcher = c.ExitWatcher(proc)
    port = c.wait_listening(log_path, proc)
    rec: dict = {"mode": label}
    if not c.wait_until(lambda: c.http_get(port, "/ready", timeout=1)[0] == 200, 60, 0.1):
        check(f"{ident} {label}: lameduck ready", False, c.tail(log_path))
        return rec
    started = threading.Event()
    client = threading.Thread(target=sdk_client, args=(port, rec, started), daemon=True)
    client.start()
    started.wait(30)
    os.kill(proc.pid, signal.SIGTERM)
    t_kill = c.now()
    client.join(30)
    rec["ended_after_sigterm_s"] = round(c.now() - t_kill, 2)
    watcher.wait(15)
    rec["lameduck_exit"] = watcher.code

    seen = (f"{rec.get('chunks')} chunks ({rec.get('text', '')[:40]!r}...), then "
            + (f"{rec['exception']}: {rec['message']!r} (type {rec['type']!r}, code {rec['code']!r})"
               if "exception" in rec else rec.get("ended", "nothing")))
    if expected is None:
        ok = "exception" not in rec and "ended" in rec
    else:
        cls, message, err_type = expected
        ok = (rec.get("exception") == cls and rec.get("message") == message
              and rec.get("type") == err_type)
    check(f"{ident} {label}: what the SDK surfaces", ok, seen)
    check(f"{ident} {label}: chunks before the ending, lameduck exits 1",
          rec.get("chunks", 0) >= 3 and watcher.code == 1,
          f"{rec.get('chunks')} chunks; lameduck exit {watcher.code}; stream ended "
          f"{rec['ended_after_sigterm_s']} s after SIGTERM")
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="keep logs and results here (default: a new /tmp/lameduck-acc-sse-*)")
    ap.add_argument("--grace", default="3s")
    ap.add_argument("--child-stop", default="1s")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="lameduck-acc-sse-")
    os.makedirs(out, exist_ok=True)
    import openai  # noqa: F401  (fail early if missing)
    import uvicorn  # noqa: F401
    c.log(f"output in {out}; lameduck {c.LAMEDUCK}; openai {openai.__version__}; tag {c.TAG}")

    recs = [run_mode(ident, label, extra, expected, args, out)
            for ident, label, extra, expected in MODES]

    print("---- what the OpenAI SDK surfaced, per mode")
    for rec in recs:
        said = (f"{rec['exception']}: {rec['message']}" if "exception" in rec
                else rec.get("ended", "?"))
        print(f"  {rec['mode']:12} {said}")
    return c.report(out, "sse_endings", results, openai=openai.__version__, modes=recs)


if __name__ == "__main__":
    c.run_main(main)
