"""The container's HEALTHCHECK: ``python -m modelyard.deploy.healthcheck`` exits 0 when healthy.

It asks the server in the same container for ``/healthz`` on ``MODELYARD_PORT`` (the port
``modelyard serve`` listens on in an image), with the standard library only: an image needs no
curl. Liveness only; readiness (models loaded) is ``/readyz``, for a load balancer to ask.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def healthy(url: str, timeout_s: float = 4.0) -> bool:
    """Whether ``url`` answers 200 within ``timeout_s`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    """Check this container's server; 0 when healthy, 1 when not (Docker's convention)."""
    port = os.environ.get("MODELYARD_PORT", "8000")
    return 0 if healthy(f"http://127.0.0.1:{port}/healthz") else 1


if __name__ == "__main__":
    sys.exit(main())
