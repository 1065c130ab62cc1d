"""deploy/kubernetes exposes only what probes and Prometheus need (issue 11, item 5): the Service
publishes the proxy alone, purge is off in every rendered configuration and answers only the
pod's own containers when turned on, and the base's NetworkPolicy admits only Prometheus to the
admin port in every overlay."""

from __future__ import annotations

import pytest

from sidecar import config as config_module
from tests.deploy.test_kubernetes import OVERLAYS, one, pod_spec, render, sidecar_env
from tests.support.pki_fixtures import TestPki


@pytest.mark.parametrize("name", ("base", *OVERLAYS))
def test_the_service_publishes_the_proxys_port_only(name: str) -> None:
    service = one(render(name), "Service")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(443, "https")]
    if name != "base":
        (sidecar,) = pod_spec(name)["initContainers"]
        admin = {p["name"]: p["containerPort"] for p in sidecar["ports"]}["admin"]
        assert {p["targetPort"] for p in service["spec"]["ports"]}.isdisjoint({"admin", admin})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_purge_is_off_and_when_turned_on_answers_loopback_peers_only(overlay: str, pki: TestPki) -> None:
    env = sidecar_env(overlay)
    assert not {"SIDECAR_SERVER__ADMIN_SECRET", "SIDECAR_SERVER__ADMIN_SECRET_FILE"} & env.keys()
    files = {"SIDECAR_IDP__CERT_FILE": str(pki.sidecar_files[0]), "SIDECAR_IDP__KEY_FILE": str(pki.sidecar_files[1]),
             "SIDECAR_IDP__CA_FILE": str(pki.ca_file)}  # where the Secret is mounted in the pod
    server = config_module.load(None, {**env, **files, "SIDECAR_SERVER__ADMIN_SECRET": "x" * 16}).server
    assert server.admin_host == "0.0.0.0"  # the pod IP, for the kubelet and Prometheus ...
    assert server.purge_peers == ("127.0.0.1/32", "::1/128")  # ... but purge only from inside the pod


@pytest.mark.parametrize("name", ("base", *OVERLAYS))
def test_the_network_policy_admits_anyone_to_the_proxy_and_only_prometheus_to_the_admin_port(name: str) -> None:
    policy = one(render(name), "NetworkPolicy")  # shipped with the base: every overlay has it
    labels = one(render(name), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert rules.keys() == {"https", "admin"}
    assert "from" not in rules["https"]
    (source,) = rules["admin"]["from"]
    assert source["namespaceSelector"]["matchLabels"] and source["podSelector"]["matchLabels"]
    for overlay in OVERLAYS:  # the names resolve to the pod's ports in both overlays
        spec = pod_spec(overlay)
        names = {p["name"] for c in spec["initContainers"] + spec["containers"] for p in c.get("ports", [])}
        assert {"https", "admin"} <= names
