"""The stages of one configuration, built once: what :class:`~sidecar.core.decision.Decider` runs.

Building them apart from the flow keeps the decision a reader can follow in one screen, and lets
every front, bench and test get the same assembly from a configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sidecar.config import Config
from sidecar.core.admission import Admission
from sidecar.core.cache import TokenCache
from sidecar.core.dpop import ProofVerifier
from sidecar.core.extract import TrustedProxies
from sidecar.core.identity import IdentityTokens
from sidecar.core.identity_keys import SigningKeys
from sidecar.core.interning import Interner
from sidecar.core.policies import Policies
from sidecar.core.ports import SharedAnswers, SharedReplay
from sidecar.core.presented import PresentedCertificate
from sidecar.core.replay import LocalReplayStore, SeenProofs
from sidecar.core.revocation import Revocations
from sidecar.core.routes import Router
from sidecar.core.target import RequestTarget


@dataclass(frozen=True, slots=True)
class Stages:
    cache: TokenCache  # stage 2: answers per token, single-flight, purge
    policies: Policies  # stage 4: every configured policy, and a token's verdict under each
    target: RequestTarget  # stage 0: the request as the upstream receives it (origin, path, each header once)
    router: Router  # which policy a request falls under
    presented: PresentedCertificate  # stage 1b: which client certificate counts
    trusted: TrustedProxies  # who may describe the request (certificate, original request, policy name)
    admission: Admission  # fair admission of misses to the IdP
    proofs: ProofVerifier | None  # stage 3 for cnf.jkt: DPoP proofs (dpop.enabled)
    interner: Interner  # one shared copy of values many cached tokens share
    shared_replay: SharedReplay | None  # the fleet's half of the DPoP replay check
    seen_proofs: SeenProofs | None  # the local half and its secret (a reload hands them over, DPoP off too)
    identity: IdentityTokens | None  # stage 5b: the signed identity token, when a policy sends one
    signing_keys: SigningKeys | None  # its keys, with identity.key_file (a restart key): published, rotated

    def take_over(self, old: Stages, config: Config) -> None:
        """A reload's swap: these stages (of ``config``) now serve instead of ``old``. What they share
        with them takes ``config``'s limits only now, so that a reload that does not get ready leaves
        the running state as it was."""
        self.admission.carry(old.admission)
        dp = config.dpop
        if self.seen_proofs is not None and dp.enabled:
            self.seen_proofs.store.resize(dp.replay_max_entries, dp.replay_max_share)
        if self.signing_keys is not None:
            self.signing_keys.reconfigure(config.identity)


def build_stages(config: Config, shared: SharedAnswers | None = None,
                 shared_replay: SharedReplay | None = None, previous: Stages | None = None,
                 reuse_answers: bool = False) -> Stages:
    """``shared``: the fleet's cache level (its digest key names tokens alike on every replica);
    ``shared_replay``: the fleet's DPoP replay store (its secret names proofs alike); ``previous``:
    the stages of the configuration this one replaces (a reload), whose state goes over: the
    revocations remembered, the DPoP proofs accepted, the identity signing keys (a rotation in
    progress goes on; published while no policy sends an identity token) and, at the swap
    (:meth:`Stages.take_over`), the sources' admission budgets and back-offs; ``reuse_answers``:
    its cached IdP answers may be reused too (the IdP settings did not change)."""
    revocations = None if previous is None else previous.cache.revocations
    seen_proofs = None if previous is None else previous.seen_proofs
    dp = config.dpop
    shared_replay = shared_replay if dp.enabled else None
    proofs = None
    if dp.enabled:
        if seen_proofs is None:
            seen_proofs = SeenProofs(LocalReplayStore(dp.replay_max_entries, max_share=dp.replay_max_share))
        secret = seen_proofs.secret if shared_replay is None else shared_replay.secret
        proofs = ProofVerifier(dp, seen_proofs.store, secret=secret)
    trusted = TrustedProxies(config.client_cert.trusted_proxies)
    policies = Policies(config)
    presented = PresentedCertificate(config.client_cert, trusted, config.policy.leeway)
    signing_keys = None if previous is None else previous.signing_keys
    if signing_keys is None and config.identity.key_file:
        signing_keys = SigningKeys(config.identity)
    return Stages(
        cache=TokenCache(config.cache, secret=None if shared is None else shared.digest_key,
                         revocations=revocations if revocations is not None else Revocations(
                             config.events.max_revocations, config.events.remember, time.monotonic),
                         index=revocations_heard(config),
                         previous=previous.cache if previous is not None and reuse_answers else None),
        policies=policies,
        target=RequestTarget(config.routing, trusted, choosing=bool(config.policies or config.routes)),
        router=Router(policies.default, policies.named, config.routes, config.routing, trusted),
        presented=presented,
        trusted=trusted,
        admission=Admission(config.admission, config.idp.max_concurrent, trusted=trusted, presented=presented),
        proofs=proofs,
        interner=Interner(),
        shared_replay=shared_replay,
        seen_proofs=seen_proofs,
        identity=identity_tokens(config, policies, signing_keys),
        signing_keys=signing_keys,
    )


def revocations_heard(config: Config) -> bool:
    """Whether revocations by subject can reach this sidecar (SETs, or POST /purge with its secret):
    only then does the cache keep its index (memory per token)."""
    s = config.server
    return config.events.enabled or bool(s.admin_secret or s.admin_secret_file)


def identity_tokens(config: Config, policies: Policies, keys: SigningKeys | None) -> IdentityTokens | None:
    """The identity token's signer, when any policy sends one (``keys``: there is a key file then)."""
    if not any(p.identity_audience for p in policies.all()):
        return None
    assert keys is not None  # a policy that sends one needs identity.key_file (config/rules.py)
    return IdentityTokens(config.identity, keys, policies.builders)
