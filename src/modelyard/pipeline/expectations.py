"""Run a team's Great Expectations suite as one of the data checks (``validation.expectations``).

The suite is a JSON file as Great Expectations writes it (1.x: ``name`` and ``expectations``
of ``type`` and ``kwargs``; the 0.x keys ``expectation_suite_name`` and ``expectation_type``
are read too). It runs in an ephemeral context (nothing written, analytics and progress bars
off) on a pandas data source holding the whole batch; each failed expectation is one failure.
Great Expectations is imported here only: ``pip install 'modelyard[checks]'``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError, FrameworkMissingError

#: how many unexpected values a failure shows
_SHOWN = 3


def load_suite(path: Path) -> dict[str, Any]:
    """The suite in ``path`` in Great Expectations 1.x form; :class:`ConfigError` if it is not
    a readable suite."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"validation.expectations: no suite file {str(path)!r}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"validation.expectations: {path} is not a JSON suite: {exc}") from None
    items = doc.get("expectations") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ConfigError(f"validation.expectations: {path} has no 'expectations' list")
    expectations = []
    for item in items:
        kind = item.get("type") or item.get("expectation_type") if isinstance(item, dict) else None
        if not kind:
            raise ConfigError(f"validation.expectations: {path}: every expectation needs a "
                              f"'type', got {item!r}")
        expectations.append({"type": kind, "kwargs": dict(item.get("kwargs") or {}),
                             "meta": dict(item.get("meta") or {})})
    name = doc.get("name") or doc.get("expectation_suite_name") or path.stem
    return {"name": str(name), "expectations": expectations}


def run_suite(suite: dict[str, Any], frame: Any) -> list[str]:
    """Every expectation of ``suite`` that ``frame`` (a pandas DataFrame) fails, one line each."""
    gx = _import()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(analytics_enabled=False,
                               store_backend_defaults=InMemoryStoreBackendDefaults(),
                               progress_bars=ProgressBarsConfig(globally=False,
                                                                metric_calculations=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    expectation_suite = _build(gx, suite)
    source = context.data_sources.add_pandas("modelyard")
    whole = source.add_dataframe_asset("batch").add_batch_definition_whole_dataframe("batch")
    result = whole.get_batch(batch_parameters={"dataframe": frame}).validate(expectation_suite)
    return [_describe(suite["name"], r) for r in result.results if not r.success]


def _build(gx: Any, suite: dict[str, Any]) -> Any:
    """The suite as Great Expectations' object; :class:`ConfigError` naming the first
    expectation it does not know or cannot configure (which it would log and leave out)."""
    import logging

    quiet = logging.getLogger("great_expectations")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # it logs a traceback for each one it leaves out
    try:
        for item in suite["expectations"]:
            try:
                built = gx.ExpectationSuite(name=suite["name"], expectations=[item])
            except Exception as exc:
                built, why = None, str(exc).splitlines()[0]
            else:
                why = "unknown type, or arguments it does not take"
            if built is None or len(built.expectations) != 1:
                raise ConfigError(f"validation.expectations: suite {suite['name']!r}: cannot "
                                  f"use {item['type']}({item['kwargs']}): {why}")
        return gx.ExpectationSuite(**suite)
    finally:
        quiet.setLevel(level)


def _raised(info: Any) -> str | None:
    """The message of an exception an expectation raised (GX nests them per metric)."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info["raised_exception"] else None
    return next(filter(None, map(_raised, info.values())), None)


def _describe(suite: str, result: Any) -> str:
    config = result.expectation_config
    kwargs = {k: v for k, v in dict(config.kwargs).items() if k != "batch_id"}
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    raised = _raised(result.exception_info)
    if raised is not None:
        why = f"could not run: {(raised.strip().splitlines() or [''])[-1]}"
    else:
        found = result.result or {}
        count = found.get("unexpected_count")
        why = "failed" if count is None else f"{count} unexpected value(s)"
        sample = list(found.get("partial_unexpected_list") or [])[:_SHOWN]
        if sample:
            why += f" (e.g. {', '.join(map(repr, sample))})"
        elif "observed_value" in found:
            why += f" (observed {found['observed_value']!r})"
    return f"expectations {suite!r}: {config.type}({args}): {why} (validation.expectations)"


def _import() -> Any:
    try:
        import great_expectations as gx
    except ImportError:
        raise FrameworkMissingError(
            "validation.expectations needs Great Expectations: "
            "pip install 'modelyard[checks]'") from None
    return gx


__all__ = ["load_suite", "run_suite"]
