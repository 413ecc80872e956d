"""Request ids that say when they were made, so the prediction log finds one without a scan.

A server names each request it was not given an id for with a UUIDv7 (RFC 9562): the first 48
bits are the Unix time in milliseconds. Looking an id up in the log
(:meth:`~modelyard.monitoring.logstore.DatabaseStore.find`, behind feedback and
``modelyard monitor request``) then reads only the chunks answered in the minutes after that
time, instead of every chunk the model ever logged. The 12 bits after the version hold
:data:`MARK`, which tells this server's ids from a client's own UUIDv7 (whose clock may be
another machine's): a client's id, or any other id, is searched in the whole log.

Ids are unique without a random draw per request (a ``getrandom`` system call each): 38 random
bits per process (a forked worker draws its own) and a 24-bit counter within it. They are not
secret.
"""

from __future__ import annotations

import itertools
import os
import re
import time

#: the 12 bits after the UUID version that mark an id this server made.
MARK = 0xA9D
_OURS = re.compile(rf"^([0-9a-f]{{8}})-([0-9a-f]{{4}})-7{MARK:03x}-[89ab][0-9a-f]{{3}}-"
                   r"[0-9a-f]{12}$")


class RequestIds:
    """A process's source of request ids (:meth:`new`); a forked child draws its own bits."""

    def __init__(self) -> None:
        self._ms = -1
        self._head = ""
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        bits = int.from_bytes(os.urandom(5)) >> 2  # 38 bits
        # the variant's two bits (10) lead the fourth group
        self._process = f"{0x8000 | bits >> 24:04x}-{bits & 0xFFFFFF:06x}"
        self._counter = itertools.count()
        self._ms = -1

    def new(self) -> str:
        """A new id: a UUIDv7 carrying this moment in milliseconds."""
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:  # under load, requests of one millisecond share the head
            self._ms = ms
            stamp = f"{ms:012x}"
            self._head = f"{stamp[:8]}-{stamp[8:]}-7{MARK:03x}-{self._process}"
        return f"{self._head}{next(self._counter) & 0xFFFFFF:06x}"


def issued_ms(request_id: str) -> int | None:
    """When a server of this project made ``request_id`` (ms since the epoch), or None for an
    id it did not make."""
    match = _OURS.match(request_id)
    return None if match is None else int(match.group(1) + match.group(2), 16)


__all__ = ["MARK", "RequestIds", "issued_ms"]
