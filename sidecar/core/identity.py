"""Stage 5b: the identity token, a short JWT the sidecar signs for the upstream on allow, so that
an upstream can verify who called instead of trusting the network path (docs/identity.md).

It states what the sidecar verified: ``iss`` (``identity.issuer``), ``aud`` (the policy's
``identity_audience``), ``sub``, ``client_id``, ``scope``, ``cnf`` (the binding the policy checked:
``jkt`` for a DPoP-bound token, ``x5t#S256`` for a certificate-bound one unless the policy's
binding is ``off``), ``iat``, ``exp`` (``identity.ttl``, never past the access token's ``exp``),
``policy`` (the policy's name) and the policy's ``identity_claims``; in ``identity.header``.

It is signed once per cached entry and policy, at the first allow, and kept in the entry's
credential headers; the next allow after half its lifetime signs it again (``Entry.identity_due``).
A cache hit in between compares one float and signs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jwt

from sidecar.config import IdentityConfig
from sidecar.core.entry import Entry
from sidecar.core.headers import HeaderBuilder
from sidecar.core.identity_keys import SigningKeys
from sidecar.core.policy import Policy

# RFC 8725 §3.11 explicit typing: no other JWT of this issuer can pass for an identity token.
TYP = "identity+jwt"


class IdentityTokens:
    """Signs the identity token of a cached entry under a policy."""

    __slots__ = ("_builders", "_issuer", "_ttl", "keys")

    def __init__(self, config: IdentityConfig, keys: SigningKeys, builders: Sequence[HeaderBuilder]) -> None:
        """``builders``: the header builder of each policy, by policy index."""
        self._issuer = config.issuer
        self._ttl = config.ttl
        self._builders = builders
        self.keys = keys

    def renew(self, entry: Entry, policy: Policy, now: float) -> None:
        """Sign ``entry``'s identity token under ``policy`` (wall-clock ``now``) into its headers."""
        info = entry.info
        iat = int(now)
        exp = iat + self._ttl if info.exp is None else min(iat + self._ttl, info.exp)
        claims: dict[str, Any] = {"iss": self._issuer, "aud": policy.identity_audience, "iat": iat, "exp": exp,
                                  "policy": policy.name}
        for name, value in (("sub", info.sub), ("client_id", info.client_id), ("scope", info.scope)):
            if value is not None:
                claims[name] = value
        if info.cnf_jkt is not None:  # a DPoP proof was verified (decision.py: always, for cnf.jkt)
            claims["cnf"] = {"jkt": info.cnf_jkt}
        elif info.cnf_x5t_s256 is not None and policy.binding != "off":  # the certificate was compared
            claims["cnf"] = {"x5t#S256": info.cnf_x5t_s256}
        extra = info.extra or {}
        for name in policy.identity_claims:
            if name in extra:
                claims[name] = extra[name]
        key = self.keys.signing
        token = jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": TYP})
        entry.headers = self._builders[policy.index].with_identity(entry.headers, token)
        # Signed again when half its life is gone, unless it ends with the access token (and the entry).
        entry.identity_due = exp - self._ttl / 2 if info.exp is None or exp < info.exp else math.inf
