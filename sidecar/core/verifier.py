"""What the decision needs from the IdP side: something that says what a token is.

Introspection (RFC 7662), local RFC 9068 validation, or a choice of the two (sidecar/idp) all
fit; the core never imports them, the runtime wires one in.
"""

from __future__ import annotations

from typing import Protocol

from sidecar.core.token_info import TokenInfo


class Verifier(Protocol):
    async def verify(self, token: str) -> TokenInfo:
        """The token's information; raises a Denial (IdpUnavailable when the IdP cannot say)."""
        ...
