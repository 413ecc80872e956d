"""The batch job's decisions, without I/O: the manifest, whether to resume, which rows are bad.

A batch job cuts its input into chunks of ``chunk_rows`` rows, in input order, and commits each
chunk's output part together with a :class:`Manifest` saying how many chunks are done. A rerun
reads that manifest back and :func:`decide_start` says what to do: start afresh, resume after
the last finished chunk, report a finished job, or refuse because the manifest belongs to another
model version or another input. :func:`find_bad_rows` finds the rows of a chunk that fail
validation by bisection, so the good rows still go through the model in large batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from modelyard.errors import ConflictError

#: bumped when the manifest's meaning changes; an unknown format is refused, never guessed.
MANIFEST_FORMAT = 1

OnError = Literal["skip", "fail"]
Action = Literal["fresh", "resume", "complete"]


@dataclass(frozen=True)
class Manifest:
    """What a batch output holds: whose predictions, over which input, and how far it got."""

    model: str
    version: int
    input_fingerprint: str
    chunk_rows: int
    key: tuple[str, ...] = ()
    chunks_done: int = 0
    rows: int = 0
    errors: int = 0
    complete: bool = False
    format: int = MANIFEST_FORMAT

    def after_chunk(self, rows: int, errors: int) -> Manifest:
        """This manifest with one more finished chunk of ``rows`` scored and ``errors`` bad rows."""
        return replace(self, chunks_done=self.chunks_done + 1, rows=self.rows + rows,
                       errors=self.errors + errors)

    def finished(self) -> Manifest:
        """This manifest marked complete (every chunk of the input is done)."""
        return replace(self, complete=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = asdict(self)
        out["key"] = list(self.key)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Read a manifest back; refuses one of a format this version does not know."""
        found = data.get("format")
        if found != MANIFEST_FORMAT:
            raise ConflictError(f"the output's batch manifest has format {found!r}, this "
                                f"modelyard writes {MANIFEST_FORMAT}; use --restart or another "
                                "output")
        return cls(str(data["model"]), int(data["version"]), str(data["input_fingerprint"]),
                   int(data["chunk_rows"]), tuple(data.get("key", ())),
                   int(data["chunks_done"]), int(data["rows"]), int(data["errors"]),
                   bool(data["complete"]))


@dataclass(frozen=True)
class Start:
    """How a run begins: ``action`` and the manifest it continues from (``chunks_done`` of it
    are skipped)."""

    action: Action
    manifest: Manifest
    #: the output holds an earlier run's parts that must be removed first (a fresh start over it)
    clear: bool = False

    @property
    def skip_chunks(self) -> int:
        """Chunks of the input already scored."""
        return self.manifest.chunks_done


def decide_start(found: Manifest | None, wanted: Manifest, *, restart: bool) -> Start:
    """What a run over an output holding ``found`` does, for a job described by ``wanted``.

    No manifest, or ``restart``: a fresh start (clearing what is there). The same model version,
    input fingerprint and key: resume after the last finished chunk, with the chunk size that run
    used (so chunk N means the same rows), or report it complete. Anything else is a conflict
    that names what differs, so an output never mixes two versions' or two inputs' predictions.
    """
    if found is None or restart:
        return Start("fresh", wanted, clear=found is not None)
    differs = [f"{what}: the output has {have}, this run {want}" for what, have, want in (
        ("model", found.model, wanted.model),
        ("version", found.version, wanted.version),
        ("input", found.input_fingerprint[:12], wanted.input_fingerprint[:12]),
        ("key", ",".join(found.key) or "none", ",".join(wanted.key) or "none"),
    ) if have != want]
    if differs:
        raise ConflictError("the output holds another batch run (" + "; ".join(differs)
                            + "); give --restart to replace it, or another --output")
    return Start("complete" if found.complete else "resume", found)


def find_bad_rows(rows: int, check: Callable[[int, int], str | None]) -> list[tuple[int, str]]:
    """``(row, reason)`` for each bad row among ``rows``, in order.

    ``check(lo, hi)`` validates rows ``lo:hi`` together and returns the reason they fail (for one
    row: that row's reason), or None when they pass. Halves that pass are never split again, so a
    chunk with a few bad rows costs a few checks per bad row, not one per row.
    """
    bad: list[tuple[int, str]] = []
    todo = [(0, rows)]
    while todo:
        lo, hi = todo.pop()
        reason = check(lo, hi)
        if reason is None:
            continue
        if hi - lo == 1:
            bad.append((lo, reason))
            continue
        mid = (lo + hi) // 2
        todo.extend(((mid, hi), (lo, mid)))  # the lower half first: rows come out in order
    return bad


def part_name(index: int) -> str:
    """The file name of chunk ``index``'s part (fixed, so a rerun overwrites, never duplicates)."""
    return f"part-{index:06d}.parquet"


__all__ = ["MANIFEST_FORMAT", "Manifest", "OnError", "Start", "decide_start", "find_bad_rows",
           "part_name"]
