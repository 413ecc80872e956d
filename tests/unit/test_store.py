"""The artifact store: content addressing, deterministic packing, atomic writes, verified reads."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import uuid
from pathlib import Path

import pytest

from modelyard import store as store_module
from modelyard.config import Settings
from modelyard.errors import ConfigError, IntegrityError, StorageError
from modelyard.registry import Registry
from modelyard.store import (
    STORE_ATTEMPTS,
    BakedStore,
    FsspecStore,
    LocalStore,
    open_store,
    pack_dir,
    remote_options,
    sha256_file,
    unpack,
)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _model_folder(root: Path) -> Path:
    _write(root / "model.bin", b"\x00\x01weights" * 100)
    _write(root / "config.json", b'{"depth": 3}')
    _write(root / "nested" / "deeper" / "vocab.txt", b"a\nb\n")
    (root / "empty").mkdir()
    return root


# -- content addressing -----------------------------------------------------------------------
def test_same_content_has_the_same_digest_and_is_stored_once(tmp_path):
    store = LocalStore(tmp_path / "store")
    a = _write(tmp_path / "a.bin", b"same bytes")
    b = _write(tmp_path / "b.bin", b"same bytes")
    c = _write(tmp_path / "c.bin", b"other bytes")
    da, size = store.put_file(a)
    db, _ = store.put_file(b)
    dc, _ = store.put_file(c)
    assert da == db == sha256_file(a) and dc != da
    assert size == len(b"same bytes")
    assert len(_files(store.root)) == 2
    assert store.exists(da) and store.local_path(da) == store.root / da[:2] / da
    store.delete(da)
    assert not store.exists(da) and store.local_path(da) is None
    store.delete(da)  # deleting twice is fine


def test_get_returns_the_bytes_that_were_put(tmp_path):
    store = LocalStore(tmp_path / "store")
    src = _write(tmp_path / "src.bin", os.urandom(3 << 20))  # spans several copy chunks
    digest, _ = store.put_file(src)
    out = store.get_file(digest, tmp_path / "out.bin")
    assert out.read_bytes() == src.read_bytes()


# -- deterministic packing --------------------------------------------------------------------
def test_pack_is_deterministic_regardless_of_mtimes_and_creation_order(tmp_path):
    one = _model_folder(tmp_path / "one")
    # the same content, created in a different order, with different times and modes
    two = tmp_path / "two"
    _write(two / "nested" / "deeper" / "vocab.txt", b"a\nb\n")
    (two / "empty").mkdir()
    _write(two / "config.json", b'{"depth": 3}')
    _write(two / "model.bin", b"\x00\x01weights" * 100)
    for path in two.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    (two / "config.json").chmod(0o600)
    d1 = sha256_file(pack_dir(one, tmp_path / "one.tar"))
    d2 = sha256_file(pack_dir(two, tmp_path / "two.tar"))
    d1_again = sha256_file(pack_dir(one, tmp_path / "one-again.tar"))
    assert d1 == d2 == d1_again
    (two / "model.bin").write_bytes(b"changed")
    assert sha256_file(pack_dir(two, tmp_path / "changed.tar")) != d1


@pytest.mark.parametrize("filters", [True, False], ids=["tar-filters", "no-tar-filters"])
def test_pack_and_unpack_round_trip(tmp_path, filters, monkeypatch):
    if filters and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no extraction filters")
    monkeypatch.setattr(store_module, "_DATA_FILTER", filters)
    src = _model_folder(tmp_path / "src")
    out = unpack(pack_dir(src, tmp_path / "a.tar"), tmp_path / "out")
    assert [p.relative_to(out) for p in _files(out)] == [p.relative_to(src) for p in _files(src)]
    for path in _files(src):
        assert (out / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert (out / "empty").is_dir()


# -- atomic writes ----------------------------------------------------------------------------
def test_put_leaves_no_temporary_files(tmp_path):
    store = LocalStore(tmp_path / "store")
    for i in range(5):
        store.put_file(_write(tmp_path / f"{i}.bin", f"blob {i}".encode()))
    names = [p.name for p in store.root.rglob("*") if p.is_file()]
    assert len(names) == 5
    assert not [n for n in names if n.startswith(".tmp")]


def test_a_failure_during_copy_leaves_no_blob_under_the_digest(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    src = _write(tmp_path / "big.bin", os.urandom(2 << 20))
    digest = sha256_file(src)

    def copy_half_then_fail(fsrc, fdst, length=0):
        fdst.write(fsrc.read(1 << 20))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", copy_half_then_fail)
    with pytest.raises(StorageError, match="No space left"):
        store.put_file(src)
    assert not store.exists(digest)
    assert _files(store.root) == []  # the partial temporary file is gone too
    monkeypatch.undo()
    assert store.put_file(src) == (digest, src.stat().st_size)  # and a retry succeeds


def test_a_failure_before_rename_leaves_no_blob(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    src = _write(tmp_path / "a.bin", b"payload")

    def no_rename(a, b):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(StorageError):
        store.put_file(src)
    assert _files(store.root) == []


# -- verified reads ---------------------------------------------------------------------------
def test_get_refuses_a_blob_whose_bytes_changed(tmp_path):
    store = LocalStore(tmp_path / "store")
    digest, _ = store.put_file(_write(tmp_path / "a.bin", b"original bytes"))
    blob = store.local_path(digest)
    assert blob is not None
    blob.write_bytes(b"tampered bytes")
    dest = tmp_path / "out.bin"
    with pytest.raises(IntegrityError, match=f"expected {digest[:12]}"):
        store.get_file(digest, dest)
    assert not dest.exists()  # the bad copy is not left behind for someone to load


def test_get_of_a_missing_blob_is_an_integrity_error(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(IntegrityError, match="missing"):
        store.get_file("ab" * 32, tmp_path / "out")


# -- unpack safety ----------------------------------------------------------------------------
def _tar_with(tmp_path: Path, *members: tarfile.TarInfo, data: bytes = b"evil") -> Path:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        for info in members:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return archive


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("../escaped.txt"),
        _member("ok/../../escaped.txt"),
        _member("link", tarfile.SYMTYPE, "/etc/passwd"),
        _member("link", tarfile.SYMTYPE, "../../escaped.txt"),
        _member("hard", tarfile.LNKTYPE, "/etc/passwd"),
        _member("dev", tarfile.CHRTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "symlink-abs", "symlink-out", "hardlink", "device"],
)
@pytest.mark.parametrize("filters", [True, False], ids=["tar-filters", "no-tar-filters"])
def test_unpack_rejects_malicious_members(tmp_path, member, filters, monkeypatch):
    if filters and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no extraction filters")
    monkeypatch.setattr(store_module, "_DATA_FILTER", filters)
    (tmp_path / "in").mkdir()
    archive = _tar_with(tmp_path / "in", member)
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(IntegrityError, match="cannot be unpacked safely"):
        unpack(archive, dest)
    assert not (tmp_path / "deep" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert not (dest / "link").is_symlink()
    assert not (dest / "dev").exists()


@pytest.mark.parametrize("filters", [True, False], ids=["tar-filters", "no-tar-filters"])
def test_unpack_never_writes_to_an_absolute_path(tmp_path, filters, monkeypatch):
    if filters and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no extraction filters")
    monkeypatch.setattr(store_module, "_DATA_FILTER", filters)
    target = Path(f"/tmp/modelyard-absolute-{uuid.uuid4().hex}.txt")
    (tmp_path / "in").mkdir()
    archive = _tar_with(tmp_path / "in", _member(str(target)))
    dest = tmp_path / "dest"
    try:
        unpack(archive, dest)
    except (tarfile.TarError, IntegrityError):
        pass  # refusing is fine too
    else:  # extracted, then only inside dest (the leading '/' is dropped)
        assert (dest / str(target).lstrip("/")).read_bytes() == b"evil"
    assert not target.exists()


# -- fsspec -----------------------------------------------------------------------------------
def test_fsspec_store_round_trip_on_memory(tmp_path):
    url = f"memory://modelyard-test-{uuid.uuid4().hex}/blobs"
    store = open_store(url)
    assert isinstance(store, FsspecStore)
    src = _write(tmp_path / "a.bin", b"remote bytes")
    digest, size = store.put_file(src)
    assert (digest, size) == (sha256_file(src), len(b"remote bytes"))
    assert store.exists(digest) and store.local_path(digest) is None
    assert store.put_file(_write(tmp_path / "b.bin", b"remote bytes"))[0] == digest
    keys = store.fs.find(store.base)
    assert len(keys) == 1 and keys[0].endswith(digest)  # stored once, no temporary keys
    out = store.get_file(digest, tmp_path / "out.bin")
    assert out.read_bytes() == b"remote bytes"
    with store.fs.open(keys[0], "wb") as fh:
        fh.write(b"tampered")
    with pytest.raises(IntegrityError):
        store.get_file(digest, tmp_path / "out2.bin")
    store.delete(digest)
    assert not store.exists(digest)
    with pytest.raises(IntegrityError, match="missing"):
        store.get_file(digest, tmp_path / "out3.bin")


def test_s3_waits_are_bounded_by_the_timeout_and_a_few_tries():
    options = remote_options("s3", 7.5)["config_kwargs"]
    assert options["connect_timeout"] == options["read_timeout"] == 7.5
    assert options["retries"] == {"max_attempts": STORE_ATTEMPTS, "mode": "standard"}
    assert remote_options("memory", 7.5) == {}  # others keep their client's own


def test_the_store_timeout_is_read_once_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MODELYARD_STORE_TIMEOUT", raising=False)
    assert Settings.from_env(home=tmp_path).store_timeout_s == 30.0
    monkeypatch.setenv("MODELYARD_STORE_TIMEOUT", "2m")
    assert Settings.from_env(home=tmp_path).store_timeout_s == 120.0
    monkeypatch.setenv("MODELYARD_STORE_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="soon"):
        Settings.from_env(home=tmp_path)


def test_an_unknown_store_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match="nosuchfs://bucket"):
        open_store("nosuchfs://bucket/prefix")


def test_a_failing_store_is_one_line_naming_the_url(tmp_path, monkeypatch):
    store = open_store(f"memory://modelyard-test-{uuid.uuid4().hex}/blobs")
    assert isinstance(store, FsspecStore)

    def refuse(*args, **kwargs):
        raise PermissionError("Access Denied\nRequestId: 42")

    # the file system object is fsspec's shared instance: patched for this test only
    monkeypatch.setattr(store.fs, "put_file", refuse)
    monkeypatch.setattr(store.fs, "exists", refuse)
    with pytest.raises(StorageError) as caught:
        store.put_file(_write(tmp_path / "a.bin", b"x"))
    message = str(caught.value)
    assert "\n" not in message and store.url in message
    assert "PermissionError: Access Denied" in message and "refused the credentials" in message


def test_open_store_picks_local_for_paths_and_file_urls(tmp_path):
    assert isinstance(open_store(tmp_path), LocalStore)
    local = open_store(f"file://{tmp_path}/s")
    assert isinstance(local, LocalStore) and local.root == tmp_path / "s"


def test_links_are_stored_as_the_files_they_point_to(tmp_path):
    outside = tmp_path / "weights.bin"
    outside.write_bytes(b"\x00\x01weights")
    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "model.bin").symlink_to(outside)
    archive = pack_dir(folder, tmp_path / "a.tar")
    dest = unpack(archive, tmp_path / "out")
    assert not (dest / "model.bin").is_symlink()
    assert (dest / "model.bin").read_bytes() == b"\x00\x01weights"


def test_a_dangling_link_is_refused_when_packing(tmp_path):
    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "gone.bin").symlink_to(tmp_path / "missing")
    with pytest.raises(StorageError, match="missing file"):
        pack_dir(folder, tmp_path / "a.tar")


def test_a_baked_blob_is_read_before_the_shared_store_and_verified(tmp_path):
    baked, shared = LocalStore(tmp_path / "baked"), LocalStore(tmp_path / "shared")
    digest, _ = baked.put_file(_write(tmp_path / "a", b"baked weights"))
    other, _ = shared.put_file(_write(tmp_path / "b", b"shared weights"))
    store = BakedStore(baked, shared)
    assert store.get_file(digest, tmp_path / "got-a").read_bytes() == b"baked weights"
    assert store.get_file(other, tmp_path / "got-b").read_bytes() == b"shared weights"
    assert store.exists(digest) and store.exists(other)
    (baked.root / digest[:2] / digest).write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="digest mismatch"):
        store.get_file(digest, tmp_path / "again")


def test_the_baked_folder_is_never_written_or_deleted_from(tmp_path):
    baked = LocalStore(tmp_path / "baked")
    digest, _ = baked.put_file(_write(tmp_path / "a", b"baked"))
    store = BakedStore(baked, LocalStore(tmp_path / "shared"))
    new, _ = store.put_file(_write(tmp_path / "n", b"new"))
    assert LocalStore(tmp_path / "shared").exists(new) and not baked.exists(new)
    store.delete(digest)
    assert baked.exists(digest)


def test_a_registry_loads_a_baked_version_without_the_shared_store(tmp_path, artifact_dir,
                                                                   monkeypatch):
    with Registry.open(home=tmp_path / "home") as reg:
        version = reg.register("m", artifact_dir(), flavor="python")
        blob = reg.store.local_path(version.artifact_digest)
        assert blob is not None
        LocalStore(tmp_path / "baked").put_file(blob)
        blob.unlink()  # the shared store no longer has it: only the baked copy remains
    monkeypatch.setenv("MODELYARD_BAKED_ARTIFACTS", str(tmp_path / "baked"))
    with Registry.open(Settings.from_env(home=tmp_path / "home")) as reg:
        folder = reg.artifact_path(reg.get_version("m", 1))
    assert (folder / "model.bin").read_text() == "weights"
