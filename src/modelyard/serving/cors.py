"""Cross-site requests: what a page on another site may make a visitor's browser do here.

A browser sends some POSTs to any server without asking it first: an HTML form, or ``fetch``
with a ``text/plain``, form-encoded or missing ``Content-Type``. On a server without a token
(or on a laptop, reached as ``localhost``) such a request from any web page could promote a
model or feed it labels. The dispatcher applies two rules to every mutating route
(:meth:`CrossSite.check_mutation`):

1. an ``Origin`` that is neither this server (the request's ``Host``) nor one of the configured
   CORS origins is refused with 403;
2. the body must be declared ``application/json`` (or ``application/*+json``), else 415. A
   browser cannot send that to another site without a preflight, and the preflight is not
   granted unless the origin is configured. The OIP repository's load/unload also accept a
   request without a ``Content-Type``, because ``tritonclient`` sends none (rule 1 still holds).

CORS is off unless origins are configured (``--cors-origin``): then responses to a listed
origin carry ``Access-Control-Allow-Origin`` and preflights (``OPTIONS``) from it are granted
for the path's methods. Preflights from anyone else get 204 with ``Allow`` and no CORS headers,
so their browsers refuse to send the request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from modelyard.errors import ConfigError, CrossSiteError, UnsupportedMediaTypeError
from modelyard.serving.http import Scope, Send, header

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: response headers a listed origin's scripts may read (besides the CORS-safelisted ones).
_EXPOSE = b"x-model-version, x-model-variant, x-request-id, retry-after, " \
          b"inference-header-content-length, www-authenticate, allow"
_TOKEN_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                         b"!#$%&'*+-.^_`|~, ")
#: how long a browser may cache a granted preflight.
PREFLIGHT_MAX_AGE_S = 600


def normalize_origin(text: str) -> str:
    """``scheme://host[:port]`` in lower case without a default port, or :class:`ConfigError`."""
    parts = urlsplit(text.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname or port == -1
            or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username
            or parts.password is not None):
        raise ConfigError(f"CORS origin {text!r} is not an origin; write it as "
                          "scheme://host[:port], e.g. https://dashboard.example.com")
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets, as browsers send it
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def same_origin(origin: bytes, host: bytes | None) -> bool:
    """Whether ``Origin`` names the server the request reached (its ``Host`` header)."""
    if host is None:
        return False
    try:
        mine = normalize_origin(origin.decode("latin-1"))
    except ConfigError:
        return False  # "null" (a sandboxed page, a file) or garbage: not this server
    scheme, _, netloc = mine.partition("://")
    claimed = host.decode("latin-1").strip().lower()
    default = f":{_DEFAULT_PORTS[scheme]}"
    return netloc == claimed.removesuffix(default)


def _is_json(content_type: bytes) -> bool:
    media = content_type.partition(b";")[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/")
                                            and media.endswith(b"+json"))


@dataclass(frozen=True)
class CrossSite:
    """The cross-site rules of one server; ``origins`` are the CORS origins (none: CORS off)."""

    origins: tuple[str, ...] = ()
    _listed: frozenset[bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        listed = frozenset(normalize_origin(o).encode() for o in self.origins)
        object.__setattr__(self, "_listed", listed)

    @property
    def enabled(self) -> bool:
        """Whether any origin may call this server from a browser (CORS is on)."""
        return bool(self._listed)

    def listed(self, origin: bytes) -> bool:
        """Whether ``origin`` is a configured CORS origin (browsers send origins normalised)."""
        return origin.lower() in self._listed

    def check_mutation(self, scope: Scope, *, json_optional: bool = False,
                       media: bytes | None = None) -> None:
        """Refuse a foreign ``Origin`` (403) and a body not declared JSON, or ``media`` where
        the route takes that instead (415)."""
        origin = header(scope, b"origin")
        if origin is not None and not self.listed(origin) and not same_origin(
                origin, header(scope, b"host")):
            shown = origin.decode("latin-1", "replace")[:200]
            raise CrossSiteError(
                f"cross-site request refused: Origin {shown} is not this server and not an "
                "allowed CORS origin, and a page on another site may not change anything here; "
                "to allow a dashboard on that origin, start the server with --cors-origin")
        content_type = header(scope, b"content-type")
        if content_type is None and json_optional:
            return
        if media is not None:
            if content_type is None or content_type.split(b";")[0].strip().lower() != media:
                refused = UnsupportedMediaTypeError(
                    f"this call takes a body of Content-Type {media.decode()}")
                refused.response_headers = ((b"accept-post", media),)
                raise refused
            return
        if content_type is None or not _is_json(content_type):
            shown = "none" if content_type is None else \
                repr(content_type.decode("latin-1", "replace")[:100])
            raise UnsupportedMediaTypeError(
                f"Content-Type {shown} is not accepted for this call: send a JSON body with "
                "'Content-Type: application/json'")

    def wrap(self, scope: Scope, send: Send) -> Send:
        """``send`` adding the CORS headers a browser needs for this request's ``Origin``."""
        origin = header(scope, b"origin")
        if origin is None:
            return send
        extra = [(b"vary", b"origin")]
        if self.listed(origin):
            extra += [(b"access-control-allow-origin", origin),
                      (b"access-control-expose-headers", _EXPOSE)]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], *extra]}
            await send(message)

        return sending

    def preflight_headers(self, scope: Scope, methods: Iterable[str]) -> list[tuple[bytes, bytes]]:
        """The grant for a preflight from a listed origin (``wrap`` adds the origin itself)."""
        origin = header(scope, b"origin")
        wanted = header(scope, b"access-control-request-method")
        allow = sorted(set(methods))
        if origin is None or wanted is None or not self.listed(origin) or (
                wanted.decode("latin-1") not in allow):
            return []
        out = [(b"access-control-allow-methods", ", ".join(allow).encode()),
               (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_S).encode())]
        asked = header(scope, b"access-control-request-headers")
        if asked and all(c in _TOKEN_CHARS for c in asked):
            out.append((b"access-control-allow-headers", asked))
        return out


__all__ = ["PREFLIGHT_MAX_AGE_S", "CrossSite", "normalize_origin", "same_origin"]
