"""Cross-field rules: what no single key's declaration can say (ports differ, JWTs need audiences).

Each failure names the key to fix through :data:`KEY`, which refuses an undeclared name, so a rule
cannot report a key that does not exist.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from sidecar.config import checks
from sidecar.config.declare import ConfigError
from sidecar.config.sections import (
    DPOP_HEADERS,
    IDENTITY_CLAIMS,
    KEY,
    STANDARD_HEADERS,
    ClientCertConfig,
    Config,
    FleetConfig,
    IdentityConfig,
    IdpConfig,
    PolicyConfig,
    ResponseConfig,
    RouteConfig,
    ServerConfig,
)
from sidecar.support.jose import signing_key

_METHOD = re.compile(r"^[A-Z]{1,20}\Z")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]{0,252})?\Z|^\[[0-9a-f:.]+\]\Z")


def validate(config: Config) -> None:
    """Run every cross-field rule; single keys were checked against their declaration on reading."""
    _validate_server(config.server)
    _validate_server_limits(config.server)
    if config.idp_configured:
        _validate_idp(config.idp)
    _validate_issuers(config)
    if config.idp_configured or config.issuers:
        _validate_jwt_policy(config)
    _validate_client_cert(config.client_cert)
    if config.dpop.enabled and not config.dpop.algorithms:
        raise ConfigError(KEY.dpop.algorithms, "must not be empty when dpop.enabled is on")
    if config.dpop.enabled and config.server.workers > 1 and not config.fleet.enabled:
        # Each worker remembers the proofs it accepted; the kernel spreads connections over them.
        raise ConfigError(KEY.server.workers, f"with {KEY.dpop.enabled}, a proof replayed to another worker would "
                          f"not be caught: run one worker per process, or set {KEY.fleet.enabled} (the replay "
                          "check is then fleet-wide)")
    _validate_response(config.response)
    if config.fleet.enabled:
        _validate_fleet(config.fleet, config.idp)
    _validate_policies(config)
    _validate_identity(config)
    if config.events.enabled and not config.events.audience:
        raise ConfigError(KEY.events.audience, f"is required with {KEY.events.enabled}")
    if config.events.enabled and not any(i.issuer for i in config.every_issuer.values()):
        # A SET is accepted from a configured issuer only, verified with its published keys.
        raise ConfigError(KEY.idp.issuer, f"(or an issuers.NAME.issuer) is required with {KEY.events.enabled}")
    for index, route in enumerate(config.routes):
        _validate_route(f"routes[{index}]", route, config)


def _validate_server_limits(s: ServerConfig) -> None:
    if s.max_head_size < s.max_header_size:
        raise ConfigError(KEY.server.max_head_size, f"must be >= {KEY.server.max_header_size}")
    if s.purge_backoff_max < s.purge_backoff:
        raise ConfigError(KEY.server.purge_backoff_max, f"must be >= {KEY.server.purge_backoff}")


def _validate_server(s: ServerConfig) -> None:
    if s.port and s.port == s.admin_port and s.host == s.admin_host:
        raise ConfigError(KEY.server.admin_port, f"must differ from {KEY.server.port}")
    if s.grpc_port and s.grpc_port in (s.port, s.admin_port):
        raise ConfigError(KEY.server.grpc_port, f"must differ from {KEY.server.port} and {KEY.server.admin_port}")
    if s.workers > 1 and s.port == 0:
        raise ConfigError(KEY.server.workers, f"several workers need a fixed {KEY.server.port} (they share it)")
    if s.workers > 1 and s.admin_port and s.host == s.admin_host and \
            s.admin_port <= s.port < s.admin_port + s.workers:
        raise ConfigError(KEY.server.admin_port,
                          f"worker admin ports (admin_port + i) must not include {KEY.server.port}")


def _key(where: str, name: str) -> str:
    """``where.name`` for a key of ``[idp]`` (``idp`` or ``issuers.NAME``); refuses an undeclared one."""
    getattr(KEY.idp, name)
    return f"{where}.{name}"


def _validate_idp(i: IdpConfig, where: str = "idp") -> None:
    _validate_tenants(i, where)
    introspects = i.token_format != "jwt"
    if not i.client_id and introspects:
        raise ConfigError(_key(where, "client_id"), "is required for introspection")
    if i.auth_method in ("tls_client_auth", "self_signed_tls_client_auth") and introspects:
        if not i.cert_file:
            raise ConfigError(_key(where, "cert_file"), f"is required with auth_method {i.auth_method}")
        if not i.key_file:
            raise ConfigError(_key(where, "key_file"), f"is required with auth_method {i.auth_method}")
    elif i.auth_method == "private_key_jwt":
        if introspects and not i.assertion_key_file:
            raise ConfigError(_key(where, "assertion_key_file"), "is required with auth_method private_key_jwt")
    elif not (i.client_secret or i.client_secret_file) and introspects:
        raise ConfigError(_key(where, "client_secret"), f"is required with auth_method {i.auth_method}")
    if not i.jwt_algorithms and i.token_format != "introspection":
        raise ConfigError(_key(where, "jwt_algorithms"), "must not be empty unless token_format is introspection")


def _validate_tenants(i: IdpConfig, where: str) -> None:
    """A multi-tenant issuer: a template with one ``{tenant}``, an allow-list, keys by discovery only."""
    template = (i.issuer or "").count("{tenant}")
    if not i.tenants and template:
        raise ConfigError(_key(where, "tenants"), "is required when issuer holds {tenant}")
    if not i.tenants:
        return
    if template != 1 or "{" in (i.issuer or "").replace("{tenant}", ""):
        raise ConfigError(_key(where, "issuer"), "must hold {tenant} exactly once with tenants set")
    if i.token_format != "jwt":
        raise ConfigError(_key(where, "token_format"), "must be jwt with tenants (keys from each tenant's discovery)")
    for name in ("introspection_endpoint", "jwks_uri"):
        if getattr(i, name):
            raise ConfigError(_key(where, name), "cannot be set with tenants: each tenant's discovery names it")


def _where(name: str) -> str:
    return "idp" if name == "default" else f"issuers.{name}"


def _policies(config: Config) -> list[tuple[str, PolicyConfig]]:
    return [("policy", config.policy), *((f"policies.{n}", p) for n, p in config.policies.items())]


def _validate_issuers(config: Config) -> None:
    """Every issuer valid; several: each policy names its issuers, JWTs can be routed by ``iss``."""
    every = config.every_issuer
    for name, i in config.issuers.items():
        _validate_idp(i, _where(name))
    seen: dict[str, str] = {}
    for name, i in every.items():
        if len(every) > 1 and i.token_format != "introspection" and not i.issuer:
            raise ConfigError(_key(_where(name), "issuer"), "is required with several issuers: JWTs are routed "
                              "to the issuer their iss names")
        if i.issuer and seen.setdefault(i.issuer, name) != name:
            raise ConfigError(_key(_where(name), "issuer"), f"is also the issuer of {_where(seen[i.issuer])}")
    for where, policy in _policies(config):
        if len(every) > 1 and not policy.issuers:
            raise ConfigError(f"{where}.issuers", f"is required with several issuers ({', '.join(every)})")
        for name in policy.issuers:
            if name not in every:
                raise ConfigError(f"{where}.issuers", f"no issuer {name!r} ([idp] is default, or [issuers.NAME])")


def _validate_jwt_policy(config: Config) -> None:
    """RFC 9068 §4: the RS MUST check ``iss`` and ``aud``, so local validation needs both."""
    for name, i in config.every_issuer.items():
        if i.token_format not in ("jwt", "jwt_then_introspection"):
            continue
        where = _where(name)
        accepting = [(w, p) for w, p in _policies(config)
                     if name in config.policy_issuers(p) and "jwt" in p.token_formats]
        for policy_where, policy in accepting:
            if not policy.audiences:
                raise ConfigError(f"{policy_where}.audiences", f"is required with {_key(where, 'token_format')} "
                                  f"{i.token_format} unless token_formats leaves out jwt (RFC 9068 §4: aud MUST "
                                  "be validated)")
        if not (i.issuer or (accepting and all(p.allowed_issuers for _, p in accepting))):
            raise ConfigError(_key(where, "issuer"), f"or {KEY.policy.allowed_issuers} is required to validate iss "
                              "of JWTs")
        if not (i.issuer or i.jwks_uri):
            raise ConfigError(_key(where, "jwks_uri"), f"or {_key(where, 'issuer')} (discovery) is required to "
                              "validate JWTs")


def _validate_client_cert(c: ClientCertConfig) -> None:
    if c.memo_max_bytes < c.max_size:
        raise ConfigError(KEY.client_cert.memo_max_bytes, f"must be at least {KEY.client_cert.max_size}")


def _validate_response(r: ResponseConfig) -> None:
    standard = {suffix for _, suffix in STANDARD_HEADERS + DPOP_HEADERS}
    for claim, header in r.claims.items():
        if not checks.HEADER_NAME.match(header):
            raise ConfigError(f"{KEY.response.claims}.{claim}", f"not a valid header name: {header!r}")
        if header.lower() in standard:
            raise ConfigError(f"{KEY.response.claims}.{claim}", f"{header!r} is already a standard credential header")
    for name in r.remove_upstream_headers:
        if name.lower().startswith(r.prefix.lower()):
            # Envoy applies removals after the credential headers are set: it would drop ours.
            raise ConfigError(KEY.response.remove_upstream_headers, f"{name!r} is a credential header")


def warnings(config: Config) -> list[str]:
    """Valid but risky settings: ``check-config`` prints them and the service logs them at start."""
    found = []
    if config.client_cert.format == "auto":
        found.append(f"{KEY.client_cert.format} is auto: set the format your proxy writes. auto reads XFCC by "
                     "its last element and refuses any other header holding more than one certificate, so a "
                     "proxy that appends to a client-sent header cannot be fooled, but an explicit format is "
                     "clearer")
    if any(ipaddress.ip_network(cidr, strict=False).prefixlen == 0 for cidr in config.client_cert.trusted_proxies):
        found.append(f"{KEY.client_cert.trusted_proxies} trusts every address: any client can then forward a "
                     "certificate header")
    secret = admin_secret(config.server)
    if secret is not None and len(secret) < STRONG_SECRET:
        found.append(f"{KEY.server.admin_secret} has fewer than {STRONG_SECRET} characters: the right secret is "
                     "never locked out, so its strength is what stops guessing (openssl rand -base64 32)")
    return found

def _validate_fleet(f: FleetConfig, i: IdpConfig) -> None:
    for name in ("secret_file", "seal_key_file"):
        if not getattr(f, name):
            raise ConfigError(getattr(KEY.fleet, name), f"is required with {KEY.fleet.enabled}")
    if f.mode == "sentinel" and not f.sentinels:
        raise ConfigError(KEY.fleet.sentinels, "is required in sentinel mode")
    if bool(f.cert_file) != bool(f.key_file):
        raise ConfigError(KEY.fleet.key_file, f"{KEY.fleet.cert_file} and {KEY.fleet.key_file} go together")
    tls_files = f.ca_file or f.cert_file
    if tls_files and not f.url.startswith("rediss://"):
        raise ConfigError(KEY.fleet.url, "must be rediss:// when TLS files are given")
    if f.lock_wait > i.timeout:
        raise ConfigError(KEY.fleet.lock_wait, f"must be at most {KEY.idp.timeout} ({i.timeout})")
    for name in ("secret_file", "seal_key_file", "previous_seal_key_file"):
        path = getattr(f, name)
        if path and len(Path(path).read_bytes().strip()) < 32:
            raise ConfigError(getattr(KEY.fleet, name), "the file must hold at least 32 characters")


def fleet_password(f: FleetConfig) -> str | None:
    """The Redis password, from the config or its file (read at start, never logged)."""
    if f.password_file:
        return Path(f.password_file).read_text(encoding="utf-8").strip()
    return f.password


def _validate_policies(config: Config) -> None:
    """Header claims: valid names, none standard, and one claim per header across every policy."""
    source = {h.lower(): claim for claim, h in config.response.claims.items()}
    every: list[tuple[str, PolicyConfig]] = [("policy", config.policy)]
    every += [(f"policies.{name}", p) for name, p in config.policies.items()]
    standard = {suffix for _, suffix in STANDARD_HEADERS + DPOP_HEADERS}
    for where, policy in every:
        for claim, header in policy.claims.items():
            if not checks.HEADER_NAME.match(header) or header.lower() in standard:
                raise ConfigError(f"{where}.claims.{claim}", f"not a valid, non-standard header name: {header!r}")
            if source.setdefault(header.lower(), claim) != claim:
                raise ConfigError(f"{where}.claims.{claim}", f"header {header!r} already carries another claim")


def _validate_route(where: str, route: RouteConfig, config: Config) -> None:
    if route.policy != "default" and route.policy not in config.policies:
        raise ConfigError(f"{where}.policy", f"no policy {route.policy!r} ([policies.NAME] or default)")
    for method in route.methods:
        if not _METHOD.match(method):
            raise ConfigError(f"{where}.methods", f"not an upper-case method: {method!r}")
    for host in route.hosts:
        if not _HOST.match(host):
            raise ConfigError(f"{where}.hosts", f"not a lower-case host name without port: {host!r}")
    if route.match == "regex":
        if len(route.path) > 1024:
            raise ConfigError(f"{where}.path", "a regular expression of at most 1024 characters")
        try:
            re.compile(route.path)
        except re.error as exc:
            raise ConfigError(f"{where}.path", f"not a regular expression: {exc}") from None
        return
    segments = route.path.split("/")
    if not route.path.startswith("/") or "" in segments[1:-1] or {".", ".."} & set(segments) \
            or any(c in route.path for c in "%;\\?#") or not route.path.isprintable():
        raise ConfigError(f"{where}.path", f"a normalized path (/a/b: no //, dot segments, %, ;, ?, #): "
                          f"{route.path!r}")
    if route.match != "glob" and "*" in route.path:
        raise ConfigError(f"{where}.path", "`*` needs match = \"glob\"")


STRONG_SECRET = 32  # characters of a purge secret that no guessing rate can find (about 190 bits, random)


def admin_secret(s: ServerConfig) -> str | None:
    """The admin purge secret, from the config or its file (read at start, never logged)."""
    if s.admin_secret_file:
        secret = Path(s.admin_secret_file).read_text(encoding="utf-8").strip()
        if len(secret) < 16:
            raise ConfigError(KEY.server.admin_secret_file, "the secret must be at least 16 characters")
        return secret
    return s.admin_secret


def client_secret(i: IdpConfig) -> str | None:
    """The client secret, from the config or its file (read at start, never logged)."""
    if i.client_secret_file:
        return Path(i.client_secret_file).read_text(encoding="utf-8").strip()
    return i.client_secret


def _validate_identity(config: Config) -> None:
    """Identity tokens (docs/identity.md): a key, an issuer and, per policy, an audience; the header
    in the credential namespace, which every shipped front clears of client copies and overwrites."""
    i = config.identity
    every = [("policy", config.policy), *((f"policies.{name}", p) for name, p in config.policies.items())]
    for where, policy in every:
        if policy.identity and not policy.identity_audience:
            raise ConfigError(f"{where}.identity_audience", "is required with identity = true")
        if reserved := sorted(IDENTITY_CLAIMS.intersection(policy.identity_claims)):
            raise ConfigError(f"{where}.identity_claims", f"the sidecar sets {', '.join(reserved)} itself")
    if any(p.identity for _, p in every) and not i.key_file:
        raise ConfigError(KEY.identity.key_file, "is required when a policy sets identity = true")
    if not i.key_file:
        return
    if not i.issuer:
        raise ConfigError(KEY.identity.issuer, f"is required with {KEY.identity.key_file}")
    prefix, header = config.response.prefix.lower(), i.header.lower()
    if not header.startswith(prefix) or header == prefix:
        # A name outside the namespace would pass from the client to the upstream wherever a front
        # only clears the namespace (every shipped one does), forged.py would not see it either.
        raise ConfigError(KEY.identity.header, f"must be a name in the {KEY.response.prefix} namespace "
                          f"({prefix}...); got {i.header!r}")
    taken = {prefix + suffix for _, suffix in STANDARD_HEADERS + DPOP_HEADERS}
    taken |= {prefix + h.lower() for _, p in every for h in p.claims.values()}
    taken |= {prefix + h.lower() for h in config.response.claims.values()}
    if header in taken:
        raise ConfigError(KEY.identity.header, f"{i.header!r} is already a credential header")
    if i.rotation_overlap < i.ttl:
        raise ConfigError(KEY.identity.rotation_overlap, f"must be at least {KEY.identity.ttl} ({i.ttl})")
    if i.jwks_file and not Path(i.jwks_file).parent.is_dir():
        raise ConfigError(KEY.identity.jwks_file, f"the directory of {i.jwks_file} does not exist")
    identity_key(i)


def identity_key(i: IdentityConfig) -> bytes:
    """The identity signing key file's content, checked to hold an Ed25519 or P-256 private key
    (read at start; the key itself is never logged)."""
    assert i.key_file
    try:
        pem = Path(i.key_file).read_bytes()
        signing_key(pem)
    except OSError as exc:
        raise ConfigError(KEY.identity.key_file, f"cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(KEY.identity.key_file, str(exc)) from None
    return pem
