"""What local RFC 9068 validation costs per token (a cache miss), in-process, no network.

Prints microseconds per validation for valid tokens of each algorithm and for refused ones
(forged signature, unknown kid, wrong typ), which are not cached and so cost this on every
request. Run: .venv/bin/python bench/jwt_validation.py [iterations]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import sys
import time
from collections.abc import Sequence

from sidecar.config import IdpConfig
from sidecar.core.errors import InvalidToken
from sidecar.dev.devidp import Client, DevIdp, SigningKey
from sidecar.idp.jwk_set import KeySet, VerifyKey, parse_jwks
from sidecar.idp.jwt_access_token import JwtAccessTokenVerifier
from sidecar.idp.token_format import jwt_header


class Keys:
    def __init__(self, keys: KeySet) -> None:
        self.keys = keys

    async def keys_for(self, kid: str | None) -> Sequence[VerifyKey]:
        return self.keys.find(kid)


async def per_call(verifier: JwtAccessTokenVerifier, token: str, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        jwt_header(token)  # what the auto chooser adds
        with contextlib.suppress(InvalidToken):
            await verifier.verify(token)
    return (time.perf_counter() - started) / n * 1e6


async def main(n: int) -> None:
    idp = DevIdp(issuer="https://idp.example")
    idp.add_client(Client("alice"))
    es, rs, ps = (idp.add_signing_key(alg, kid=alg) for alg in ("ES256", "RS256", "PS256"))
    keys = Keys(parse_jwks(json.dumps({"keys": [k.public_jwk() for k in idp.signing_keys]}).encode()))
    verifier = JwtAccessTokenVerifier(IdpConfig(issuer=idp.issuer), keys)
    cnf = "x" * 43
    cases = {
        "valid ES256": idp.mint_jwt("alice", cnf=cnf, key=es),
        "valid RS256 (2048)": idp.mint_jwt("alice", cnf=cnf, key=rs),
        "valid PS256 (2048)": idp.mint_jwt("alice", cnf=cnf, key=ps),
        "forged signature (ES256)": idp.mint_jwt("alice", cnf=cnf, key=SigningKey.generate("ES256", kid="ES256")),
        "unknown kid": idp.mint_jwt("alice", cnf=cnf, key=SigningKey.generate("ES256", kid="nope")),
        "wrong typ": idp.mint_jwt("alice", cnf=cnf, key=es, header={"typ": "JWT"}),
    }
    print(f"python {platform.python_version()} ({sys.executable}), {n} iterations each")
    for name, token in cases.items():
        print(f"{name:28s} {await per_call(verifier, token, n):8.1f} µs/token")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
