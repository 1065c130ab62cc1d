"""Property-based tests (hypothesis) over every parser of untrusted input.

Properties: a parser either returns a well-formed value or raises its documented typed error
(:class:`Denial` subclasses, :class:`CertificateError`, :class:`MalformedTokenInfo`,
:class:`ConfigError`) and nothing else; a certificate thumbprint is always 43 base64url
characters; what a proxy or an IdP encodes, the parser decodes back (round trips).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sidecar.config import ConfigError, env_name, from_mapping
from sidecar.config.sections import SECTIONS
from sidecar.core import xfcc
from sidecar.core.client_cert import PARSERS, CertificateError, CertificateReader
from sidecar.core.errors import Denial, InvalidRequest, MissingToken
from sidecar.core.extract import MAX_TOKEN_LENGTH, bearer_token
from sidecar.core.headers import HeaderBuilder
from sidecar.core.token_info import STANDARD_CLAIMS, MalformedTokenInfo, TokenInfo, token_info_from_claims
from tests.hostile.material import certificates, header_values

FORMATS = ("auto", *PARSERS, "xfcc")
THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{43}")
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
HEADER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# Text that stresses parsers: any code point (including NUL, CR/LF, lone surrogates), biased
# towards the characters the header grammars give meaning to.
SPECIAL = st.sampled_from(list(':;,="\\%+/=-_ \t\r\n\x00\x7f\x85\u2028\udc80é'))
hostile_text = st.one_of(st.text(), st.text(st.one_of(SPECIAL, st.characters()), max_size=200))
token_chars = st.text("ABCXYZabcxyz0189-._~+/", min_size=1, max_size=80)


# --- Authorization (RFC 6750 §2.1) -------------------------------------------------------------

@given(st.lists(hostile_text, max_size=4))
def test_bearer_token_returns_a_b64token_or_raises_a_denial(values: list[str]) -> None:
    try:
        token = bearer_token(values)
    except Denial as denial:
        assert isinstance(denial, MissingToken | InvalidRequest)
        return
    assert B64TOKEN.fullmatch(token) and len(token) <= MAX_TOKEN_LENGTH
    assert len(values) == 1 and token in values[0]


@given(token_chars, st.integers(0, 2), st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]),
       st.text(" ", max_size=3), st.text(" \t", max_size=2))
def test_bearer_token_round_trips_any_b64token_with_any_scheme_case_and_spacing(
    token: str, padding: int, scheme: str, gap: str, outer: str
) -> None:
    token = token + "=" * padding
    assert bearer_token([f"{outer}{scheme} {gap}{token}{outer}"]) == token


@given(token_chars, token_chars)
def test_two_authorization_values_are_never_one_token(first: str, second: str) -> None:
    for values in ([f"Bearer {first}", f"Bearer {second}"], [f"Bearer {first} {second}"],
                   [f"Bearer {first},Bearer {second}"]):
        with pytest.raises(InvalidRequest):
            bearer_token(values)


# --- certificate headers (nginx, ALB, PEM, base64 DER, Traefik, RFC 9440, XFCC) ---------------

def _read(fmt: str, value: str, *, trust_hash: bool = False) -> str | None:
    """The thumbprint, or None for the one documented error; anything else fails the test."""
    try:
        found = CertificateReader(fmt, trust_xfcc_hash=trust_hash).thumbprint(value)  # type: ignore[arg-type]
    except CertificateError:
        return None
    assert THUMBPRINT.fullmatch(found), found
    return found


@given(st.sampled_from(FORMATS), hostile_text, st.booleans())
def test_any_text_in_any_certificate_format_is_a_thumbprint_or_a_certificate_error(
    fmt: str, value: str, trust_hash: bool
) -> None:
    _read(fmt, value, trust_hash=trust_hash)


def _mutate(value: str, data: st.DataObject) -> str:
    """Insert, delete or replace a few characters of a real header value."""
    chars = list(value)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(chars)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        if action == "insert":
            chars.insert(at, data.draw(st.one_of(SPECIAL, st.characters())))
        elif action == "truncate":
            del chars[at:]
        elif chars and at < len(chars):
            if action == "delete":
                del chars[at]
            else:
                chars[at] = data.draw(st.one_of(SPECIAL, st.characters()))
    return "".join(chars)


@given(st.sampled_from(FORMATS[1:]), st.data())
def test_mutated_real_headers_give_a_43_character_thumbprint_or_a_certificate_error(
    fmt: str, data: st.DataObject
) -> None:
    cert = data.draw(st.sampled_from(certificates()))
    value = _mutate(header_values(cert)[fmt], data)
    _read(fmt, value, trust_hash=data.draw(st.booleans()))
    _read("auto", value)


@given(st.binary(max_size=600))
def test_bytes_that_are_not_x509_are_a_certificate_error(blob: bytes) -> None:
    import base64

    encoded = base64.b64encode(blob).decode()
    for fmt, value in (("der_base64", encoded), ("rfc9440", f":{encoded}:"), ("traefik", encoded),
                       ("pem", f"-----BEGIN CERTIFICATE-----{encoded}-----END CERTIFICATE-----")):
        assert _read(fmt, value) is None


@given(st.sampled_from(range(3)), st.lists(st.sampled_from(range(3)), max_size=3), st.sampled_from(FORMATS[1:]))
def test_every_format_round_trips_to_the_leafs_thumbprint_even_with_a_chain_behind_it(
    leaf: int, chain: list[int], fmt: str
) -> None:
    certs = certificates()
    value = header_values(certs[leaf], tuple(certs[i] for i in chain))[fmt]
    assert _read(fmt, value) == certs[leaf].x5t
    # auto reads XFCC (last element) or one certificate; any other chain is refused: a proxy that
    # appends would put client-written certificates first (issue 11, item 1).
    several = bool(chain) and fmt in ("escaped_pem", "alb", "pem", "traefik")
    assert _read("auto", value) == (None if several else certs[leaf].x5t)


@given(st.sampled_from(range(3)), st.sampled_from(["\n", "\r\n", " ", "", "\t"]), st.booleans())
def test_pem_line_breaks_and_percent_encoding_case_do_not_change_the_thumbprint(
    index: int, newline: str, upper: bool
) -> None:
    cert = certificates()[index]
    pem = cert.pem.replace("\n", newline)
    escaped = quote(pem, safe="")
    escaped = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).upper() if upper else m.group(0).lower(), escaped)
    assert _read("pem", pem) == _read("escaped_pem", escaped) == cert.x5t


@given(st.sampled_from(range(3)))
def test_a_chain_where_only_a_leaf_is_expected_is_refused_by_the_single_certificate_formats(index: int) -> None:
    import base64

    certs = certificates()
    concatenated = base64.b64encode(certs[index].der + certs[(index + 1) % 3].der).decode()
    assert _read("der_base64", concatenated) is None
    assert _read("rfc9440", f":{concatenated}:") is None


# --- XFCC grammar -------------------------------------------------------------------------------

xfcc_key = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_", min_size=1, max_size=8)
xfcc_value = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


def _quote_xfcc(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(st.lists(st.dictionaries(xfcc_key, xfcc_value, min_size=1, max_size=5), min_size=1, max_size=3))
def test_xfcc_round_trips_the_last_element_with_quoted_values(elements: list[dict[str, str]]) -> None:
    header = ",".join(";".join(f"{k}={_quote_xfcc(v)}" for k, v in element.items()) for element in elements)
    expected: dict[str, str] = {}
    for key, value in elements[-1].items():
        expected.setdefault(key.lower(), value)
    assert xfcc.last_element(header) == expected


@given(hostile_text)
def test_xfcc_parser_returns_pairs_or_raises_xfcc_error(header: str) -> None:
    try:
        pairs = xfcc.last_element(header)
    except xfcc.XfccError:
        return
    assert pairs and all(key == key.strip().lower() and key for key in pairs)


@given(st.text("0123456789abcdefABCDEF", min_size=64, max_size=64))
def test_a_trusted_xfcc_hash_is_the_same_digest_as_x5t(hex_hash: str) -> None:
    import base64

    found = _read("xfcc", f"By=spiffe://a;Hash={hex_hash}", trust_hash=True)
    assert found is not None and base64.urlsafe_b64decode(found + "=") == bytes.fromhex(hex_hash)
    assert _read("xfcc", f"By=spiffe://a;Hash={hex_hash}", trust_hash=False) is None


# --- introspection JSON (RFC 7662 §2.2) --------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
claims_strategy = st.dictionaries(
    st.one_of(st.sampled_from([*STANDARD_CLAIMS, "x5t#S256", "tenant"]), st.text(max_size=8)),
    st.one_of(json_values, st.dictionaries(st.just("x5t#S256"), json_values, max_size=1)),
    max_size=10,
)


def _token_info(payload: object, extra: tuple[str, ...] = ("tenant",)) -> TokenInfo | None:
    try:
        return token_info_from_claims(payload, extra)
    except MalformedTokenInfo:
        return None


@given(st.one_of(claims_strategy, json_values), st.booleans())
def test_any_introspection_answer_is_token_info_or_malformed(payload: object, through_json: bool) -> None:
    if through_json:  # what the wire gives: json.dumps writes NaN/Infinity, json.loads reads them back
        payload = json.loads(json.dumps(payload))
    info = _token_info(payload)
    if info is None:
        return
    assert isinstance(info.active, bool)
    if not info.active:
        assert info == TokenInfo(active=False)
    for name in ("exp", "iat", "nbf"):
        value = getattr(info, name)
        assert value is None or (isinstance(value, int) and math.isfinite(float(value)))
    # Whatever the IdP said, the upstream headers built from it are header-safe.
    headers = HeaderBuilder(from_mapping({"response": {"claims": {"tenant": "tenant"}}}).response).build(info)
    for value in headers.values():
        value.encode("utf-8")
        assert not re.search(r"[\x00-\x1f\x7f]", value) and len(value) <= 1024


@given(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.lists(st.text("abcdefgh:/.", min_size=1, max_size=8), max_size=4, unique=True),
    st.integers(0, 2**40), st.one_of(st.none(), st.text("ABCabc012-_", min_size=43, max_size=43)),
    st.lists(st.text("abc", min_size=1, max_size=4), max_size=3),
)
def test_a_well_typed_introspection_answer_round_trips_through_json(
    sub: str, scopes: list[str], exp: int, cnf: str | None, aud: list[str]
) -> None:
    claims: dict[str, Any] = {"active": True, "sub": sub, "scope": " ".join(scopes), "exp": exp, "aud": aud,
                              "iss": "https://idp.example", "tenant": ["t", 1]}
    if cnf is not None:
        claims["cnf"] = {"x5t#S256": cnf}
    info = token_info_from_claims(json.loads(json.dumps(claims)), ("tenant",))
    assert (info.sub, info.exp, info.aud, info.iss) == (sub, exp, tuple(aud), "https://idp.example")
    assert info.scopes == frozenset(scopes) and info.cnf_x5t_s256 == cnf and info.bound == (cnf is not None)
    assert info.extra == {"tenant": "t 1"}


# --- configuration ------------------------------------------------------------------------------

_SCHEMA: dict[str, list[str]] = {section: list(cls.__dataclass_fields__) for section, cls in SECTIONS.items()}
_POLICY_KEYS = _SCHEMA["policy"]
toml_values = st.one_of(
    json_scalars, st.lists(st.one_of(st.text(max_size=12), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=6), st.one_of(st.text(max_size=12), st.integers()), max_size=2),
    st.sampled_from(["strict", "off", "auto", "xfcc", "https://idp.example", "10.0.0.0/8", "x-client-cert",
                     "127.0.0.1/32", "tenant\n", "", " "]),
)


@st.composite
def raw_config(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, str]]:
    raw: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from([*_SCHEMA, "unknown", "policies", "routes"]), max_size=4,
                                 unique=True)):
        keys = _SCHEMA.get(section, ["x"])
        if section == "policies":  # [policies.NAME] tables, names and keys half plausible
            tables = st.dictionaries(st.one_of(st.sampled_from(_POLICY_KEYS), st.text(max_size=5)), toml_values,
                                     max_size=3)
            raw[section] = draw(st.one_of(toml_values, st.dictionaries(
                st.one_of(st.sampled_from(["orders", "a.b", "default"]), st.text(max_size=8)),
                st.one_of(tables, toml_values), max_size=3)))
            continue
        if section == "routes":  # [[routes]] rules
            rule = st.dictionaries(st.sampled_from(["path", "policy", "methods", "hosts", "match", "x"]),
                                   st.one_of(toml_values, st.sampled_from(["/a", "/a/**", "(", "regex", "glob"])),
                                   max_size=4)
            raw[section] = draw(st.one_of(toml_values, st.lists(st.one_of(rule, toml_values), max_size=3)))
            continue
        raw[section] = draw(st.one_of(
            st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=5)), toml_values, max_size=4),
            toml_values,
        ))
    env: dict[str, str] = {}
    for section, keys in draw(st.lists(st.sampled_from(list(_SCHEMA.items())), max_size=3)):
        key = draw(st.sampled_from(keys))
        env[env_name(section, key)] = draw(st.one_of(
            st.text(max_size=20), st.sampled_from(["nan", "inf", "1e999", "-1", "true", "a=b,c", "0x10", " 5 "]),
        ))
    return raw, env


@given(raw_config())
def test_any_configuration_is_a_config_or_a_config_error_naming_a_key(
    given_: tuple[dict[str, Any], dict[str, str]],
) -> None:
    raw, env = given_
    try:
        config = from_mapping(raw, env)
    except ConfigError as error:
        assert str(error).startswith(f"{error.key}: ") and error.key
        return
    # An accepted configuration can render every response it will ever need to.
    r = config.response
    names = HeaderBuilder(r).names
    assert all(HEADER_TOKEN.fullmatch(name) for name in names)
    assert r.realm.isprintable() and '"' not in r.realm
    for number in (config.policy.leeway, config.cache.max_ttl, config.cache.negative_ttl, config.idp.timeout):
        assert math.isfinite(number)


@given(st.sampled_from(["policy", "cache", "server"]), st.data())
def test_configuration_values_round_trip_from_the_environment(section: str, data: st.DataObject) -> None:
    if section == "policy":
        scopes = data.draw(st.lists(st.text("abcdef:.", min_size=1, max_size=6), max_size=4))
        config = from_mapping({}, {"SIDECAR_POLICY__REQUIRED_SCOPES": " , ".join(scopes)})
        assert config.policy.required_scopes == tuple(scopes)
    elif section == "cache":
        ttl = data.draw(st.floats(0, 1e6, allow_nan=False))
        assert from_mapping({}, {"SIDECAR_CACHE__MAX_TTL": repr(ttl)}).cache.max_ttl == ttl
    else:
        port = data.draw(st.integers(1, 65535))
        assume(port != 8081)
        assert from_mapping({"server": {"port": port}}).server.port == port
