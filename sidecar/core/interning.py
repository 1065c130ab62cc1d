"""One copy of the values that many cached tokens share (memory per cached token).

Tokens of one deployment carry a handful of issuers, clients, scope strings, audiences and
certificate thumbprints; parsed from JSON, each token would hold its own copies (a ``frozenset``
of scopes alone is 216 bytes). At cache fill the shared fields of a :class:`TokenInfo` are
replaced by the first equal value seen. The memo is bounded: when full it starts over, so a
flood of distinct values costs at most ``max_values`` references and ``max_bytes`` (estimated).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import TypeVar

from sidecar.core.token_info import TokenInfo
from sidecar.support.memo import Memo, text_size

T = TypeVar("T", bound=Hashable)


class Interner:
    __slots__ = ("_memo",)

    def __init__(self, max_values: int = 65536, max_bytes: int = 8 * 1024 * 1024) -> None:
        self._memo: Memo[Hashable, Hashable] = Memo(max_values, max_bytes=max_bytes,
                                                    size_of=lambda key, _value: 2 * text_size(key))

    def __len__(self) -> int:
        return len(self._memo)

    def value(self, value: T) -> T:
        if value is None:
            return value
        shared = self._memo.get(value)
        if shared is None:
            shared = self._memo.put(value, value)
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
