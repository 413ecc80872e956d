"""What every spec section shares: strict validation and durations such as ``"24h"``."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ConfigDict

#: every section refuses unknown fields and is immutable once validated.
STRICT = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


#: seconds per unit of a duration such as ``"24h"`` (``precompute.ttl``).
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_KEY_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a duration such as ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"``;
    :class:`ValueError` for anything else or a value not above 0."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration such as '24h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        found = _DURATION.match(str(value))
        if found is None:
            raise ValueError(f"{value!r} is not a duration; use seconds or a number with s, m, "
                             "h or d, such as '24h'")
        seconds = float(found.group(1)) * _UNITS[found.group(2) or "s"]
    if not 0 < seconds < float("inf"):
        raise ValueError("must be above 0 seconds")
    return seconds


__all__ = ["STRICT", "parse_duration"]
