"""Serve a project's CPU models from AWS Lambda: Mangum over the app ``modelyard serve`` runs.

Point the function at :func:`handler` (a container image's ``CMD
["modelyard.deploy.aws_lambda.handler"]``). The first invocation in a container builds the
server's own ASGI app (:func:`~modelyard.serving.app.create_app`), starts it and loads every
production version; later invocations in that container reuse it. API Gateway (HTTP and REST
APIs), function URLs and ALB events all reach the same routes: ``/v1``, ``/v2``, ``/healthz``...

Configuration is the server's environment, read once at that cold start: ``MODELYARD_DB`` (the
shared registry), ``MODELYARD_ARTIFACTS`` (the store, with the AWS variables it needs),
``MODELYARD_TOKEN``, ``MODELYARD_PREDICTION_LOG``, and which models the function serves:
``MODELYARD_POOL`` and ``MODELYARD_MODELS`` (comma lists, as ``serve --pool`` and ``--models``
take them; unset: every model). ``MODELYARD_HOME`` defaults to ``/tmp/modelyard``, the one
folder Lambda lets a function write. A function is reachable beyond loopback, so it enforces
API keys as ``serve --host 0.0.0.0`` does (docs/security.md); ``MODELYARD_INSECURE=1`` lifts
that until a key exists, as ``--insecure`` does.

Why not Mangum's own lifespan handling: it runs the app's startup and shutdown around every
invocation, which would load every model for every request. Here Mangum runs with lifespan off
over an app started once, on an event loop the container keeps; the app's background loops (the
alias watcher that hot-swaps a promoted version, rollouts) run while invocations run, which is
when Lambda lets a container run at all. Logged predictions are written before each invocation
returns, because Lambda may freeze a container after it and reap it without notice.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any, cast

from modelyard.config import Settings
from modelyard.errors import FrameworkMissingError
from modelyard.serving.app import App, create_app
from modelyard.serving.options import ServeOptions
from modelyard.serving.pools import split_names

#: where the registry's local files (unpacked artifacts) go when ``MODELYARD_HOME`` is unset:
#: the only writable folder in a Lambda container.
LAMBDA_HOME = "/tmp/modelyard"
#: how long a cold start may spend loading the production versions before it fails.
READY_TIMEOUT_S = 300.0


class LambdaServer:
    """One started server per container, answering Lambda events through Mangum.

    ``LambdaServer(settings, options)`` starts the app and waits until its production versions
    are loaded; call it with ``(event, context)``; :meth:`close` stops it (tests).
    """

    def __init__(self, settings: Settings, options: ServeOptions | None = None, *,
                 ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        try:
            from mangum import Mangum
        except ImportError:
            raise FrameworkMissingError("the AWS Lambda entry point needs mangum: "
                                        "pip install 'modelyard[lambda]'") from None
        self.loop = asyncio.new_event_loop()
        # Mangum runs each invocation on asyncio's current loop: the one the app started on
        asyncio.set_event_loop(self.loop)
        self.app: App = create_app(options=options or ServeOptions(), settings=settings)
        try:
            self.loop.run_until_complete(self.app.startup())
            self.loop.run_until_complete(self.app.wait_ready(ready_timeout_s))
        except BaseException:
            self.close()
            raise
        # the app is typed for dict scopes, Mangum's ASGI protocol for any mutable mapping;
        # Mangum passes dicts
        self._adapter = Mangum(cast(Any, self.app), lifespan="off")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LambdaServer:
        """The server the function's environment describes (``MODELYARD_*``, ``AWS_*``)."""
        return cls(lambda_settings(env), lambda_options(env))

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """Answer one Lambda event; the prediction log is written before this returns."""
        try:
            return dict(self._adapter(event, context))
        finally:
            log = self.app.predlog
            if log is not None and log.pending:
                log.flush()

    def close(self) -> None:
        """Stop the app (drain its runners, write the prediction log) and its loop."""
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.app.shutdown())
            self.loop.close()
        asyncio.set_event_loop(None)


def lambda_settings(env: Mapping[str, str]) -> Settings:
    """The server's settings from the environment, its home under ``/tmp`` unless one is set."""
    return Settings.from_env(home=env.get("MODELYARD_HOME") or LAMBDA_HOME)


def lambda_options(env: Mapping[str, str]) -> ServeOptions:
    """What the function serves: ``MODELYARD_POOL`` and ``MODELYARD_MODELS``, comma lists;
    auth enforced (an exposed server) unless ``MODELYARD_INSECURE`` is ``1`` or ``true``."""
    return ServeOptions(pools=split_names([env.get("MODELYARD_POOL", "")]),
                        models=split_names([env.get("MODELYARD_MODELS", "")]), exposed=True,
                        insecure=env.get("MODELYARD_INSECURE", "").lower() in ("1", "true"))


_server: LambdaServer | None = None


def server() -> LambdaServer:
    """This container's server, started from the environment on the first call."""
    global _server
    if _server is None:
        _server = LambdaServer.from_env(os.environ)
    return _server


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda function: set the image's ``CMD`` (or the handler) to this."""
    return server()(event, context)


def close() -> None:
    """Stop this container's server, if one was started (tests and embedding code)."""
    global _server
    if _server is not None:
        _server.close()
        _server = None


__all__ = ["LAMBDA_HOME", "READY_TIMEOUT_S", "LambdaServer", "close", "handler",
           "lambda_options", "lambda_settings", "server"]
