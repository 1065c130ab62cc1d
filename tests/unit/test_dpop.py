"""RFC 9449 §4.3 proof checks, one by one, and the DPoP binding step of the decision (§7.1-7.2)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest

from sidecar import config as config_module
from sidecar.config import DpopConfig
from sidecar.core.decision import Decider
from sidecar.core.dpop import ProofVerifier, access_token_hash
from sidecar.core.entry import Entry
from sidecar.core.errors import InvalidDpopProof, InvalidToken, MissingToken, RateLimited
from sidecar.core.errors import ReplayStoreFull as ReplayFull
from sidecar.core.headers import HeaderBuilder
from sidecar.core.htu import normalize
from sidecar.core.outcome import Deny, Pending, ReplayClaim
from sidecar.core.replay import LocalReplayStore
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo, token_info_from_claims
from sidecar.fronts.render import render_denial
from sidecar.support.jose import jwk_thumbprint
from sidecar.support.metrics import Metrics
from tests.support.dpop_proof import DpopKey, b64url, hmac_signed, unsigned

pytestmark = pytest.mark.dpop

URL = "https://api.example:8443/orders"
TOKEN = "opaque-token-1"


def verifier(**changes: Any) -> ProofVerifier:
    config = DpopConfig(enabled=True, **changes)
    return ProofVerifier(config, LocalReplayStore(config.replay_max_entries))


def check(v: ProofVerifier, key: DpopKey, proofs: list[str], *, method: str | None = "GET",
          uri: str | None = URL + "?page=2", token: str = TOKEN) -> None:
    v.verify(proofs, jkt=key.jkt, ath=access_token_hash(token), method=method, uri=uri)


def reason_of(v: ProofVerifier, key: DpopKey, proofs: list[str], **kwargs: Any) -> str:
    with pytest.raises(InvalidDpopProof) as caught:
        check(v, key, proofs, **kwargs)
    assert caught.value.status == 401 and caught.value.error == "invalid_dpop_proof"
    return caught.value.reason


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256", "RS256"])
def test_a_fresh_proof_of_the_bound_key_passes_with_each_algorithm(alg: str) -> None:
    key = DpopKey(alg)
    check(verifier(), key, [key.proof("GET", URL, TOKEN)])


def test_the_thumbprint_is_the_rfc_7638_example() -> None:
    # RFC 7638 §3.1: the example RSA key and its thumbprint.
    n = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
         "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdA"
         "ZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
         "kEgU8awapJzKnqDKgw")
    assert jwk_thumbprint({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}) == \
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_a_proof_is_refused_without_a_dpop_header_or_with_two() -> None:
    key, v = DpopKey(), verifier()
    assert reason_of(v, key, []) == "dpop_proof_missing"
    two = [key.proof("GET", URL, TOKEN), key.proof("GET", URL, TOKEN)]
    assert reason_of(v, key, two) == "dpop_proof_duplicated"


def test_an_oversized_proof_is_refused_before_it_is_parsed() -> None:
    key, v = DpopKey(), verifier(max_proof_size=1024)
    big = key.proof("GET", URL, TOKEN, header={"pad": "x" * 2000})
    assert reason_of(v, key, [big]) == "dpop_proof_too_large"
    assert reason_of(v, key, ["." * 5000]) == "dpop_proof_too_large"


@pytest.mark.parametrize("proof", ["", "a.b", "a.b.c.d", "é.b.c", "!!.b.c", "e30.e30.", "W10.e30.AA"])
def test_malformed_proofs_are_refused_as_malformed(proof: str) -> None:
    key = DpopKey()
    assert reason_of(verifier(), key, [proof]) in ("dpop_proof_malformed", "dpop_wrong_type")


def test_the_type_must_be_dpop_jwt() -> None:
    key = DpopKey()
    for typ in ("JWT", "at+jwt", "DPOP+JWT", "application/dpop+jwt"):
        assert reason_of(verifier(), key, [key.proof("GET", URL, TOKEN, typ=typ)]) == "dpop_wrong_type"


def test_alg_none_and_hmac_are_never_accepted() -> None:
    key, v = DpopKey(), verifier()
    assert reason_of(v, key, [unsigned("GET", URL, TOKEN, key.jwk)]) == "dpop_algorithm_not_allowed"
    hmac_proof = hmac_signed("GET", URL, TOKEN, key.jwk, b"s" * 32)
    assert reason_of(v, key, [hmac_proof]) == "dpop_algorithm_not_allowed"
    oct_key = {"kty": "oct", "k": b64url(b"s" * 32)}
    assert reason_of(v, key, [hmac_signed("GET", URL, TOKEN, oct_key, b"s" * 32)]) == "dpop_algorithm_not_allowed"


def test_an_algorithm_left_out_of_the_configuration_is_refused() -> None:
    key = DpopKey("RS256")
    assert reason_of(verifier(algorithms=("ES256",)), key, [key.proof("GET", URL, TOKEN)]) == \
        "dpop_algorithm_not_allowed"


def test_a_private_key_in_the_header_is_refused_even_when_everything_else_holds() -> None:
    key = DpopKey()
    proof = key.proof("GET", URL, TOKEN, jwk=key.private_jwk)
    assert reason_of(verifier(), key, [proof]) == "dpop_bad_key"


@pytest.mark.parametrize("jwk", [None, "key", {"kty": "EC"}, {"kty": "oct", "k": "AAAA"},
                                 {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}])
def test_a_missing_or_unusable_jwk_is_refused(jwk: object) -> None:
    key = DpopKey()
    header = {"jwk": jwk} if jwk is not None else {}
    proof = key.proof("GET", URL, TOKEN, header=header)
    if jwk is None:  # no jwk at all
        head = json.loads(base64.urlsafe_b64decode(proof.split(".")[0] + "=="))
        head.pop("jwk")
        proof = b64url(json.dumps(head).encode()) + "." + proof.split(".", 1)[1]
    assert reason_of(verifier(), key, [proof]) == "dpop_bad_key"


def test_a_key_that_does_not_fit_alg_is_refused() -> None:
    es, ed = DpopKey("ES256"), DpopKey("EdDSA")
    proof = es.proof("GET", URL, TOKEN, jwk=ed.jwk)  # an Ed25519 key named by an ES256 proof
    assert reason_of(verifier(), ed, [proof]) == "dpop_bad_key"


def test_a_crit_header_is_refused() -> None:
    key = DpopKey()
    assert reason_of(verifier(), key, [key.proof("GET", URL, TOKEN, header={"crit": ["exp"]})]) == \
        "dpop_proof_malformed"


def test_a_proof_signed_by_another_key_than_the_tokens_is_refused_before_its_signature_is_checked() -> None:
    bound, other = DpopKey(), DpopKey()
    assert reason_of(verifier(), bound, [other.proof("GET", URL, TOKEN)]) == "dpop_key_mismatch"


def test_a_proof_whose_jwk_names_the_bound_key_but_is_signed_by_another_fails_the_signature() -> None:
    bound, other = DpopKey(), DpopKey()
    forged = other.proof("GET", URL, TOKEN, jwk=bound.jwk)
    assert reason_of(verifier(), bound, [forged]) == "dpop_invalid_signature"
    head, body, _ = bound.proof("GET", URL, TOKEN).split(".")
    assert reason_of(verifier(), bound, [f"{head}.{body}.{b64url(b'x' * 64)}"]) == "dpop_invalid_signature"


def test_the_method_must_be_the_original_requests() -> None:
    key = DpopKey()
    assert reason_of(verifier(), key, [key.proof("POST", URL, TOKEN)]) == "dpop_htm_mismatch"
    assert reason_of(verifier(), key, [key.proof("get", URL, TOKEN)]) == "dpop_htm_mismatch"  # case-sensitive
    assert reason_of(verifier(), key, [key.proof("GET", URL, TOKEN)], method=None) == "dpop_htm_mismatch"


@pytest.mark.parametrize("htu", ["https://api.example:8443/other", "http://api.example:8443/orders",
                                 "https://api.example/orders", "https://evil.example:8443/orders",
                                 "https://api.example:8443/orders/", "https://api.example:8443/Orders",
                                 "https://user@api.example:8443/orders", "/orders", "urn:x"])
def test_the_uri_must_be_the_original_requests(htu: str) -> None:
    key = DpopKey()
    assert reason_of(verifier(), key, [key.proof("GET", htu, TOKEN)]) == "dpop_htu_mismatch"


@pytest.mark.parametrize("htu", ["https://API.Example:8443/orders", "HTTPS://api.example:8443/./orders",
                                 "https://api.example:8443/x/../orders", "https://api.example:8443/%6Frders",
                                 "https://api.example:8443/orders?other=1#frag"])
def test_the_uri_is_compared_after_rfc_3986_normalization_without_query_and_fragment(htu: str) -> None:
    key = DpopKey()
    check(verifier(), key, [key.proof("GET", htu, TOKEN)])


@pytest.mark.parametrize(("uri", "normal"), [
    ("HTTPS://[::1]:443/a/./b/../c", "https://[::1]/a/c"),
    ("http://h:80", "http://h/"),
    ("http://h:8080/%2f%7e%41", "http://h:8080/%2F~A"),
    ("https://h/a/..", "https://h/"),
    ("https://h:99999/", None), ("https://h:x/", None), ("ftp://h/", None), ("https:///p", None),
    ("https://h/%5cx", "https://h/%5Cx"), ("https://h/a\x00", None), ("https://h/a\nb", None),
    ("https://h/é", None), ("https://u:p@h/", None), ("https://h/" + "a" * 5000, None),
])
def test_uris_normalize_per_rfc_3986_and_non_targets_to_none(uri: str, normal: str | None) -> None:
    assert normalize(uri) == normal


def test_the_default_port_is_the_same_uri() -> None:
    key = DpopKey()
    check(verifier(), key, [key.proof("GET", "https://api.example/orders", TOKEN)],
          uri="https://api.example:443/orders")


def test_without_a_description_of_the_original_request_no_proof_passes() -> None:
    key = DpopKey()
    assert reason_of(verifier(), key, [key.proof("GET", URL, TOKEN)], uri=None) == "dpop_htu_mismatch"


def test_an_old_or_future_iat_is_refused_within_the_configured_window() -> None:
    key, v = DpopKey(), verifier(iat_window=60, iat_skew=5)
    now = time.time()
    assert reason_of(v, key, [key.proof("GET", URL, TOKEN, iat=now - 61)]) == "dpop_iat_too_old"
    assert reason_of(v, key, [key.proof("GET", URL, TOKEN, iat=now + 30)]) == "dpop_iat_in_future"
    check(v, key, [key.proof("GET", URL, TOKEN, iat=now - 50)])
    check(v, key, [key.proof("GET", URL, TOKEN, iat=now + 3)])
    for iat in ("now", True, None, float("nan")):
        proof = key.proof("GET", URL, TOKEN, claims={"iat": iat})
        assert reason_of(v, key, [proof]) == "dpop_proof_malformed"


def test_a_proof_for_another_token_or_without_ath_is_refused() -> None:
    key = DpopKey()
    assert reason_of(verifier(), key, [key.proof("GET", URL, "another-token")]) == "dpop_ath_mismatch"
    assert reason_of(verifier(), key, [key.proof("GET", URL)]) == "dpop_ath_mismatch"


def test_a_replayed_proof_is_refused_and_the_same_jti_under_another_key_is_not_a_replay() -> None:
    key, other, v = DpopKey(), DpopKey(), verifier()
    proof = key.proof("GET", URL, TOKEN)
    check(v, key, [proof])
    assert reason_of(v, key, [proof]) == "dpop_replayed"
    jti = uuid.uuid4().hex
    check(v, key, [key.proof("GET", URL, TOKEN, jti=jti)])
    check(v, other, [other.proof("GET", URL, TOKEN, jti=jti)])


def test_a_refused_proof_does_not_spend_its_jti() -> None:
    key, v = DpopKey(), verifier()
    jti = uuid.uuid4().hex
    assert reason_of(v, key, [key.proof("POST", URL, TOKEN, jti=jti)]) == "dpop_htm_mismatch"
    check(v, key, [key.proof("GET", URL, TOKEN, jti=jti)])


def test_the_replay_store_refuses_when_full_of_live_proofs_and_forgets_expired_ones() -> None:
    clock = [1000.0]
    store = LocalReplayStore(2, clock=lambda: clock[0])
    assert store.claim(b"a", 1060) and store.claim(b"b", 1060)
    assert not store.claim(b"a", 1060)
    with pytest.raises(Exception, match="live proofs"):
        store.claim(b"c", 1060)
    clock[0] = 1061
    assert store.claim(b"c", 1121) and store.claim(b"a", 1121) and len(store) == 2


def test_one_dpop_key_cannot_fill_the_replay_store_for_the_others() -> None:
    config = DpopConfig(enabled=True, replay_max_entries=100)  # replay_max_share 0.1: ten live proofs a key
    v = ProofVerifier(config, LocalReplayStore(config.replay_max_entries, max_share=config.replay_max_share))
    flooder, other = DpopKey(), DpopKey()
    accepted = refused = 0
    for _ in range(100):  # one client with its own valid token, proving as fast as it can
        try:
            check(v, flooder, [flooder.proof("GET", URL, TOKEN)])
            accepted += 1
        except RateLimited as exc:
            assert exc.status == 429 and exc.reason == "rate_limited"
            refused += 1
    assert (accepted, refused) == (10, 90)
    for _ in range(10):  # every other client keeps its own share
        check(v, other, [other.proof("GET", URL, TOKEN)])


def test_an_owners_share_comes_back_as_its_proofs_expire() -> None:
    clock = [1000.0]
    store = LocalReplayStore(10, clock=lambda: clock[0], max_share=0.2)
    assert store.claim(b"a", 1060, "k1") and store.claim(b"b", 1060, "k1")
    with pytest.raises(RateLimited):
        store.claim(b"c", 1060, "k1")
    assert store.claim(b"c", 1060, "k2")
    clock[0] = 1061
    assert store.claim(b"d", 1121, "k1") and store.claim(b"a", 1121, "k1") and len(store) == 2


def test_a_full_replay_store_fails_closed_with_503() -> None:
    key, v = DpopKey(), verifier(replay_max_entries=1)
    check(v, key, [key.proof("GET", URL, TOKEN)])
    with pytest.raises(ReplayFull) as caught:
        check(v, key, [key.proof("GET", URL, TOKEN)])
    assert caught.value.status == 503 and caught.value.reason == "dpop_replay_full"


def test_a_jti_longer_than_256_characters_is_malformed() -> None:
    key = DpopKey()
    assert reason_of(verifier(), key, [key.proof("GET", URL, TOKEN, jti="j" * 257)]) == "dpop_proof_malformed"


def test_parsed_keys_are_remembered_only_for_proofs_that_passed() -> None:
    key, stranger, v = DpopKey(), DpopKey(), verifier()
    reason_of(v, key, [stranger.proof("GET", URL, TOKEN)])
    assert len(v._keys) == 0
    check(v, key, [key.proof("GET", URL, TOKEN)])
    check(v, key, [key.proof("GET", URL, TOKEN)])
    assert len(v._keys) == 1


# The decision: the binding step of Decider._verdict.

class Verifier:
    def __init__(self, cnf: dict[str, str] | None) -> None:
        self.cnf = cnf

    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        claims: dict[str, Any] = {"active": True, "client_id": "app", "scope": "read", "exp": 4_000_000_000,
                                  "token_type": "DPoP"}
        if self.cnf is not None:
            claims["cnf"] = self.cnf
        return token_info_from_claims(claims)


class FleetReplay:
    """A stand-in for the fleet's store (the real one with Redis: tests/fleet/test_dpop_replay.py)."""

    secret = b"the fleet's shared secret"

    def __init__(self, fail: bool = False) -> None:
        self.claimed: dict[bytes, float] = {}
        self.fail = fail

    async def claim(self, key: bytes, until: float) -> bool:
        if self.fail:
            raise RuntimeError("a bug")
        first = key not in self.claimed
        self.claimed.setdefault(key, until)
        return first


def decider(cnf: dict[str, str] | None, binding: str = "strict", enabled: bool = True,
            fleet: FleetReplay | None = None) -> Decider:
    config = config_module.from_mapping({"policy": {"binding": binding}, "dpop": {"enabled": enabled}})
    return Decider(config, Verifier(cnf), Metrics(), shared_replay=fleet)


def dpop_request(key: DpopKey, token: str = TOKEN, *, scheme: str = "DPoP", peer: str = "127.0.0.1",
                 proof: str | None = None) -> CheckRequest:
    return CheckRequest([f"{scheme} {token}"], [], peer, method="GET", path="/orders?page=2",
                        host="api.example:8443", scheme="https",
                        dpop_proofs=[proof if proof is not None else key.proof("GET", URL, token)])


async def decide(d: Decider, request: CheckRequest) -> Entry | Deny:
    now = d.decide_now(request)
    return await d.decide(request, now) if isinstance(now, Pending) else now


@pytest.mark.parametrize("binding", ["strict", "optional", "off"])
async def test_a_dpop_bound_token_with_a_valid_proof_is_allowed_in_every_mode_and_says_so_upstream(
        binding: str) -> None:
    key = DpopKey()
    d = decider({"jkt": key.jkt}, binding)
    for _ in range(2):  # a miss, then a cache hit: each with its own proof
        decided = await decide(d, dpop_request(key))
        assert isinstance(decided, Entry)
        assert decided.headers["x-credential-cnf-jkt"] == key.jkt
        assert decided.headers["x-credential-cnf-method"] == "dpop"
        assert decided.headers["x-credential-cnf-x5t-s256"] == ""


async def test_a_cache_hit_still_verifies_a_new_proof_per_request() -> None:
    key = DpopKey()
    d = decider({"jkt": key.jkt})
    proof = key.proof("GET", URL, TOKEN)
    assert isinstance(await decide(d, dpop_request(key, proof=proof)), Entry)
    replayed = d.decide_now(dpop_request(key, proof=proof))
    assert isinstance(replayed, Deny) and replayed.denial.reason == "dpop_replayed" and replayed.dpop_scheme


async def test_in_a_fleet_an_accepted_proof_is_claimed_fleet_wide_before_the_allow_hit_or_miss() -> None:
    key, fleet = DpopKey(), FleetReplay()
    d, other = decider({"jkt": key.jkt}, fleet=fleet), decider({"jkt": key.jkt}, fleet=fleet)
    first, second = key.proof("GET", URL, TOKEN), key.proof("GET", URL, TOKEN)
    assert isinstance(await decide(d, dpop_request(key, proof=first)), Entry)  # a miss
    pending = d.decide_now(dpop_request(key, proof=second))  # a hit: every check done, one await left
    assert isinstance(pending, ReplayClaim) and len(fleet.claimed) == 1
    assert isinstance(await d.decide(dpop_request(key, proof=second), pending), Entry)
    assert pending.until == pytest.approx(time.time() + 60, abs=5)
    # The other replica has never seen either proof: only the fleet's store knows.
    for proof in (first, second):
        replayed = await decide(other, dpop_request(key, proof=proof))
        assert isinstance(replayed, Deny) and replayed.denial.reason == "dpop_replayed" and replayed.dpop_scheme
    # A certificate-bound or Bearer request never takes the await.
    assert not isinstance(d.decide_now(dpop_request(key, scheme="Bearer")), Pending)


async def test_a_failing_fleet_store_denies_never_allows() -> None:
    key = DpopKey()
    decided = await decide(decider({"jkt": key.jkt}, fleet=FleetReplay(fail=True)), dpop_request(key))
    assert isinstance(decided, Deny) and decided.denial.reason == "internal_error"


@pytest.mark.parametrize("binding", ["strict", "optional", "off"])
async def test_a_dpop_bound_token_sent_as_bearer_is_refused_in_every_mode(binding: str) -> None:
    key = DpopKey()
    decided = await decide(decider({"jkt": key.jkt}, binding), dpop_request(key, scheme="Bearer"))
    assert isinstance(decided, Deny) and decided.denial.reason == "dpop_scheme_required"
    assert not decided.dpop_scheme  # the Bearer challenge carries the error


@pytest.mark.parametrize("cnf", [None, {"x5t#S256": "A" * 43}])
async def test_the_dpop_scheme_with_a_token_not_bound_by_jkt_is_refused(cnf: dict[str, str] | None) -> None:
    key = DpopKey()
    decided = await decide(decider(cnf, "optional"), dpop_request(key))
    assert isinstance(decided, Deny) and decided.denial.reason == "dpop_token_unbound" and decided.dpop_scheme


async def test_under_strict_an_unbound_bearer_token_is_still_refused() -> None:
    decided = await decide(decider(None), CheckRequest(["Bearer t"], [], "127.0.0.1"))
    assert isinstance(decided, Deny) and decided.denial.reason == "token_unbound"


async def test_with_dpop_off_the_scheme_is_not_accepted_and_jkt_tokens_are_unsupported() -> None:
    key = DpopKey()
    d = decider({"jkt": key.jkt}, enabled=False)
    decided = await decide(d, dpop_request(key))
    assert isinstance(decided, Deny) and decided.denial.reason == "token_missing"
    decided = await decide(d, dpop_request(key, scheme="Bearer"))
    assert isinstance(decided, Deny) and decided.denial.reason == "cnf_unsupported"


async def test_a_token_bound_by_both_methods_is_refused() -> None:
    key = DpopKey()
    decided = await decide(decider({"jkt": key.jkt, "x5t#S256": "A" * 43}), dpop_request(key))
    assert isinstance(decided, Deny) and decided.denial.reason == "cnf_unsupported"


async def test_the_original_request_counts_only_from_a_trusted_proxy() -> None:
    key = DpopKey()
    decided = await decide(decider({"jkt": key.jkt}), dpop_request(key, peer="192.0.2.9"))
    assert isinstance(decided, Deny) and decided.denial.reason == "dpop_htm_mismatch"


def test_certificate_binding_under_off_is_not_named_as_verified_upstream_and_dpop_off_adds_no_header() -> None:
    info = token_info_from_claims({"active": True, "cnf": {"x5t#S256": "A" * 43}})
    config = config_module.ResponseConfig()
    assert HeaderBuilder(config, binding="off", dpop=True).build(info)["x-credential-cnf-method"] == ""
    assert HeaderBuilder(config, binding="optional", dpop=True).build(info)["x-credential-cnf-method"] == "mtls"
    assert "x-credential-cnf-method" not in HeaderBuilder(config).names  # without DPoP no token pays for them


def test_denials_carry_both_challenges_and_the_error_in_the_scheme_the_request_used() -> None:
    proof = InvalidDpopProof("dpop_replayed")
    dpop = render_denial(proof, "api", proof_algs="ES256 EdDSA", dpop_scheme=True).headers["WWW-Authenticate"]
    assert dpop == ('Bearer realm="api", DPoP realm="api", error="invalid_dpop_proof", '
                    'error_description="The DPoP proof is invalid", algs="ES256 EdDSA"')
    bearer = render_denial(InvalidToken("dpop_scheme_required"), "api", proof_algs="ES256").headers
    assert bearer["WWW-Authenticate"] == ('Bearer realm="api", error="invalid_token", error_description='
                                          '"The access token is invalid", DPoP realm="api", algs="ES256"')
    missing = render_denial(MissingToken("token_missing"), "api", proof_algs="ES256").headers
    assert missing["WWW-Authenticate"] == 'Bearer realm="api", DPoP realm="api", algs="ES256"'
    assert render_denial(MissingToken("token_missing"), "api").headers["WWW-Authenticate"] == 'Bearer realm="api"'
