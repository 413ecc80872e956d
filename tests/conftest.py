"""Shared fixtures: registries on SQLite and on the local PostgreSQL, an S3 endpoint, and tiny
artifact folders.

PostgreSQL tests get a database of their own, created here and dropped afterwards. Where the
server is unreachable they are skipped with the reason, except under ``CI``, where a missing
server is a failure so that nothing is silently skipped. The same holds for the S3 endpoint
(moto's server, started here once a session on 127.0.0.1) and the local Redis (``redis_url``:
a key prefix of the test's own, its keys deleted afterwards).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from modelyard.config import Settings
from modelyard.registry import Registry

PG_ADMIN_URL = os.environ.get(
    "MODELYARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)

ArtifactDir = Callable[..., Path]


def pg_server_url(dbname: str) -> str:
    """The URL of database ``dbname`` on the test PostgreSQL server."""
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def _admin_connect() -> Any:
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)


def _pg_unavailable(reason: str) -> NoReturn:
    message = f"PostgreSQL at {PG_ADMIN_URL} is not usable: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


@contextlib.contextmanager
def _pg_database() -> Iterator[str]:
    try:
        import psycopg
    except ImportError:
        _pg_unavailable("psycopg is not installed (pip install 'modelyard[postgres]')")
    name = f"modelyard_test_{uuid.uuid4().hex[:12]}"
    try:
        with _admin_connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _pg_unavailable(str(exc).strip().splitlines()[0])
    try:
        yield pg_server_url(name)
    finally:
        with _admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped at the end of the test."""
    with _pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def _pg_shared_url() -> Iterator[str]:
    # Creating and migrating a database costs ~1.5 s; registry tests share one, emptied per test.
    with _pg_database() as url:
        from modelyard.registry import Database

        db = Database(url)
        db.migrate()
        db.dispose()
        yield url


@dataclass(frozen=True)
class S3Server:
    """A real S3 endpoint on 127.0.0.1 that checks credentials: ``key``/``secret`` are a user's."""

    endpoint: str
    key: str
    secret: str
    region: str = "us-east-1"

    def env(self, **more: str) -> dict[str, str]:
        """The AWS variables that point any AWS client, s3fs included, at this server."""
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": self.region,
                # no profile or config file of the machine's user leaks into a test
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                **more}

    def client(self, service: str = "s3") -> Any:
        """A boto3 client for this server, as the user."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name=self.region)

    def new_bucket(self) -> str:
        """Create an empty bucket with a unique name; return the name."""
        name = f"modelyard-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def _s3_unavailable(reason: str) -> NoReturn:
    message = f"no S3 endpoint for the tests: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    _s3_unavailable(f"moto's server did not listen on port {port} within {timeout_s:g} s")


def _with_a_user(endpoint: str) -> S3Server:
    """Make a user with an access key that may do anything, then turn authentication on."""
    import boto3

    anyone = {"endpoint_url": endpoint, "aws_access_key_id": "setup",
              "aws_secret_access_key": "setup", "region_name": "us-east-1"}
    iam = boto3.client("iam", **anyone)
    iam.create_user(UserName="modelyard")
    key = iam.create_access_key(UserName="modelyard")["AccessKey"]
    everything = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="modelyard", PolicyName="all",
                        PolicyDocument=json.dumps(everything))
    # from here on every request must be signed with a key that exists (moto's own switch)
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).close()
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server in a child process on a free port of 127.0.0.1 (real HTTP, real
    signatures: a wrong key is refused), with one user; stopped at the end of the session."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        _s3_unavailable(f"{exc}; pip install 'moto[server]'")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, process, 60.0)
        yield _with_a_user(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


REDIS_URL = os.environ.get("MODELYARD_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture()
def redis_url() -> Iterator[str]:
    """The local Redis as a precompute store URL with a key prefix of this test's own; every
    key under it is deleted afterwards. Skipped when Redis is unreachable, failed under CI."""
    try:
        import redis
    except ImportError:
        _redis_unavailable("redis-py is not installed (pip install 'modelyard[redis]')")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        _redis_unavailable(str(exc))
    prefix = f"modelyard-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield f"{REDIS_URL}?prefix={prefix}"
    finally:
        for key in list(client.scan_iter(match=f"{prefix}*", count=1000)):
            client.delete(key)
        client.close()


def _redis_unavailable(reason: str) -> NoReturn:
    message = f"Redis at {REDIS_URL} is not usable: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[Registry]:
    """An embedded (SQLite) registry with its artifacts in ``tmp_path``."""
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as reg:
        yield reg


@pytest.fixture()
def pg_registry(tmp_path: Path, _pg_shared_url: str) -> Iterator[Registry]:
    """An empty registry on PostgreSQL (a database shared by the session), artifacts in tmp."""
    from modelyard.registry.tables import Base

    settings = Settings.from_env(home=tmp_path / "home", db_url=_pg_shared_url, actor="tester")
    with Registry.open(settings) as reg:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with reg.db.engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        yield reg


@pytest.fixture()
def artifact_dir(tmp_path: Path) -> ArtifactDir:
    """Build a tiny artifact folder: ``artifact_dir("weights-1")`` gives distinct content."""
    counter = iter(range(1_000_000))

    def make(content: str = "weights", name: str | None = None) -> Path:
        folder = tmp_path / "artifacts-src" / (name or f"a{next(counter)}")
        (folder / "sub").mkdir(parents=True)
        (folder / "model.bin").write_text(content)
        (folder / "sub" / "meta.json").write_text('{"k": 1}')
        return folder

    return make


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def any_registry(request: pytest.FixtureRequest) -> Registry:
    """The same test on the embedded SQLite registry and on PostgreSQL."""
    fixture = "registry" if request.param == "sqlite" else "pg_registry"
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]
