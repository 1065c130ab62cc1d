"""deploy/envoy/: each Envoy YAML parses into Envoy's Bootstrap message (unknown field or type
fails), passes the protoc-gen-validate rules Envoy checks at load, and points its ext_authz
filter at the ports of the matching sidecar TOML, with the settings docs/envoy.md describes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from sidecar import config as config_module
from tests.support.envoy_config import (
    ENVOY_DIR,
    duration_seconds,
    endpoint_port,
    ext_authz_of,
    load_bootstrap,
    parse_bootstrap,
    pgv_errors,
    sidecar_toml,
)
from tests.support.pki_fixtures import TestPki

MODES = {"envoy-http.yaml": "sidecar-http.toml", "envoy-grpc.yaml": "sidecar-grpc.toml"}


def files(pki: TestPki) -> dict[str, Path]:
    return {"cert_file": pki.sidecar_files[0], "key_file": pki.sidecar_files[1], "ca_file": pki.ca_file}


@pytest.mark.parametrize("name", MODES)
def test_the_envoy_file_parses_into_bootstrap_and_passes_envoys_field_rules(name: str) -> None:
    bootstrap = load_bootstrap(name)
    assert pgv_errors(bootstrap) == []
    assert len(bootstrap.static_resources.listeners) == 1


def ext_authz_config(hcm: dict[str, Any]) -> dict[str, Any]:
    found: list[dict[str, Any]] = [f["typed_config"] for f in hcm["http_filters"]
                                   if f["name"] == "envoy.filters.http.ext_authz"]
    (config,) = found
    return config


def test_a_misspelled_field_fails_to_parse() -> None:
    document = yaml.safe_load((ENVOY_DIR / "envoy-grpc.yaml").read_text())
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_authz_config(hcm)["include_peer_certificates"] = True
    with pytest.raises(json_format.ParseError, match="include_peer_certificates"):
        parse_bootstrap(document)


def test_an_unknown_typed_config_type_fails_to_parse() -> None:
    document = yaml.safe_load((ENVOY_DIR / "envoy-http.yaml").read_text())
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    misspelled = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuth"
    ext_authz_config(hcm)["@type"] = misspelled
    with pytest.raises(json_format.ParseError):
        parse_bootstrap(document)


def test_a_missing_required_field_breaks_the_field_rules() -> None:
    document = yaml.safe_load((ENVOY_DIR / "envoy-grpc.yaml").read_text())
    document["static_resources"]["clusters"][0]["connect_timeout"] = "0s"
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    del ext_authz_config(hcm)["grpc_service"]["envoy_grpc"]
    errors = pgv_errors(parse_bootstrap(document))
    assert any("connect_timeout" in e for e in errors) and any("target_specifier" in e for e in errors)


@pytest.mark.parametrize(("name", "toml"), MODES.items())
def test_the_sidecar_toml_loads_and_reads_xfcc_from_envoy_only(name: str, toml: str, pki: TestPki) -> None:
    config = sidecar_toml(ENVOY_DIR / toml, files(pki))
    assert config.client_cert.header == "x-forwarded-client-cert" and config.client_cert.format == "xfcc"
    assert config.client_cert.trusted_proxies == ("127.0.0.1/32", "::1/128")
    assert config.response.remove_upstream_headers == ("authorization", "x-forwarded-client-cert", "dpop")
    assert config.policy.binding == "strict"


@pytest.mark.parametrize(("name", "toml"), MODES.items())
def test_listener_requires_and_verifies_a_client_certificate_and_sanitizes_xfcc(
    name: str, toml: str, pki: TestPki
) -> None:
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    authz = ext_authz_of(load_bootstrap(name))
    tls = tls_pb2.DownstreamTlsContext()
    assert authz.listener.filter_chains[0].transport_socket.typed_config.Unpack(tls)
    assert tls.require_client_certificate.value
    assert tls.common_tls_context.validation_context.trusted_ca.filename
    assert authz.hcm.forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE_SET
    assert authz.hcm.set_current_client_cert_details.cert
    assert not authz.filter.failure_mode_allow  # a sidecar error never allows
    config = sidecar_toml(ENVOY_DIR / toml, files(pki))
    assert authz.filter.status_on_error.code == 503
    timeout = authz.filter.http_service.server_uri.timeout if name == "envoy-http.yaml" \
        else authz.filter.grpc_service.timeout
    assert duration_seconds(timeout) > config.idp.timeout  # the sidecar answers before Envoy gives up


def test_http_mode_calls_the_sidecar_check_port_with_a_prefix_and_passes_xfcc(pki: TestPki) -> None:
    authz = ext_authz_of(load_bootstrap("envoy-http.yaml"))
    config = sidecar_toml(ENVOY_DIR / "sidecar-http.toml", files(pki))
    service = authz.filter.http_service
    assert endpoint_port(authz.cluster) == config.server.port
    assert service.server_uri.uri == f"http://{config.server.host}:{config.server.port}"
    assert service.path_prefix.startswith("/") and not service.path_prefix.endswith("/")
    assert not service.authorization_request.HasField("allowed_headers")  # deprecated: the filter's own
    allowed = [p.exact for p in authz.filter.allowed_headers.patterns]
    assert config.client_cert.header in allowed
    upstream = service.authorization_response.allowed_upstream_headers.patterns
    assert [p.prefix for p in upstream] == [config.response.prefix]
    client = {p.exact for p in service.authorization_response.allowed_client_headers.patterns}
    assert {"www-authenticate", "retry-after", "content-type", "cache-control"} <= client
    (group,) = authz.cluster.load_assignment.endpoints
    assert group.lb_endpoints[0].endpoint.health_check_config.port_value == config.server.admin_port
    assert authz.cluster.health_checks[0].http_health_check.path == "/readyz"


def test_grpc_mode_calls_the_sidecar_grpc_port_over_http2_with_the_peer_certificate(pki: TestPki) -> None:
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

    from sidecar.fronts.grpc import SERVICE

    authz = ext_authz_of(load_bootstrap("envoy-grpc.yaml"))
    config = sidecar_toml(ENVOY_DIR / "sidecar-grpc.toml", files(pki))
    assert authz.filter.include_peer_certificate
    assert authz.filter.transport_api_version == 2  # V3
    assert config.server.grpc_port and endpoint_port(authz.cluster) == config.server.grpc_port
    options = http_protocol_options_pb2.HttpProtocolOptions()
    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    assert authz.cluster.typed_extension_protocol_options[key].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    assert authz.cluster.health_checks[0].grpc_health_check.service_name == SERVICE


def test_the_deploy_tomls_use_only_known_keys(pki: TestPki) -> None:
    for toml in MODES.values():
        text = (ENVOY_DIR / toml).read_text().replace("[response]", "[response]\nno_such_key = 1")
        path = pki.directory / toml
        path.write_text(text)
        with pytest.raises(config_module.ConfigError, match=r"response\.no_such_key"):
            sidecar_toml(path, files(pki))


@pytest.mark.parametrize(("name", "toml"), MODES.items())
def test_before_ext_authz_every_client_header_in_the_credential_namespace_is_removed(
    name: str, toml: str, pki: TestPki
) -> None:
    """The live proof is tests/interop/test_envoy_live.py; this keeps the order and the prefix."""
    from envoy.config.core.v3 import protocol_pb2
    from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2

    authz = ext_authz_of(load_bootstrap(name))
    names = [f.name for f in authz.hcm.http_filters]
    assert names.index("envoy.filters.http.header_mutation") < names.index("envoy.filters.http.ext_authz")
    mutation = header_mutation_pb2.HeaderMutation()
    assert authz.hcm.http_filters[names.index("envoy.filters.http.header_mutation")].typed_config.Unpack(mutation)
    prefix, spellings = (rule.remove_on_match.key_matcher for rule in mutation.mutations.request_mutations)
    assert prefix.prefix == sidecar_toml(ENVOY_DIR / toml, files(pki)).response.prefix and prefix.ignore_case
    # RE2 full match over the alias spellings (x.credential.sub); Python's re agrees on this pattern.
    pattern = re.compile(spellings.safe_regex.regex)
    for name in ("x.credential.sub", "X.Credential-Tenant", "x-credential.scope", "x_credential_sub"):
        assert pattern.fullmatch(name), name
    for name in ("x-credentials", "xx-credential-sub", "authorization", "x.credentialsub"):
        assert not pattern.fullmatch(name), name
    drop = protocol_pb2.HttpProtocolOptions.DROP_HEADER  # x_credential_sub would pass a prefix rule
    assert authz.hcm.common_http_protocol_options.headers_with_underscores_action == drop



def test_the_upstream_identity_envoy_verifies_the_sidecars_identity_header_against_its_admin_port() -> None:
    """deploy/envoy/envoy-upstream-identity.yaml (docs/identity.md) agrees with the sidecar's defaults."""
    bootstrap = load_bootstrap("envoy-upstream-identity.yaml")
    assert pgv_errors(bootstrap) == []
    document = yaml.safe_load((ENVOY_DIR / "envoy-upstream-identity.yaml").read_text())
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    jwt_authn = hcm["http_filters"][0]["typed_config"]
    provider = jwt_authn["providers"]["sidecar"]
    defaults = config_module.IdentityConfig()
    assert [h["name"] for h in provider["from_headers"]] == [defaults.header]
    assert provider["remote_jwks"]["http_uri"]["uri"].endswith(":9192/.well-known/jwks.json")
    assert float(provider["remote_jwks"]["cache_duration"].removesuffix("s")) < defaults.rotation_overlap
    assert provider["clock_skew_seconds"] < defaults.ttl
    assert jwt_authn["rules"] == [{"match": {"prefix": "/"}, "requires": {"provider_name": "sidecar"}}]
