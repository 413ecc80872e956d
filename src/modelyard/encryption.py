"""Encryption at rest: artifacts sealed with AES-256-GCM before they reach the artifact store.

With ``MODELYARD_ARTIFACT_KEY`` set (base64 of 32 random bytes; ``modelyard store keygen``), the
registry's store is an :class:`EncryptedStore`: a blob is still named by the sha256 of its
plaintext (so lineage, dedup and digest checks are unchanged) but its bytes are::

    header  = MAGIC (8) | format 1 (1) | key id (8) | file id (16, random) | chunk size (4)
    chunk   = final flag (1) | nonce (12, random) | length (4) | ciphertext + GCM tag

Each chunk (1 MiB of plaintext) is sealed on its own, with the header, its index and its final
flag as associated data: a flipped byte, a truncated blob, a dropped, reordered or borrowed
chunk (from another blob) or a changed header fails authentication, and memory stays bounded by
one chunk. The key id (the first 8 bytes of sha256 over a label and the key) names the key a
blob was sealed with, so keys rotate: the current key seals, the current and previous keys
(``MODELYARD_ARTIFACT_KEY_PREVIOUS``, comma-separated) open, and ``modelyard store rekey``
re-seals every artifact with the current key. A blob without the magic is a plaintext artifact
from before encryption was turned on and loads as it is.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from modelyard.config import Settings
from modelyard.errors import ArtifactDecryptError, ConfigError, FrameworkMissingError
from modelyard.store import (
    MAGIC,
    BakedStore,
    FsspecStore,
    LocalStore,
    is_sealed,
    open_store,
    sha256_file,
    verify_file,
)

FORMAT = 1
CHUNK = 1 << 20
_MAX_CHUNK = 64 << 20  # a header naming more is corrupt: never read that much unauthenticated
_HEADER = struct.Struct(">8sB8s16sI")
_CHUNK_HEAD = struct.Struct(">B12sI")
_TAG = 16
_KEY_LABEL = b"modelyard artifact key id v1"

Inner = LocalStore | FsspecStore | BakedStore


def new_key() -> str:
    """A fresh key as ``MODELYARD_ARTIFACT_KEY`` takes it: base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(32)).decode()


def key_id(key: bytes) -> bytes:
    """The 8 bytes that name ``key`` in a sealed blob's header (not secret: a hash)."""
    return hashlib.sha256(_KEY_LABEL + key).digest()[:8]


def parse_key(text: str, where: str) -> bytes:
    """A key from its base64 text; ``where`` names the setting in the error."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{where} is not a key: give base64 of 32 random bytes "
                          "(make one with: modelyard store keygen)")
    return key


@dataclass(frozen=True)
class Keyring:
    """The key that seals (``current``) and every key that opens, by key id."""

    current: bytes
    keys: dict[bytes, bytes] = field(repr=False)

    def __repr__(self) -> str:
        return f"Keyring(current={key_id(self.current).hex()}, keys={len(self.keys)})"

    @classmethod
    def from_settings(cls, current: str | None, previous: Iterable[str] = ()) -> Keyring | None:
        """The keyring the settings name, or ``None`` when no artifact key is set."""
        if not current:
            return None
        key = parse_key(current, "MODELYARD_ARTIFACT_KEY")
        older = [parse_key(text, "MODELYARD_ARTIFACT_KEY_PREVIOUS")
                 for text in previous if text.strip()]
        return cls(key, {key_id(k): k for k in [*older, key]})

    def opener(self, kid: bytes, name: str) -> Any:
        """The AES-GCM cipher for key id ``kid`` (a clear error naming ``name`` if not held)."""
        key = self.keys.get(kid)
        if key is None:
            raise ArtifactDecryptError(
                f"artifact {name} was encrypted with key {kid.hex()}, which this process does "
                "not hold: set MODELYARD_ARTIFACT_KEY_PREVIOUS to that key, or check "
                "MODELYARD_ARTIFACT_KEY")
        return _aesgcm(key)


def _aesgcm(key: bytes) -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise FrameworkMissingError(
            "artifact encryption needs the cryptography package: "
            "pip install 'modelyard[crypto]'") from None
    return AESGCM(key)


def _aad(header: bytes, index: int, final: int) -> bytes:
    return header + struct.pack(">QB", index, final)


def seal_file(source: Path, dest: Path, keyring: Keyring, *, chunk_size: int = CHUNK) -> None:
    """Encrypt the file ``source`` into ``dest`` with the current key, a chunk at a time."""
    cipher = _aesgcm(keyring.current)
    header = _HEADER.pack(MAGIC, FORMAT, key_id(keyring.current), os.urandom(16), chunk_size)
    with open(source, "rb") as src, open(dest, "wb") as out:
        out.write(header)
        index, chunk = 0, src.read(chunk_size)
        while True:
            following = src.read(chunk_size) if chunk else b""
            final = 0 if following else 1
            nonce = os.urandom(12)
            sealed = cipher.encrypt(nonce, chunk, _aad(header, index, final))
            out.write(_CHUNK_HEAD.pack(final, nonce, len(sealed)) + sealed)
            if final:
                return
            index, chunk = index + 1, following


def open_file(source: Path, dest: Path, keyring: Keyring, name: str) -> None:
    """Decrypt the sealed file ``source`` into ``dest``; :class:`ArtifactDecryptError` if the
    key is not held or any byte was changed, dropped, added or moved (``dest`` is removed)."""
    try:
        with open(source, "rb") as src, open(dest, "wb") as out:
            _open_stream(src, out, keyring, name)
    except ArtifactDecryptError:
        dest.unlink(missing_ok=True)
        raise


def _open_stream(src: IO[bytes], out: IO[bytes], keyring: Keyring, name: str) -> None:
    header = src.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise _broken(name, "its header is cut short")
    magic, version, kid, _file_id, chunk_size = _HEADER.unpack(header)
    if magic != MAGIC or version != FORMAT:
        raise _broken(name, f"it is in an unknown format ({version})")
    cipher = keyring.opener(kid, name)
    for index in range(2**63):
        head = src.read(_CHUNK_HEAD.size)
        if not head:
            raise _broken(name, f"it ends before its last chunk (truncated after {index})")
        if len(head) < _CHUNK_HEAD.size:
            raise _broken(name, f"chunk {index} is cut short")
        final, nonce, length = _CHUNK_HEAD.unpack(head)
        if final > 1 or length > min(chunk_size, _MAX_CHUNK) + _TAG:
            raise _broken(name, f"chunk {index} has a malformed frame")
        sealed = src.read(length)
        out.write(_open_chunk(cipher, nonce, sealed, _aad(header, index, final), name, index))
        if final:
            break
    if src.read(1):
        raise _broken(name, "it has bytes after its last chunk")


def _open_chunk(cipher: Any, nonce: bytes, sealed: bytes, aad: bytes, name: str,
                index: int) -> bytes:
    from cryptography.exceptions import InvalidTag

    try:
        return bytes(cipher.decrypt(nonce, sealed, aad))
    except InvalidTag:
        raise _broken(name, f"chunk {index} fails authentication (changed, truncated, moved "
                            "or from another artifact)") from None


def _broken(name: str, why: str) -> ArtifactDecryptError:
    return ArtifactDecryptError(
        f"refusing encrypted artifact {name}: {why}; restore it from a backup or re-register "
        "the model")


class EncryptedStore:
    """An artifact store that seals blobs on the way in and opens and verifies them on the way
    out; plaintext blobs (written before encryption was on) load as they are."""

    def __init__(self, inner: Inner, keyring: Keyring, *, chunk_size: int = CHUNK) -> None:
        self.inner = inner
        self.keyring = keyring
        self.chunk_size = chunk_size

    def __repr__(self) -> str:
        return f"EncryptedStore({self.inner!r}, {self.keyring!r})"

    def put_file(self, path: Path) -> tuple[str, int]:
        """Seal and store the file at ``path``; return its plaintext digest and size."""
        digest, size = sha256_file(path), path.stat().st_size
        if not self.inner.exists(digest):
            with _scratch() as tmp:
                sealed = tmp / "sealed"
                seal_file(path, sealed, self.keyring, chunk_size=self.chunk_size)
                self.inner.put_as(sealed, digest)
        return digest, size

    def get_file(self, digest: str, dest: Path) -> Path:
        """The plaintext of blob ``digest`` at ``dest``, decrypted if sealed, then verified."""
        with _scratch(dest.parent) as tmp:
            raw = self.inner.get_raw(digest, tmp / "raw")
            if is_sealed(raw):
                open_file(raw, dest, self.keyring, digest[:12])
            else:
                shutil.move(raw, dest)
        verify_file(dest, digest)
        return dest

    def rekey(self, digest: str) -> bool:
        """Re-seal blob ``digest`` with the current key (plaintext blobs are sealed); return
        whether it was rewritten (``False``: already under the current key)."""
        current = key_id(self.keyring.current)
        with _scratch() as tmp:
            raw = self.inner.get_raw(digest, tmp / "raw")
            if _sealed_with(raw) == current:
                return False
            plain = tmp / "plain"
            self.get_file(digest, plain)  # opens with any held key and checks the digest
            sealed = tmp / "sealed"
            seal_file(plain, sealed, self.keyring, chunk_size=self.chunk_size)
            self.inner.put_as(sealed, digest, replace=True)
        return True

    def local_path(self, digest: str) -> Path | None:
        return None  # a stored blob may be sealed: always read through get_file

    def exists(self, digest: str) -> bool:
        return self.inner.exists(digest)

    def delete(self, digest: str) -> None:
        self.inner.delete(digest)


def artifact_store(settings: Settings) -> LocalStore | FsspecStore | BakedStore | EncryptedStore:
    """The artifact store ``settings`` name: an image's baked blobs read first, and sealed with
    ``MODELYARD_ARTIFACT_KEY`` when one is set."""
    shared = open_store(settings.artifacts, timeout_s=settings.store_timeout_s)
    store: Inner = shared
    if settings.baked_artifacts:  # an image's baked blobs, read before the shared store
        store = BakedStore(LocalStore(settings.baked_artifacts), shared)
    keyring = Keyring.from_settings(settings.artifact_key, settings.artifact_previous_keys)
    return store if keyring is None else EncryptedStore(store, keyring)


def _sealed_with(path: Path) -> bytes | None:
    """The key id a sealed blob names, or ``None`` for a plaintext blob."""
    with open(path, "rb") as fh:
        header = fh.read(_HEADER.size)
    if len(header) < _HEADER.size or not header.startswith(MAGIC):
        return None
    return bytes(_HEADER.unpack(header)[2])


@contextlib.contextmanager
def _scratch(near: Path | None = None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=near, prefix=".modelyard-seal-") as tmp:
        yield Path(tmp)


__all__ = ["CHUNK", "FORMAT", "EncryptedStore", "Keyring", "artifact_store", "key_id",
           "new_key", "open_file", "parse_key", "seal_file"]
