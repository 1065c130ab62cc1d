"""The path-bypass suite: ``/admin`` is never reached under the laxer rule for ``/``.

Every attempt is either matched by the ``/admin`` rule (the upstream would serve ``/admin``) or
denied as ``path_invalid`` (no single normalized form); a request for another path may fall under
``/``. The table lists what an upstream would act on, and why.
"""

from __future__ import annotations

import pytest

from sidecar.config import PolicyConfig, RouteConfig, RoutingConfig
from sidecar.core.extract import TrustedProxies
from sidecar.core.policy import Policy
from sidecar.core.request import CheckRequest
from sidecar.core.routes import Router, UnsafePath, normalize_path

pytestmark = pytest.mark.routes

ADMIN, PUBLIC, INVALID = "admin", "public", "path_invalid"

# (attempt, expected with a case-sensitive upstream)
ATTEMPTS = [
    ("/admin", ADMIN),
    ("/admin/", ADMIN),
    ("/admin/users?x=1", ADMIN),
    ("/admin#frag", ADMIN),
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
    ("/admin;jsessionid=1", ADMIN),          # Tomcat/Spring drop ;parameters
    ("/admin;/users", ADMIN),
    ("/public/..;/admin", ADMIN),            # Tomcat: ..;/ is ..
    ("/public;x=1/../admin", ADMIN),
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


def router(case_sensitive: bool = True) -> Router:
    admin = Policy(PolicyConfig(required_scopes=("admin",)), "admin", 1)
    public = Policy(PolicyConfig(binding="off"), "public", 2)
    routes = (RouteConfig(path="/admin", policy="admin"), RouteConfig(path="/", policy="public"))
    return Router(Policy(PolicyConfig()), {"admin": admin, "public": public}, routes,
                  RoutingConfig(case_sensitive=case_sensitive), TrustedProxies(["127.0.0.1/32"]))


def chosen(r: Router, path: str) -> str:
    selected = r.select(CheckRequest([], (), "127.0.0.1", method="GET", path=path))
    return selected.name if isinstance(selected, Policy) else selected.reason


@pytest.mark.parametrize(("attempt", "expected"), ATTEMPTS)
def test_admin_is_never_reached_under_the_laxer_rule(attempt: str, expected: str) -> None:
    r = router()
    assert chosen(r, attempt) == expected
    assert chosen(r, attempt) == expected  # the memoized answer is the same


@pytest.mark.parametrize("attempt", ["/ADMIN", "/Admin/users", "/%41dmin", "/public/../ADMIN", "/aDmIn;x"])
def test_with_a_case_insensitive_upstream_every_case_of_admin_is_admin(attempt: str) -> None:
    assert chosen(router(case_sensitive=False), attempt) == ADMIN


def test_non_ascii_is_refused_when_case_is_ignored() -> None:
    assert chosen(router(case_sensitive=False), "/%c3%a9t%c3%a9") == INVALID
    assert chosen(router(case_sensitive=True), "/%c3%a9t%c3%a9") == PUBLIC


def test_normalization_resolves_dots_drops_parameters_and_the_trailing_slash() -> None:
    assert normalize_path("/a/./b/../c;p=1//d/?q#f") == "/a/c/d"
    assert normalize_path("/") == "/" and normalize_path("/.") == "/"
    with pytest.raises(UnsafePath):
        normalize_path("/a/" + "x" * 9000)


def test_the_memo_holds_answers_for_distinct_paths_within_its_bound() -> None:
    r = router()
    for i in range(10_000):
        assert chosen(r, f"/public/{i}") == PUBLIC
    assert len(r._memo) <= RoutingConfig().memo_entries
