"""End to end: ``modelyard demo`` and the commands it suggests, as subprocesses in a temp folder.

The demo runs twice (a rerun must succeed too; the second time it goes on to serve the models and
every curl it prints is run against it), then each model predicts its shipped example input, a
drifted fraud batch is generated and fraud retrained, and production is rolled back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXPECTED = {
    "fraud": ("sklearn", [0, 1]),
    "digits": ("torch", [0, 3, 1]),
    "tickets": ("tensorflow", ["billing", "technical", "shipping"]),
}


@dataclass
class Demo:
    folder: Path
    runs: list[subprocess.CompletedProcess[str]]
    curls: list[dict]


def _executable() -> str:
    script = Path(sys.executable).parent / "modelyard"
    return str(script) if script.exists() else shutil.which("modelyard") or "modelyard"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env["COLUMNS"] = "200"
    return env


def modelyard(folder: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the installed ``modelyard`` command in ``folder`` (its registry: ./.modelyard)."""
    return subprocess.run([_executable(), *args], cwd=folder, env=_env(), text=True,
                          capture_output=True, timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    folder = tmp_path_factory.mktemp("demo")
    shutil.copytree(EXAMPLES, folder / "examples",
                    ignore=shutil.ignore_patterns("data", "__pycache__"))
    first = modelyard(folder, "demo", "--no-serve")
    second, curls = _demo_serving(folder)
    return Demo(folder, [first, second], curls)


def _demo_serving(folder: Path) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    """Run ``modelyard demo`` with serving on, run each curl it prints, then stop it (Ctrl-C)."""
    port = _free_port()
    out_file, err_file = folder / "demo-serve.out", folder / "demo-serve.err"
    curls: list[dict] = []
    with open(out_file, "w") as out, open(err_file, "w") as err:
        proc = subprocess.Popen([_executable(), "demo", "--port", str(port)], cwd=folder,
                                env=_env(), text=True, stdout=out, stderr=err)
        try:
            _wait_ready(proc, port, timeout=900)
            # the curls are printed before the server starts, so they are in the file by now
            for line in out_file.read_text().splitlines():
                if "curl -s -X POST" in line:
                    done = subprocess.run(line.strip(), shell=True, cwd=folder, text=True,
                                          capture_output=True, timeout=60, check=False)
                    curls.append({"command": line.strip(), "rc": done.returncode,
                                  "body": done.stdout})
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out_file.read_text(),
                                       err_file.read_text()), curls


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(proc: subprocess.Popen[str], port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"demo exited early with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError("the demo's server never became ready")


def test_demo_runs_twice_and_exits_0(demo: Demo) -> None:
    first, second = demo.runs
    ok(first)
    assert "generated the first fraud batch" in first.stdout
    assert "what to try next" in first.stdout
    assert "modelyard predict fraud@production --input examples/fraud/example_input.json" in (
        first.stdout)
    ok(second)
    assert "generated" not in second.stdout  # the batch from the first run is reused
    for name in EXPECTED:  # nothing changed since the first run: nothing new is registered
        assert f"unchanged: identical to {name}:1" in second.stdout, second.stdout
        assert f"{name}:2" not in second.stdout
    assert (demo.folder / "examples" / "fraud" / "data" / "batch-000.csv").is_file()


def test_demo_serves_and_every_printed_curl_works(demo: Demo) -> None:
    assert sorted(json.loads(c["body"])["model"] for c in demo.curls) == sorted(EXPECTED)
    for curl in demo.curls:
        assert curl["rc"] == 0, curl
        body = json.loads(curl["body"])
        name = body["model"]
        assert body["predictions"][: len(EXPECTED[name][1])] == EXPECTED[name][1], curl
    assert demo.runs[1].returncode == 0, demo.runs[1].stderr


def test_three_models_with_production_aliases(demo: Demo) -> None:
    models = json.loads(ok(modelyard(demo.folder, "models", "--json")).stdout)
    assert sorted(m["name"] for m in models) == sorted(EXPECTED)
    for model in models:
        assert "production" in model["aliases"], model
        shown = json.loads(ok(modelyard(demo.folder, "show", model["name"], "--json")).stdout)
        assert shown["flavor"] == EXPECTED[model["name"]][0]
        assert shown["metrics"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_predict_the_shipped_example_inputs(demo: Demo, name: str) -> None:
    source = f"examples/{name}/example_input.json"
    result = ok(modelyard(demo.folder, "predict", f"{name}@production", "--input", source,
                          "--scores"))
    out = json.loads(result.stdout)
    assert out["predictions"] == EXPECTED[name][1]
    assert len(out["scores"]) == len(out["predictions"])


def test_drifted_batch_retrain_and_rollback(demo: Demo) -> None:
    folder = demo.folder
    # a forced retrain on the first batch alone, promoted without the example's canary: one more
    # version to roll back from
    forced = modelyard(folder, "train", "fraud", "--force", "--promote", "--project",
                       "examples/modelyard.yaml")
    assert forced.returncode in (0, 12), forced.stdout + forced.stderr
    generated = subprocess.run(
        [sys.executable, "examples/fraud/generate.py", "--drift", "0.8", "--rows", "4000"],
        cwd=folder, text=True, capture_output=True, timeout=300, check=False)
    ok(generated)
    assert "batch-001.csv" in generated.stdout

    before = json.loads(ok(modelyard(folder, "show", "fraud", "--json")).stdout)["version"]
    retrain = modelyard(folder, "train", "fraud", "--project", "examples/modelyard.yaml")
    assert retrain.returncode in (0, 12), retrain.stdout + retrain.stderr  # 12: gate said no
    if retrain.returncode == 12:
        assert retrain.stderr.startswith("error: ") and "rejected" in retrain.stderr
    else:  # the example declares a canary: it starts, and production waits for its analysis
        status = json.loads(ok(modelyard(folder, "rollout", "status", "fraud", "--json")).stdout)
        deployment = status["deployment"]
        assert (deployment["strategy"], deployment["state"]) == ("canary", "progressing")
        assert deployment["candidate_version"] == before + 1
        ended = ok(modelyard(folder, "rollback", "fraud", "--reason", "not today"))
        assert "rollout of" in ended.stdout and "rolled back" in ended.stdout
    after = json.loads(ok(modelyard(folder, "show", "fraud", "--json")).stdout)["version"]
    assert after == before
    ok(modelyard(folder, "predict", "fraud", "--input", "examples/fraud/example_input.json"))

    versions = json.loads(ok(modelyard(folder, "versions", "fraud", "--json")).stdout)
    assert len(versions) >= 2  # the forced retrain or the one on new data got through
    rolled = ok(modelyard(folder, "rollback", "fraud", "--reason", "e2e"))
    assert "rolled back" in rolled.stdout
    now = json.loads(ok(modelyard(folder, "show", "fraud", "--json")).stdout)["version"]
    assert now != after
    history = json.loads(ok(modelyard(folder, "history", "fraud", "--json")).stdout)
    assert history[0]["action"] == "rollback" and history[0]["reason"] == "e2e"
    ok(modelyard(folder, "predict", "fraud", "--input", "examples/fraud/example_input.json"))


def test_demo_heal_closes_the_loop_with_no_human_step(tmp_path: Path) -> None:
    """The fraud model's world drifts: the drift is detected, a retraining triggered, the new
    version passes its gate, goes through a canary and is promoted; no request fails, and the
    audit trail shows each step with who did it and why."""
    shutil.copytree(EXAMPLES, tmp_path / "examples",
                    ignore=shutil.ignore_patterns("data", "__pycache__"))
    result = ok(modelyard(tmp_path, "demo", "--no-serve", "--heal", "--model", "fraud"))
    assert "scheduler trigger: drift: share" in result.stdout
    assert "healed: fraud v2 now serves (was v1), with 0 failed requests" in result.stdout
    audit = json.loads(ok(modelyard(tmp_path, "audit", "fraud", "--json",
                                    "--limit", "10000")).stdout)
    # the label batches the traffic fed back and the scheduler's drift checks are audited too
    fed = [e for e in audit if e["action"] == "labels.store"]
    assert fed and {e["actor"] for e in fed} == {"api:anonymous"}
    assert any(e["action"] == "drift.check" and e["actor"] == "scheduler" for e in audit)
    steps = [(e["actor"], e["action"], e["details"]) for e in reversed(audit)
             if e["action"] not in ("labels.store", "drift.check")]
    actions = [action for _, action, _ in steps]
    triggered = actions.index("retrain.triggered")
    assert steps[triggered][0] == "scheduler"
    assert steps[triggered][2]["reason"].startswith("drift: share")
    started = actions.index("deployment.start")
    assert started > triggered and steps[started][0].startswith("scheduler:")
    promoted = actions.index("deployment.promote")
    assert promoted > started and steps[promoted][0] == "analysis"
    assert "error rate" in steps[promoted][2]["reason"]
    assert actions[-1] == "alias.set" and steps[-1][2]["version"] == 2
    history = json.loads(ok(modelyard(tmp_path, "rollout", "status", "fraud", "--json")).stdout)
    assert history["deployment"]["state"] == "promoted"
