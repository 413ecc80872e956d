"""The container's HEALTHCHECK: ``python -m modelyard.deploy.healthcheck`` exits 0 when healthy.

It asks the server in the same container for ``/healthz`` on ``MODELYARD_PORT`` (the port
``modelyard serve`` listens on in an image), with the standard library only: an image needs no
curl. Liveness only; readiness (models loaded) is ``/readyz``, for a load balancer to ask.

With ``MODELYARD_TLS_CERT`` set (the server serves HTTPS) it asks over HTTPS without checking
the certificate (it is this container's own server, on 127.0.0.1, whatever name the certificate
carries). With ``MODELYARD_TLS_CLIENT_CA`` too it presents ``MODELYARD_TLS_HEALTHCHECK_CERT``
and ``..._KEY``: a client certificate that CA signed.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping


def healthy(url: str, timeout_s: float = 4.0, context: ssl.SSLContext | None = None) -> bool:
    """Whether ``url`` answers 200 within ``timeout_s`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def target(env: Mapping[str, str]) -> tuple[str, ssl.SSLContext | None]:
    """The URL to ask and, for a TLS server, the context to ask it with."""
    port = env.get("MODELYARD_PORT", "8000")
    if not env.get("MODELYARD_TLS_CERT"):
        return f"http://127.0.0.1:{port}/healthz", None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # our own server on loopback: liveness, not identity
    cert, key = env.get("MODELYARD_TLS_HEALTHCHECK_CERT"), env.get("MODELYARD_TLS_HEALTHCHECK_KEY")
    if env.get("MODELYARD_TLS_CLIENT_CA") and cert and key:
        context.load_cert_chain(cert, key)
    return f"https://127.0.0.1:{port}/healthz", context


def main() -> int:
    """Check this container's server; 0 when healthy, 1 when not (Docker's convention)."""
    try:
        url, context = target(os.environ)
    except (OSError, ssl.SSLError):  # an unreadable client certificate: not healthy
        return 1
    return 0 if healthy(url, context=context) else 1


if __name__ == "__main__":
    sys.exit(main())
