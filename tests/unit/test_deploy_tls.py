"""TLS in what ``modelyard build`` emits: with ``tls_secret`` the servers get --tls-cert and
--tls-key from the mounted Secret and are probed over HTTPS; with ``tls_client_ca`` too they
require client certificates and are probed on TCP (the kubelet has none). The image's
health check follows the same variables the server reads."""

from __future__ import annotations

import ssl

import pytest
from tests.unit.test_deploy_kubernetes import IMAGES, container, find, pools  # noqa: F401

from modelyard.deploy import healthcheck
from modelyard.deploy.kube_options import KubeOptions
from modelyard.deploy.kubernetes import render
from modelyard.errors import ConfigError


def _server(files: dict[str, str]) -> tuple[dict, dict]:
    workload = find(files, "Deployment", "modelyard-cpu")
    return container(workload), workload["spec"]["template"]


def test_a_tls_secret_makes_https_servers_probed_over_https(pools):  # noqa: F811
    files = render(pools, IMAGES, KubeOptions(tls_secret="shop-tls"))
    server, template = _server(files)
    args = server["args"]
    assert args[args.index("--tls-cert") + 1] == "/etc/modelyard/tls/tls.crt"
    assert args[args.index("--tls-key") + 1] == "/etc/modelyard/tls/tls.key"
    assert "--tls-client-ca" not in args
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http",
                                                  "scheme": "HTTPS"}
    assert server["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert {"name": "tls", "mountPath": "/etc/modelyard/tls", "readOnly": True} in server[
        "volumeMounts"]
    assert {"name": "tls", "secret": {"secretName": "shop-tls"}} in template["spec"]["volumes"]
    assert template["metadata"]["annotations"]["prometheus.io/scheme"] == "https"


def test_client_certificates_turn_the_probes_into_tcp_checks(pools):  # noqa: F811
    files = render(pools, IMAGES, KubeOptions(tls_secret="shop-tls", tls_client_ca=True))
    server, _ = _server(files)
    assert server["args"][server["args"].index("--tls-client-ca") + 1] == (
        "/etc/modelyard/tls/ca.crt")
    assert server["livenessProbe"]["tcpSocket"] == {"port": "http"}
    assert "httpGet" not in server["readinessProbe"]


def test_without_tls_nothing_changes(pools):  # noqa: F811
    server, template = _server(render(pools, IMAGES))
    assert "--tls-cert" not in server["args"]
    assert "scheme" not in server["livenessProbe"]["httpGet"]
    assert all(v["name"] != "tls" for v in template["spec"]["volumes"])


@pytest.mark.parametrize("raw, message", [
    ({"tls_client_ca": True}, "tls_client_ca needs tls_secret"),
    ({"tls_secret": "Not_A_Name"}, "is not a Secret name"),
])
def test_tls_options_are_checked(raw, message):
    with pytest.raises(ConfigError, match=message):
        KubeOptions.of(raw)


def test_the_health_check_speaks_https_when_the_server_does():
    url, context = healthcheck.target({"MODELYARD_PORT": "9443"})
    assert (url, context) == ("http://127.0.0.1:9443/healthz", None)
    url, context = healthcheck.target({"MODELYARD_PORT": "9443", "MODELYARD_TLS_CERT": "c"})
    assert url == "https://127.0.0.1:9443/healthz"
    assert context is not None and context.verify_mode == ssl.CERT_NONE
