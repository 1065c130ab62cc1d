"""deploy/nginx/ agrees with the sidecar: every credential header the sidecar's example config
returns is copied to the upstream (and so cleared of client copies), and the certificate header
nginx sets is the one the sidecar reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.config import Config, load
from sidecar.core.headers import HeaderBuilder
from tests.interop.nginx import DEPLOY, render
from tests.support.pki_fixtures import TestPki

pytestmark = pytest.mark.interop


@pytest.fixture
def example(pki: TestPki) -> Config:
    """deploy/nginx/sidecar.toml, with only the file paths pointed at the test PKI."""
    return load(DEPLOY / "sidecar.toml", {
        "SIDECAR_IDP__CERT_FILE": str(pki.sidecar_files[0]), "SIDECAR_IDP__KEY_FILE": str(pki.sidecar_files[1]),
        "SIDECAR_IDP__CA_FILE": str(pki.ca_file),
    })


def directives(path: Path) -> list[list[str]]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line.rstrip(";").split() for line in lines if line]


def test_the_example_config_answers_malformed_requests_with_401_for_nginx(example: Config) -> None:
    assert example.server.invalid_request_status == 401
    assert example.client_cert.format == "escaped_pem"


def test_every_credential_header_is_copied_upstream_and_a_client_copy_cleared(example: Config) -> None:
    found = directives(DEPLOY / "snippets" / "sidecar-protect.conf")
    copied = {d[2].removeprefix("$upstream_http_"): d[1] for d in found if d[0] == "auth_request_set"}
    forwarded = {d[1].lower(): d[2] for d in found if d[0] == "proxy_set_header"}
    for header in HeaderBuilder(example.response).names:
        variable = copied.get(header.replace("-", "_"))
        assert variable is not None, f"no auth_request_set for {header}"
        assert forwarded.get(header) == variable, f"no proxy_set_header {header} {variable}"
    assert forwarded[example.client_cert.header] == '""'
    assert ["auth_request", "/_sidecar_check"] in found


def test_the_subrequest_forwards_the_connections_certificate_in_the_configured_header(example: Config) -> None:
    found = directives(DEPLOY / "snippets" / "sidecar-check.conf")
    forwarded = {d[1].lower(): d[2] for d in found if d[0] == "proxy_set_header"}
    assert forwarded[example.client_cert.header] == "$ssl_client_escaped_cert"
    assert forwarded["x-original-uri"] == "$request_uri"
    assert forwarded["x-original-method"] == "$request_method"
    assert ["proxy_pass_request_body", "off"] in found


@pytest.mark.parametrize(("template", "verify"), [("api.conf.template", "optional_no_ca"),
                                                  ("api-verify-on.conf.template", "on"),
                                                  ("api-edge-cache.conf.template", "optional_no_ca")])
def test_each_template_fills_every_placeholder_and_leaves_nginx_variables_alone(template: str, verify: str) -> None:
    names = set(re.findall(r"\$\{([A-Z_]+)\}", (DEPLOY / template).read_text()))
    rendered = render((DEPLOY / template).read_text(), {name: f"<{name}>" for name in names})
    assert f"ssl_verify_client {verify};" in rendered
    assert "$proxy_add_x_forwarded_for" in rendered and "<SIDECAR_ADDR>" in rendered
    with pytest.raises(AssertionError, match="unfilled"):
        render((DEPLOY / template).read_text(), {})
