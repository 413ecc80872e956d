"""Single sign-on: bearer JWTs from an OpenID Connect issuer, checked against its JWKS, their
claims mapped to roles and scopes by configuration.

``modelyard serve --oidc FILE`` reads a YAML (or JSON) file::

    issuer: https://login.example.com/realms/ml     # the token's "iss", exactly
    audience: modelyard                             # the token's "aud" must name it
    jwks: https://login.example.com/realms/ml/certs # or a file path holding the JWKS
    principal_claim: email                          # who the audit names (default: sub)
    roles_claim: groups                             # a list (or a string) of values
    roles:                                          # claim value -> a grant
      ml-admins: {role: admin}
      fraud-oncall: {role: deployer, models: "fraud-*"}
      checkout-service: {role: predictor, models: fraud}

Signatures are checked by PyJWT (no hand-written crypto) with asymmetric algorithms only
(:data:`ALGORITHMS`): a token signed ``none`` or with HMAC is refused, as is one expired, not
yet valid, from another issuer or for another audience, or without the claims above. A token
whose claims map to no role authenticates but may do nothing (403).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelyard.errors import ConfigError, ForbiddenError, FrameworkMissingError
from modelyard.registry.keys import Identity
from modelyard.registry.policy import Grant, check_pattern, check_role

#: signature algorithms accepted: asymmetric only, so a public JWKS can never sign a token.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
#: seconds of clock difference tolerated on ``exp``/``nbf``/``iat``.
LEEWAY_S = 30


class RoleGrant(BaseModel):
    """What one claim value grants."""

    model_config = ConfigDict(extra="forbid")
    role: str
    models: str = "*"


class OIDCConfig(BaseModel):
    """The ``--oidc`` file: which issuer to trust and how its claims become grants."""

    model_config = ConfigDict(extra="forbid")
    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks: str = Field(min_length=1)
    principal_claim: str = "sub"
    roles_claim: str = "groups"
    roles: dict[str, RoleGrant] = Field(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        for grant in self.roles.values():
            check_role(grant.role)
            check_pattern(grant.models)

    @classmethod
    def load(cls, path: str | Path) -> OIDCConfig:
        """The configuration in ``path`` (YAML or JSON); :class:`ConfigError` naming the field
        when it is malformed."""
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the OIDC configuration {path}: {exc}") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise ConfigError(f"OIDC configuration {path}: {where}: {first['msg']}") from None


def grants_of(claims: Mapping[str, Any], config: OIDCConfig) -> tuple[Grant, ...]:
    """The grants a token's claims map to (none when no value is configured): pure."""
    values = claims.get(config.roles_claim, ())
    if isinstance(values, str):
        values = values.split()
    if not isinstance(values, list | tuple):
        return ()
    found = (config.roles.get(str(v)) for v in values)
    return tuple(dict.fromkeys(Grant(g.role, g.models) for g in found if g is not None))


def looks_like_jwt(credential: bytes) -> bool:
    """Whether a bearer credential has a JWT's shape (three dot-separated parts)."""
    return credential.count(b".") == 2


@dataclass
class TokenVerifier:
    """Checks bearer JWTs against one issuer's JWKS (a URL fetched and cached, or a file)."""

    config: OIDCConfig

    def __post_init__(self) -> None:
        try:
            import jwt
        except ImportError:
            raise FrameworkMissingError("OIDC needs PyJWT: pip install 'modelyard[oidc]'") from None
        self._jwt = jwt
        source = self.config.jwks
        self._client: Any = None
        self._keys: Any = None
        if source.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(source, cache_keys=True, lifespan=300, timeout=5)
        else:
            try:
                self._keys = jwt.PyJWKSet.from_dict(json.loads(Path(source).read_text()))
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                raise ConfigError(f"OIDC jwks {source}: cannot read a JWKS: {exc}") from None

    def verify(self, token: str) -> Identity:
        """The identity a valid token stands for; :class:`ForbiddenError` saying why not.
        Blocks (a JWKS URL may be fetched): call it off the event loop."""
        jwt = self._jwt
        try:
            key = self._signing_key(token)
            claims = jwt.decode(
                token, key, algorithms=list(ALGORITHMS), audience=self.config.audience,
                issuer=self.config.issuer, leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", self.config.principal_claim]})
        except jwt.PyJWTError as exc:
            raise ForbiddenError(f"the bearer token is not valid: {exc}") from None
        principal = str(claims[self.config.principal_claim])[:200]
        expires = _time(claims.get("exp"))
        return Identity(f"oidc:{principal}", grants_of(claims, self.config), None, expires)

    def _signing_key(self, token: str) -> Any:
        jwt = self._jwt
        header = jwt.get_unverified_header(token)
        if header.get("alg") not in ALGORITHMS:
            raise jwt.InvalidAlgorithmError(f"algorithm {header.get('alg')!r} is not allowed")
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        kid = header.get("kid")
        for key in self._keys.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise jwt.InvalidKeyError(f"no key {kid!r} in the issuer's JWKS")


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if isinstance(value, int | float) else None


__all__ = ["ALGORITHMS", "OIDCConfig", "RoleGrant", "TokenVerifier", "grants_of",
           "looks_like_jwt"]
