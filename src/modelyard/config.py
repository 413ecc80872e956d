"""Where the registry lives: settings from arguments, then environment, then embedded defaults.

``MODELYARD_HOME``      folder of the embedded registry (default ``./.modelyard``)
``MODELYARD_DB``        SQLAlchemy URL of the registry database (default SQLite in the home)
``MODELYARD_ARTIFACTS`` artifact store: a folder or fsspec URL (default ``<home>/artifacts``)
``MODELYARD_ACTOR``     who is acting, recorded in the audit trail (default: the OS user)
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Resolved locations of the registry database and artifact store, and the acting user."""

    home: Path
    db_url: str
    artifacts: str
    actor: str

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
        return cls(
            home=home_path,
            db_url=db_url or env.get("MODELYARD_DB") or f"sqlite:///{home_path / 'registry.db'}",
            artifacts=artifacts or env.get("MODELYARD_ARTIFACTS") or str(home_path / "artifacts"),
            actor=actor or env.get("MODELYARD_ACTOR") or _os_user(),
        )

    @property
    def cache_dir(self) -> Path:
        """Where verified artifacts are unpacked for loading."""
        return self.home / "cache"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


__all__ = ["Settings"]
