"""DPoP for the benches: client keys, proofs signed ahead of a run, and the wrk script that sends
them. A library module of bench/run.py and bench/dpop_fleet.py (no command of its own).

A proof is single-use (its ``jti`` is remembered), so wrk cannot replay one request: each request
takes the next of many proofs signed before the run (outside the measurement). The requests carry
what nginx's check subrequest sends (deploy/nginx/snippets/sidecar-check.conf): the original
method, URI, host and scheme, and the client's ``DPoP`` header.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

HOST = "api.example"
ORIGIN = f"https://{HOST}"  # the bench sidecars' routing.origins
URI = "/orders/42"
HTU = f"{ORIGIN}{URI}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Client:
    """One ES256 key (RFC 9449 §4.2) and the thumbprint a token is bound to (RFC 7638)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.jwk: dict[str, Any] = json.loads(jwt.get_algorithm_by_name("ES256").to_jwk(self.key.public_key()))
        canonical = json.dumps({m: self.jwk[m] for m in ("crv", "kty", "x", "y")}, separators=(",", ":"))
        self.jkt = b64url(hashlib.sha256(canonical.encode()).digest())

    def proof(self, token: str) -> str:
        ath = b64url(hashlib.sha256(token.encode()).digest())
        payload = {"jti": uuid.uuid4().hex, "htm": "GET", "htu": HTU, "iat": int(time.time()), "ath": ath}
        return jwt.encode(payload, self.key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": self.jwk})


def headers(token: str, proof: str) -> dict[str, str]:
    return {"Authorization": f"DPoP {token}", "DPoP": proof, "X-Original-Method": "GET", "X-Original-URI": URI,
            "Host": HOST, "X-Forwarded-Proto": "https"}


def lua_script(tmp: Path, tokens: list[tuple[Client, str]], count: int) -> Path:
    """``count`` requests, each with a fresh proof, rotating over ``tokens``; formatted in init()."""
    fd, name = tempfile.mkstemp(suffix=".lua", dir=tmp)
    data = Path(name + ".txt")
    with data.open("w") as out:
        for i in range(count):
            client, token = tokens[i % len(tokens)]
            out.write(f"{token} {client.proof(token)}\n")
    script = f"""
local reqs = {{}}
local i = 0
function init(args)
  for line in io.lines("{data}") do
    local tok, proof = line:match("^(%S+) (%S+)$")
    reqs[#reqs + 1] = wrk.format("GET", "/check", {{["Authorization"] = "DPoP " .. tok, ["DPoP"] = proof,
      ["X-Original-Method"] = "GET", ["X-Original-URI"] = "{URI}", ["Host"] = "{HOST}",
      ["X-Forwarded-Proto"] = "https"}})
  end
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status + e.connect + e.read + e.write + e.timeout))
end
"""
    with os.fdopen(fd, "w") as f:
        f.write(script)
    return Path(name)
