"""Istio's two ext_authz providers (deploy/istio/mesh-config.yaml) in the real Envoy, in front of the
sidecar running deploy/istio/sidecar.toml and the real OpenID provider.

No Istio control plane runs here, so istiod's part is modelled: :func:`ext_authz_filter` renders a
provider the way istiod does (pilot/pkg/security/authz/builder/extauthz.go: the HTTP provider's
``includeRequestHeadersInCheck`` → ``allowed_headers``, ``*`` as a prefix/suffix match;
``headersToUpstreamOnAllow`` → ``allowed_upstream_headers``; ``headersToDownstreamOnDeny`` →
``allowed_client_headers``, ``headersToDownstreamOnAllow`` → ``allowed_client_headers_on_success``;
``failOpen``, ``statusOnError``,
``pathPrefix``, ``timeout``; the gRPC provider → ``envoy_grpc``), and the gateway is a mutual-TLS
listener with Istio's XFCC (``SANITIZE_SET``; Hash, Subject, URI, DNS and no Cert). What is real:
Envoy's ext_authz filter, the sidecar, the IdP, the certificates.

Unlike deploy/envoy, nothing in front of ext_authz strips the ``x-credential-*`` namespace (istiod
adds no such filter) and the gateway keeps header names with underscores (Envoy's default): the
sidecar's removal list alone keeps a client's copies from the upstream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.interop.envoy import ConfiguredSidecar, Envoy, EnvoyFront
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.interop.stack import EchoUpstream
from tests.support.dpop_proof import DpopKey
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port
from tests.unit.test_deploy_istio import ISTIO_DIR, providers

pytestmark = [pytest.mark.interop, pytest.mark.fronts]

ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
# What a deployment fills in: loopback listeners, the IdP, the API's audiences.
DEPLOYMENT = {"SIDECAR_SERVER__HOST": "127.0.0.1", "SIDECAR_SERVER__ADMIN_HOST": "127.0.0.1",
              "SIDECAR_SERVER__GRPC_HOST": "127.0.0.1",
              "SIDECAR_POLICY__AUDIENCES": f"{OPAQUE_RESOURCE},{JWT_RESOURCE}"}
STANDARD = ("sub", "client-id", "scope", "iss", "aud", "exp", "iat", "jti", "token-type", "username")
FORGED = {
    **{f"X-Credential-{name}": "forged" for name in STANDARD},  # names the sidecar sets
    "X-Credential-Tenant": "forged", "x-credential-role": "forged", "X-CREDENTIAL-ADMIN": "forged",  # it does not
    "X_Credential_Sub": "forged", "x_credential_tenant": "forged", "x-credential_group": "forged",  # CGI reads as -
    "X.Credential.Scope": "forged",  # PHP reads "." as "_", so as the same variable
}


def matchers(names: list[str]) -> dict[str, Any]:
    """istiod's ListStringMatcher for a header list: ``a*`` prefix, ``*a`` suffix, else exact."""
    patterns = []
    for name in names:
        if name.endswith("*"):
            patterns.append({"prefix": name[:-1], "ignore_case": True})
        elif name.startswith("*"):
            patterns.append({"suffix": name[1:], "ignore_case": True})
        else:
            patterns.append({"exact": name, "ignore_case": True})
    return {"patterns": patterns}


def seconds(duration: str) -> str:
    return duration if duration.endswith("s") and not duration.endswith("ms") else f"{float(duration[:-2]) / 1000}s"


def ext_authz_filter(provider: Mapping[str, Any]) -> dict[str, Any]:
    """The ext_authz filter istiod renders for ``provider`` (cluster ``sidecar``)."""
    config: dict[str, Any] = {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                              "transport_api_version": "V3"}
    if "envoyExtAuthzGrpc" in provider:
        grpc = provider["envoyExtAuthzGrpc"]
        config |= {"failure_mode_allow": grpc["failOpen"], "status_on_error": {"code": int(grpc["statusOnError"])},
                   "grpc_service": {"envoy_grpc": {"cluster_name": "sidecar"}, "timeout": seconds(grpc["timeout"])}}
    else:
        http = provider["envoyExtAuthzHttp"]
        config |= {
            "failure_mode_allow": http["failOpen"], "status_on_error": {"code": int(http["statusOnError"])},
            "allowed_headers": matchers(http["includeRequestHeadersInCheck"]),
            "http_service": {
                "server_uri": {"uri": "http://sidecar", "cluster": "sidecar", "timeout": seconds(http["timeout"])},
                "path_prefix": http.get("pathPrefix", ""),
                "authorization_response": {
                    "allowed_upstream_headers": matchers(http["headersToUpstreamOnAllow"]),
                    "allowed_client_headers": matchers(http["headersToDownstreamOnDeny"]),
                    "allowed_client_headers_on_success": matchers(http.get("headersToDownstreamOnAllow", [])),
                },
            },
        }
    return {"name": "envoy.filters.http.ext_authz", "typed_config": config}


def cluster(name: str, port: int, *, http2: bool = False) -> dict[str, Any]:
    found: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }
    if http2:
        found["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return found


def gateway(provider: Mapping[str, Any], pki: TestPki, *, port: int, admin: int, upstream: int,
            sidecar: int) -> dict[str, Any]:
    """An Istio ingress gateway, as far as ext_authz is concerned: mutual TLS, Istio's XFCC."""
    server_crt, server_key = pki.idp_files
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(server_crt)},
                                  "private_key": {"filename": str(server_key)}}],
            "validation_context": {"trusted_ca": {"filename": str(pki.ca_file)}}}}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": "gateway", "use_remote_address": True,
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True},
        "route_config": {"name": "api", "virtual_hosts": [{"name": "api", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "api"}}]}]},
        "http_filters": [ext_authz_filter(provider), ROUTER],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "gateway",
                           "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"transport_socket": tls, "filters": [
                               {"name": "envoy.filters.network.http_connection_manager",
                                "typed_config": manager}]}]}],
            "clusters": [cluster("sidecar", sidecar, http2="envoyExtAuthzGrpc" in provider),
                         cluster("api", upstream)],
        },
    }


class IstioGateway(Envoy):
    """The real Envoy running :func:`gateway` for one provider."""

    def __init__(self, provider: Mapping[str, Any], pki: TestPki, *, upstream: int, sidecar: int) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.write(f"{provider['name']}.yaml", gateway(provider, pki, port=self.port, admin=self.admin_port,
                                                       upstream=upstream, sidecar=sidecar))


class IstioFront(EnvoyFront):
    """:class:`EnvoyFront` (start, call, stop) with the gateway of one Istio provider and the sidecar
    running deploy/istio/sidecar.toml."""

    def __init__(self, name: str, oidc: OidcProvider, pki: TestPki, log_dir: Path,
                 client_files: Mapping[str, tuple[Path, Path]]) -> None:
        provider = providers()[name]
        self.mode, self.pki, self.client_files = name, pki, client_files
        self.upstream = EchoUpstream()
        self.sidecar = ConfiguredSidecar(ISTIO_DIR / "sidecar.toml", oidc.issuer, pki, log_dir, DEPLOYMENT, grpc=True)
        port = self.sidecar.grpc_port if "envoyExtAuthzGrpc" in provider else self.sidecar.port
        self.envoy = IstioGateway(provider, pki, upstream=self.upstream.port, sidecar=port)
        self.sidecar.env["SIDECAR_ROUTING__ORIGINS"] = self.envoy.url  # the gateway's public origin


@pytest.fixture(scope="module", params=["sidecar-grpc", "sidecar-http"])
def front(request: pytest.FixtureRequest, oidc: OidcProvider, pki: TestPki,
          client_files: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[IstioFront]:
    started = IstioFront(request.param, oidc, pki, tmp_path_factory.mktemp(request.param), client_files).start()
    yield started
    started.stop()


def test_the_model_renders_every_field_the_shipped_providers_set() -> None:
    """A field the model ignores would be a setting the test does not run."""
    modelled = {"envoyExtAuthzGrpc": {"service", "port", "timeout", "failOpen", "statusOnError"},
                "envoyExtAuthzHttp": {"service", "port", "timeout", "failOpen", "statusOnError", "pathPrefix",
                                      "includeRequestHeadersInCheck", "headersToUpstreamOnAllow",
                                      "headersToDownstreamOnDeny", "headersToDownstreamOnAllow"}}
    for provider in providers().values():
        (kind,) = set(provider) - {"name"}
        assert set(provider[kind]) <= modelled[kind], provider["name"]


def test_a_bound_token_with_its_certificate_reaches_the_upstream_with_the_credentials_only(
    front: IstioFront, oidc: OidcProvider
) -> None:
    token = oidc.access_token("alice", scope="read")
    reply = front.call(token, "alice")
    assert reply.status == 200, front.diagnostics()
    seen = front.upstream.last
    assert seen.header("x-credential-client-id") == "alice" and seen.header("x-credential-scope") == "read"
    assert seen.header("authorization") is None and seen.header("x-forwarded-client-cert") is None


def test_a_bound_jwt_access_token_is_validated_locally_and_reaches_the_upstream(
    front: IstioFront, oidc: OidcProvider
) -> None:
    token = oidc.access_token("alice", scope="read", resource=JWT_RESOURCE)
    introspections = front.sidecar.metric("sidecar_idp_requests_total", kind="introspection")
    reply = front.call(token, "alice")
    assert reply.status == 200, front.diagnostics()
    assert front.upstream.last.header("x-credential-aud") == JWT_RESOURCE
    assert front.sidecar.metric("sidecar_idp_requests_total", kind="introspection") == introspections


@pytest.mark.parametrize("resource", [OPAQUE_RESOURCE, JWT_RESOURCE])
def test_the_token_with_another_clients_certificate_is_401_and_never_reaches_the_upstream(
    front: IstioFront, oidc: OidcProvider, resource: str
) -> None:
    token = oidc.access_token("alice", resource=resource)
    reached = len(front.upstream.received)
    reply = front.call(token, "bob")
    assert reply.status == 401, front.diagnostics()
    assert 'error="invalid_token"' in reply.headers.get("www-authenticate", "")
    assert len(front.upstream.received) == reached


def test_no_credential_header_the_client_sends_reaches_the_upstream_whatever_its_name(
    front: IstioFront, oidc: OidcProvider
) -> None:
    token = oidc.access_token("alice", scope="read")
    reply = front.call(token, "alice", headers=FORGED)
    assert reply.status == 200, front.diagnostics()
    seen = front.upstream.last
    assert [(k, v) for k, v in seen.headers if v == "forged"] == []
    assert seen.header("x-credential-client-id") == "alice"  # the sidecar's own values stay
    for name in ("x-credential-tenant", "x-credential-role", "x-credential-admin", "x_credential_sub",
                 "x_credential_tenant", "x-credential_group", "x.credential.scope"):
        assert seen.header(name) is None, name


def test_without_the_sidecars_removal_list_the_gateway_would_pass_a_forged_name(
    front: IstioFront, oidc: OidcProvider, tmp_path: Path
) -> None:
    """The control: the same gateway with the sidecar set to list nothing (forged names in a
    namespace the sidecar is told is another) lets the copy through: the removal list is what
    keeps it out, not something else in the model."""
    token = oidc.access_token("alice", scope="read")
    control = IstioFront(front.mode, oidc, front.pki, tmp_path, front.client_files)
    control.sidecar.env["SIDECAR_RESPONSE__PREFIX"] = "x-other-"
    control.start()
    try:
        reply = control.call(token, "alice", headers={"X-Credential-Tenant": "forged"})
        assert reply.status == 200, control.diagnostics()
        assert control.upstream.last.header("x-credential-tenant") == "forged"
    finally:
        control.stop()


@pytest.mark.dpop
def test_a_dpop_client_gets_its_nonce_through_the_gateway_on_401_and_on_200(
    front: IstioFront, oidc: OidcProvider, tmp_path: Path
) -> None:
    """deploy/istio/sidecar.toml with DPoP on and nonces required (RFC 9449 §9): the providers hand
    dpop-nonce to the client (HTTP: headersToDownstreamOnDeny / OnAllow; gRPC: denied_response,
    response_headers_to_add), never to the upstream."""
    nonced = IstioFront(front.mode, oidc, front.pki, tmp_path, front.client_files)
    nonced.sidecar.env.update({"SIDECAR_DPOP__ENABLED": "true", "SIDECAR_DPOP__NONCE": "required"})
    nonced.start()
    try:
        dave = DpopKey()
        token = oidc.access_token("dave", dpop=dave)
        url = nonced.envoy.url + "/orders/42"
        first = nonced.call(None, "bob", headers={"Authorization": f"DPoP {token}",
                                                  "DPoP": dave.proof("GET", url, token)})
        assert first.status == 401 and "dpop-nonce" in first.headers, (first.status, nonced.diagnostics())
        proof = dave.proof("GET", url, token, nonce=first.headers["dpop-nonce"])
        second = nonced.call(None, "bob", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
        assert second.status == 200 and second.headers.get("dpop-nonce"), (second.status, nonced.diagnostics())
        assert nonced.upstream.last.header("dpop-nonce") is None
        assert nonced.upstream.last.header("x-credential-cnf-jkt") == dave.jkt
    finally:
        nonced.stop()
