"""Encryption at rest: with MODELYARD_ARTIFACT_KEY the store holds sealed blobs (AES-GCM, in
chunks) named by the plaintext's digest; a changed, truncated, reordered or wrongly-keyed blob
refuses to load (exit 18); keys rotate; plaintext blobs from before still load."""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelyard.cli import main
from modelyard.config import Settings
from modelyard.encryption import EncryptedStore, Keyring, key_id, new_key, open_file, seal_file
from modelyard.errors import ArtifactDecryptError, ConfigError, IntegrityError
from modelyard.registry import Registry
from modelyard.store import MAGIC, LocalStore, sha256_file

_HEADER = 8 + 1 + 8 + 16 + 4
_FRAME = 1 + 12 + 4


def _ring(*keys: str) -> Keyring:
    ring = Keyring.from_settings(keys[0], keys[1:])
    assert ring is not None
    return ring


@pytest.fixture()
def key() -> str:
    return new_key()


def _chunks(blob: bytes) -> list[bytes]:
    """The sealed chunks of ``blob`` (each with its frame), after the header."""
    out, at = [], _HEADER
    while at < len(blob):
        length = struct.unpack(">I", blob[at + 13: at + 17])[0]
        out.append(blob[at: at + _FRAME + length])
        at += _FRAME + length
    return out


@pytest.mark.parametrize("size", [0, 1, 100, 4096, 4097, 3 * 4096 + 5])
def test_round_trip_in_chunks(tmp_path, key, size):
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(size))
    sealed, back = tmp_path / "sealed", tmp_path / "back"
    seal_file(plain, sealed, _ring(key), chunk_size=4096)
    blob = sealed.read_bytes()
    assert blob.startswith(MAGIC)
    assert len(_chunks(blob)) == max(1, -(-size // 4096))
    open_file(sealed, back, _ring(key), "a")
    assert back.read_bytes() == plain.read_bytes()


def _sealed(tmp_path: Path, key: str, size: int = 3 * 4096) -> tuple[Path, bytes]:
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(size))
    sealed = tmp_path / "sealed"
    seal_file(plain, sealed, _ring(key), chunk_size=4096)
    return sealed, sealed.read_bytes()


def _flip(blob: bytes) -> bytes:
    at = _HEADER + _FRAME + 10
    return blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1:]


def _drop_last(blob: bytes) -> bytes:
    return blob[: len(blob) - len(_chunks(blob)[-1])]


def _cut(blob: bytes) -> bytes:
    return blob[:-7]


def _swap(blob: bytes) -> bytes:
    one, two, three = _chunks(blob)
    return blob[:_HEADER] + two + one + three


def _header_chunk_size(blob: bytes) -> bytes:
    return blob[: _HEADER - 4] + struct.pack(">I", 8192) + blob[_HEADER:]


def _trailing(blob: bytes) -> bytes:
    return blob + b"x"


def _final_flag(blob: bytes) -> bytes:
    # mark the first chunk final and drop the rest: a truncation that claims to be whole
    first = _chunks(blob)[0]
    return blob[:_HEADER] + b"\x01" + first[1:]


TAMPERS = {"flipped byte": _flip, "last chunk dropped": _drop_last, "cut mid-chunk": _cut,
           "chunks swapped": _swap, "header changed": _header_chunk_size,
           "bytes appended": _trailing, "final flag forged": _final_flag}


@pytest.mark.parametrize("how", list(TAMPERS))
def test_a_tampered_blob_refuses_to_open(tmp_path, key, how):
    sealed, blob = _sealed(tmp_path, key)
    sealed.write_bytes(TAMPERS[how](blob))
    back = tmp_path / "back"
    with pytest.raises(ArtifactDecryptError, match="refusing encrypted artifact"):
        open_file(sealed, back, _ring(key), "a")
    assert not back.exists()


def test_a_chunk_from_another_blob_is_refused(tmp_path, key):
    sealed, blob = _sealed(tmp_path, key)
    (tmp_path / "b").mkdir()
    _, other = _sealed(tmp_path / "b", key)
    mixed = blob[:_HEADER] + _chunks(other)[0] + b"".join(_chunks(blob)[1:])
    sealed.write_bytes(mixed)
    with pytest.raises(ArtifactDecryptError, match="chunk 0 fails authentication"):
        open_file(sealed, tmp_path / "back", _ring(key), "a")


def test_a_wrong_key_names_the_key_it_needs(tmp_path, key):
    sealed, _ = _sealed(tmp_path, key)
    other = new_key()
    with pytest.raises(ArtifactDecryptError, match="MODELYARD_ARTIFACT_KEY_PREVIOUS") as err:
        open_file(sealed, tmp_path / "back", _ring(other), "a")
    assert key_id(_ring(key).current).hex() in str(err.value)
    assert err.value.exit_code == 18 and isinstance(err.value, IntegrityError)
    open_file(sealed, tmp_path / "back", _ring(other, key), "a")  # as a previous key


@pytest.mark.parametrize("bad", ["not base64!", "c2hvcnQ=", ""])
def test_a_malformed_key_is_a_config_error_naming_the_variable(bad):
    if not bad:
        assert Keyring.from_settings(bad) is None
        return
    with pytest.raises(ConfigError, match="MODELYARD_ARTIFACT_KEY is not a key"):
        Keyring.from_settings(bad)


def _settings(tmp_path: Path, key: str | None, *previous: str, **more: object) -> Settings:
    base = Settings.from_env(home=tmp_path / "home", actor="tester")
    return dataclasses.replace(base, artifact_key=key, artifact_previous_keys=previous, **more)


def _blob(reg: Registry, digest: str) -> Path:
    return Path(reg.settings.artifacts) / digest[:2] / digest


def test_registry_stores_sealed_blobs_named_by_the_plaintext_digest(tmp_path, key,
                                                                     artifact_dir):
    folder = artifact_dir("secret weights")
    with Registry.open(_settings(tmp_path / "plain", None)) as plain:
        expected = plain.register("m", folder, flavor="sklearn").artifact_digest
    with Registry.open(_settings(tmp_path, key)) as reg:
        assert isinstance(reg.store, EncryptedStore)
        assert key not in repr(reg.settings)
        version = reg.register("m", folder, flavor="sklearn")
        assert version.artifact_digest == expected  # lineage and dedup unchanged
        blob = _blob(reg, version.artifact_digest).read_bytes()
        assert blob.startswith(MAGIC) and b"secret weights" not in blob
        again = reg.register("m", folder, flavor="sklearn")
        assert again.artifact_digest == version.artifact_digest
        loaded = reg.artifact_path(version)
        assert (loaded / "model.bin").read_text() == "secret weights"


def test_a_tampered_blob_refuses_to_load_through_the_registry(tmp_path, key, artifact_dir):
    with Registry.open(_settings(tmp_path, key)) as reg:
        version = reg.register("m", artifact_dir("w"), flavor="sklearn")
        path = _blob(reg, version.artifact_digest)
        path.write_bytes(_flip(path.read_bytes()))
        with pytest.raises(ArtifactDecryptError, match="refusing to load m:1"):
            reg.artifact_path(version)
        assert not (reg.settings.cache_dir / version.artifact_digest).exists()


def test_plaintext_and_sealed_blobs_live_side_by_side(tmp_path, key, artifact_dir):
    with Registry.open(_settings(tmp_path, None)) as before:
        old = before.register("m", artifact_dir("old"), flavor="sklearn")
    with Registry.open(_settings(tmp_path, key)) as after:
        new = after.register("m", artifact_dir("new"), flavor="sklearn")
        after.clear_cache()
        assert (after.artifact_path(old) / "model.bin").read_text() == "old"
        assert (after.artifact_path(new) / "model.bin").read_text() == "new"
        assert not _blob(after, old.artifact_digest).read_bytes().startswith(MAGIC)
    with Registry.open(_settings(tmp_path, None)) as keyless:
        keyless.clear_cache()
        with pytest.raises(ArtifactDecryptError, match="no artifact key is set"):
            keyless.artifact_path(new)


def _cli(settings: Settings, *args: str, env: dict[str, str]):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["--home", str(settings.home), *args], env=env)


def test_rotation_then_rekey_moves_every_artifact_to_the_new_key(tmp_path, artifact_dir):
    old_key = new_key()
    with Registry.open(_settings(tmp_path, None)) as plain:
        first = plain.register("m", artifact_dir("plaintext"), flavor="sklearn")
    with Registry.open(_settings(tmp_path, old_key)) as reg:
        second = reg.register("m", artifact_dir("under the old key"), flavor="sklearn")
    keygen = CliRunner().invoke(main, ["store", "keygen"])
    assert keygen.exit_code == 0
    new = keygen.output.strip()
    assert len(Keyring.from_settings(new).current) == 32  # type: ignore[union-attr]

    with Registry.open(_settings(tmp_path, new)) as lost:  # the old key dropped too soon
        lost.clear_cache()
        with pytest.raises(ArtifactDecryptError, match=key_id(_ring(old_key).current).hex()):
            lost.artifact_path(second)
        assert (lost.artifact_path(first) / "model.bin").read_text() == "plaintext"

    settings = _settings(tmp_path, new, old_key)
    env = {"MODELYARD_ARTIFACT_KEY": new, "MODELYARD_ARTIFACT_KEY_PREVIOUS": old_key}
    done = _cli(settings, "store", "rekey", "--json", env=env)
    assert done.exit_code == 0, done.output
    assert '"rewritten": 2' in done.output
    again = _cli(settings, "store", "rekey", env=env)
    assert again.exit_code == 0 and "0 re-encrypted" in again.output

    with Registry.open(_settings(tmp_path, new)) as rotated:  # the old key is not needed now
        rotated.clear_cache()
        assert (rotated.artifact_path(second) / "model.bin").read_text() == "under the old key"
        assert _blob(rotated, first.artifact_digest).read_bytes().startswith(MAGIC)
        assert sha256_file(rotated.artifact_path(first) / "model.bin") == sha256_file(
            artifact_dir("plaintext") / "model.bin")


def test_rekey_without_a_key_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["--home", str(tmp_path), "store", "rekey"],
                                env={"MODELYARD_ARTIFACT_KEY": ""})
    assert result.exit_code == 2
    assert "needs MODELYARD_ARTIFACT_KEY" in result.output


def test_wrong_key_exits_18_from_the_cli(tmp_path, key, artifact_dir):
    with Registry.open(_settings(tmp_path, key)) as reg:
        reg.register("m", artifact_dir("w"), flavor="sklearn")
    result = CliRunner().invoke(
        main, ["--home", str(tmp_path / "home"), "predict", "m:1"], input='[{"a": 1}]',
        env={"MODELYARD_ARTIFACT_KEY": new_key()})
    assert result.exit_code == 18, result.output
    assert "MODELYARD_ARTIFACT_KEY_PREVIOUS" in result.output


def test_baked_blobs_load_whether_sealed_or_plaintext(tmp_path, key, artifact_dir):
    with Registry.open(_settings(tmp_path, key)) as reg:
        sealed_v = reg.register("m", artifact_dir("sealed"), flavor="sklearn")
        plain_v = reg.register("m", artifact_dir("plain"), flavor="sklearn")
        baked = tmp_path / "baked"
        # what 'build --bake' writes is get_file's output (plaintext); a raw copy is sealed
        reg.store.get_file(plain_v.artifact_digest, _into(baked, plain_v.artifact_digest))
        _into(baked, sealed_v.artifact_digest).write_bytes(
            _blob(reg, sealed_v.artifact_digest).read_bytes())
    empty = tmp_path / "elsewhere"
    settings = _settings(tmp_path / "image", key, baked_artifacts=str(baked))
    settings = dataclasses.replace(settings, db_url=reg.settings.db_url, artifacts=str(empty))
    with Registry.open(settings) as image:
        assert (image.artifact_path(plain_v) / "model.bin").read_text() == "plain"
        assert (image.artifact_path(sealed_v) / "model.bin").read_text() == "sealed"


def _into(folder: Path, digest: str) -> Path:
    path = folder / digest[:2] / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_the_store_wrapper_keeps_the_protocol(tmp_path, key):
    store = EncryptedStore(LocalStore(tmp_path / "s"), _ring(key), chunk_size=64)
    src = tmp_path / "x"
    src.write_bytes(b"y" * 1000)
    digest, size = store.put_file(src)
    assert (digest, size) == (sha256_file(src), 1000)
    assert store.exists(digest) and store.local_path(digest) is None
    assert store.get_file(digest, tmp_path / "out").read_bytes() == b"y" * 1000
    store.delete(digest)
    assert not store.exists(digest)


def test_batch_scores_with_an_encrypted_artifact(tmp_path, key):
    import json

    import numpy as np
    import pandas as pd

    from modelyard.testing import register_constant

    with Registry.open(_settings(tmp_path, key)) as reg:
        version = register_constant(reg, "const", 1)
        assert _blob(reg, version.artifact_digest).read_bytes().startswith(MAGIC)
    frame = pd.DataFrame(np.zeros((5, 3)), columns=["f0", "f1", "f2"])
    frame.to_parquet(tmp_path / "in.parquet")
    args = ["--home", str(tmp_path / "home"), "batch", "const", "-i",
            str(tmp_path / "in.parquet"), "-o", str(tmp_path / "out"), "--json"]
    done = CliRunner().invoke(main, args, env={"MODELYARD_ARTIFACT_KEY": key})
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["rows"] == 5
    shutil.rmtree(tmp_path / "home" / "cache")  # the unpacked copy is plaintext (documented)
    args[args.index("-o") + 1] = str(tmp_path / "out2")
    refused = CliRunner().invoke(main, args, env={"MODELYARD_ARTIFACT_KEY": new_key()})
    assert refused.exit_code == 18, refused.output
