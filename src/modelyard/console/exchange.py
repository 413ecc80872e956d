"""One console request and its answer: who asks, with which cookies, and what goes back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelyard.console.session import CSRF_COOKIE, SESSION_COOKIE, csrf_token
from modelyard.registry.policy import decide
from modelyard.serving.http import Receive, Scope, header

if TYPE_CHECKING:
    from modelyard.console.app import Console

HTML = b"text/html; charset=utf-8"


@dataclass
class Request:
    """One console request: its scope, cookies, query, who is asking and the answer's cookies."""

    scope: Scope
    receive: Receive
    cookies: dict[str, str]
    query: dict[str, str]
    console: Console
    identity: Any = None
    set_cookies: list[bytes] = field(default_factory=list)
    form: dict[str, str] = field(default_factory=dict)

    def q(self, name: str) -> str | None:
        value = self.query.get(name, "").strip()
        return value or None

    @property
    def partial(self) -> bool:
        """Whether htmx asks only for the live part of the page."""
        return header(self.scope, b"hx-request") is not None

    def may(self, action: str, model: str | None = None) -> bool:
        """Whether the caller's key allows ``action`` (on ``model``): which buttons show."""
        return self.identity is not None and decide(self.identity.grants, action, model).allowed

    @property
    def csrf(self) -> str:
        return csrf_token(self.cookies.get(CSRF_COOKIE, ""), self.cookies.get(SESSION_COOKIE))

    def context(self, **extra: Any) -> dict[str, Any]:
        """What every template gets: who is signed in, the CSRF token, the flash message."""
        return {"me": self.identity, "csrf": self.csrf, "enforced": self.console.enforced,
                "flash": self.q("msg"), "flash_error": self.q("err"), "path": self.scope["path"],
                "may": self.may, **extra}


@dataclass
class Response:
    """What a page answers."""

    body: bytes = b""
    status: int = 200
    media: bytes = HTML
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def redirect(to: str, status: int = 303) -> Response:
    """A redirect to a path of this console."""
    return Response(status=status, headers=[(b"location", to.encode("latin-1"))])



__all__ = ["HTML", "Request", "Response", "redirect"]
