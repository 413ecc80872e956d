"""Single sign-on against a local issuer the test creates (its own key pair and JWKS, as a file
and served over HTTP on loopback): valid tokens get the roles their claims map to; forged
ones (another key, another audience or issuer, expired, ``alg: none``, HMAC signed with the
public key) are refused."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from modelyard.cli import main
from modelyard.config import Settings
from modelyard.errors import ConfigError
from modelyard.registry import Registry
from modelyard.registry.policy import Grant
from modelyard.serving import ServeOptions, create_app
from modelyard.serving.access import TOKEN_ENV
from modelyard.serving.oidc import OIDCConfig, grants_of
from modelyard.testing import register_constant

pytestmark = pytest.mark.anyio
ISSUER = "https://issuer.test/realms/ml"
AUDIENCE = "modelyard"
MODEL = "fraud"


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


class Issuer:
    """A key pair and its JWKS: signs tokens as an OIDC provider would."""

    def __init__(self, folder: Path, kid: str = "k1") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = kid
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": kid, "use": "sig", "alg": "RS256"}]}
        self.jwks_file = folder / "jwks.json"
        self.jwks_file.write_text(json.dumps(self.jwks))

    def token(self, key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-1", "email": "ana@example.com",
                "groups": ["fraud-team"], "iat": now, "exp": now + 300, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": self.kid})


def _config(folder: Path, jwks: str) -> Path:
    path = folder / "oidc.yaml"
    path.write_text(f"""
issuer: {ISSUER}
audience: {AUDIENCE}
jwks: {jwks}
principal_claim: email
roles_claim: groups
roles:
  fraud-team: {{role: predictor, models: "fraud*"}}
  ml-admins: {{role: admin}}
""")
    return path


@pytest.fixture()
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


@pytest.fixture()
def jwks_url(issuer: Issuer, tmp_path: Path) -> Iterator[str]:
    """The issuer's JWKS served over HTTP on loopback, as a provider's ``jwks_uri``."""
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()
    server.server_close()


def _unsigned(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@pytest.mark.parametrize("source", ["file", "url"])
async def test_tokens_get_the_roles_their_claims_map_to_and_forgeries_are_refused(
        source: str, issuer: Issuer, jwks_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    jwks = str(issuer.jwks_file) if source == "file" else jwks_url
    config = _config(tmp_path, jwks)
    body = {"instances": [[0, 0, 0]]}
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as registry:
        register_constant(registry, MODEL, 1)
        register_constant(registry, "churn", 1)
        app = create_app(registry, ServeOptions(poll_interval_s=3600, preload=False,
                                                oidc=str(config)))
        await app.startup()
        assert app.access.enforced  # an issuer is trusted: auth is on
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
                async def predict(token: str | None, model: str = MODEL) -> httpx.Response:
                    headers = {"authorization": f"Bearer {token}"} if token else {}
                    return await client.post(f"/v1/models/{model}/predict", json=body,
                                             headers=headers)

                assert (await predict(None)).status_code == 401
                good = issuer.token()
                assert (await predict(good)).status_code == 200
                assert (await predict(good, "churn")).status_code == 403  # out of scope
                r = await client.post("/api/v1/models/fraud/promote", json={"version": 1},
                                      headers={"authorization": f"Bearer {good}"})
                assert r.status_code == 403  # a predictor
                admin = issuer.token(groups=["ml-admins"])
                r = await client.post("/api/v1/models/fraud/promote", json={"version": 1},
                                      headers={"authorization": f"Bearer {admin}"})
                assert r.status_code == 200, r.text
                assert r.json()["event"]["actor"] == "oidc:ana@example.com"

                other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                now = int(time.time())
                forged = {
                    "another key": issuer.token(key=other_key),
                    "another audience": issuer.token(aud="someone-else"),
                    "another issuer": issuer.token(iss="https://evil.test"),
                    "expired": issuer.token(iat=now - 4000, exp=now - 3600),
                    "no principal": issuer.token(email=None),
                    "alg none": _unsigned({"iss": ISSUER, "aud": AUDIENCE, "sub": "x",
                                           "email": "x@e", "groups": ["ml-admins"],
                                           "exp": now + 300}),
                    "hmac with the public key": _hmac_with_public_key(issuer),
                    "no mapped group": issuer.token(groups=["interns"]),
                }
                for what, token in forged.items():
                    r = await predict(token)
                    assert r.status_code == 403, what
        finally:
            await app.shutdown()


def _hmac_with_public_key(issuer: Issuer) -> str:
    """The classic algorithm confusion: HS256 keyed with the issuer's public key."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    pem = issuer.key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    claims = {"iss": ISSUER, "aud": AUDIENCE, "email": "x@e", "exp": int(time.time()) + 300,
              "groups": ["ml-admins"]}
    signing = f"{part({'alg': 'HS256', 'typ': 'JWT', 'kid': issuer.kid})}.{part(claims)}"
    signature = hmac.new(pem, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{base64.urlsafe_b64encode(signature).decode().rstrip('=')}"


def test_claims_map_to_grants() -> None:
    config = OIDCConfig(issuer=ISSUER, audience=AUDIENCE, jwks="x", roles={
        "a": {"role": "viewer"}, "b": {"role": "predictor", "models": "fraud*"}})
    assert grants_of({"groups": ["a", "b", "c"]}, config) == (Grant("viewer"),
                                                              Grant("predictor", "fraud*"))
    assert grants_of({"groups": "a"}, config) == (Grant("viewer"),)  # a space-separated string
    assert len(grants_of({"groups": "a b"}, config)) == 2
    assert grants_of({"groups": 5}, config) == () == grants_of({}, config)


def test_a_malformed_configuration_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "oidc.yaml"
    path.write_text("issuer: x\naudience: y\njwks: z\nroles: {a: {role: root}}\n")
    with pytest.raises(ConfigError, match="role 'root'"):
        OIDCConfig.load(path)
    path.write_text("issuer: x\njwks: z\n")
    with pytest.raises(ConfigError, match="audience"):
        OIDCConfig.load(path)
    result = CliRunner().invoke(main, ["--home", str(tmp_path / "h"), "serve", "--oidc",
                                       str(path)])
    assert result.exit_code == 2 and "audience" in result.stderr
