"""Load a spec's training data (files, SQL or a function), split off a holdout, and hand the
splits to the training process as files.

Sources are read fresh on every run, so a glob picks up the files that arrived since the last
run and a query sees the rows inserted since.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.entrypoints import callable_ref, resolve_callable
from modelyard.errors import ConfigError, DataValidationError, StorageError
from modelyard.registry.provenance import file_source, function_source, sql_source
from modelyard.spec import DataSpec

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Dataset:
    """Features ``X`` (a DataFrame when ``frame``, else an array) and labels ``y`` (an array).

    ``groups`` holds the columns fairness rules compare groups of, one value per row, whether
    or not they are features: a sensitive attribute left out of ``data.features`` is kept here
    for evaluation only, never trained on.
    """

    X: Any
    y: np.ndarray
    feature_names: list[str]
    frame: bool
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    #: the source table's columns that are neither features nor the target (keys, timestamps):
    #: the data checks read them (``validation.unique``, ``freshness``); training never does
    others: Any = None
    #: where the rows came from (:mod:`modelyard.registry.provenance`): what the version records
    sources: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Dataset:
        """The rows at ``index``, as a new dataset."""
        X = self.X.iloc[index].reset_index(drop=True) if self.frame else self.X[index]
        return Dataset(X, self.y[index], self.feature_names, self.frame,
                       {name: values[index] for name, values in self.groups.items()})

    def extra_groups(self) -> Any:
        """The group columns that are not features, as a DataFrame (None when there are none):
        part of what the data fingerprint covers."""
        import pandas as pd

        extra = {k: v for k, v in self.groups.items() if k not in self.feature_names}
        return pd.DataFrame(extra) if extra else None


def load_dataset(spec: DataSpec, root: Path, groups: Sequence[str] = ()) -> Dataset:
    """Read the source ``spec`` names (relative paths against ``root``) into a :class:`Dataset`,
    with its :attr:`~Dataset.sources`: each file read with its sha256, or the query and its
    database, or the data function.

    ``groups`` names columns kept apart for fairness rules (in :attr:`Dataset.groups`), taken
    before ``data.features`` selects the features.
    """
    if spec.path is not None:
        frame, sources = _read_files(spec, root)
        return _sourced(_from_frame(frame, spec, f"files {spec.path!r}", groups), sources)
    if spec.sql is not None:
        source = sql_source(spec.sql, spec.url or "")
        return _sourced(_from_frame(_read_sql(spec), spec, "the query", groups), [source])
    fn = resolve_callable(spec.function, root)  # type: ignore[arg-type]
    return _sourced(_call(fn, spec, groups),
                    [function_source(_function_ref(spec.function, fn))])


def _sourced(dataset: Dataset, sources: list[dict[str, Any]]) -> Dataset:
    dataset.sources = sources
    return dataset


def _function_ref(given: Any, fn: Any) -> str:
    """How the version names its data function: as the spec wrote it, or a callable's import
    path (``module:fn``)."""
    if isinstance(given, str):
        return given
    try:
        return callable_ref(fn)
    except ConfigError:  # a function defined inside another: its name is all there is
        return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}"


def _call(fn: Any, spec: DataSpec, groups: Sequence[str]) -> Dataset:
    out = _invoke(fn)
    if _is_frame(out):
        return _from_frame(out, spec, "the data function's DataFrame", groups)
    if isinstance(out, tuple) and len(out) == 2:
        return _from_pair(out[0], out[1], spec, groups)
    raise ConfigError(
        f"data function {_name(spec)} returned {type(out).__name__}; "
        "return a DataFrame (with data.target set) or a tuple (X, y)"
    )


def read_frame(spec: DataSpec, root: Path) -> tuple[Any, list[dict[str, Any]]]:
    """The source's rows as one DataFrame, as read (a file, a query, or a data function that
    returns a DataFrame): the entity rows a feature store completes; with where they came from
    (as :attr:`Dataset.sources`)."""
    if spec.path is not None:
        return _read_files(spec, root)
    if spec.sql is not None:
        return _read_sql(spec), [sql_source(spec.sql, spec.url or "")]
    fn = resolve_callable(spec.function, root)  # type: ignore[arg-type]
    out = _invoke(fn)
    if not _is_frame(out):
        raise ConfigError(f"data function {_name(spec)} returned {type(out).__name__}; with "
                          "features from a store it must return a DataFrame of entity rows")
    return out, [function_source(_function_ref(spec.function, fn))]


def table_dataset(df: Any, spec: DataSpec, what: str, groups: Sequence[str] = ()) -> Dataset:
    """A :class:`Dataset` from a table holding ``spec.target`` (``what`` names it in errors)."""
    return _from_frame(df, spec, what, groups)


def _invoke(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:
        raise DataValidationError(
            f"data function {getattr(fn, '__qualname__', fn)} raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _name(spec: DataSpec) -> str:
    return str(getattr(spec.function, "__qualname__", spec.function))


def split(dataset: Dataset, holdout: float, seed: int, stratify: bool = True) -> tuple[Dataset,
                                                                                        Dataset]:
    """Split into ``(train, holdout)`` by a seeded hash of each row's content.

    The holdout is the ``holdout`` share of rows with the lowest hashes, per class when
    ``stratify`` is set, ``y`` looks like class labels and every class has at least two rows
    (else over all rows). A row's hash does not depend on the rows around it, so as data grows
    batch by batch a row stays on its side: the champion is never scored on rows it was trained
    on, which a fresh random split would do. Both parts keep at least one row.
    """
    n = len(dataset)
    if n < 2:
        raise DataValidationError(f"cannot split {n} row(s) into train and holdout; add data")
    rank = row_hashes(dataset, seed)
    groups = _strata(dataset.y) if stratify else None
    held = np.concatenate([
        members[np.argsort(rank[members], kind="stable")][
            : min(max(1, round(len(members) * holdout)), len(members) - 1)]
        for members in (groups if groups is not None else [np.arange(n)])
    ])
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    # keep the source's row order inside each part: reruns on the same data are identical
    return dataset.take(np.flatnonzero(~mask)), dataset.take(np.flatnonzero(mask))


def row_hashes(dataset: Dataset, seed: int) -> np.ndarray:
    """A 64-bit hash of each row's features and label, mixed with ``seed``."""
    import pandas as pd
    from pandas.util import hash_array, hash_pandas_object

    n = len(dataset)
    X = dataset.X
    if dataset.frame:
        features = hash_pandas_object(X, index=False).to_numpy()
    else:
        arr = np.asarray(X, dtype=object if _is_strings(X) else None).reshape(n, -1)
        features = hash_pandas_object(pd.DataFrame(arr), index=False).to_numpy()
    labels = hash_pandas_object(pd.DataFrame(np.asarray(dataset.y).reshape(n, -1)),
                                index=False).to_numpy()
    salt = np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    return hash_array(features ^ (labels * np.uint64(31)) ^ salt)


def _is_strings(X: Any) -> bool:
    return isinstance(X, list) or (isinstance(X, np.ndarray) and X.dtype.kind in "OUS")


def _strata(y: np.ndarray) -> list[np.ndarray] | None:
    if y.ndim != 1 or y.dtype.kind not in "iubOUT":
        return None
    try:
        _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    except TypeError:  # unorderable mixed labels
        return None
    if len(counts) < 2 or counts.min() < 2 or len(counts) > len(y) // 2:
        return None
    return [np.flatnonzero(inverse == k) for k in range(len(counts))]


# -- storing a split for the training process (never pickled) -----------------------------------
def write_split(X: Any, y: Any, folder: Path) -> None:
    """Store ``(X, y)`` in ``folder`` without pickle: Parquet for tables and text, else ``.npy``."""
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(X, "columns") and hasattr(X, "to_parquet"):
        if not all(isinstance(c, str) for c in X.columns):
            raise ConfigError("training DataFrame column names must be strings")
        X.to_parquet(folder / "X.frame.parquet", index=False)
    else:
        _write_array(folder, "X", X)
    _write_array(folder, "y", y)


def _write_array(folder: Path, name: str, values: Any) -> None:
    arr = values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)
    if arr.dtype.kind in "OUST":
        if arr.ndim != 1:
            raise ConfigError(f"{name} holds Python objects in {arr.ndim} dimensions; "
                              "only 1-D text or labels can be stored")
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.table({"value": pa.array(arr.tolist())})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ConfigError(f"{name} mixes value types that cannot be stored: {exc}") from None
        pq.write_table(table, folder / f"{name}.values.parquet")
    else:
        np.save(folder / f"{name}.npy", arr, allow_pickle=False)


def write_groups(groups: dict[str, np.ndarray], folder: Path) -> None:
    """Store the group columns of a split next to it, each value as its group's name (text)."""
    if not groups:
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modelyard.pipeline.fairness import group_key

    table = pa.table({name: pa.array([group_key(v) for v in values.tolist()], pa.string())
                      for name, values in groups.items()})
    pq.write_table(table, folder / "groups.parquet")


def read_groups(folder: Path) -> dict[str, list[str]]:
    """The group columns :func:`write_groups` stored (none: an empty mapping)."""
    path = folder / "groups.parquet"
    if not path.is_file():
        return {}
    import pyarrow.parquet as pq

    return {str(k): v for k, v in pq.read_table(path).to_pydict().items()}


def read_split(folder: Path) -> tuple[Any, Any]:
    """The ``(X, y)`` stored by :func:`write_split`."""
    import pandas as pd

    frame = folder / "X.frame.parquet"
    X = pd.read_parquet(frame) if frame.is_file() else _read_array(folder, "X")
    return X, _read_array(folder, "y")


def _read_array(folder: Path, name: str) -> Any:
    npy = folder / f"{name}.npy"
    if npy.is_file():
        return np.load(npy, allow_pickle=False)
    import pyarrow.parquet as pq

    values = pq.read_table(folder / f"{name}.values.parquet").column("value").to_pylist()
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


# -- sources ------------------------------------------------------------------------------------
def _read_files(spec: DataSpec, root: Path) -> tuple[Any, list[dict[str, Any]]]:
    """The files' rows as one frame, and each file as a source (hashed just before it is read,
    so the digest is of the bytes read unless the file changes in between)."""
    import pandas as pd

    pattern = spec.path or ""
    full = pattern if Path(pattern).is_absolute() else str(root / pattern)
    files = sorted(f for f in glob.glob(full, recursive=True) if Path(f).is_file())
    if not files:
        raise ConfigError(
            f"data.path {pattern!r} matches no files in {root}; check the path or add data"
        )
    frames, sources = [], []
    for file in files:
        fmt = spec.format or _FORMATS.get(Path(file).suffix.lower())
        if fmt is None and file.lower().endswith(".csv.gz"):
            fmt = "csv"
        if fmt is None:
            raise ConfigError(
                f"cannot tell the format of {file}; set data.format to csv or parquet"
            )
        try:
            sources.append(file_source(file))
            frames.append(pd.read_csv(file) if fmt == "csv" else pd.read_parquet(file))
        except Exception as exc:
            raise DataValidationError(
                f"cannot read {file} as {fmt}: {_first_line(exc)}"
            ) from None
    _same_columns(frames, files)
    return (frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)), sources


def _same_columns(frames: list[Any], files: list[str]) -> None:
    first = list(frames[0].columns)
    for frame, file in zip(frames[1:], files[1:], strict=True):
        cols = list(frame.columns)
        if set(cols) != set(first):
            missing = sorted(set(first) - set(cols))
            extra = sorted(set(cols) - set(first))
            raise DataValidationError(
                f"{file} has different columns from {files[0]} "
                f"(missing: {missing or 'none'}, extra: {extra or 'none'}); "
                "make every file share one header"
            )


def _read_sql(spec: DataSpec) -> Any:
    import pandas as pd
    from sqlalchemy import create_engine

    from modelyard.registry.database import normalize_url

    try:
        engine = create_engine(normalize_url(spec.url or ""))
    except Exception as exc:
        raise ConfigError(f"data.url is not usable: {_first_line(exc)}") from None
    try:
        with engine.connect() as conn:
            return pd.read_sql(spec.sql, conn)
    except Exception as exc:
        raise StorageError(f"the data query failed: {_first_line(exc)}") from None
    finally:
        engine.dispose()


# -- shaping ------------------------------------------------------------------------------------
def _is_frame(obj: Any) -> bool:
    return hasattr(obj, "columns") and hasattr(obj, "iloc")


def _from_frame(df: Any, spec: DataSpec, what: str, groups: Sequence[str]) -> Dataset:
    if spec.target is None:
        raise ConfigError(f"{what} gave a table; set data.target to its label column")
    if spec.target not in df.columns:
        raise DataValidationError(
            f"target column {spec.target!r} is not in {what}; columns: {_names(df.columns)}"
        )
    y = df[spec.target].to_numpy()
    rest = df.drop(columns=[spec.target])
    kept = _groups(rest, groups, what)
    X = _select(rest, spec.features, what)
    unused = [c for c in rest.columns if c not in X.columns]
    others = rest[unused].reset_index(drop=True) if unused else None
    return Dataset(X.reset_index(drop=True), y, [str(c) for c in X.columns], True, kept, others)


def _from_pair(X: Any, y: Any, spec: DataSpec, groups: Sequence[str]) -> Dataset:
    y_arr = y.to_numpy() if hasattr(y, "to_numpy") else np.asarray(y)
    kept: dict[str, np.ndarray] = {}
    if _is_frame(X):
        kept = _groups(X, groups, "the data function's X")
        X = _select(X, spec.features, "the data function's X").reset_index(drop=True)
        names, frame = [str(c) for c in X.columns], True
    else:
        if spec.features is not None:
            raise ConfigError("data.features selects DataFrame columns; X here is an array")
        if groups:
            raise ConfigError(f"gate.fairness compares groups of column {groups[0]!r}, but X "
                              "here is an array; return a DataFrame (with data.target set)")
        X = np.asarray(X)
        if X.dtype.kind in "US":  # text: keep Python strings, as the signature expects
            X = X.astype(object)
        names = [f"f{i}" for i in range(X.shape[1])] if X.ndim == 2 else ["input"]
        frame = False
    if len(X) != len(y_arr):
        raise DataValidationError(f"X has {len(X)} rows but y has {len(y_arr)}; they must match")
    return Dataset(X, y_arr, names, frame, kept)


def _groups(df: Any, groups: Sequence[str], what: str) -> dict[str, np.ndarray]:
    missing = [g for g in groups if g not in df.columns]
    if missing:
        raise DataValidationError(
            f"gate.fairness groups by column(s) not in {what}: {', '.join(missing)}; "
            f"columns: {_names(df.columns)}"
        )
    return {g: df[g].to_numpy(dtype=object) for g in groups}


def _select(df: Any, features: list[str] | None, what: str) -> Any:
    if features is None:
        return df
    missing = [f for f in features if f not in df.columns]
    if missing:
        raise DataValidationError(
            f"data.features names columns not in {what}: {', '.join(missing)}; "
            f"columns: {_names(df.columns)}"
        )
    return df[list(features)]


def _names(columns: Any) -> str:
    names = [str(c) for c in columns]
    return ", ".join(names[:20]) + (f" (+{len(names) - 20} more)" if len(names) > 20 else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["Dataset", "load_dataset", "read_frame", "read_groups", "read_split", "split",
           "table_dataset", "write_groups", "write_split"]
