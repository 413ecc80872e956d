"""Encrypted artifacts on S3 for real (moto's server on 127.0.0.1): the bucket holds sealed
objects named by the plaintext's digest, a changed object refuses to load, and a rotation's
rekey overwrites each object whole."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from modelyard.config import Settings
from modelyard.encryption import EncryptedStore, new_key
from modelyard.errors import ArtifactDecryptError
from modelyard.registry import Registry
from modelyard.store import MAGIC

pytestmark = pytest.mark.integration


def _registry(tmp_path: Path, bucket: str, key: str, *previous: str) -> Registry:
    settings = Settings.from_env(home=tmp_path / "home", artifacts=f"s3://{bucket}/models",
                                 actor="tester")
    return Registry.open(dataclasses.replace(settings, artifact_key=key,
                                             artifact_previous_keys=previous))


def test_sealed_artifacts_on_s3(s3_server: Any, tmp_path: Path, artifact_dir: Any,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    old = new_key()
    with _registry(tmp_path, bucket, old) as reg:
        version = reg.register("m", artifact_dir("on s3"), flavor="sklearn")
        tampered = reg.register("m", artifact_dir("to tamper"), flavor="sklearn")
        key = f"models/{version.artifact_digest[:2]}/{version.artifact_digest}"
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body.startswith(MAGIC) and b"on s3" not in body
        assert (reg.artifact_path(version) / "model.bin").read_text() == "on s3"

        bad_key = f"models/{tampered.artifact_digest[:2]}/{tampered.artifact_digest}"
        raw = client.get_object(Bucket=bucket, Key=bad_key)["Body"].read()
        client.put_object(Bucket=bucket, Key=bad_key, Body=raw[:-1] + bytes([raw[-1] ^ 1]))
        with pytest.raises(ArtifactDecryptError, match="fails authentication"):
            reg.artifact_path(tampered)
        client.put_object(Bucket=bucket, Key=bad_key, Body=raw)  # restored

    new = new_key()
    with _registry(tmp_path, bucket, new, old) as reg:  # rotated: the old key still reads
        store = reg.store
        assert isinstance(store, EncryptedStore)
        assert store.rekey(version.artifact_digest) is True  # one PUT of the whole object
        assert store.rekey(version.artifact_digest) is False
    with _registry(tmp_path, bucket, new) as reg:  # the new key alone now
        reg.clear_cache()
        assert (reg.artifact_path(version) / "model.bin").read_text() == "on s3"
        with pytest.raises(ArtifactDecryptError, match="MODELYARD_ARTIFACT_KEY_PREVIOUS"):
            reg.artifact_path(tampered)  # not rekeyed: still under the old key
