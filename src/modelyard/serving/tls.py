"""Transport security: ``serve --tls-cert/--tls-key`` (HTTPS and gRPC over TLS) and, with
``--tls-client-ca``, client certificates required and checked against that CA (mutual TLS).

The files are read when the server starts (and by each ``--workers`` process): a missing,
unreadable or mismatched file is a :class:`~modelyard.errors.ConfigError` naming the option,
which the CLI prints as one line with exit 2, before any model loads.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError


@dataclass(frozen=True)
class TLSFiles:
    """The PEM files of a server's TLS: its certificate chain, its key, and the CA that client
    certificates must chain to (``None``: clients are not asked for one)."""

    cert: str
    key: str
    client_ca: str | None = None

    @classmethod
    def of(cls, cert: str | None, key: str | None, client_ca: str | None = None
           ) -> TLSFiles | None:
        """The files named, or ``None`` for plain HTTP; half a pair is a :class:`ConfigError`."""
        if not cert and not key:
            if client_ca:
                raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key: client "
                                  "certificates are checked on a TLS connection")
            return None
        if not cert or not key:
            raise ConfigError("--tls-cert and --tls-key go together: give the server's "
                              "certificate (PEM) and its private key (PEM)")
        return cls(cert, key, client_ca or None)

    def read(self, option: str, path: str) -> bytes:
        """The bytes of ``path``; a :class:`ConfigError` naming ``option`` if they cannot be."""
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{option} {path}: cannot read it ({exc.strerror or exc}); "
                              "give a readable PEM file") from None


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """The server-side TLS context for HTTPS (TLS 1.2 or newer)."""
    for option, path in (("--tls-cert", files.cert), ("--tls-key", files.key),
                         ("--tls-client-ca", files.client_ca)):
        if path is not None:
            files.read(option, path)  # a clear error for a missing file, before ssl's own
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        raise ConfigError(f"--tls-cert {files.cert} / --tls-key {files.key}: not a PEM "
                          f"certificate and its matching key ({exc.reason or exc})") from None
    if files.client_ca is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"--tls-client-ca {files.client_ca}: not a PEM CA certificate "
                              f"({exc.reason or exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_credentials(files: TLSFiles, grpc: Any) -> Any:
    """The gRPC server credentials for the same files (client certificates required with a
    client CA)."""
    pair = (files.read("--tls-key", files.key), files.read("--tls-cert", files.cert))
    roots = files.read("--tls-client-ca", files.client_ca) if files.client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots,
                                       require_client_auth=roots is not None)


__all__ = ["TLSFiles", "grpc_credentials", "server_context"]
