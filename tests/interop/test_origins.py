"""The host of the request as the upstream receives it, through real fronts (issue 22, cases 1 and 3).

The origin is configuration: ``routing.origins`` declares the public origins the API is served at,
and a request for any other host is refused (``origin_not_allowed``) before any IdP call; a DPoP
proof's ``htu`` must name a declared origin. Host rules read the host the upstream receives, per
front:

- nginx accepts any ``Host`` (``server_name _``): the check snippet sends ``$host``, which for an
  absolute-form request line (``GET https://admin.test/...`` with ``Host: api.test``) is the
  request line's host, the one the locations send upstream (``proxy_set_header Host $host``);
- Traefik's forwardAuth sends its own address as ``Host`` and the request's in
  ``X-Forwarded-Host``, with ``-Proto``, ``-Method`` and ``-Uri``: the sidecar reads those, so host
  rules match and a DPoP proof for the API's URL passes there (it could not before);
- Envoy's shipped routes take any ``:authority`` (``domains: ["*"]``): a proof captured at another
  server, replayed with that server's name as ``:authority``, is refused (tests/interop/test_dpop_envoy.py).
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import StartStack
from tests.interop.front_doors import DEPLOY, FrontStack, start_front_stack
from tests.interop.https import raw_request, request
from tests.interop.nginx import DEPLOY as NGINX_DIR
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.interop.stack import SidecarProcess, Stack, start_stack
from tests.support.dpop_proof import DpopKey

pytestmark = [pytest.mark.interop, pytest.mark.fronts, pytest.mark.routes]

PATH = "/orders/42"
# A lax policy for one host, the strict default for the rest: what a host rule decides.
HOST_RULES = f"""
[policies.open]
binding = "off"
audiences = ["{OPAQUE_RESOURCE}", "{JWT_RESOURCE}"]

[[routes]]
hosts = ["api.test"]
policy = "open"

[[routes]]
path = "/"
policy = "default"
"""


def idp_calls(sidecar: SidecarProcess) -> float:
    return sidecar.metric("sidecar_idp_requests_total")


def denials(sidecar: SidecarProcess, reason: str) -> float:
    return sidecar.metric("sidecar_decisions_total", outcome="deny", reason=reason)


# ---- nginx ---------------------------------------------------------------------------------------

def test_nginx_refuses_a_host_it_does_not_serve_before_asking_the_idp(stacks: StartStack,
                                                                      oidc: OidcProvider) -> None:
    stack = stacks()  # deploy/nginx/sidecar.toml: routing.origins is nginx's own
    token = oidc.access_token("alice")  # new: only the IdP could say what it is
    calls, before, reached = idp_calls(stack.sidecar), denials(stack.sidecar, "origin_not_allowed"), \
        len(stack.upstream.received)
    reply = stack.call(token, "alice", headers={"Host": f"other.example:{stack.nginx.port}"})
    assert reply.status == 403, (reply.status, reply.body, stack.diagnostics())
    assert denials(stack.sidecar, "origin_not_allowed") == before + 1
    assert idp_calls(stack.sidecar) == calls and len(stack.upstream.received) == reached
    assert stack.call(token, "alice").status == 200, stack.diagnostics()  # its own origin


@pytest.mark.dpop
def test_nginx_refuses_a_dpop_proof_captured_at_another_server_whatever_host_the_client_sends(
        stacks: StartStack, oidc: OidcProvider) -> None:
    """RFC 9449 §4.3 step 9: a token and a proof for https://other.example:<port>/orders/42, sent to
    our nginx with ``Host: other.example:<port>``, matched each other before (htu was built from the
    client's Host); now the host is not ours."""
    stack = stacks(SIDECAR_DPOP__ENABLED="true")
    dave = DpopKey()
    token = oidc.access_token("dave", dpop=dave)
    other = f"other.example:{stack.nginx.port}"
    before, reached = denials(stack.sidecar, "origin_not_allowed"), len(stack.upstream.received)
    reply = stack.call(None, path=PATH, headers={"Host": other, "Authorization": f"DPoP {token}",
                                                 "DPoP": dave.proof("GET", f"https://{other}{PATH}", token)})
    assert reply.status == 403, (reply.status, reply.body, stack.diagnostics())
    assert denials(stack.sidecar, "origin_not_allowed") == before + 1
    assert len(stack.upstream.received) == reached
    ours = stack.call(None, path=PATH, headers={"Authorization": f"DPoP {token}",
                                                "DPoP": dave.proof("GET", stack.nginx.url + PATH, token)})
    assert ours.status == 200, stack.diagnostics()


@pytest.fixture(scope="module")
def host_rules(oidc: OidcProvider, client_files: dict[str, tuple[Path, Path]],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """deploy/nginx (api.conf.template, the shipped snippets) with a host rule; two declared origins."""
    state = tmp_path_factory.mktemp("nginx-hosts")
    config = state / "sidecar.toml"
    config.write_text((NGINX_DIR / "sidecar.toml").read_text() + HOST_RULES)
    started = start_stack(oidc, state, config=config, client_files=client_files,
                          overrides={"SIDECAR_ROUTING__ORIGINS": "https://api.test,https://admin.test"})
    yield started
    started.stop()


def test_nginx_host_rules_read_the_host_the_upstream_receives_for_an_absolute_form_request(
        host_rules: Stack, oidc: OidcProvider) -> None:
    """``GET https://admin.test/orders/42`` with ``Host: api.test``: nginx sends admin.test upstream.
    The check used to carry ``$http_host`` (api.test), so the lax rule for api.test let carol's
    unbound token reach the upstream as a request for admin.test."""
    stack, carol = host_rules, oidc.access_token("carol", scope="read")
    auth = ("Authorization", f"Bearer {carol}")
    plain = raw_request(stack.nginx.url, PATH.encode(), ca_file=oidc.pki.ca_file, headers=[("Host", "api.test"), auth])
    assert plain.status == 200, (plain.status, stack.diagnostics())  # api.test: the open policy
    assert stack.upstream.last.header("host") == "api.test"
    reached, unbound = len(stack.upstream.received), denials(stack.sidecar, "token_unbound")
    absolute = raw_request(stack.nginx.url, b"https://admin.test" + PATH.encode(), ca_file=oidc.pki.ca_file,
                           headers=[("Host", "api.test"), auth])
    assert absolute.status == 401, (absolute.status, stack.diagnostics())  # admin.test: the strict default
    assert denials(stack.sidecar, "token_unbound") == unbound + 1
    assert len(stack.upstream.received) == reached
    before = denials(stack.sidecar, "origin_not_allowed")
    elsewhere = raw_request(stack.nginx.url, b"https://evil.test" + PATH.encode(), ca_file=oidc.pki.ca_file,
                            headers=[("Host", "api.test"), auth])
    assert elsewhere.status == 403 and denials(stack.sidecar, "origin_not_allowed") == before + 1


# ---- Traefik -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def traefik(oidc: OidcProvider, client_files: dict[str, tuple[Path, Path]],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontStack]:
    """deploy/traefik as shipped; its sidecar.toml with the host rule, DPoP on with nonces required,
    and the public origin https://api.test:<Traefik's port>."""
    state = tmp_path_factory.mktemp("traefik-hosts")
    config = state / "sidecar.toml"
    config.write_text((DEPLOY / "traefik" / "sidecar.toml").read_text() + HOST_RULES)
    started = start_front_stack("traefik", oidc, state, client_files=client_files, config=config, overrides={
        "SIDECAR_POLICY__AUDIENCES": f"{OPAQUE_RESOURCE},{JWT_RESOURCE}", "SIDECAR_DPOP__ENABLED": "true",
        "SIDECAR_DPOP__NONCE": "required"})
    started.sidecar.stop()  # Traefik's port is known now: declare it as the deployment would
    started.sidecar.env["SIDECAR_ROUTING__ORIGINS"] = f"https://api.test:{started.front.port}"
    started.sidecar.start()
    yield started
    started.stop()


def through_traefik(stack: FrontStack, host: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    reply = request(stack.front.url + PATH, ca_file=stack.idp.pki.ca_file,
                    headers={"Host": f"{host}:{stack.front.port}", **headers})
    return reply.status, reply.headers


def test_traefik_host_rules_read_x_forwarded_host_not_forwardauths_own_host(traefik: FrontStack,
                                                                           oidc: OidcProvider) -> None:
    """forwardAuth's Host is the sidecar's address: the rule for api.test never matched before, and
    carol's unbound token met the strict default (401)."""
    carol = {"Authorization": f"Bearer {oidc.access_token('carol', scope='read')}"}
    status, _ = through_traefik(traefik, "api.test", carol)
    assert status == 200, traefik.diagnostics()
    assert traefik.upstream.last.header("host") == f"api.test:{traefik.front.port}"
    before, reached = denials(traefik.sidecar, "origin_not_allowed"), len(traefik.upstream.received)
    status, _ = through_traefik(traefik, "other.test", carol)
    assert status == 403 and denials(traefik.sidecar, "origin_not_allowed") == before + 1
    assert len(traefik.upstream.received) == reached


@pytest.mark.dpop
def test_a_dpop_client_gets_its_nonce_from_traefiks_401_and_its_proof_for_the_apis_url_passes(
        traefik: FrontStack, oidc: OidcProvider) -> None:
    """The proof names https://api.test:<port>/orders/42, the URL the client called; the sidecar
    used to build htu from forwardAuth's own Host. Traefik hands the sidecar's 401 to the client
    as it is, DPoP-Nonce included (on a 2xx it copies no header to the client but cookies)."""
    dave = DpopKey()
    token = oidc.access_token("dave", dpop=dave)
    url = f"https://api.test:{traefik.front.port}{PATH}"
    status, answered = through_traefik(traefik, "api.test", {"Authorization": f"DPoP {token}",
                                                             "DPoP": dave.proof("GET", url, token)})
    assert status == 401 and 'error="use_dpop_nonce"' in answered["www-authenticate"], traefik.diagnostics()
    nonce = answered["dpop-nonce"]
    status, _ = through_traefik(traefik, "api.test", {"Authorization": f"DPoP {token}",
                                                      "DPoP": dave.proof("GET", url, token, nonce=nonce)})
    assert status == 200, traefik.diagnostics()
    seen = traefik.upstream.last
    assert seen.header("x-credential-cnf-jkt") == dave.jkt
    assert seen.header("dpop") is None and seen.header("authorization") is None  # for the sidecar only


@pytest.fixture(scope="module")
def edge_host_rules(oidc: OidcProvider, client_files: dict[str, tuple[Path, Path]],
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """deploy/nginx/api-edge-cache.conf.template (nginx's decision cache) with the host rule."""
    state = tmp_path_factory.mktemp("edge-hosts")
    config = state / "sidecar.toml"
    config.write_text((NGINX_DIR / "sidecar-edge-cache.toml").read_text() + HOST_RULES)
    directory = Path(tempfile.mkdtemp(prefix="sidecar-edge-"))
    directory.chmod(0o755)  # nginx's workers (nobody) create the cache directory in it
    started = start_stack(oidc, state, template="api-edge-cache.conf.template", config=config,
                          client_files=client_files,
                          overrides={"SIDECAR_ROUTING__ORIGINS": "https://api.test,https://admin.test",
                                     "SIDECAR_RESPONSE__EDGE_TTL": "5"},
                          values={"EDGE_CACHE_DIR": str(directory / "cache"),
                                  "EDGE_CACHE_SECRET": base64.b64encode(os.urandom(32)).decode()})
    yield started
    started.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_nginx_edge_cache_never_answers_an_absolute_form_request_with_another_hosts_allow(
        edge_host_rules: Stack, oidc: OidcProvider) -> None:
    """The cache key holds the host the check sends ($host): an allow cached for api.test (its lax
    rule) is never the answer to ``GET https://admin.test/...`` with ``Host: api.test``."""
    stack, carol = edge_host_rules, oidc.access_token("carol", scope="read")
    auth = ("Authorization", f"Bearer {carol}")
    for _ in range(2):  # the second from nginx's cache
        plain = raw_request(stack.nginx.url, PATH.encode(), ca_file=oidc.pki.ca_file,
                            headers=[("Host", "api.test"), auth])
        assert plain.status == 200, (plain.status, stack.diagnostics())
    reached = len(stack.upstream.received)
    absolute = raw_request(stack.nginx.url, b"https://admin.test" + PATH.encode(), ca_file=oidc.pki.ca_file,
                           headers=[("Host", "api.test"), auth])
    assert absolute.status == 401, (absolute.status, stack.diagnostics())
    assert len(stack.upstream.received) == reached
