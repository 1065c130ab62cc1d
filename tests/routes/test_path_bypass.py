"""The path-bypass suite: ``/admin`` is never reached under the laxer rule for ``/``, nor under a
laxer policy the proxy names.

Every attempt is either matched by the ``/admin`` rule (the upstream would serve ``/admin``) or
denied as ``path_invalid`` (no single normalized form); a request for another path may fall under
``/``. The table lists what an upstream would act on, and why. The same one check (core/target.py)
runs whichever way the policy is chosen: a proxy that names ``public`` for a location it matched
on its own reading of the path gets every ambiguous attempt refused as well.
"""

from __future__ import annotations

import pytest

from sidecar.config import PolicyConfig, RouteConfig, RoutingConfig
from sidecar.core.extract import TrustedProxies
from sidecar.core.policy import Policy
from sidecar.core.request import CheckRequest
from sidecar.core.routes import Router
from sidecar.core.target import RequestTarget, UnsafePath, normalize_path

pytestmark = pytest.mark.routes

ADMIN, PUBLIC, INVALID = "admin", "public", "path_invalid"

# (attempt, expected with a case-sensitive upstream)
ATTEMPTS = [
    ("/admin", ADMIN),
    ("/admin/", ADMIN),
    ("/admin/users?x=1", ADMIN),
    ("/admin#frag", INVALID),                # a target carries no fragment: nginx cuts the path at #,
    ("/public#/../admin", INVALID),          # sends it upstream as it is, where /public#/.. is a segment
    ("/public?#/../admin", INVALID),
    ("//admin", ADMIN),                      # nginx merge_slashes; many servers collapse //
    ("///admin//users", ADMIN),
    ("/./admin", ADMIN),
    ("/admin/.", ADMIN),
    ("/public/../admin", ADMIN),             # RFC 3986 §5.2.4
    ("/public/%2e%2e/admin", ADMIN),         # encoded dot segment
    ("/public/%2E%2E/admin", ADMIN),
    ("/public/.%2e/admin", ADMIN),
    ("/public/%2e./admin", ADMIN),
    ("/public/%2e/../admin", ADMIN),
    ("/%61dmin", ADMIN),                     # encoded letter
    ("/adm%69n/x", ADMIN),
    ("/admin;jsessionid=1", INVALID),        # Tomcat/Spring drop ;parameters, nginx and Envoy keep them
    ("/admin;/users", INVALID),
    ("/public/..;/admin", INVALID),          # Tomcat: ..;/ is .., nginx: a segment named ..;
    ("/public;x=1/../admin", INVALID),
    ("/api/x/..;/../admin/users", INVALID),  # issue 22: nginx location /api, Tomcat /admin/users
    ("/api/%252e%252e/admin/users", INVALID),  # issue 22: an upstream that decodes twice
    ("/api/..\\admin/users", INVALID),       # issue 22: Windows-style normalizers
    ("/api/\u2025/admin", INVALID),          # issue 22: NFKC turns the two-dot leader into ..
    ("/api/%e2%80%a5/admin", INVALID),
    ("/public/x/../../admin", ADMIN),
    ("/ADMIN", PUBLIC),                      # case-sensitive upstream: another path
    ("/admin%2fusers", INVALID),             # encoded separator: servers disagree
    ("/public%2f..%2fadmin", INVALID),
    ("/public/..%2fadmin", INVALID),
    ("/public/%252e%252e/admin", INVALID),   # double encoding
    ("/%2561dmin", INVALID),
    ("/admin%3b/x", INVALID),                # encoded ;
    ("/public\\..\\admin", INVALID),         # backslash (IIS, some routers: /)
    ("/public/..%5cadmin", INVALID),
    ("/admin%00", INVALID),                  # NUL
    ("/admin%09", INVALID),                  # tab
    ("/admin%0a/x", INVALID),
    ("/admin.", INVALID),                    # Windows drops a final dot
    ("/admin%20", INVALID),                  # ... and a final space
    ("/%c0%ae%c0%ae/admin", INVALID),        # overlong UTF-8 dots
    ("/public/%ef%bc%8e%ef%bc%8e/admin", INVALID),  # full-width dots (NFKC: ..)
    ("/%ef%bd%81dmin", INVALID),             # full-width a
    ("/adm\u0131n", INVALID),                # raw non-ASCII in the target
    ("/../admin", INVALID),                  # above the root
    ("/%2e%2e/admin", INVALID),
    ("http://api.example/admin", INVALID),   # absolute form: not what the proxies send
    ("admin", INVALID),
    ("", INVALID),
    ("/admin%", INVALID),                    # malformed percent-encoding
    ("/admin%zz", INVALID),
    ("/public/admin", PUBLIC),
    ("/public?/admin", PUBLIC),              # the query is not the path
    ("/administrator", PUBLIC),              # prefix rules match whole segments
    ("/admin/..", PUBLIC),                   # the upstream serves /
]


class Stages:
    """The target stage and the router of one configuration, run as the decision runs them."""

    def __init__(self, case_sensitive: bool = True, rules: bool = True) -> None:
        admin = Policy(PolicyConfig(required_scopes=("admin",)), "admin", 1)
        public = Policy(PolicyConfig(binding="off"), "public", 2)
        routes = (RouteConfig(path="/admin", policy="admin"), RouteConfig(path="/", policy="public")) if rules else ()
        config, trusted = RoutingConfig(case_sensitive=case_sensitive), TrustedProxies(["127.0.0.1/32"])
        self.target = RequestTarget(config, trusted, choosing=True)
        self.router = Router(Policy(PolicyConfig()), {"admin": admin, "public": public}, routes, config, trusted)

    def select(self, request: CheckRequest) -> str:
        unsafe = self.target.check(request)
        if unsafe is not None:
            return unsafe.reason
        selected = self.router.select(request)
        return selected.name if isinstance(selected, Policy) else selected.reason


def router(case_sensitive: bool = True) -> Stages:
    return Stages(case_sensitive)


def chosen(r: Stages, path: str, policy: str | None = None) -> str:
    return r.select(CheckRequest([], (), "127.0.0.1", method="GET", path=path, policy=policy))


@pytest.mark.parametrize(("attempt", "expected"), ATTEMPTS)
def test_admin_is_never_reached_under_the_laxer_rule(attempt: str, expected: str) -> None:
    r = router()
    assert chosen(r, attempt) == expected
    assert chosen(r, attempt) == expected  # the memoized answer is the same


@pytest.mark.parametrize(("attempt", "expected"), ATTEMPTS)
def test_a_policy_the_proxy_names_gets_the_same_path_check(attempt: str, expected: str) -> None:
    """nginx picks ``location /public`` (named policy public) on its own reading of the path; the
    upstream acts on the raw target: any attempt the rules style refuses is refused here too."""
    named = Stages(rules=False)
    assert chosen(named, attempt, policy="public") == (INVALID if expected == INVALID else PUBLIC)


@pytest.mark.parametrize("attempt", ["/ADMIN", "/Admin/users", "/%41dmin", "/public/../ADMIN", "/aDmIn/x"])
def test_with_a_case_insensitive_upstream_every_case_of_admin_is_admin(attempt: str) -> None:
    assert chosen(router(case_sensitive=False), attempt) == ADMIN


def test_non_ascii_is_refused_when_case_is_ignored() -> None:
    assert chosen(router(case_sensitive=False), "/%c3%a9t%c3%a9") == INVALID
    assert chosen(router(case_sensitive=True), "/%c3%a9t%c3%a9") == PUBLIC


def test_normalization_resolves_dots_drops_parameters_and_the_trailing_slash() -> None:
    assert normalize_path("/a/./b/../c//d/?q;x") == "/a/c/d"
    with pytest.raises(UnsafePath):
        normalize_path("/a/./b/../c//d/?q;x#f")  # no request target carries a fragment
    assert normalize_path("/") == "/" and normalize_path("/.") == "/"
    with pytest.raises(UnsafePath):
        normalize_path("/a/" + "x" * 9000)


def test_the_memo_holds_answers_for_distinct_paths_within_its_bound() -> None:
    r = router()
    for i in range(10_000):
        assert chosen(r, f"/public/{i}") == PUBLIC
    assert len(r.router._memo) <= RoutingConfig().memo_entries
    assert len(r.target._paths) <= RoutingConfig().memo_entries
