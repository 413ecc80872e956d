"""Batch scoring end to end in-process: real files (Parquet, CSV, JSON lines, fsspec memory://),
real models (scikit-learn, PyTorch, a text pipeline), SQLite, resume, refusals and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from modelyard.batch import BATCH_VARIANT, BatchJob, ChunkDone, score
from modelyard.cli import main
from modelyard.errors import ConfigError, ConflictError, RowRejectedError
from modelyard.predictor import load
from modelyard.registry import Registry
from modelyard.testing.models import (
    register_hgb,
    register_mlp,
    register_text,
    tabular_data,
)

FEATURES = [f"f{i}" for i in range(4)]


@pytest.fixture()
def reg(registry: Registry) -> Registry:
    register_hgb(registry, "tab", max_iter=10, n_features=4)
    return registry


def frame(n: int, seed: int = 1) -> pd.DataFrame:
    X, _ = tabular_data(n_rows=n, n_features=4, seed=seed)
    df = pd.DataFrame(X, columns=FEATURES)
    df.insert(0, "id", np.arange(n, dtype=np.int64) + 10_000)
    df["label"] = "ignored"  # columns the model does not take are left alone
    return df


def expected(reg: Registry, df: pd.DataFrame, ref: str = "tab") -> pd.DataFrame:
    predictor = load(ref, registry=reg)
    got = predictor.predict_full(df[FEATURES].to_numpy(), scores=True)
    return pd.DataFrame({"id": df["id"], "predictions": got.predictions,
                         "scores": list(got.scores)})


def read_out(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder).sort_values("id" if "id" in pq.read_schema(
        next(folder.glob("part-*.parquet"))).names else "row").reset_index(drop=True)


def visible_files(folder: Path) -> list[str]:
    return sorted(Path(f).name for f in ds.dataset(folder, format="parquet").files)


def test_parquet_glob_to_a_folder_gives_the_servers_answers_keyed(reg: Registry,
                                                                  tmp_path: Path) -> None:
    df = frame(1000)
    (tmp_path / "in").mkdir()
    df.iloc[:600].to_parquet(tmp_path / "in" / "a.parquet")
    df.iloc[600:].to_parquet(tmp_path / "in" / "b.parquet")
    out = tmp_path / "out"
    seen: list[ChunkDone] = []
    summary = score(BatchJob("tab", str(tmp_path / "in" / "*.parquet"), str(out), key=("id",),
                             chunk_rows=300, scores=True), reg, on_chunk=seen.append)

    assert (summary.status, summary.rows, summary.errors, summary.chunks) == (
        "succeeded", 1000, 0, 4)
    assert [c.rows for c in seen] == [300, 300, 300, 100] and seen[-1].expected == 1000
    got, want = read_out(out), expected(reg, df)
    assert got["id"].tolist() == want["id"].tolist()
    assert got["predictions"].tolist() == want["predictions"].tolist()
    np.testing.assert_allclose(np.stack(got["scores"]), np.stack(want["scores"]))
    meta = pq.read_schema(out / "part-000000.parquet").metadata
    assert meta[b"modelyard.version"] == b"1" and json.loads(meta[b"modelyard.classes"]) == [0, 1]
    # only whole parts are visible, and nothing temporary is left
    assert visible_files(out) == [f"part-00000{i}.parquet" for i in range(4)]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["chunks_done"] == 4


def test_without_a_key_each_answer_carries_its_input_row(reg: Registry, tmp_path: Path) -> None:
    df = frame(50)
    df.to_parquet(tmp_path / "in.parquet")
    score(BatchJob("tab", str(tmp_path / "in.parquet"), str(tmp_path / "out"), chunk_rows=20),
          reg)
    got = read_out(tmp_path / "out")
    assert got["row"].tolist() == list(range(50))
    assert got["predictions"].tolist() == expected(reg, df)["predictions"].tolist()


def test_csv_bad_cells_go_to_the_error_file_with_their_reasons(reg: Registry,
                                                               tmp_path: Path) -> None:
    df = frame(40).astype({"f1": object})
    df.loc[3, "f1"] = "abc"
    df.loc[25, "f1"] = None  # an empty cell
    df.to_csv(tmp_path / "in.csv", index=False)
    summary = score(BatchJob("tab", str(tmp_path / "in.csv"), str(tmp_path / "out"),
                             key=("id",), chunk_rows=16), reg)

    assert (summary.rows, summary.errors) == (38, 2)
    errors = pd.read_parquet(tmp_path / "out" / "_errors").sort_values("row")
    assert errors["id"].tolist() == [10_003, 10_025]
    assert errors["row"].tolist() == [3, 25]
    assert errors["error"].iloc[0] == "f1: expected float64, got the string 'abc'"
    assert errors["error"].iloc[1].startswith("f1: expected float64, got null")
    good = frame(40).drop(index=[3, 25])
    got = read_out(tmp_path / "out")
    assert got["id"].tolist() == good["id"].tolist()
    assert got["predictions"].tolist() == expected(reg, good)["predictions"].tolist()


def test_json_lines_refuse_what_a_request_would_refuse(reg: Registry, tmp_path: Path) -> None:
    df = frame(6)
    lines = [json.dumps(r) for r in df.drop(columns="label").to_dict(orient="records")]
    lines[1] = lines[1].replace('"f0": ', '"f0": true, "was": ')  # a boolean is not a number
    lines[2] = "{not json"
    lines[4] = json.dumps({k: v for k, v in json.loads(lines[4]).items() if k != "f3"})
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n\n")
    summary = score(BatchJob("tab", str(tmp_path / "in.jsonl"), str(tmp_path / "out"),
                             chunk_rows=4), reg)

    assert (summary.rows, summary.errors) == (3, 3)
    errors = pd.read_parquet(tmp_path / "out" / "_errors").sort_values("row")
    assert errors["row"].tolist() == [1, 2, 4]
    reasons = errors["error"].tolist()
    assert reasons[0] == "f0: expected float64, got the boolean true (not a number)"
    assert reasons[1].startswith("line is not valid JSON")
    assert reasons[2].startswith("f3: expected float64, got null")
    good = df.drop(index=[1, 2, 4])
    assert read_out(tmp_path / "out")["predictions"].tolist() == \
        expected(reg, good)["predictions"].tolist()


def test_fsspec_urls_are_read_and_written_in_single_puts(reg: Registry) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    df = frame(120)
    with fs.open("/batch-in/data.parquet", "wb") as f:
        df.to_parquet(f)
    summary = score(BatchJob("tab", "memory://batch-in/*.parquet", "memory://batch-out",
                             key=("id",), chunk_rows=50), reg)
    assert summary.rows == 120
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.find("/batch-out"))
    assert names == ["_manifest.json", "part-000000.parquet", "part-000001.parquet",
                     "part-000002.parquet"]
    with fs.open("/batch-out/part-000002.parquet", "rb") as f:
        assert pq.read_table(f).column("id").to_pylist() == df["id"].tolist()[100:]
    fs.rm("/batch-in", recursive=True)
    fs.rm("/batch-out", recursive=True)


def test_a_run_stopped_between_chunks_resumes_without_duplicates_or_gaps(
        reg: Registry, tmp_path: Path) -> None:
    df = frame(1000)
    df.to_parquet(tmp_path / "in.parquet")
    job = BatchJob("tab", str(tmp_path / "in.parquet"), str(tmp_path / "out"), key=("id",),
                   chunk_rows=150)

    def stop_after_three(done: ChunkDone) -> None:
        if done.index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score(job, reg, on_chunk=stop_after_three)
    assert visible_files(tmp_path / "out") == [f"part-00000{i}.parquet" for i in range(3)]
    # a part a kill left half written, and a part written past what the manifest counts
    (tmp_path / "out" / ".part-000003.parquet.tmp-dead").write_bytes(b"PAR1 half")
    pq.write_table(pa.table({"id": [1], "predictions": [9]}), tmp_path / "out" /
                   "part-000003.parquet")

    summary = score(job, reg)
    assert (summary.resumed_chunks, summary.chunks, summary.rows) == (3, 7, 1000)
    got = read_out(tmp_path / "out")
    assert got["id"].tolist() == df["id"].tolist()  # each row exactly once
    assert got["predictions"].tolist() == expected(reg, df)["predictions"].tolist()
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]
    first, second = reg.list_runs("tab")[::-1]
    assert (first.kind, first.status, second.status) == ("batch", "failed", "succeeded")
    assert second.details is not None and second.details["resumed_chunks"] == 3

    again = score(job, reg)  # a finished output: nothing to do
    assert (again.run_id, again.rows, again.chunks) == (None, 1000, 7)


def test_another_version_or_input_over_an_output_is_refused_unless_restart(
        reg: Registry, tmp_path: Path) -> None:
    frame(30).to_parquet(tmp_path / "in.parquet")
    job = BatchJob("tab", str(tmp_path / "in.parquet"), str(tmp_path / "out"), chunk_rows=10)
    score(job, reg)
    register_hgb(reg, "tab", max_iter=5, n_features=4, promote=False)
    with pytest.raises(ConflictError, match="version: the output has 1, this run 2"):
        score(BatchJob("tab:2", job.input, job.output), reg)
    frame(30, seed=5).to_parquet(tmp_path / "in.parquet")
    with pytest.raises(ConflictError, match="input: "):
        score(job, reg)

    summary = score(BatchJob("tab:2", job.input, job.output, chunk_rows=7, restart=True), reg)
    assert (summary.version, summary.chunks) == (2, 5)
    assert visible_files(tmp_path / "out") == [f"part-00000{i}.parquet" for i in range(5)]
    assert {pq.read_schema(p).metadata[b"modelyard.version"]
            for p in (tmp_path / "out").glob("part-*")} == {b"2"}


def test_on_error_fail_stops_at_the_first_bad_row_with_nothing_committed(
        reg: Registry, tmp_path: Path) -> None:
    df = frame(30)
    df.loc[12, "f2"] = np.nan
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).set_column(
        3, "f2", pa.array(df["f2"], from_pandas=True)), tmp_path / "in.parquet")
    job = BatchJob("tab", str(tmp_path / "in.parquet"), str(tmp_path / "out"), key=("id",),
                   chunk_rows=10, on_error="fail")
    with pytest.raises(RowRejectedError, match=r"row id=10012, row=12 was refused: f2: "):
        score(job, reg)
    assert visible_files(tmp_path / "out") == ["part-000000.parquet"]
    assert reg.list_runs("tab")[0].status == "failed"


def test_missing_columns_and_bad_settings_are_one_clear_error(reg: Registry,
                                                              tmp_path: Path) -> None:
    frame(5).drop(columns="f2").to_parquet(tmp_path / "in.parquet")
    with pytest.raises(ConfigError, match="has no column 'f2' that the model takes"):
        score(BatchJob("tab", str(tmp_path / "in.parquet"), str(tmp_path / "o")), reg)
    with pytest.raises(ConfigError, match="--key nope is not a column"):
        score(BatchJob("tab", str(tmp_path / "in.parquet"), str(tmp_path / "o"),
                       key=("nope",)), reg)
    with pytest.raises(ConfigError, match="matches no file"):
        score(BatchJob("tab", str(tmp_path / "*.csv"), str(tmp_path / "o")), reg)
    with pytest.raises(ConfigError, match="chunk-rows"):
        BatchJob("tab", "x", "y", chunk_rows=0)
    with pytest.raises(ConfigError, match="unknown batch engine 'spark'; known: local, ray"):
        score(BatchJob("tab", "x", "y", engine="spark"), reg)


def test_sqlite_query_in_and_table_out_with_errors_and_resume(reg: Registry,
                                                             tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    url = f"sqlite:///{tmp_path / 'app.db'}"
    df = frame(45).drop(columns="label").astype({"f0": object})
    df.loc[7, "f0"] = None
    engine = create_engine(url)
    df.to_sql("tx", engine, index=False)
    job = BatchJob("tab", "sql:SELECT * FROM tx ORDER BY id", "sql:tx_scores", key=("id",),
                   chunk_rows=10, sql_url=url, scores=True)

    def stop(done: ChunkDone) -> None:
        if done.index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score(job, reg, on_chunk=stop)
    summary = score(job, reg)
    assert (summary.rows, summary.errors, summary.resumed_chunks) == (44, 1, 2)
    out = pd.read_sql("SELECT * FROM tx_scores ORDER BY id", engine)
    good = frame(45).drop(index=[7])
    assert out["id"].tolist() == good["id"].tolist()
    assert out["predictions"].tolist() == expected(reg, good)["predictions"].tolist()
    assert len(json.loads(out["scores"].iloc[0])) == 2
    errors = pd.read_sql("SELECT * FROM tx_scores_errors", engine)
    assert errors["id"].tolist() == [10_007] and errors["error"].iloc[0].startswith("f0: ")
    engine.dispose()


def test_a_pytorch_model_scores_a_tensor_column(registry: Registry, tmp_path: Path) -> None:
    register_mlp(registry, "mlp", sizes=(4, 8, 3))
    X = np.random.default_rng(0).normal(size=(70, 4)).astype(np.float32)
    tensors = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 4)
    pq.write_table(pa.table({"id": np.arange(70), "input": tensors}), tmp_path / "in.parquet")
    summary = score(BatchJob("mlp", str(tmp_path / "in.parquet"), str(tmp_path / "out"),
                             key=("id",), chunk_rows=32, scores=True), registry)
    assert (summary.rows, summary.errors) == (70, 0)
    got = read_out(tmp_path / "out")
    want = load("mlp", registry=registry).predict_full(X, scores=True)
    assert got["predictions"].tolist() == want.predictions.tolist()
    np.testing.assert_allclose(np.stack(got["scores"]), want.scores, rtol=1e-6)


def test_a_text_model_scores_a_string_column(registry: Registry, tmp_path: Path) -> None:
    register_text(registry, "tickets")
    texts = ["great, thanks", "never arrived", None, "love it"]
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "text": texts}), tmp_path / "in.parquet")
    summary = score(BatchJob("tickets", str(tmp_path / "in.parquet"), str(tmp_path / "out"),
                             key=("id",)), registry)
    assert (summary.rows, summary.errors) == (3, 1)
    want = load("tickets", registry=registry).predict([t for t in texts if t is not None])
    assert read_out(tmp_path / "out")["predictions"].tolist() == want.tolist()


def test_sampled_rows_reach_the_prediction_log_as_batch_traffic(reg: Registry,
                                                                tmp_path: Path) -> None:
    from modelyard.monitoring.logstore import DatabaseStore

    frame(40).to_parquet(tmp_path / "in.parquet")
    summary = score(BatchJob("tab", str(tmp_path / "in.parquet"), str(tmp_path / "out"),
                             key=("id",), log_sample=1.0), reg)
    assert summary.logged == 40
    logged = DatabaseStore(reg).find("tab", ["10000", "10039"])
    assert sorted(p.request_id for p in logged) == ["10000", "10039"]
    assert {p.variant for p in logged} == {BATCH_VARIANT}


# -- the command line ---------------------------------------------------------------------------
def invoke(home: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--home", str(home), *args])


def test_cli_scores_lists_the_run_and_fails_with_its_exit_codes(reg: Registry,
                                                                tmp_path: Path) -> None:
    home = reg.settings.home
    df = frame(30)
    df.to_parquet(tmp_path / "in.parquet")
    out = str(tmp_path / "out")
    result = invoke(home, "batch", "tab@production", "-i", str(tmp_path / "in.parquet"), "-o",
                    out, "--key", "id", "--chunk-rows", "10", "--json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert (done["rows"], done["errors"], done["version"]) == (30, 0, 1)

    runs = invoke(home, "runs", "tab")
    assert runs.exit_code == 0
    assert "batch" in runs.output and "30 rows, 0 refused" in runs.output
    listed = json.loads(invoke(home, "runs", "--json").stdout)[0]
    assert listed["kind"] == "batch" and listed["details"]["input_fingerprint"] == \
        done["input_fingerprint"]
    shown = invoke(home, "runs", "show", done["run_id"][:8]).output
    assert done["input_fingerprint"] in shown and "refused" in shown

    df.loc[4, "f0"] = np.nan
    df.astype({"f0": object}).where(df.notna(), None).to_parquet(tmp_path / "bad.parquet")
    failed = invoke(home, "batch", "tab", "-i", str(tmp_path / "bad.parquet"), "-o",
                    str(tmp_path / "out2"), "--on-error", "fail")
    assert failed.exit_code == 16
    lines = [line for line in failed.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: row row=4 was refused: f0: ")

    clash = invoke(home, "batch", "tab", "-i", str(tmp_path / "bad.parquet"), "-o", out)
    assert clash.exit_code == 4 and "--restart" in clash.output


def test_a_registered_sink_scheme_receives_each_chunk_with_its_manifest(
        reg: Registry, tmp_path: Path) -> None:
    from modelyard.batch.plan import Manifest, Start
    from modelyard.batch.sinks import SINKS, register_sink

    class ListSink:  # what an online store (precompute) plugs in as
        def __init__(self, target: str) -> None:
            self.description = self.errors_location = f"list:{target}"
            self.commits: list[tuple[int, int, int, Manifest]] = []
            self.done: Manifest | None = None

        def read_manifest(self) -> Manifest | None:
            return None

        def begin(self, start: Start) -> None:
            assert start.action == "fresh"

        def commit(self, index: int, scored: pa.Table, errors: pa.Table,
                   manifest: Manifest) -> None:
            self.commits.append((index, scored.num_rows, errors.num_rows, manifest))

        def finish(self, manifest: Manifest) -> None:
            self.done = manifest

    made: list[ListSink] = []

    def factory(target: str, /, *, sql_url: str | None) -> ListSink:
        made.append(ListSink(target))
        return made[-1]

    register_sink("list", factory)
    try:
        frame(25).to_parquet(tmp_path / "in.parquet")
        summary = score(BatchJob("tab", str(tmp_path / "in.parquet"), "list:scores",
                                 key=("id",), chunk_rows=10), reg)
    finally:
        SINKS.pop("list")
    (sink,) = made
    assert summary.output == "list:scores"
    assert [(i, n, e) for i, n, e, _ in sink.commits] == [(0, 10, 0), (1, 10, 0), (2, 5, 0)]
    assert [m.chunks_done for *_, m in sink.commits] == [1, 2, 3]
    assert sink.done is not None and sink.done.complete and sink.done.rows == 25


def test_a_version_that_cannot_load_is_a_failed_batch_run(reg: Registry, tmp_path: Path) -> None:
    from modelyard.errors import ModelyardError

    frame(5).to_parquet(tmp_path / "in.parquet")
    with pytest.raises(ModelyardError) as caught:
        score(BatchJob("tab", str(tmp_path / "in.parquet"), str(tmp_path / "out"),
                       device="cuda:7"), reg)
    (run,) = reg.list_runs("tab")
    assert (run.kind, run.status, run.failure_reason) == ("batch", "failed", str(caught.value))
    assert not (tmp_path / "out").exists()  # nothing written before the model loaded


def test_unreadable_inputs_and_failing_queries_are_one_line_errors(reg: Registry,
                                                                    tmp_path: Path) -> None:
    from modelyard.errors import StorageError

    frame(30).to_parquet(tmp_path / "good.parquet")
    data = (tmp_path / "good.parquet").read_bytes()
    # a valid footer over garbled pages: the schema reads, the rows do not
    (tmp_path / "bad.parquet").write_bytes(data[:4] + b"\x00" * (len(data) - 200) + data[-196:])
    with pytest.raises(ConfigError, match="cannot read --input"):
        score(BatchJob("tab", str(tmp_path / "bad.parquet"), str(tmp_path / "o")), reg)
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with pytest.raises(ConfigError, match="no such table: nope"):
        score(BatchJob("tab", "sql:SELECT * FROM nope", str(tmp_path / "o"), sql_url=url), reg)
    with pytest.raises(StorageError, match="cannot connect"):
        score(BatchJob("tab", "sql:SELECT 1", str(tmp_path / "o"),
                       sql_url=f"sqlite:///{tmp_path / 'missing' / 'x.db'}"), reg)
