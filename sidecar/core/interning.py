"""One copy of the values that many cached tokens share (memory per cached token).

Tokens of one deployment carry a handful of issuers, clients, scope strings, audiences and
certificate thumbprints; parsed from JSON, each token would hold its own copies (a ``frozenset``
of scopes alone is 216 bytes). At cache fill the shared fields of a :class:`TokenInfo` are
replaced by the first equal value seen. The memo is bounded: when full it starts over, so a
flood of distinct values costs at most ``max_values`` references.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import TypeVar

from sidecar.core.token_info import TokenInfo

T = TypeVar("T", bound=Hashable)


class Interner:
    __slots__ = ("_max", "_memo")

    def __init__(self, max_values: int = 65536) -> None:
        self._max = max_values
        self._memo: dict[Hashable, Hashable] = {}

    def __len__(self) -> int:
        return len(self._memo)

    def value(self, value: T) -> T:
        if value is None:
            return value
        shared = self._memo.get(value)
        if shared is None:
            if len(self._memo) >= self._max:
                self._memo.clear()
            self._memo[value] = shared = value
        return shared  # type: ignore[return-value]

    def info(self, info: TokenInfo) -> TokenInfo:
        """An equal TokenInfo whose low-cardinality fields are shared with other tokens."""
        if not info.active:
            return info
        v = self.value
        return dataclasses.replace(
            info, scopes=v(info.scopes), scope=v(info.scope), client_id=v(info.client_id),
            token_type=v(info.token_type), iss=v(info.iss), aud=v(info.aud), cnf_x5t_s256=v(info.cnf_x5t_s256),
            token_use=v(info.token_use),
        )
