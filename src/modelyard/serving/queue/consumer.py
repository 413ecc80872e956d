"""A queue consumer process: one data plane, the queue codec, one broker transport.

:class:`Consumer` builds what ``modelyard serve`` builds around its data plane -- the catalog
(model cache, LRU under ``--max-memory``, runners and their batchers), the metrics and the
prediction log -- and feeds it from a broker instead of HTTP: models load on demand when a
message names them, so one pool of consumers serves many models. :func:`consume` runs one until
SIGTERM or SIGINT, then stops taking messages, lets those in flight be answered and
acknowledged, drains the runners, flushes the prediction log and returns.

``metrics_port``: also answer ``GET /metrics`` (Prometheus, the same families as the server's,
protocol label ``queue``) and ``GET /healthz`` on 127.0.0.1 or the host given.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Any

from modelyard.errors import ConfigError, ModelyardError, UnavailableError
from modelyard.serving.catalog import Catalog
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.metrics import CONTENT_TYPE, ServerMetrics
from modelyard.serving.options import ServeOptions
from modelyard.serving.queue.codec import QueueCodec
from modelyard.serving.queue.transport import Endpoint, Transport, check_url, transport_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumeSettings:
    """What ``modelyard consume`` reads and where its answers go; checked when made.

    ``output``: answers to messages without a reply-to (None: such messages are refused);
    ``dead_letter``: refused messages with their error (default ``QUEUE.dead-letter``);
    ``dedupe_window_s``: a message id answered this recently is not answered again (0: off);
    ``max_attempts``: deliveries of a message the server could not answer (503, 504) before it
    is dead-lettered, where the broker counts deliveries.
    """

    endpoint: Endpoint
    output: str | None = None
    dead_letter: str | None = None
    dedupe_window_s: float = 300.0
    max_attempts: int = 5
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        check_url(self.endpoint.url)
        if not self.endpoint.queue:
            raise ConfigError("--queue must name the queue (stream, subject, topic) to consume")
        if not 1 <= self.endpoint.prefetch <= 100_000:
            raise ConfigError("--prefetch must be 1 to 100000 messages")
        if not self.dedupe_window_s >= 0:
            raise ConfigError("--dedupe-window must be 0 (off) or more seconds")
        if not self.endpoint.redeliver_after_s > 0:
            raise ConfigError("--redeliver-after must be more than 0 seconds")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.dead_letter_queue in (self.endpoint.queue, self.output):
            raise ConfigError("--dead-letter must differ from --queue and --output")
        if self.output == self.endpoint.queue:
            raise ConfigError("--output must differ from --queue: answers would be read again")

    @property
    def dead_letter_queue(self) -> str:
        """Where refused messages go."""
        return self.dead_letter or f"{self.endpoint.queue}.dead-letter"


class Consumer:
    """Answer the messages of one queue with the models of one registry until stopped.

    ``registry``: an open registry (tests); else ``registry_settings`` names the one to open.
    ``transport``: the broker connection (default: the one ``settings.endpoint``'s URL names).
    """

    def __init__(self, settings: ConsumeSettings, options: ServeOptions | None = None, *,
                 registry: Any = None, registry_settings: Any = None,
                 transport: Transport | None = None) -> None:
        self.settings = settings
        self.options = options or ServeOptions(preload=False)
        catalog = Catalog(registry, self.options, ServerMetrics(self.options.metrics_dir))
        self.plane = DataPlane(catalog, settings=registry_settings,
                               owns_registry=registry is None)
        self.transport = transport or transport_for(settings.endpoint)
        self.codec = QueueCodec(self.plane, self.transport.publish, output=settings.output,
                                dead_letter=settings.dead_letter_queue,
                                dedupe_window_s=settings.dedupe_window_s,
                                max_attempts=settings.max_attempts)
        self._metrics: asyncio.Server | None = None

    async def start(self) -> None:
        """Start the data plane, then the metrics endpoint, then consuming."""
        await self.plane.start()
        if self.settings.metrics_port is not None:
            self._metrics = await asyncio.start_server(self._answer_scrape,
                                                       self.settings.metrics_host,
                                                       self.settings.metrics_port)
        outputs = tuple(q for q in (self.settings.output, self.settings.dead_letter_queue) if q)
        endpoint = self.settings.endpoint
        try:
            await self.transport.start(self.codec.handle, outputs)
        except ModelyardError:
            raise
        except Exception as exc:  # the broker libraries' own errors: one line, exit 15
            raise UnavailableError(
                f"the broker at {endpoint.address} cannot be used: {type(exc).__name__}: "
                f"{exc}; check the URL and that the broker runs") from None
        log.info("consuming %s from %s as %s of group %s (prefetch %d)", endpoint.queue,
                 endpoint.address, endpoint.name, endpoint.group, endpoint.prefetch)

    async def stop(self) -> None:
        """Stop taking messages; those in flight are answered and acknowledged; then drain
        the runners and flush the prediction log."""
        try:
            await self.transport.stop()
        except Exception as exc:  # a connection that never opened, or broke: nothing to settle
            log.warning("the broker connection did not close cleanly: %s", exc)
        finally:
            if self._metrics is not None:
                self._metrics.close()
            await self.plane.stop()
        log.info("stopped: %s", ", ".join(f"{k} {v}" for k, v in self.codec.counts.items()))

    async def _answer_scrape(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            while (await reader.readline()).strip():
                pass
            path = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
            if path == b"/metrics":
                status, kind, body = b"200 OK", CONTENT_TYPE.encode(), self.plane.metrics.render()
            elif path == b"/healthz":
                status, kind, body = b"200 OK", b"application/json", b'{"status":"ok"}'
            else:
                status, kind, body = b"404 Not Found", b"text/plain", b"not found\n"
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: " + kind
                         + b"\r\ncontent-length: " + str(len(body)).encode()
                         + b"\r\nconnection: close\r\n\r\n" + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def run(consumer: Consumer, stop: asyncio.Event | None = None) -> None:
    """Run ``consumer`` until ``stop`` is set, or SIGTERM or SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await consumer.start()
        await stop.wait()
        log.info("stopping: finishing the messages in flight")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await consumer.stop()


def consume(settings: ConsumeSettings, options: ServeOptions, *, registry_settings: Any = None,
            log_level: str = "info") -> None:
    """``modelyard consume``: run a consumer in this process until SIGTERM or SIGINT."""
    from modelyard.serving.httpserver import configure_logging

    configure_logging(log_level)
    consumer = Consumer(settings, options, registry_settings=registry_settings)
    try:
        import uvloop
    except ImportError:  # not built for this platform: the standard loop consumes too
        asyncio.run(run(consumer))
    else:  # as the server runs: less of the loop's own CPU a message
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run(consumer))


__all__ = ["ConsumeSettings", "Consumer", "consume", "run"]
