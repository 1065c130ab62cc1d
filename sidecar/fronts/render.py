"""How a decision is rendered to the proxy, the same for every front: an RFC 6750 §3
``WWW-Authenticate: Bearer`` challenge with a small JSON body on deny — with DPoP on, also the
RFC 9449 §7.1 ``DPoP`` challenge (``algs``), the error going to the scheme the request used, and
with ``dpop.nonce`` the current server nonce in ``DPoP-Nonce`` for a DPoP request (§9) — and on
allow the removal list for client-sent credential headers (fronts/forged.py) and the nonce.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sidecar.core.errors import Denial
from sidecar.core.headers import REMOVE_HEADER, CredentialHeaders


def unset(headers: Mapping[str, str], forged: Sequence[str]) -> tuple[str, ...]:
    """The client-sent credential names (fronts/forged.py) this answer does not set: the removal list.

    A name the answer sets is overwritten by the proxy; listing it too would remove the sidecar's
    own value (Envoy applies removals after the headers it sets)."""
    return tuple(name for name in forged if name not in headers)


NONCE_HEADER = "DPoP-Nonce"  # RFC 9449 §8.1, §9


def allow_pairs(headers: CredentialHeaders, names: Sequence[str], nonce: str | None) -> list[tuple[str, str]]:
    """An allow's headers with ``names`` added to ``x-envoy-auth-headers-to-remove`` and the DPoP
    nonce (for the client: the proxy hands it on, never to the upstream)."""
    if names:
        listed = headers.get(REMOVE_HEADER)
        pairs: list[tuple[str, str]] = [(k, v) for k, v in headers.pairs() if k != REMOVE_HEADER]
        pairs.append((REMOVE_HEADER, ", ".join([listed, *names] if listed else names)))
    else:
        pairs = list(headers.pairs())
    if nonce is not None:
        pairs.append((NONCE_HEADER, nonce))
    return pairs


def _quote(value: str) -> str:
    """RFC 9110 §5.6.4 quoted-string: escape backslash and double quote."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def deny_headers(denial: Denial, realm: str, *, proof_algs: str | None = None,
                 dpop_scheme: bool = False) -> dict[str, str]:
    """RFC 6750 §3 challenge; no ``error`` attribute when the request had no credentials.

    With ``proof_algs`` (DPoP accepted) both challenges are sent (RFC 9449 §7.2), the error only in
    the one of the scheme the request used (``dpop_scheme``), and ``algs`` in the DPoP one (§7.1).
    """
    if denial.status in (429, 503):
        return {"Retry-After": str(denial.retry_after), "Cache-Control": "no-store"}
    error: list[str] = []
    if denial.error:
        error.append(f"error={_quote(denial.error)}")
        error.append(f"error_description={_quote(denial.description)}")
    if denial.scope:
        error.append(f"scope={_quote(denial.scope)}")
    bearer = [f"Bearer realm={_quote(realm)}", *([] if dpop_scheme and proof_algs else error)]
    if not proof_algs:
        return {"WWW-Authenticate": ", ".join(bearer), "Cache-Control": "no-store"}
    challenge = [f"DPoP realm={_quote(realm)}", *(error if dpop_scheme else []), f"algs={_quote(proof_algs)}"]
    return {"WWW-Authenticate": ", ".join(bearer + challenge), "Cache-Control": "no-store"}


def deny_body(denial: Denial) -> bytes:
    body: Mapping[str, str | None] = {
        "error": denial.error or ("temporarily_unavailable" if denial.status in (429, 503) else "unauthorized"),
        "reason": denial.reason,
    }
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class RenderedDenial:
    """What every front answers for a denial: HTTP status, headers (with Content-Type), body, and
    the reason (gRPC's status message)."""

    status: int
    headers: dict[str, str]
    body: bytes
    reason: str


def render_denial(denial: Denial, realm: str, invalid_request_status: int = 400, *,
                  proof_algs: str | None = None, dpop_scheme: bool = False, nonce: str | None = None) -> RenderedDenial:
    """The one rendering of a denial, shared by the HTTP front and the gRPC ext_authz front.

    ``invalid_request_status`` (``server.invalid_request_status``) replaces 400, which nginx
    would turn into 500. ``proof_algs``/``dpop_scheme``: see :func:`deny_headers`; ``nonce``: the
    current DPoP nonce, sent in ``DPoP-Nonce``.
    """
    status = invalid_request_status if denial.status == 400 else denial.status
    headers = deny_headers(denial, realm, proof_algs=proof_algs, dpop_scheme=dpop_scheme)
    headers["Content-Type"] = "application/json"
    if nonce is not None:
        headers[NONCE_HEADER] = nonce
    return RenderedDenial(status, headers, deny_body(denial), denial.reason)
