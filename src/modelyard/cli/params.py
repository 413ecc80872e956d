"""Parameter types the commands share, so a number out of range is a usage error (exit 2)."""

from __future__ import annotations

import click

from modelyard.config import MAX_VERSION

#: a version number: 1 up to what the registry's column holds.
VERSION = click.IntRange(1, MAX_VERSION)
#: a TCP port (0: any free one).
PORT = click.IntRange(0, 65535)
#: a count the registry stores (requests, labels): 1 up to a billion.
COUNT = click.IntRange(1, 10**9)

__all__ = ["COUNT", "PORT", "VERSION"]
