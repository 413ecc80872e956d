"""The AWS Lambda entry point in-process: API Gateway HTTP API (payload 2.0) events through
``modelyard.deploy.aws_lambda.handler``, started from the environment once per container, over a
registry holding a trained model."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from modelyard.config import Settings
from modelyard.deploy import aws_lambda
from modelyard.registry import Registry
from modelyard.testing import register_model, tabular_data

N_FEATURES = 4
RECORDS = [{f"f{i}": 0.3 * i - 0.5 for i in range(N_FEATURES)},
           {f"f{i}": 1.0 - 0.4 * i for i in range(N_FEATURES)}]
CONTEXT = SimpleNamespace(function_name="modelyard-cpu", aws_request_id="c0ffee",
                          memory_limit_in_mb=1024)


def http_api_event(method: str, path: str, body: Any = None, *, query: str = "",
                   as_base64: bool = False) -> dict[str, Any]:
    """An API Gateway HTTP API event (payload format 2.0), as Lambda receives it."""
    text = body if isinstance(body, str) or body is None else json.dumps(body)
    if as_base64 and text is not None:
        text = base64.b64encode(text.encode()).decode()
    host = "abc123.execute-api.eu-west-1.amazonaws.com"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {"accept": "*/*", "content-type": "application/json", "host": host,
                    "user-agent": "curl/8.5.0", "x-forwarded-for": "203.0.113.7",
                    "x-forwarded-port": "443", "x-forwarded-proto": "https"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123", "domainName": host,
            "domainPrefix": "abc123",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0"},
            "requestId": uuid.uuid4().hex, "routeKey": "$default", "stage": "$default",
            "time": "06/Dec/2026:08:00:00 +0000", "timeEpoch": 1796544000000,
        },
        "isBase64Encoded": as_base64,
    }
    if query:
        event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    if text is not None:
        event["body"] = text
    return event


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """A registry with one trained classifier in production; the model itself, to compare."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    home = tmp_path_factory.mktemp("lambda-registry") / "home"
    X, y = tabular_data(n_rows=400, n_features=N_FEATURES)
    model = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(X, y)
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_model(reg, "tabular", model, "sklearn", X, y)
    yield home, model


@pytest.fixture(scope="module")
def container(trained: tuple[Path, Any],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[aws_lambda.LambdaServer]:
    """The function's environment as Lambda would set it; its server started by the first
    event, stopped at the end."""
    registry_home, _ = trained
    scratch = tmp_path_factory.mktemp("lambda-tmp") / "modelyard"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELYARD_DB", f"sqlite:///{registry_home / 'registry.db'}")
        env.setenv("MODELYARD_ARTIFACTS", str(registry_home / "artifacts"))
        env.setenv("MODELYARD_HOME", str(scratch))
        env.delenv("MODELYARD_TOKEN", raising=False)
        env.setenv("MODELYARD_INSECURE", "1")  # no keys in this registry: open on purpose
        try:
            answer = aws_lambda.handler(http_api_event("GET", "/healthz"), CONTEXT)
            assert answer["statusCode"] == 200
            yield aws_lambda.server()
        finally:
            aws_lambda.close()


def _json(answer: dict[str, Any]) -> Any:
    body = answer["body"]
    if answer.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body)


def test_a_prediction_answers_200_with_the_models_own_predictions(
        container: aws_lambda.LambdaServer, trained: tuple[Path, Any]) -> None:
    _, model = trained
    answer = aws_lambda.handler(
        http_api_event("POST", "/v1/models/tabular/predict", {"records": RECORDS}), CONTEXT)
    assert answer["statusCode"] == 200, answer
    doc = _json(answer)
    assert doc["model"] == "tabular" and doc["version"] == 1
    rows = np.array([[r[f"f{i}"] for i in range(N_FEATURES)] for r in RECORDS])
    assert doc["predictions"] == model.predict(rows).tolist()
    # the same container answers every event: started once, models loaded once
    assert aws_lambda.server() is container
    # and the prediction was logged before the invocation returned
    assert container.app.predlog is not None and container.app.predlog.pending == 0
    assert container.app.predlog.written >= 1


def test_a_base64_body_and_the_oip_v2_route_work_too(
        container: aws_lambda.LambdaServer) -> None:
    event = http_api_event("POST", "/v2/models/tabular/infer", {"inputs": [
        {"name": f"f{i}", "shape": [1], "datatype": "FP64", "data": [0.1 * i]}
        for i in range(N_FEATURES)]}, as_base64=True)
    answer = aws_lambda.handler(event, CONTEXT)
    assert answer["statusCode"] == 200, answer
    assert _json(answer)["model_name"] == "tabular"


def test_bad_requests_are_4xx_naming_the_problem(container: aws_lambda.LambdaServer) -> None:
    missing = aws_lambda.handler(http_api_event(
        "POST", "/v1/models/tabular/predict", {"records": [{"f0": 1.0}]}), CONTEXT)
    assert missing["statusCode"] == 422 and "f1" in _json(missing)["message"]
    broken = aws_lambda.handler(http_api_event(
        "POST", "/v1/models/tabular/predict", "{not json"), CONTEXT)
    assert broken["statusCode"] == 400
    unknown = aws_lambda.handler(http_api_event(
        "POST", "/v1/models/nosuch/predict", {"records": RECORDS}), CONTEXT)
    assert unknown["statusCode"] == 404


def test_health_and_readiness_answer(container: aws_lambda.LambdaServer) -> None:
    for path in ("/healthz", "/readyz"):
        answer = aws_lambda.handler(http_api_event("GET", path), CONTEXT)
        assert answer["statusCode"] == 200, (path, answer)
    models = aws_lambda.handler(http_api_event("GET", "/v1/models"), CONTEXT)
    assert models["statusCode"] == 200 and "tabular" in models["body"]


def test_the_model_is_loaded_once_per_container_not_per_event(
        container: aws_lambda.LambdaServer) -> None:
    for _ in range(3):
        answer = aws_lambda.handler(
            http_api_event("POST", "/v1/models/tabular/predict", {"records": RECORDS}), CONTEXT)
        assert answer["statusCode"] == 200
    metrics = aws_lambda.handler(http_api_event("GET", "/metrics"), CONTEXT)["body"]
    loads = re.findall(r'modelyard_model_load_seconds_count\{[^}]*model="tabular"[^}]*\} (\S+)',
                       metrics)
    assert [float(n) for n in loads] == [1.0], loads


def test_the_home_defaults_to_lambdas_writable_folder(tmp_path: Path) -> None:
    assert aws_lambda.lambda_settings({}).home == Path("/tmp/modelyard")
    given = aws_lambda.lambda_settings({"MODELYARD_HOME": str(tmp_path)})
    assert given.home == tmp_path


def test_the_function_serves_the_pools_and_models_its_environment_names() -> None:
    assert aws_lambda.lambda_options({}).pools == ()
    chosen = aws_lambda.lambda_options({"MODELYARD_POOL": "cpu, nlp",
                                        "MODELYARD_MODELS": "fraud,churn"})
    assert chosen.pools == ("cpu", "nlp") and chosen.models == ("fraud", "churn")


def test_a_function_enforces_api_keys_unless_told_it_is_insecure(
        trained: tuple[Path, Any], tmp_path: Path) -> None:
    registry_home, _ = trained
    settings = Settings.from_env(home=tmp_path / "scratch",
                                 db_url=f"sqlite:///{registry_home / 'registry.db'}",
                                 artifacts=str(registry_home / "artifacts"))
    assert aws_lambda.lambda_options({"MODELYARD_INSECURE": "1"}).insecure
    function = aws_lambda.LambdaServer(settings, aws_lambda.lambda_options({}))
    event = http_api_event("POST", "/v1/models/tabular/predict", {"records": RECORDS})
    try:
        assert function(event, CONTEXT)["statusCode"] == 401
        assert function(http_api_event("GET", "/healthz"), CONTEXT)["statusCode"] == 200
        with Registry.open(settings) as registry:
            key = registry.keys.create_key("checkout", "predictor", kind="service").secret
        event["headers"]["authorization"] = f"Bearer {key}"
        assert function(event, CONTEXT)["statusCode"] == 200
    finally:
        function.close()
        with Registry.open(settings) as registry:  # the module's other tests run open
            for made in registry.keys.list_keys():
                registry.keys.revoke(made.id)


def test_a_model_of_another_pool_gets_a_404_naming_its_pool(
        trained: tuple[Path, Any], tmp_path: Path) -> None:
    registry_home, _ = trained
    settings = Settings.from_env(home=tmp_path / "scratch",
                                 db_url=f"sqlite:///{registry_home / 'registry.db'}",
                                 artifacts=str(registry_home / "artifacts"))
    function = aws_lambda.LambdaServer(settings, aws_lambda.lambda_options(
        {"MODELYARD_POOL": "gpu", "MODELYARD_INSECURE": "1"}))
    try:
        answer = function(http_api_event("POST", "/v1/models/tabular/predict",
                                         {"records": RECORDS}), CONTEXT)
        assert answer["statusCode"] == 404
        assert "'cpu' pool" in str(_json(answer))
    finally:
        function.close()
