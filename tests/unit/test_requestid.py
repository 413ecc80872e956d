"""Request ids a server makes: UUIDv7 with this moment in them, unique across forked workers."""

from __future__ import annotations

import os
import time
import uuid

from modelyard.monitoring.requestid import RequestIds, issued_ms


def test_a_made_id_is_a_uuid7_that_says_when_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    rid = RequestIds().new()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(rid)
    assert str(parsed) == rid and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    made = issued_ms(rid)
    assert made is not None and before <= made <= after


def test_ids_are_unique_in_a_process_and_across_a_fork() -> None:
    ids = RequestIds()
    mine = {ids.new() for _ in range(10_000)}
    assert len(mine) == 10_000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a worker that forked from the same parent state
        os.write(write, "\n".join(ids.new() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split("\n"))
    parent = {ids.new() for _ in range(100)}
    assert len(child) == 100 and not child & parent
    # the child drew its own random bits: its ids differ from the parent's past the counter
    assert {c[19:30] for c in child}.isdisjoint({p[19:30] for p in parent})


def test_ids_the_server_did_not_make_carry_no_time() -> None:
    assert issued_ms("client-7") is None
    assert issued_ms(str(uuid.uuid4())) is None
    assert issued_ms("0190a1b2-c3d4-7123-8456-789abcdef012") is None  # a client's own UUIDv7
