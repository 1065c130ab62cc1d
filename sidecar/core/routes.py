"""Which policy a request falls under: the proxy's choice, else the first matching rule.

The proxy names a policy (nginx: ``routing.policy_header`` set per location; Envoy gRPC: the
route's ``context_extensions["policy"]``); only a trusted proxy's choice counts, and a name that
is not configured denies (``policy_unknown``, fail closed). Without a name, ``[[routes]]`` rules
match the original request's method, host and path in file order (Oathkeeper's access rules);
when rules exist and none matches, the request is denied (``route_unmatched``). Without rules,
the default policy (``[policy]``) applies, as before routes existed.

The path is matched in the form the upstream acts on (core/target.py's :func:`normalize_path`);
the request reaches the router only once the target stage found that form unambiguous.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from sidecar.config import RouteConfig, RoutingConfig
from sidecar.core.errors import Denial, InvalidRequest, RouteDenied
from sidecar.core.extract import TrustedProxies
from sidecar.core.policy import Policy
from sidecar.core.request import CheckRequest
from sidecar.core.target import normalize_path, plain_host
from sidecar.support.memo import Memo, text_size

_METHOD = re.compile(r"[A-Z]{1,20}")


def _glob(pattern: str) -> str:
    """``*``: within one segment; a ``**`` segment: any number of whole segments."""
    if not pattern.strip("/"):
        return ""  # the root: matched as "" (see Rule.matches)
    out = []
    for segment in pattern.strip("/").split("/"):
        if segment == "**":
            out.append("(?:/[^/]+)*")
        else:
            out.append("/" + "[^/]*".join(re.escape(part) for part in segment.split("*")))
    return "".join(out)


class Rule:
    __slots__ = ("_exact", "_glob", "_prefix", "_regex", "hosts", "methods", "policy")

    def __init__(self, route: RouteConfig, policy: Policy, case_sensitive: bool) -> None:
        self.policy = policy
        self.methods = frozenset(route.methods)
        self.hosts = tuple(route.hosts)
        path = route.path if case_sensitive else route.path.lower()
        path = path.rstrip("/") or "/"
        self._exact = path if route.match == "exact" else None
        self._prefix = path if route.match == "prefix" else None
        flags = 0 if case_sensitive else re.IGNORECASE
        pattern = route.path if route.match == "regex" else _glob(path) if route.match == "glob" else None
        self._glob = route.match == "glob"
        self._regex = None if pattern is None else re.compile(pattern, flags)

    def matches(self, method: str, host: str | None, path: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.hosts and not (host and any(_host_matches(h, host) for h in self.hosts)):
            return False
        if self._prefix is not None:
            p = self._prefix
            return p == "/" or path == p or path.startswith(p + "/")
        if self._exact is not None:
            return path == self._exact
        if self._regex is None:
            return False
        return self._regex.fullmatch("" if self._glob and path == "/" else path) is not None


def _host_matches(pattern: str, host: str) -> bool:
    return host.endswith(pattern[1:]) if pattern.startswith("*.") else host == pattern


Selected = Policy | Denial


class Router:
    """Chooses the policy of each request; answers for (method, host, path) are memoized."""

    __slots__ = ("_by_name", "_case_sensitive", "_default", "_hosts", "_memo", "_rules", "_trusted")

    def __init__(self, default: Policy, named: Mapping[str, Policy], routes: Sequence[RouteConfig],
                 config: RoutingConfig, trusted: TrustedProxies) -> None:
        self._default = default
        self._trusted = trusted
        self._by_name = {"default": default, **named}
        self._case_sensitive = config.case_sensitive
        self._rules = tuple(Rule(r, self._by_name[r.policy], config.case_sensitive) for r in routes)
        self._hosts = any(r.hosts for r in self._rules)  # the host is part of the memo key only then
        self._memo: Memo[tuple[str | None, str | None, str], Selected] = Memo(
            config.memo_entries, max_bytes=1 << 22, size_of=lambda key, _: text_size(key))

    def select(self, request: CheckRequest) -> Selected:
        """The policy for ``request``, or the denial that stands for it. The named policy and the
        original request count only from a trusted proxy."""
        name = request.policy
        if not name and not self._rules:
            return self._default  # no choice to make: the peer need not even be looked up
        trusted = request.peer in self._trusted
        if name and trusted:
            found = self._by_name.get(name)
            if found is None:
                return RouteDenied("policy_unknown", f"the proxy named policy {name[:64]!r}, which is not configured")
            return found
        if not self._rules:
            return self._default
        path = request.path if trusted else None
        if path is None:
            return RouteDenied("route_unmatched", "rules need the original path from a trusted proxy")
        key = (request.method, request.host if self._hosts else None, path)
        selected = self._memo.get(key)
        if selected is None:
            selected = self._memo.put(key, self._match(*key))
        return selected

    def _match(self, method: str | None, host: str | None, target: str) -> Selected:
        if method is None or not _METHOD.fullmatch(method):
            return InvalidRequest("path_invalid", "no upper-case original method")
        path = normalize_path(target, case_sensitive=self._case_sensitive)  # safe: core/target.py judged it
        name = None
        if self._hosts:  # a host the upstream may read as another rule's never falls through to a later rule
            name = plain_host(host)
            if name is None:
                return InvalidRequest("path_invalid", f"host rules need a plain original host: {str(host)[:64]!r}")
        for rule in self._rules:
            if rule.matches(method, name, path):
                return rule.policy
        return RouteDenied("route_unmatched", "no rule matches the original request")
