"""The console's browser session: the API key in an HttpOnly cookie, and CSRF tokens.

A browser cannot send ``Authorization: Bearer``; after ``/ui/login`` checks a key through the
server's :class:`~modelyard.serving.access.Access`, the key rides in the ``modelyard_session``
cookie (HttpOnly, SameSite=Strict, Secure over TLS, never in a URL) and each console request
presents it to ``Access`` as the bearer credential, so a revoked or expired key stops working
at once and the audit trail names the key's principal.

Every POST carries a CSRF token: an HMAC of the session under a random ``modelyard_csrf``
cookie's secret (bound to the session: a token from another session, or from a page before
logging in, does not match). The functions here are pure: cookie text in, decisions out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

from modelyard.errors import ForbiddenError

SESSION_COOKIE = "modelyard_session"
CSRF_COOKIE = "modelyard_csrf"
#: the form field every console POST carries its token in.
CSRF_FIELD = "csrf"
#: how long a console session lasts, in seconds (the key's own expiry still applies).
SESSION_MAX_AGE_S = 12 * 3600


def parse_cookies(header: bytes | str | None) -> dict[str, str]:
    """``Cookie: a=1; b=2`` as ``{"a": "1", "b": "2"}`` (malformed pairs are skipped)."""
    if not header:
        return {}
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    found: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            found.setdefault(name, value.strip().strip('"'))
    return found


def set_cookie(name: str, value: str, *, secure: bool, max_age: int | None = None) -> bytes:
    """A ``Set-Cookie`` value for the console: HttpOnly, SameSite=Strict, under ``/ui``."""
    parts = [f"{name}={value}", "Path=/ui", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode("latin-1")


def clear_cookie(name: str, *, secure: bool) -> bytes:
    """A ``Set-Cookie`` value that removes the cookie ``name``."""
    return set_cookie(name, "", secure=secure, max_age=0)


def new_secret() -> str:
    """A fresh random CSRF secret (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


def csrf_token(secret: str, session: str | None) -> str:
    """The token forms carry: an HMAC of the session (empty when none) under ``secret``."""
    return hmac.new(secret.encode(), (session or "").encode(), hashlib.sha256).hexdigest()


def check_csrf(cookies: Mapping[str, str], form: Mapping[str, str]) -> None:
    """Refuse (403) a POST whose token does not match its cookies."""
    secret = cookies.get(CSRF_COOKIE)
    given = form.get(CSRF_FIELD, "")
    if not secret or not given:
        raise ForbiddenError("the form has no CSRF token: reload the page and try again")
    want = csrf_token(secret, cookies.get(SESSION_COOKIE))
    if not hmac.compare_digest(want, given):
        raise ForbiddenError("the form's CSRF token does not match this session: reload the "
                             "page and try again")


def same_origin(origin: bytes | None, host: bytes | None) -> bool:
    """Whether a request's ``Origin`` (when it sends one) is this server (``Host``)."""
    if origin is None:
        return True
    if host is None:
        return False
    text = origin.decode("latin-1")
    return text.split("://", 1)[-1] == host.decode("latin-1")


__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "SESSION_COOKIE", "SESSION_MAX_AGE_S", "check_csrf",
           "clear_cookie", "csrf_token", "new_secret", "parse_cookies", "same_origin",
           "set_cookie"]
