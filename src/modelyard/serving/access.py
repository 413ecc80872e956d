"""Who is calling, and may they: credentials, the decision, and the actor the audit records.

Every route declares the action it needs (:attr:`~modelyard.serving.http.Endpoint.action`, one
of :data:`~modelyard.registry.policy.ACTIONS`); the app's dispatcher asks :meth:`Access.admit`
once per request, gRPC asks :meth:`Access.admit_metadata` once per call, and the decision is
the pure :func:`~modelyard.registry.policy.decide`. A client cannot name itself: the actor comes
from the credential, never from a header the client chooses.

Auth is **enforced** (every route but health and documents needs a key whose role allows it)
when API keys exist in the registry, or the server listens beyond loopback; ``--insecure``
turns that off with a warning. Not enforced, the server is open as on a laptop, but a mutation
(and reading a logged request back) still needs ``MODELYARD_TOKEN`` when that is set.

=============================  ==============================  ===============================
credential                     stands for                      actor recorded
=============================  ==============================  ===============================
none, auth not enforced        anyone on this machine          ``api:anonymous``
``MODELYARD_TOKEN``            an admin                        ``api:token``
an API key (``myk_...``)       its principal, role and scope   the principal's name
none, auth enforced            nobody: 401                     -
a key that is wrong, expired   nobody: 403                     -
or revoked
a valid key without the role   403 naming the role needed      -
=============================  ==============================  ===============================

The same over HTTP (``Authorization: Bearer <key>``) and gRPC (metadata ``authorization``).
A client that keeps failing is refused with 429 for a while (:class:`FailureLimiter`), and
every refusal is counted (``modelyard_auth_failures_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelyard.errors import ForbiddenError, TooManyAttemptsError, UnauthorizedError
from modelyard.registry.keys import Identity, KeyStore, identity_of, split_key
from modelyard.registry.policy import Grant, decide, visible
from modelyard.serving.http import Scope, header
from modelyard.serving.oidc import TokenVerifier, looks_like_jwt
from modelyard.serving.poller import Poller

TOKEN_ENV = "MODELYARD_TOKEN"
#: the actor of a call on a server that does not enforce auth: anyone who can reach it.
ANONYMOUS = "api:anonymous"
#: the actor of a call that presented the server's one shared token.
TOKEN_ACTOR = "api:token"
#: where the dispatcher leaves the authenticated actor in an ASGI scope.
ACTOR_KEY = "modelyard.actor"
#: where it leaves the caller's identity (for routes that filter what they show).
IDENTITY_KEY = "modelyard.identity"

_OPEN = Identity(ANONYMOUS, (Grant("admin"),))
_TOKEN = Identity(TOKEN_ACTOR, (Grant("admin"),))
#: a key the server checked is re-read (revoked? expired?) after this many seconds
RECHECK_S = 5.0
#: a key's ``last_used_at`` is written at most this often
TOUCH_S = 60.0
#: how often the server looks whether keys exist (auth turns on by itself when one is made)
KEYS_POLL_S = 5.0

IO = Callable[..., Awaitable[Any]]


@dataclass
class FailureLimiter:
    """Refuses a client (429) after ``limit`` failed attempts within ``window_s`` seconds,
    until the window has passed: guessing keys from one address is slow."""

    limit: int = 20
    window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _fails: dict[str, list[float]] = field(default_factory=dict)

    def check(self, client: str) -> None:
        """Raise :class:`TooManyAttemptsError` while ``client`` is held back."""
        fails = self._recent(client)
        if len(fails) >= self.limit:
            wait = max(1, int(fails[0] + self.window_s - self.clock()) + 1)
            raise TooManyAttemptsError(
                f"too many failed attempts from this client; retry in {wait} s", retry_after=wait)

    def failed(self, client: str) -> None:
        """Count one failed attempt of ``client``."""
        self._recent(client).append(self.clock())
        if len(self._fails) > 10_000:  # forget the oldest clients rather than grow forever
            for stale in list(self._fails)[:1000]:
                del self._fails[stale]

    def _recent(self, client: str) -> list[float]:
        fails = self._fails.setdefault(client, [])
        cutoff = self.clock() - self.window_s
        while fails and fails[0] < cutoff:
            fails.pop(0)
        return fails


@dataclass
class _Remembered:
    identity: Identity | None
    checked: float


class Access:
    """The server's credentials and its rule for when they are needed.

    Build with :meth:`from_env`; :meth:`attach` the registry's :class:`KeyStore` once it is
    open, and :meth:`watch` to notice keys being made or the last one ending.
    """

    def __init__(self, token: bytes | None = None, *, exposed: bool = False,
                 insecure: bool = False, tokens: TokenVerifier | None = None,
                 limiter: FailureLimiter | None = None,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.token = token
        self.exposed = exposed and not insecure
        self.tokens = tokens
        self.keys: KeyStore | None = None
        self.keys_exist = False
        self.limiter = limiter or FailureLimiter()
        self.on_failure = on_failure or (lambda reason: None)
        self._known: dict[bytes, _Remembered] = {}
        self._touched: dict[str, float] = {}
        self._io: IO | None = None
        self._watch: _KeysWatch | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kw: Any) -> Access:
        """The token ``MODELYARD_TOKEN`` names (an empty value counts as unset)."""
        token = (os.environ if env is None else env).get(TOKEN_ENV, "")
        return cls(token.encode() if token else None, **kw)

    @property
    def enforced(self) -> bool:
        """Whether every non-public route needs a credential with the right role now."""
        return self.exposed or self.keys_exist or self.tokens is not None

    @property
    def required(self) -> bool:
        """Whether mutations need a credential."""
        return self.enforced or self.token is not None

    # -- keys in the registry -------------------------------------------------------------------
    async def attach(self, keys: KeyStore, io: IO) -> None:
        """Use ``keys`` (checked through ``io``, off the event loop) from now on."""
        self.keys, self._io = keys, io
        self.keys_exist = await io(keys.any_active)

    def watch(self) -> None:
        """Poll the registry for keys in the background (see :data:`KEYS_POLL_S`)."""
        if self._watch is None and self.keys is not None:
            self._watch = _KeysWatch(self)
            self._watch.start()

    async def stop(self) -> None:
        """Stop polling."""
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None

    async def refresh(self) -> None:
        """Read again whether a key exists (a registry outage keeps the last answer)."""
        assert self.keys is not None and self._io is not None
        self.keys_exist = await self._io(self.keys.any_active)

    # -- deciding -------------------------------------------------------------------------------
    async def admit(self, scope: Scope, action: str, model: str | None, *,
                    credential_needed: bool = False) -> str:
        """Let an HTTP request through, or raise 401/403/429; the actor it stands for (also
        left in the scope: :func:`actor_of`). ``credential_needed``: a mutation, or a read of
        what a client sent, that needs ``MODELYARD_TOKEN`` even when auth is not enforced."""
        identity = await self._identify(header(scope, b"authorization"), _client(scope),
                                        action, credential_needed)
        self._authorize(identity, action, model)
        scope[ACTOR_KEY] = identity.actor
        scope[IDENTITY_KEY] = identity
        return identity.actor

    async def admit_metadata(self, metadata: Iterable[tuple[str, Any]] | None, peer: str,
                             action: str, model: str | None, *,
                             credential_needed: bool = False) -> str:
        """The same for a gRPC call's ``authorization`` metadata."""
        given = next((value for key, value in metadata or ()
                      if key == "authorization" and isinstance(value, str)), None)
        identity = await self._identify(given, peer, action, credential_needed)
        self._authorize(identity, action, model)
        return identity.actor

    def _authorize(self, identity: Identity, action: str, model: str | None) -> None:
        decision = decide(identity.grants, action, model)
        if not decision.allowed:
            self.on_failure("forbidden")
            raise ForbiddenError(f"{identity.actor}: {decision.reason}")

    async def _identify(self, authorization: bytes | str | None, client: str, action: str,
                        credential_needed: bool) -> Identity:
        if action == "public":
            return _OPEN
        if not self.enforced and not (credential_needed and self.token is not None):
            return _OPEN
        self.limiter.check(client)
        try:
            return await self._verify(_bearer(authorization))
        except (UnauthorizedError, ForbiddenError) as exc:
            self.limiter.failed(client)
            self.on_failure("missing" if isinstance(exc, UnauthorizedError) else "invalid")
            raise

    async def _verify(self, credential: bytes) -> Identity:
        if self.token is not None and hmac.compare_digest(credential, self.token):
            return _TOKEN
        digest = hashlib.sha256(credential).digest()
        known = self._known.get(digest)
        if known is None and self.tokens is not None and looks_like_jwt(credential):
            known = await self._check_jwt(credential, digest)
        elif known is None or _stale(known):
            known = await self._check(credential, digest, known)
        if known.identity is None or _expired(known.identity):
            raise ForbiddenError("the API key is not valid: unknown, expired or revoked")
        return known.identity

    async def _check(self, credential: bytes, digest: bytes,
                     known: _Remembered | None) -> _Remembered:
        """Verify a key (the slow hash once), or re-read a remembered one (revoked since?)."""
        text = credential.decode("latin-1")
        if self.keys is None or self._io is None or split_key(text) is None:
            raise ForbiddenError("the bearer credential is not valid for this server")
        if known is None or known.identity is None:
            identity = await self._io(self.keys.verify, text)
        else:
            found = await self._io(self.keys.lookup, known.identity.key_id)
            identity = identity_of(found[0], datetime.now(UTC)) if found else None
        if len(self._known) > 50_000:
            self._known.clear()
        if identity is not None and identity.key_id is not None:
            await self._touch(identity.key_id)
        remembered = _Remembered(identity, time.monotonic())
        self._known[digest] = remembered
        return remembered

    async def _check_jwt(self, credential: bytes, digest: bytes) -> _Remembered:
        """Verify a JWT once (signature, issuer, audience, expiry): it is valid until its
        ``exp``, which every use checks."""
        assert self.tokens is not None
        loop = asyncio.get_running_loop()  # a JWKS URL may be fetched: off the event loop
        identity = await loop.run_in_executor(None, self.tokens.verify,
                                              credential.decode("latin-1"))
        remembered = _Remembered(identity, time.monotonic())
        if len(self._known) > 50_000:
            self._known.clear()
        self._known[digest] = remembered
        return remembered

    async def _touch(self, key_id: str) -> None:
        """Record a key's last use, at most once a :data:`TOUCH_S` a key."""
        at = time.monotonic()
        if at - self._touched.get(key_id, -TOUCH_S) < TOUCH_S:
            return
        self._touched[key_id] = at
        assert self.keys is not None and self._io is not None
        with contextlib.suppress(Exception):  # bookkeeping: never fails a request
            await self._io(self.keys.touch, key_id)



def insecure_warning(host: str) -> str:
    """The warning for listening on ``host`` with ``--insecure``."""
    return (f"SECURITY: --insecure: listening on {host or 'every address'} without enforcing "
            "auth until an API key exists: anyone who can reach this address can predict, read "
            "the registry, promote, roll back and roll out models. Create keys (modelyard auth "
            "create-key) and drop --insecure.")


class _KeysWatch(Poller):
    """Auth turns on by itself when the first key is made, and off when the last one ends."""

    doing = "read whether API keys exist"

    def __init__(self, access: Access) -> None:
        super().__init__()
        self.access = access

    def interval(self) -> float:
        return KEYS_POLL_S

    async def tick(self) -> None:
        await self.access.refresh()


def _bearer(authorization: bytes | str | None) -> bytes:
    if isinstance(authorization, str):
        authorization = authorization.encode("latin-1", "replace")
    given = (authorization or b"").strip()
    if not given:
        raise UnauthorizedError("this call needs 'Authorization: Bearer <key>' (an API key: "
                                "modelyard auth create-key)")
    scheme, _, credential = given.partition(b" ")
    if scheme.lower() != b"bearer" or not credential.strip():
        raise UnauthorizedError("send the key as 'Authorization: Bearer <key>'")
    return credential.strip()


def _stale(known: _Remembered) -> bool:
    """Whether a remembered key should be read again (revoked since?); a JWT never is: it
    holds until its ``exp``."""
    is_jwt = known.identity is not None and known.identity.key_id is None
    return not is_jwt and time.monotonic() - known.checked > RECHECK_S


def _expired(identity: Identity) -> bool:
    return identity.expires_at is not None and identity.expires_at <= datetime.now(UTC)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


def actor_of(scope: dict[str, Any]) -> str:
    """The actor the dispatcher authenticated for this request."""
    return str(scope.get(ACTOR_KEY, ANONYMOUS))


def identity_of_scope(scope: dict[str, Any]) -> Identity:
    """The caller's identity (everything, when auth is not enforced)."""
    found = scope.get(IDENTITY_KEY)
    return found if isinstance(found, Identity) else _OPEN


def in_scope(scope: dict[str, Any], action: str, names: Iterable[str]) -> set[str]:
    """The names among ``names`` the caller may ``action`` on (what a list route shows)."""
    return set(visible(identity_of_scope(scope).grants, action, names))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to listen on) is reachable only from this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name, "0.0.0.0"-like wildcard or "": assume it is reachable


__all__ = ["ACTOR_KEY", "ANONYMOUS", "IDENTITY_KEY", "TOKEN_ACTOR", "TOKEN_ENV", "Access",
           "FailureLimiter", "actor_of", "identity_of_scope", "in_scope", "insecure_warning",
           "is_loopback"]
