"""What the global options chose, shared by every command through click's context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from modelyard.config import Settings
    from modelyard.registry import Registry


@dataclass
class State:
    """What the global options chose; opens the registry on first use and closes it at exit."""

    home: str | None = None
    db: str | None = None
    artifacts: str | None = None
    _registry: Registry | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        """Resolved settings: global options, then ``MODELYARD_*`` variables, then defaults."""
        from modelyard.config import Settings

        return Settings.from_env(home=self.home, db_url=self.db, artifacts=self.artifacts)

    def registry(self) -> Registry:
        """The registry these settings name (migrated on first open)."""
        if self._registry is None:
            from modelyard.registry import Registry

            self._registry = Registry.open(self.settings())
            click.get_current_context().call_on_close(self._registry.close)
        return self._registry

    def global_args(self) -> str:
        """The global options as typed, to repeat in suggested commands (``--home X ``)."""
        parts = [f"--{name} {value}" for name, value in
                 (("home", self.home), ("db", self.db), ("artifacts", self.artifacts)) if value]
        return " ".join(parts) + " " if parts else ""


pass_state = click.make_pass_decorator(State, ensure=True)


__all__ = ["State", "pass_state"]
