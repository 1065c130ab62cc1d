"""Reading the configuration: a TOML file plus environment overrides, converted and checked per key.

Environment values win over the file. One rule for lists and maps in a variable: a value that
starts with ``[`` (``{`` for a map) is JSON and must be a list (an object) of strings; any other
value is comma-separated (``a, b``; a map ``k=v, k2=v2``), and an item holding a quote or a
bracket is refused rather than kept as written (``"a","b"`` without brackets would otherwise
become the values ``"a"`` and ``"b"``, quotes included). An empty variable unsets an optional key.
A ``SIDECAR_*`` variable that names no key is refused like an unknown key in the file, with the
nearest known name; only :data:`OTHER_VARIABLES` are not keys. Each value is converted by its
declared type and checked against its declared bounds as it is read, then the cross-field rules run.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from sidecar.config.declare import ENV_PREFIX, ConfigError
from sidecar.config.named import named_issuers, named_policies, routes
from sidecar.config.rules import validate
from sidecar.config.sections import KEYS, SECTIONS, Config, Key


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the file (if any), apply environment overrides, convert and validate."""
    env = os.environ if env is None else env
    path = path or env.get(f"{ENV_PREFIX}CONFIG") or None
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:  # a ValueError, not an OSError: it escaped as a traceback
            raise ConfigError("config", f"{path} is not UTF-8 (byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from exc
    return from_mapping(raw, env)


# SIDECAR_* variables that are not keys: the configuration file, the demo's IdP port, and the
# sidecar's address that the proxies' files in deploy/ read (Caddy, HAProxy, Traefik, nginx), which a
# shared environment may also hand to the sidecar.
OTHER_VARIABLES = frozenset({f"{ENV_PREFIX}CONFIG", f"{ENV_PREFIX}DEMO_IDP_PORT", f"{ENV_PREFIX}ADDR"})


def check_variables(env: Mapping[str, str]) -> None:
    """Refuse a ``SIDECAR_*`` variable that names no key (``SIDECAR_IDP__ISSUR``, ``SIDECAR_IDP_ISSUER``)."""
    known = {k.env for k in KEYS} | OTHER_VARIABLES
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise ConfigError(name, f"unknown environment variable (no such key){hint}")


def from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    env = env or {}
    check_variables(env)
    for name in raw:
        if name not in SECTIONS and name not in ("policies", "routes", "issuers"):
            raise ConfigError(name, "unknown section")
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for name in SECTIONS:
        given = raw.get(name, {})
        if not isinstance(given, Mapping):
            raise ConfigError(name, "must be a table")
        declared = {k.name for k in KEYS if k.section == name}
        for unknown in (k for k in given if k not in declared):
            raise ConfigError(f"{name}.{unknown}", "unknown key")
    for k in KEYS:
        given = raw.get(k.section, {})
        if (env_value := env.get(k.env)) is not None:
            values[k.section][k.name] = _read(k, env_value, from_env=True)
        elif k.name in given:
            values[k.section][k.name] = _read(k, given[k.name], from_env=False)
    def read(k: Key, value: Any) -> Any:
        return _read(k, value, from_env=False)

    config = Config(**{name: cls(**values[name]) for name, cls in SECTIONS.items()},
                    policies=named_policies(raw.get("policies"), read), routes=routes(raw.get("routes"), read),
                    issuers=named_issuers(raw.get("issuers"), read))
    validate(config)
    return config


def restart_changes(running: Config, new: Config) -> list[str]:
    """The keys declared ``restart`` whose value differs: a reload that changes one is refused."""
    return [k.dotted for k in KEYS if k.spec.restart
            and getattr(getattr(running, k.section), k.name) != getattr(getattr(new, k.section), k.name)]


def _read(k: Key, value: Any, *, from_env: bool) -> Any:
    """Convert one value to its declared type and check it against its declared bounds."""
    converted = _convert(k.dotted, k.type, value, from_env=from_env)
    problem = k.spec.problem(converted)
    if problem is not None:
        raise ConfigError(k.dotted, problem)
    return converted


def _convert(key: str, tp: Any, value: Any, *, from_env: bool) -> Any:
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in get_args(tp) if a is not type(None))
        if value is None or (from_env and value == ""):
            return None
        return _convert(key, inner, value, from_env=from_env)
    if origin is Literal:
        return value  # checked against the declared choices
    if origin is tuple:
        items = _env_list(key, value) if from_env else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(key, "must be a list of strings")
        return tuple(items)
    if origin is Mapping:
        return _convert_map(key, value, from_env=from_env)
    if tp is bool:
        if from_env:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(key, f"must be true or false; got {value!r}")
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(key, "must be true or false")
        return value
    if tp in (int, float):
        return _convert_number(key, tp, value, from_env=from_env)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, "must be a string")
        return value
    raise ConfigError(key, f"unsupported type {tp!r}")  # pragma: no cover - schema bug


def _convert_number(key: str, tp: type[int] | type[float], value: Any, *, from_env: bool) -> int | float:
    try:
        number = tp(value) if from_env else value
    except ValueError:
        raise ConfigError(key, f"must be a number; got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ConfigError(key, "must be a number")
    if tp is int and not isinstance(number, int):
        raise ConfigError(key, "must be a whole number")
    if not math.isfinite(number):  # TOML and float() accept nan and inf; nan passes every "<" check
        raise ConfigError(key, "must be a finite number")
    return tp(number)


def _env_list(key: str, value: str) -> list[str]:
    """A list in a variable: a JSON list of strings, or comma-separated plain items."""
    if value.lstrip().startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            raise ConfigError(key, f"starts with [ but is not a JSON list: {value[:80]!r}") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(key, "must be a JSON list of strings")
        return [i.strip() for i in items if i.strip()]
    return _plain_items(key, value)


def _plain_items(key: str, value: str) -> list[str]:
    items = [s.strip() for s in value.split(",") if s.strip()]
    bad = next((i for i in items if any(c in i for c in "\"'[]{}")), None)
    if bad is not None:
        raise ConfigError(key, f"{bad!r}: quotes and brackets are not part of a comma-separated value; write "
                               'a,b or a JSON list ["a","b"]')
    return items


def _convert_map(key: str, value: Any, *, from_env: bool) -> dict[str, str]:
    if from_env and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(key, f"starts with {{ but is not a JSON object: {value[:80]!r}") from None
        from_env = False  # checked below as a table
    if from_env:
        pairs = _plain_items(key, value)
        result: dict[str, str] = {}
        for pair in pairs:
            k, sep, v = pair.partition("=")
            if not sep or not k.strip() or not v.strip():
                raise ConfigError(key, f"expected key=value pairs; got {pair!r}")
            result[k.strip()] = v.strip()
        return result
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(key, "must be a table of strings")
    return dict(value)
