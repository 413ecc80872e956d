"""Content-addressed artifact storage: a local folder by default, any fsspec URL at scale.

A model artifact is a folder (whatever the adapter wrote). It is packed into a deterministic tar,
named by the sha256 of its bytes and stored once. Writes are atomic (a temporary name then a
rename on a file system; one upload, which an object store publishes whole, on S3, GCS or Azure)
so a crash never leaves half an artifact under a real digest; reads verify the digest and refuse
a mismatch. A remote store that fails is a one-line :class:`StorageError` within a bounded time
(:func:`remote_options`), never a hang.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modelyard.errors import (
    ArtifactDecryptError,
    ConfigError,
    FrameworkMissingError,
    IntegrityError,
    StorageError,
)

_CHUNK = 1 << 20
log = logging.getLogger(__name__)
#: the first bytes of an encrypted artifact (modelyard/encryption.py); a tar never starts so
MAGIC = b"\x89MYA\r\n\x1a\n"


def cached_artifact(cache_dir: Path, digest: str, ref: str,
                    fetch: Callable[[Path], Path]) -> Path:
    """A local folder holding the artifact ``digest`` (of version ``ref``), verified.

    Unpacked once into ``cache_dir/<digest>/`` and checked again on every call: the folder is
    re-packed in memory (:func:`digest_dir`) and must give back the digest, so a changed or
    added file is caught; such a copy is logged, removed and unpacked again. ``fetch(dest)``
    writes the verified archive to ``dest`` (from the store, or a server); its
    :class:`IntegrityError` is raised naming ``ref``, and nothing is unpacked.
    """
    target = cache_dir / digest
    if target.is_dir():
        if digest_dir(target) == digest:
            return target
        log.error("the cached copy of %s in %s was changed (a file in it was modified, added "
                  "or removed); it is discarded and unpacked again", ref, target)
        _discard(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpack-") as tmp:
        archive = Path(tmp) / "a.tar"
        try:
            fetch(archive)
        except IntegrityError as exc:  # and ArtifactDecryptError: a key or a tamper
            raise type(exc)(
                f"refusing to load {ref}: {exc}; the stored artifact is corrupt or was "
                "changed; re-register the model or restore the artifact store") from None
        staged = unpack(archive, Path(tmp) / "content")
        try:
            staged.rename(target)
        except OSError:  # another process unpacked it first
            if not target.is_dir():
                raise
    return target


def _discard(folder: Path) -> None:
    """Remove a cached folder; renamed first, so a concurrent unpack never sees half of it."""
    stale = folder.with_name(f".stale-{uuid.uuid4().hex}")
    try:
        folder.rename(stale)
    except OSError:  # another process discarded it first
        return
    shutil.rmtree(stale, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pack_dir(folder: Path, dest: Path) -> Path:
    """Pack ``folder`` into the tar file ``dest``; the same content always gives the same bytes.

    Symbolic links are stored as the files they point to (snapshot folders are full of them),
    so an artifact is self-contained and unpacks without links.
    """
    with open(dest, "wb") as out:
        _write_tar(folder, out)
    return dest


def digest_dir(folder: Path) -> str:
    """The sha256 of the tar :func:`pack_dir` would write for ``folder``, written nowhere.

    An unpacked artifact gives back its own digest until a file in it is changed, added or
    removed, which is how a cached copy is checked before it is loaded. Costs one read of every
    file (sha256 runs at roughly 1-2 GB/s per core).
    """
    sink = _HashingSink()
    _write_tar(folder, sink)
    return sink.hexdigest()


class _HashingSink:
    """A write-only file that hashes what is written to it (all ``tarfile`` needs of a file)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._offset = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _write_tar(folder: Path, out: Any) -> None:
    with tarfile.TarFile(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, dereference=True,
                         copybufsize=_CHUNK) as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink() and not path.exists():
                raise StorageError(f"cannot store {path}: it is a link to a missing file")
            info = tar.gettarinfo(str(path.resolve()), arcname=rel)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            elif path.is_dir():
                tar.addfile(info)


def unpack(archive: Path, dest: Path) -> Path:
    """Extract a packed artifact into ``dest``; nothing is ever written outside ``dest``.

    The ``data`` filter refuses links that leave the folder, devices and unsafe modes; a
    refused member raises :class:`IntegrityError` (a store entry modelyard did not write).
    """
    try:
        with tarfile.open(archive, "r") as tar:
            if _DATA_FILTER:
                tar.extractall(dest, filter="data")
            else:
                _extract_plain(tar, dest)
    except (tarfile.TarError, OSError) as exc:
        raise IntegrityError(f"artifact archive cannot be unpacked safely: {exc}") from None
    return dest


#: whether this Python's tarfile has extraction filters (3.11.4+, 3.12); Debian 12's 3.11.2,
#: the Python of a Debian-based image, does not.
_DATA_FILTER = hasattr(tarfile, "data_filter")


def _extract_plain(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack without tarfile's filters: only plain files and folders, named inside ``dest``
    (what :func:`pack_dir` writes), all checked before any is written; no owners or modes
    are taken from the archive."""
    members = tar.getmembers()
    for member in members:
        if not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"{member.name!r} is neither a file nor a folder")
        if member.name.startswith("/") or ".." in member.name.split("/"):
            raise tarfile.TarError(f"{member.name!r} would be written outside the folder")
    for member in members:
        tar.extract(member, dest, set_attrs=False)


class BakedStore:
    """Blobs baked into a container image, read first; the shared store behind it for the rest.

    ``modelyard build --bake`` copies chosen versions' blobs into the image under the same
    ``<aa>/<digest>`` layout a :class:`LocalStore` uses, so a server on an air-gapped target loads
    them without reaching the shared store. The baked folder is read-only: writes and deletes go
    to the shared store, and a baked blob is verified by its digest on every read, like any other.
    """

    def __init__(self, baked: LocalStore, shared: LocalStore | FsspecStore) -> None:
        self.baked = baked
        self.shared = shared

    def __repr__(self) -> str:
        return f"BakedStore({self.baked!r}, {self.shared!r})"

    def put_file(self, path: Path) -> tuple[str, int]:
        return self.shared.put_file(path)

    def get_file(self, digest: str, dest: Path) -> Path:
        if self.baked.exists(digest):
            return self.baked.get_file(digest, dest)
        return self.shared.get_file(digest, dest)

    def put_as(self, path: Path, digest: str, *, replace: bool = False) -> None:
        self.shared.put_as(path, digest, replace=replace)

    def get_raw(self, digest: str, dest: Path) -> Path:
        if self.baked.exists(digest):
            return self.baked.get_raw(digest, dest)
        return self.shared.get_raw(digest, dest)

    def local_path(self, digest: str) -> Path | None:
        return self.baked.local_path(digest) or self.shared.local_path(digest)

    def exists(self, digest: str) -> bool:
        return self.baked.exists(digest) or self.shared.exists(digest)

    def delete(self, digest: str) -> None:
        self.shared.delete(digest)


class LocalStore:
    """Blobs under a local folder, at ``<root>/<aa>/<digest>``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put_file(self, path: Path) -> tuple[str, int]:
        """Store the file at ``path`` (atomically); return its digest and size."""
        digest = sha256_file(path)
        self.put_as(path, digest)
        return digest, self._path(digest).stat().st_size

    def put_as(self, path: Path, digest: str, *, replace: bool = False) -> None:
        """Store the file at ``path`` under the name ``digest`` (atomically; an encrypted
        blob is named by its plaintext's digest). An existing blob is kept unless ``replace``."""
        target = self._path(digest)
        if target.exists() and not replace:
            return
        tmp: Path | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            tmp = Path(name)
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write artifact to {self.root}: {exc}") from None

    def get_file(self, digest: str, dest: Path) -> Path:
        """Copy blob ``digest`` to ``dest`` and verify it."""
        self.get_raw(digest, dest)
        verify_file(dest, digest)
        return dest

    def get_raw(self, digest: str, dest: Path) -> Path:
        """Copy blob ``digest`` to ``dest`` as stored, unverified (it may be encrypted)."""
        source = self._path(digest)
        if not source.exists():
            raise IntegrityError(f"artifact {digest[:12]} is missing from {self.root}")
        shutil.copyfile(source, dest)
        return dest

    def local_path(self, digest: str) -> Path | None:
        """The blob's own path, so a local read needs no copy."""
        path = self._path(digest)
        return path if path.exists() else None

    def exists(self, digest: str) -> bool:
        return self._path(digest).exists()

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)


#: fsspec protocols of object stores, which publish an upload whole when it completes (one PUT,
#: or a multipart upload's final request) and never show part of an object under its key.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"})
#: tries per store request (the first and its retries), for requests that fail to connect, time
#: out or are throttled: together with the timeout, how long a dead endpoint is waited for.
STORE_ATTEMPTS = 3


def remote_options(protocol: str, timeout_s: float) -> dict[str, Any]:
    """fsspec options that bound every wait on a remote store to about ``timeout_s`` a try.

    The endpoint, credentials and region are not among them: s3fs reads those where every AWS
    tool does (``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_DEFAULT_REGION``, a
    profile, an instance role), so a store URL carries no secret.
    """
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {
            "connect_timeout": timeout_s, "read_timeout": timeout_s,
            "retries": {"max_attempts": STORE_ATTEMPTS, "mode": "standard"}}}
    return {}  # other stores keep their client's own timeouts (see deploy/storage.md)


class FsspecStore:
    """Blobs under any fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``memory://...``).

    A blob is at ``<prefix>/<aa>/<digest>``. Every failure of the store itself (unreachable,
    refused credentials, a timeout) is a one-line :class:`StorageError`; a missing or changed
    blob is an :class:`IntegrityError`. ``timeout_s`` bounds each try of each request.
    """

    def __init__(self, url: str, *, timeout_s: float = 30.0, **options: Any) -> None:
        import fsspec

        self.url = url.rstrip("/")
        protocol = self.url.split("://", 1)[0]
        try:
            self.fs, self.base = fsspec.core.url_to_fs(
                self.url, **{**remote_options(protocol, timeout_s), **options})
        except ImportError as exc:
            raise FrameworkMissingError(
                f"the artifact store {self.url} needs a package that is not installed ({exc}); "
                "for S3: pip install 'modelyard[s3]'") from None
        except ValueError as exc:
            raise ConfigError(f"artifact store {self.url!r} is not understood: {exc}") from None
        if protocol in ("s3", "s3a"):
            # s3fs retries failed calls itself (5 tries, backing off) around botocore's own
            # retries; left in place a dead endpoint would be waited for minutes, not seconds
            self.fs.retries = 1
        self._atomic = protocol in OBJECT_STORES

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"

    def _key(self, digest: str) -> str:
        return f"{self.base}/{digest[:2]}/{digest}"

    def put_file(self, path: Path) -> tuple[str, int]:
        digest = sha256_file(path)
        self.put_as(path, digest)
        return digest, path.stat().st_size

    def put_as(self, path: Path, digest: str, *, replace: bool = False) -> None:
        """Store the file at ``path`` under the name ``digest``; an existing blob is kept
        unless ``replace`` (then overwritten whole: one upload, or a temporary name moved)."""
        key = self._key(digest)
        with self._failures("write artifact to"):
            if not replace and self.fs.exists(key):
                return
            if self._atomic:
                # An object store never shows an upload before it completes, so the blob's
                # own key is written directly: a reader finds all of it or nothing.
                self.fs.put_file(str(path), key)
                return
            # A plain file system shows a file while it is written: a temporary name, then a
            # move, keeps half a blob from ever appearing under its digest.
            tmp = f"{key}.tmp-{os.getpid()}-{id(path)}"
            self.fs.makedirs(key.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(path), tmp)
            self.fs.mv(tmp, key)

    def get_file(self, digest: str, dest: Path) -> Path:
        self.get_raw(digest, dest)
        verify_file(dest, digest)
        return dest

    def get_raw(self, digest: str, dest: Path) -> Path:
        """Download blob ``digest`` to ``dest`` as stored, unverified (it may be encrypted)."""
        try:
            with self._failures("read artifact from", missing=True):
                self.fs.get_file(self._key(digest), str(dest))
        except FileNotFoundError:
            raise IntegrityError(f"artifact {digest[:12]} is missing from {self.url}") from None
        return dest

    def local_path(self, digest: str) -> Path | None:
        return None

    def exists(self, digest: str) -> bool:
        with self._failures("read"):
            return bool(self.fs.exists(self._key(digest)))

    def delete(self, digest: str) -> None:
        key = self._key(digest)
        with self._failures("delete artifact from"):
            if self.fs.exists(key):
                self.fs.rm(key)

    @contextlib.contextmanager
    def _failures(self, doing: str, *, missing: bool = False) -> Iterator[None]:
        """Turn what the file system and its client raise into one :class:`StorageError` line;
        ``missing=True`` lets a missing key through as ``FileNotFoundError`` for the caller to
        name (elsewhere a missing key means a missing bucket or folder)."""
        try:
            yield
        except FileNotFoundError as exc:
            if missing:
                raise
            raise StorageError(f"cannot {doing} {self.url}: {_one_line(exc)}; create the "
                               "bucket (or folder), or correct MODELYARD_ARTIFACTS") from None
        except Exception as exc:  # botocore, aiohttp, gcsfs... each raises its own kinds
            raise StorageError(f"cannot {doing} {self.url}: {_one_line(exc)}; "
                               f"{_hint(exc)}") from None


def _hint(exc: BaseException) -> str:
    """What to check for a store that failed this way."""
    if isinstance(exc, PermissionError):
        return ("the store refused the credentials or they lack a permission: check "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the role) and the policy in "
                "deploy/storage.md")
    return ("check the store URL, its endpoint (AWS_ENDPOINT_URL_S3 for S3-compatible "
            "storage), credentials and network; see deploy/storage.md")


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: its kind, then the first line of its message."""
    text = str(exc).strip().splitlines()
    first = text[0][:300] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def open_store(location: str | Path, *, timeout_s: float = 30.0) -> LocalStore | FsspecStore:
    """A store for a local path or ``file://`` URL, or an fsspec URL for anything else.

    ``timeout_s`` bounds each try of each request to a remote store (``MODELYARD_STORE_TIMEOUT``
    through :class:`~modelyard.config.Settings`).
    """
    text = str(location)
    if "://" not in text:
        return LocalStore(text)
    if text.startswith("file://"):
        return LocalStore(text[len("file://") :])
    return FsspecStore(text, timeout_s=timeout_s)


def is_sealed(path: Path) -> bool:
    """Whether the file at ``path`` is an encrypted artifact (it starts with :data:`MAGIC`)."""
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC


def verify_file(path: Path, digest: str) -> None:
    """Check that the file at ``path`` has the sha256 ``digest``; remove it and raise if not."""
    actual = sha256_file(path)
    if actual != digest:
        sealed = is_sealed(path)
        path.unlink(missing_ok=True)
        if sealed:
            raise ArtifactDecryptError(
                f"artifact {digest[:12]} is encrypted and no artifact key is set; set "
                "MODELYARD_ARTIFACT_KEY (and MODELYARD_ARTIFACT_KEY_PREVIOUS for older keys)")
        raise IntegrityError(
            f"artifact digest mismatch: expected {digest[:12]}, got {actual[:12]}"
        )


__all__ = [
    "MAGIC",
    "OBJECT_STORES",
    "STORE_ATTEMPTS",
    "FsspecStore",
    "LocalStore",
    "cached_artifact",
    "digest_dir",
    "is_sealed",
    "open_store",
    "pack_dir",
    "remote_options",
    "sha256_file",
    "unpack",
    "verify_file",
]
