"""The HTTP layer's own CPU per request: modelyard's connection protocol against uvicorn's.

Both protocols are driven in one process, on one uvloop loop, through a transport that only
counts the bytes written (no sockets, no system calls), with the same minimal ASGI app (it
reads the body and answers a small JSON document in two messages, as ``http.respond`` does) and
W1's request (``POST /v1/models/tabular/predict``, one row of 20 floats, the headers wrk sends).
What differs is the protocol's Python: parsing callbacks, the scope, ``receive``/``send``, the
response head, starting the app's task, and uvicorn's proxy-headers middleware (on by default).

The machine is shared, so each protocol runs ``--rounds`` alternating rounds of ``--requests``
requests and the least CPU time a request of each is printed beside the median: contention
only ever adds time. Run: ``python bench/http_protocol.py`` (needs ``uvicorn``: ``pip install
'modelyard[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import orjson

BODY = orjson.dumps({"instances": [[0.1 * i for i in range(20)]], "scores": True})
REQUEST = (b"POST /v1/models/tabular/predict HTTP/1.1\r\nHost: 127.0.0.1:8001\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
           % (len(BODY), BODY))
ANSWER = orjson.dumps({"predictions": [1], "scores": [[0.2, 0.8]], "model": "tabular",
                       "version": "1", "request_id": "0123456789abcdef-1"})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the whole body, answer a small JSON document (start + body, with its length)."""
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"x-request-id", b"0123456789abcdef-1"),
                            (b"content-length", str(len(ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": ANSWER})


class CountingTransport(asyncio.Transport):
    """A transport that keeps nothing: it counts writes and wakes the driver on each answer."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.answered: asyncio.Future[None] | None = None

    def write(self, data: Any) -> None:
        self.writes += 1
        if self.answered is not None and data.endswith(ANSWER) and not self.answered.done():
            self.answered.set_result(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8001)}.get(
            name, default)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def modelyard_protocol() -> asyncio.Protocol:
    """modelyard's :class:`~modelyard.serving.connection.Connection`."""
    from modelyard.serving.connection import Connection, Shared

    shared = Shared(app, server=("127.0.0.1", 8001))
    return Connection(shared)


def uvicorn_protocol() -> asyncio.Protocol:
    """uvicorn's httptools protocol, configured as ``modelyard serve`` configured it."""
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    config = Config(app=app, lifespan="off", access_log=False, log_level="warning",
                    http="httptools", loop="none")
    config.load()
    return HttpToolsProtocol(config=config, server_state=ServerState(), app_state={})


async def drive(make: Any, requests: int) -> tuple[float, float]:
    """CPU seconds a request over ``requests`` sequential requests on one connection, and
    transport writes (each a system call on a real socket) a request."""
    protocol = make()
    transport = CountingTransport()
    protocol.connection_made(transport)
    loop = asyncio.get_running_loop()
    start = time.process_time()
    for _ in range(requests):
        transport.answered = loop.create_future()
        protocol.data_received(REQUEST)
        await transport.answered
    spent = time.process_time() - start
    protocol.connection_lost(None)
    return spent / requests, transport.writes / requests


def main() -> int:
    """Alternate rounds of each protocol; print µs a request (least and median) and writes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests a round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each protocol")
    args = parser.parse_args()
    import uvloop

    makers = {"uvicorn": uvicorn_protocol, "modelyard": modelyard_protocol}
    seen: dict[str, list[float]] = {name: [] for name in makers}
    writes: dict[str, float] = {}
    loop = uvloop.new_event_loop()
    try:
        for make in makers.values():  # warm up
            loop.run_until_complete(drive(make, 2000))
        for _ in range(args.rounds):
            for name, make in makers.items():
                cpu, writes[name] = loop.run_until_complete(drive(make, args.requests))
                seen[name].append(cpu * 1e6)
    finally:
        loop.close()
    print(f"HTTP layer CPU per request (W1's request, a null app), {args.rounds} rounds of "
          f"{args.requests}:")
    for name, times in seen.items():
        print(f"  {name:10s} least {min(times):6.2f} us   median "
              f"{statistics.median(times):6.2f} us   {writes[name]:.0f} writes a request")
    ratio = min(seen["uvicorn"]) / min(seen["modelyard"])
    print(f"  modelyard's protocol costs 1/{ratio:.2f} of uvicorn's CPU a request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
