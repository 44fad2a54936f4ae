#!/usr/bin/env python3
"""grpcio server for check_streaming.py (service Demo from grpc_demo.proto).

    python3 grpc_server.py --port U --stubs DIR

Listens with an insecure (h2c) port on 127.0.0.1:U only. On SIGTERM it stops with a 0.5 s grace
and exits 0. DIR holds grpc_demo_pb2.py / grpc_demo_pb2_grpc.py (see check_streaming.py).
"""

import argparse
import signal
import sys
import threading
import time
from concurrent import futures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stubs", required=True)
    args = ap.parse_args()
    sys.path.insert(0, args.stubs)
    import grpc
    import grpc_demo_pb2 as pb
    import grpc_demo_pb2_grpc as pb_grpc

    class Demo(pb_grpc.DemoServicer):
        def Echo(self, request, context):
            context.set_trailing_metadata((("x-demo-trailer", "unary"),))
            return pb.EchoReply(text="echo:" + request.text)

        def Count(self, request, context):
            pad = b"z" * request.pad_bytes
            for i in range(1, request.n + 1):
                if not context.is_active():
                    return
                yield pb.CountReply(i=i, id=request.id, pad=pad)
                if request.interval_ms:
                    time.sleep(request.interval_ms / 1000)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_DemoServicer_to_server(Demo(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{args.port}")
    if bound != args.port:
        print(f"grpc_server: could not bind 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        sys.exit(1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    print(f"grpc_server: serving on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    while not stop.wait(0.2):
        pass
    print("grpc_server: SIGTERM, stopping (grace 0.5 s)", file=sys.stderr, flush=True)
    server.stop(0.5).wait(2)
    print("grpc_server: stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
