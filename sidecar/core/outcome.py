"""What a decision ends in, and every metric and log line of it.

:meth:`~sidecar.core.decision.Decider.decide_now` ends in an allow (the token's cache
:class:`~sidecar.core.entry.Entry` itself: its upstream headers were built when it was filled, so
allowing a cached token allocates nothing), a :class:`Deny`, or a :class:`Pending` step that
needs an await: a :class:`Miss` (ask the IdP) or a :class:`ReplayClaim` (ask the fleet whether
another replica accepted the DPoP proof).

:class:`Outcomes` records each outcome exactly once: the ``sidecar_decisions_total`` and
``sidecar_cache_total`` counters, the decision log line (allows batched by
:class:`~sidecar.core.decision_log.AllowLog`; denials per ``log.decisions``; stale allows and
``policy_unknown`` always) — and turns every failure, a bug included, into a Deny (fail closed):
:meth:`Outcomes.refuse` is the one place an unexpected exception becomes ``internal_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sidecar.config import Config
from sidecar.core.cache import Lookup, TokenCache
from sidecar.core.decision_log import AllowLog
from sidecar.core.entry import Entry
from sidecar.core.errors import Denial, InternalError, InvalidRequest
from sidecar.core.policy import Policy
from sidecar.support.metrics import Metrics

log = logging.getLogger("sidecar.decision")

NO_POLICY = "none"  # the policy label of a request no policy admits (only configured names otherwise)


class Deny:
    __slots__ = ("denial", "dpop_scheme", "token_hash")

    def __init__(self, denial: Denial, hashed: str | None = None, dpop_scheme: bool = False) -> None:
        self.denial = denial
        self.token_hash = hashed
        self.dpop_scheme = dpop_scheme  # the request used the DPoP scheme: that challenge carries the error (§7.1)


class Pending:
    """:meth:`Decider.decide_now` cannot answer without awaiting: hand it to :meth:`Decider.decide`."""

    __slots__ = ()


class Miss(Pending):
    """Not in the cache: :meth:`Decider.decide` must ask the IdP."""

    __slots__ = ("dpop_scheme", "key", "policy", "token")

    def __init__(self, token: str, key: bytes, policy: Policy, dpop_scheme: bool = False) -> None:
        self.token = token
        self.key = key
        self.policy = policy
        self.dpop_scheme = dpop_scheme  # the token came with the DPoP scheme


class ReplayClaim(Pending):
    """Every check passed, the DPoP proof too; the fleet must still confirm that no other replica
    accepted this proof (:class:`~sidecar.core.ports.SharedReplay`) before the allow."""

    __slots__ = ("entry", "key", "lookup", "policy", "until")

    def __init__(self, entry: Entry, lookup: Lookup, policy: Policy, key: bytes, until: float) -> None:
        self.entry = entry
        self.lookup = lookup
        self.policy = policy
        self.key = key
        self.until = until


def forged_denial(names: Sequence[str]) -> Denial:
    """``response.forged_headers = "deny"``: a client-sent copy of a credential header."""
    return InvalidRequest("credential_header_forged", ", ".join(names)[:256])


class Outcomes:
    """Records allows and denials (metrics and log lines) for one configuration."""

    def __init__(self, config: Config, metrics: Metrics, policies: Sequence[Policy], cache: TokenCache) -> None:
        self._metrics = metrics
        metrics.hit_counters.extend(policies)  # allowed hits: one int per policy, folded when scraped
        metrics.cache_entries.set_function(lambda: len(cache))
        self._log_allows = config.log.decisions == "all"
        self._log_denials = config.log.decisions != "off"
        self._allow_log = AllowLog(log)
        self._cache_stale = metrics.cache.labels("stale")

    def allow(self, entry: Entry, lookup: Lookup, policy: Policy) -> Entry:
        """An allow of ``entry`` under ``policy``; a stale one is always logged (the IdP did not
        give this answer just now), whatever ``log.decisions`` says."""
        if lookup == "hit":
            policy.hit_allows += 1  # folded into the hit and allow counters when scraped
        else:
            self.count(lookup)
            self._metrics.decision("allow", "stale" if lookup == "stale" else "ok", policy.name)
            if lookup == "stale":
                log.warning("allow", extra={"outcome": "allow", "reason": "stale", "stale": True,
                                            "policy": policy.name, "token": entry.token_hash,
                                            "client_id": entry.info.client_id})
                return entry
        if self._log_allows:
            self._allow_log.write(entry.token_hash, lookup, entry.info.client_id, policy.name)
        return entry

    def deny(self, denial: Denial, hashed: str | None, policy: Policy | None, *, lookup: Lookup | None = None,
             dpop_scheme: bool = False) -> Deny:
        """A denial; ``policy`` None: none was chosen (no rule matched, or the proxy named an unknown
        policy: a configuration error, always logged as a warning); ``lookup``: the cache lookup the
        token's answer came from, when there was one."""
        if lookup is not None:
            self.count(lookup)
        name = NO_POLICY if policy is None else policy.name
        self._metrics.decision("deny", denial.reason, name)
        unknown = denial.reason == "policy_unknown"
        if self._log_denials or unknown:
            extra = {"outcome": "deny", "reason": denial.reason, "status": denial.status, "policy": name,
                     "token": hashed, "detail": denial.detail}
            if lookup == "stale":
                extra["stale"] = True
            log.log(logging.WARNING if unknown else logging.INFO, "deny", extra=extra)
        return Deny(denial, hashed, dpop_scheme)

    def refuse(self, exc: Exception, hashed: str | None, policy: Policy | None, *, lookup: Lookup | None = None,
               dpop_scheme: bool = False) -> Deny:
        """Fail closed: a Denial raised by a stage is denied as such; anything else is a bug, logged
        with its type and denied as ``internal_error`` (503), never a 500 and never an allow."""
        if not isinstance(exc, Denial):
            log.error("decision failed", exc_info=exc, extra={"error_type": type(exc).__name__})
            exc = InternalError(type(exc).__name__)
        return self.deny(exc, hashed, policy, lookup=lookup, dpop_scheme=dpop_scheme)

    def count(self, lookup: Lookup) -> None:
        m = self._metrics
        (m.cache_hit if lookup == "hit" else m.cache_miss if lookup == "miss"
         else m.cache_coalesced if lookup == "coalesced" else self._cache_stale).inc()
