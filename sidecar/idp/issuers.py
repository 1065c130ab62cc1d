"""Every configured issuer, and the :class:`~sidecar.core.ports.Verifier` that sends each token to
the right one (called on a cache miss only: a hit never routes).

- **One issuer** (``[idp]`` alone, as every configuration before several issuers): every token
  goes to it, exactly as before.
- **A JWT** goes to the issuer its ``iss`` names. The claim is read before verification only to
  choose the issuer (and so the keys); that issuer then verifies the token whole, ``iss``
  included. An ``iss`` that names no configured issuer (nor an allowed tenant of a multi-tenant
  one) is ``issuer_not_allowed``, and no key is fetched for it; unless the policy names issuers
  known by their introspection endpoint alone (no ``issuer``), which are then asked as for an
  opaque token.
- **An opaque token** (or a JWT without ``iss``) is introspected at the issuers the request's
  policy names, in that order, until one says it is active. Its cost is bounded: at most one
  introspection per issuer the policy names (``policy.issuers``: at most four), each under that
  issuer's own guard (deadline, concurrency, breaker), and the inactive answer is cached for the
  route (core/cache.py). When an issuer fails and no other knows the token, the answer is that
  failure (503, fail closed), never "inactive".
- **A multi-tenant issuer** (``issuer`` holding ``{tenant}``, ``tenants`` the allow-list) is one
  issuer per tenant, each with that tenant's discovery and keys, all under the configured name.

Which issuer vouched is recorded on the answer (``TokenInfo.issuer``); the policy decides
whether it accepts it (core/policy.py). An issuer's answer whose ``iss`` is another configured
issuer's identifier is ``issuer_not_allowed``: one IdP never vouches for a token as another (whose
``iss`` policies' ``allowed_issuers`` and that issuer's Security Event Tokens trust).
"""

from __future__ import annotations

import binascii
import dataclasses
from collections.abc import Iterator

from sidecar.config import Config, IdpConfig
from sidecar.core.errors import IdpUnavailable, InvalidToken
from sidecar.core.token_info import INACTIVE, TokenInfo
from sidecar.idp.issuer import Issuer
from sidecar.idp.token_format import jwt_header
from sidecar.support.jose import json_segment
from sidecar.support.metrics import Metrics

MAX_PAYLOAD_CHARS = 65536  # a longer JWT payload is not read for its iss (it is introspected, if at all)


def unverified_iss(token: str) -> str | None:
    """The ``iss`` of a token of JWS shape, unverified (to choose the issuer only), else None."""
    if jwt_header(token) is None:
        return None
    payload = token.split(".")[1]
    if len(payload) > MAX_PAYLOAD_CHARS:
        return None
    try:
        claims = json_segment(payload)
    except (ValueError, binascii.Error, RecursionError):
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


def answer_inputs(config: Config) -> object:
    """Everything of ``config`` the issuers and their answers depend on (what :class:`Issuer`, its
    verifiers and this registry read): equal for two configurations, the same issuers serve both
    and the answers they gave stay valid (a reload hands both over)."""
    every = (config.policy, *config.policies.values())
    return (tuple(config.every_issuer.items()), config.kept_claims, config.events.enabled,
            tuple((p.leeway, p.audiences, p.allowed_issuers, config.policy_issuers(p)) for p in every))


def tenant_configs(idp: IdpConfig) -> list[IdpConfig]:
    """A multi-tenant issuer as one configuration per allowed tenant; else the issuer itself."""
    if not idp.tenants or idp.issuer is None:
        return [idp]
    return [dataclasses.replace(idp, issuer=idp.issuer.replace("{tenant}", t), tenants=()) for t in idp.tenants]


class Issuers:
    """The registry the runtime builds: every issuer, started and closed together."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.by_name: dict[str, list[Issuer]] = {
            name: [Issuer(name, one, config, metrics) for one in tenant_configs(idp)]
            for name, idp in config.every_issuer.items()
        }
        self._by_iss = {i.idp.issuer: i for i in self if i.idp.issuer}
        every = list(self)
        self._single = every[0] if len(every) == 1 else None

    def __iter__(self) -> Iterator[Issuer]:
        for issuers in self.by_name.values():
            yield from issuers

    @property
    def default(self) -> Issuer:
        """The first issuer (``[idp]`` when configured)."""
        return next(iter(self))

    async def verify(self, token: str, issuers: tuple[str, ...]) -> TokenInfo:
        if self._single is not None:
            return await self._single.verify(token)
        iss = unverified_iss(token)
        if iss is not None:
            issuer = self._by_iss.get(iss)
            if issuer is not None:
                return self._own(issuer, await issuer.verify(token))
            unnamed = tuple(n for n in issuers if not any(i.idp.issuer for i in self.by_name.get(n, ())))
            if not unnamed:
                raise InvalidToken("issuer_not_allowed", f"iss {iss[:100]!r} names no configured issuer")
            issuers = unnamed
        return await self._introspect(token, issuers)

    async def _introspect(self, token: str, names: tuple[str, ...]) -> TokenInfo:
        """The policy's issuers in order, until one knows the token; a failure is never "inactive"."""
        failure: IdpUnavailable | None = None
        asked = False
        for name in names:
            for issuer in self.by_name.get(name, ()):
                if issuer.introspector is None:
                    continue
                asked = True
                try:
                    info = await issuer.introspect(token)
                except IdpUnavailable as exc:
                    failure = failure or exc
                    continue
                if info.active:
                    return self._own(issuer, info)
        if failure is not None:
            raise failure
        if not asked:
            raise InvalidToken("jwt_malformed", "not a JWT with an iss, and no issuer of this policy introspects")
        return INACTIVE

    def _own(self, issuer: Issuer, info: TokenInfo) -> TokenInfo:
        """``info`` as ``issuer`` gave it, unless it names another configured issuer as its ``iss``."""
        if info.iss is not None and info.iss != issuer.idp.issuer and info.iss in self._by_iss:
            raise InvalidToken("issuer_not_allowed", f"issuer {issuer.name!r} answered for iss {info.iss[:100]!r}")
        return info

    def earliest_expiry(self) -> float:
        """When the first of the client certificates presented to the IdPs expires (Unix time; 0
        without one): the "certificate expiring" alert's figure (deploy/prometheus/)."""
        return min((w.not_after.timestamp() for i in self if (w := i.cert_watcher).not_after is not None), default=0.0)

    def readiness(self) -> str | None:
        """The first issuer's reason not to be ready (``NAME:reason`` for an issuer besides [idp])."""
        for issuer in self:
            reason = issuer.readiness()
            if reason is not None:
                return reason if issuer.name == "default" else f"{issuer.name}:{reason}"
        return None

    def start(self) -> None:
        for issuer in self:
            issuer.start()

    async def close(self) -> None:
        for issuer in self:
            await issuer.close()
