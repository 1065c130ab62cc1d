"""How a key is declared: one ``key(default, doc, bounds...)`` call on a section dataclass field.

The declaration rides on the dataclass field's metadata, so the frozen dataclasses stay the typed
values the code reads while the environment variable, the checks, their error messages and the
README table are all derived from this one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

ENV_PREFIX = "SIDECAR_"
T = TypeVar("T")
# A single-value rule beyond bounds: returns what is wrong with the value, or None.
Check = Callable[[Any], "str | None"]


class ConfigError(ValueError):
    """An invalid configuration value; the message begins with the dotted key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Spec:
    """Everything declared about one key besides its name, type and default."""

    doc: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    min_length: int | None = None  # for secrets: the value is never echoed in the error
    kind: str | None = None  # a name for the bounded range, e.g. "TCP port"
    unit: str | None = None  # shown in the table, e.g. "seconds"
    checks: tuple[Check, ...] = ()
    secret: bool = False
    readme: bool = True  # False: in docs/configuration.md only (the README stays under its size bound)
    restart: bool = False  # read once at start (ports, listeners): a reload that changes it is refused

    def problem(self, value: Any) -> str | None:
        """What is wrong with a converted value against the declared bounds, or None."""
        if value is None:
            return None
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}; got {value!r}"
        if self.min_length is not None and len(value) < self.min_length:
            return f"must be at least {self.min_length} characters"
        out_of_range = (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
        )
        if out_of_range:
            return f"must be {self.range_text()}; got {value!r}"
        for check in self.checks:
            problem = check(value)
            if problem is not None:
                return problem
        return None

    def range_text(self) -> str:
        """The declared numeric range in words ("between 0 and 5", ">= 0"); "" when unbounded."""
        if self.kind:
            return f"a {self.kind} ({_num(self.ge)}-{_num(self.le)})"
        low = f">= {_num(self.ge)}" if self.ge is not None else f"> {_num(self.gt)}" if self.gt is not None else ""
        if self.ge is not None and self.le is not None:
            return f"between {_num(self.ge)} and {_num(self.le)}"
        if self.le is not None:
            return f"{low} and <= {_num(self.le)}" if low else f"<= {_num(self.le)}"
        return low


def _num(n: float | None) -> str:
    return str(int(n)) if isinstance(n, float) and n.is_integer() else str(n)


def key(
    default: T,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[Any, ...] | None = None,
    min_length: int | None = None,
    kind: str | None = None,
    unit: str | None = None,
    checks: tuple[Check, ...] = (),
    secret: bool = False,
    readme: bool = True,
    restart: bool = False,
) -> T:
    """Declare a configuration key: its default, one line of documentation and its bounds;
    ``restart``: the key is read once at start, so only a restart changes it (a reload refuses)."""
    spec = Spec(doc, ge, gt, le, choices, min_length, kind, unit, checks, secret, readme, restart)
    metadata = {"key": spec}
    if isinstance(default, dict):  # a mutable default needs a factory; the value is a copy
        frozen = dict(default)
        return cast(T, dataclasses.field(default_factory=lambda: dict(frozen), metadata=metadata, repr=not secret))
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


def tcp_port(default: int, doc: str) -> int:
    """Declare a TCP port key (0-65535); a listening port changes only with a restart."""
    return key(default, doc, ge=0, le=65535, kind="TCP port", restart=True)


def spec_of(f: dataclasses.Field[Any]) -> Spec:
    """The declaration of a section field; every field of a section must be declared."""
    spec = f.metadata.get("key")
    if not isinstance(spec, Spec):  # pragma: no cover - a schema bug, caught by the table test
        raise TypeError(f"{f.name} is not declared with key()")
    return spec


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides ``section.key``."""
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
