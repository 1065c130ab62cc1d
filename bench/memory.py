"""RSS per cached token: fill a real :class:`sidecar.core.decision.Decider` with N tokens and compare
the process's resident set before and after.

The verifier parses a JSON introspection answer exactly like the introspection client does
(``json.loads`` + ``token_info_from_claims``), so every cached entry holds freshly allocated
strings, as in production; only the HTTP round trip to the IdP is left out.

    python bench/memory.py --tokens 100000
    python bench/memory.py --tokens 100000 --index   # with the cache's revocation index

The answers carry a ``sub``, a ``jti``, a ``client_id`` and an e-mail ``username``, so the index
of core/cache_index.py (kept when revocations can arrive: ``events.enabled`` or an admin secret;
``--index`` sets the latter) holds four references per token.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar import config as config_module
from sidecar.core.decision import Decider
from sidecar.core.entry import Entry
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo, token_info_from_claims
from sidecar.support.metrics import Metrics


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class JsonVerifier:
    """Answers like a real IdP would, through the same parser as the introspection client."""

    def __init__(self) -> None:
        self.calls = 0
        self.now = int(time.time())

    async def verify(self, token: str, issuers: tuple[str, ...] = ()) -> TokenInfo:
        self.calls += 1
        return token_info_from_claims(json.loads(answer(self.calls, self.now)))


def answer(i: int, now: int) -> bytes:
    return json.dumps({
        "active": True, "client_id": f"client-{i % 50}", "scope": "read write", "token_type": "Bearer",
        "iat": now, "exp": now + 3600, "iss": "https://idp.example", "sub": f"user-{i}",
        "jti": secrets.token_hex(8), "username": f"user-{i}@example", "aud": ["api"],
        "cnf": {"x5t#S256": f"{i % 50:043d}"},
    }).encode()


async def measure(n: int, index: bool = False) -> dict[str, float]:
    revocations = {"server": {"admin_secret": "bench-admin-secret-0123"}} if index else {}
    config = config_module.from_mapping({"cache": {"max_entries": n + 1, "max_ttl": 3600},
                                         "policy": {"binding": "off"}, "log": {"decisions": "off"},
                                         "admission": {"miss_rate": 0}, **revocations})  # one client fills it
    verifier = JsonVerifier()
    decider = Decider(config, verifier, Metrics())
    tokens = [secrets.token_urlsafe(32) for _ in range(n)]  # the clients' side: allocated before
    # Warm every code path once so that lazily created objects are not counted per token.
    await decider.decide(CheckRequest((f"Bearer {tokens[0]}",)))
    gc.collect()
    before = rss_bytes()
    for token in tokens[1:]:
        decision = await decider.decide(CheckRequest((f"Bearer {token}",)))
        assert isinstance(decision, Entry)
    gc.collect()
    after = rss_bytes()
    cached = len(decider.cache)
    return {"tokens": cached, "rss_before_mib": before / 2**20, "rss_after_mib": after / 2**20,
            "bytes_per_token": (after - before) / max(cached - 1, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--index", action="store_true", help="with the cache's revocation index")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.tokens, index=args.index))))


if __name__ == "__main__":
    main()
