"""``modelyard serve --tls-cert/--tls-key [--tls-client-ca]`` for real: certificates this test
makes (a CA, a server certificate for 127.0.0.1 and localhost, a client certificate), a server
process (and one with --workers 2), HTTPS with the CA, plain HTTP refused on the TLS port,
client certificates required with a client CA, OIP v2 gRPC over TLS, and a missing certificate
file as a one-line error with exit 2."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modelyard.config import Settings
from modelyard.deploy import healthcheck
from modelyard.registry import Registry
from modelyard.serving.process import free_port
from modelyard.testing import register_constant

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key() -> object:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: object, path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path


def _cert(subject: str, key: object, issuer: tuple[str, object] | None, *, ca: bool = False,
          sans: list[object] | None = None, usage: object | None = None) -> object:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = (name, key) if issuer is None else (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]), issuer[1])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
               .public_key(key.public_key())  # type: ignore[attr-defined]
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]


def _write_cert(cert: object, path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))  # type: ignore[attr-defined]
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder = tmp_path_factory.mktemp("certs")
    ca_key, other_key = _key(), _key()
    ca = _cert("modelyard test CA", ca_key, None, ca=True)
    other = _cert("some other CA", other_key, None, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert("localhost", server_key, ("modelyard test CA", ca_key),
                   sans=[x509.DNSName("localhost"),
                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                   usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = _cert("a client", client_key, ("modelyard test CA", ca_key),
                   usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Certs(ca=_write_cert(ca, folder / "ca.pem"),
                 cert=_write_cert(server, folder / "server.pem"),
                 key=_write_key(server_key, folder / "server.key"),
                 client_cert=_write_cert(client, folder / "client.pem"),
                 client_key=_write_key(client_key, folder / "client.key"),
                 other_ca=_write_cert(other, folder / "other-ca.pem"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls-home")
    with Registry.open(Settings.from_env(home=folder, actor="tester")) as reg:
        register_constant(reg, "const", 1)
    return folder


def _cli(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", "from modelyard.cli import main; main()", "--home", str(home),
            *args]


@contextlib.contextmanager
def _server(home: Path, certs: Certs, *extra: str, grpc_port: int | None = None
            ) -> Iterator[str]:
    """A TLS server process; yields its https URL once /readyz answers (checked with the CA
    and, when the server asks for one, the client certificate)."""
    port = free_port()
    args = ["serve", "--port", str(port), "--tls-cert", str(certs.cert), "--tls-key",
            str(certs.key), "--log-level", "warning", *extra]
    if grpc_port is not None:
        args += ["--grpc-port", str(grpc_port)]
    log = home / f"server-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(_cli(home, *args), stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"https://127.0.0.1:{port}"
    client = httpx.Client(verify=_context(certs, client=True), timeout=5)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()}")
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready: {log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(60)


def _context(certs: Certs, *, client: bool = False, ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca or certs.ca))
    if client:
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


def _healthy(env: dict[str, str]) -> bool:
    url, context = healthcheck.target(env)
    return healthcheck.healthy(url, context=context)


PREDICT = {"inputs": [[0.0, 0.0, 0.0]]}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_https_with_the_ca_and_never_plain_http(home, certs, workers):
    with _server(home, certs, "--workers", workers) as url:
        ok = httpx.post(f"{url}/v1/models/const/predict", json=PREDICT,
                        verify=_context(certs), timeout=10)
        assert ok.status_code == 200, ok.text
        assert ok.json()["predictions"] == [1]
        with httpx.Client(verify=_context(certs), timeout=10) as c:  # localhost: the SAN too
            assert c.get(url.replace("127.0.0.1", "localhost") + "/healthz").status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer
            httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/healthz", verify=_context(certs, ca=certs.other_ca), timeout=5)
        port = url.rsplit(":", 1)[1]  # the image's health check, with the server's variables
        env = {"MODELYARD_PORT": port, "MODELYARD_TLS_CERT": str(certs.cert)}
        assert _healthy(env)


def test_client_certificates_required_with_a_client_ca(home, certs):
    with _server(home, certs, "--tls-client-ca", str(certs.ca)) as url:
        ok = httpx.post(f"{url}/v1/models/const/predict", json=PREDICT,
                        verify=_context(certs, client=True), timeout=10)
        assert ok.status_code == 200, ok.text
        with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake fails
            httpx.get(f"{url}/healthz", verify=_context(certs), timeout=5)
        env = {"MODELYARD_PORT": url.rsplit(":", 1)[1], "MODELYARD_TLS_CERT": str(certs.cert),
               "MODELYARD_TLS_CLIENT_CA": str(certs.ca)}
        assert not _healthy(env)
        env.update(MODELYARD_TLS_HEALTHCHECK_CERT=str(certs.client_cert),
                   MODELYARD_TLS_HEALTHCHECK_KEY=str(certs.client_key))
        assert _healthy(env)


def test_grpc_over_tls_with_the_ca(home, certs):
    import tritonclient.grpc as grpcclient

    port = free_port()
    with _server(home, certs, "--no-preload", grpc_port=port):
        secure = grpcclient.InferenceServerClient(
            url=f"localhost:{port}", ssl=True, root_certificates=str(certs.ca))
        assert secure.is_server_live()
        assert secure.get_model_metadata("const").name == "const"
        plain = grpcclient.InferenceServerClient(url=f"localhost:{port}")
        with pytest.raises(Exception, match=r"(?i)unavailable|ssl|socket|connect"):
            plain.is_server_live(client_timeout=5)


def test_grpc_requires_the_client_certificate_with_a_client_ca(home, certs):
    import tritonclient.grpc as grpcclient

    port = free_port()
    with _server(home, certs, "--no-preload", "--tls-client-ca", str(certs.ca), grpc_port=port):
        with_cert = grpcclient.InferenceServerClient(
            url=f"localhost:{port}", ssl=True, root_certificates=str(certs.ca),
            private_key=str(certs.client_key), certificate_chain=str(certs.client_cert))
        assert with_cert.is_server_live()
        without = grpcclient.InferenceServerClient(
            url=f"localhost:{port}", ssl=True, root_certificates=str(certs.ca))
        with pytest.raises(Exception, match=r"(?i)unavailable|ssl|handshake|certificate"):
            without.is_server_live(client_timeout=5)


@pytest.mark.parametrize("which", ["--tls-cert", "--tls-key", "--tls-client-ca"])
def test_a_missing_certificate_file_is_one_line_and_exit_2(home, certs, tmp_path, which):
    files = {"--tls-cert": str(certs.cert), "--tls-key": str(certs.key),
             "--tls-client-ca": str(certs.ca)}
    files[which] = str(tmp_path / "missing.pem")
    args = [a for pair in files.items() for a in pair]
    done = subprocess.run(_cli(home, "serve", "--port", str(free_port()), *args),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and which in lines[0] and "missing.pem" in lines[0]


def test_a_certificate_without_its_key_is_refused(home, certs):
    done = subprocess.run(_cli(home, "serve", "--port", str(free_port()), "--tls-cert",
                               str(certs.cert), "--tls-key", str(certs.client_key)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "not a PEM certificate and its matching key" in done.stderr
