"""Every reason a denial gives, with its class (hence its status and RFC 6750 / RFC 9449 error code)
and one line that says what it means.

The reason is the ``reason`` of a denial's JSON body, the log field and the ``reason`` label of
``sidecar_decisions_total``. The stages name it as a literal where they raise (no lookup per
denial: this registry costs the hot path nothing); tests/unit/test_reasons.py reads every raise in
``sidecar/`` and fails when a reason is raised that is not listed here, when one listed here is
raised nowhere, or when its class differs. The README's answer table and the reference in
docs/answers.md are generated from this list and the one rendering of a denial
(sidecar/fronts/answers.py), so status and challenge are what a client receives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from sidecar.core.errors import (
    Denial,
    IdpUnavailable,
    InsufficientScope,
    InternalError,
    InvalidDpopProof,
    InvalidRequest,
    InvalidToken,
    MissingToken,
    RateLimited,
    ReplayStoreFull,
    RouteDenied,
    UseDpopNonce,
)
from sidecar.core.extract import MAX_TOKEN_LENGTH

Scheme = Literal["Bearer", "DPoP"]


@dataclass(frozen=True, slots=True)
class Reason:
    name: str
    denial: type[Denial]
    meaning: str


@dataclass(frozen=True, slots=True)
class Situation:
    """Reasons of one kind of request, all of one class: one row of the README's answer table.
    ``scheme``: the ``Authorization`` scheme such requests come with (whose challenge holds the error)."""

    text: str
    denial: type[Denial]
    reasons: tuple[Reason, ...]
    scheme: Scheme = "Bearer"


def _situation(text: str, denial: type[Denial], *reasons: tuple[str, str], scheme: Scheme = "Bearer") -> Situation:
    """``reasons``: (reason, what it means) pairs."""
    return Situation(text, denial, tuple(Reason(name, denial, meaning) for name, meaning in reasons), scheme)


SITUATIONS: tuple[Situation, ...] = (
    _situation(
        "no credentials", MissingToken,
        ("token_missing", "no `Authorization` header, or a scheme other than `Bearer` (and `DPoP` with "
                          "`dpop.enabled`)"),
    ),
    _situation(
        "malformed or duplicated `Authorization`", InvalidRequest,
        ("token_malformed", f"a scheme without a token, a token over {MAX_TOKEN_LENGTH} characters, or not one RFC "
                            "6750 `b64token`"),
        ("token_duplicated", "more than one `Authorization` header"),
    ),
    _situation(
        "a client-sent `x-credential-*` header with `response.forged_headers = \"deny\"` (by default it is "
        "named for Envoy to remove)", InvalidRequest,
        ("credential_header_forged", "the check request carries a header in the `response.prefix` namespace (any "
                                     "case, `_` or `.` for `-`)"),
    ),
    _situation(
        "with named policies or `[[routes]]`, an original request that cannot be read safely "
        "([docs/routes.md](docs/routes.md))", InvalidRequest,
        ("path_invalid", "the original path has no single normalized form (or a trusted proxy sent none), a "
                         "rule's original method is not an upper-case token, or, with host rules, the original "
                         "host is not a plain `name[:port]` (a final dot, an empty port, a list, none)"),
    ),
    _situation(
        "a header describing the original request sent more than once", InvalidRequest,
        ("request_header_duplicated", "the original URI or method, `Host`, `X-Forwarded-Host`/`-Proto`, the policy "
                                      "header or the source header came twice"),
    ),
    _situation(
        "inactive, expired, not yet valid, wrong issuer, audience or format; a refresh token or another "
        "`token_type`", InvalidToken,
        ("token_inactive", "the IdP answers `active: false` (revoked, expired or unknown there)"),
        ("token_expired", "`exp` is past, beyond `policy.leeway`"),
        ("token_not_yet_valid", "`nbf` is ahead, beyond `policy.leeway`"),
        ("issuer_not_allowed", "`iss` is not in `policy.allowed_issuers`, the issuer that vouched is not one of "
                               "`policy.issuers`, or a JWT's `iss` is not its issuer's (names no configured issuer)"),
        ("audience_mismatch", "no value of `policy.audiences` is in `aud`"),
        ("token_format_not_allowed", "the policy's `token_formats` does not take tokens validated this way "
                                     "(introspection or local JWT validation)"),
        ("token_not_access", "a refresh token, or an introspection answer without `token_type` (unless "
                             "`policy.allow_missing_token_type`)"),
        ("token_type_not_allowed", "`token_type` is not in `policy.token_types`"),
    ),
    _situation(
        "certificate does not match `cnf.x5t#S256`, missing, unreadable or duplicated; unbound token under "
        "`strict`; a `cnf` method not verified here", InvalidToken,
        ("cnf_mismatch", "`cnf.x5t#S256` is not the thumbprint of the certificate the trusted proxy forwarded"),
        ("cert_missing", "the token is bound to a certificate and none was forwarded by a trusted proxy"),
        ("cert_invalid", "the certificate header is not a certificate in `client_cert.format`, is longer than "
                         "`client_cert.max_size`, or came more than once"),
        ("token_unbound", "`policy.binding = \"strict\"` and the token is bound to nothing this sidecar verifies"),
        ("cnf_unsupported", "`cnf` holds a method not verified here (`jkt` without `dpop.enabled`, `x5t`, `jwk`)"),
    ),
    _situation(
        "with `client_cert.ca_file` ([docs/parity.md](docs/parity.md)): the chain does not end at the bundle, "
        "the certificate expired or not yet valid", InvalidToken,
        ("cert_untrusted", "the chain does not end at a CA of `client_cert.ca_file` (or has no EKU `clientAuth` "
                           "under `client_cert.require_client_auth`)"),
        ("cert_expired", "the certificate's `notAfter` is past, beyond `policy.leeway`"),
        ("cert_not_yet_valid", "the certificate's `notBefore` is ahead, beyond `policy.leeway`"),
    ),
    _situation(
        "a DPoP-bound token sent as `Bearer` (RFC 9449 §7.2: no downgrade)", InvalidToken,
        ("dpop_scheme_required", "the token's `cnf` holds `jkt`, and it came with the `Bearer` scheme"),
    ),
    _situation(
        "the `DPoP` scheme with a token not bound by `cnf.jkt`", InvalidToken,
        ("dpop_token_unbound", "an unbound or certificate-bound token sent with the `DPoP` scheme"),
        scheme="DPoP",
    ),
    _situation(
        "DPoP (RFC 9449, [docs/dpop.md](docs/dpop.md)): a missing or bad proof", InvalidDpopProof,
        ("dpop_proof_missing", "no `DPoP` header"),
        ("dpop_proof_duplicated", "more than one `DPoP` header"),
        ("dpop_proof_too_large", "the `DPoP` header is longer than `dpop.max_proof_size`"),
        ("dpop_proof_malformed", "not a compact JWS of base64url JSON objects; too many header parameters or a "
                                 "`crit` one; `jti`, `htm`, `htu` or `iat` missing or mistyped"),
        ("dpop_wrong_type", "`typ` is not `dpop+jwt`"),
        ("dpop_algorithm_not_allowed", "`alg` is not in `dpop.algorithms`"),
        ("dpop_bad_key", "`jwk` is not a public key that fits `alg`"),
        ("dpop_key_mismatch", "the RFC 7638 thumbprint of `jwk` is not the token's `cnf.jkt`"),
        ("dpop_invalid_signature", "the proof's signature does not verify with its `jwk`"),
        ("dpop_htm_mismatch", "`htm` is not the original request's method"),
        ("dpop_htu_mismatch", "`htu` is not the original target URI, or no trusted proxy described it"),
        ("dpop_iat_too_old", "`iat` is older than `dpop.iat_window`"),
        ("dpop_iat_in_future", "`iat` is further ahead than `dpop.iat_skew`"),
        ("dpop_ath_mismatch", "`ath` is not the hash of the access token sent"),
        ("dpop_replayed", "the proof's `jti` was accepted before within its window (on any replica of a fleet)"),
        scheme="DPoP",
    ),
    _situation(
        "DPoP with `dpop.nonce`: no current server nonce in the proof (the answer carries `DPoP-Nonce`)",
        UseDpopNonce,
        ("dpop_nonce_missing", "`dpop.nonce = \"required\"` and the proof has no `nonce`"),
        ("dpop_nonce_invalid", "the proof's `nonce` was not issued by this sidecar (or fleet) or is older than "
                               "`dpop.nonce_lifetime`"),
        scheme="DPoP",
    ),
    _situation(
        "JWT access token refused locally (RFC 9068, [docs/jwt.md](docs/jwt.md))", InvalidToken,
        ("jwt_malformed", "the JWT cannot be decoded, `kid` is not a string, or a required claim is missing or "
                          "mistyped"),
        ("jwt_wrong_type", "`typ` is not `at+jwt` (RFC 9068 §4), nor a type the issuer's `profile` accepts"),
        ("jwt_not_access_token", "a JWT without `typ: at+jwt` shaped like an ID token: no client claim, its client "
                                 "in `aud`, an ID token's hash, or Keycloak's `typ` claim not `Bearer` "
                                 "(docs/issuers.md)"),
        ("jwt_algorithm_not_allowed", "`alg` is not in `idp.jwt_algorithms`"),
        ("jwt_unknown_key", "no key of the issuer's JWK Set has the token's `kid` (without `kid`: the set is empty, "
                            "or too many keys fit `alg` to try)"),
        ("jwt_key_mismatch", "no key named by `kid` (without `kid`: no key) fits `alg`, or pyjwt refused the key"),
        ("jwt_invalid_signature", "the signature does not verify with the issuer's key"),
    ),
    _situation(
        "required scope missing; a claim condition of the route's policy not met", InsufficientScope,
        ("scope_missing", "a scope of `required_scopes` is not in the token's `scope` (with `scope_match = "
                          "\"any\"`: none is); the challenge's `scope` names them"),
        ("claim_mismatch", "a claim does not equal a `claims_equal` value or does not hold a `claims_contain` value"),
    ),
    _situation(
        "no policy for the request ([docs/routes.md](docs/routes.md)): unknown name, no rule matched", RouteDenied,
        ("policy_unknown", "a trusted proxy named (in `routing.policy_header`) a policy that is not configured"),
        ("route_unmatched", "no `[[routes]]` rule matches, or no trusted proxy described the original path"),
    ),
    _situation(
        "with `routing.origins`, a request for another host or scheme ([docs/routes.md](docs/routes.md))",
        RouteDenied,
        ("origin_not_allowed", "the original scheme and host are not one of `routing.origins`, or no trusted proxy "
                               "described them"),
    ),
    _situation(
        "one client's new tokens or DPoP proofs over its share (`admission.*`, `dpop.replay_max_share`)", RateLimited,
        ("rate_limited", "the source is over `admission.miss_rate`, holds `admission.max_share` of the IdP calls or "
                         "backs off after the IdP's 429; or a DPoP key holds `dpop.replay_max_share` of the replay "
                         "store"),
    ),
    _situation(
        "the DPoP replay store is full", ReplayStoreFull,
        ("dpop_replay_full", "`dpop.replay_max_entries` live proofs are remembered: a new one cannot be proven fresh"),
    ),
    _situation(
        "IdP unreachable, slow, 5xx, garbage; circuit breaker open", IdpUnavailable,
        ("idp_unavailable", "the IdP could not answer (the kind is in the log and `sidecar_idp_requests_total`)"),
    ),
    _situation(
        "a bug in the sidecar", InternalError,
        ("internal_error", "an unexpected error in the sidecar: denied (fail closed), never a 500 or an allow"),
    ),
)

REASONS: Mapping[str, Reason] = {r.name: r for s in SITUATIONS for r in s.reasons}
if len(REASONS) != sum(len(s.reasons) for s in SITUATIONS):
    raise RuntimeError("a reason is listed twice")
