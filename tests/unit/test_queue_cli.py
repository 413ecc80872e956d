"""``modelyard consume``'s own errors: one line and a documented exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from modelyard.cli import main


def consume(tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "consume", *args])


def test_an_unknown_broker_scheme_is_a_usage_error_naming_the_url(tmp_path: Path) -> None:
    result = consume(tmp_path, "ftp://host/x", "--queue", "in")
    assert result.exit_code == 2
    assert "URL 'ftp://host/x'" in result.output and "amqp://" in result.output


@pytest.mark.parametrize(("args", "named"), [
    (["amqp://localhost", "--queue", "in", "--output", "in"], "--output"),
    (["amqp://localhost", "--queue", "in", "--dead-letter", "in"], "--dead-letter"),
    (["amqp://localhost", "--queue", "in", "--redeliver-after", "soon"], "duration"),
    (["amqp://localhost", "--queue", "in", "--max-memory", "lots"], "size"),
    (["amqp://localhost"], "--queue"),
])
def test_bad_settings_name_their_field(tmp_path: Path, args: list[str], named: str) -> None:
    result = consume(tmp_path, *args)
    assert result.exit_code == 2 and named in result.output


def test_a_broker_that_cannot_be_reached_is_one_line_and_exit_15(tmp_path: Path) -> None:
    result = consume(tmp_path, "amqp://guest:secret@127.0.0.1:1/", "--queue", "in")
    assert result.exit_code == 15, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error: ")]
    assert "amqp://127.0.0.1:1 cannot be used" in line and "secret" not in result.output
