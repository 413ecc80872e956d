"""A server in a child process: ready when constructed, or a ServerStartError quoting its output."""

from pathlib import Path

import httpx
import pytest

from modelyard.errors import ServerStartError
from modelyard.serving.process import ServerProcess


def test_a_server_that_exits_at_start_is_an_error_quoting_its_output(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="exited with status 2 before it was ready") as info:
        ServerProcess(tmp_path, args=("--no-such-option",))
    assert "No such option '--no-such-option'" in str(info.value)
    assert info.value.exit_code == 1


def test_a_started_server_answers_until_it_is_stopped(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, env={"MODELYARD_PREDICTION_LOG": "off"}) as server:
        assert httpx.get(server.url + "/healthz").status_code == 200
        assert server.name.endswith(f":{server.process.pid}")
    assert server.process.returncode is not None
