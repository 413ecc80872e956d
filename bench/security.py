"""What encryption at rest and the audit chain cost, each beside what it replaces, in one run.

    python bench/security.py                   # 64 MB artifact, 300 audited writes, SQLite
    python bench/security.py --db postgresql://postgres@127.0.0.1/bench_db --mb 256

1. Storing and loading an artifact: ``EncryptedStore`` (AES-256-GCM in 1 MiB chunks, then the
   digest check) against the plain ``LocalStore`` (copy, then the digest check), best of
   ``--repeat``, with the ratio.
2. An audited write (``Registry.record``: one transaction, one event) with the chain (the lock,
   insert, predecessor read, hash update) against the same event as one plain insert (what
   modelyard did before the chain), the mean of ``--writes``, with the ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from modelyard.config import Settings
from modelyard.encryption import EncryptedStore, Keyring, new_key
from modelyard.registry import Registry, audit_chain
from modelyard.store import LocalStore


def best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def store_costs(folder: Path, mb: int, repeat: int) -> None:
    src = folder / "artifact.tar"
    src.write_bytes(os.urandom(mb << 20))
    ring = Keyring.from_settings(new_key())
    assert ring is not None
    makers: dict[str, Callable[[Path], Any]] = {
        "plain": LocalStore, "encrypted": lambda d: EncryptedStore(LocalStore(d), ring)}
    timings: dict[str, tuple[float, float]] = {}
    for name, make in makers.items():
        counter = iter(range(10_000))
        stored = make(folder / f"{name}-read")
        digest, _ = stored.put_file(src)
        put_s = best(lambda m=make, n=name, c=counter: m(folder / f"{n}-{next(c)}").put_file(src),
                     repeat)
        get_s = best(lambda s=stored, d=digest: s.get_file(d, folder / "out"), repeat)
        timings[name] = (put_s, get_s)
        print(f"{name:>10}: put {put_s * 1000:8.1f} ms ({mb / put_s:7.0f} MB/s)   "
              f"get {get_s * 1000:8.1f} ms ({mb / get_s:7.0f} MB/s)")
    (pp, pg), (ep, eg) = timings["plain"], timings["encrypted"]
    print(f"{'ratio':>10}: put x{ep / pp:.2f}   get x{eg / pg:.2f}")


def _plain_append(s: Any) -> None:
    """The audit write before the chain: each queued event as one insert, no lock, no hash."""
    for event in s.info.pop(audit_chain._PENDING, []):
        s.execute(audit_chain._INSERT, event)


def audit_costs(home: Path, db: str | None, writes: int) -> None:
    settings = Settings.from_env(home=home, db_url=db, actor="bench")
    with Registry.open(settings) as reg:
        def run() -> float:
            start = time.perf_counter()
            for i in range(writes):
                reg.record("bench.write", f"m{i % 10}", {"i": i})
            return (time.perf_counter() - start) / writes

        run()  # warm the connection pool and the statement cache
        chained = run()
        with mock.patch("modelyard.registry.database.append_pending", _plain_append):
            plain = run()
    print(f"audited write ({reg.db.dialect}): plain insert {plain * 1e6:7.0f} us   "
          f"chained {chained * 1e6:7.0f} us   ratio x{chained / plain:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--db", default=None, help="registry URL (default: SQLite in a tmp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        store_costs(Path(tmp), args.mb, args.repeat)
        audit_costs(Path(tmp) / "home", args.db, args.writes)


if __name__ == "__main__":
    main()
