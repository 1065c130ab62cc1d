"""Every field of a TokenInfo travels through the fleet's shared cache unchanged: a field the
codec forgot would drop a check (a DPoP binding, a token kind) from every answer read from Redis."""

from __future__ import annotations

import dataclasses

from sidecar.core.token_info import TokenInfo, scope_set
from sidecar.fleet.codec import _FIELDS, DERIVED, decode, encode


def test_the_codec_knows_every_token_info_field() -> None:
    assert {f.name for f in dataclasses.fields(TokenInfo)} == set(_FIELDS) | DERIVED


def test_an_answer_with_every_field_set_reads_back_equal() -> None:
    info = TokenInfo(
        active=True, scopes=scope_set("read write"), scope="read write", client_id="c", username="u",
        token_type="DPoP", exp=2_000_000_000, iat=1_700_000_000, nbf=1_700_000_000, sub="s", aud=("a", "b"),
        iss="https://i", jti="j", cnf_x5t_s256="x" * 43, cnf_jkt="k" * 43, cnf_unverifiable=("x5t",),
        introspected=True, token_use="access_token", extra={"tenant": "t"}, issuer="partner",
    )
    assert all(getattr(info, f.name) not in (None, (), False) for f in dataclasses.fields(TokenInfo))
    assert decode(encode(info, 123.0, 100.0)) == (info, 123.0, 100.0)
