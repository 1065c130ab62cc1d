"""RFC 9449 §9 resource-server nonces (``dpop.nonce``): issued, rotated, bounded in time, shared by
every replica holding the fleet's secret, demanded with ``use_dpop_nonce`` and handed to the client
in ``DPoP-Nonce`` on 401 and on 200."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar import config as config_module
from sidecar.config import DpopConfig
from sidecar.core.decision import Decider
from sidecar.core.dpop import ProofVerifier, access_token_hash
from sidecar.core.errors import InvalidDpopProof, UseDpopNonce
from sidecar.core.nonce import Nonces
from sidecar.core.outcome import Pending
from sidecar.core.replay import LocalReplayStore
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo, token_info_from_claims
from sidecar.fronts.answer import Allow, Edge
from sidecar.fronts.render import RenderedDenial
from sidecar.support.jose import b64url, b64url_decode
from sidecar.support.metrics import Metrics
from tests.support.dpop_proof import DpopKey

pytestmark = pytest.mark.dpop

URL = "https://api.example/orders"
TOKEN = "opaque-token-1"
SECRET = b"the fleet's shared digest key...."


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(mode: str = "required", *, secret: bytes | None = SECRET, clock: Clock | None = None,
             lifetime: float = 300.0) -> ProofVerifier:
    config = DpopConfig(enabled=True, nonce=mode, nonce_lifetime=lifetime)  # type: ignore[arg-type]
    return ProofVerifier(config, LocalReplayStore(1000), secret=secret, clock=clock or Clock())


def check(v: ProofVerifier, key: DpopKey, nonce: str | None, *, iat: float | None = None,
          jti: str | None = None) -> None:
    proof = key.proof("GET", URL, TOKEN, nonce=nonce, iat=iat, jti=jti)
    v.verify([proof], jkt=key.jkt, ath=access_token_hash(TOKEN), method="GET", uris=(URL,))


def refused(v: ProofVerifier, key: DpopKey, nonce: str | None, **kwargs: Any) -> str:
    with pytest.raises(UseDpopNonce) as caught:
        check(v, key, nonce, **kwargs)
    assert caught.value.status == 401 and caught.value.error == "use_dpop_nonce"
    return caught.value.reason


def test_required_nonces_refuse_a_proof_without_one_and_accept_the_current_one() -> None:
    clock = Clock()
    v, key = verifier(clock=clock), DpopKey()
    assert v.nonces is not None
    assert refused(v, key, None, iat=clock.now) == "dpop_nonce_missing"
    check(v, key, v.nonces.current(), iat=clock.now)


def test_optional_nonces_accept_a_proof_without_one_but_never_a_wrong_one() -> None:
    clock = Clock()
    v, key = verifier("optional", clock=clock), DpopKey()
    check(v, key, None, iat=clock.now)
    assert refused(v, key, "not-a-nonce", iat=clock.now) == "dpop_nonce_invalid"


def test_with_nonces_off_a_nonce_claim_is_ignored_and_none_is_issued() -> None:
    clock = Clock()
    v, key = verifier("off", clock=clock), DpopKey()
    assert v.nonces is None
    check(v, key, "anything", iat=clock.now)


def test_a_nonce_is_rotated_every_quarter_and_accepted_for_its_lifetime_only() -> None:
    clock = Clock(1_800_000_000.0)
    v, key = verifier(clock=clock, lifetime=300.0), DpopKey()
    assert v.nonces is not None
    first = v.nonces.current()
    clock.now += 74  # within the quarter of 75 s the nonce issued at 1 800 000 000 stands
    assert v.nonces.current() == first
    clock.now += 1
    second = v.nonces.current()
    assert second != first
    check(v, key, first, iat=clock.now)  # an older nonce of this lifetime still holds
    clock.now = 1_800_000_000.0 + 300
    check(v, key, first, iat=clock.now)
    clock.now += 1
    assert refused(v, key, first, iat=clock.now) == "dpop_nonce_invalid"  # past its lifetime
    check(v, key, second, iat=clock.now)


def test_every_replica_with_the_fleets_secret_accepts_the_others_nonces_and_no_one_else_does() -> None:
    clock = Clock()
    one, two = verifier(clock=clock), verifier(clock=clock)
    stranger = verifier(clock=clock, secret=b"another fleet's digest key......")
    key = DpopKey()
    assert one.nonces is not None and stranger.nonces is not None
    check(two, key, one.nonces.current(), iat=clock.now)
    assert refused(two, key, stranger.nonces.current(), iat=clock.now) == "dpop_nonce_invalid"
    alone = verifier(clock=clock, secret=None)  # a single process: a key of its own
    assert alone.nonces is not None
    assert refused(one, key, alone.nonces.current(), iat=clock.now) == "dpop_nonce_invalid"


@pytest.mark.parametrize("forge", ["tag", "time", "short", "long", "type"])
def test_a_forged_or_altered_nonce_is_refused(forge: str) -> None:
    clock = Clock()
    v, key = verifier(clock=clock), DpopKey()
    assert v.nonces is not None
    raw = b64url_decode(v.nonces.current())
    nonce: Any = {
        "tag": b64url(raw[:-1] + bytes([raw[-1] ^ 1])),
        "time": b64url((int.from_bytes(raw[:8], "big") + 75).to_bytes(8, "big") + raw[8:]),  # the tag no longer fits
        "short": b64url(raw[:8]),
        "long": b64url(raw + b"x" * 60),
        "type": 12345,
    }[forge]
    assert refused(v, key, None, iat=clock.now) == "dpop_nonce_missing"
    with pytest.raises(UseDpopNonce):
        proof = key.proof("GET", URL, TOKEN, iat=clock.now, claims={"nonce": nonce})
        v.verify([proof], jkt=key.jkt, ath=access_token_hash(TOKEN), method="GET", uris=(URL,))


def test_a_proof_refused_for_its_nonce_does_not_spend_its_jti() -> None:
    clock = Clock()
    v, key = verifier(clock=clock), DpopKey()
    assert v.nonces is not None
    refused(v, key, None, iat=clock.now, jti="j-1")
    check(v, key, v.nonces.current(), iat=clock.now, jti="j-1")
    with pytest.raises(InvalidDpopProof):
        check(v, key, v.nonces.current(), iat=clock.now, jti="j-1")


def test_the_nonce_check_comes_after_the_signature() -> None:
    """A stranger's proof is refused for its key, not offered a nonce."""
    v, bound, stranger = verifier(), DpopKey(), DpopKey()
    proof = stranger.proof("GET", URL, TOKEN)
    with pytest.raises(InvalidDpopProof) as caught:
        v.verify([proof], jkt=bound.jkt, ath=access_token_hash(TOKEN), method="GET", uris=(URL,))
    assert caught.value.reason == "dpop_key_mismatch"


def test_nonces_are_checked_in_constant_time_and_the_memo_of_accepted_ones_is_bounded() -> None:
    clock = Clock()
    nonces = Nonces(300.0, skew=5.0, secret=SECRET, clock=clock)
    for _ in range(200):
        clock.now += 75
        assert nonces.accepts(nonces.current())
    assert len(nonces._accepted) <= 64


# The edge: DPoP-Nonce on 401 and on 200, for DPoP requests only.

class Verifier:
    def __init__(self, jkt: str) -> None:
        self.jkt = jkt

    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        cnf = {"jkt": self.jkt} if token == TOKEN else {"x5t#S256": "A" * 43}
        return token_info_from_claims({"active": True, "client_id": "app", "exp": 4_000_000_000,
                                       "token_type": "DPoP", "cnf": cnf})


def edge(key: DpopKey, mode: str = "required") -> Edge:
    config = config_module.from_mapping({"dpop": {"enabled": True, "nonce": mode},
                                         "routing": {"origins": ["https://api.example"]}})
    return Edge(Decider(config, Verifier(key.jkt), Metrics()), "api", 401)


def request(key: DpopKey, nonce: str | None, *, scheme: str = "DPoP") -> CheckRequest:
    return CheckRequest([f"{scheme} {TOKEN}"], [], "127.0.0.1", method="GET", path="/orders", host="api.example",
                        scheme="https", dpop_proofs=[key.proof("GET", URL, TOKEN, nonce=nonce)])


async def answer(e: Edge, sent: CheckRequest) -> Any:
    now = e.answer_now(sent)
    return await e.answer(sent, now) if isinstance(now, Pending) else now


async def test_a_dpop_request_without_a_nonce_gets_use_dpop_nonce_and_the_nonce_then_passes_and_gets_the_next(
) -> None:
    key = DpopKey()
    e = edge(key)
    first = await answer(e, request(key, None))
    assert isinstance(first, RenderedDenial) and first.status == 401 and first.reason == "dpop_nonce_missing"
    challenge = first.headers["WWW-Authenticate"]
    assert 'DPoP realm="api", error="use_dpop_nonce"' in challenge
    nonce = first.headers["DPoP-Nonce"]
    allowed = await answer(e, request(key, nonce))
    assert isinstance(allowed, Allow) and allowed.nonce == nonce and allowed.names == ()
    assert allowed.headers["x-credential-cnf-method"] == "dpop"


async def test_a_bearer_request_gets_no_nonce() -> None:
    key = DpopKey()
    denied = await answer(edge(key), request(key, None, scheme="Bearer"))
    assert isinstance(denied, RenderedDenial) and "DPoP-Nonce" not in denied.headers
