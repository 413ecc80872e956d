"""Real ``modelyard serve --pool`` and ``--models`` processes over one registry: each serves its
pool's models and answers 404 naming the pool for the others, over REST v1, OIP v2 REST and
OIP v2 gRPC alike; ``/v1/models``, the v2 metadata and ``/readyz`` say pool and device."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.testing import ServerProcess, register_constant

pytestmark = pytest.mark.integration

ROW = {"records": [{"f0": 0.0, "f1": 0.0, "f2": 0.0}]}
V2_ROW = {"inputs": [{"name": n, "datatype": "FP64", "shape": [1], "data": [0.0]}
                     for n in ("f0", "f1", "f2")]}
GPU_REFUSAL = "model 'digits' is served by the 'gpu' pool; this server serves pool 'cpu'"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("pools") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_constant(reg, "tabular", 1)  # sklearn, device auto: the cpu pool
        register_constant(reg, "digits", 2, meta={"serving": {"pool": "gpu"}})
    return home


@pytest.fixture(scope="module")
def cpu_server(home: Path) -> Iterator[ServerProcess]:
    with ServerProcess(home, args=("--pool", "cpu"), grpc=True) as server:
        yield server


def test_a_cpu_server_serves_the_cpu_model_and_names_the_gpu_pool(
        cpu_server: ServerProcess) -> None:
    with httpx.Client(base_url=cpu_server.url, timeout=10) as c:
        ok = c.post("/v1/models/tabular/predict", json=ROW)
        assert ok.status_code == 200 and ok.json()["predictions"] == [1]
        refused = c.post("/v1/models/digits/predict", json=ROW)
        assert (refused.status_code, refused.json()["message"]) == (404, GPU_REFUSAL)
        v2 = c.post("/v2/models/digits/infer", json=V2_ROW)
        assert (v2.status_code, v2.json()["error"]) == (404, GPU_REFUSAL)
        assert c.post("/v2/models/tabular/infer", json=V2_ROW).status_code == 200
        unknown = c.post("/v1/models/nope/predict", json=ROW)
        assert unknown.status_code == 404 and "not in the registry" in unknown.json()["message"]


def test_grpc_refuses_the_gpu_model_with_not_found_naming_its_pool(
        cpu_server: ServerProcess) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    def infer(model: str) -> object:
        tensors = []
        for name in ("f0", "f1", "f2"):
            t = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype="FP64",
                                                               shape=[1])
            t.contents.fp64_contents.append(0.0)
            tensors.append(t)
        return stub.ModelInfer(service_pb2.ModelInferRequest(model_name=model, inputs=tensors),
                               timeout=10)

    assert cpu_server.grpc_address is not None
    with grpc.insecure_channel(cpu_server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert infer("tabular").model_version == "1"  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as refused:
            infer("digits")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert refused.value.details() == GPU_REFUSAL  # type: ignore[attr-defined]


def test_listings_and_metadata_show_pool_and_device(cpu_server: ServerProcess) -> None:
    with httpx.Client(base_url=cpu_server.url, timeout=10) as c:
        listed = c.get("/v1/models").json()
        assert [(m["name"], m["pool"], m["device"], m["devices"]) for m in listed["models"]] \
            == [("tabular", "cpu", "auto", {"1": "cpu"})]
        assert listed["elsewhere"] == {"digits": "gpu"}
        assert listed["serves"] == {"pools": ["cpu"], "models": None}
        assert c.get("/v2/models/tabular").json()["parameters"]["pool"] == "cpu"
        assert c.get("/v2").json()["parameters"] == {"pools": ["cpu"], "models": None}
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["serves"] == {"pools": ["cpu"], "models": None}


def test_a_gpu_pool_server_and_a_named_models_server(home: Path) -> None:
    gpu = ServerProcess(home, args=("--pool", "gpu"), wait=False)
    named = ServerProcess(home, args=("--models", "tabular,digits", "--pool", "cpu,gpu"),
                          wait=False)
    with gpu, named:
        gpu.wait_ready()
        named.wait_ready()
        with httpx.Client(timeout=10) as c:
            assert c.post(gpu.url + "/v1/models/digits/predict", json=ROW).json()[
                "predictions"] == [2]
            refused = c.post(gpu.url + "/v1/models/tabular/predict", json=ROW)
            assert refused.status_code == 404
            assert refused.json()["message"] == (
                "model 'tabular' is served by the 'cpu' pool; this server serves pool 'gpu'")
            for model in ("tabular", "digits"):
                assert c.post(f"{named.url}/v1/models/{model}/predict",
                              json=ROW).status_code == 200
            assert [m["name"] for m in c.get(named.url + "/v1/models").json()["models"]] == [
                "digits", "tabular"]
