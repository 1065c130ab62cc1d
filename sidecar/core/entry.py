"""What the cache keeps per token: the IdP's answer and everything a cache hit needs, computed
once at fill time (upstream headers, the static and scope verdicts, the token's log hash, how long a
proxy may keep an allow), and its verdicts under named policies, computed when first needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sidecar.core.errors import Denial
from sidecar.core.headers import CredentialHeaders
from sidecar.core.token_info import TokenInfo


@dataclass(slots=True)
class Entry:
    info: TokenInfo
    headers: CredentialHeaders  # built once per token (response.HeaderBuilder)
    denial: Denial | None  # inactive / issuer / audience / cnf / token type: independent of the request
    scope_denial: Denial | None
    token_hash: str  # for logs; never the token
    expires: float = 0.0  # time.monotonic() deadline, set once by the cache when it stores the entry
    until: float = math.inf  # wall-clock bound from the source (a shared answer's own expiry); caps the TTL
    # The last whole Unix second a proxy's decision cache may still answer with this allow (nginx's
    # `X-Accel-Expires: @edge`, capped per request by response.edge_ttl); 0: never. Set by the cache at fill.
    edge: int = 0
    # The token under each named policy that met it (policies.Policies.view): one per policy at most.
    views: dict[int, Entry] | None = None
    # Wall-clock time from which an allow signs the identity token in headers again (identity.py);
    # 0.0: at the first allow; inf: never (the policy sends none, or it lasts as long as the entry).
    identity_due: float = math.inf
