"""deploy/istio/: the Istio example, checked structurally (no Istio protos are installable here).

The allowed keys are transcribed from istio/api: ``mesh/v1alpha1/config.proto``
(``MeshConfig.ExtensionProvider.EnvoyExternalAuthorization{Http,Grpc}Provider``),
``security/v1beta1/authorization_policy.proto`` and ``networking/v1alpha3/gateway.proto``
(JSON names). An unknown key, a wrong type or an enum value outside the proto fails; the
provider ports must be the ones deploy/istio/sidecar.toml listens on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.support.envoy_config import ISTIO_DIR, sidecar_toml
from tests.support.pki_fixtures import TestPki

DURATION = re.compile(r"^\d+(\.\d+)?(ms|s|m|h)$")
STR, INT, BOOL = "string", "uint32", "bool"
STRINGS = [STR]
REQUEST_BODY = {"maxRequestBytes": INT, "allowPartialMessage": BOOL, "packAsBytes": BOOL}
HTTP_PROVIDER = {
    "service": STR, "port": INT, "timeout": "duration", "pathPrefix": STR, "failOpen": BOOL, "statusOnError": STR,
    "includeHeadersInCheck": STRINGS, "includeRequestHeadersInCheck": STRINGS,
    "includeAdditionalHeadersInCheck": {"*": STR}, "includeRequestBodyInCheck": REQUEST_BODY,
    "headersToUpstreamOnAllow": STRINGS, "headersToDownstreamOnDeny": STRINGS, "headersToDownstreamOnAllow": STRINGS,
}
GRPC_PROVIDER = {"service": STR, "port": INT, "timeout": "duration", "failOpen": BOOL, "statusOnError": STR,
                 "includeRequestBodyInCheck": REQUEST_BODY}
METADATA = {"name": STR, "namespace": STR, "labels": {"*": STR}, "annotations": {"*": STR}}
OPERATOR = {
    "apiVersion": STR, "kind": STR, "metadata": METADATA,
    "spec": {"meshConfig": {"extensionProviders": [{
        "name": STR, "envoyExtAuthzHttp": HTTP_PROVIDER, "envoyExtAuthzGrpc": GRPC_PROVIDER}]}},
}
SOURCE = {k: STRINGS for k in ("principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
                               "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks",
                               "notRemoteIpBlocks", "serviceAccounts", "notServiceAccounts")}
OPERATION = {k: STRINGS for k in ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths",
                                  "notPaths")}
POLICY_REF = {"group": STR, "kind": STR, "name": STR, "namespace": STR}
AUTHORIZATION_POLICY = {
    "apiVersion": STR, "kind": STR, "metadata": METADATA,
    "spec": {
        "selector": {"matchLabels": {"*": STR}}, "targetRef": POLICY_REF, "targetRefs": [POLICY_REF],
        "rules": [{"from": [{"source": SOURCE}], "to": [{"operation": OPERATION}],
                   "when": [{"key": STR, "values": STRINGS, "notValues": STRINGS}]}],
        "action": ("ALLOW", "DENY", "AUDIT", "CUSTOM"), "provider": {"name": STR},
    },
}
SERVER_TLS = {"httpsRedirect": BOOL, "mode": ("PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL",
                                              "OPTIONAL_MUTUAL"),
              "serverCertificate": STR, "privateKey": STR, "caCertificates": STR, "credentialName": STR,
              "subjectAltNames": STRINGS, "minProtocolVersion": STR, "maxProtocolVersion": STR}
GATEWAY = {
    "apiVersion": STR, "kind": STR, "metadata": METADATA,
    "spec": {"selector": {"*": STR}, "servers": [{
        "port": {"number": INT, "protocol": STR, "name": STR, "targetPort": INT}, "bind": STR, "hosts": STRINGS,
        "tls": SERVER_TLS, "defaultEndpoint": STR, "name": STR}]},
}
SCHEMAS = {"IstioOperator": OPERATOR, "AuthorizationPolicy": AUTHORIZATION_POLICY, "Gateway": GATEWAY}


def problems(node: Any, spec: Any, path: str = "") -> list[str]:
    if isinstance(spec, dict):
        if not isinstance(node, dict):
            return [f"{path}: must be a map"]
        found = []
        for key, value in node.items():
            inner = spec.get(key, spec.get("*"))
            found += [f"{path}.{key}: unknown field"] if inner is None else problems(value, inner, f"{path}.{key}")
        return found
    if isinstance(spec, list):
        if not isinstance(node, list):
            return [f"{path}: must be a list"]
        return [p for i, item in enumerate(node) for p in problems(item, spec[0], f"{path}[{i}]")]
    if isinstance(spec, tuple):
        return [] if node in spec else [f"{path}: {node!r} is not one of {spec}"]
    ok = {STR: isinstance(node, str), BOOL: isinstance(node, bool),
          INT: isinstance(node, int) and not isinstance(node, bool) and 0 <= node <= 2**32 - 1,
          "duration": isinstance(node, str) and bool(DURATION.match(node))}[spec]
    return [] if ok else [f"{path}: {node!r} is not a {spec}"]


def documents() -> list[dict[str, Any]]:
    return [d for f in sorted(ISTIO_DIR.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]


def providers() -> dict[str, dict[str, Any]]:
    (operator,) = [d for d in documents() if d["kind"] == "IstioOperator"]
    return {p["name"]: p for p in operator["spec"]["meshConfig"]["extensionProviders"]}


def test_every_istio_document_has_only_fields_of_its_proto() -> None:
    docs = documents()
    assert {d["kind"] for d in docs} == set(SCHEMAS)
    for doc in docs:
        assert problems(doc, SCHEMAS[doc["kind"]]) == [], doc["kind"]


def test_the_structural_check_catches_a_misspelled_field_and_a_bad_enum() -> None:
    doc = {"apiVersion": "v1", "kind": "AuthorizationPolicy", "spec": {"action": "CUSTOMIZE", "provder": {}}}
    assert problems(doc, AUTHORIZATION_POLICY) == [
        ".spec.action: 'CUSTOMIZE' is not one of ('ALLOW', 'DENY', 'AUDIT', 'CUSTOM')", ".spec.provder: unknown field"]


def test_custom_policies_name_a_declared_provider_at_the_mutual_tls_gateway() -> None:
    declared = providers()
    custom = [d for d in documents() if d["kind"] == "AuthorizationPolicy" and d["spec"]["action"] == "CUSTOM"]
    assert custom and all(d["spec"]["provider"]["name"] in declared for d in custom)
    (gateway,) = [d for d in documents() if d["kind"] == "Gateway"]
    assert all(s["tls"]["mode"] == "MUTUAL" for s in gateway["spec"]["servers"])
    assert custom[0]["spec"]["selector"]["matchLabels"] == gateway["spec"]["selector"]


def test_providers_point_at_the_sidecar_ports_and_never_fail_open(pki: TestPki) -> None:
    files: dict[str, Path] = {"cert_file": pki.sidecar_files[0], "key_file": pki.sidecar_files[1],
                              "ca_file": pki.ca_file}
    config = sidecar_toml(ISTIO_DIR / "sidecar.toml", files)
    grpc, http = providers()["sidecar-grpc"]["envoyExtAuthzGrpc"], providers()["sidecar-http"]["envoyExtAuthzHttp"]
    assert grpc["port"] == config.server.grpc_port and http["port"] == config.server.port
    for provider in (grpc, http):
        assert provider["failOpen"] is False and provider["statusOnError"] == "503"
        assert float(provider["timeout"].removesuffix("s")) > config.idp.timeout
    assert config.client_cert.header in http["includeRequestHeadersInCheck"]
    assert http["headersToUpstreamOnAllow"] == [config.response.prefix + "*"]
    assert config.client_cert.xfcc_trust_hash  # Istio proxies send Hash=, Cert= only where configured


def test_only_the_gateway_identity_may_call_the_sidecar() -> None:
    allow = [d for d in documents() if d["kind"] == "AuthorizationPolicy" and d["spec"]["action"] == "ALLOW"]
    (policy,) = allow
    (rule,) = policy["spec"]["rules"]
    assert rule["from"][0]["source"]["principals"] == [
        "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"]
