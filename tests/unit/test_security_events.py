"""Security Event Tokens: what an event revokes (core/events.py), how a SET is verified
(idp/security_events.py) with each RFC 8935 §2.4 error, and the cache's index and remembered
revocations (core/cache_index.py, core/revocation.py)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar import config as config_module
from sidecar.config import CacheConfig
from sidecar.core.cache import TokenCache
from sidecar.core.decision import Decider
from sidecar.core.entry import Entry
from sidecar.core.events import SetRefused, revocations
from sidecar.core.outcome import Deny
from sidecar.core.request import CheckRequest
from sidecar.core.revocation import Selector
from sidecar.core.token_info import TokenInfo, token_info_from_claims
from sidecar.idp.jwk_set import VerifyKey
from sidecar.idp.security_events import SetVerifier
from sidecar.support.metrics import Metrics
from tests.support.security_events import CAEP_SESSION_REVOKED, session_revoked, signed_set, token_revoked

pytestmark = pytest.mark.identity

ISS, AUD = "https://idp.example", "https://sidecar.example/events"
KEY = ec.generate_private_key(ec.SECP256R1())


def key_of(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), digest_size=16).digest()


def claims(events: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"iss": ISS, "iat": time.time(), "jti": "j1", "events": events, **more}


@pytest.mark.parametrize(("subject", "expected"), [
    ({"format": "iss_sub", "iss": ISS, "sub": "alice"}, [Selector("sub", "alice", ISS)]),
    ({"format": "opaque", "id": "alice"}, [Selector("sub", "alice", ISS)]),
    ({"format": "email", "email": "a@example.com"}, [Selector("email", "a@example.com", ISS)]),
    ({"subject_type": "oauth_client", "client_id": "app"}, [Selector("client_id", "app", ISS)]),
    ({"format": "aliases", "identifiers": [{"format": "opaque", "id": "a"}, {"format": "email", "email": "a@x.y"}]},
     [Selector("sub", "a", ISS), Selector("email", "a@x.y", ISS)]),
    ({"user": {"format": "opaque", "id": "u1"}, "session": {"format": "opaque", "id": "s"}},
     [Selector("sub", "u1", ISS)]),
    ({"format": "iss_sub", "iss": "https://other", "sub": "alice"}, []),  # another issuer's subject
    ({"format": "phone_number", "phone_number": "+1"}, []),
])
def test_a_session_revoked_event_names_its_subject(subject: dict[str, Any], expected: list[Selector]) -> None:
    selectors, _ = revocations(claims(session_revoked(subject)), time.time(), key_of)
    assert selectors == expected


def test_the_subject_may_be_the_sets_sub_id_claim() -> None:
    event = {CAEP_SESSION_REVOKED: {"event_timestamp": 1}}
    selectors, _ = revocations(claims(event, sub_id={"format": "opaque", "id": "bob"}), time.time(), key_of)
    assert selectors == [Selector("sub", "bob", ISS)]


def test_a_token_revoked_event_names_a_jti_or_the_token_itself() -> None:
    assert revocations(claims(token_revoked(jti="t-1")), time.time(), key_of)[0] == [Selector("jti", "t-1", ISS)]
    selectors, _ = revocations(claims(token_revoked(token="secret-token")), time.time(), key_of)
    assert selectors == [Selector("key", key_of("secret-token").hex(), ISS)]


@pytest.mark.parametrize("events", [
    {CAEP_SESSION_REVOKED: "not an object"},
    {CAEP_SESSION_REVOKED: {"event_timestamp": 1}},  # no subject anywhere
    token_revoked(token_identifier_alg="hash_based", token="x"),
])
def test_an_event_that_does_not_conform_is_invalid_request(events: dict[str, Any]) -> None:
    with pytest.raises(SetRefused) as refused:
        revocations(claims(events), time.time(), key_of)
    assert refused.value.err == "invalid_request"


def test_an_event_type_this_receiver_does_not_act_on_revokes_nothing() -> None:
    assert revocations(claims({"https://example.com/other": {}}), time.time(), key_of)[0] == []


def test_the_time_of_a_revocation_is_never_in_the_future() -> None:
    now = time.time()
    _, at = revocations(claims(session_revoked({"format": "opaque", "id": "a"}), iat=now + 20), now, key_of)
    assert at == now


class Keys:
    def __init__(self, *keys: VerifyKey) -> None:
        self.keys = keys

    async def keys_for(self, kid: str | None) -> Sequence[VerifyKey]:
        return [k for k in self.keys if kid is None or k.kid == kid]


def verifier(clock: float | None = None) -> SetVerifier:
    config = config_module.from_mapping({"idp": {"issuer": ISS, "token_format": "jwt", "jwks_uri": ISS + "/jwks"},
                                         "policy": {"audiences": ["api"]}, "events": {"enabled": True,
                                                                                      "audience": AUD}})
    keys = Keys(VerifyKey("k1", "ES256", KEY.public_key()))
    return SetVerifier(frozenset(config.idp.jwt_algorithms), config.events, lambda iss: keys if iss == ISS else None,
                       clock=(lambda: clock) if clock else time.time)


def a_set(**overrides: Any) -> str:
    fields: dict[str, Any] = {"iss": ISS, "aud": AUD, "events": session_revoked({"format": "opaque", "id": "a"})}
    key, alg, kid = overrides.pop("key", KEY), overrides.pop("alg", "ES256"), overrides.pop("kid", "k1")
    return signed_set(key, alg, kid, **{**fields, **overrides})


async def test_a_set_from_the_issuer_for_this_receiver_verifies() -> None:
    verified = await verifier().verify(a_set())
    assert verified["iss"] == ISS and CAEP_SESSION_REVOKED in verified["events"]


def nested() -> str:
    import base64

    def segment(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()

    return f"{segment('[' * 20000 + ']' * 20000)}.{segment('{}')}.c2ln"


REFUSALS: dict[str, tuple[Any, str]] = {
    "not a JWT": (lambda: "garbage", "invalid_request"),
    "a header nested beyond reason": (nested, "invalid_request"),
    "another typ": (lambda: a_set(typ="JWT"), "invalid_request"),
    "another issuer": (lambda: a_set(iss="https://other.example"), "invalid_issuer"),
    "an unknown kid": (lambda: a_set(kid="k9"), "invalid_key"),
    "an algorithm not accepted": (lambda: a_set(key="a secret of at least thirty-two bytes!", alg="HS256"),
                                  "invalid_key"),
    "a forged signature": (lambda: a_set(key=ec.generate_private_key(ec.SECP256R1())), "authentication_failed"),
    "another audience": (lambda: a_set(aud="https://elsewhere.example"), "invalid_audience"),
    "a stale iat": (lambda: a_set(iat=time.time() - 3600), "invalid_request"),
    "an iat far ahead": (lambda: a_set(iat=time.time() + 600), "invalid_request"),
    "no events": (lambda: a_set(events={}), "invalid_request"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_set_is_refused_with_the_rfc_8935_error(case: str) -> None:
    make, err = REFUSALS[case]
    with pytest.raises(SetRefused) as refused:
        await verifier().verify(make())
    assert refused.value.err == err


def info(**claims: Any) -> TokenInfo:
    return token_info_from_claims({"active": True, "token_type": "Bearer", "exp": 4_000_000_000, **claims},
                                  ("email",))


def entry(token_info: TokenInfo) -> Entry:
    return Entry(info=token_info, headers=None, denial=None, scope_denial=None, token_hash="h")  # type: ignore[arg-type]


async def fill(cache: TokenCache, token: str, token_info: TokenInfo) -> bytes:
    key = cache.key(token)

    async def load() -> Entry:
        return entry(token_info)

    await cache.get_or_load(key, load)
    return key


async def test_a_revocation_purges_exactly_the_answers_it_names_through_the_index() -> None:
    cache = TokenCache(CacheConfig())
    alice = [await fill(cache, f"a{i}", info(sub="alice", iss=ISS, client_id="web", jti=f"ja{i}")) for i in range(3)]
    bob = await fill(cache, "b", info(sub="bob", iss=ISS, client_id="web", username="bob@example.com", jti="jb"))
    other_issuer = await fill(cache, "c", info(sub="alice", iss="https://other", client_id="cli"))
    assert cache.revoke(Selector("sub", "alice", ISS), time.time()) == 3
    assert [cache.get(k) for k in alice] == [None] * 3
    assert cache.get(bob) is not None and cache.get(other_issuer) is not None
    assert cache.revoke(Selector("email", "bob@example.com"), time.time()) == 1 and cache.get(bob) is None
    assert cache.revoke(Selector("client_id", "cli"), time.time()) == 1 and cache.get(other_issuer) is None


async def test_without_the_index_a_revocation_still_finds_its_answers_by_a_scan() -> None:
    cache = TokenCache(CacheConfig(), index=False)
    alice = await fill(cache, "a", info(sub="alice", client_id="web"))
    bob = await fill(cache, "b", info(sub="bob", client_id="web"))
    assert cache.revoke(Selector("sub", "alice"), time.time()) == 1
    assert cache.get(alice) is None and cache.get(bob) is not None


def test_the_index_is_kept_only_where_revocations_can_arrive() -> None:
    plain = Decider(config_module.from_mapping({}), Verifier(), Metrics())
    purging = Decider(config_module.from_mapping({"server": {"admin_secret": "x" * 16}}), Verifier(), Metrics())
    assert plain.cache._index is None and purging.cache._index is not None


async def test_the_index_stays_bounded_by_the_cache_size() -> None:
    cache = TokenCache(CacheConfig(max_entries=100))
    for i in range(2000):
        await fill(cache, f"t{i}", info(sub=f"s{i}", client_id="c", jti=f"j{i}"))
    assert cache._index is not None and len(cache._index) <= 2 * 100 + 1024
    assert cache.revoke(Selector("sub", "s1999"), time.time()) == 1


def test_a_remembered_revocation_refuses_tokens_issued_until_then_but_not_after() -> None:
    cache = TokenCache(CacheConfig())
    now = time.time()
    cache.revoke(Selector("sub", "alice"), now)
    key = cache.key("x")
    assert cache.revoked(key, info(sub="alice", iat=int(now) - 5))
    assert cache.revoked(key, info(sub="alice"))  # no iat: counted as issued before
    assert not cache.revoked(key, info(sub="alice", iat=int(now) + 5))
    assert not cache.revoked(key, info(sub="bob", iat=int(now) - 5))
    cache.revoke(Selector("jti", "j1"), now - 100)
    assert cache.revoked(key, info(sub="carol", jti="j1", iat=int(now)))  # a jti whatever its iat


@pytest.mark.parametrize("subject", [
    {"format": "opaque", "id": "alice"},
    {"format": "email", "email": "alice@example.com"},
    {"format": "oauth_client", "client_id": "web"},
    {"format": "iss_sub", "iss": "https://other", "sub": "alice"},
])
async def test_a_set_revokes_only_the_tokens_its_own_issuer_issued(subject: dict[str, Any]) -> None:
    """Subject identifiers are per issuer: issuer A's SET never purges issuer B's answers."""
    cache = TokenCache(CacheConfig())
    mine = await fill(cache, "a", info(sub="alice", iss=ISS, client_id="web", username="alice@example.com"))
    theirs = await fill(cache, "b", info(sub="alice", iss="https://other", client_id="web",
                                         username="alice@example.com", iat=int(time.time()) - 5))
    selectors, at = revocations(claims(session_revoked(subject)), time.time(), key_of)
    for selector in selectors:
        cache.revoke(selector, at)
    assert cache.get(theirs) is not None
    assert not cache.revoked(cache.key("b2"), info(sub="alice", iss="https://other", client_id="web",
                                                   username="alice@example.com", iat=int(time.time()) - 5))
    if subject.get("iss") is None:
        assert cache.get(mine) is None


async def test_a_token_revoked_by_another_issuers_set_stays() -> None:
    cache = TokenCache(CacheConfig())
    theirs = await fill(cache, "b", info(sub="bob", iss="https://other", jti="t-1"))
    for events in (token_revoked(jti="t-1"), token_revoked(token="b")):
        for selector in revocations(claims(events), time.time(), cache.key)[0]:
            cache.revoke(selector, time.time())
    assert cache.get(theirs) is not None and not cache.revoked(theirs, info(sub="bob", iss="https://other", jti="t-1"))


def test_revocations_of_one_subject_by_two_issuers_are_both_remembered() -> None:
    cache = TokenCache(CacheConfig())
    now = time.time()
    cache.revoke(Selector("sub", "alice", ISS), now)
    cache.revoke(Selector("sub", "alice", "https://other"), now)
    key = cache.key("x")
    assert cache.revoked(key, info(sub="alice", iss=ISS, iat=int(now) - 5))
    assert cache.revoked(key, info(sub="alice", iss="https://other", iat=int(now) - 5))
    assert not cache.revoked(key, info(sub="alice", iss="https://third", iat=int(now) - 5))


class Verifier:
    def __init__(self, **claims: object) -> None:
        self.claims = {"active": True, "client_id": "alice", "sub": "alice", "token_type": "Bearer",
                       "exp": 4_000_000_000, "iat": int(time.time()) - 10, **claims}

    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        return token_info_from_claims(json.loads(json.dumps(self.claims)))


async def test_after_a_revocation_the_idps_active_answer_is_refused_until_it_is_forgotten() -> None:
    d = Decider(config_module.from_mapping({"policy": {"binding": "off"}}), Verifier(), Metrics())
    request = CheckRequest(["Bearer tok"], [], "127.0.0.1")
    assert isinstance(await d.decide(request), Entry)
    assert d.cache.revoke(Selector("sub", "alice"), time.time()) == 1
    denied = await d.decide(request)  # the IdP (or a local JWT) still says active
    assert isinstance(denied, Deny) and denied.denial.reason == "token_inactive"
