"""Fair admission of cache misses to the IdP: budgets per client, by certificate where the sidecar
or the IdP can name the client, by address group where not (sidecar/core/admission.py)."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import AdmissionConfig, ClientCertConfig
from sidecar.core.admission import Admission
from sidecar.core.errors import RateLimited
from sidecar.core.extract import TrustedProxies
from sidecar.core.presented import PresentedCertificate
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo
from tests.conftest import escaped_pem
from tests.support.pki_fixtures import TestPki

PROXY = "127.0.0.1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admission(clock: Clock | None = None, *, ca_file: str | None = None, **config: Any) -> Admission:
    trusted = TrustedProxies(["127.0.0.1/32"])
    presented = PresentedCertificate(ClientCertConfig(ca_file=ca_file), trusted, 5.0)
    return Admission(AdmissionConfig(**config), max_concurrent=10, trusted=trusted, presented=presented,
                     timer=clock or Clock())


def request(forwarded: str | None = None, peer: str = PROXY, cert: str | None = None) -> CheckRequest:
    return CheckRequest(["Bearer x"], [cert] if cert else [], peer, forwarded=forwarded)


def test_a_source_gets_its_burst_then_its_rate_and_others_are_unaffected() -> None:
    clock = Clock()
    gate = admission(clock, miss_rate=2.0, miss_burst=3, max_share=1.0)
    one, two = "ip:198.51.100.1/32", "ip:198.51.100.2/32"
    for _ in range(3):
        gate.enter(one)
        gate.leave(one)
    with pytest.raises(RateLimited) as refused:
        gate.enter(one)
    assert refused.value.status == 429 and refused.value.reason == "rate_limited" and refused.value.retry_after >= 1
    gate.enter(two)  # another client keeps its own budget
    clock.now += 0.5  # one more call earned at 2/s
    gate.enter(one)


def test_a_source_holds_at_most_its_share_of_the_idp_slots() -> None:
    gate = admission(miss_rate=0, max_share=0.3)  # 3 of 10 slots
    one, two = "a", "b"
    for _ in range(3):
        gate.enter(one)
    with pytest.raises(RateLimited) as refused:
        gate.enter(one)
    assert "max_share" in refused.value.detail
    gate.enter(two)
    gate.leave(one)
    gate.enter(one)


@pytest.mark.parametrize(("forwarded", "peer", "source"), [
    ("203.0.113.9, 198.51.100.7", PROXY, "ip:198.51.100.7/32"),  # the last hop: the proxy's own
    ("2001:db8:1:2:aaaa::1", PROXY, "ip:2001:db8:1:2::/64"),  # an IPv6 client holds a /64
    ("2001:db8:1:2:ffff::9", PROXY, "ip:2001:db8:1:2::/64"),
    ("::ffff:198.51.100.7", PROXY, "ip:198.51.100.7/32"),  # IPv4-mapped: as IPv4
    ("198.51.100.7", "192.0.2.5", "ip:192.0.2.5/32"),  # not a trusted proxy: the peer is the client
    (None, "192.0.2.5", "ip:192.0.2.5/32"),
    (" , ", PROXY, "ip:127.0.0.1/32"),  # a trusted proxy sending no source: itself, one budget
    ("x" * 500, PROXY, "src:" + "x" * 64),  # not an address: bounded text
])
def test_without_a_known_certificate_the_source_is_the_address_group(
    forwarded: str | None, peer: str, source: str
) -> None:
    assert admission().source(request(forwarded, peer)) == source


def test_the_prefix_lengths_are_configurable() -> None:
    gate = admission(ipv4_prefix=24, ipv6_prefix=48)
    assert gate.source(request("198.51.100.77")) == "ip:198.51.100.0/24"
    assert gate.source(request("2001:db8:1:2::1")) == "ip:2001:db8:1::/48"


def test_a_certificate_counts_once_the_idp_vouched_for_it_and_then_by_its_client(pki: TestPki) -> None:
    gate = admission()
    cert = escaped_pem(pki.alice)
    assert gate.source(request("198.51.100.7", cert=cert)) == "ip:198.51.100.7/32"
    gate.learn(TokenInfo(active=True, client_id="bob", cnf_x5t_s256=pki.bob.x5t_s256))  # another's binding
    gate.learn(TokenInfo(active=False))
    assert gate.source(request("198.51.100.7", cert=cert)) == "ip:198.51.100.7/32"
    gate.learn(TokenInfo(active=True, client_id="alice-app", cnf_x5t_s256=pki.alice.x5t_s256))
    assert gate.source(request("198.51.100.7", cert=cert)) == "client:alice-app"
    assert gate.source(request("203.0.113.1", cert=cert)) == "client:alice-app"  # wherever it comes from


def test_a_certificate_the_sidecar_verified_is_its_own_source_at_once(pki: TestPki) -> None:
    gate = admission(ca_file=str(pki.ca_file))
    assert gate.source(request("198.51.100.7", cert=escaped_pem(pki.alice))) == f"x5t:{pki.alice.x5t_s256}"


def test_an_unreadable_certificate_is_charged_to_the_address() -> None:
    assert admission().source(request("198.51.100.7", cert="not a certificate")) == "ip:198.51.100.7/32"


def test_a_429_from_the_idp_backs_its_source_off_doubling_and_bounded_and_no_other() -> None:
    clock = Clock()
    gate = admission(clock, miss_rate=0, idp_backoff_max=5.0)
    flooder, other = "ip:198.51.100.66/32", "ip:198.51.100.7/32"
    holds = []
    for _ in range(4):
        gate.enter(flooder)
        gate.leave(flooder, throttled=True)
        with pytest.raises(RateLimited) as refused:
            gate.enter(flooder)
        holds.append(refused.value.retry_after)
        clock.now += refused.value.retry_after
        gate.enter(other)
        gate.leave(other)
    assert holds == [1, 2, 4, 5]
    gate.enter(flooder)
    gate.leave(flooder)  # a call that was not refused: the next 429 starts over
    gate.enter(flooder)
    gate.leave(flooder, throttled=True, retry_after=3)  # the IdP's Retry-After, when longer
    with pytest.raises(RateLimited) as refused:
        gate.enter(flooder)
    assert refused.value.retry_after == 3
