"""Principals (users and service accounts) and their API keys, in the registry database.

A key reads ``myk_<id>_<secret>``: the id is public (it names the key in lists, the audit log
and ``revoke``); the secret is shown once, when the key is made, and stored only as a salted
scrypt hash, so a copy of the database lets no one call the server. Each key grants a role,
or a few (:data:`~modelyard.registry.policy.ROLES`), over the models a pattern names, until it
expires or is revoked. Rotation without downtime: :meth:`KeyStore.rotate` makes a new key with
the same grant and lets the old one live on for a grace period, while clients switch.

Every change is audited in the same transaction as the change (``auth.key.create``,
``auth.key.revoke``, ``auth.key.rotate``, ``auth.principal.create``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from modelyard.errors import ConfigError, ConflictError, NotFoundError
from modelyard.registry.database import Database
from modelyard.registry.policy import Grant, check_pattern, check_roles, grants
from modelyard.registry.records import Record
from modelyard.registry.rows import audit, now
from modelyard.registry.tables import ApiKeyRow, PrincipalRow

PREFIX = "myk_"
KINDS = ("user", "service")
#: scrypt's cost: about 16 MiB and tens of milliseconds a check, so a stolen hash is slow to
#: attack; the server checks a key once and then remembers it (serving.access)
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_KEY = re.compile(r"^myk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._:+-]{0,199}$")


@dataclass(frozen=True)
class ApiKey(Record):
    """An API key as listed: never its secret."""

    id: str
    principal: str
    kind: str
    role: str
    models: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    note: str

    def state(self, at: datetime) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None and self.revoked_at <= at:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= at:
            return "expired"
        return "active"


@dataclass(frozen=True)
class NewKey:
    """A key just made: ``secret`` is the whole key, shown this once and never again."""

    key: ApiKey
    secret: str


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a credential stands for: the principal the audit names, and what it may do."""

    principal: str
    grants: tuple[Grant, ...]
    key_id: str | None = None
    expires_at: datetime | None = None

    @property
    def actor(self) -> str:
        """The actor the audit log records for this caller."""
        return self.principal


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """A salted scrypt hash of ``secret`` in one self-describing string."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, maxmem=64 * 2**20, **_SCRYPT)
    params = f"{_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}"
    return f"scrypt${params}${_b64(salt)}${_b64(digest)}"


def secret_matches(secret: str, stored: str) -> bool:
    """Whether ``secret`` is the one ``stored`` (from :func:`hash_secret`) was made from."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             dklen=32, maxmem=64 * 2**20)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


def split_key(text: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else None (no database read for garbage)."""
    found = _KEY.match(text)
    return (found.group(1), found.group(2)) if found else None


class KeyStore:
    """Principals and API keys in one registry database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- making and ending keys -----------------------------------------------------------------
    def create_key(self, principal: str, role: str, *, models: str = "*", kind: str = "user",
                   expires: timedelta | None = None, note: str = "",
                   actor: str = "local") -> NewKey:
        """A new key for ``principal`` (made on first use, as a ``kind``), granting ``role`` on
        the models ``models`` names, until ``expires`` from now (None: until revoked).
        ``role`` may name several roles, comma-separated (``trainer,deployer``: a CI key that
        trains and promotes)."""
        role = check_roles(role)
        check_pattern(models)
        if kind not in KINDS:
            raise ConfigError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        if expires is not None and expires <= timedelta(0):
            raise ConfigError("expires must be in the future")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        stored = hash_secret(secret)
        with self.db.session(write=True) as s:
            owner = self._principal(s, principal, kind, actor)
            at = now()
            row = ApiKeyRow(id=key_id, principal_id=owner.id, role=role, models=models,
                            secret_hash=stored, created_at=at, created_by=actor,
                            expires_at=at + expires if expires is not None else None,
                            note=note[:300])
            s.add(row)
            s.flush()
            audit(s, actor, "auth.key.create", principal,
                  {"key": key_id, "role": role, "models": models,
                   "expires_at": _iso(row.expires_at)})
            made = _to_key(row, owner)
        return NewKey(made, f"{PREFIX}{key_id}_{secret}")

    def revoke(self, key_id: str, *, actor: str = "local") -> ApiKey:
        """End a key now; a revoked key never authenticates again."""
        with self.db.session(write=True) as s:
            row, owner = self._key(s, key_id, lock=True)
            if row.revoked_at is not None:
                raise ConflictError(f"key {key_id} was already revoked at "
                                    f"{row.revoked_at.isoformat()}")
            row.revoked_at = now()
            audit(s, actor, "auth.key.revoke", owner.name, {"key": key_id})
            return _to_key(row, owner)

    def rotate(self, key_id: str, *, grace: timedelta = timedelta(hours=1),
               actor: str = "local") -> NewKey:
        """A new key with ``key_id``'s principal, role, scope and lifetime, while the old one
        keeps working for ``grace`` (so clients switch with no failed call), then ends."""
        with self.db.session() as s:
            row, owner = self._key(s, key_id)
            if row.revoked_at is not None:
                raise ConflictError(f"key {key_id} is revoked: make a new one with create-key")
            lifetime = (row.expires_at - row.created_at) if row.expires_at else None
            role, models, kind, name = row.role, row.models, owner.kind, owner.name
        made = self.create_key(name, role, models=models, kind=kind, expires=lifetime,
                               note=f"rotated from {key_id}", actor=actor)
        with self.db.session(write=True) as s:
            row, _ = self._key(s, key_id, lock=True)
            end = now() + grace
            if row.expires_at is None or row.expires_at > end:
                row.expires_at = end
            audit(s, actor, "auth.key.rotate", name,
                  {"key": key_id, "new_key": made.key.id, "old_expires_at": _iso(end)})
        return made

    # -- reading --------------------------------------------------------------------------------
    def list_keys(self, principal: str | None = None) -> list[ApiKey]:
        """Every key (or ``principal``'s), oldest first; never a secret."""
        with self.db.session() as s:
            query = (select(ApiKeyRow, PrincipalRow)
                     .join(PrincipalRow, PrincipalRow.id == ApiKeyRow.principal_id)
                     .order_by(ApiKeyRow.created_at, ApiKeyRow.id))
            if principal is not None:
                query = query.where(PrincipalRow.name == principal)
            return [_to_key(k, p) for k, p in s.execute(query).tuples()]

    def any_active(self) -> bool:
        """Whether some key could authenticate now: then the server requires keys."""
        at = now()
        with self.db.session() as s:
            count = s.scalar(select(func.count()).select_from(ApiKeyRow).where(
                ApiKeyRow.revoked_at.is_(None),
                (ApiKeyRow.expires_at.is_(None)) | (ApiKeyRow.expires_at > at)))
        return bool(count)

    def lookup(self, key_id: str) -> tuple[ApiKey, str] | None:
        """A key and its stored hash, for :meth:`verify` and for re-checking a remembered key."""
        with self.db.session() as s:
            found = s.execute(select(ApiKeyRow, PrincipalRow)
                              .join(PrincipalRow, PrincipalRow.id == ApiKeyRow.principal_id)
                              .where(ApiKeyRow.id == key_id)).tuples().first()
            if found is None:
                return None
            return _to_key(*found), found[0].secret_hash

    def verify(self, text: str) -> Identity | None:
        """Who the key ``text`` stands for, or None: malformed, unknown, wrong secret,
        expired or revoked (one answer for all, so a caller learns nothing from it)."""
        parts = split_key(text)
        if parts is None:
            return None
        found = self.lookup(parts[0])
        if found is None or not secret_matches(parts[1], found[1]):
            return None
        return identity_of(found[0], now())

    def touch(self, key_id: str) -> None:
        """Note that a key was used (the server calls this at most once a minute a key)."""
        with self.db.session(write=True) as s:
            s.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id)
                      .values(last_used_at=now()))

    # -- rows -----------------------------------------------------------------------------------
    def _principal(self, s: Session, name: str, kind: str, actor: str) -> PrincipalRow:
        if not _PRINCIPAL.match(name):
            raise ConfigError(f"principal name {name[:60]!r} is invalid: use letters, digits "
                              "and @ . _ : + -, starting with a letter or digit")
        row = s.scalars(select(PrincipalRow).where(PrincipalRow.name == name)).first()
        if row is None:
            row = PrincipalRow(name=name, kind=kind, created_at=now(), created_by=actor)
            s.add(row)
            s.flush()
            audit(s, actor, "auth.principal.create", name, {"kind": kind})
        elif row.kind != kind:
            raise ConflictError(f"principal {name!r} is a {row.kind}, not a {kind}")
        return row

    def _key(self, s: Session, key_id: str, *,
             lock: bool = False) -> tuple[ApiKeyRow, PrincipalRow]:
        query = select(ApiKeyRow).where(ApiKeyRow.id == key_id)
        row = s.scalars(query.with_for_update() if lock else query).first()
        if row is None:
            raise NotFoundError(f"no API key {key_id!r}; see modelyard auth keys")
        owner = s.get(PrincipalRow, row.principal_id)
        assert owner is not None  # a foreign key
        return row, owner


def identity_of(key: ApiKey, at: datetime) -> Identity | None:
    """The identity a key grants at ``at``; None once it is expired or revoked."""
    if key.state(at) != "active":
        return None
    return Identity(key.principal, grants(key.role, key.models), key.id, key.expires_at)


def _to_key(row: ApiKeyRow, owner: PrincipalRow) -> ApiKey:
    return ApiKey(row.id, owner.name, owner.kind, row.role, row.models, row.created_at,
                  row.created_by, row.expires_at, row.revoked_at, row.last_used_at, row.note)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def describe(key: ApiKey, at: datetime) -> dict[str, Any]:
    """A key as the CLI and the API show it (``state`` added)."""
    return {**key.to_dict(), "state": key.state(at)}


__all__ = ["KINDS", "PREFIX", "ApiKey", "Identity", "KeyStore", "NewKey", "describe",
           "hash_secret", "identity_of", "secret_matches", "split_key"]
