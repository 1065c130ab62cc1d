"""Several issuers in one sidecar, behind one real nginx: two real OpenID providers (oidc-provider),
each with its own signing keys, its own CA and the sidecar's own client certificate at each.

- ``[idp]`` (default) is IdP A (the test PKI); ``[issuers.partner]`` is IdP B, a second PKI: its
  CA verifies B's server certificate, and the sidecar authenticates to B with a certificate
  B's CA issued (B ends the handshake on any other: ``reject_unauthorized``).
- Policies (deploy/nginx/routes.conf.template names them per location): ``/`` the default
  ``[policy]`` accepts A only; ``/orders`` (orders_read) B only; ``/health`` A then B;
  ``/admin`` B then A.

Tokens of each IdP, opaque and JWT, are accepted under the policies that name it and refused
under those that do not; a JWT signed by B's key that claims A's ``iss`` is refused; with B down,
A's tokens still work and no token is ever taken as inactive because B could not say.
``check-config --online`` is run against the real IdPs for each cause it reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.interop.stack import ROOT, SidecarProcess, Stack, start_stack
from tests.support.pki_fixtures import TestPki, make_pki
from tests.support.ports import free_port

pytestmark = [pytest.mark.interop, pytest.mark.issuers]


def sidecar_toml(a: OidcProvider, b: OidcProvider, *, partner: dict[str, str] | None = None) -> str:
    """[idp] is A (its values come from SidecarProcess's environment), [issuers.partner] is B."""
    pb = b.pki
    values = {"issuer": b.issuer, "client_id": "sidecar", "auth_method": "tls_client_auth",
              "cert_file": str(pb.sidecar_files[0]), "key_file": str(pb.sidecar_files[1]), "ca_file": str(pb.ca_file),
              "timeout": 1.5, "breaker_failures": 2, "breaker_open": 1.0, **(partner or {})}
    audiences = json.dumps([OPAQUE_RESOURCE, JWT_RESOURCE])
    lines = [
        '[server]', 'invalid_request_status = 401',
        '[idp]', 'client_id = "sidecar"', 'auth_method = "tls_client_auth"', 'timeout = 1.5',
        '[issuers.partner]', *(f"{k} = {json.dumps(v)}" for k, v in values.items()),
        '[cache]', 'negative_ttl = 30',
        '[policy]', 'issuers = ["default"]', f'audiences = {audiences}',
        '[policies.orders_read]', 'issuers = ["partner"]', f'audiences = {audiences}',
        '[policies.health]', 'issuers = ["default", "partner"]', f'audiences = {audiences}',
        '[policies.admin]', 'issuers = ["partner", "default"]', f'audiences = {audiences}',
        '[client_cert]', 'header = "x-client-cert"', 'format = "escaped_pem"',
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def pki_b(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("pki-b"))


@pytest.fixture(scope="module")
def idps(pki: TestPki, pki_b: TestPki, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[OidcProvider, OidcProvider]]:
    a = OidcProvider(pki, tmp_path_factory.mktemp("idp-a"))
    b = OidcProvider(pki_b, tmp_path_factory.mktemp("idp-b"), reject_unauthorized=True)
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def stack(idps: tuple[OidcProvider, OidcProvider], pki: TestPki, pki_b: TestPki,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    a, b = idps
    state = tmp_path_factory.mktemp("issuers")
    config = state / "sidecar.toml"
    config.write_text(sidecar_toml(a, b))
    started = start_stack(a, state, template="routes.conf.template", config=config,
                          client_files={"alice": pki.alice_files, "alice_b": pki_b.alice_files})
    yield started
    started.stop()


def through(stack: Stack, token: str, cert: str, path: str, policy: str) -> tuple[int, str | None]:
    """The status nginx answers and the reason the sidecar counted under ``policy`` (None: allowed)."""
    before = _decisions(stack, policy)
    answer = stack.call(token, cert, path=path)
    after = _decisions(stack, policy)
    changed = [reason for reason, count in after.items() if count > before.get(reason, 0)]
    assert len(changed) == 1, (changed, answer.status, stack.diagnostics())
    return answer.status, None if changed[0] == "ok" else changed[0]


def _decisions(stack: Stack, policy: str) -> dict[str, float]:
    text = stack.sidecar.admin("/metrics").body.decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sidecar_decisions_total{") and f'policy="{policy}"' in line:
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = found.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def test_an_opaque_token_of_the_default_idp_is_accepted_only_where_a_policy_names_it(
        stack: Stack, idps: tuple[OidcProvider, OidcProvider]) -> None:
    a, _ = idps
    token = a.access_token("alice", scope="read")
    assert through(stack, token, "alice", "/orders/1", "orders_read") == (401, "token_inactive")  # B: unknown
    assert through(stack, token, "alice", "/reports", "default") == (200, None)
    assert stack.upstream.last.header("x-credential-iss") == a.issuer
    assert through(stack, token, "alice", "/orders/1", "orders_read") == (401, "issuer_not_allowed")
    assert through(stack, token, "alice", "/health", "health") == (200, None)
    assert through(stack, token, "alice", "/admin/x", "admin") == (200, None)  # B first, then A knows it


def test_an_opaque_token_of_the_partner_idp_is_accepted_only_where_a_policy_names_it(
        stack: Stack, idps: tuple[OidcProvider, OidcProvider]) -> None:
    _, b = idps
    token = b.access_token("alice", scope="read")
    assert through(stack, token, "alice_b", "/orders/1", "orders_read") == (200, None)
    assert through(stack, token, "alice_b", "/reports", "default") == (401, "issuer_not_allowed")
    assert through(stack, token, "alice_b", "/health", "health") == (200, None)  # A does not know it, B does


def test_a_partner_token_first_seen_under_a_policy_of_the_default_idp_is_still_accepted_where_named(
        stack: Stack, idps: tuple[OidcProvider, OidcProvider]) -> None:
    _, b = idps
    token = b.access_token("alice", scope="read")
    assert through(stack, token, "alice_b", "/reports", "default") == (401, "token_inactive")  # A alone: unknown
    assert through(stack, token, "alice_b", "/health", "health") == (200, None)  # the inactive answer was A's


def test_jwt_access_tokens_go_to_the_issuer_their_iss_names(
        stack: Stack, idps: tuple[OidcProvider, OidcProvider]) -> None:
    a, b = idps
    jwt_a = a.access_token("alice", scope="read", resource=JWT_RESOURCE)
    jwt_b = b.access_token("alice", scope="read", resource=JWT_RESOURCE)
    assert through(stack, jwt_a, "alice", "/reports", "default") == (200, None)
    assert through(stack, jwt_a, "alice", "/orders/1", "orders_read") == (401, "issuer_not_allowed")
    assert through(stack, jwt_b, "alice_b", "/orders/1", "orders_read") == (200, None)
    assert through(stack, jwt_b, "alice_b", "/reports", "default") == (401, "issuer_not_allowed")
    assert through(stack, jwt_b, "alice_b", "/health", "health") == (200, None)


def test_a_jwt_signed_by_the_partners_key_that_claims_the_default_issuer_is_refused(
        stack: Stack, idps: tuple[OidcProvider, OidcProvider]) -> None:
    a, b = idps
    genuine = b.access_token("alice", scope="read", resource=JWT_RESOURCE)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    header = jwt.get_unverified_header(genuine)
    forged = jwt.encode({**claims, "iss": a.issuer}, _private_key(b, header["kid"]), algorithm=header["alg"],
                        headers={"typ": header["typ"], "kid": header["kid"]})
    status, reason = through(stack, forged, "alice_b", "/reports", "default")
    assert status == 401 and reason in ("jwt_unknown_key", "jwt_invalid_signature")


def test_a_token_bound_to_a_partner_client_needs_that_clients_certificate(
        stack: Stack, idps: tuple[OidcProvider, OidcProvider]) -> None:
    _, b = idps
    token = b.access_token("alice", scope="read")
    assert through(stack, token, "alice", "/orders/1", "orders_read") == (401, "cnf_mismatch")  # A's alice


def test_each_issuer_has_its_own_breaker_and_metrics_label(stack: Stack) -> None:
    page = stack.sidecar.admin("/metrics").body.decode()
    assert 'sidecar_idp_breaker_state{issuer="default"} 0.0' in page
    assert 'sidecar_idp_breaker_state{issuer="partner"} 0.0' in page


def test_with_the_partner_idp_down_the_default_idps_tokens_still_work_and_nothing_is_taken_as_inactive(
        stack: Stack, idps: tuple[OidcProvider, OidcProvider]) -> None:
    a, b = idps
    partner_token = b.access_token("alice", scope="read")  # minted before the outage, never seen by the sidecar
    b.stop()
    try:
        for _ in range(3):
            token = a.access_token("alice", scope="read")
            assert through(stack, token, "alice", "/reports", "default") == (200, None)
            assert through(stack, token, "alice", "/health", "health") == (200, None)  # A first: B not needed
            assert through(stack, a.access_token("alice", scope="read", resource=JWT_RESOURCE), "alice",
                           "/reports", "default") == (200, None)
        # A does not know it and B cannot say: 503 (nginx 500), never "inactive".
        status, reason = through(stack, partner_token, "alice_b", "/health", "health")
        assert (status, reason) == (500, "idp_unavailable")
        assert stack.sidecar.admin("/readyz").status == 200  # the default IdP serves
    finally:
        b.start()
    deadline = time.monotonic() + 10
    while through(stack, partner_token, "alice_b", "/orders/1", "orders_read")[0] != 200:  # the breaker closes
        assert time.monotonic() < deadline, stack.diagnostics()
        time.sleep(0.5)


def test_readyz_says_when_the_partner_idp_refuses_our_client(
        idps: tuple[OidcProvider, OidcProvider], tmp_path: Path) -> None:
    a, b = idps
    config = tmp_path / "sidecar.toml"
    config.write_text(sidecar_toml(a, b, partner={"client_id": "nobody"}))
    sidecar = SidecarProcess(a, tmp_path, {}, config)
    sidecar.start()  # ready: nothing has been refused yet
    try:
        token = b.access_token("alice", scope="read")
        answer = sidecar.check({"Authorization": f"Bearer {token}", "X-Sidecar-Policy": "orders_read"})
        assert answer.status == 503
        ready = sidecar.admin("/readyz")
        assert ready.status == 503 and ready.json()["reason"] == "partner:client_rejected", sidecar.logs()
    finally:
        sidecar.stop()


def _private_key(idp: OidcProvider, kid: str) -> object:
    for jwk in json.loads((idp.state_dir / "jwks.json").read_text())["keys"]:
        if jwk["kid"] == kid:
            return jwt.PyJWK(jwk).key
    raise AssertionError(f"no key {kid}")


# ---- check-config --online against the real IdPs ----

def check_online(a: OidcProvider, b: OidcProvider, tmp_path: Path, **partner: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "sidecar.toml"
    config.write_text(sidecar_toml(a, b, partner=partner))
    pa = a.pki
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_IDP__ISSUER": a.issuer, "SIDECAR_IDP__CA_FILE": str(pa.ca_file),
           "SIDECAR_IDP__CERT_FILE": str(pa.sidecar_files[0]), "SIDECAR_IDP__KEY_FILE": str(pa.sidecar_files[1]),
           "SIDECAR_POLICY__AUDIENCES": OPAQUE_RESOURCE}
    return subprocess.run([sys.executable, "-m", "sidecar", "check-config", "--online", "--config", str(config)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_check_config_online_passes_when_every_issuer_answers(
        idps: tuple[OidcProvider, OidcProvider], tmp_path: Path) -> None:
    done = check_online(*idps, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "online: every issuer answered (default, partner)" in done.stdout


def _cases(a: OidcProvider, b: OidcProvider) -> dict[str, tuple[dict[str, str], str]]:
    """(partner overrides, the one line check-config must print)."""
    pa = a.pki
    closed = f"https://127.0.0.1:{free_port()}"
    return {
        "unreachable": ({"issuer": closed}, "issuers.partner.issuer: unreachable"),
        "tls trust": ({"ca_file": str(pa.ca_file)}, "issuers.partner.ca_file: TLS trust"),
        "client certificate rejected": ({"cert_file": str(pa.sidecar_files[0]), "key_file": str(pa.sidecar_files[1])},
                                        "issuers.partner.cert_file: client certificate rejected"),
        "client_id unknown": ({"client_id": "nobody"}, "issuers.partner.client_id: client authentication refused"),
        "wrong issuer": ({"issuer": b.issuer.replace("127.0.0.1", "localhost")},
                         "issuers.partner.issuer: wrong issuer in discovery"),
        "trailing slash": ({"issuer": b.issuer + "/"}, "issuers.partner.issuer: trailing slash"),
    }


@pytest.mark.parametrize("case", ["unreachable", "tls trust", "client certificate rejected", "client_id unknown",
                                  "wrong issuer", "trailing slash"])
def test_check_config_online_names_the_key_and_the_cause_of_each_failure(
        idps: tuple[OidcProvider, OidcProvider], tmp_path: Path, case: str) -> None:
    partner, expected = _cases(*idps)[case]
    done = check_online(*idps, tmp_path, **partner)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"sidecar: online check failed: {expected}" in done.stderr, done.stderr
    assert "idp." not in done.stderr.replace("issuers.partner.", "")  # the default issuer passed
