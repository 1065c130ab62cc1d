"""The JWK Set: what counts as a usable key, and when the set is fetched (fake clock, no network)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import get_default_algorithms

from sidecar.config import IdpConfig
from sidecar.dev.devidp import SigningKey
from sidecar.idp.discovery import Discovery
from sidecar.idp.failures import IdpError, IdpFailure
from sidecar.idp.jwk_set import MAX_KEYS, JwksError, parse_jwks
from sidecar.idp.jwks import Jwks
from sidecar.idp.tls import IdpSession
from sidecar.support.metrics import Metrics

EC = SigningKey.generate("ES256", kid="ec")
RSA = SigningKey.generate("RS256", kid="rsa")


def document(*jwks: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(jwks)}).encode()


def test_keeps_public_signature_keys_with_their_kid_and_pinned_alg() -> None:
    unpinned = {k: v for k, v in RSA.public_jwk().items() if k != "alg"}
    keys = parse_jwks(document(EC.public_jwk(), unpinned))
    assert [(k.kid, k.alg) for k in keys.keys] == [("ec", "ES256"), ("rsa", None)]
    assert keys.find("rsa")[0].kid == "rsa" and keys.find("nope") == ()
    assert len(keys.find(None)) == 2


@pytest.mark.parametrize(("name", "change"), [
    ("an encryption key", {"use": "enc"}),
    ("a key whose key_ops exclude verify", {"key_ops": ["encrypt"]}),
    ("a symmetric key", {"kty": "oct", "k": "c2VjcmV0"}),
    ("a private key", {"d": "AAAA"}),
    ("a key without kty", {"kty": None}),
    ("a non-string kid", {"kid": 7}),
    ("a key of an unknown alg", {"alg": "RSA-OAEP"}),
    ("a broken key", {"x": "!!"}),
])
def test_skips_keys_that_must_not_verify_signatures(name: str, change: dict[str, Any]) -> None:
    bad = {k: v for k, v in {**EC.public_jwk(), **change}.items() if v is not None}
    keys = parse_jwks(document(bad, RSA.public_jwk()))
    assert [k.kid for k in keys.keys] == ["rsa"], name


def test_skips_rsa_keys_under_2048_bits() -> None:
    small = rsa.generate_private_key(65537, 1024).public_key()
    jwk = {**get_default_algorithms()["RS256"].to_jwk(small, as_dict=True), "kid": "small"}
    assert [k.kid for k in parse_jwks(document(jwk, EC.public_jwk())).keys] == ["ec"]


@pytest.mark.parametrize("body", [b"<html>", b"[]", b'{"keys": {}}', document(), document({"use": "enc"}),
                                  document(*[EC.public_jwk()] * (MAX_KEYS + 1))])
def test_a_set_without_a_usable_key_is_an_error(body: bytes) -> None:
    with pytest.raises(JwksError):
        parse_jwks(body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedJwks(Jwks):
    """Jwks whose download answers from ``documents`` (bytes, or an exception to raise)."""

    made: list[ScriptedJwks] = []  # noqa: RUF012 - test bookkeeping

    def __init__(self, *, token_format: str = "jwt", jwks_uri: str | None = "https://idp/jwks",
                 **idp: Any) -> None:
        config = IdpConfig(jwks_uri=jwks_uri, token_format=token_format, **idp)  # type: ignore[arg-type]
        self.clock = Clock()
        self.session = IdpSession(config)
        super().__init__(config, self.session, Discovery(config, self.session), Metrics(), clock=self.clock)
        self.documents: list[bytes | Exception] = []
        self.downloads = 0
        self.gate: asyncio.Event | None = None
        ScriptedJwks.made.append(self)

    async def _download(self, uri: str) -> object:
        self.downloads += 1
        if self.gate is not None:
            await self.gate.wait()
        answer = self.documents[0] if len(self.documents) == 1 else self.documents.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return json.loads(answer)


@pytest.fixture(autouse=True)
async def close_sessions() -> Any:
    """ScriptedJwks resolves its jwks_uri through Discovery, which opens a (never used) session."""
    yield
    for jwks in ScriptedJwks.made:
        await jwks.session.aclose()
    ScriptedJwks.made.clear()


async def test_concurrent_first_uses_share_one_download() -> None:
    jwks = ScriptedJwks()
    jwks.documents = [document(EC.public_jwk())]
    jwks.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(jwks.keys_for("ec")) for _ in range(10)]
    await asyncio.sleep(0)
    jwks.gate.set()
    assert all(len(found) == 1 for found in await asyncio.gather(*waiting))
    assert jwks.downloads == 1 and jwks.ready


async def test_an_unknown_kid_refreshes_once_per_interval() -> None:
    jwks = ScriptedJwks(jwks_min_refresh_interval=10.0)
    jwks.documents = [document(EC.public_jwk())]
    assert await jwks.keys_for("forged-0") == ()
    assert jwks.downloads == 1  # the first load is fresh: no refresh on top of it
    assert await jwks.keys_for("forged-1") == ()
    assert jwks.downloads == 2  # one refresh for the unknown kid
    jwks.clock.now += 9
    assert await jwks.keys_for("forged-2") == ()
    assert jwks.downloads == 2
    jwks.clock.now += 2
    assert await jwks.keys_for("forged-3") == ()
    assert jwks.downloads == 3


async def test_a_rotated_key_is_found_by_the_unknown_kid_refresh() -> None:
    jwks = ScriptedJwks()
    jwks.documents = [document(EC.public_jwk()), document(EC.public_jwk(), RSA.public_jwk())]
    assert len(await jwks.keys_for("ec")) == 1
    assert [k.kid for k in await jwks.keys_for("rsa")] == ["rsa"]


async def test_keys_older_than_max_age_are_fetched_again_and_never_used_when_that_fails() -> None:
    jwks = ScriptedJwks(jwks_max_age=60.0)
    jwks.documents = [document(EC.public_jwk()), IdpError(IdpFailure.HTTP_5XX, "down", status=500)]
    assert len(await jwks.keys_for("ec")) == 1
    jwks.clock.now += 59
    assert len(await jwks.keys_for("ec")) == 1 and jwks.downloads == 1
    jwks.clock.now += 2
    with pytest.raises(IdpError):
        await jwks.keys_for("ec")
    assert jwks.downloads == 2


async def test_a_failed_load_is_idp_unavailable_and_retried_only_after_a_pause() -> None:
    jwks = ScriptedJwks()
    jwks.documents = [IdpError(IdpFailure.REFUSED), document(EC.public_jwk())]
    for _ in range(3):
        with pytest.raises(IdpError) as raised:
            await jwks.keys_for("ec")
        assert raised.value.kind is IdpFailure.REFUSED  # the repeat keeps what went wrong
    assert jwks.downloads == 1 and not jwks.ready
    jwks.clock.now += jwks.RETRY_AFTER
    assert len(await jwks.keys_for("ec")) == 1 and jwks.ready


async def test_an_unusable_set_is_idp_unavailable() -> None:
    jwks = ScriptedJwks()
    jwks.documents = [document({"kty": "oct", "k": "c2VjcmV0", "kid": "ec"})]
    with pytest.raises(IdpError) as raised:
        await jwks.keys_for("ec")
    assert raised.value.kind is IdpFailure.UNUSABLE


async def test_an_unknown_kid_after_a_failed_refresh_is_unavailable_not_unknown() -> None:
    jwks = ScriptedJwks()
    jwks.documents = [document(EC.public_jwk()), IdpError(IdpFailure.TIMEOUT, "slow")]
    await jwks.keys_for("ec")
    with pytest.raises(IdpError):
        await jwks.keys_for("rotated")
    with pytest.raises(IdpError):  # within the interval: not fetched again, still not a 401
        await jwks.keys_for("rotated")
    assert jwks.downloads == 2
    assert len(await jwks.keys_for("ec")) == 1  # the current set still serves known kids


async def test_without_a_jwks_uri_auto_is_ready_and_jwt_is_not() -> None:
    for token_format, ready in (("auto", True), ("jwt", False)):
        jwks = ScriptedJwks(token_format=token_format, jwks_uri=None)
        with pytest.raises(IdpError) as raised:
            await jwks.keys_for("ec")
        assert raised.value.kind is IdpFailure.NO_JWKS_URI
        assert jwks.ready is ready and jwks.downloads == 0
