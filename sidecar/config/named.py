"""Named policies (``[policies.NAME]``), route rules (``[[routes]]``) and issuers besides ``[idp]``
(``[issuers.NAME]``): read from the file only.

A named policy takes exactly the keys of ``[policy]`` (declared once, on
:class:`~sidecar.config.sections.PolicyConfig`), starting from their declared defaults, not from
``[policy]``: what a route accepts is written next to it. A rule takes the keys of
:class:`~sidecar.config.sections.RouteConfig`. An issuer takes exactly the keys of ``[idp]``, from
their declared defaults: everything that belongs to it is declared in its table. Environment
variables override ``[policy]`` and ``[idp]`` only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.config.checks import ISSUER_NAME
from sidecar.config.declare import ConfigError
from sidecar.config.sections import ROUTE_KEYS, SECTIONS, IdpConfig, Key, PolicyConfig, RouteConfig, keys_of

DEFAULT = "default"
# A policy name is a metrics label and a header value: short, plain, lower case.
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")
MAX_POLICIES = 64
MAX_ROUTES = 256
MAX_ISSUERS = 16
Read = Callable[[Key, Any], Any]


def named_policies(raw: Any, read: Read) -> dict[str, PolicyConfig]:
    """``[policies.NAME]`` tables, each converted and checked key by key as ``[policy]`` is."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError("policies", "must be a table of [policies.NAME] tables")
    if len(raw) > MAX_POLICIES:
        raise ConfigError("policies", f"at most {MAX_POLICIES} named policies")
    policies = {}
    for name, table in raw.items():
        if name == DEFAULT:
            raise ConfigError(f"policies.{name}", "is [policy]: name it otherwise")
        if not NAME.match(name):
            raise ConfigError(f"policies.{name}", "a name is 1-64 of a-z 0-9 _ . - (lower case, starting alnum)")
        keys = keys_of(f"policies.{name}", SECTIONS["policy"])
        policies[name] = PolicyConfig(**_values(f"policies.{name}", table, keys, read))
    return policies


def named_issuers(raw: Any, read: Read) -> dict[str, IdpConfig]:
    """``[issuers.NAME]`` tables, each converted and checked key by key as ``[idp]`` is."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError("issuers", "must be a table of [issuers.NAME] tables")
    if len(raw) > MAX_ISSUERS:
        raise ConfigError("issuers", f"at most {MAX_ISSUERS} issuers besides [idp]")
    issuers = {}
    for name, table in raw.items():
        if name == DEFAULT:
            raise ConfigError(f"issuers.{name}", "is [idp]: name it otherwise")
        if not ISSUER_NAME.match(name):
            raise ConfigError(f"issuers.{name}", "a name is 1-64 of a-z 0-9 _ . - (lower case, starting alnum)")
        keys = keys_of(f"issuers.{name}", SECTIONS["idp"])
        issuers[name] = IdpConfig(**_values(f"issuers.{name}", table, keys, read))
    return issuers


def routes(raw: Any, read: Read) -> tuple[RouteConfig, ...]:
    """``[[routes]]``: the rules in file order (the first that matches wins)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("routes", "must be an array of [[routes]] tables")
    if len(raw) > MAX_ROUTES:
        raise ConfigError("routes", f"at most {MAX_ROUTES} rules")
    found = []
    for index, table in enumerate(raw):
        keys = tuple(Key(f"routes[{index}]", k.name, k.type, k.default, k.spec) for k in ROUTE_KEYS)
        found.append(RouteConfig(**_values(f"routes[{index}]", table, keys, read)))
    return tuple(found)


def _values(where: str, table: Any, keys: tuple[Key, ...], read: Read) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(where, "must be a table")
    declared = {k.name: k for k in keys}
    for unknown in (k for k in table if k not in declared):
        raise ConfigError(f"{where}.{unknown}", "unknown key")
    return {name: read(declared[name], value) for name, value in table.items()}
