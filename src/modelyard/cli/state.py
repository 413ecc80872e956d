"""What the global options chose, shared by every command through click's context."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.cli.remote import RemoteDeployments, RemoteRegistry
    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.rollout.deployments import Deployments


@dataclass
class State:
    """What the global options chose; opens the registry on first use and closes it at exit.

    With ``--server`` (or ``MODELYARD_URL``) the registry is a server's API, called with the
    key in ``MODELYARD_API_KEY`` (:mod:`modelyard.cli.remote`).
    """

    home: str | None = None
    db: str | None = None
    artifacts: str | None = None
    server: str | None = None
    _registry: Registry | RemoteRegistry | None = field(default=None, repr=False)

    @property
    def remote(self) -> bool:
        """Whether commands act through a server instead of the registry database."""
        return bool(self.server)

    def settings(self) -> Settings:
        """Resolved settings: global options, then ``MODELYARD_*`` variables, then defaults."""
        from modelyard.config import Settings

        return Settings.from_env(home=self.home, db_url=self.db, artifacts=self.artifacts)

    def registry(self) -> Registry | RemoteRegistry:
        """The registry these settings name (migrated on first open), or the server's API."""
        if self._registry is None:
            if self.remote:
                from modelyard.cli.remote import KEY_ENV, Remote, RemoteRegistry

                assert self.server is not None
                self._registry = RemoteRegistry(Remote(self.server, os.environ.get(KEY_ENV)))
            else:
                from modelyard.registry import Registry

                self._registry = Registry.open(self.settings())
            click.get_current_context().call_on_close(self._registry.close)
        return self._registry

    def deployments(self) -> Deployments | RemoteDeployments:
        """The registry's rollouts, or the server's (``--server``)."""
        from modelyard.cli.remote import RemoteRegistry
        from modelyard.rollout.deployments import Deployments

        registry = self.registry()
        if isinstance(registry, RemoteRegistry):
            return registry.deployments
        return Deployments(registry)

    def require_local(self) -> None:
        """Refuse, in one line, a command that cannot act through a server (``--server``)."""
        if self.remote:
            name = click.get_current_context().command_path
            raise ConfigError(f"'{name}' works on the registry database and artifacts "
                              "directly and cannot act through a server: run it where they "
                              "are reachable, without MODELYARD_URL or --server")

    def local_registry(self) -> Registry:
        """The registry database itself, for commands that cannot act through a server."""
        self.require_local()
        from modelyard.registry import Registry

        registry = self.registry()
        assert isinstance(registry, Registry)
        return registry

    def global_args(self) -> str:
        """The global options as typed, to repeat in suggested commands (``--home X ``)."""
        parts = [f"--{name} {value}" for name, value in
                 (("home", self.home), ("db", self.db), ("artifacts", self.artifacts),
                  ("server", self.server)) if value]
        return " ".join(parts) + " " if parts else ""


pass_state = click.make_pass_decorator(State, ensure=True)


__all__ = ["State", "pass_state"]
