"""Every configured policy, compiled once, and the verdict of a cached token under each.

The cache holds one :class:`~sidecar.core.entry.Entry` per token whatever the policy: the IdP is
asked once per token. Its ``denial``, ``scope_denial`` and ``headers`` are the default policy's
(computed at fill time). Under a named policy, :meth:`Policies.view` computes the same three for
that policy the first time a request under it meets the token and keeps them on the entry
(``Entry.views``, at most :data:`MAX_VIEWS` per token), so a cache hit under any policy does no
policy work beyond the time window and the binding. A token used under more named policies than
that is judged afresh under the others on each request (correct, only slower).
"""

from __future__ import annotations

from sidecar.config import Config, PolicyConfig
from sidecar.core.entry import Entry
from sidecar.core.headers import HeaderBuilder
from sidecar.core.policy import Policy

MAX_VIEWS = 8  # named-policy verdicts kept per cached token


class Policies:
    __slots__ = ("_shared", "builders", "default", "named")

    def __init__(self, config: Config) -> None:
        every = [("default", config.policy), *config.policies.items()]
        # Every allow carries every claim header any policy sends (empty where this policy sends none),
        # so a client-sent copy never reaches the upstream through a proxy that keeps unanswered headers.
        claims = list(dict.fromkeys([*config.response.claims.items(),
                                     *(pair for _, p in every for pair in p.claims.items())]))
        dpop = config.dpop.enabled
        several = len(config.every_issuer) > 1
        first = config.policy_issuers(config.policy)

        def policy(p: PolicyConfig, name: str = "default", index: int = 0) -> Policy:
            issuers = config.policy_issuers(p)
            route = b"" if issuers == first else "\x00".join(("", *issuers)).encode()
            return Policy(p, name, index, dpop=dpop, issuers=issuers, several=several, route=route)

        self.default = policy(config.policy)
        self.named = {name: policy(p, name, index) for index, (name, p) in enumerate(every) if index}
        # Every allow carries the identity header when any policy sends the token (empty elsewhere).
        identity = config.identity.header if any(p.identity for _, p in every) else None
        self.builders: list[HeaderBuilder] = [
            HeaderBuilder(config.response, claims, {*config.response.claims.items(), *p.claims.items()},
                          binding=p.binding, dpop=dpop, identity=identity)
            for _, p in every
        ]
        # A policy without claims or an identity token of its own (and the same binding: cnf-method
        # depends on it) sends exactly the default's headers: share them.
        plain = not config.policy.claims and not config.policy.identity
        self._shared = [plain and not p.claims and not p.identity and p.binding == config.policy.binding
                        for _, p in every]

    @property
    def headers(self) -> HeaderBuilder:
        """The default policy's header builder (the one the cache fill uses)."""
        return self.builders[0]

    def all(self) -> list[Policy]:
        return [self.default, *self.named.values()]

    def view(self, entry: Entry, policy: Policy) -> Entry:
        """``entry`` as seen by ``policy``: computed once per (token, policy), kept on the entry."""
        index = policy.index
        if not index:
            return entry
        views = entry.views
        if views is None:
            views = entry.views = {}
        view = views.get(index)
        if view is None:
            info = entry.info
            headers = entry.headers if self._shared[index] else self.builders[index].build(info)
            view = Entry(info=info, headers=headers, denial=policy.static_denial(info),
                         scope_denial=policy.scope_denial(info), token_hash=entry.token_hash, expires=entry.expires,
                         identity_due=policy.identity_due, edge=entry.edge)
            if len(views) < MAX_VIEWS:  # memory per token stays bounded; past it, computed per request
                views[index] = view
        return view
