#!/usr/bin/env python3
"""Coverage-guided fuzz target (atheris / libFuzzer) over every parser of untrusted input.

The first byte of an input picks the parser, the rest is the value (UTF-8 with
``surrogateescape``, as aiohttp decodes header bytes):

    a  Authorization field values (RFC 6750 §2.1), one per line
    u e l p d t r x h   a certificate header: auto, escaped_pem (nginx), alb, pem, der_base64
       (HAProxy), traefik, rfc9440, xfcc (Envoy), xfcc with Hash trusted
    j  an introspection answer body (RFC 7662 §2.2), as the introspection client reads it
    k  a TOML configuration file;  v  SIDECAR_* environment lines (KEY=VALUE)

A crash is a broken property: an exception other than the parser's documented typed error, a
thumbprint that is not 43 base64url characters, or an accepted value that cannot be rendered
(a header value with CR/LF/NUL, a header name that is not a token). Any other first byte maps to a
target by its value modulo the number of targets.

    python fuzz/fuzz_parsers.py NEW_CORPUS_DIR fuzz/corpus -max_total_time=60

The first directory receives new inputs; keep fuzz/corpus (the seeds) read-only by naming it last.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["sidecar"]):
    from sidecar.config import Config, ConfigError, from_mapping, load
    from sidecar.core.binding import check_binding
    from sidecar.core.client_cert import CertificateError, CertificateReader
    from sidecar.core.errors import Denial, InvalidToken
    from sidecar.core.extract import MAX_TOKEN_LENGTH, bearer_token
    from sidecar.core.headers import HeaderBuilder
    from sidecar.core.policy import Policy
    from sidecar.core.token_info import MalformedTokenInfo, token_info_from_claims

THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{43}")
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
UNSAFE_VALUE = re.compile(r"[\x00-\x1f\x7f]")
DEFAULTS = from_mapping({"response": {"claims": {"tenant": "tenant", "roles": "roles"}}})
HEADERS = HeaderBuilder(DEFAULTS.response)
POLICY = Policy(DEFAULTS.policy)
SOME_THUMBPRINT = "A" * 43
CONFIG_FILE = Path(tempfile.mkdtemp(prefix="fuzz-config-")) / "sidecar.toml"


def authorization(text: str) -> None:
    values = text.split("\n") if text else []
    try:
        token = bearer_token(values)
    except Denial:
        return
    assert B64TOKEN.fullmatch(token) and len(token) <= MAX_TOKEN_LENGTH, token


def certificate(fmt: str, trust_hash: bool = False) -> Callable[[str], None]:
    def read(text: str) -> None:
        try:
            found = CertificateReader(fmt, trust_xfcc_hash=trust_hash).thumbprint(text)  # type: ignore[arg-type]
        except CertificateError:
            return
        assert THUMBPRINT.fullmatch(found), found

    return read


def introspection(text: str) -> None:
    body = text.encode("utf-8", "surrogateescape")
    try:  # what sidecar.idp.introspection does with a 200 body
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return
    try:
        info = token_info_from_claims(payload, ("tenant", "roles"))
    except MalformedTokenInfo:
        return
    for value in HEADERS.build(info).values():
        value.encode("utf-8")
        assert not UNSAFE_VALUE.search(value), value
    try:
        POLICY.check_time(info, 1_700_000_000.0)
        check_binding(info, SOME_THUMBPRINT, "strict")
    except InvalidToken:
        pass


def _check_rendering(config: Config) -> None:
    for name in HeaderBuilder(config.response).names:
        assert HEADER_NAME.fullmatch(name), name
    assert config.response.realm.isprintable()


def config_toml(text: str) -> None:
    """The bytes of a configuration file, read by ``config.load`` as the service reads it."""
    CONFIG_FILE.write_bytes(text.encode("utf-8", "surrogateescape"))
    try:
        config = load(CONFIG_FILE, {})
    except ConfigError as error:
        assert str(error).startswith(f"{error.key}: ")
        return
    _check_rendering(config)


def config_env(text: str) -> None:
    env = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
    try:
        config = from_mapping({}, env)
    except ConfigError as error:
        assert str(error).startswith(f"{error.key}: ")
        return
    _check_rendering(config)


TARGETS: dict[int, Callable[[str], None]] = {
    ord("a"): authorization,
    ord("u"): certificate("auto"), ord("e"): certificate("escaped_pem"), ord("l"): certificate("alb"),
    ord("p"): certificate("pem"), ord("d"): certificate("der_base64"), ord("t"): certificate("traefik"),
    ord("r"): certificate("rfc9440"), ord("x"): certificate("xfcc"), ord("h"): certificate("xfcc", True),
    ord("j"): introspection, ord("k"): config_toml, ord("v"): config_env,
}
_ORDER = list(TARGETS.values())


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target = TARGETS.get(data[0]) or _ORDER[data[0] % len(_ORDER)]
    target(data[1:].decode("utf-8", "surrogateescape"))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
