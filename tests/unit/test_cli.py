"""The ``modelyard`` command line, in-process through click's CliRunner.

Registry commands run against versions registered directly (a small scikit-learn model); the
train commands run the real pipeline on a tiny project written into a temporary folder. The
registry commands run both ways (``any_invoke``): on the registry database, and through a real
server with an admin API key (``--server``, ``MODELYARD_API_KEY``), with the same output and
exit codes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from sklearn.linear_model import LogisticRegression

from modelyard.adapters.sklearn import SklearnAdapter
from modelyard.cli import main
from modelyard.config import Settings
from modelyard.errors import ConfigError, ModelyardError
from modelyard.registry import Registry

Invoke = Callable[..., Result]

TINY_TRAIN = textwrap.dedent('''
    import numpy as np
    from sklearn.linear_model import LogisticRegression


    def load():
        rng = np.random.default_rng(0)
        X = rng.normal(size=(200, 3))
        y = (X[:, 0] + X[:, 1] > 0).astype(int)
        return X, y


    def train(X, y, params):
        if params.get("fail"):
            raise RuntimeError("boom: this train function fails on purpose")
        return LogisticRegression().fit(X, y)
''')

TINY_PROJECT = textwrap.dedent('''
    models:
      tiny:
        train: train.py:train
        data: {function: train.py:load}
        metrics: [accuracy]
        gate: {min: {accuracy: 0.7}, champion: {metric: accuracy, max_drop: 0.05}}
      broken:
        train: train.py:train
        data: {function: train.py:load}
        params: {fail: true}
        metrics: [accuracy]
      strict:
        train: train.py:train
        data: {function: train.py:load}
        metrics: [accuracy]
        gate: {min: {accuracy: 1.01}}
      hungry:
        train: train.py:train
        data: {function: train.py:load}
        validation: {min_rows: 100000}
        metrics: [accuracy]
''')


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_error(result: Result, code: int) -> str:
    """The command failed with ``code`` and wrote exactly one line, ``error: ...``."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = error_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture()
def invoke(home: Path) -> Invoke:
    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(main, ["--home", str(home), *args], input=input)

    return run


@pytest.fixture()
def registered(home: Path, tmp_path: Path) -> Iterator[Registry]:
    """Model ``iris2`` with versions 1 and 2 (v1 in production) and ``other`` with v1."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    y = (X["a"] > 0).astype(int).to_numpy()
    adapter = SklearnAdapter()
    registry = Registry.open(Settings.from_env(home=home, actor="tester"))
    for name, count in (("iris2", 2), ("other", 1)):
        for i in range(count):
            model = LogisticRegression(C=1.0 + i).fit(X, y)
            folder = tmp_path / f"artifact-{name}-{i}"
            folder.mkdir()
            meta = adapter.save(model, folder)
            registry.register(
                name, folder, flavor="sklearn", meta={**meta, "task": "classification"},
                signature=adapter.infer_signature(model, X, y).to_dict(),
                metrics={"accuracy": 0.9 + i / 100}, params={"C": 1.0 + i},
            )
        registry.set_alias(name, "production", 1, reason="first")
    yield registry
    registry.close()


class _AppThread(httpx.BaseTransport):
    """A sync transport into the server's app, which runs on its own event loop in a thread:
    the real app (routes, auth, registry), in-process like Starlette's TestClient, so each
    test's server starts in a fraction of a second."""

    def __init__(self, app: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.app = app
        self.inner = httpx.ASGITransport(app=app)
        self._run(app.startup())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        forwarded = httpx.Request(request.method, request.url, headers=request.headers,
                                  content=body)

        async def send() -> httpx.Response:
            response = await self.inner.handle_async_request(forwarded)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers,
                                  content=content)

        return self._run(send())  # type: ignore[no-any-return]

    def close(self) -> None:
        """Each CLI call closes its client, and so this transport: the app lives on."""

    def stop(self) -> None:
        self._run(self.app.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(params=["local", "remote"])
def any_invoke(request: pytest.FixtureRequest, home: Path, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Invoke]:
    """``invoke`` on the registry database, then through the server with an admin key: the
    remote CLI never opens the registry (its --home stays empty). Over a real socket:
    ``test_the_cli_through_a_server_process``."""
    if request.param == "local":
        yield request.getfixturevalue("invoke")
        return
    yield from _remote(home, tmp_path, monkeypatch)


@pytest.fixture()
def remote_invoke(home: Path, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Invoke]:
    """Only through the server (see ``any_invoke``)."""
    yield from _remote(home, tmp_path, monkeypatch)


def _remote(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Invoke]:
    from modelyard.cli import remote
    from modelyard.serving import ServeOptions, create_app

    with Registry.open(Settings.from_env(home=home, actor="tester")) as registry:
        key = registry.keys.create_key("cli-admin", "admin").secret
        transport = _AppThread(create_app(registry, ServeOptions(poll_interval_s=0.2)))
        monkeypatch.setattr(remote, "Remote", functools.partial(remote.Remote,
                                                                  transport=transport))
        unused = tmp_path / "not-opened"

        def run(*args: str, input: str | None = None) -> Result:
            return CliRunner().invoke(main, ["--home", str(unused), "--server",
                                             "http://modelyard.test", *args], input=input,
                                      env={"MODELYARD_API_KEY": key})

        try:
            yield run
        finally:
            transport.stop()
    assert not unused.exists(), "the remote CLI opened a local registry"


def test_the_cli_through_a_server_process(registered: Registry, home: Path,
                                          tmp_path: Path) -> None:
    """The same over a real socket, to a real ``modelyard serve``; a wrong key is exit 2."""
    from modelyard.testing import ServerProcess

    key = registered.keys.create_key("ops", "deployer").secret
    with ServerProcess(home) as server:
        def run(*args: str, api_key: str = key) -> Result:
            return CliRunner().invoke(main, ["--server", server.url, *args],
                                      env={"MODELYARD_API_KEY": api_key})

        result = run("promote", "iris2", "2", "--reason", "remote")
        assert result.exit_code == 0, result.output
        assert "iris2@production -> v2 (was v1)" in result.stdout
        assert registered.audit_events("iris2@production", limit=1)[0].actor == "ops"
        assert "wrong" not in run("models").stdout
        line = assert_one_error(run("models", api_key="myk_000000000000_" + "x" * 43), 2)
        assert "not valid" in line
        line = assert_one_error(run("auth", "keys"), 2)  # a deployer is not an admin
        assert "'admin' needs one of the roles admin" in line
    line = assert_one_error(CliRunner().invoke(main, ["--server", server.url, "models"],
                                               env={"MODELYARD_API_KEY": key}), 10)
    assert "cannot reach the modelyard server" in line


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "train.py").write_text(TINY_TRAIN)
    (folder / "modelyard.yaml").write_text(TINY_PROJECT)
    return folder / "modelyard.yaml"


# -- listings -----------------------------------------------------------------------------------
def test_models_json_lists_every_model_with_aliases(registered: Registry,
                                                    any_invoke: Invoke) -> None:
    result = any_invoke("models", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [m["name"] for m in data] == ["iris2", "other"]
    assert data[0]["aliases"] == {"production": 1}
    assert data[0]["latest_version"] == 2


def test_card_is_generated_here_or_by_the_server(registered: Registry,
                                                 any_invoke: Invoke) -> None:
    markdown = any_invoke("card", "iris2:2")
    assert markdown.exit_code == 0, markdown.output
    assert markdown.stdout.startswith("# Model card: iris2:2\n")
    assert "| accuracy | 0.91 |" in markdown.stdout
    assert "## Approvals and rollouts" in markdown.stdout
    page = any_invoke("card", "iris2", "--format", "html")  # production: version 1
    assert page.exit_code == 0, page.output
    assert "<h1>Model card: iris2:1</h1>" in page.stdout and "production" in page.stdout
    assert "ghost" in assert_one_error(any_invoke("card", "ghost:1"), 3)


def test_models_table_and_empty_registry(any_invoke: Invoke, registered: Registry) -> None:
    result = any_invoke("models")
    assert result.exit_code == 0
    assert "iris2" in result.stdout and "production=v1" in result.stdout


def test_empty_registry_says_what_to_do(invoke: Invoke) -> None:
    result = invoke("models")
    assert result.exit_code == 0
    assert "modelyard train" in result.stdout
    assert json.loads(invoke("models", "--json").stdout) == []


def test_versions_json_newest_first(registered: Registry, any_invoke: Invoke) -> None:
    result = any_invoke("versions", "iris2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [v["version"] for v in data] == [2, 1]
    assert data[1]["aliases"] == ["production"]
    assert data[0]["metrics"] == {"accuracy": 0.91}


def test_show_resolves_refs(registered: Registry, any_invoke: Invoke) -> None:
    assert json.loads(any_invoke("show", "iris2", "--json").stdout)["version"] == 1
    assert json.loads(any_invoke("show", "iris2:2", "--json").stdout)["version"] == 2
    assert json.loads(any_invoke("show", "iris2@production", "--json").stdout)["version"] == 1
    text = any_invoke("show", "iris2:2").stdout
    for expected in ("iris2:2", "sklearn", "signature", "accuracy", "classes"):
        assert expected in text


# -- aliases ------------------------------------------------------------------------------------
def test_promote_rollback_and_history(registered: Registry, any_invoke: Invoke) -> None:
    result = any_invoke("promote", "iris2", "2", "--reason", "better")
    assert result.exit_code == 0, result.output
    assert "v2" in result.stdout
    assert registered.resolve("iris2").version == 2

    result = any_invoke("rollback", "iris2")
    assert result.exit_code == 0, result.output
    assert "v2 -> v1" in result.stdout
    assert registered.resolve("iris2").version == 1

    events = json.loads(any_invoke("history", "iris2", "--json").stdout)
    assert [(e["action"], e["version"]) for e in events] == [
        ("rollback", 1), ("set", 2), ("set", 1)]
    assert events[1]["reason"] == "better"


def test_history_at_answers_what_served_then(registered: Registry, any_invoke: Invoke) -> None:
    any_invoke("promote", "iris2", "2")
    first, second = sorted(registered.alias_history("iris2", "production"), key=lambda e: e.at)
    at_first = json.loads(any_invoke("history", "iris2", "--at", first.at.isoformat(),
                                     "--json").stdout)
    assert at_first["version"] == 1
    result = any_invoke("history", "iris2", "--at", second.at.isoformat())
    assert result.exit_code == 0
    assert "pointed to v2" in result.stdout
    before = json.loads(any_invoke("history", "iris2", "--at", "2001-01-01T00:00:00Z",
                                   "--json").stdout)
    assert before["version"] is None


def test_history_at_rejects_a_bad_time(registered: Registry, any_invoke: Invoke) -> None:
    line = assert_one_error(any_invoke("history", "iris2", "--at", "yesterday"), 2)
    assert "ISO" in line


def test_promote_alias_option_and_audit(registered: Registry, any_invoke: Invoke) -> None:
    assert any_invoke("promote", "iris2", "2", "--alias", "staging").exit_code == 0
    assert registered.resolve("iris2@staging").version == 2
    events = json.loads(any_invoke("audit", "iris2", "--limit", "3", "--json").stdout)
    assert len(events) == 3
    assert events[0]["action"] == "alias.set" and events[0]["target"] == "iris2@staging"
    assert any_invoke("audit").exit_code == 0


def test_rollback_with_nothing_before_is_a_conflict(registered: Registry,
                                                    any_invoke: Invoke) -> None:
    line = assert_one_error(any_invoke("rollback", "other"), 4)
    assert "--to" in line


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("versions", "nope"),
    ("show", "nope"),
    ("show", "iris2:9"),
    ("promote", "nope", "1"),
    ("rollback", "nope"),
    ("history", "nope"),
    ("predict", "nope"),
    ("runs", "show", "no-such-run"),
])
def test_unknown_things_exit_3_with_one_line(registered: Registry, invoke: Invoke,
                                              args: tuple[str, ...]) -> None:
    assert_one_error(invoke(*args, input="[]"), 3)


@pytest.mark.parametrize("args", [
    ("versions", "nope"), ("show", "nope"), ("show", "iris2:9"), ("show", "iris2@nope"),
    ("promote", "nope", "1"), ("rollback", "nope"), ("history", "nope"),
    ("runs", "show", "no-such-run")])
def test_unknown_things_exit_3_both_ways(registered: Registry, any_invoke: Invoke,
                                         args: tuple[str, ...]) -> None:
    assert_one_error(any_invoke(*args), 3)


def test_commands_that_need_the_database_say_so_through_a_server(
        registered: Registry, remote_invoke: Invoke, project: Path, tmp_path: Path) -> None:
    for args in (("batch", "iris2", "--input", str(tmp_path / "x.csv"), "--output",
                  str(tmp_path / "out"), "--log-sample", "0.5"),
                 ("batch", "iris2", "--input", str(tmp_path / "x.csv"), "--output",
                  "precomputed:registry", "--key", "a"),
                 ("scheduler", "--project", str(project), "--once"), ("store", "rekey"),
                 ("db", "upgrade")):
        line = assert_one_error(remote_invoke(*args), 2)
        assert "cannot act through a server" in line, args


def test_batch_scores_and_records_its_run_both_ways(registered: Registry, any_invoke: Invoke,
                                                    tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = pd.DataFrame({"id": range(25), "a": rng.normal(size=25), "b": rng.normal(size=25)})
    rows.to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "scores"
    done = any_invoke("batch", "iris2@production", "-i", str(tmp_path / "in.parquet"), "-o",
                      str(out), "--key", "id", "--chunk-rows", "10", "--json")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert (summary["rows"], summary["errors"], summary["version"]) == (25, 0, 1)
    scored = pd.read_parquet(out).sort_values("id")
    assert list(scored["id"]) == list(range(25))
    [run] = [r for r in json.loads(any_invoke("runs", "iris2", "--json").stdout)
             if r["id"] == summary["run_id"]]
    assert (run["kind"], run["status"], run["version"]) == ("batch", "succeeded", 1)
    assert run["details"]["rows"] == 25
    again = any_invoke("batch", "iris2@production", "-i", str(tmp_path / "in.parquet"), "-o",
                       str(out), "--key", "id", "--chunk-rows", "10", "--json")
    assert json.loads(again.stdout)["run_id"] is None  # already complete: nothing scored


def test_the_audit_chain_verifies_and_exports_through_a_server(
        registered: Registry, any_invoke: Invoke, tmp_path: Path) -> None:
    verified = any_invoke("audit", "verify", "--json")
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    assert report["intact"] and report["events"] >= 5
    out = tmp_path / "audit.jsonl"
    exported = any_invoke("audit", "export", "-o", str(out))
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == report["events"] and lines[-1]["hash"] == report["head"]
    later = any_invoke("audit", "export", "--after", str(lines[1]["id"]))
    assert [json.loads(x)["id"] for x in later.stdout.splitlines()] == [
        x["id"] for x in lines[2:]]
    with registered.db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE audit_events SET actor = 'mallory' WHERE id = 2")
    line = assert_one_error(any_invoke("audit", "verify"), 17)
    assert "event 2" in line and "edited" in line


def test_monitoring_through_a_server_answers_as_locally(registered: Registry,
                                                          any_invoke: Invoke) -> None:
    from modelyard.monitoring.monitor import Monitor

    Monitor(registered).log_predictions([{
        "request_id": f"r{i}", "model": "iris2", "version": 1, "variant": "production",
        "at": pd.Timestamp.now(tz="UTC").to_pydatetime(), "latency_ms": 2.0 + i, "rows": 1,
        "inputs": {"columns": {"a": [0.5], "b": [-1.0]}}, "outputs": {"predictions": [i % 2]}}
        for i in range(6)])
    labels = any_invoke("feedback", "iris2", "r1", "1", "--json")
    assert labels.exit_code == 0, labels.output
    assert json.loads(labels.stdout)["stored"] == 1
    metrics = any_invoke("monitor", "metrics", "iris2", "--since", "1h", "--json")
    assert metrics.exit_code == 0, metrics.output
    found = json.loads(metrics.stdout)
    assert found["latency"]["requests"] == 6
    assert [(w["version"], w["requests"], w["labeled"]) for w in found["windows"]] == [(1, 6, 1)]
    events = any_invoke("monitor", "events", "--json")
    assert events.exit_code == 0 and json.loads(events.stdout) == []
    history = any_invoke("monitor", "drift", "iris2", "--history", "--json")
    assert history.exit_code == 0 and json.loads(history.stdout) == []


def test_usage_errors_exit_2(invoke: Invoke) -> None:
    assert invoke("promote", "iris2", "not-a-number").exit_code == 2
    assert invoke("no-such-command").exit_code == 2


def test_malformed_project_exits_2_with_one_line(invoke: Invoke, tmp_path: Path) -> None:
    bad = tmp_path / "modelyard.yaml"
    bad.write_text("models:\n  fraud: {train: [unclosed\n")
    line = assert_one_error(invoke("train", "fraud", "--project", str(bad)), 2)
    assert "YAML" in line
    bad.write_text("models:\n  fraud:\n    train: x.py:train\n    data: {path: 'a.csv'}\n")
    line = assert_one_error(invoke("train", "fraud", "--project", str(bad)), 2)
    assert "target" in line
    missing = tmp_path / "missing.yaml"
    assert "modelyard init" in assert_one_error(invoke("train", "--all", "--project",
                                                       str(missing)), 2)


HUGE = "99999999999999999999"


def assert_usage_error(result: Result, fragment: str) -> None:
    """A click usage error: exit 2, the offending value named, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    assert fragment in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(("args", "fragment"), [
    (("promote", "iris2", HUGE), "range"),
    (("rollback", "iris2", "--to", HUGE), "range"),
    (("deploy", "iris2", HUGE), "range"),
    (("deploy", "iris2", "2", "--min-requests", HUGE), "range"),
    (("deploy", "iris2", "2", "--max-error-rate", "1e400"), "range"),
    (("monitor", "drift", "iris2", "--version", HUGE), "range"),
    (("serve", "--port", HUGE), "range"),
    (("serve", "--timeout", "1e400"), "range"),
])
def test_numbers_out_of_range_are_usage_errors(registered: Registry, invoke: Invoke,
                                               args: tuple[str, ...], fragment: str) -> None:
    assert_usage_error(invoke(*args), fragment)


@pytest.mark.parametrize(("args", "code", "fragment"), [
    ((f"iris2:{HUGE}",), 2, HUGE),
    (("deploy", "iris2", "2", "--canary", "1e400"), 2, "percentages"),
    (("monitor", "metrics", "iris2", "--since", f"{HUGE}d"), 2, "since"),
    (("monitor", "metrics", "iris2", "--every", HUGE), 2, "duration"),
    (("deploy", "iris2", "2", "--every", "1e400"), 2, "duration"),
])
def test_out_of_range_values_are_one_line(registered: Registry, invoke: Invoke,
                                          args: tuple[str, ...], code: int,
                                          fragment: str) -> None:
    if len(args) == 1:
        args = ("show", *args)
    assert fragment in assert_one_error(invoke(*args), code)
    assert registered.resolve("iris2").version == 1  # nothing changed


def test_an_overflow_anywhere_is_one_line_exit_2(invoke: Invoke,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def overflow(self: Registry) -> None:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    monkeypatch.setattr(Registry, "list_models", overflow)
    assert "out of range" in assert_one_error(invoke("models"), 2)


def test_a_project_file_that_is_not_utf8_exits_2(invoke: Invoke, tmp_path: Path) -> None:
    bad = tmp_path / "modelyard.yaml"
    bad.write_bytes(b"models:\n  fraud:\n    description: caf\xe9\n")
    line = assert_one_error(invoke("train", "fraud", "--project", str(bad)), 2)
    assert "not UTF-8" in line and "line 3" in line
    assert "not UTF-8" in assert_one_error(invoke("scheduler", "--once", "--project",
                                                  str(bad)), 2)


def test_serve_with_an_unreachable_database_is_one_line() -> None:
    result = CliRunner().invoke(main, ["--db", "postgresql://nobody@127.0.0.1:1/x", "serve",
                                       "--port", "0"])
    assert "MODELYARD_DB" in assert_one_error(result, 10)


def test_train_needs_names_or_all(invoke: Invoke, project: Path) -> None:
    result = invoke("train", "--project", str(project))
    assert result.exit_code == 2
    assert "--all" in result.stderr
    assert_one_error(invoke("train", "nope", "--project", str(project)), 3)


def test_help_on_every_command(invoke: Invoke) -> None:
    for command in main.commands:
        result = invoke(command, "--help")
        assert result.exit_code == 0, command
        assert "Usage:" in result.stdout
    assert invoke("runs", "show", "--help").exit_code == 0
    assert "demo" in invoke("--help").stdout


# -- predict ------------------------------------------------------------------------------------
def test_predict_from_stdin(registered: Registry, any_invoke: Invoke) -> None:
    records = [{"a": 1.5, "b": 0.0}, {"a": -2.0, "b": 0.3}]
    result = any_invoke("predict", "iris2", "--scores", input=json.dumps(records))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "iris2" and data["version"] == 1
    assert data["predictions"] == [1, 0]
    assert data["classes"] == [0, 1]
    assert len(data["scores"]) == 2


def test_predict_from_file_with_columns(registered: Registry, any_invoke: Invoke,
                                        tmp_path: Path) -> None:
    source = tmp_path / "input.json"
    source.write_text(json.dumps({"a": [2.0, -2.0], "b": [0.0, 0.0]}))
    result = any_invoke("predict", "iris2:2", "--input", str(source))
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    answer.pop("request_id", None)  # through a server: the id its log keeps, for feedback
    assert answer == {"model": "iris2", "version": 2, "predictions": [1, 0]}


@pytest.mark.parametrize(("payload", "needle"), [
    ("{not json", "not valid JSON"),
    ("", "empty"),
    ('[{"a": 1.0}]', "b"),
])
def test_predict_bad_input_exits_2(registered: Registry, any_invoke: Invoke, payload: str,
                                   needle: str) -> None:
    assert needle in assert_one_error(any_invoke("predict", "iris2", input=payload), 2)


def test_predict_missing_file(registered: Registry, any_invoke: Invoke, tmp_path: Path) -> None:
    assert_one_error(any_invoke("predict", "iris2", "--input", str(tmp_path / "nope.json")), 2)


# -- init ---------------------------------------------------------------------------------------
def test_init_writes_a_starter_and_never_overwrites(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0, result.output
    from modelyard.spec import load_project

    spec = load_project("modelyard.yaml")["iris"]
    assert spec.train == "train.py:train"
    assert "def train(X, y, params)" in (tmp_path / "train.py").read_text()
    (tmp_path / "train.py").write_text("# mine\n")
    line = assert_one_error(CliRunner().invoke(main, ["init"]), 4)
    assert "overwrite" in line
    assert (tmp_path / "train.py").read_text() == "# mine\n"


# -- train (the real pipeline) ------------------------------------------------------------------
def test_train_registers_promotes_and_records_the_run(any_invoke: Invoke, project: Path) -> None:
    result = any_invoke("train", "tiny", "--project", str(project))
    assert result.exit_code == 0, result.output
    for stage in ("load data", "validate", "train", "evaluate", "gate", "register", "promote"):
        assert stage in result.stdout
    assert "tiny:1" in result.stdout and "accuracy=" in result.stdout
    assert result.stderr == ""

    models = json.loads(any_invoke("models", "--json").stdout)
    assert models[0]["name"] == "tiny" and models[0]["aliases"] == {"production": 1}

    runs = json.loads(any_invoke("runs", "--json").stdout)
    assert [(r["model"], r["status"], r["version"]) for r in runs] == [("tiny", "succeeded", 1)]
    assert json.loads(any_invoke("runs", "tiny", "--json").stdout)[0]["id"] == runs[0]["id"]
    shown = any_invoke("runs", "show", runs[0]["id"][:8])
    assert shown.exit_code == 0, shown.output
    assert "logs" in shown.stdout and "registered tiny:1" in shown.stdout

    again = any_invoke("train", "tiny", "--project", str(project), "--no-promote", "--force",
                   "--json")
    assert again.exit_code == 0, again.output
    outcome = json.loads(again.stdout)[0]
    assert outcome["status"] == "registered" and outcome["version"] == 2
    assert outcome["champion_metrics"] is not None
    assert json.loads(any_invoke("show", "tiny", "--json").stdout)["version"] == 1


def test_retraining_on_nothing_new_is_unchanged_unless_forced(any_invoke: Invoke,
                                                              project: Path) -> None:
    assert any_invoke("train", "tiny", "--project", str(project)).exit_code == 0
    again = any_invoke("train", "tiny", "--project", str(project))
    assert again.exit_code == 0, again.output
    assert "unchanged: identical to tiny:1" in again.stdout and again.stderr == ""
    assert " train " not in again.stdout and " register " not in again.stdout  # no such stage
    versions = json.loads(any_invoke("versions", "tiny", "--json").stdout)
    assert [v["version"] for v in versions] == [1]
    runs = json.loads(any_invoke("runs", "tiny", "--json").stdout)
    assert [(r["status"], r["version"]) for r in runs] == [("unchanged", None),
                                                           ("succeeded", 1)]
    as_json = json.loads(any_invoke("train", "tiny", "--project", str(project), "--json").stdout)
    assert (as_json[0]["status"], as_json[0]["identical_to"]) == ("unchanged", "tiny:1")

    forced = any_invoke("train", "tiny", "--project", str(project), "--force")
    assert forced.exit_code == 0 and "tiny:2" in forced.stdout, forced.output
    # a changed spec is not the same training: it registers without --force
    project.write_text(project.read_text().replace("max_drop: 0.05", "max_drop: 0.04"))
    changed = any_invoke("train", "tiny", "--project", str(project))
    assert "tiny:3" in changed.stdout, changed.output


def test_train_failure_is_one_line_and_recorded(any_invoke: Invoke, project: Path) -> None:
    result = any_invoke("train", "broken", "--project", str(project))
    line = assert_one_error(result, 11)
    assert "boom" in line
    runs = json.loads(any_invoke("runs", "broken", "--json").stdout)
    assert runs[0]["status"] == "failed"


def test_gate_rejection_exits_12(any_invoke: Invoke, project: Path) -> None:
    result = any_invoke("train", "strict", "--project", str(project))
    line = assert_one_error(result, 12)
    assert "accuracy" in line
    assert "rejected" in result.stdout
    assert any_invoke("versions", "strict").exit_code == 3  # nothing was registered


def test_data_validation_failure_exits_5_with_report(any_invoke: Invoke, project: Path) -> None:
    result = any_invoke("train", "hungry", "--project", str(project))
    assert "min_rows" in assert_one_error(result, 5)  # one failed check: the message says it
    project.write_text(TINY_PROJECT.replace(
        "validation: {min_rows: 100000}",
        "validation: {min_rows: 100000, columns: {f0: string, f1: string, f2: string}}"))
    result = any_invoke("train", "hungry", "--project", str(project))
    assert result.exit_code == 5, result.output
    lines = error_lines(result)
    # the message names the first three failed checks; the report's others follow it
    assert lines[0].startswith("error: ") and "and 1 more" in lines[0]
    assert len(lines) == 2 and "f2" in lines[1]
    assert all(line.startswith("  - ") for line in lines[1:])


# -- global options, interrupts, demo helpers ---------------------------------------------------
def test_db_and_artifacts_options_override_the_home(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere.db"
    result = CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "--db",
                                       f"sqlite:///{db}", "--artifacts", str(tmp_path / "blobs"),
                                       "models", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    assert db.is_file()
    assert not (tmp_path / "home" / "registry.db").exists()


def test_keyboard_interrupt_exits_130(invoke: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: Registry) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Registry, "list_models", interrupted)
    assert_one_error(invoke("models"), 130)


def test_demo_writes_the_first_fraud_batch_once(tmp_path: Path) -> None:
    from modelyard.cli.demo import ensure_fraud_data, find_project

    examples = Path(__file__).resolve().parents[2] / "examples"
    copy = tmp_path / "examples"
    (copy / "fraud").mkdir(parents=True)
    (copy / "fraud" / "generate.py").write_text((examples / "fraud" / "generate.py").read_text())
    batch = ensure_fraud_data(copy)
    assert batch == copy / "fraud" / "data" / "batch-000.csv"
    frame = pd.read_csv(batch)
    assert len(frame) == 5000 and 0.015 < frame["is_fraud"].mean() < 0.04
    assert ensure_fraud_data(copy) is None  # never twice
    assert find_project(str(examples / "modelyard.yaml")).name == "modelyard.yaml"
    with pytest.raises(ConfigError, match="--project"):
        find_project(str(tmp_path / "nope.yaml"))


# -- broken infrastructure ---------------------------------------------------------------------
def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--db", "postgresql://nobody@127.0.0.1:1/x", "models"])
    line = assert_one_error(result, 10)
    assert "MODELYARD_DB" in line


def test_malformed_database_url_is_one_line() -> None:
    result = CliRunner().invoke(main, ["--db", "postgresql://h:port/x", "models"])
    assert "not a valid URL" in assert_one_error(result, 2)


def test_corrupted_artifact_is_refused_naming_the_version(registered: Registry,
                                                          invoke: Invoke) -> None:
    version = registered.resolve("iris2:2")
    blob = registered.settings.artifacts
    path = Path(blob) / version.artifact_digest[:2] / version.artifact_digest
    path.write_bytes(path.read_bytes()[:-10] + b"tampered!!")
    registered.clear_cache()
    result = invoke("predict", "iris2:2", input='[{"a": 1.0, "b": 2.0}]')
    line = assert_one_error(result, 9)
    assert "iris2:2" in line
    # the registry is untouched and the other version still predicts
    assert invoke("predict", "iris2:1", input='[{"a": 1.0, "b": 2.0}]').exit_code == 0


# -- rollouts ------------------------------------------------------------------------------------
def _by_caller(actor: str) -> bool:
    """The actor of a rollout change: the local user, or the key's principal remotely."""
    return actor.startswith("user:") or actor == "cli-admin"


def test_deploy_canary_then_status_and_abort(registered: Registry, any_invoke: Invoke) -> None:
    started = any_invoke("deploy", "iris2", "2", "--canary", "10,50,100", "--every", "30s",
                     "--min-requests", "50", "--json")
    assert started.exit_code == 0, started.output
    record = json.loads(started.stdout)
    assert (record["strategy"], record["steps"], record["state"]) == ("canary", [10, 50, 100],
                                                                     "progressing")
    assert record["every_s"] == 30.0 and record["rules"]["min_requests"] == 50
    again = any_invoke("deploy", "iris2", "2")
    assert "already" in assert_one_error(again, 4)

    status = json.loads(any_invoke("rollout", "status", "iris2", "--json").stdout)
    assert status["deployment"]["candidate_version"] == 2
    assert _by_caller(status["history"][0]["actor"])

    aborted = any_invoke("rollout", "abort", "iris2", "--reason", "changed my mind", "--json")
    assert json.loads(aborted.stdout)["state"] == "aborted"
    assert registered.resolve("iris2").version == 1  # production untouched


def test_rollout_promote_moves_production(registered: Registry, any_invoke: Invoke) -> None:
    assert any_invoke("deploy", "iris2", "2", "--ab", "30", "--key", "user_id").exit_code == 0
    assert any_invoke("rollout", "promote", "iris2").exit_code == 0
    assert registered.resolve("iris2").version == 2
    assert _by_caller(registered.alias_history("iris2", "production")[0].actor)


def test_rollback_ends_an_active_rollout_first(registered: Registry, any_invoke: Invoke) -> None:
    assert any_invoke("deploy", "iris2", "2", "--shadow").exit_code == 0
    ended = any_invoke("rollback", "iris2")
    assert ended.exit_code == 0 and "rolled back" in ended.stdout
    status = json.loads(any_invoke("rollout", "status", "iris2", "--json").stdout)
    assert status["deployment"]["state"] == "rolled_back"
    assert registered.resolve("iris2").version == 1


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["deploy", "iris2", "2", "--canary", "50,25"], 2, "increasing"),
        (["deploy", "iris2", "2", "--every", "soon"], 2, "duration"),
        (["deploy", "iris2", "9"], 3, "no version 9"),
        (["deploy", "ghost", "1"], 3, "no model"),
        (["rollout", "status", "other"], 3, "no rollout"),
    ],
)
def test_deploy_errors_are_one_line(registered: Registry, any_invoke: Invoke, args: list[str],
                                    code: int, fragment: str) -> None:
    assert fragment in assert_one_error(any_invoke(*args), code)


def test_deploy_refuses_two_strategies(registered: Registry, invoke: Invoke) -> None:
    result = invoke("deploy", "iris2", "2", "--blue-green", "--direct")
    assert result.exit_code == 2 and "choose one strategy" in result.output


# -- the exit-code contract ----------------------------------------------------------------------
def _every_error_class() -> list[type[ModelyardError]]:
    found, todo = [], [ModelyardError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_the_exit_code_tables_list_every_code_the_cli_can_return() -> None:
    import modelyard.cli as cli_module

    # every error class's code, click's usage errors (2), an unexpected error (1), Ctrl-C (130)
    codes = {cls.exit_code for cls in _every_error_class()} | {0, 1, 2, 130}
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    in_readme = {int(code) for code in re.findall(r"^\| (\d+) \| ", readme, flags=re.MULTILINE)}
    assert in_readme == codes, f"README lists {sorted(in_readme)}, the CLI returns {sorted(codes)}"
    in_docstring = {int(code) for code in re.findall(r"^(\d+) {2,}\S", cli_module.__doc__ or "",
                                                     flags=re.MULTILINE)}
    assert in_docstring == codes


def test_input_files_that_are_not_utf8_are_one_line(registered: Registry, invoke: Invoke,
                                                    tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'\xff\xfe[{"a": 1.0, "b": 2.0}]')
    assert "not UTF-8" in assert_one_error(invoke("predict", "iris2", "--input", str(bad)), 2)
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"request_id,label\nr\xe91,1\n")
    assert "not UTF-8" in assert_one_error(invoke("feedback", "iris2", "--file", str(labels)), 2)


# -- monitoring ---------------------------------------------------------------------------------

def test_monitor_request_shows_what_the_log_holds_of_one_request(
        registered: Registry, any_invoke: Invoke) -> None:
    from modelyard.monitoring.monitor import Monitor

    monitor = Monitor(registered)
    monitor.log_predictions([{
        "request_id": f"r{i}", "model": model, "version": 1, "variant": "production",
        "at": pd.Timestamp("2026-12-01T10:00:00Z").to_pydatetime(), "latency_ms": 2.5,
        "rows": 1, "inputs": {"columns": {"a": [0.5], "b": [-1.0]}},
        "outputs": {"predictions": [i]}} for model in ("iris2", "other") for i in (0, 1)])
    monitor.feedback("iris2", {"r1": 1})

    result = any_invoke("monitor", "request", "r1", "--model", "iris2", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["labeled"] is True and found["label"] == 1
    (logged,) = found["predictions"]
    assert logged["outputs"] == {"predictions": [1]} and logged["latency_ms"] == 2.5
    assert logged["inputs"] == {"columns": {"a": [0.5], "b": [-1.0]}}

    everywhere = json.loads(any_invoke("monitor", "request", "r1", "--json").stdout)
    assert sorted(f["model"] for f in everywhere) == ["iris2", "other"]  # ids are per model
    table = any_invoke("monitor", "request", "r1", "--model", "iris2")
    assert table.exit_code == 0 and "label 1" in table.stdout and "production" in table.stdout

    missing = assert_one_error(any_invoke("monitor", "request", "nope", "--model", "iris2"), 3)
    assert "nope" in missing and "not sampled" in missing
    assert "nope" in assert_one_error(any_invoke("monitor", "request", "nope"), 3)
    assert "ghost" in assert_one_error(
        any_invoke("monitor", "request", "r1", "--model", "ghost"), 3)


def test_feedback_for_a_prediction_not_logged_yet_says_it_is_kept(
        registered: Registry, any_invoke: Invoke) -> None:
    result = any_invoke("feedback", "iris2", "not-logged-yet", "1")
    assert result.exit_code == 0, result.output
    assert "stored 1 label(s) for iris2: 1 of 1 labels match no logged prediction yet" \
        in " ".join(result.stdout.split())
    assert "joined when the prediction is logged" in " ".join(result.stdout.split())


# -- rollouts from the spec -------------------------------------------------------------------
STAGED_PROJECT = textwrap.dedent('''
    models:
      staged:
        train: train.py:train
        data: {function: train.py:load}
        metrics: [accuracy, f1]
        gate: {min: {accuracy: 0.7}}
        rollout: {strategy: canary, steps: [10, 100], every_s: 30, min_requests: 40,
                  metric: f1}
''')


def production_of(home: Path, model: str) -> int | None:
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        return reg.get_model(model).aliases.get("production")


def test_train_starts_the_rollout_the_spec_declares(any_invoke: Invoke, home: Path,
                                                    tmp_path: Path) -> None:
    """It used to move production at once, whatever the rollout section said."""
    folder = tmp_path / "staged"
    folder.mkdir()
    (folder / "train.py").write_text(TINY_TRAIN)
    (folder / "modelyard.yaml").write_text(STAGED_PROJECT)
    project = ("--project", str(folder / "modelyard.yaml"))

    first = any_invoke("train", "staged", *project)  # nothing to compare with: to production
    assert first.exit_code == 0, first.output
    assert production_of(home, "staged") == 1

    # --force: the same data again, which would otherwise be "unchanged"
    second = any_invoke("train", "staged", *project, "--force", "--json")
    assert second.exit_code == 0, second.output
    [outcome] = json.loads(second.stdout)
    assert (outcome["status"], outcome["version"], outcome["promoted"]) == ("rollout", 2, False)
    assert outcome["rollout"]["strategy"] == "canary"
    assert production_of(home, "staged") == 1  # the canary decides, not the train command
    status = json.loads(any_invoke("rollout", "status", "staged", "--json").stdout)["deployment"]
    assert (status["strategy"], status["steps"], status["every_s"]) == ("canary", [10, 100],
                                                                      30.0)
    assert (status["stable_version"], status["candidate_version"]) == (1, 2)
    assert status["rules"]["metric"] == "f1" and status["rules"]["min_requests"] == 40
    assert status["candidate_percent"] == 0.0  # no server routes it in this test
    text = any_invoke("rollout", "status", "staged").stdout
    assert "Canary: v2 answers 10% of requests, v1 the rest" in text
    assert "no server routes this rollout yet" in text

    # a rollout is already running: the version is registered, the command says why it stopped
    third = any_invoke("train", "staged", *project, "--force")
    line = assert_one_error(third, 4)
    assert "already has a progressing canary rollout of version 2" in line
    assert "rollout not started" in third.stdout and production_of(home, "staged") == 1

    assert any_invoke("rollout", "abort", "staged").exit_code == 0
    direct = any_invoke("train", "staged", *project, "--no-rollout", "--force", "--json")
    assert json.loads(direct.stdout)[0]["status"] == "promoted"
    assert production_of(home, "staged") == 4
    promoted = any_invoke("train", "staged", *project, "--promote", "--force", "--json")
    assert json.loads(promoted.stdout)[0]["status"] == "promoted"
    assert production_of(home, "staged") == 5
    both = any_invoke("train", "staged", *project, "--promote", "--no-promote")
    assert both.exit_code == 2 and "choose one of --no-promote and --promote" in both.output


def test_deploy_takes_its_defaults_from_the_versions_spec(invoke: Invoke, home: Path) -> None:
    """deploy used to start a 5,25,50,100 canary every 60 s with default rules, whatever the
    version's spec declared."""
    from modelyard.testing import register_constant

    declared = {"rollout": {"strategy": "canary", "steps": [20, 100], "every_s": 15,
                            "max_error_rate": 0.05, "metric": "accuracy"},
                "metrics": ["f1", "accuracy"]}
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_constant(reg, "spec", 1, meta=declared)
        register_constant(reg, "spec", 2, meta=declared, promote=False)
    started = invoke("deploy", "spec", "2", "--json")
    assert started.exit_code == 0, started.output
    d = json.loads(started.stdout)
    assert (d["strategy"], d["steps"], d["every_s"]) == ("canary", [20, 100], 15.0)
    assert d["rules"]["max_error_rate"] == 0.05 and d["rules"]["metric"] == "accuracy"
    assert "Canary: v2 answers 20% of requests" in d["explain"]
    assert invoke("rollout", "abort", "spec").exit_code == 0
    # flags override the declared settings one by one
    again = json.loads(invoke("deploy", "spec", "2", "--every", "5s", "--max-error-rate",
                              "0.2", "--metric", "f1", "--json").stdout)
    assert (again["steps"], again["every_s"]) == ([20, 100], 5.0)
    assert again["rules"]["max_error_rate"] == 0.2 and again["rules"]["metric"] == "f1"
    assert invoke("rollout", "abort", "spec").exit_code == 0
    shadow = json.loads(invoke("deploy", "spec", "2", "--shadow", "--json").stdout)
    assert (shadow["strategy"], shadow["steps"]) == ("shadow", [100])
    assert "never promotes by itself" in shadow["explain"]


def test_promote_of_a_version_that_cannot_load_leaves_the_alias(invoke: Invoke,
                                                               home: Path) -> None:
    """promote used to move the alias to anything registered; servers then kept failing to
    load it."""
    from modelyard.testing import register_probe

    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_probe(reg, "probe")
        register_probe(reg, "probe", fail_load=True, promote=False)
        good = register_probe(reg, "probe", promote=False)
        path = Path(reg.settings.artifacts) / good.artifact_digest[:2] / good.artifact_digest
        path.write_bytes(path.read_bytes()[:-10] + b"tampered!!")
    line = assert_one_error(invoke("promote", "probe", "2"), 13)
    assert "probe:2 cannot be loaded, so probe@production stays at v1" in line
    assert "broken on purpose" in line
    line = assert_one_error(invoke("promote", "probe", "3"), 9)
    assert "probe:3 cannot be loaded, so probe@production stays at v1" in line
    assert production_of(home, "probe") == 1
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        assert [e.version for e in reg.alias_history("probe", "production")] == [1]
    assert invoke("promote", "probe", "2", "--no-check").exit_code == 0  # on your head
    assert production_of(home, "probe") == 2
