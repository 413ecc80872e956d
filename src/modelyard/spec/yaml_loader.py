"""Reading ``modelyard.yaml``: YAML 1.2 booleans, UTF-8, errors that name the line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from modelyard.errors import ConfigError


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only ``true`` and ``false`` are booleans.

    YAML 1.1 (PyYAML's default) also reads ``on``, ``off``, ``yes``, ``no`` as booleans, so the
    alert rule ``{on: f1, below: 0.5}`` would arrive with the key ``True``.
    """


_BOOL = "tag:yaml.org,2002:bool"
SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))


def load_yaml(text: str, *, where: str = "yaml") -> Any:
    """Parse ``text`` with :class:`SpecLoader`; :class:`ConfigError` names the line if invalid."""
    try:
        return yaml.load(text, Loader=SpecLoader)  # a SafeLoader: builds plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None


def read_text(file: Path) -> str:
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{file} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line "
                          f"{line}); save it as UTF-8") from None


__all__ = ["SpecLoader", "load_yaml", "read_text"]
