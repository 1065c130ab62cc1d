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

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sidecar.config.checks import ISSUER_NAME
from sidecar.config.declare import ConfigError
from sidecar.config.sections import ROUTE_KEYS, SECTIONS, IdpConfig, Key, PolicyConfig, RouteConfig, keys_of

DEFAULT = "default"
NAME = ISSUER_NAME  # a policy's or an issuer's name is a metrics label (a policy's a header value too)
MAX_POLICIES = 64
MAX_ROUTES = 256
MAX_ISSUERS = 16
Read = Callable[[Key, Any], Any]
T = TypeVar("T")


def named_policies(raw: Any, read: Read) -> dict[str, PolicyConfig]:
    """``[policies.NAME]`` tables, each converted and checked key by key as ``[policy]`` is."""
    return _named(raw, read, table="policies", base="policy", at_most=f"{MAX_POLICIES} named policies",
                  limit=MAX_POLICIES, make=PolicyConfig)


def named_issuers(raw: Any, read: Read) -> dict[str, IdpConfig]:
    """``[issuers.NAME]`` tables, each converted and checked key by key as ``[idp]`` is."""
    return _named(raw, read, table="issuers", base="idp", at_most=f"{MAX_ISSUERS} issuers besides [idp]",
                  limit=MAX_ISSUERS, make=IdpConfig)


def _named(raw: Any, read: Read, *, table: str, base: str, at_most: str, limit: int,
           make: Callable[..., T]) -> dict[str, T]:
    """``[TABLE.NAME]`` tables, each with exactly the keys of ``[base]``, from their declared defaults."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(table, f"must be a table of [{table}.NAME] tables")
    if len(raw) > limit:
        raise ConfigError(table, f"at most {at_most}")
    named = {}
    for name, values in raw.items():
        where = f"{table}.{name}"
        if name == DEFAULT:
            raise ConfigError(where, f"is [{base}]: name it otherwise")
        if not NAME.match(name):
            raise ConfigError(where, "a name is 1-64 of a-z 0-9 _ . - (lower case, starting alnum)")
        named[name] = make(**_values(where, values, keys_of(where, SECTIONS[base]), read))
    return named


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
