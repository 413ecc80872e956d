"""The online store contract over each registered store: the registry database on SQLite and
PostgreSQL, and the real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.errors import ConfigError, StorageError
from modelyard.precompute.stores import OnlineStore, RedisStore, open_store
from modelyard.registry import Database

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = request.getfixturevalue("pg_url") if request.param == "postgres" else \
            f"sqlite:///{tmp_path / 'registry.db'}"
        db = Database(url)
        db.migrate()  # the tables are the registry's (migration 0007)
        db.dispose()
    opened = open_store(url)
    yield opened
    opened.close()


def test_answers_are_kept_per_version_and_replaced_per_key(store: OnlineStore) -> None:
    store.write("m", 1, [("a", b'{"prediction": 1}'), ("b", b'{"prediction": 2}')], 100.0, 60)
    store.write("m", 2, [("a", b'{"prediction": 9}')], 200.0, 60)
    store.write("m", 1, [("a", b'{"prediction": 3}')], 150.0, 60)  # a refresh of one key
    got = store.read("m", 1, ["a", "b", "c", "a"])
    assert {k: (v.answer, v.written_at) for k, v in got.items()} == {
        "a": (b'{"prediction": 3}', 150.0), "b": (b'{"prediction": 2}', 100.0)}
    assert set(store.read("m", 2, ["a", "b"])) == {"a"}
    assert store.read("other", 1, ["a"]) == {} and store.read("m", 1, []) == {}

    many = [(str(i), b'{"prediction": 0}') for i in range(1200)]
    store.write("m", 3, many, 1.0, 60)
    assert len(store.read("m", 3, [k for k, _ in many])) == 1200

    assert store.read_manifest("m", 1) is None
    store.write_manifest("m", 1, b'{"format": 1}')
    assert store.read_manifest("m", 1) == b'{"format": 1}'
    assert store.read_manifest("m", 2) is None
    store.write_manifest("m", 1, None)
    assert store.read_manifest("m", 1) is None


def test_redis_answers_expire_with_the_ttl(redis_url: str) -> None:
    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    try:
        store.write("m", 1, [("a", b'{"prediction": 1}')], 100.0, 90.5)
        assert 0 < store.client.ttl(f"{store.prefix}m:1:a") <= 91
    finally:
        store.close()


def test_unknown_and_unreachable_stores_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="no online store for 'memcached'"):
        open_store("memcached://x")
    down = open_store("redis://:secret@127.0.0.1:1/0")
    try:
        with pytest.raises(StorageError, match="cannot read precomputed") as caught:
            down.read("m", 1, ["a"])
        assert "secret" not in str(caught.value)
    finally:
        down.close()
