"""The shipped routes examples stay consistent with the snippets they copy (no front runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import load

pytestmark = pytest.mark.routes
NGINX = Path(__file__).resolve().parents[2] / "deploy" / "nginx"


def directives(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_credentials_snippet_is_the_protect_snippet_without_its_auth_request() -> None:
    protect = directives(NGINX / "snippets" / "sidecar-protect.conf")
    assert protect[0] == "auth_request /_sidecar_check;"
    assert directives(NGINX / "snippets" / "sidecar-credentials.conf") == protect[1:]


def test_the_named_check_location_is_the_default_one_but_for_the_policy_header() -> None:
    default = directives(NGINX / "snippets" / "sidecar-check.conf")
    named = directives(NGINX / "snippets" / "sidecar-check-policy.conf")
    assert '    proxy_set_header X-Sidecar-Policy "";' in default  # a client's copy never reaches the sidecar
    assert [line for line in default if "X-Sidecar-Policy" not in line][1:] == \
        [line for line in named if "X-Sidecar-Policy" not in line][1:]
    assert "    proxy_set_header X-Sidecar-Policy $sidecar_policy;" in named


def test_every_policy_an_nginx_location_names_is_configured() -> None:
    files = {f"SIDECAR_IDP__{name}": __file__ for name in ("CERT_FILE", "KEY_FILE", "CA_FILE")}  # exist here
    config = load(NGINX / "sidecar-routes.toml", env=files)
    named = [line.split("/_sidecar_check/")[1].rstrip(";") for line in directives(NGINX / "routes.conf.template")
             if "auth_request /_sidecar_check/" in line]
    assert named == ["orders_read", "admin", "health"]
    assert set(named) == set(config.policies)
