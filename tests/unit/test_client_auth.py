"""RFC 7523 private_key_jwt assertions: claims, a fresh jti per call, the key re-read on change."""

from __future__ import annotations

import os
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.config import IdpConfig
from sidecar.idp.client_auth import ASSERTION_TYPE, ClientAuth


def key_file(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


def test_each_call_carries_a_new_assertion_signed_for_the_idp(tmp_path: Path) -> None:
    key = key_file(tmp_path / "a.key")
    auth = ClientAuth(IdpConfig(issuer="https://idp.example", client_id="rs", auth_method="private_key_jwt",
                                assertion_key_file=str(tmp_path / "a.key"), assertion_kid="k1"))
    (form1, headers), (form2, _) = auth.credentials("https://idp.example/i"), auth.credentials("https://idp.example/i")
    assert form1["client_assertion_type"] == ASSERTION_TYPE and form1["client_id"] == "rs"
    assert "Authorization" not in headers
    claims = jwt.decode(form1["client_assertion"], key.public_key(), algorithms=["ES256"], audience="https://idp.example")
    assert claims["iss"] == claims["sub"] == "rs" and 0 < claims["exp"] - time.time() <= 60
    assert jwt.get_unverified_header(form1["client_assertion"])["kid"] == "k1"
    other = jwt.decode(form2["client_assertion"], key.public_key(), algorithms=["ES256"], audience="https://idp.example")
    assert claims["jti"] != other["jti"]


def test_a_rotated_key_file_signs_the_next_assertions(tmp_path: Path) -> None:
    path = tmp_path / "a.key"
    key_file(path)
    auth = ClientAuth(IdpConfig(client_id="rs", auth_method="private_key_jwt", assertion_key_file=str(path)))
    new = key_file(path)
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    auth._checked_at = 0.0  # the once-a-second check is due
    assertion = auth.credentials("https://idp.example/i")[0]["client_assertion"]
    claims = jwt.decode(assertion, new.public_key(), algorithms=["ES256"], audience="https://idp.example/i")
    assert claims["sub"] == "rs"
