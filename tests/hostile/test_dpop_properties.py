"""Property tests: no DPoP header, proof header, payload or nonce a client writes makes the proof
check raise anything but a denial (RFC 9449 §4.3 failures are 401 ``invalid_dpop_proof``, §9 nonce
failures 401 ``use_dpop_nonce``, never a 500); no host or path a proxy passes on makes the target
stage raise."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import DpopConfig, RoutingConfig
from sidecar.core.dpop import ProofVerifier, access_token_hash
from sidecar.core.errors import Denial, InvalidDpopProof, UseDpopNonce
from sidecar.core.extract import TrustedProxies
from sidecar.core.htu import normalize
from sidecar.core.replay import LocalReplayStore
from sidecar.core.request import CheckRequest
from sidecar.core.target import RequestTarget
from tests.support.dpop_proof import DpopKey

pytestmark = pytest.mark.dpop

KEY = DpopKey()
VERIFIER = ProofVerifier(DpopConfig(enabled=True), LocalReplayStore(1000))
URL = "https://api.example/orders"
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=3), max_leaves=8)


def segment(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def refused(proofs: list[str]) -> None:
    with pytest.raises(InvalidDpopProof):
        VERIFIER.verify(proofs, jkt=KEY.jkt, ath=access_token_hash("t"), method="GET", uris=(URL,))


@given(st.lists(st.text(max_size=300), max_size=3))
def test_any_dpop_header_text_is_refused_as_a_denial(proofs: list[str]) -> None:
    refused(proofs)


@given(st.dictionaries(st.sampled_from(["typ", "alg", "jwk", "crit", "kid"]), json_values, max_size=5),
       json_values)
def test_any_header_and_payload_json_are_refused_as_a_denial(header: dict[str, Any], payload: Any) -> None:
    refused([f"{segment(header)}.{segment(payload)}.AAAA"])


@given(json_values.filter(lambda v: v is not None))  # None: the helper would show the real key
def test_any_jwk_in_an_otherwise_valid_proof_is_refused_as_a_denial(jwk: Any) -> None:
    refused([KEY.proof("GET", URL, "t", jwk=jwk)])


@given(st.text(max_size=200))
def test_normalize_returns_a_string_or_none_for_any_text(uri: str) -> None:
    normal = normalize(uri)
    assert normal is None or (normal.startswith(("http://", "https://")) and normalize(normal) == normal)


NONCES = ProofVerifier(DpopConfig(enabled=True, nonce="required"), LocalReplayStore(100_000))


@given(json_values)
def test_any_nonce_claim_is_refused_as_use_dpop_nonce(nonce: Any) -> None:
    proof = KEY.proof("GET", URL, "t", claims={"nonce": nonce})
    with pytest.raises(UseDpopNonce):
        NONCES.verify([proof], jkt=KEY.jkt, ath=access_token_hash("t"), method="GET", uris=(URL,))


TARGET = RequestTarget(RoutingConfig(origins=("https://api.example", "https://api.example:8443")),
                       TrustedProxies(["127.0.0.1/32"]), choosing=True)


@given(st.one_of(st.none(), st.text(max_size=80)), st.one_of(st.none(), st.text(max_size=8)),
       st.one_of(st.none(), st.text(max_size=200)))
def test_any_host_scheme_and_path_give_a_verdict_and_target_uris_never_an_exception(
        host: str | None, scheme: str | None, path: str | None) -> None:
    request = CheckRequest([], (), "127.0.0.1", method="GET", path=path, host=host, scheme=scheme)
    verdict = TARGET.check(request)
    assert verdict is None or isinstance(verdict, Denial)
    uris = TARGET.uris(request)
    assert verdict is not None or not uris or all(u.startswith("https://api.example") for u in uris)
