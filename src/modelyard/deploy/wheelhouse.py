"""The wheels an image installs from: chosen from a cache, fetched on the host when missing.

A build inside Docker has no network, so every pinned distribution must be a wheel in the build
context. :func:`choose_wheels` (pure) picks, for each pin, the cached wheel this platform can
install; :func:`fetch` downloads only the pins no cached wheel covers (``pip download`` on the
host, which reaches the package index), so a second build of the same pins needs no network.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.tags import Tag, sys_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from modelyard.deploy.pins import Pin
from modelyard.errors import ConfigError


def choose_wheels(pins: Iterable[Pin], filenames: Iterable[str],
                  tags: Sequence[Tag]) -> tuple[dict[Pin, str], list[Pin]]:
    """For each pin, the best wheel among ``filenames`` for ``tags`` (most preferred first),
    and the pins no wheel covers."""
    rank = {tag: i for i, tag in reversed(list(enumerate(tags)))}
    offers: dict[tuple[str, Version], list[tuple[int, str]]] = {}
    for filename in filenames:
        try:
            name, version, _, wheel_tags = parse_wheel_filename(filename)
        except (InvalidWheelFilename, InvalidVersion):
            continue
        best = min((rank[t] for t in wheel_tags if t in rank), default=None)
        if best is not None:
            offers.setdefault((name, version), []).append((best, filename))
    chosen: dict[Pin, str] = {}
    missing: list[Pin] = []
    for pin in pins:
        found = offers.get((pin.name, Version(pin.version)))
        if found:
            chosen[pin] = min(found)[1]
        else:
            missing.append(pin)
    return chosen, missing


def cached(pins: Sequence[Pin], cache: Path) -> dict[Pin, Path]:
    """Each pin's wheel in ``cache``, downloading those that are missing first."""
    tags = list(sys_tags())
    chosen, missing = choose_wheels(pins, _wheels_in(cache), tags)
    if missing:
        fetch(missing, cache)
        chosen, missing = choose_wheels(pins, _wheels_in(cache), tags)
    if missing:
        raise ConfigError("no wheel for this platform was found for "
                          f"{', '.join(map(str, missing))}; an image installs wheels only")
    return {pin: cache / name for pin, name in chosen.items()}


def fetch(pins: Sequence[Pin], cache: Path) -> None:
    """Download the wheels of ``pins`` (no dependencies: the pins are already closed) into
    ``cache`` with this interpreter's pip and its configured indexes."""
    cache.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--quiet", "--dest", str(cache),
               *map(str, pins)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ConfigError(f"pip could not download the image's wheels: {' '.join(tail)}")


def _wheels_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.whl")) if folder.is_dir() else []


__all__ = ["cached", "choose_wheels", "fetch"]
