"""Where the registry lives: settings from arguments, then environment, then embedded defaults.

``MODELYARD_HOME``      folder of the embedded registry (default ``./.modelyard``)
``MODELYARD_DB``        SQLAlchemy URL of the registry database (default SQLite in the home)
``MODELYARD_ARTIFACTS`` artifact store: a folder or fsspec URL (default ``<home>/artifacts``)
``MODELYARD_ACTOR``     who is acting, recorded in the audit trail (default: the OS user)
``MODELYARD_STORE_TIMEOUT``  how long one try of a remote artifact store request may wait
                        (a duration, default ``30s``; three tries in all)

A remote store's endpoint, credentials and region come from where its own client looks (for S3:
``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_DEFAULT_REGION``...); see deploy/storage.md.
``MODELYARD_BAKED_ARTIFACTS`` a read-only folder of artifacts baked into a container image,
                       read before the artifact store (``modelyard build --bake``; default none)
``MODELYARD_ARTIFACT_KEY``  encrypt artifacts at rest with this key (base64 of 32 bytes;
                       ``modelyard store keygen``); unset: artifacts are stored as they are
``MODELYARD_ARTIFACT_KEY_PREVIOUS``  older keys (comma-separated) still accepted for reading
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from modelyard.errors import ConfigError

_DURATION = re.compile(r"^(\d{1,12}(?:\.\d{1,9})?)(ms|s|m|h|d)?$", re.ASCII)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: durations a window, interval or "ago" can have: 1 ms to 100 years (datetimes end at 9999).
MIN_DURATION_S = 0.001
MAX_DURATION_S = 100 * 365 * 86400.0


@dataclass(frozen=True)
class Settings:
    """Resolved locations of the registry database and artifact store, and the acting user."""

    home: Path
    db_url: str
    artifacts: str
    actor: str
    #: seconds one try of a remote artifact store request may wait (connect, or between reads)
    store_timeout_s: float = 30.0
    #: a read-only folder of artifact blobs baked into the image, read before ``artifacts``.
    baked_artifacts: str | None = None
    #: the key artifacts are encrypted with (base64), and older keys they may be read with;
    #: kept out of ``repr`` so a logged Settings never shows them
    artifact_key: str | None = field(default=None, repr=False)
    artifact_previous_keys: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_env(
        cls,
        *,
        home: str | Path | None = None,
        db_url: str | None = None,
        artifacts: str | None = None,
        actor: str | None = None,
    ) -> Settings:
        """Settings from explicit values, then ``MODELYARD_*`` variables, then the defaults."""
        env = os.environ
        home_path = Path(home or env.get("MODELYARD_HOME") or ".modelyard").absolute()
        timeout = env.get("MODELYARD_STORE_TIMEOUT")
        return cls(
            home=home_path,
            db_url=db_url or env.get("MODELYARD_DB") or f"sqlite:///{home_path / 'registry.db'}",
            artifacts=artifacts or env.get("MODELYARD_ARTIFACTS") or str(home_path / "artifacts"),
            actor=actor or env.get("MODELYARD_ACTOR") or _os_user(),
            store_timeout_s=30.0 if timeout is None else parse_duration(timeout),
            baked_artifacts=env.get("MODELYARD_BAKED_ARTIFACTS") or None,
            artifact_key=env.get("MODELYARD_ARTIFACT_KEY") or None,
            artifact_previous_keys=tuple(
                k.strip() for k in env.get("MODELYARD_ARTIFACT_KEY_PREVIOUS", "").split(",")
                if k.strip()),
        )

    @property
    def cache_dir(self) -> Path:
        """Where verified artifacts are unpacked for loading."""
        return self.home / "cache"


#: the highest version number there can be: the registry's column is a 32-bit integer on
#: PostgreSQL, so a bigger number is no version, on the command line or over HTTP.
MAX_VERSION = 2**31 - 1


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``1h``, ``2d`` or ``500ms`` (1 ms to 100 years)."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ConfigError(f"duration {text[:40]!r} is not valid; use e.g. 60s, 5m, 1h or 2d")
    seconds = float(match.group(1)) * _SECONDS[match.group(2) or "s"]
    if not MIN_DURATION_S <= seconds <= MAX_DURATION_S:
        raise ConfigError(f"duration {text[:40]!r} is out of range; give 1ms to 36500d")
    return seconds


def parse_since(text: str) -> datetime:
    """A point in time (UTC) from a duration ago (``1h``) or an ISO timestamp (UTC if none
    given)."""
    text = text.strip()
    if _DURATION.match(text):
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    try:
        when = datetime.fromisoformat(text)
        # in UTC, so the database never meets a time it cannot shift (year 1 at +01:00)
        return when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise ConfigError(f"since {text[:40]!r} is not valid; give a duration ago (30m, 1h, "
                          "2d) or an ISO time (2026-11-26T08:00)") from None


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


__all__ = ["MAX_DURATION_S", "MAX_VERSION", "MIN_DURATION_S", "Settings", "parse_duration",
           "parse_since"]
