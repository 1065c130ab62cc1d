"""What the cache keeps per token: the IdP's answer and everything a cache hit needs, computed
once at fill time (upstream headers, the static and scope verdicts, the token's log hash).
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.core.errors import Denial
from sidecar.core.response import CredentialHeaders
from sidecar.core.token_info import TokenInfo


@dataclass(slots=True)
class Entry:
    info: TokenInfo
    headers: CredentialHeaders  # built once per token (response.HeaderBuilder)
    denial: Denial | None  # inactive / issuer / audience / cnf / token type: independent of the request
    scope_denial: Denial | None
    token_hash: str  # for logs; never the token
    expires: float = 0.0  # time.monotonic() deadline, set once by the cache when it stores the entry
