"""Loading runs no code from an artifact: malicious artifacts built the way an attacker would
(by hand, past modelyard's save checks, written straight into the store and the registry's
tables) are refused with one line naming what they hold, by the adapters, by registration, by
``modelyard.load`` and by a real in-process server, and their payload never runs."""

from __future__ import annotations

import io
import json
import logging
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.adapters import get_adapter, require
from modelyard.adapters.pickles import DYNAMIC, UNREADABLE, pickle_imports
from modelyard.adapters.sklearn import untrusted_types
from modelyard.adapters.torch_archive import check_export, check_torchscript
from modelyard.config import Settings
from modelyard.errors import UnsafeArtifactError
from modelyard.predictor import load
from modelyard.registry import Registry
from modelyard.registry.client import _next_version_number
from modelyard.registry.records import ModelVersion
from modelyard.registry.rows import now
from modelyard.registry.tables import VersionRow
from modelyard.serving import ServeOptions, create_app
from modelyard.store import LocalStore, pack_dir

RNG = np.random.default_rng(7)
NOTHING_TRUSTED: Callable[[str], bool] = frozenset().__contains__


class Payload:
    """What an attacker pickles: unpickling it runs ``exec(code)``."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (self.code,)


def touch(marker: Path) -> str:
    """Python source that creates ``marker``: the payload every malicious artifact carries."""
    return f"open({str(marker)!r}, 'w').close()"


@pytest.fixture()
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "PAYLOAD-RAN"
    yield path
    assert not path.exists(), "the artifact's payload ran"


# -- how an attacker builds artifacts -----------------------------------------------------------
def rewrite_zip(data: bytes, change: Callable[[str, bytes], bytes | None],
                add: dict[str, bytes] | None = None) -> bytes:
    """A copy of the zip ``data`` with each member passed through ``change`` (None: as is)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            content = src.read(info)
            dst.writestr(info, change(info.filename, content) or content)
        for name, content in (add or {}).items():
            dst.writestr(name, content)
    return out.getvalue()


def skops_dump(obj: Any) -> bytes:
    """skops' own bytes for ``obj``: what a hand-made file starts from (no modelyard check)."""
    import skops.io as sio

    return bytes(sio.dumps(obj))


def edit_schema(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    def change(name: str, content: bytes) -> bytes | None:
        if name != "schema.json":
            return None
        schema = json.loads(content)
        edit(schema)
        return json.dumps(schema).encode()

    return rewrite_zip(data, change)


def json_node(value: Any) -> dict[str, Any]:
    return {"__class__": type(value).__name__, "__module__": "builtins",
            "__loader__": "JsonNode", "content": json.dumps(value), "is_json": True}


def runs_on_load(code: str) -> dict[str, Any]:
    """A skops node that calls ``numpy.testing._private.utils.runstring(code, {})`` to build
    itself: a function from a 'trusted' module used as a constructor."""
    return {
        "__class__": "runstring", "__module__": "numpy.testing._private.utils",
        "__loader__": "ConstructorFromReduceNode",
        "content": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                    "content": [json_node(code), {
                        "__class__": "dict", "__module__": "builtins", "__loader__": "DictNode",
                        "content": {}, "key_types": {
                            "__class__": "list", "__module__": "builtins",
                            "__loader__": "ListNode", "content": []}}]},
    }


def runs_on_predict(code: str) -> Any:
    """A Pipeline of functions from numpy, numpy's testing helpers and ``builtins``, wrapped in
    FunctionTransformers, whose ``predict`` runs ``code`` (only its last step needs fitting)."""
    from numpy.testing._private.utils import runstring
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    return Pipeline([
        ("fill", FunctionTransformer(np.full_like, kw_args={"fill_value": code,
                                                            "dtype": f"<U{len(code)}"})),
        ("flat", FunctionTransformer(np.ravel)),
        ("first", FunctionTransformer(min)),
        ("run", FunctionTransformer(runstring, kw_args={"dict": {}})),
        ("model", LogisticRegression().fit(np.eye(2), [0, 1])),
    ])


def torch_pickle(obj: Any) -> bytes:
    torch = require("torch", "torch")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def exported_model(folder: Path) -> dict[str, Any]:
    """A real torch.export program saved by the adapter into ``folder``; returns its meta."""
    torch = require("torch", "torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    return get_adapter("torch").save(model, folder, sample=RNG.normal(size=(8, 4)))


def write_skops(folder: Path, data: bytes) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.skops").write_bytes(data)
    return {"file": "model.skops"}


def register_raw(registry: Registry, name: str, folder: Path, *, flavor: str,
                 meta: dict[str, Any], signature: dict[str, Any]) -> ModelVersion:
    """Put ``folder`` in the store and a version row in the database, with no check at all:
    what someone with write access to the registry's storage can do."""
    with tempfile.TemporaryDirectory() as tmp:
        digest, size = registry.store.put_file(pack_dir(folder, Path(tmp) / "a.tar"))
    with registry.db.session(write=True) as s:
        model_id, number = _next_version_number(s, name, "attacker")
        s.add(VersionRow(
            model_id=model_id, version=number, flavor=flavor, artifact_digest=digest,
            artifact_size=size, meta=meta, signature=signature, metrics={}, params={},
            code_ref={}, environment={}, reference_stats=None, run_id=None, description="",
            created_at=now(), created_by="attacker"))
    registry.set_alias(name, "production", number)
    return registry.get_version(name, number)


def table_signature(n: int = 4) -> dict[str, Any]:
    from modelyard.schema import Signature

    return Signature.infer(RNG.normal(size=(5, n)), layout="table").to_dict()


# -- scikit-learn -------------------------------------------------------------------------------
def test_trust_is_by_exact_name_not_by_module() -> None:
    accepted = ["sklearn.pipeline.Pipeline", "sklearn.tree._tree.Tree", "numpy.dtype",
                "xgboost.sklearn.XGBClassifier", "lightgbm.sklearn.LGBMClassifier",
                "lightgbm.basic.Booster", "collections.OrderedDict"]
    refused = ["numpy.testing._private.utils.runstring", "numpy.full_like", "builtins.min",
               "builtins.eval", "scipy.io.loadmat", "sklearn.utils._testing.assert_run_python_"
               "script_without_output", "sklearn.pipeline.os", "xgboost.core.os.system",
               "collections.namedtuple", "operator.methodcaller",
               "sklearn.neighbors._kd_tree.KDTree"]  # raw indices, unchecked: listed by hand
    assert untrusted_types(accepted + refused) == sorted(refused)
    assert untrusted_types(["builtins.min"], trusted=["builtins.min"]) == []


def test_function_references_from_trusted_modules_are_refused(tmp_path: Path, marker: Path,
                                                              registry: Registry) -> None:
    adapter = get_adapter("sklearn")
    pipeline = runs_on_predict(touch(marker))
    meta = write_skops(tmp_path / "a", skops_dump(pipeline))
    with pytest.raises(UnsafeArtifactError) as err:
        adapter.load(tmp_path / "a", meta, "cpu")
    message = str(err.value)
    assert "\n" not in message and "trusted_types" in message
    for name in ("numpy.testing._private.utils.runstring", "numpy.full_like", "builtins.min"):
        assert name in message
    with pytest.raises(UnsafeArtifactError, match="runstring"):
        adapter.save(pipeline, tmp_path / "a")  # refused when saving as well
    with pytest.raises(UnsafeArtifactError, match="runstring"):  # and when registering
        registry.register("evil", tmp_path / "a", flavor="sklearn", meta=meta)
    assert registry.list_models() == []


def test_a_function_called_to_build_an_object_is_refused(tmp_path: Path, marker: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    def inject(schema: dict[str, Any]) -> None:
        schema["content"]["content"]["C"] = runs_on_load(touch(marker))

    data = edit_schema(skops_dump(LogisticRegression()), inject)
    meta = write_skops(tmp_path, data)
    with pytest.raises(UnsafeArtifactError, match=r"numpy\.testing\._private\.utils\.runstring"):
        get_adapter("sklearn").load(tmp_path, meta, "cpu")


def test_names_from_the_file_cannot_break_the_one_line_message(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    def inject(schema: dict[str, Any]) -> None:
        schema["content"]["content"]["C"] = {"__class__": "x\nERROR forged log line" + "y" * 500,
                                             "__module__": "builtins", "__loader__": "ObjectNode"}

    meta = write_skops(tmp_path, edit_schema(skops_dump(LogisticRegression()), inject))
    with pytest.raises(UnsafeArtifactError) as err:
        get_adapter("sklearn").load(tmp_path, meta, "cpu")
    assert "\n" not in str(err.value) and len(str(err.value)) < 600


def test_a_pickled_object_inside_a_skops_file_is_named(tmp_path: Path, marker: Path) -> None:
    from sklearn.preprocessing import StandardScaler

    fitted = StandardScaler().fit(RNG.normal(size=(10, 3)))
    data = skops_dump(fitted)
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(touch(marker))
    pickled = io.BytesIO()
    np.save(pickled, evil, allow_pickle=True)

    def swap(name: str, content: bytes) -> bytes | None:
        return pickled.getvalue() if name.endswith(".npy") else None

    meta = write_skops(tmp_path, rewrite_zip(data, swap))
    with pytest.raises(UnsafeArtifactError, match=r"builtins\.exec \(pickled in .*\.npy\)"):
        get_adapter("sklearn").load(tmp_path, meta, "cpu")


def test_trees_pointing_outside_their_nodes_are_refused(tmp_path: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    X, y = RNG.normal(size=(200, 4)), RNG.integers(0, 2, 200)
    forest = RandomForestClassifier(n_estimators=2, random_state=0).fit(X, y)
    forest.estimators_[1].tree_.children_left[0] = 10**9  # read far outside the node array
    boosted = HistGradientBoostingClassifier(max_iter=2).fit(X, y)
    boosted._predictors[1][0].nodes["feature_idx"][0] = 4  # a feature the model does not have
    for model, kind in ((forest, r"sklearn\.tree\._tree\.Tree"), (boosted, "TreePredictor")):
        meta = write_skops(tmp_path / kind[:4], skops_dump(model))
        with pytest.raises(UnsafeArtifactError, match=kind):
            get_adapter("sklearn").load(tmp_path / kind[:4], meta, "cpu")


def test_a_model_file_outside_the_artifact_is_refused(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    outside = tmp_path / "elsewhere"
    write_skops(outside, skops_dump(LogisticRegression()))
    (tmp_path / "artifact").mkdir()
    for name in ("../elsewhere/model.skops", str(outside / "model.skops")):
        with pytest.raises(UnsafeArtifactError, match="not inside its artifact"):
            get_adapter("sklearn").load(tmp_path / "artifact", {"file": name}, "cpu")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_real_scikit_learn_xgboost_and_lightgbm_models_still_load(tmp_path: Path) -> None:
    import lightgbm
    import pandas as pd
    import xgboost
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        IsolationForest,
        RandomForestClassifier,
    )
    from sklearn.feature_selection import SelectKBest
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    X = pd.DataFrame({"a": RNG.normal(size=120), "b": RNG.normal(size=120),
                      "c": RNG.choice(["x", "y", "z"], 120)})
    y = (X["a"] > 0).astype(int)

    def encode() -> ColumnTransformer:
        return ColumnTransformer([("num", StandardScaler(), ["a", "b"]),
                                  ("cat", OneHotEncoder(handle_unknown="ignore"), ["c"])])

    models = [
        make_pipeline(encode(), HistGradientBoostingClassifier(max_iter=5)),
        make_pipeline(encode(), SimpleImputer(), LogisticRegression()),
        make_pipeline(encode(), RandomForestClassifier(n_estimators=3)),
        make_pipeline(encode(), GradientBoostingRegressor(n_estimators=3)),
        make_pipeline(encode(), IsolationForest(n_estimators=3)),
        make_pipeline(encode(), xgboost.XGBClassifier(n_estimators=3)),
        make_pipeline(encode(), lightgbm.LGBMClassifier(n_estimators=3, verbose=-1)),
        make_pipeline(encode(), SelectKBest(k=2), LogisticRegression()),
        make_pipeline(encode(), GridSearchCV(LogisticRegression(), {"C": [1, 2]}, cv=2)),
        make_pipeline(encode(), CalibratedClassifierCV(LogisticRegression(), cv=2)),
        make_pipeline(encode(), MLPClassifier(max_iter=5)),
        make_pipeline(encode(), FunctionTransformer(np.tanh), LogisticRegression()),
        HistGradientBoostingClassifier(max_iter=5, categorical_features=["c"]),
    ]
    adapter = get_adapter("sklearn")
    for i, model in enumerate(models):
        data = X.assign(c=X["c"].astype("category")) if i == len(models) - 1 else X
        model.fit(data, y)
        folder = tmp_path / str(i)
        folder.mkdir()
        loaded = adapter.load(folder, adapter.save(model, folder), "cpu")
        assert np.array_equal(adapter.predict(loaded, data), adapter.predict(model, data)), model


# -- PyTorch ------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickle_s_imports_are_read_in_every_protocol(protocol: int) -> None:
    assert pickle_imports(pickle.dumps([Payload("1"), Payload("2")], protocol=protocol)) == {
        "builtins.exec"}


def test_a_global_built_on_the_stack_is_not_taken_at_face_value() -> None:
    def text(value: bytes) -> bytes:
        return b"\x8c" + bytes([len(value)]) + value  # SHORT_BINUNICODE

    # 'os' 'system' 'decoy' POP STACK_GLOBAL: the unpickler imports os.system
    stream = b"\x80\x04" + text(b"os") + text(b"system") + text(b"decoy") + b"0\x93."
    assert pickle_imports(stream) == {DYNAMIC}
    assert pickle_imports(b"\x80\x04" + text(b"os")) == {UNREADABLE}  # no STOP


def test_a_state_dict_with_a_pickled_payload_is_refused(tmp_path: Path, marker: Path) -> None:
    torch = require("torch", "torch")
    (tmp_path / "state_dict.pt").write_bytes(
        torch_pickle({"weight": torch.ones(2), "extra": Payload(touch(marker))}))
    meta = {"format": "state_dict", "file": "state_dict.pt", "class": "torch.nn:Linear",
            "init_kwargs": {"in_features": 2, "out_features": 1}}
    with pytest.raises(UnsafeArtifactError, match=r"builtins\.exec"):
        get_adapter("torch").load(tmp_path, meta, "cpu")


def test_a_state_dict_never_calls_what_is_not_a_module(tmp_path: Path, marker: Path) -> None:
    torch = require("torch", "torch")
    (tmp_path / "state_dict.pt").write_bytes(torch_pickle({"weight": torch.ones(2)}))
    meta = {"format": "state_dict", "file": "state_dict.pt", "class": "subprocess:run",
            "init_kwargs": {"args": ["touch", str(marker)]}}
    with pytest.raises(UnsafeArtifactError, match="subprocess:run"):
        get_adapter("torch").load(tmp_path, meta, "cpu")


def test_an_export_archive_with_a_pickled_payload_is_refused(tmp_path: Path,
                                                             marker: Path) -> None:
    meta = exported_model(tmp_path)
    archive = tmp_path / meta["file"]
    evil = torch_pickle(((Payload(touch(marker)),), {}))  # torch retries it unrestricted

    def swap(name: str, content: bytes) -> bytes | None:
        return evil if "sample_inputs" in name else None

    archive.write_bytes(rewrite_zip(archive.read_bytes(), swap))
    with pytest.raises(UnsafeArtifactError, match=r"builtins\.exec"):
        get_adapter("torch").load(tmp_path, meta, "cpu")


def test_an_export_program_may_only_call_operators_and_build_sizes(tmp_path: Path) -> None:
    meta = exported_model(tmp_path)
    original = (tmp_path / meta["file"]).read_bytes()
    assert check_export(original, NOTHING_TRUSTED) == []

    def tamper(target: str, expr: str) -> bytes:
        def change(name: str, content: bytes) -> bytes | None:
            if not name.endswith("models/model.json"):
                return None
            text = content.decode().replace('"torch.ops.aten.linear.default"', json.dumps(target))
            return text.replace("Symbol('s", expr + "+Symbol('s").encode()

        return rewrite_zip(original, change)

    evil = tamper("torch.serialization.os.system", "__import__('os').getpid()")
    refused = check_export(evil, NOTHING_TRUSTED)
    assert "torch.serialization.os.system" in refused
    assert any("__import__" in name for name in refused)
    assert check_export(tamper("torch.ops.mylib.op.default", ""), NOTHING_TRUSTED) == [
        "torch.ops.mylib.op.default"]
    assert check_export(tamper("torch.ops.mylib.op.default", ""),
                        {"torch.ops.mylib.op.default"}.__contains__) == []
    aoti = rewrite_zip(original, lambda n, c: None, {"model/data/aotinductor/m/m.so": b"\x7fELF"})
    assert check_export(aoti, NOTHING_TRUSTED) == ["compiled code (model/data/aotinductor/m/m.so)"]


def test_torchscript_may_not_map_files(tmp_path: Path) -> None:
    torch = require("torch", "torch")

    class Reads(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.from_file("/etc/hostname", shared=True, size=1)

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Reads()), buffer)
    assert check_torchscript(buffer.getvalue(), NOTHING_TRUSTED) == ["torch.from_file"]


# -- registration and the unpacked cache --------------------------------------------------------
def test_a_changed_cache_is_caught_and_unpacked_again(registry: Registry, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path / "src"
    folder.mkdir()
    model = LogisticRegression().fit(RNG.normal(size=(20, 3)), np.arange(20) % 2)
    meta = get_adapter("sklearn").save(model, folder)
    version = registry.register("clf", folder, flavor="sklearn", meta=meta)
    cache = registry.artifact_path(version)
    original = (cache / "model.skops").read_bytes()
    for tamper in (lambda: (cache / "model.skops").write_bytes(original + b"\0"),
                   lambda: (cache / "extra.py").write_text("import os")):
        tamper()
        with caplog.at_level(logging.ERROR, logger="modelyard.registry.client"):
            assert registry.artifact_path(version) == cache
        assert "clf:1" in caplog.text and "was changed" in caplog.text
        assert sorted(p.name for p in cache.iterdir()) == ["model.skops"]
        assert (cache / "model.skops").read_bytes() == original
        caplog.clear()


# -- a real server and modelyard.load -----------------------------------------------------------
@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Evil:
    folder: Path
    flavor: str
    meta: dict[str, Any]
    signature: dict[str, Any]


@pytest.fixture()
def evil(tmp_path: Path, marker: Path) -> dict[str, Evil]:
    """One malicious artifact per kind, each carrying a payload that creates ``marker``."""
    from sklearn.linear_model import LogisticRegression

    from modelyard.schema import Signature

    keras = require("keras", "tensorflow")
    tensor = Signature.infer(RNG.normal(size=(4, 4)).astype(np.float32),
                             layout="tensor").to_dict()
    found: dict[str, Evil] = {}
    predict = skops_dump(runs_on_predict(touch(marker)))
    found["sk-predict"] = Evil(_skops_folder(tmp_path / "s1", predict), "sklearn",
                               {"file": "model.skops"}, table_signature())
    fitted = LogisticRegression().fit(RNG.normal(size=(20, 4)), np.arange(20) % 2)
    on_load = edit_schema(skops_dump(fitted), lambda schema: schema["content"]["content"]
                          .__setitem__("C", runs_on_load(touch(marker))))
    found["sk-load"] = Evil(_skops_folder(tmp_path / "s2", on_load), "sklearn",
                            {"file": "model.skops"}, table_signature())

    folder = tmp_path / "t"
    folder.mkdir()
    meta = exported_model(folder)
    payload = torch_pickle(((Payload(touch(marker)),), {}))
    archive = folder / meta["file"]
    archive.write_bytes(rewrite_zip(archive.read_bytes(),
                                    lambda n, c: payload if "sample_inputs" in n else None))
    found["torch-export"] = Evil(folder, "torch", meta, tensor)

    inputs = keras.Input(shape=(4,))
    # Keras calls the function once while building the model: that run is the attacker's
    run = eval(f"lambda z: (open({str(marker)!r}, 'w').close(), z)[1]")
    model = keras.Model(inputs, keras.layers.Lambda(run)(inputs))
    (tmp_path / "k").mkdir()
    keras.saving.save_model(model, tmp_path / "k" / "model.keras")
    marker.unlink()
    found["keras-lambda"] = Evil(tmp_path / "k", "tensorflow", {"file": "model.keras"}, tensor)
    return found


@pytest.fixture()
def attacked(tmp_path: Path, evil: dict[str, Evil]) -> Iterator[Registry]:
    """A registry holding each malicious artifact as a version, written past every check."""
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as reg:
        for name, item in evil.items():
            register_raw(reg, name, item.folder, flavor=item.flavor, meta=item.meta,
                         signature=item.signature)
        yield reg


def _skops_folder(folder: Path, data: bytes) -> Path:
    write_skops(folder, data)
    return folder


NAMED = {
    "sk-predict": "numpy.testing._private.utils.runstring",
    "sk-load": "numpy.testing._private.utils.runstring",
    "torch-export": "builtins.exec",
    "keras-lambda": "keras.layers.Lambda",
}


@pytest.mark.anyio
async def test_the_server_refuses_and_never_runs_a_malicious_artifact(
        attacked: Registry, marker: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(attacked, ServeOptions(poll_interval_s=3600))
    with caplog.at_level(logging.WARNING):
        await app.startup()  # preloading production tries every version
        await app.wait_ready()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
                for name, offending in NAMED.items():
                    r = await client.post(f"/v1/models/{name}/predict",
                                          json={"instances": [[0.1, 0.2, 0.3, 0.4]]})
                    assert r.status_code == 500, r.text
                    body = r.json()
                    assert body["error"] == "UnsafeArtifactError"
                    assert offending in body["message"] and "trusted_types" in body["message"]
                    assert "\n" not in body["message"]
                    assert offending in caplog.text  # the refusal is in the server's log
        finally:
            await app.shutdown()


def test_registration_refuses_every_kind(registry: Registry, evil: dict[str, Evil]) -> None:
    for name, item in evil.items():
        with pytest.raises(UnsafeArtifactError, match=NAMED[name].replace(".", r"\.")):
            registry.register(name, item.folder, flavor=item.flavor, meta=item.meta,
                              signature=item.signature)
    assert registry.list_models() == []
    assert isinstance(registry.store, LocalStore)
    assert [p for p in registry.store.root.rglob("*") if p.is_file()] == []  # nothing stored


def test_modelyard_load_refuses_every_kind(attacked: Registry, marker: Path) -> None:
    for name, offending in NAMED.items():
        with pytest.raises(UnsafeArtifactError, match=offending.replace(".", r"\.")):
            load(f"{name}@production", registry=attacked)
