"""What a revocation names, and the revocations remembered (docs/events.md).

A :class:`Selector` names cached answers: one token (its cache key), a ``jti``, a subject (``sub``),
an ``email`` (the token's ``email`` claim when kept, or its ``username``), or a ``client_id``; with
an ``iss``, only the answers whose ``iss`` it is (a Security Event Token's selectors always name
its issuer: identifiers are per issuer). A revocation purges the cached answers it
matches (through the cache's index, core/cache_index.py) and is **remembered** for
``events.remember`` seconds: a token it matches that was issued at or before the revocation
(``iat``; a token without ``iat`` counts as such) is refused when it enters the cache again, from
the IdP, from the fleet's Redis or from a locally validated JWT, none of which may know yet. A
token or ``jti`` is refused whatever its ``iat``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import Literal

from sidecar.core.token_info import TokenInfo
from sidecar.support.ttl_cache import TtlStore

Kind = Literal["key", "jti", "sub", "email", "client_id"]
KINDS: tuple[Kind, ...] = ("key", "jti", "sub", "email", "client_id")
MAX_VALUE = 1024  # characters of a selector value: longer ones name no cached token


@dataclass(frozen=True, slots=True)
class Selector:
    kind: Kind
    value: str  # the cache key in hex for "key"
    iss: str | None = None  # the issuer too: only its tokens (a SET's; an operator's sub with iss)

    def matches(self, key: bytes, info: TokenInfo) -> bool:
        """Whether the cached answer of ``key`` (``info``) is one this selector names."""
        kind, value = self.kind, self.value
        if self.iss is not None and info.iss != self.iss:
            return False
        if kind == "key":
            return key.hex() == value
        if kind == "sub":
            return info.sub == value
        if kind == "email":
            return value in emails(info)
        return (info.jti if kind == "jti" else info.client_id) == value

    def to_message(self) -> dict[str, str]:
        return {"kind": self.kind, "value": self.value, **({"iss": self.iss} if self.iss is not None else {})}

    @classmethod
    def from_message(cls, doc: object) -> Selector:
        """The selector of a purge message; ValueError when it is not one."""
        if not isinstance(doc, dict):
            raise ValueError("not a selector")
        kind, value, iss = doc.get("kind"), doc.get("value"), doc.get("iss")
        if kind not in KINDS or not isinstance(value, str) or not value or len(value) > MAX_VALUE:
            raise ValueError("not a selector")
        if iss is not None and (not isinstance(iss, str) or not iss or len(iss) > MAX_VALUE):
            raise ValueError("not a selector")
        return cls(kind, value, iss)


def emails(info: TokenInfo) -> tuple[str, ...]:
    """The addresses a token answers to: its kept ``email`` claim and its ``username``."""
    email = (info.extra or {}).get("email")
    return tuple(v for v in (email, info.username) if v and "@" in v)


def values(info: TokenInfo) -> Iterator[tuple[Kind, str]]:
    """Every (kind, value) a selector could name this token by (the index's entries)."""
    for kind, value in (("jti", info.jti), ("sub", info.sub), ("client_id", info.client_id)):
        if value:
            yield kind, value  # type: ignore[misc]
    for email in emails(info):
        yield "email", email


class Revocations:
    """Selectors revoked at a time, each remembered for ``remember`` seconds (bounded, FIFO); one
    value revoked by two issuers is remembered twice, once for each."""

    __slots__ = ("_remember", "_store", "_timer")

    def __init__(self, max_entries: int, remember: float, timer: Callable[[], float]) -> None:
        self._remember = remember
        self._store: TtlStore[tuple[Kind, str, str | None], tuple[float, float]] = TtlStore(
            max_entries, itemgetter(1), timer)  # (kind, value, iss) → (at, deadline)
        self._timer = timer

    def __len__(self) -> int:
        return len(self._store)

    def add(self, selector: Selector, at: float) -> None:
        """Remember ``selector`` as revoked at wall-clock ``at`` (the later of two for one selector)."""
        key = (selector.kind, selector.value, selector.iss)
        kept = self._store.get(key)
        if kept is not None and kept[0] >= at:
            return
        self._store[key] = (at, self._timer() + self._remember)

    def revoked(self, key: bytes, info: TokenInfo) -> bool:
        """Whether a revocation remembered names this token (issued at or before it, but a token
        or a jti whatever its ``iat``), by any issuer or by the token's own. A few dict lookups: only
        a filling answer pays."""
        store = self._store
        if not len(store):
            return False
        scopes = (None,) if info.iss is None else (None, info.iss)
        hexed = key.hex()
        if any(store.get(("key", hexed, iss)) is not None for iss in scopes):
            return True
        for kind, value in values(info):
            for iss in scopes:
                kept = store.get((kind, value, iss))
                if kept is not None and (kind == "jti" or info.iat is None or info.iat <= kept[0]):
                    return True
        return False
