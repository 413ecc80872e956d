"""The HTTP/1.1 server against real sockets: keep-alive, pipelining, chunked bodies,
100-continue, limits and timeouts, disconnects, HEAD, back-pressure, graceful shutdown and its
drain (readiness false, still accepting, then closing)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from modelyard.errors import BodyTimeoutError
from modelyard.serving.connection import Connection, Limits, Shared

LIMITS = Limits(head_bytes=4096, headers=20, url_bytes=1024, head_timeout_s=0.4,
                keep_alive_s=0.8, body_buffer=64 * 1024, pipeline=4)


class EchoApp:
    """Answers ``METHOD PATH?QUERY len=N`` after reading the whole body; paths steer it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.sent_parts = 0
        self.finished = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/slow":
            await asyncio.sleep(0.3)
        if path == "/stream":
            await self._stream(send)
            return
        if path == "/refuse":  # answers before reading the body (a 413 from Content-Length)
            await self._answer(send, 413, b"too big")
            return
        if path == "/crash":
            raise RuntimeError("the app broke")
        if path == "/crash-after":
            await self._answer(send, 200, b"answered")
            raise RuntimeError("the app broke after its answer")
        if path == "/badheader":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"x-evil", b"a\r\nset-cookie: x=1")]})
            return
        if path == "/wait-disconnect":
            await self._until_disconnect(receive)
            return
        try:
            body = await self._body(receive)
        except BodyTimeoutError as exc:
            await self._answer(send, 408, str(exc).encode())
            return
        text = f"{scope['method']} {path}?{scope['query_string'].decode()} len={len(body)}"
        await self._answer(send, 200, text.encode())

    async def _body(self, receive: Any) -> bytes:
        parts = []
        while True:
            message = await receive()
            self.messages.append(message)
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(parts)

    async def _until_disconnect(self, receive: Any) -> None:
        while True:
            message = await receive()
            self.messages.append(message)
            if message["type"] == "http.disconnect":
                self.finished.set()
                return

    async def _stream(self, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(64):
            await send({"type": "http.response.body", "body": b"x" * 2**20, "more_body": True})
            self.sent_parts += 1
        await send({"type": "http.response.body", "body": b""})
        self.finished.set()

    @staticmethod
    async def _answer(send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture()
def app() -> EchoApp:
    return EchoApp()


@pytest.fixture()
def port(app: EchoApp) -> Iterator[int]:
    """The app served on a free port by a loop in a thread."""
    import uvloop

    loop = uvloop.new_event_loop()
    shared = Shared(app, LIMITS, server=("127.0.0.1", 0))
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        server = await loop.create_server(lambda: Connection(shared), "127.0.0.1", 0)
        shared.start()
        box["port"] = server.sockets[0].getsockname()[1]
        box["server"] = server
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), loop).result(5)
    started.wait(5)
    yield box["port"]

    async def stop() -> None:
        box["server"].close()
        shared.stop()
        shared.abort()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


class Client:
    """A raw HTTP/1.1 client socket that keeps what it read past one response."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        if self.buffer:
            out, self.buffer = self.buffer[:n], self.buffer[n:]
            return out
        return self.sock.recv(n)


def connect(port: int) -> Client:
    return Client(port)


def read_response(client: Client, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length bodies only); what follows it stays in the client."""
    data = client.buffer
    client.buffer = b""
    while b"\r\n\r\n" not in data:
        chunk = client.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = 0 if head_only else int(headers.get("content-length", 0))
    while len(rest) < length:
        rest += client.sock.recv(65536)
    client.buffer = rest[length:]
    return status, headers, rest[:length]


def closed(client: Client, within_s: float = 3.0) -> bool:
    """Whether the server closes the connection within ``within_s`` (nothing more to read)."""
    client.sock.settimeout(within_s)
    try:
        return not client.buffer and not client.sock.recv(65536)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_keep_alive_answers_several_requests_on_one_connection(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for i in range(3):
        conn.request("POST", f"/echo?i={i}", body=b"abc")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, f"POST /echo?i={i} len=3".encode())
        assert r.getheader("date") and r.getheader("server") == "modelyard"
        assert r.getheader("connection") is None
    conn.close()


def test_connection_close_is_honoured(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers["connection"] == "close"
        assert closed(sock)


def test_http_1_0_closes_unless_asked_to_keep_alive(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /a HTTP/1.0\r\n\r\n")
        status, headers, body = read_response(sock)
        assert (status, body) == (200, b"GET /a? len=0") and headers["connection"] == "close"
        assert closed(sock)
    with connect(port) as sock:
        sock.sendall(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert headers["connection"] == "keep-alive"
        sock.sendall(b"GET /b HTTP/1.0\r\n\r\n")
        assert read_response(sock)[2] == b"GET /b? len=0"


def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /slow?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /b?n=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                     b"GET /c?n=3 HTTP/1.1\r\nHost: x\r\n\r\n")
        bodies = [read_response(sock)[2] for _ in range(3)]
        assert bodies == [b"GET /slow?n=1 len=0", b"POST /b?n=2 len=2", b"GET /c?n=3 len=0"]


def test_a_chunked_body_reaches_the_app_whole(port: int, app: EchoApp) -> None:
    with connect(port) as sock:
        sock.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")
        time.sleep(0.05)
        sock.sendall(b"6\r\n world\r\n0\r\n\r\n")
        assert read_response(sock)[2] == b"POST /c? len=11"


def test_a_body_that_arrived_is_one_message(port: int, app: EchoApp) -> None:
    with connect(port) as sock:
        sock.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        assert read_response(sock)[2] == b"POST /c? len=5"
    assert app.messages == [{"type": "http.request", "body": b"hello", "more_body": False}]


def test_expect_100_continue_is_answered_when_the_app_reads(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        status, headers, body = read_response(sock)
        assert (status, body) == (200, b"POST /c? len=4") and "connection" not in headers


def test_an_answer_before_the_expected_body_sends_no_100_and_closes(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 413 and headers["connection"] == "close"
        assert closed(sock)


def test_an_answer_before_the_body_ends_skips_the_rest_and_keeps_the_connection(
        port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        assert read_response(sock)[0] == 413
        sock.sendall(b"defghij" + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[2] == b"GET /next? len=0"


@pytest.mark.parametrize("request_bytes", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"\x00\x01\x02\r\n\r\n",
])
def test_a_malformed_request_gets_400_and_the_server_goes_on(port: int,
                                                             request_bytes: bytes) -> None:
    with connect(port) as sock:
        sock.sendall(request_bytes)
        status, headers, body = read_response(sock)
        assert status == 400 and headers["connection"] == "close"
        assert b"not valid HTTP" in body
        assert closed(sock)
    with connect(port) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_a_malformed_request_after_a_good_one_is_answered_in_turn(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
        status, _, body = read_response(sock)
        assert (status, body) == (200, b"GET /slow? len=0")
        assert read_response(sock)[0] == 400


@pytest.mark.parametrize(("head", "status"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(25)) + b"\r\n", 431),
    (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
])
def test_a_head_over_the_limits_is_refused(port: int, head: bytes, status: int) -> None:
    with connect(port) as sock:
        sock.sendall(head)
        assert read_response(sock)[0] == status
        assert closed(sock)


def test_a_head_that_grows_past_the_limit_in_pieces_is_refused(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Big: ")
        for _ in range(6):
            time.sleep(0.01)
            try:
                sock.sendall(b"a" * 1500)
            except OSError:
                break
        assert read_response(sock)[0] == 431


def test_a_stalled_head_and_an_idle_connection_are_closed(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        started = time.monotonic()
        assert closed(sock)
        assert 0.3 < time.monotonic() - started < 2.0
    with connect(port) as sock:  # a connection that never sends anything
        assert closed(sock)
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response(sock)
        started = time.monotonic()
        assert closed(sock)  # keep-alive idle timeout
        assert 0.6 < time.monotonic() - started < 2.5


def test_a_body_that_stalls_raises_in_receive(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
        started = time.monotonic()
        status, _, body = read_response(sock)
        assert status == 408 and b"stopped arriving" in body
        assert 0.3 < time.monotonic() - started < 2.5


def test_a_body_that_keeps_arriving_slowly_is_read(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for part in (b"01", b"23", b"45", b"67"):  # each pause shorter than the timeout
            time.sleep(0.25)
            sock.sendall(part)
        assert read_response(sock)[2] == b"POST /c? len=8"


def test_a_client_that_leaves_mid_body_is_a_disconnect(port: int, app: EchoApp) -> None:
    with connect(port) as sock:
        sock.sendall(b"POST /wait-disconnect HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                     b"\r\n0123456789")
        time.sleep(0.1)
    assert app.finished.wait(3)
    assert app.messages[-1] == {"type": "http.disconnect"}
    assert app.messages[0]["body"] == b"0123456789" and app.messages[0]["more_body"]


def test_head_answers_without_a_body(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_response(sock, head_only=True)
        assert status == 200 and headers["content-length"] == str(len(b"HEAD /h? len=0"))
        assert read_response(sock)[2] == b"GET /g? len=0"


def test_a_slow_reader_pauses_a_streaming_response(port: int, app: EchoApp) -> None:
    with connect(port) as sock:
        sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        assert app.sent_parts < 32, "the app must wait while the client reads nothing"
        got = 0
        sock.sock.settimeout(5)
        while not app.finished.is_set() or got < 64 * 2**20:
            chunk = sock.recv(2**20)
            if not chunk:
                break
            got += len(chunk)
            if got >= 64 * 2**20:  # the chunked framing adds a few bytes
                break
        assert app.finished.wait(5) and app.sent_parts == 64


def test_an_app_that_fails_answers_500_and_the_server_goes_on(port: int) -> None:
    for path in ("/crash", "/badheader"):
        with connect(port) as sock:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            status, headers, _ = read_response(sock)
            assert status == 500 and headers["connection"] == "close"
    with connect(port) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_an_app_that_fails_after_its_answer_keeps_the_connection(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /crash-after HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[2] == b"answered"
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[2] == b"GET /ok? len=0"


def test_an_upgrade_request_is_answered_as_http_and_closed(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers["connection"] == "close"
        assert closed(sock)


def test_a_chunked_response_when_the_app_gives_no_length(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/stream")
    r = conn.getresponse()
    assert r.getheader("transfer-encoding") == "chunked"
    assert len(r.read()) == 64 * 2**20
    conn.close()


_SLOW_SERVER = """
import asyncio, sys
from modelyard.serving.httpserver import bind, run
state = {"draining": False}
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.shutdown":
                print("app shutdown ran", flush=True)
                await asyncio.sleep(float(sys.argv[3]))  # a shutdown that takes this long
            await send({"type": m["type"] + ".complete"})
            if m["type"] == "lifespan.shutdown":
                return
    if scope["path"] == "/readyz":  # as modelyard's app: 503 from the drain on
        status, body = (503, b"drain") if state["draining"] else (200, b"ready")
    else:
        await asyncio.sleep(float(scope["query_string"] or 0))
        status, body = 200, b"done"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
sock = bind("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
raise SystemExit(run(app, sock, grace_s=float(sys.argv[1]), drain_s=float(sys.argv[2]),
                     on_drain=lambda: state.update(draining=True)))
"""


@contextlib.contextmanager
def slow_server(grace_s: float, drain_s: float = 0.0, shutdown_s: float = 0.0
                ) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A server process whose app waits ``?seconds`` before answering, whose ``/readyz``
    says 503 once draining and whose shutdown takes ``shutdown_s``; its port."""
    with subprocess.Popen([sys.executable, "-c", _SLOW_SERVER, str(grace_s), str(drain_s),
                           str(shutdown_s)],
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            _wait_listening(port)
            yield proc, port
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_graceful_shutdown_finishes_the_request_in_flight(sig: signal.Signals) -> None:
    with slow_server(10) as (proc, port):
        with connect(port) as idle, connect(port) as busy:
            idle.sendall(b"GET /?0 HTTP/1.1\r\nHost: x\r\n\r\n")
            read_response(idle)  # an idle keep-alive connection is closed at once
            busy.sendall(b"GET /?1 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
            proc.send_signal(sig)
            assert closed(idle, 1.0)
            status, headers, body = read_response(busy)
            assert (status, body, headers["connection"]) == (200, b"done", "close")
        assert proc.wait(10) == 0
        assert "app shutdown ran" in proc.stdout.read()  # type: ignore[union-attr]
        with pytest.raises(OSError):
            connect(port)


def test_the_grace_period_ends_a_request_that_takes_too_long() -> None:
    with slow_server(0.5) as (proc, port), connect(port) as busy:
        busy.sendall(b"GET /?30 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0 and time.monotonic() - started < 5
        assert closed(busy)
        assert "app shutdown ran" in proc.stdout.read()  # type: ignore[union-attr]


def get(client: Client, path: str) -> tuple[int, dict[str, str], bytes]:
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return read_response(client)


def test_a_drain_says_not_ready_and_keeps_answering_then_closes() -> None:
    with slow_server(10, drain_s=1.5) as (proc, port), connect(port) as kept:
        assert get(kept, "/readyz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        # draining: readiness false at once, yet new and kept connections are answered and
        # kept alive, so a load balancer moves away before anything is refused
        with connect(port) as fresh:
            status, headers, body = get(fresh, "/readyz")
            assert (status, body, "connection" in headers) == (503, b"drain", False)
            assert get(fresh, "/?0")[0] == 200
        status, headers, _ = get(kept, "/?0")
        assert status == 200 and "connection" not in headers
        assert proc.poll() is None
        # after the drain: the idle kept connection is closed, new ones are refused
        assert closed(kept, 3.0)
        with pytest.raises(OSError):
            connect(port)
        assert proc.wait(10) == 0
        assert "app shutdown ran" in proc.stdout.read()  # type: ignore[union-attr]


def test_a_request_running_past_the_drain_finishes_with_connection_close() -> None:
    with slow_server(10, drain_s=0.5) as (proc, port), connect(port) as busy:
        busy.sendall(b"GET /?1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        status, headers, body = read_response(busy)
        assert (status, body, headers["connection"]) == (200, b"done", "close")
        assert proc.wait(10) == 0


def test_the_grace_period_bounds_the_shutdown_after_the_drain() -> None:
    with slow_server(1.0, drain_s=0.5) as (proc, port), connect(port) as busy:
        busy.sendall(b"GET /?30 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        # the drain, then the grace less the quarter kept for the app's shutdown, no more
        assert 1.2 < time.monotonic() - started < 4
        assert closed(busy)
        assert "app shutdown ran" in proc.stdout.read()  # type: ignore[union-attr]


def test_an_app_shutdown_that_hangs_is_cancelled_at_the_end_of_the_grace() -> None:
    with slow_server(1.0, shutdown_s=60) as (proc, _):
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0 and time.monotonic() - started < 3
        assert "app shutdown ran" in proc.stdout.read()  # type: ignore[union-attr]


def test_a_second_ctrl_c_cuts_the_drain_short() -> None:
    with slow_server(10, drain_s=30) as (proc, _):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0 and time.monotonic() - started < 3


def _wait_listening(port: int) -> None:
    """Until something accepts on ``port``."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the server did not listen")
