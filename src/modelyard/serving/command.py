"""The ``modelyard serve`` command (a click command the CLI adds to its group)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from modelyard.devices import compute_threads
from modelyard.errors import ModelyardError

if TYPE_CHECKING:
    from modelyard.config import Settings
    from modelyard.serving.options import ServeOptions


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              envvar="MODELYARD_PORT", help="Port to listen on (env MODELYARD_PORT; an "
              "image's health check asks the same port).")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Evict least recently used versions when the loaded ones cost more than "
                   "this together, e.g. 4GiB; each is charged the memory its load measured "
                   "(default: no limit).")
@click.option("--idle-unload", default=None, metavar="DURATION",
              help="Unload a version no request used for this long, e.g. 10m; it loads again "
                   "on its next request (default: keep it loaded).")
@click.option("--preload/--no-preload", default=True, show_default=True,
              help="Load every production version before reporting ready.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes sharing the port (each loads its own models; one that "
                   "dies is started again).")
@click.option("--max-body", default="16MiB", show_default=True, metavar="SIZE",
              help="Largest request body; bigger ones get 413.")
@click.option("--max-upload", default="16GiB", show_default=True, metavar="SIZE",
              help="Largest version upload (training through this server, streamed to disk); "
                   "bigger ones get 413.")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True,
              type=click.FloatRange(0, 86400, min_open=True),
              help="Seconds before a queued request gets 504.")
@click.option("--body-timeout", "body_timeout_s", default=5.0, show_default=True,
              type=click.FloatRange(0, 86400, min_open=True),
              help="Seconds a request body may stall mid-way before 408 and a closed "
                   "connection.")
@click.option("--grpc-port", default=None, type=click.IntRange(1, 65535),
              help="Also serve OIP v2 over gRPC on this port (needs modelyard[grpc]).")
@click.option("--alias", default="production", show_default=True,
              help="The alias /v1/models/{name}/predict serves.")
@click.option("--prediction-log", default=None, metavar="WHERE",
              help="Where predictions are logged for monitoring: db (the registry database), "
                   "parquet:FOLDER or off (default: $MODELYARD_PREDICTION_LOG, else db).")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              envvar="MODELYARD_CORS_ORIGINS",
              help="A web origin (https://dashboard.example.com) whose pages may call this "
                   "server from a browser; repeat for more (default: $MODELYARD_CORS_ORIGINS, "
                   "comma-separated, else none: CORS off).")
@click.option("--model-config", "model_config", default=None, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="A YAML file of serving settings per model (batching, device, isolation, "
                   "sample_rate), over what each version registered; see the README's "
                   "'Serving' section.")
@click.option("--pool", "pools", multiple=True, metavar="NAME",
              help="Serve only the models of this pool (a model's serving.pool, else gpu or cpu "
                   "by its device); repeat or comma-separate for more. Requests for other "
                   "models get 404 naming the pool that serves them (default: every pool).")
@click.option("--models", "models", multiple=True, metavar="A,B",
              help="Serve only these models (comma-separated or repeated; with --pool: those "
                   "of them in the pool).")
@click.option("--drain", "drain_s", default=5.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(0, 3600),
              help="Seconds to keep answering after SIGTERM while /readyz says 503 "
                   "(draining), so load balancers stop sending here before the server stops "
                   "accepting.")
@click.option("--grace", "grace_s", default=30.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(0, 3600, min_open=True),
              help="Seconds the rest of the shutdown may take after the drain: requests in "
                   "flight finish and the prediction log flushes; past it what still runs is "
                   "cancelled and the server exits. On Kubernetes set "
                   "terminationGracePeriodSeconds to at least drain + grace.")
@click.option("--tls-cert", default=None, metavar="FILE", envvar="MODELYARD_TLS_CERT",
              help="Serve HTTPS (and gRPC over TLS) with this PEM certificate chain; needs "
                   "--tls-key (env MODELYARD_TLS_CERT).")
@click.option("--tls-key", default=None, metavar="FILE", envvar="MODELYARD_TLS_KEY",
              help="The certificate's PEM private key (env MODELYARD_TLS_KEY).")
@click.option("--tls-client-ca", default=None, metavar="FILE", envvar="MODELYARD_TLS_CLIENT_CA",
              help="Require a client certificate signed by this PEM CA on every connection "
                   "(mutual TLS; env MODELYARD_TLS_CLIENT_CA).")
@click.option("--oidc", default=None, metavar="FILE",
              help="Accept bearer JWTs of an OpenID Connect issuer: a YAML file naming the "
                   "issuer, audience, JWKS and how claims map to roles (docs/security.md).")
@click.option("--public-metrics", is_flag=True,
              help="Let /metrics answer without a key when auth is enforced (for a "
                   "Prometheus that scrapes without credentials).")
@click.option("--insecure", is_flag=True,
              help="Listening beyond loopback, do not enforce auth until an API key exists "
                   "(a warning is logged). Never in production.")
@click.option("--console/--no-console", "console", default=True, show_default=True,
              help="Serve the web console at /ui (its pages need a signed-in key with the "
                   "read role wherever the API needs one).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, max_memory: str | None,
          idle_unload: str | None, preload: bool, workers: int, max_body: str,
          max_upload: str,
          timeout_s: float, body_timeout_s: float,
          grpc_port: int | None, alias: str, prediction_log: str | None,
          cors_origins: tuple[str, ...], model_config: str | None, pools: tuple[str, ...],
          models: tuple[str, ...], drain_s: float, grace_s: float, tls_cert: str | None,
          tls_key: str | None, tls_client_ca: str | None, oidc: str | None,
          public_metrics: bool, insecure: bool, console: bool, log_level: str) -> None:
    """Serve every model with a production alias over REST and OIP v2 until stopped.

    Native REST: POST /v1/models/NAME/predict. Open Inference Protocol v2: /v2/... (REST, and
    gRPC with --grpc-port). Feedback: POST /v1/models/NAME/feedback. Also the admin and
    monitoring API under /api/v1, /metrics, /healthz, /readyz, OpenAPI at /docs and the web
    console at /ui.

    Access: once an API key exists (modelyard auth create-key), or when listening beyond
    loopback, every call but health and documents needs 'Authorization: Bearer <key>' whose
    role allows it (docs/security.md). Mutations need a JSON body and are refused from other
    sites' pages.

    Stopping: on SIGTERM /readyz turns 503 at once and the server keeps answering for --drain
    seconds, then stops accepting, finishes the requests in flight, flushes the prediction
    log and exits within --grace seconds more (see deploy/lifecycle.md).
    """
    from modelyard.config import parse_duration
    from modelyard.serving import overrides
    from modelyard.serving.options import ServeOptions, parse_size
    from modelyard.serving.pools import split_names
    from modelyard.serving.server import serve as run

    try:
        tuned = overrides.load(model_config) if model_config else {}
        options = ServeOptions(max_memory=parse_size(max_memory), preload=preload, alias=alias,
                               idle_unload_s=None if idle_unload is None else
                               parse_duration(idle_unload),
                               max_body_bytes=parse_size(max_body) or 1,
                               max_upload_bytes=parse_size(max_upload) or 1,
                               request_timeout_s=timeout_s, body_timeout_s=body_timeout_s,
                               prediction_log=prediction_log,
                               grpc_address=f"{host}:{grpc_port}" if grpc_port else None,
                               cors_origins=tuple(o for value in cors_origins
                                                  for o in value.replace(",", " ").split()),
                               serving_overrides=tuned, pools=split_names(pools),
                               models=split_names(models), drain_s=drain_s, grace_s=grace_s,
                               tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
                               oidc=oidc, insecure=insecure, public_metrics=public_metrics)
        if not console:
            options = replace(options, mounts=())
        if oidc:
            from modelyard.serving.oidc import OIDCConfig

            OIDCConfig.load(oidc)  # a malformed file is a usage error here, not at startup
    except ModelyardError as exc:
        raise click.UsageError(str(exc)) from None
    _check_tls(options)
    # Under the modelyard CLI the global --home/--db/--artifacts options name the registry.
    settings = ctx.obj.settings() if hasattr(ctx.obj, "settings") else None
    _check_registry(settings)
    _fit_threads_to_quota(os.environ)
    run(host, port, settings=settings, options=options, workers=workers, log_level=log_level)


def _check_tls(options: ServeOptions) -> None:
    """Read the TLS files once before anything starts: a missing or unreadable one is the
    CLI's one-line error (ConfigError, exit 2), not a failed worker."""
    from modelyard.serving.tls import server_context

    if options.tls is not None:
        server_context(options.tls)


def _check_registry(settings: Settings | None) -> None:
    """Open the registry and ask its artifact store once before the server starts: an
    unreachable database or store, refused credentials or a bad URL are then the CLI's
    one-line error (StorageError, exit 10), not a failed server startup."""
    from modelyard.registry import Registry

    with Registry.open(settings) as registry:
        registry.check_store()


def _fit_threads_to_quota(env: MutableMapping[str, str],
                          cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> None:
    """Size the frameworks' thread pools to the container's CPU quota before any of them loads
    (``--workers`` processes and device workers inherit it); a count already set wins."""
    try:
        quota_text: str | None = cpu_max.read_text()
    except OSError:  # no cgroup v2 here: nothing limits the CPUs
        quota_text = None
    threads = compute_threads(len(os.sched_getaffinity(0)), quota_text)
    if threads is None:
        return
    for variable in THREAD_VARIABLES:
        env.setdefault(variable, str(threads))
    # logging is set up by the server later: this one line goes out as it is
    click.echo(f"a CPU quota of {threads}: the frameworks' thread pools use "
               + ", ".join(f"{v}={env[v]}" for v in THREAD_VARIABLES), err=True)


#: what OpenMP, the BLAS libraries and PyTorch (the first) and TensorFlow (the second) take
#: their thread counts from.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")

__all__ = ["serve"]
