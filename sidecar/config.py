"""Typed configuration: a TOML file plus environment overrides, validated at start.

Every key has one dotted name (``idp.client_id``) and one environment variable made from it:
``SIDECAR_`` + section + ``__`` + key, upper-cased (``SIDECAR_IDP__CLIENT_ID``). Environment
values win over the file. Lists are comma-separated; maps are ``key=value`` pairs separated by
commas. An invalid value raises :class:`ConfigError`, whose message starts with the dotted key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

ENV_PREFIX = "SIDECAR_"
BindingMode = Literal["off", "optional", "strict"]
AuthMethod = Literal["tls_client_auth", "client_secret_basic", "client_secret_post"]
TokenFormat = Literal["auto", "introspection", "jwt", "jwt_then_introspection"]
CertFormat = Literal[
    "auto", "escaped_pem", "pem", "der_base64", "xfcc", "alb", "traefik", "rfc9440"
]
DecisionLogging = Literal["all", "deny", "off"]

# \Z, not $: "$" also matches before a trailing newline, which would let "name\n" through.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


# (TokenInfo attribute, header suffix): the credential headers every allow carries.
STANDARD_HEADERS: tuple[tuple[str, str], ...] = (
    ("sub", "sub"),
    ("client_id", "client-id"),
    ("scope", "scope"),
    ("iss", "iss"),
    ("aud", "aud"),
    ("exp", "exp"),
    ("iat", "iat"),
    ("jti", "jti"),
    ("token_type", "token-type"),
    ("username", "username"),
    ("cnf_x5t_s256", "cnf-x5t-s256"),
)


class ConfigError(ValueError):
    """An invalid configuration value; the message begins with the dotted key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    # Forwarded certificate chains exceed aiohttp's 8190-byte default field limit.
    max_header_size: int = 65536
    # nginx auth_request turns any status but 401/403 into 500; set 401 behind nginx.
    invalid_request_status: int = 400
    shutdown_grace: float = 20.0
    # Bearer secret of the admin purge endpoint (POST /purge); unset: no purge endpoint.
    admin_secret: str | None = field(default=None, repr=False)
    admin_secret_file: str | None = None
    # Envoy gRPC ext_authz (envoy.service.auth.v3.Authorization/Check); 0 turns it off.
    grpc_port: int = 0
    grpc_host: str = "127.0.0.1"
    grpc_reflection: bool = False
    # Processes serving the check port (SO_REUSEPORT); worker i has admin port admin_port + i.
    workers: int = 1
    # Seconds a request head (and a purge body) may take from its first byte (both HTTP ports).
    header_timeout: float = 10.0
    # Bytes of an incomplete request head on the check port (aiohttp alone allows 128 fields).
    max_head_size: int = 131072
    # Open connections on the check port (Envoy's default cluster cap is 1024 too) and the admin
    # port; both are lowered at start to fit the file-descriptor limit, admin first served.
    max_connections: int = 1024
    admin_max_connections: int = 16
    # Peers that may call POST /purge (the pod's own containers by default), the attempts per
    # second and at once over all peers, and the lockout after a failed authentication
    # (purge_backoff seconds, doubled per further failure, at most purge_backoff_max).
    purge_peers: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    purge_rate: float = 5.0
    purge_burst: int = 10
    purge_backoff: float = 1.0
    purge_backoff_max: float = 300.0


@dataclass(frozen=True)
class IdpConfig:
    issuer: str | None = None
    introspection_endpoint: str | None = None
    jwks_uri: str | None = None
    client_id: str = ""
    auth_method: AuthMethod = "tls_client_auth"
    client_secret: str | None = field(default=None, repr=False)
    client_secret_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    connect_timeout: float = 0.5
    timeout: float = 1.5
    max_connections: int = 32
    token_format: TokenFormat = "auto"
    jwt_algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
    # Seconds between checks of cert_file, key_file and ca_file for a rotation; 0 turns it off.
    reload_interval: float = 10.0
    # Protecting the IdP (idp_guard.py): concurrency bound, safe retries, circuit breaker.
    max_concurrent: int = 32
    retries: int = 1
    retry_backoff: float = 0.05
    breaker_failures: int = 5
    breaker_open: float = 5.0
    jwks_max_age: float = 300.0  # seconds a fetched JWK Set is used before it is fetched again
    jwks_min_refresh_interval: float = 10.0  # at most one unknown-kid refresh per interval


@dataclass(frozen=True)
class CacheConfig:
    max_entries: int = 100_000
    max_ttl: float = 300.0
    negative_ttl: float = 10.0
    # Seconds past its normal expiry (never past exp) an active, bound entry may answer while
    # the IdP is unavailable; 0 turns stale-if-error off.
    stale_if_error: float = 0.0


@dataclass(frozen=True)
class PolicyConfig:
    binding: BindingMode = "strict"
    required_scopes: tuple[str, ...] = ()
    allowed_issuers: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    leeway: float = 5.0


@dataclass(frozen=True)
class ClientCertConfig:
    header: str = "x-client-cert"
    format: CertFormat = "auto"
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    xfcc_trust_hash: bool = False


@dataclass(frozen=True)
class ResponseConfig:
    prefix: str = "x-credential-"
    claims: Mapping[str, str] = field(default_factory=dict)
    max_value_length: int = 1024
    realm: str = "api"
    remove_upstream_headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    decisions: DecisionLogging = "all"


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    idp: IdpConfig = field(default_factory=IdpConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    client_cert: ClientCertConfig = field(default_factory=ClientCertConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def idp_configured(self) -> bool:
        i = self.idp
        return bool(i.issuer or i.introspection_endpoint or i.jwks_uri)


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides ``section.key``."""
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the file (if any), apply environment overrides, convert and validate."""
    env = os.environ if env is None else env
    path = path or env.get(f"{ENV_PREFIX}CONFIG") or None
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:  # a ValueError, not an OSError: it escaped as a traceback
            raise ConfigError("config", f"{path} is not UTF-8 (byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from exc
    return from_mapping(raw, env)


def from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    env = env or {}
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for name in raw:
        if name not in hints:
            raise ConfigError(name, "unknown section")
    for name, section_type in hints.items():
        given = raw.get(name, {})
        if not isinstance(given, Mapping):
            raise ConfigError(name, "must be a table")
        sections[name] = _build_section(name, section_type, given, env)
    config = Config(**sections)
    validate(config)
    return config


def _build_section(name: str, cls: type[Any], given: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    for key in given:
        if key not in hints:
            raise ConfigError(f"{name}.{key}", "unknown key")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        dotted = f"{name}.{f.name}"
        env_value = env.get(env_name(name, f.name))
        if env_value is not None:
            values[f.name] = _convert(dotted, hints[f.name], env_value, from_env=True)
        elif f.name in given:
            values[f.name] = _convert(dotted, hints[f.name], given[f.name], from_env=False)
    return cls(**values)


def _convert(key: str, tp: Any, value: Any, *, from_env: bool) -> Any:
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in get_args(tp) if a is not type(None))
        if value is None or (from_env and value == ""):
            return None
        return _convert(key, inner, value, from_env=from_env)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin is tuple:
        items = [s.strip() for s in value.split(",") if s.strip()] if from_env else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(key, "must be a list of strings")
        return tuple(items)
    if origin is Mapping:
        return _convert_map(key, value, from_env=from_env)
    if tp is bool:
        if from_env:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(key, f"must be true or false; got {value!r}")
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(key, "must be true or false")
        return value
    if tp in (int, float):
        try:
            number = tp(value) if from_env else value
        except ValueError:
            raise ConfigError(key, f"must be a number; got {value!r}") from None
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ConfigError(key, "must be a number")
        if tp is int and not isinstance(number, int):
            raise ConfigError(key, "must be a whole number")
        if not math.isfinite(number):  # TOML and float() accept nan and inf; nan passes every "<" check
            raise ConfigError(key, "must be a finite number")
        return tp(number)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, "must be a string")
        return value
    raise ConfigError(key, f"unsupported type {tp!r}")  # pragma: no cover - schema bug


def _convert_map(key: str, value: Any, *, from_env: bool) -> dict[str, str]:
    if from_env:
        pairs = [p.strip() for p in value.split(",") if p.strip()]
        result: dict[str, str] = {}
        for pair in pairs:
            k, sep, v = pair.partition("=")
            if not sep or not k.strip() or not v.strip():
                raise ConfigError(key, f"expected key=value pairs; got {pair!r}")
            result[k.strip()] = v.strip()
        return result
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(key, "must be a table of strings")
    return dict(value)


def validate(config: Config) -> None:
    """Cross-field rules; each failure names the key to fix."""
    _validate_server(config.server)
    if config.idp_configured:
        _validate_idp(config.idp)
    c = config.cache
    if c.max_entries < 0:
        raise ConfigError("cache.max_entries", "must be >= 0 (0 turns the cache off)")
    for name in ("max_ttl", "negative_ttl", "stale_if_error"):
        if getattr(c, name) < 0:
            raise ConfigError(f"cache.{name}", "must be >= 0")
    p = config.policy
    if p.leeway < 0 or p.leeway > 300:
        raise ConfigError("policy.leeway", "must be between 0 and 300 seconds")
    for scope in p.required_scopes:
        if not scope or " " in scope:
            raise ConfigError("policy.required_scopes", f"invalid scope {scope!r}")
    _validate_client_cert(config.client_cert)
    _validate_response(config.response)
    if config.idp_configured:
        _validate_jwt_policy(config)


def _validate_server(s: ServerConfig) -> None:
    for name in ("port", "admin_port", "grpc_port"):
        if not 0 <= getattr(s, name) <= 65535:
            raise ConfigError(f"server.{name}", "must be a TCP port (0-65535)")
    if s.port and s.port == s.admin_port and s.host == s.admin_host:
        raise ConfigError("server.admin_port", "must differ from server.port")
    if s.grpc_port and s.grpc_port in (s.port, s.admin_port):
        raise ConfigError("server.grpc_port", "must differ from server.port and server.admin_port")
    if s.max_header_size < 8190:
        raise ConfigError("server.max_header_size", "must be >= 8190")
    if s.invalid_request_status not in (400, 401):
        raise ConfigError("server.invalid_request_status", "must be 400 or 401")
    if s.shutdown_grace < 0:
        raise ConfigError("server.shutdown_grace", "must be >= 0")
    if s.admin_secret is not None and len(s.admin_secret) < 16:
        raise ConfigError("server.admin_secret", "must be at least 16 characters")
    if s.admin_secret_file and not Path(s.admin_secret_file).is_file():
        raise ConfigError("server.admin_secret_file", f"file not found: {s.admin_secret_file}")
    if not 1 <= s.workers <= 64:
        raise ConfigError("server.workers", "must be between 1 and 64")
    if s.workers > 1 and s.port == 0:
        raise ConfigError("server.workers", "several workers need a fixed server.port (they share it)")
    if s.workers > 1 and s.admin_port and s.host == s.admin_host and \
            s.admin_port <= s.port < s.admin_port + s.workers:
        raise ConfigError("server.admin_port", "worker admin ports (admin_port + i) must not include server.port")
    _validate_server_limits(s)


def _validate_server_limits(s: ServerConfig) -> None:
    if not 0 < s.header_timeout <= 300:
        raise ConfigError("server.header_timeout", "must be > 0 and <= 300 seconds")
    if s.max_head_size < s.max_header_size:
        raise ConfigError("server.max_head_size", "must be >= server.max_header_size")
    if s.max_connections < 1:
        raise ConfigError("server.max_connections", "must be >= 1")
    if not 1 <= s.admin_max_connections <= 1024:
        raise ConfigError("server.admin_max_connections", "must be between 1 and 1024")
    for cidr in s.purge_peers:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError("server.purge_peers", f"not an address or CIDR: {cidr!r}") from None
    if s.purge_rate <= 0:
        raise ConfigError("server.purge_rate", "must be > 0")
    if s.purge_burst < 1:
        raise ConfigError("server.purge_burst", "must be >= 1")
    if s.purge_backoff <= 0:
        raise ConfigError("server.purge_backoff", "must be > 0")
    if s.purge_backoff_max < s.purge_backoff:
        raise ConfigError("server.purge_backoff_max", "must be >= server.purge_backoff")


def _validate_idp(i: IdpConfig) -> None:
    for name in ("issuer", "introspection_endpoint", "jwks_uri"):
        url = getattr(i, name)
        if url is not None and not url.startswith("https://"):
            raise ConfigError(f"idp.{name}", f"must be an https:// URL; got {url!r}")
    if not i.client_id and i.token_format != "jwt":
        raise ConfigError("idp.client_id", "is required for introspection")
    if i.auth_method == "tls_client_auth" and i.token_format != "jwt":
        for name in ("cert_file", "key_file"):
            if not getattr(i, name):
                raise ConfigError(f"idp.{name}", "is required with auth_method tls_client_auth")
    elif not (i.client_secret or i.client_secret_file) and i.token_format != "jwt":
        raise ConfigError("idp.client_secret", f"is required with auth_method {i.auth_method}")
    for name in ("cert_file", "key_file", "ca_file", "client_secret_file"):
        path = getattr(i, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"idp.{name}", f"file not found: {path}")
    if i.connect_timeout <= 0 or i.timeout <= 0:
        raise ConfigError("idp.timeout", "timeouts must be > 0")
    if i.max_connections < 1:
        raise ConfigError("idp.max_connections", "must be >= 1")
    if i.reload_interval < 0:
        raise ConfigError("idp.reload_interval", "must be >= 0 (0 turns reloading off)")
    _validate_idp_guard(i)
    if "none" in (a.lower() for a in i.jwt_algorithms) or any(a.startswith("HS") for a in i.jwt_algorithms):
        raise ConfigError("idp.jwt_algorithms", "only asymmetric algorithms are allowed")
    _validate_jwks(i)


JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "ES256K", "EdDSA"}
)


def _validate_jwks(i: IdpConfig) -> None:
    unknown = sorted(set(i.jwt_algorithms) - JWT_ALGORITHMS)
    if unknown:
        raise ConfigError("idp.jwt_algorithms", f"unsupported: {', '.join(unknown)}")
    if not i.jwt_algorithms and i.token_format != "introspection":
        raise ConfigError("idp.jwt_algorithms", "must not be empty unless token_format is introspection")
    if i.jwks_max_age <= 0:
        raise ConfigError("idp.jwks_max_age", "must be > 0")
    if i.jwks_min_refresh_interval < 0:
        raise ConfigError("idp.jwks_min_refresh_interval", "must be >= 0")


def _validate_jwt_policy(config: Config) -> None:
    """RFC 9068 §4: the RS MUST check ``iss`` and ``aud``, so local validation needs both."""
    if config.idp.token_format not in ("jwt", "jwt_then_introspection"):
        return
    if not config.policy.audiences:
        raise ConfigError("policy.audiences", f"is required with idp.token_format {config.idp.token_format}"
                                              " (RFC 9068 §4: aud MUST be validated)")
    if not (config.idp.issuer or config.policy.allowed_issuers):
        raise ConfigError("idp.issuer", "or policy.allowed_issuers is required to validate iss of JWTs")
    if not (config.idp.issuer or config.idp.jwks_uri):
        raise ConfigError("idp.jwks_uri", "or idp.issuer (discovery) is required to validate JWTs")


def _validate_idp_guard(i: IdpConfig) -> None:
    if i.max_concurrent < 1:
        raise ConfigError("idp.max_concurrent", "must be >= 1")
    if not 0 <= i.retries <= 5:
        raise ConfigError("idp.retries", "must be between 0 and 5")
    if i.retry_backoff < 0:
        raise ConfigError("idp.retry_backoff", "must be >= 0")
    if i.breaker_failures < 0:
        raise ConfigError("idp.breaker_failures", "must be >= 0 (0 turns the breaker off)")
    if i.breaker_open <= 0:
        raise ConfigError("idp.breaker_open", "must be > 0")


def _validate_client_cert(c: ClientCertConfig) -> None:
    if not _HEADER_NAME.match(c.header):
        raise ConfigError("client_cert.header", f"not a valid header name: {c.header!r}")
    for cidr in c.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError("client_cert.trusted_proxies", f"not an address or CIDR: {cidr!r}") from None


def _validate_response(r: ResponseConfig) -> None:
    # A non-empty prefix keeps every header we emit apart from the proxy's own (Content-Length,
    # Authorization, x-envoy-*), and is what the proxies' prefix rules match.
    if not r.prefix.strip("-") or not _HEADER_NAME.match(r.prefix):
        raise ConfigError("response.prefix", f"not a valid, non-empty header prefix: {r.prefix!r}")
    standard = {suffix for _, suffix in STANDARD_HEADERS}
    for claim, header in r.claims.items():
        if not _HEADER_NAME.match(header):
            raise ConfigError(f"response.claims.{claim}", f"not a valid header name: {header!r}")
        if header.lower() in standard:
            raise ConfigError(f"response.claims.{claim}", f"{header!r} is already a standard credential header")
    if not 16 <= r.max_value_length <= 8192:
        raise ConfigError("response.max_value_length", "must be between 16 and 8192")
    if '"' in r.realm or "\\" in r.realm or not r.realm.isprintable():
        raise ConfigError("response.realm", "must not contain quotes, backslashes or control characters")
    for name in r.remove_upstream_headers:
        if not _HEADER_NAME.match(name):
            raise ConfigError("response.remove_upstream_headers", f"invalid header {name!r}")
        if name.lower().startswith(r.prefix.lower()):
            # Envoy applies removals after the credential headers are set: it would drop ours.
            raise ConfigError("response.remove_upstream_headers", f"{name!r} is a credential header")


def admin_secret(s: ServerConfig) -> str | None:
    """The admin purge secret, from the config or its file (read at start, never logged)."""
    if s.admin_secret_file:
        secret = Path(s.admin_secret_file).read_text(encoding="utf-8").strip()
        if len(secret) < 16:
            raise ConfigError("server.admin_secret_file", "the secret must be at least 16 characters")
        return secret
    return s.admin_secret


def client_secret(i: IdpConfig) -> str | None:
    """The client secret, from the config or its file (read at start, never logged)."""
    if i.client_secret_file:
        return Path(i.client_secret_file).read_text(encoding="utf-8").strip()
    return i.client_secret
