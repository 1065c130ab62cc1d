"""Units the Envoy fronts add: the server.grpc_* keys, the shared denial rendering, and XFCC
Chain / Hash handling in the certificate reader."""

from __future__ import annotations

import pytest

from sidecar import config as config_module
from sidecar.config import ConfigError
from sidecar.core.client_cert import CertificateError, CertificateReader
from sidecar.core.errors import InsufficientScope, InvalidRequest, MissingToken
from sidecar.fronts.render import render_denial
from sidecar.idp.failures import IdpError, IdpFailure
from tests.support import envoy_side
from tests.support.pki_fixtures import TestPki


def test_grpc_is_off_by_default_on_loopback_without_reflection() -> None:
    server = config_module.from_mapping({}).server
    assert (server.grpc_port, server.grpc_host, server.grpc_reflection) == (0, "127.0.0.1", False)


def test_grpc_keys_come_from_the_environment() -> None:
    env = {"SIDECAR_SERVER__GRPC_PORT": "9193", "SIDECAR_SERVER__GRPC_HOST": "::1",
           "SIDECAR_SERVER__GRPC_REFLECTION": "true"}
    server = config_module.from_mapping({}, env).server
    assert (server.grpc_port, server.grpc_host, server.grpc_reflection) == (9193, "::1", True)


@pytest.mark.parametrize(("server", "message"), [
    ({"grpc_port": 70000}, "server.grpc_port: must be a TCP port"),
    ({"grpc_port": -1}, "server.grpc_port: must be a TCP port"),
    ({"grpc_port": 8080}, "server.grpc_port: must differ"),
    ({"grpc_port": 8081}, "server.grpc_port: must differ"),
])
def test_invalid_grpc_ports_name_the_key(server: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_module.from_mapping({"server": server})


def test_removing_a_credential_header_upstream_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"response\.remove_upstream_headers"):
        config_module.from_mapping({"response": {"remove_upstream_headers": ["authorization", "X-Credential-Sub"]}})


def test_render_denial_maps_400_to_the_configured_status_and_sets_json() -> None:
    rendered = render_denial(InvalidRequest("token_malformed"), "api", 401)
    assert rendered.status == 401 and rendered.headers["Content-Type"] == "application/json"
    assert rendered.body == b'{"error":"invalid_request","reason":"token_malformed"}'
    assert render_denial(InvalidRequest("token_malformed"), "api").status == 400


def test_render_denial_keeps_the_challenge_scope_and_retry_after() -> None:
    scope = render_denial(InsufficientScope("scope_missing", scope="write"), "api")
    assert scope.status == 403 and scope.headers["WWW-Authenticate"].endswith('scope="write"')
    down = render_denial(IdpError(IdpFailure.TIMEOUT), "api")
    assert down.status == 503 and down.headers["Retry-After"] == "1" and "WWW-Authenticate" not in down.headers
    assert render_denial(MissingToken("token_missing"), "r").headers["WWW-Authenticate"] == 'Bearer realm="r"'


def test_xfcc_chain_alone_yields_the_leaf_thumbprint(pki: TestPki) -> None:
    reader = CertificateReader("xfcc")
    value = envoy_side.xfcc_element(pki.alice, hash_=False, cert=False, chain=[pki.alice, pki.ca.root])
    assert reader.thumbprint(value) == pki.alice.x5t_s256


def test_xfcc_chain_is_not_read_when_cert_is_present(pki: TestPki) -> None:
    value = envoy_side.xfcc_element(pki.alice, chain=[pki.bob, pki.ca.root])
    assert CertificateReader("xfcc").thumbprint(value) == pki.alice.x5t_s256


def test_xfcc_without_cert_chain_or_trusted_hash_is_unreadable(pki: TestPki) -> None:
    with pytest.raises(CertificateError, match="no Cert or Chain"):
        CertificateReader("xfcc").thumbprint(envoy_side.xfcc_element(pki.alice, cert=False, subject="CN=alice"))
