"""The stages of one configuration, built once: what :class:`~sidecar.core.decision.Decider` runs.

Building them apart from the flow keeps the decision a reader can follow in one screen, and lets
every front, bench and test get the same assembly from a configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.config import Config
from sidecar.core.admission import Admission
from sidecar.core.cache import TokenCache
from sidecar.core.dpop import ProofVerifier
from sidecar.core.extract import TrustedProxies
from sidecar.core.interning import Interner
from sidecar.core.policies import Policies
from sidecar.core.ports import SharedAnswers, SharedReplay
from sidecar.core.presented import PresentedCertificate
from sidecar.core.replay import LocalReplayStore
from sidecar.core.routes import Router


@dataclass(frozen=True, slots=True)
class Stages:
    cache: TokenCache  # stage 2: answers per token, single-flight, purge
    policies: Policies  # stage 4: every configured policy, and a token's verdict under each
    router: Router  # which policy a request falls under
    presented: PresentedCertificate  # stage 1b: which client certificate counts
    trusted: TrustedProxies  # who may describe the request (certificate, original request, policy name)
    admission: Admission  # fair admission of misses to the IdP
    proofs: ProofVerifier | None  # stage 3 for cnf.jkt: DPoP proofs (dpop.enabled)
    interner: Interner  # one shared copy of values many cached tokens share
    shared_replay: SharedReplay | None  # the fleet's half of the DPoP replay check


def build_stages(config: Config, shared: SharedAnswers | None = None,
                 shared_replay: SharedReplay | None = None, previous: TokenCache | None = None) -> Stages:
    """``shared``: the fleet's cache level (its digest key names tokens alike on every replica);
    ``shared_replay``: the fleet's DPoP replay store (its secret names proofs alike); ``previous``:
    the cache of the configuration this one replaces, whose answers a miss may reuse."""
    dp = config.dpop
    shared_replay = shared_replay if dp.enabled else None
    proofs = None
    if dp.enabled:
        secret = None if shared_replay is None else shared_replay.secret
        proofs = ProofVerifier(dp, LocalReplayStore(dp.replay_max_entries), secret=secret)
    trusted = TrustedProxies(config.client_cert.trusted_proxies)
    policies = Policies(config)
    return Stages(
        cache=TokenCache(config.cache, secret=None if shared is None else shared.digest_key, previous=previous),
        policies=policies,
        router=Router(policies.default, policies.named, config.routes, config.routing, trusted),
        presented=PresentedCertificate(config.client_cert, trusted, config.policy.leeway),
        trusted=trusted,
        admission=Admission(config.admission, config.idp.max_concurrent),
        proofs=proofs,
        interner=Interner(),
        shared_replay=shared_replay,
    )
