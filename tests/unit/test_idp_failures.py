"""The IdP failure vocabulary: what each kind means, and how one fetch helper maps every way an
IdP answer can go wrong to a kind (the fake IdP over real mutual TLS on 127.0.0.1)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import IdpConfig
from sidecar.dev.fakeidp import FakeIdp, Fault
from sidecar.idp.failures import IdpError, IdpFailure
from sidecar.idp.fetch import decode_json, encode_form, fetch_json, post_form
from sidecar.idp.http1 import FormPoster
from sidecar.idp.tls import client_context, client_session
from tests.support.pki_fixtures import TestPki


def test_only_failures_where_the_idp_did_no_work_are_retryable() -> None:
    assert {k for k in IdpFailure if k.retryable} == {
        IdpFailure.REFUSED, IdpFailure.CONNECT_TIMEOUT, IdpFailure.DISCONNECTED}


@pytest.mark.parametrize("kind", [IdpFailure.SATURATED, IdpFailure.BREAKER_OPEN])
def test_our_own_limits_are_not_idp_failures(kind: IdpFailure) -> None:
    assert not kind.is_idp_failure


def test_an_answer_about_one_request_is_not_an_idp_failure_and_an_unusable_answer_is() -> None:
    assert not IdpFailure.HTTP_4XX.is_idp_failure and not IdpFailure.HTTP_4XX.allows_stale
    failing = {IdpFailure.HTTP_429, IdpFailure.HTTP_5XX, IdpFailure.HTTP_503, IdpFailure.HTTP_OTHER,
               IdpFailure.TIMEOUT, IdpFailure.REFUSED, IdpFailure.GARBAGE, IdpFailure.MALFORMED,
               IdpFailure.CONTENT_TYPE, IdpFailure.TOO_LARGE, IdpFailure.TLS_UNTRUSTED, IdpFailure.DISCOVERY_FAILED}
    assert all(kind.is_idp_failure for kind in failing)


def test_a_missing_endpoint_is_configuration_not_an_idp_failure() -> None:
    assert not IdpFailure.NO_ENDPOINT.is_idp_failure and not IdpFailure.NO_JWKS_URI.is_idp_failure


def test_an_idp_failure_or_the_breaker_it_opened_allows_stale_and_a_full_queue_does_not() -> None:
    assert IdpFailure.BREAKER_OPEN.allows_stale and IdpFailure.TIMEOUT.allows_stale
    assert not IdpFailure.SATURATED.allows_stale


@pytest.mark.parametrize(("status", "kind"), [(400, IdpFailure.HTTP_4XX), (404, IdpFailure.HTTP_4XX),
                                              (429, IdpFailure.HTTP_429), (500, IdpFailure.HTTP_5XX),
                                              (502, IdpFailure.HTTP_5XX), (503, IdpFailure.HTTP_503),
                                              (204, IdpFailure.HTTP_OTHER), (307, IdpFailure.HTTP_OTHER)])
def test_each_http_status_has_one_kind(status: int, kind: IdpFailure) -> None:
    assert IdpFailure.of_status(status) is kind


def test_the_result_label_of_an_http_failure_names_the_status_and_the_denial_stays_a_503() -> None:
    exc = IdpError(IdpFailure.HTTP_5XX, "introspection answer: HTTP 502", status=502)
    assert (exc.kind, exc.idp_status, exc.result) == (IdpFailure.HTTP_5XX, 502, "http_502")
    assert (exc.status, exc.reason, exc.detail) == (503, "idp_unavailable", "http_502: introspection answer: HTTP 502")
    assert IdpError(IdpFailure.TIMEOUT).result == "timeout"


@pytest.fixture
async def session(pki: TestPki) -> AsyncIterator[aiohttp.ClientSession]:
    """aiohttp: the GETs (discovery, the JWK Set)."""
    async with client_session(client_context(CONFIG(pki)), CONFIG(pki)) as opened:
        yield opened


@pytest.fixture
async def poster(pki: TestPki) -> AsyncIterator[FormPoster]:
    """The lean client: the introspection POST (sidecar/idp/http1.py)."""
    opened = FormPoster(client_context(CONFIG(pki)), limit=4, user_agent="test")
    yield opened
    await opened.close()


def CONFIG(pki: TestPki) -> IdpConfig:
    return IdpConfig(cert_file=str(pki.sidecar_files[0]), key_file=str(pki.sidecar_files[1]),
                     ca_file=str(pki.ca_file), timeout=2.0, connect_timeout=0.5)


async def post(poster: FormPoster, idp: FakeIdp, budget: float = 2.0) -> object:
    _, body = await post_form(poster, f"{idp.issuer}/introspect", what="introspection answer",
                              form={"token": "t", "client_id": "sidecar"}, max_bytes=1024,
                              headers={"Accept": "application/json"}, timeout=budget, connect_timeout=0.5)
    return decode_json(body, "introspection answer")


async def failure_of(poster: FormPoster, idp: FakeIdp, budget: float = 2.0) -> IdpError:
    with pytest.raises(IdpError) as raised:
        await post(poster, idp, budget)
    return raised.value


async def test_a_json_answer_is_decoded(poster: FormPoster, idp: FakeIdp) -> None:
    assert await post(poster, idp) == {"active": False}


@pytest.mark.parametrize("status", [400, 401, 404, 500, 502, 503, 204])
async def test_a_status_other_than_200_is_its_kind_with_the_status_kept(
    poster: FormPoster, idp: FakeIdp, status: int
) -> None:
    idp.fault = Fault(status=status, body=b"")
    exc = await failure_of(poster, idp)
    assert (exc.kind, exc.idp_status, exc.result) == (IdpFailure.of_status(status), status, f"http_{status}")


async def test_a_429_carries_the_idps_retry_after(poster: FormPoster, idp: FakeIdp) -> None:
    idp.fault = Fault(status=429, headers={"Retry-After": "7"})
    exc = await failure_of(poster, idp)
    assert exc.kind is IdpFailure.HTTP_429 and exc.retry_after == 7


async def test_a_redirected_post_is_not_followed_so_the_token_goes_nowhere_else(
    poster: FormPoster, idp: FakeIdp
) -> None:
    idp.fault = Fault(status=307, headers={"Location": "/introspect"})
    exc = await failure_of(poster, idp)
    assert (exc.kind, exc.idp_status) == (IdpFailure.HTTP_OTHER, 307)
    assert idp.introspect_requests == 1


@pytest.mark.parametrize(("fault", "kind"), [
    (Fault(body=b'{"active": false}', content_type="text/html"), IdpFailure.CONTENT_TYPE),
    (Fault(body=b'{"pad": "' + b"x" * 2000 + b'"}'), IdpFailure.TOO_LARGE),
    (Fault(body=b"x" * 5000, chunked=True), IdpFailure.TOO_LARGE),
    (Fault(body=b"{not json"), IdpFailure.GARBAGE),
    (Fault(body=b"[" * 1000), IdpFailure.GARBAGE),  # over the 1024-byte bound would be too_large
    (Fault(body=b"\xff\xfe\x00garbage"), IdpFailure.GARBAGE),
    (Fault(drop=True), IdpFailure.DISCONNECTED),
], ids=["content type", "too large", "too large chunked", "not JSON", "nested", "not UTF", "dropped"])
async def test_an_answer_that_is_not_a_bounded_json_document_is_its_kind(
    poster: FormPoster, idp: FakeIdp, fault: Fault, kind: IdpFailure
) -> None:
    idp.fault = fault
    assert (await failure_of(poster, idp)).kind is kind


async def test_a_deeply_nested_answer_is_garbage_not_a_crash(session: aiohttp.ClientSession, idp: FakeIdp) -> None:
    idp.fault = Fault(body=b"[" * 100_000)
    with pytest.raises(IdpError) as raised:
        await fetch_json(session, "POST", f"{idp.issuer}/introspect", what="answer", max_bytes=256 * 1024,
                         headers={})
    assert raised.value.kind is IdpFailure.GARBAGE


async def test_an_answer_later_than_the_budget_is_a_timeout(poster: FormPoster, idp: FakeIdp) -> None:
    idp.fault = Fault(delay=1.0)
    assert (await failure_of(poster, idp, budget=0.2)).kind is IdpFailure.TIMEOUT


async def test_a_closed_port_is_refused(session: aiohttp.ClientSession, idp: FakeIdp) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(IdpError) as raised:
        await fetch_json(session, "GET", f"https://127.0.0.1:{port}/jwks", what="JWK Set", max_bytes=1024,
                         headers={})
    assert raised.value.kind is IdpFailure.REFUSED


async def test_a_get_of_the_jwk_set_uses_the_same_session_and_vocabulary(
    session: aiohttp.ClientSession, idp: FakeIdp
) -> None:
    document = await fetch_json(session, "GET", f"{idp.issuer}/jwks", what="JWK Set", max_bytes=64 * 1024,
                                headers={})
    assert isinstance(document, dict) and "keys" in document
    idp.jwks_fault = Fault(status=503)
    with pytest.raises(IdpError) as raised:
        await fetch_json(session, "GET", f"{idp.issuer}/jwks", what="JWK Set", max_bytes=64 * 1024, headers={})
    assert (raised.value.kind, raised.value.idp_status) == (IdpFailure.HTTP_503, 503)


_TEXT = st.text(st.sampled_from("aZ09-._~+/= &%:é\n") | st.characters(blacklist_categories=("Cs",)))


@given(st.dictionaries(_TEXT, _TEXT, max_size=6))
def test_the_introspection_form_is_encoded_exactly_as_urlencode_encodes_it(form: dict[str, str]) -> None:
    assert encode_form(form) == urlencode(form).encode("ascii")


def test_a_token_and_a_secret_with_reserved_characters_are_quoted() -> None:
    form = {"client_id": "sidecar", "token": "a+b/c==", "client_secret": "p&s=w rd", "x": "é", "y": "a+b"}
    assert encode_form(form) == b"client_id=sidecar&token=a%2Bb%2Fc%3D%3D&client_secret=p%26s%3Dw+rd&x=%C3%A9&y=a%2Bb"
