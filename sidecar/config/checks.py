"""Single-value rules a key can declare (``checks=``): each returns what is wrong, or None.

Rules that compare two keys live in :mod:`sidecar.config.rules`; these see one value only.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

# \Z, not $: "$" also matches before a trailing newline, which would let "name\n" through.
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")

JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "ES256K", "EdDSA"}
)
# DPoP proofs (sidecar/support/jose.py verifies them with cryptography): the JOSE names above and
# the RFC 9864 fully-specified ones (Ed25519, Ed448; ESP256-512, the ECDSA names of RFC 9864).
DPOP_ALGORITHMS = JWT_ALGORITHMS | {"Ed25519", "Ed448", "ESP256", "ESP384", "ESP512"}
# An origin: scheme, a lower-case host name, IPv4 address or [IPv6] address, an optional port.
_ORIGIN = re.compile(r"(https?)://([a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?/?\Z")


def https_url(url: str) -> str | None:
    return None if url.startswith("https://") else f"must be an https:// URL; got {url!r}"


_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,63}\Z")
ISSUER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")  # a metrics label: short, plain, lower case
MAX_TENANTS = 64
MAX_POLICY_ISSUERS = 4  # an unknown opaque token costs at most one introspection per issuer named


def tenants(values: tuple[str, ...]) -> str | None:
    if len(values) > MAX_TENANTS:
        return f"at most {MAX_TENANTS} tenants"
    bad = next((t for t in values if not _TENANT.match(t)), None)
    return None if bad is None else f"not a tenant id (letters, digits, . and -): {bad!r}"


def issuer_names(values: tuple[str, ...]) -> str | None:
    if len(values) > MAX_POLICY_ISSUERS:
        return f"at most {MAX_POLICY_ISSUERS} issuers"
    if len(set(values)) != len(values):
        return "names an issuer twice"
    bad = next((n for n in values if not ISSUER_NAME.match(n)), None)
    return None if bad is None else f"not an issuer name: {bad!r}"


def existing_file(path: str) -> str | None:
    """The file exists and this process may read it (a Secret mounted for another user fails here,
    naming the file, not later with a bare PermissionError)."""
    if not path:
        return None
    if not Path(path).is_file():
        return f"file not found: {path}"
    return None if os.access(path, os.R_OK) else f"not readable by this process (uid {os.getuid()}): {path}"


def otlp_url(url: str) -> str | None:
    ok = url.startswith(("http://", "https://")) and len(url.split("://", 1)[1]) > 0
    return None if ok else f"must be an http:// or https:// URL (OTLP/gRPC); got {url!r}"


def header_name(name: str) -> str | None:
    return None if HEADER_NAME.match(name) else f"not a valid header name: {name!r}"


def header_prefix(prefix: str) -> str | None:
    # A non-empty prefix keeps every header we emit apart from the proxy's own (Content-Length,
    # Authorization, x-envoy-*), and is what the proxies' prefix rules match.
    if not prefix.strip("-") or not HEADER_NAME.match(prefix):
        return f"not a valid, non-empty header prefix: {prefix!r}"
    return None


def header_names(names: tuple[str, ...]) -> str | None:
    bad = next((n for n in names if not HEADER_NAME.match(n)), None)
    return None if bad is None else f"invalid header {bad!r}"


def scopes(values: tuple[str, ...]) -> str | None:
    bad = next((s for s in values if not s or " " in s), None)
    return None if bad is None else f"invalid scope {bad!r}"


def networks(values: tuple[str, ...]) -> str | None:
    for cidr in values:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            return f"not an address or CIDR: {cidr!r}"
    return None


def asymmetric_algorithms(names: tuple[str, ...]) -> str | None:
    if "none" in (a.lower() for a in names) or any(a.startswith("HS") for a in names):
        return "only asymmetric algorithms are allowed"
    unknown = sorted(set(names) - JWT_ALGORITHMS)
    return f"unsupported: {', '.join(unknown)}" if unknown else None


def dpop_algorithms(names: tuple[str, ...]) -> str | None:
    if "none" in (a.lower() for a in names) or any(a.startswith("HS") for a in names):
        return "only asymmetric algorithms are allowed"
    unknown = sorted(set(names) - DPOP_ALGORITHMS)
    return f"unsupported: {', '.join(unknown)}" if unknown else None


def origins(values: tuple[str, ...]) -> str | None:
    """Public origins (RFC 6454): ``https://api.example.com`` or ``https://api.example.com:8443``,
    lower case, no path, query or user information."""
    for value in values:
        match = _ORIGIN.match(value)
        if match is None or (match.group(3) is not None and not 0 < int(match.group(3)) < 65536):
            return f"not an origin (http(s)://host[:port], lower case, no path): {value!r}"
    return None


def path_prefix(value: str) -> str | None:
    if value and (not value.startswith("/") or value.endswith("/") or not value.isprintable() or "?" in value):
        return "must be empty or start with / and not end with / (as Envoy's path_prefix)"
    return None


def realm(value: str) -> str | None:
    if '"' in value or "\\" in value or not value.isprintable():
        return "must not contain quotes, backslashes or control characters"
    return None


def redis_url(url: str) -> str | None:
    ok = url.startswith(("redis://", "rediss://")) and "@" not in url  # credentials: username/password keys
    return None if ok else f"must be a redis:// or rediss:// URL without credentials; got {url.split('@')[-1]!r}"


def redis_prefix(prefix: str) -> str | None:
    if not prefix or len(prefix) > 64 or not prefix.isprintable() or any(c in prefix for c in " {}*?[]"):
        return "must be 1-64 printable characters without spaces, braces or glob characters"
    return None


def host_ports(values: tuple[str, ...]) -> str | None:
    for value in values:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"not host:port: {value!r}"
    return None


TOKEN_FORMATS = frozenset({"introspection", "jwt"})


def token_formats(values: tuple[str, ...]) -> str | None:
    unknown = sorted(set(values) - TOKEN_FORMATS)
    if unknown:
        return f"unknown: {', '.join(unknown)} (introspection, jwt)"
    return None if values else "must not be empty"


def claim_values(values: object) -> str | None:
    """A claim condition's value: not empty, and one space-free word (``contain`` splits on spaces)."""
    bad = next((v for v in dict(values).values() if not v or " " in v), None)  # type: ignore[call-overload]
    return None if bad is None else f"a claim value must be one non-empty word; got {bad!r}"
