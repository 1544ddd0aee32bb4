"""A bare grpc.aio echo server on uvloop: the ceiling grpc.aio itself allows on this machine.

    python -m benchmarks.grpc_echo --port 50099          # serves until SIGTERM/SIGINT

One generic unary handler (bytes in, the same bytes out) for every method name, with the
service's own server options, so h2load can drive it with exactly the request it sends to
`/orders.OrderService/GetOrder`. `benchmarks.grpc_sitting` runs it beside the service.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
import uvloop


class _EchoHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, initial_metadata: bool) -> None:
        self._handler = grpc.unary_unary_rpc_method_handler(
            self._call_with_metadata if initial_metadata else self._call
        )

    async def _call(self, request: bytes, context: Any) -> bytes:
        return request

    async def _call_with_metadata(self, request: bytes, context: Any) -> bytes:
        await context.send_initial_metadata((("x-request-id", "echo"),))
        return request

    def service(self, handler_call_details: Any) -> Any:
        return self._handler


async def serve(port: int, initial_metadata: bool = False) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_EchoHandler(initial_metadata),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise SystemExit(f"cannot bind 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"echo listening on 127.0.0.1:{bound}", flush=True)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--initial-metadata",
        action="store_true",
        help="send initial metadata in its own batch first, as the service does",
    )
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.initial_metadata))


if __name__ == "__main__":
    main()
