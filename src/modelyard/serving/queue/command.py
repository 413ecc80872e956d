"""The ``modelyard consume`` command (a click command the CLI adds to its group)."""

from __future__ import annotations

import click

from modelyard.errors import ModelyardError


@click.command("consume")
@click.argument("url", metavar="URL")
@click.option("--queue", "-q", required=True, metavar="NAME",
              help="The queue (RabbitMQ), stream (Redis), subject (NATS) or topic (Kafka) to "
                   "read requests from.")
@click.option("--output", "-o", default=None, metavar="NAME",
              help="Where answers go for messages without a reply-to (default: none; such "
                   "messages are dead-lettered).")
@click.option("--dead-letter", default=None, metavar="NAME",
              help="Where refused messages go with their error  [default: QUEUE.dead-letter]")
@click.option("--group", default="modelyard", show_default=True, metavar="NAME",
              help="The consumer group: consumers of one group share the queue, each message "
                   "answered by one of them.")
@click.option("--prefetch", default=64, show_default=True, type=click.IntRange(1, 100_000),
              help="Messages held unacknowledged at once (back-pressure); those in flight "
                   "together are batched as HTTP requests are.")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Evict least recently used versions when the loaded ones cost more than "
                   "this together, e.g. 4GiB (default: no limit).")
@click.option("--idle-unload", default=None, metavar="DURATION",
              help="Unload a version no message used for this long, e.g. 10m.")
@click.option("--preload/--no-preload", default=False, show_default=True,
              help="Load every served version before consuming (default: each loads when a "
                   "message first names it).")
@click.option("--dedupe-window", "dedupe_window", default="5m", show_default=True,
              metavar="DURATION",
              help="A message id answered within this long is not answered again (0: off).")
@click.option("--redeliver-after", default="30s", show_default=True, metavar="DURATION",
              help="How long a message held by a consumer that died waits before another "
                   "takes it (Redis Streams, NATS; RabbitMQ and Kafka notice at once).")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True,
              type=click.FloatRange(0, 86400, min_open=True),
              help="Seconds a message may wait for its model before it is given back.")
@click.option("--alias", default="production", show_default=True,
              help="The alias a message naming no version or alias is answered by.")
@click.option("--prediction-log", default=None, metavar="WHERE",
              help="Where predictions are logged: db, parquet:FOLDER or off (default: "
                   "$MODELYARD_PREDICTION_LOG, else db).")
@click.option("--metrics-port", default=None, type=click.IntRange(1, 65535),
              help="Also answer GET /metrics (Prometheus) and /healthz on this port.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.pass_context
def consume(ctx: click.Context, url: str, queue: str, output: str | None,
            dead_letter: str | None, group: str, prefetch: int, max_memory: str | None,
            idle_unload: str | None, preload: bool, dedupe_window: str, redeliver_after: str,
            timeout_s: float, alias: str, prediction_log: str | None, metrics_port: int | None,
            log_level: str) -> None:
    """Answer prediction requests from a message queue until stopped.

    URL names the broker: amqp://user:pass@host:5672/ (RabbitMQ), redis://host:6379 (Redis
    Streams), nats://host:4222 (NATS JetStream) or kafka://host:9092. A message names its model
    (header or field 'model', optionally 'version' or 'alias') and carries the input as
    POST /v1/models/NAME/predict or OIP v2 infer takes it. The answer goes to the message's
    reply-to, else to --output, with its correlation id; a message that cannot be answered
    (bad JSON or input, unknown model) goes to --dead-letter with the error.

    Delivery is at least once: a message is acknowledged only after its answer is published.
    On SIGTERM it stops taking messages, answers those in flight and exits.

    \b
    modelyard consume amqp://guest:guest@localhost:5672/ --queue predict --output answers
    """
    from modelyard.config import parse_duration
    from modelyard.serving.options import ServeOptions, parse_size
    from modelyard.serving.queue.consumer import ConsumeSettings
    from modelyard.serving.queue.consumer import consume as run
    from modelyard.serving.queue.transport import Endpoint

    try:
        endpoint = Endpoint(url, queue, group=group, prefetch=prefetch,
                            redeliver_after_s=parse_duration(redeliver_after))
        settings = ConsumeSettings(endpoint, output=output, dead_letter=dead_letter,
                                   dedupe_window_s=_window(dedupe_window),
                                   metrics_port=metrics_port)
        options = ServeOptions(max_memory=parse_size(max_memory), preload=preload, alias=alias,
                               idle_unload_s=None if idle_unload is None else
                               parse_duration(idle_unload), request_timeout_s=timeout_s,
                               prediction_log=prediction_log)
    except ModelyardError as exc:
        raise click.UsageError(str(exc)) from None
    registry_settings = ctx.obj.settings() if hasattr(ctx.obj, "settings") else None
    from modelyard.registry import Registry

    # an unreachable registry is the CLI's one-line error (exit 10), not a failed start
    with Registry.open(registry_settings) as registry:
        registry.check_store()
    run(settings, options, registry_settings=registry_settings, log_level=log_level)


def _window(text: str) -> float:
    """Seconds of the dedupe window; ``0`` or ``off`` turns it off."""
    from modelyard.config import parse_duration

    if text.strip().lower() in ("0", "0s", "off"):
        return 0.0
    return parse_duration(text)


__all__ = ["consume"]
