"""Who is calling: the credential a mutating request carries, and the actor the audit log records.

Every mutation the server accepts (admin and monitoring POSTs, feedback, OIP repository
load/unload over REST and gRPC) is authenticated here, once, by :meth:`Access.authenticate`, and
the actor it returns is what the registry records. Every protocol comes through this module:
the app's dispatcher calls :func:`admit` for each HTTP mutation (cross-site rules, then the
credential), gRPC calls :meth:`Access.authenticate_metadata`. A client cannot name itself: the
actor comes from the credential, never from a header the client chooses.

=============================  ===================  ===========================================
server                         request              actor recorded
=============================  ===================  ===========================================
``MODELYARD_TOKEN`` unset      anything             ``api:anonymous``
``MODELYARD_TOKEN`` set        the token            ``api:token``
``MODELYARD_TOKEN`` set        no/malformed header  401 (``WWW-Authenticate: Bearer``)
``MODELYARD_TOKEN`` set        another token        403
=============================  ===================  ===========================================

The same over HTTP (``Authorization: Bearer <token>``) and gRPC (metadata ``authorization``).
Per-user keys will map each key to its own actor in :meth:`Access.actor_for`, the one place
that turns a credential into a name.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.errors import ForbiddenError, UnauthorizedError
from modelyard.serving.cors import CrossSite
from modelyard.serving.http import Scope, header

TOKEN_ENV = "MODELYARD_TOKEN"
#: the actor of a mutation on a server without a token: anyone who can reach it.
ANONYMOUS = "api:anonymous"
#: the actor of a mutation that presented the server's one shared token.
TOKEN_ACTOR = "api:token"
#: where the dispatcher leaves the authenticated actor in an ASGI scope.
ACTOR_KEY = "modelyard.actor"


@dataclass(frozen=True)
class Access:
    """The server's credentials: build it with :meth:`from_env`; ``token=None`` is open."""

    token: bytes | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Access:
        """The token ``MODELYARD_TOKEN`` names (an empty value counts as unset)."""
        token = (os.environ if env is None else env).get(TOKEN_ENV, "")
        return cls(token.encode() if token else None)

    @property
    def required(self) -> bool:
        """Whether mutations need a credential."""
        return self.token is not None

    def authenticate(self, authorization: bytes | str | None) -> str:
        """The actor for an ``Authorization`` value; 401 when it is missing or not a bearer
        token, 403 when the token is not this server's."""
        if self.token is None:
            return ANONYMOUS
        if isinstance(authorization, str):
            authorization = authorization.encode("latin-1", "replace")
        given = (authorization or b"").strip()
        if not given:
            raise UnauthorizedError(f"this call needs 'Authorization: Bearer <token>' (the "
                                    f"server's {TOKEN_ENV})")
        scheme, _, credential = given.partition(b" ")
        if scheme.lower() != b"bearer" or not credential.strip():
            raise UnauthorizedError("send the token as 'Authorization: Bearer <token>'")
        actor = self.actor_for(credential.strip())
        if actor is None:
            raise ForbiddenError("the bearer token is not valid for this server")
        return actor

    def authenticate_http(self, scope: Scope) -> str:
        """The actor for an HTTP request's ``Authorization`` header (see :meth:`authenticate`)."""
        return self.authenticate(header(scope, b"authorization"))

    def authenticate_metadata(self, metadata: Iterable[tuple[str, Any]] | None) -> str:
        """The actor for a gRPC call's ``authorization`` metadata (see :meth:`authenticate`)."""
        given = next((value for key, value in metadata or ()
                      if key == "authorization" and isinstance(value, str)), None)
        return self.authenticate(given)

    def actor_for(self, credential: bytes) -> str | None:
        """The actor a credential stands for, or None when it stands for nobody."""
        if self.token is not None and hmac.compare_digest(credential, self.token):
            return TOKEN_ACTOR
        return None


def admit(scope: Scope, access: Access, cross_site: CrossSite, *, untyped: bool = False) -> None:
    """Let an HTTP mutation through, or raise: a foreign ``Origin`` or a body not declared JSON
    (``untyped``: or not declared at all; :meth:`CrossSite.check_mutation`), then a missing or
    wrong credential. The actor goes into the scope for the audit (:func:`actor_of`)."""
    cross_site.check_mutation(scope, json_optional=untyped)
    scope[ACTOR_KEY] = access.authenticate_http(scope)


def actor_of(scope: dict[str, Any]) -> str:
    """The actor the dispatcher authenticated for this request (mutating routes only)."""
    return str(scope[ACTOR_KEY])


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to listen on) is reachable only from this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name, "0.0.0.0"-like wildcard or "": assume it is reachable


def exposure_warning(host: str, access: Access) -> str | None:
    """The warning for listening on ``host`` without a token, or None when that is safe."""
    if access.required or is_loopback(host):
        return None
    return (f"SECURITY: listening on {host or 'every address'} without {TOKEN_ENV}: anyone "
            "who can reach this address can promote, roll back and roll out models, load and "
            "unload them, and send labels. Set MODELYARD_TOKEN, or listen on 127.0.0.1.")


__all__ = ["ACTOR_KEY", "ANONYMOUS", "TOKEN_ACTOR", "TOKEN_ENV", "Access", "actor_of", "admit",
           "exposure_warning", "is_loopback"]
