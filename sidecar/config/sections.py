"""Every configuration key, declared once: section, name, type, default, bounds and one line of doc.

The section dataclasses are the typed, frozen values the rest of the service reads
(``config.idp.timeout``); :data:`KEYS` lists the declarations in order for the loader and the table.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sidecar.config import checks
from sidecar.config.declare import Spec, env_name, key, spec_of, tcp_port

BindingMode = Literal["off", "optional", "strict"]
AuthMethod = Literal["tls_client_auth", "self_signed_tls_client_auth", "private_key_jwt", "client_secret_basic",
                     "client_secret_post"]
TokenFormat = Literal["auto", "introspection", "jwt", "jwt_then_introspection"]
IdpProfile = Literal["rfc9068", "keycloak", "entra", "okta", "auth0"]
CertFormat = Literal[
    "auto", "escaped_pem", "pem", "der_base64", "xfcc", "alb", "traefik", "rfc9440"
]
DecisionLogging = Literal["all", "deny", "off"]
ScopeMatch = Literal["all", "any"]
PathMatch = Literal["prefix", "exact", "glob", "regex"]
LogLevel = Literal["debug", "info", "warning", "error"]
ForgedHeaders = Literal["remove", "deny"]
NonceMode = Literal["off", "optional", "required"]
FleetMode = Literal["standalone", "cluster", "sentinel"]

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
# Added with dpop.enabled: the DPoP key's thumbprint, and the binding method verified (mtls, dpop).
DPOP_HEADERS: tuple[tuple[str, str], ...] = (("cnf_jkt", "cnf-jkt"), ("cnf_method", "cnf-method"))

# The identity token's claims the sidecar sets itself (core/identity.py): identity_claims cannot name them.
IDENTITY_CLAIMS = frozenset({"iss", "aud", "sub", "client_id", "scope", "cnf", "iat", "exp", "nbf", "jti", "policy"})

_FILE = (checks.existing_file,)
_URL = (checks.https_url,)


@dataclass(frozen=True)
class ServerConfig:
    """The check port, the admin port (health, readiness, metrics, purge), the gRPC port, workers and
    the limits of each port."""

    host: str = key("127.0.0.1", "address of the check port (any method, any path)", restart=True)
    port: int = tcp_port(8080, "the check port")
    admin_host: str = key("127.0.0.1", "address of the admin port (`/healthz`, `/readyz`, `/metrics`)",
                          restart=True)
    admin_port: int = tcp_port(8081, "the admin port")
    max_header_size: int = key(65536, "header field limit; forwarded chains exceed aiohttp's 8190", ge=8190,
                               restart=True)
    invalid_request_status: int = key(400, "status of a malformed request; nginx turns 400 into 500, so set 401 there",
                                      choices=(400, 401))
    shutdown_grace: float = key(20.0, "time for checks in flight to finish after SIGTERM (and for the old "
                                      "configuration's after a reload)", ge=0, unit="seconds", restart=True)
    admin_secret: str | None = key(None, "bearer secret of `POST /purge` on the admin port; unset: no purge endpoint",
                                   min_length=16, secret=True, restart=True)
    admin_secret_file: str | None = key(None, "file holding `server.admin_secret` (at least 16 characters)",
                                        checks=_FILE, restart=True)
    grpc_port: int = tcp_port(0, "Envoy gRPC ext_authz port (`envoy.service.auth.v3.Authorization`, `grpc.health.v1`); "
                            "`0` turns it off")
    grpc_host: str = key("127.0.0.1", "address of the gRPC port", restart=True)
    grpc_reflection: bool = key(False, "serve gRPC reflection (needs the `grpc-reflection` extra)", restart=True)
    workers: int = key(1, "processes sharing the check port (`SO_REUSEPORT`); worker *i* has admin port "
                          "`admin_port + i`", ge=1, le=64, restart=True)
    header_timeout: float = key(10.0, "time a request head (and a purge body) may take from its first byte, both "
                                      "HTTP ports; `408` past it", gt=0, le=300, unit="seconds", restart=True)
    max_head_size: int = key(131072, "bytes of an unfinished request head on the check port; `431` past it",
                             ge=8190, unit="bytes", restart=True)
    max_connections: int = key(1024, "open connections on the check port; lowered at start to fit the open-files "
                                     "limit", ge=1, restart=True)
    admin_max_connections: int = key(16, "open connections on the admin port (a quarter per address); lowered "
                                         "first to fit", ge=1, le=1024, restart=True)
    purge_peers: tuple[str, ...] = key(("127.0.0.1/32", "::1/128"), "addresses that may call `POST /purge`",
                                       checks=(checks.networks,), restart=True)
    purge_rate: float = key(5.0, "purge attempts with a wrong secret answered per second, all addresses together "
                                 "(the right secret is never limited)", gt=0, restart=True)
    purge_burst: int = key(10, "purge attempts with a wrong secret answered at once, all addresses together", ge=1,
                           restart=True)
    purge_backoff: float = key(1.0, "after a wrong purge secret, that address's wrong attempts get 429 this long, "
                                    "doubled per further failure", gt=0, unit="seconds", restart=True)
    purge_backoff_max: float = key(300.0, "longest purge lockout of wrong attempts", gt=0, unit="seconds",
                                   restart=True)


@dataclass(frozen=True)
class IdpConfig:
    """The identity provider: where it is, how the sidecar authenticates to it, how tokens are
    validated, and how it is protected."""

    issuer: str | None = key(None, "discovery: OpenID `/.well-known/openid-configuration`, then RFC 8414",
                             checks=_URL)
    introspection_endpoint: str | None = key(None, "explicit introspection endpoint (wins over discovery)",
                                             checks=_URL)
    jwks_uri: str | None = key(None, "explicit JWK Set URL (wins over discovery)", checks=_URL)
    client_id: str = key("", "our client at the IdP (sent in the form for `tls_client_auth`)")
    auth_method: AuthMethod = key("tls_client_auth", "how we authenticate to the IdP")
    client_secret: str | None = key(None, "secret for the `client_secret_*` methods", secret=True)
    client_secret_file: str | None = key(None, "file holding `idp.client_secret`", checks=_FILE)
    cert_file: str | None = key(None, "our client certificate (RFC 8705 §2.1), PEM", checks=_FILE)
    key_file: str | None = key(None, "the private key of `idp.cert_file`, PEM", checks=_FILE)
    key_password: str | None = key(None, "password of `idp.key_file`, if encrypted", secret=True)
    assertion_key_file: str | None = key(None, "`private_key_jwt`: the PEM private key that signs our client "
                                               "assertions (re-read when it changes)", checks=_FILE)
    assertion_alg: Literal["RS256", "PS256", "ES256", "ES384", "EdDSA"] = key(
        "ES256", "`private_key_jwt`: the assertion's signature algorithm (fits the key)")
    assertion_kid: str | None = key(None, "`private_key_jwt`: the `kid` of that key at the IdP")
    assertion_audience: str | None = key(None, "`private_key_jwt`: the assertion's `aud` (default: `idp.issuer`, "
                                               "else the endpoint)")
    ca_file: str | None = key(None, "CA bundle that verifies the IdP's server certificate (default: system store)",
                              checks=_FILE)
    introspection_response: Literal["json", "jwt_preferred", "jwt_required"] = key(
        "json", "ask for RFC 9701 signed introspection answers (verified with the issuer's JWK Set); `jwt_required`: "
                "an unsigned answer fails closed")
    connect_timeout: float = key(0.5, "TCP and TLS connect timeout to the IdP; keep below the proxy's timeout",
                                 gt=0, unit="seconds")
    timeout: float = key(1.5, "whole IdP call timeout; keep below the proxy's timeout", gt=0, unit="seconds")
    max_connections: int = key(32, "keep-alive pool to the IdP", ge=1)
    token_format: TokenFormat = key("auto", "how tokens are validated: by introspection, as JWTs, or both")
    jwt_algorithms: tuple[str, ...] = key(("RS256", "PS256", "ES256", "EdDSA"),
                                          "accepted JWT signature algorithms (asymmetric only)",
                                          checks=(checks.asymmetric_algorithms,))
    reload_interval: float = key(10.0, "time between checks of `cert_file`, `key_file`, `ca_file` for a rotation; "
                                       "`0` turns reloading off", ge=0, unit="seconds")
    max_concurrent: int = key(32, "introspection calls in flight at once; a call that finds no slot within "
                                  "`idp.timeout` is denied (`saturated`)", ge=1)
    retries: int = key(1, "repeats of a call that never reached the IdP (refused, connect timeout, closed "
                          "without answer)", ge=0, le=5)
    retry_backoff: float = key(0.05, "full-jitter exponential backoff base between retries", ge=0, unit="seconds")
    breaker_failures: int = key(5, "consecutive IdP failures that open the circuit breaker; `0` turns it off", ge=0)
    breaker_open: float = key(5.0, "time the breaker stays open before each background probe (longer if a "
                                   "503's `Retry-After` says so)", gt=0, unit="seconds")
    jwks_max_age: float = key(300.0, "time a fetched JWK Set is used before it is fetched again", gt=0,
                              unit="seconds")
    jwks_min_refresh_interval: float = key(10.0, "at most one JWK Set refresh per interval for tokens naming an "
                                                 "unknown `kid`", ge=0, unit="seconds")
    profile: IdpProfile = key("rfc9068", "the IdP's JWT access token shapes: accepted `typ`, where the scopes and the "
                                         "client are (docs/issuers.md); `keycloak` for Keycloak's default `typ: JWT`")
    tenants: tuple[str, ...] = key((), "multi-tenant issuer: `issuer` holds `{tenant}` and these are the tenants "
                                       "accepted, each with its own discovery and keys", checks=(checks.tenants,))


@dataclass(frozen=True)
class CacheConfig:
    """The token cache: its size, the lifetimes of answers, inactive answers and stale-if-error."""

    max_entries: int = key(100_000, "cached decisions at most; `0` turns the cache off", ge=0)
    max_ttl: float = key(300.0, "longest life of an entry; never past the token's `exp`", ge=0, unit="seconds")
    negative_ttl: float = key(10.0, "how long an inactive answer is remembered", ge=0, unit="seconds")
    negative_max_entries: int = key(10_000, "inactive answers at most, in a store of their own (a flood of random "
                                            "tokens cannot evict valid ones); `0`: not cached", ge=0)
    stale_if_error: float = key(0.0, "time past its expiry (never past `exp`) an active, bound entry may answer "
                                     "while the IdP is unavailable; `0` turns it off", ge=0, unit="seconds")


@dataclass(frozen=True)
class PolicyConfig:
    """The default policy: binding, scopes, issuers, audiences, token types and formats, claim conditions."""

    binding: BindingMode = key("strict", "`strict`; `optional`: checked when the token is bound; `off`")
    required_scopes: tuple[str, ...] = key((), "all must be in the token's `scope`", checks=(checks.scopes,))
    issuers: tuple[str, ...] = key((), "names of the issuers whose tokens this policy accepts (`default`: `[idp]`; "
                                       "`[issuers.NAME]`), in the order opaque tokens are introspected; empty: the "
                                       "only issuer (required with several)", checks=(checks.issuer_names,))
    allowed_issuers: tuple[str, ...] = key((), "`iss` must be one of them (when set)")
    audiences: tuple[str, ...] = key((), "`aud` must contain one of them (when set)")
    leeway: float = key(5.0, "clock skew allowed for `exp`/`nbf`", ge=0, le=300, unit="seconds")
    token_types: tuple[str, ...] = key(("Bearer", "DPoP"), "introspected `token_type` values accepted "
                                                           "(case-insensitive)")
    allow_missing_token_type: bool = key(False, "accept an introspection answer without `token_type` (oidc-provider "
                                                "omits it only for refresh tokens)")
    scope_match: ScopeMatch = key("all", "`all`: every required scope; `any`: at least one of them", readme=False)
    token_formats: tuple[str, ...] = key(("introspection", "jwt"), "how the token may have been validated: "
                                         "`introspection`, `jwt` (RFC 9068, locally)",
                                         checks=(checks.token_formats,), readme=False)
    claims: Mapping[str, str] = key({}, "extra claim → header suffix sent on allow under this policy (added to "
                                        "`response.claims`)", readme=False)
    claims_equal: Mapping[str, str] = key({}, "claim → value the claim must equal (an array claim is compared "
                                               "joined by spaces)", checks=(checks.claim_values,), readme=False)
    claims_contain: Mapping[str, str] = key({}, "claim → value the claim must hold (an array, or a space-separated "
                                                "string)", checks=(checks.claim_values,), readme=False)
    identity: bool = key(False, "send the upstream a signed identity token on allow (`[identity]`, "
                                "docs/identity.md)", readme=False)
    identity_audience: str = key("", "the identity token's `aud`: the upstream behind this policy (required with "
                                     "`identity`)", readme=False)
    identity_claims: tuple[str, ...] = key((), "token claims copied into the identity token, as text (as their "
                                                "headers carry them)", readme=False)


@dataclass(frozen=True)
class ClientCertConfig:
    """The certificate a proxy forwards: its header and format, the proxies trusted to send it,
    optional CA validation."""

    header: str = key("x-client-cert", "the header the proxy forwards the certificate in",
                      checks=(checks.header_name,))
    format: CertFormat = key("auto", "encoding of that header (see Certificate header formats)")
    trusted_proxies: tuple[str, ...] = key(("127.0.0.1/32", "::1/128"), "peers whose certificate header is honoured",
                                           checks=(checks.networks,))
    xfcc_trust_hash: bool = key(False, "use XFCC `Hash=` when there is no `Cert=` (Istio default)")
    max_size: int = key(16384, "a longer certificate header is refused (`cert_invalid`)", ge=1024, le=1 << 20,
                        unit="bytes")
    memo_max_bytes: int = key(8 * 1024 * 1024, "header values whose thumbprints are remembered, in bytes",
                              ge=1024, unit="bytes")
    ca_file: str | None = key(None, "CA bundle the forwarded certificate must chain to (validity and path "
                                    "checked; reloaded on change); unset: the thumbprint alone", checks=_FILE)
    require_client_auth: bool = key(False, "with `ca_file`: the leaf must carry the EKU `clientAuth`")


@dataclass(frozen=True)
class DpopConfig:
    """DPoP-bound tokens (RFC 9449, docs/dpop.md): proof algorithms, freshness and the replay store."""

    enabled: bool = key(False, "DPoP (RFC 9449); off: tokens bound by `cnf.jkt` are denied (`cnf_unsupported`)")
    algorithms: tuple[str, ...] = key(("ES256", "ES384", "Ed25519", "EdDSA", "PS256", "RS256"),
                                      "proof algorithms, RFC 9864 names (`Ed25519`, `ESP256`) too; asymmetric "
                                      "only, sent in the challenge's `algs`", checks=(checks.dpop_algorithms,))
    iat_window: float = key(60.0, "proof lifetime; accepted this long after its `iat`, its `jti` remembered as long",
                            gt=0, le=3600, unit="seconds")
    iat_skew: float = key(5.0, "`iat` skew; a proof's `iat` may be this far ahead", ge=0, le=300,
                          unit="seconds")
    max_proof_size: int = key(8192, "longest proof; a longer `DPoP` header is refused unparsed", ge=1024,
                              le=65536, unit="bytes")
    replay_max_entries: int = key(250_000, "replay store; live proof `jti`s remembered, when full new proofs get 503",
                                  ge=1)
    replay_max_share: float = key(0.1, "share of the replay store one DPoP key may hold; past it that client's new "
                                       "proofs get 429 (one client cannot fill the store)", gt=0, le=1)
    nonce: NonceMode = key("off", "server nonces (RFC 9449 §9) in `DPoP-Nonce`: `optional` checks a proof's `nonce` "
                                  "when it has one; `required`: a proof without a current one gets `use_dpop_nonce`")
    nonce_lifetime: float = key(300.0, "a nonce is accepted this long after it was issued; a new one every quarter "
                                       "of it", ge=20, le=3600, unit="seconds")


@dataclass(frozen=True)
class AdmissionConfig:
    """Fair admission of cache misses to the IdP: a rate and a share of IdP calls per client source."""

    source_header: str = key("x-forwarded-for", "client address a trusted proxy vouches for (last element); "
                                                "misses of clients without a known certificate are charged to "
                                                "its group", checks=(checks.header_name,))
    ipv4_prefix: int = key(32, "IPv4 addresses in one prefix of this length are one source", ge=8, le=32)
    ipv6_prefix: int = key(64, "IPv6 addresses in one prefix of this length are one source (a client holds a "
                               "/64)", ge=16, le=128)
    miss_rate: float = key(50.0, "new IdP calls per second per source; `0`: no rate limit", ge=0)
    miss_burst: int = key(100, "burst of new IdP calls per source", ge=1)
    max_share: float = key(0.5, "share of `idp.max_concurrent` one source may hold", gt=0, le=1)
    max_sources: int = key(10_000, "sources (and certificates the IdP vouched for) remembered at once", ge=1)
    idp_backoff_max: float = key(30.0, "longest a source is refused after the IdP answered its call 429 (its "
                                       "`Retry-After`, doubled per further 429)", gt=0, le=300, unit="seconds")


@dataclass(frozen=True)
class ResponseConfig:
    """What the proxy receives: the credential headers, extra claims, the challenge's realm, client-sent copies."""

    prefix: str = key("x-credential-", "prefix of every upstream header", checks=(checks.header_prefix,))
    claims: Mapping[str, str] = key({}, "extra claim → header suffix (`tenant = \"tenant\"` → `x-credential-tenant`)")
    max_value_length: int = key(1024, "header values are cut to this length", ge=16, le=8192)
    realm: str = key("api", "realm in `WWW-Authenticate`", checks=(checks.realm,))
    remove_upstream_headers: tuple[str, ...] = key((), "sent as `x-envoy-auth-headers-to-remove` on allow",
                                                   checks=(checks.header_names,))
    forged_headers: ForgedHeaders = key("remove", "a client-sent header in the `prefix` namespace (`_`, `.` read "
                                                  "as `-`): `remove` allows and names it in Envoy's removal list; "
                                                  "`deny` answers 400 `credential_header_forged` (for nginx "
                                                  "without headers-more)")
    edge_ttl: int = key(0, "how long nginx may keep an allow in its decision cache (`X-Accel-Expires` on every "
                           "answer; deploy/nginx/api-edge-cache.conf.template): never past the token's `exp` or its "
                           "cache entry, never for DPoP, stale or denied answers; `0`: never", ge=0, le=60,
                        unit="seconds")


@dataclass(frozen=True)
class IdentityConfig:
    """The signed identity token the upstream can verify (docs/identity.md): the signing key, its
    rotation, the token's issuer, header and lifetime, the published keys."""

    key_file: str | None = key(None, "PEM private key (Ed25519, or P-256 for ES256) that signs identity tokens; "
                                     "re-read when it changes", checks=_FILE, restart=True)
    issuer: str = key("", "the identity token's `iss` (required with `identity.key_file`)")
    header: str = key("x-credential-identity", "the header carrying it; in the `response.prefix` namespace, which "
                                               "every shipped front overwrites", checks=(checks.header_name,))
    ttl: int = key(60, "identity token lifetime, never past the access token's `exp`; re-signed when half is "
                       "left", ge=5, le=3600, unit="seconds")
    rotation_overlap: float = key(600.0, "a new key is published this long before it signs, the old one stays "
                                         "this long after; at least `ttl` and the upstream's JWK Set cache time",
                                  gt=0, le=86400, unit="seconds")
    jwks_file: str | None = key(None, "file the public JWK Set is written to (for upstreams that cannot reach "
                                      "the admin port)")
    reload_interval: float = key(10.0, "time between checks of `key_file` (and the rotation's steps)", gt=0,
                                 le=3600, unit="seconds")


@dataclass(frozen=True)
class EventsConfig:
    """Revocation pushed by the IdP (docs/events.md): the Security Event Token receiver on the admin
    port, and how long a revocation is remembered."""

    enabled: bool = key(False, "receive Security Event Tokens (RFC 8935 push) at `POST /security-events` on the "
                               "admin port, signed by `idp.issuer`", restart=True)
    audience: str = key("", "the `aud` every SET must carry: this receiver (required with `events.enabled`)")
    iat_window: float = key(300.0, "a SET issued longer ago than this is refused (and its `jti` remembered as "
                                   "long)", gt=0, le=86400, unit="seconds")
    iat_skew: float = key(30.0, "a SET's `iat` may be this far ahead", ge=0, le=300, unit="seconds")
    remember: float = key(3600.0, "a revocation refuses the tokens it names, issued before it, this long (past "
                                  "it the IdP's own answer counts)", gt=0, le=7 * 86400, unit="seconds",
                                  restart=True)
    max_revocations: int = key(100_000, "revocations remembered at most (the oldest go first)", ge=1, restart=True)


@dataclass(frozen=True)
class RoutingConfig:
    """The original request (docs/routes.md): the public origins it may name, how its policy is chosen (the
    proxy's header, Envoy's path prefix, matching)."""

    origins: tuple[str, ...] = key((), "the public origins the API is served at (`https://api.example.com`, with "
                                       "`:port` when not the default); when set, the request's scheme and host must "
                                       "be one of them and a DPoP `htu` must name one", checks=(checks.origins,))
    policy_header: str = key("x-sidecar-policy", "header naming the policy (from a trusted proxy: nginx sets it per "
                                                 "location; docs/routes.md)", checks=(checks.header_name,),
                             readme=False)
    path_prefix: str = key("", "prefix Envoy's HTTP ext_authz puts before the original path (its `path_prefix`)",
                           readme=False)
    case_sensitive: bool = key(True, "paths match case-sensitively; `false` when the upstream ignores case",
                               readme=False)
    memo_entries: int = key(4096, "(method, host, path) → policy answers remembered", ge=16, readme=False)


@dataclass(frozen=True)
class RouteConfig:
    """One ``[[routes]]`` rule: the first rule that matches the original request names its policy."""

    policy: str = key("default", "the policy of a matching request (`default`: `[policy]`)")
    methods: tuple[str, ...] = key((), "request methods (any when empty)")
    hosts: tuple[str, ...] = key((), "`Host` names without port, or `*.example.com` (any when empty)")
    path: str = key("/", "the path pattern, matched against the normalized path (docs/routes.md)")
    match: PathMatch = key("prefix", "`prefix` (whole segments), `exact`, `glob` (`*` one segment, `**` any), "
                                     "`regex` (whole path)")


@dataclass(frozen=True)
class LogConfig:
    """The log level and the decision log."""

    level: LogLevel = key("info", "log level")
    decisions: DecisionLogging = key("all", "one log line per decision: all, denials only, or none")
    allow_sample_ratio: float = key(1.0, "with `decisions = \"all\"`: the share of allow lines written (`0.01`: one "
                                         "in a hundred); denials, stale allows and traced checks are always written",
                                    ge=0, le=1)


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry traces (docs/operations.md): a span per decision, joined to the caller's trace, and a
    child span per IdP, JWK Set and Redis call, exported over OTLP/gRPC."""

    enabled: bool = key(False, "export spans; off, nothing of OpenTelemetry is loaded and a check costs nothing more")
    endpoint: str = key("http://127.0.0.1:4317", "the OTLP/gRPC collector (`https://` for TLS)",
                        checks=(checks.otlp_url,))
    ca_file: str | None = key(None, "CA bundle that verifies an `https://` collector (default: system store)",
                              checks=_FILE)
    sample_ratio: float = key(1.0, "the share of checks without a caller's trace that start one; a caller's "
                                   "`traceparent` (from a trusted proxy) decides for its own checks", ge=0, le=1)
    service_name: str = key("sidecar", "`service.name` of the spans")


@dataclass(frozen=True)
class FleetConfig:
    """Replicas sharing answers, single-flight, purges and DPoP replays through Redis (docs/fleet.md)."""

    enabled: bool = key(False, "share answers, single-flight and purges with other replicas through Redis "
                               "(docs/fleet.md; needs the `fleet` extra)")
    url: str = key("redis://127.0.0.1:6379/0", "`redis://` or `rediss://` (TLS) URL of Redis; in `cluster` mode one "
                                              "node of the cluster", checks=(checks.redis_url,))
    ca_file: str | None = key(None, "CA bundle that verifies Redis's server certificate (`rediss://`)", checks=_FILE)
    cert_file: str | None = key(None, "our client certificate to Redis (`tls-auth-clients`), PEM", checks=_FILE)
    key_file: str | None = key(None, "the private key of `fleet.cert_file`, PEM", checks=_FILE)
    mode: FleetMode = key("standalone", "one Redis, a Redis Cluster, or Sentinel-managed replicas")
    sentinels: tuple[str, ...] = key((), "`host:port` of the Sentinels (`sentinel` mode)",
                                     checks=(checks.host_ports,))
    sentinel_master: str = key("mymaster", "the master's name at the Sentinels")
    username: str | None = key(None, "ACL user (Redis 6+ `AUTH username password`)")
    password: str | None = key(None, "password of `fleet.username` (or of the default user)", secret=True)
    password_file: str | None = key(None, "file holding `fleet.password`", checks=_FILE)
    secret_file: str | None = key(None, "the fleet secret (32+ characters, the same on every replica): keys in Redis "
                                        "are hashes keyed by it", checks=_FILE)
    seal_key_file: str | None = key(None, "the fleet key (32+ characters) that encrypts and authenticates values "
                                          "(AES-256-GCM)", checks=_FILE)
    previous_seal_key_file: str | None = key(None, "the former fleet key, still accepted for reading during a "
                                                   "rotation", checks=_FILE)
    prefix: str = key("sidecar:", "prefix of every key and channel in Redis", checks=(checks.redis_prefix,))
    timeout: float = key(0.05, "bound on each Redis command a check waits for; a slower Redis counts as failing",
                         gt=0, le=5, unit="seconds")
    lock_wait: float = key(0.5, "how long a replica waits for another one's IdP call for the same token before "
                                "calling the IdP itself; at most `idp.timeout`", ge=0, unit="seconds")
    breaker_failures: int = key(3, "consecutive Redis failures that open the breaker (Redis is then skipped)",
                                ge=1)
    breaker_open: float = key(2.0, "time the breaker stays open before Redis is tried again", gt=0,
                              unit="seconds")
    clock_skew: float = key(0.1, "how far the replicas' wall clocks may disagree; a shared answer begun this "
                                 "close to a purge is refused too", ge=0, le=10, unit="seconds")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    idp: IdpConfig = field(default_factory=IdpConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    client_cert: ClientCertConfig = field(default_factory=ClientCertConfig)
    dpop: DpopConfig = field(default_factory=DpopConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    log: LogConfig = field(default_factory=LogConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    # [policies.NAME] tables (each with the keys of [policy]) and [[routes]] rules: file only.
    policies: Mapping[str, PolicyConfig] = field(default_factory=dict, metadata={
        "doc": "Named policies, each with the keys of `[policy]` from their defaults (docs/routes.md); file only."})
    routes: tuple[RouteConfig, ...] = field(default=(), metadata={
        "doc": "Rules naming the policy of a request, the first match wins (docs/routes.md); file only."})
    # [issuers.NAME] tables, each with the keys of [idp]: issuers besides [idp] (named default).
    issuers: Mapping[str, IdpConfig] = field(default_factory=dict, metadata={
        "doc": "More issuers, each with the keys of `[idp]` from their defaults (docs/issuers.md); file only."})

    @property
    def kept_claims(self) -> tuple[str, ...]:
        """The claims a token answer keeps: those copied to headers or tested by any policy."""
        names = dict.fromkeys(self.response.claims)
        for policy in (self.policy, *self.policies.values()):
            names.update(dict.fromkeys([*policy.claims, *policy.claims_equal, *policy.claims_contain,
                                        *(policy.identity_claims if policy.identity else ())]))
        return tuple(names)

    @property
    def idp_configured(self) -> bool:
        i = self.idp
        return bool(i.issuer or i.introspection_endpoint or i.jwks_uri)

    @property
    def every_issuer(self) -> dict[str, IdpConfig]:
        """Every issuer by name: ``default`` is ``[idp]`` (unless only ``[issuers.NAME]`` are configured)."""
        if self.idp_configured or not self.issuers:
            return {"default": self.idp, **self.issuers}
        return dict(self.issuers)

    def policy_issuers(self, policy: PolicyConfig) -> tuple[str, ...]:
        """The issuers ``policy`` accepts, in order: its ``issuers``, else the only one there is."""
        return policy.issuers or tuple(self.every_issuer)[:1]


@dataclass(frozen=True)
class Key:
    """One declared key with everything derived from its place in the schema."""

    section: str
    name: str
    type: Any
    default: Any
    spec: Spec

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return env_name(self.section, self.name)


def keys_of(section: str, cls: type[Any]) -> tuple[Key, ...]:
    """The declared keys of one section dataclass (or of a ``[[routes]]`` rule)."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        spec = spec_of(f)
        if typing.get_origin(hints[f.name]) is Literal:  # the choices are the type's
            spec = dataclasses.replace(spec, choices=typing.get_args(hints[f.name]))
        found.append(Key(section, f.name, hints[f.name], default, spec))
    return tuple(found)


# The sections: every field of Config that is a section dataclass (not policies, not routes).
SECTIONS: dict[str, type[Any]] = {
    name: tp for name, tp in typing.get_type_hints(Config).items()
    if isinstance(tp, type) and dataclasses.is_dataclass(tp)
}
KEYS: tuple[Key, ...] = tuple(k for section, cls in SECTIONS.items() for k in keys_of(section, cls))
ROUTE_KEYS: tuple[Key, ...] = keys_of("routes[]", RouteConfig)


class _SectionKeys:
    def __init__(self, section: str) -> None:
        self._section = section
        self._names = {k.name for k in KEYS if k.section == section}

    def __getattr__(self, name: str) -> str:
        if name not in self._names:
            raise AttributeError(f"no key {self._section}.{name} is declared")
        return f"{self._section}.{name}"


class _Keys:
    """``KEY.server.admin_port == "server.admin_port"``, refusing any key that is not declared."""

    def __getattr__(self, section: str) -> _SectionKeys:
        if section not in SECTIONS:
            raise AttributeError(f"no section {section} is declared")
        return _SectionKeys(section)


KEY = _Keys()
