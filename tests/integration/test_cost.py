"""Cost per model against real processes: a server charging CPU to the models it serves (in
its own threads and in a device worker), ``modelyard cost`` reading it and naming the idle
model, and training and batch runs recording their CPU."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from modelyard.cli import main
from modelyard.config import Settings
from modelyard.monitoring.cost_sources import run_usage
from modelyard.pipeline import run_pipeline
from modelyard.registry import Registry
from modelyard.spec import load_project
from modelyard.testing import ServerProcess, labeled_frame, register_constant, register_hgb

pytestmark = pytest.mark.integration


def _samples(text: str, name: str) -> dict[str, float]:
    return {s.labels["model"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name}


def test_server_charges_cpu_to_the_busy_model_and_cost_names_the_idle_one(tmp_path: Path):
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_hgb(reg, "busy", max_iter=50, n_features=4)
        register_constant(reg, "quiet", 1)
        register_hgb(reg, "apart", max_iter=50, n_features=4,
                     meta={"serving": {"isolation": "process", "device": "cpu"}})
    row = {f"f{i}": 0.5 for i in range(4)}
    with ServerProcess(home) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        for _ in range(60):
            r = c.post("/v1/models/busy/predict", json={"records": [row] * 8})
            assert r.status_code == 200, r.text
        for _ in range(10):  # predicted in its device worker, which reports what it took
            r = c.post("/v1/models/apart/predict", json={"records": [row] * 8})
            assert r.status_code == 200, r.text
        text = c.get("/metrics").text
        cpu = _samples(text, "modelyard_model_cpu_seconds_total")
        assert cpu["busy"] > 0 and cpu["apart"] > 0
        assert cpu["quiet"] == 0  # warmed at load, never asked: nothing charged
        assert _samples(text, "modelyard_model_memory_byte_seconds_total")["busy"] > 0
        assert _samples(text, "modelyard_model_last_request_timestamp_seconds").keys() == {
            "busy", "apart"}
        assert _samples(text, "modelyard_model_max_batch_size")["quiet"] >= 1

        result = CliRunner().invoke(main, [
            "--home", str(home), "cost", "--server", server.url, "--since", "1h",
            "--price-cpu-hour", "0.05", "--price-gb-hour", "0.01", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        by_model = {m["model"]: m for m in report["models"]}
        assert by_model["busy"]["serving_cpu_s"] > 0
        assert by_model["busy"]["requests"] == 60
        assert by_model["busy"]["cost"] > 0
        assert by_model["quiet"]["serving_cpu_s"] == 0
        idle = [s for s in report["savings"] if s["kind"] == "idle"]
        assert [(s["model"], s["version"]) for s in idle] == [("quiet", "1")]
        assert idle[0]["saves"] > 0 and "--idle-unload" in idle[0]["advice"]
        # the table form says the same in words
        table = CliRunner().invoke(main, ["--home", str(home), "cost", "--server", server.url,
                                          "--since", "1h"])
        assert table.exit_code == 0, table.output
        assert "quiet" in table.output and "idle" in table.output


def test_cost_refuses_bad_input_in_one_line(tmp_path: Path):
    home = str(tmp_path / "home")
    for args, needle in ((["--price-cpu-hour", "-1"], "price"),
                         (["--since", "soon"], "since"),
                         (["--server", "ftp://x"], "http")):
        result = CliRunner().invoke(main, ["--home", home, "cost", *args])
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output.lower()


TRAIN_PY = '''
def train(X, y, params):
    from sklearn.linear_model import LogisticRegression

    for _ in range(20):  # some CPU to measure
        model = LogisticRegression(max_iter=500).fit(X, y)
    return model
'''


def test_a_training_run_records_its_cpu_seconds(tmp_path: Path):
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "train.py").write_text(textwrap.dedent(TRAIN_PY))
    (root / "modelyard.yaml").write_text(
        "models:\n  clf:\n    train: train.py:train\n"
        "    data: {path: \"data/*.csv\", target: label}\n")
    labeled_frame(300, seed=1).to_csv(root / "data" / "part-1.csv", index=False)
    spec = load_project(root / "modelyard.yaml")["clf"]
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as reg:
        result = run_pipeline(spec, reg)
        details = reg.get_run(result.run.id).details or {}
        assert 0 < details["cpu_s"] < 600
        runs = run_usage(reg, result.run.started_at)
    assert [(r.model, r.kind, r.cpu_s) for r in runs] == [("clf", "train", details["cpu_s"])]


def test_a_batch_run_records_its_cpu_seconds(tmp_path: Path):
    import numpy as np
    import pandas as pd

    from modelyard.batch import BatchJob, score
    from modelyard.testing import tabular_data

    X, _ = tabular_data(n_rows=3000, n_features=4, seed=2)
    pd.DataFrame(X, columns=[f"f{i}" for i in range(4)]).assign(
        id=np.arange(len(X))).to_parquet(tmp_path / "in.parquet")
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as reg:
        register_hgb(reg, "tab", max_iter=30, n_features=4)
        summary = score(BatchJob("tab", str(tmp_path / "in.parquet"), str(tmp_path / "out"),
                                 key=("id",), chunk_rows=500), reg)
        assert summary.status == "succeeded"
        run = reg.get_run(str(summary.run_id))
        cpu = (run.details or {})["cpu_s"]
        assert 0 < cpu < 600
        assert [(r.kind, r.cpu_s) for r in run_usage(reg, run.started_at)] == [("batch", cpu)]


def test_under_workers_every_process_charges_and_metrics_sum_them(tmp_path: Path):
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_hgb(reg, "busy", max_iter=30, n_features=4)
    row = {f"f{i}": 0.5 for i in range(4)}
    with ServerProcess(home, args=("--workers", "2")) as server:
        # separate connections spread over both worker processes (SO_REUSEPORT)
        for _ in range(40):
            with httpx.Client(base_url=server.url, timeout=30) as c:
                assert c.post("/v1/models/busy/predict", json={"records": [row]}).status_code \
                    == 200
        time.sleep(1.2)  # past a flush interval: the next batch adds what waited
        for _ in range(10):
            with httpx.Client(base_url=server.url, timeout=30) as c:
                c.post("/v1/models/busy/predict", json={"records": [row]})
        with httpx.Client(base_url=server.url, timeout=30) as c:
            texts = [c.get("/metrics").text for _ in range(4)]
    for text in texts:
        assert _samples(text, "modelyard_model_cpu_seconds_total")["busy"] > 0
        assert _samples(text, "modelyard_requests_total")["busy"] == 50
        starts = [s for f in text_string_to_metric_families(text) for s in f.samples
                  if s.name == "modelyard_server_start_time_seconds"]
        assert len(starts) == 1 and 0 < time.time() - starts[0].value < 600
