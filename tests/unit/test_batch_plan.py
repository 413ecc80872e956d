"""The batch job's pure decisions: resuming or refusing an output, finding bad rows, chunking."""

from __future__ import annotations

import pyarrow as pa
import pytest

from modelyard.batch.plan import Manifest, decide_start, find_bad_rows, part_name
from modelyard.batch.sources import rechunk
from modelyard.errors import ConflictError

WANTED = Manifest("fraud", 3, "f" * 64, 1000, ("id",))


def test_an_empty_output_starts_fresh_and_restart_clears_an_old_one() -> None:
    start = decide_start(None, WANTED, restart=False)
    assert (start.action, start.clear, start.skip_chunks) == ("fresh", False, 0)
    old = WANTED.after_chunk(1000, 0)
    start = decide_start(old, WANTED, restart=True)
    assert (start.action, start.clear, start.skip_chunks) == ("fresh", True, 0)


def test_the_same_job_resumes_after_its_last_chunk_with_its_own_chunk_size() -> None:
    found = Manifest("fraud", 3, "f" * 64, 500, ("id",)).after_chunk(499, 1).after_chunk(500, 0)
    start = decide_start(found, WANTED, restart=False)
    assert start.action == "resume"
    assert start.skip_chunks == 2
    assert start.manifest.chunk_rows == 500  # chunk N must mean the same rows as before
    assert (start.manifest.rows, start.manifest.errors) == (999, 1)


def test_a_finished_output_is_complete_not_scored_again() -> None:
    start = decide_start(WANTED.after_chunk(10, 0).finished(), WANTED, restart=False)
    assert start.action == "complete"


@pytest.mark.parametrize(("found", "named"), [
    (Manifest("fraud", 2, "f" * 64, 1000, ("id",)), "version: the output has 2, this run 3"),
    (Manifest("fraud", 3, "e" * 64, 1000, ("id",)), "input: the output has eeeeeeeeeeee"),
    (Manifest("other", 3, "f" * 64, 1000, ("id",)), "model: the output has other"),
    (Manifest("fraud", 3, "f" * 64, 1000, ()), "key: the output has none, this run id"),
])
def test_an_output_of_another_job_is_refused_naming_what_differs(found: Manifest,
                                                                 named: str) -> None:
    with pytest.raises(ConflictError, match="--restart") as caught:
        decide_start(found, WANTED, restart=False)
    assert named in str(caught.value)


def test_a_manifest_round_trips_and_an_unknown_format_is_refused() -> None:
    done = WANTED.after_chunk(7, 2)
    assert Manifest.from_dict(done.to_dict()) == done
    with pytest.raises(ConflictError, match="format 99"):
        Manifest.from_dict({**done.to_dict(), "format": 99})


def test_bad_rows_are_found_in_order_with_few_checks() -> None:
    bad = {3, 700, 701, 999}
    calls = []

    def check(lo: int, hi: int) -> str | None:
        calls.append((lo, hi))
        hit = sorted(r for r in bad if lo <= r < hi)
        return None if not hit else f"row {hit[0]} is bad"

    found = find_bad_rows(1000, check)
    assert found == [(r, f"row {r} is bad") for r in sorted(bad)]
    assert len(calls) < 4 * 2 * 10 + 1  # about two checks per level per bad row, not 1000


def test_no_bad_rows_is_one_check_and_all_bad_is_every_row() -> None:
    assert find_bad_rows(50, lambda lo, hi: None) == []
    assert [r for r, _ in find_bad_rows(5, lambda lo, hi: "bad")] == [0, 1, 2, 3, 4]


def test_rechunk_cuts_exact_chunks_across_batches_and_skips_whole_chunks() -> None:
    batches = [pa.record_batch({"x": list(range(a, b))}) for a, b in ((0, 3), (3, 10), (10, 11))]
    sizes = [t.num_rows for t in rechunk(iter(batches), 4)]
    assert sizes == [4, 4, 3]
    rest = [t.column("x").to_pylist() for t in rechunk(iter(batches), 4, skip_rows=8)]
    assert rest == [[8, 9, 10]]


def test_part_names_are_fixed_per_chunk() -> None:
    assert part_name(42) == "part-000042.parquet"
