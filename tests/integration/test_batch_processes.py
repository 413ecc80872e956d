"""Batch scoring against the real PostgreSQL (a query in, a table out) and a real kill: a
``modelyard batch`` process SIGKILLed between chunks resumes without duplicating or losing rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from modelyard.batch import BatchJob, ChunkDone, score
from modelyard.predictor import load
from modelyard.registry import Registry
from modelyard.testing.models import register_hgb, tabular_data

pytestmark = pytest.mark.integration
FEATURES = [f"f{i}" for i in range(4)]


def frame(n: int) -> pd.DataFrame:
    X, _ = tabular_data(n_rows=n, n_features=4, seed=3)
    df = pd.DataFrame(X, columns=FEATURES)
    df.insert(0, "id", np.arange(n, dtype=np.int64))
    return df


def test_a_postgres_query_scores_into_a_postgres_table_and_resumes(registry: Registry,
                                                                   pg_url: str) -> None:
    from sqlalchemy import create_engine

    register_hgb(registry, "tab", max_iter=10, n_features=4)
    df = frame(250).astype({"f2": object})
    df.loc[[17, 201], "f2"] = None
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    df.to_sql("tx", engine, index=False)
    with engine.begin() as conn:  # NUMERIC arrives as Decimal: scored as the number it is
        conn.exec_driver_sql("ALTER TABLE tx ALTER COLUMN f0 TYPE numeric")
    job = BatchJob("tab", "sql:SELECT * FROM tx ORDER BY id", "sql:tx_scores", key=("id",),
                   chunk_rows=40, sql_url=pg_url, scores=True)

    def stop(done: ChunkDone) -> None:
        if done.index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score(job, registry, on_chunk=stop)
    summary = score(job, registry)
    assert (summary.rows, summary.errors, summary.resumed_chunks, summary.chunks) == (
        248, 2, 3, 7)
    out = pd.read_sql("SELECT * FROM tx_scores ORDER BY id", engine)
    good = frame(250).drop(index=[17, 201])
    assert out["id"].tolist() == good["id"].tolist()
    want = load("tab", registry=registry).predict(good[FEATURES].to_numpy())
    assert out["predictions"].tolist() == want.tolist()
    errors = pd.read_sql("SELECT * FROM tx_scores_errors ORDER BY id", engine)
    assert errors["id"].tolist() == [17, 201]
    assert all(e.startswith("f2: expected float64, got null") for e in errors["error"])
    engine.dispose()


def test_a_batch_process_killed_between_chunks_resumes_exactly(registry: Registry,
                                                               tmp_path: Path) -> None:
    register_hgb(registry, "tab", max_iter=10, n_features=4)
    df = frame(2000)
    df.to_parquet(tmp_path / "in.parquet", row_group_size=300)
    out = tmp_path / "out"
    # a real process, killed with SIGKILL by itself right after its third chunk is committed
    script = textwrap.dedent(f"""
        import os, signal
        from modelyard.batch import BatchJob, score
        from modelyard.config import Settings
        from modelyard.registry import Registry

        def die(done):
            if done.index == 2:
                os.kill(os.getpid(), signal.SIGKILL)

        with Registry.open(Settings.from_env(home={str(registry.settings.home)!r})) as reg:
            score(BatchJob("tab", {str(tmp_path / "in.parquet")!r}, {str(out)!r},
                           key=("id",), chunk_rows=250), reg, on_chunk=die)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env={**os.environ}, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert sorted(Path(f).name for f in ds.dataset(out, format="parquet").files) == [
        f"part-00000{i}.parquet" for i in range(3)]

    # the CLI goes on from there
    cli = [str(Path(sys.executable).with_name("modelyard")), "--home", str(registry.settings.home),
           "batch", "tab", "-i", str(tmp_path / "in.parquet"), "-o", str(out), "--key", "id",
           "--chunk-rows", "250"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "3 chunks done before" in done.stdout

    got = pd.read_parquet(out).sort_values("id")
    assert got["id"].tolist() == df["id"].tolist()  # every row once: no duplicate, no gap
    want = load("tab", registry=registry).predict(df[FEATURES].to_numpy())
    assert got["predictions"].tolist() == want.tolist()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    killed, resumed = registry.list_runs("tab")[::-1]
    assert killed.status == "failed" and "abandoned" in (killed.failure_reason or "")
    assert resumed.status == "succeeded" and resumed.details["resumed_chunks"] == 3


def test_the_cli_scores_parquet_in_a_bucket_into_the_bucket(registry: Registry, s3_server: Any,
                                                            tmp_path: Path) -> None:
    import io

    import pyarrow.parquet as pq

    register_hgb(registry, "tab", max_iter=10, n_features=4)
    bucket, s3 = s3_server.new_bucket(), s3_server.client()
    df = frame(700)
    for name, part in (("a", df.iloc[:400]), ("b", df.iloc[400:])):
        body = io.BytesIO()
        part.to_parquet(body)
        s3.put_object(Bucket=bucket, Key=f"in/{name}.parquet", Body=body.getvalue())
    cli = [str(Path(sys.executable).with_name("modelyard")), "--home", str(registry.settings.home),
           "batch", "tab", "-i", f"s3://{bucket}/in/*.parquet", "-o", f"s3://{bucket}/scores",
           "--key", "id", "--chunk-rows", "300", "--scores"]
    # the endpoint and credentials come from the environment only, as in production
    done = subprocess.run(cli, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **s3_server.env()})
    assert done.returncode == 0, done.stderr

    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="scores/")
                  ["Contents"])
    assert keys == ["scores/_manifest.json", *(f"scores/part-00000{i}.parquet"
                                               for i in range(3))]  # whole parts, no temporaries
    parts = [pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
             for key in keys[1:]]
    got = pd.concat([part.to_pandas() for part in parts])
    assert got["id"].tolist() == df["id"].tolist()
    want = load("tab", registry=registry).predict(df[FEATURES].to_numpy())
    assert got["predictions"].tolist() == want.tolist()
    (run,) = registry.list_runs("tab")
    assert run.status == "succeeded" and run.details["output"] == f"s3://{bucket}/scores"
