"""What a Security Event Token (RFC 8417) revokes: its events read as revocation
:class:`~sidecar.core.revocation.Selector` s (docs/events.md). Pure; the signature was verified by
idp/security_events.py.

Events that revoke, and what they name:

- CAEP ``session-revoked``, RISC ``sessions-revoked``, ``account-disabled``, ``account-purged``,
  ``credential-compromise``: the **subject** — every token of it issued at or before the event;
- the OAuth event ``token-revoked``: one **token** (``token_identifier_alg`` ``plain`` and the
  ``token``), or a token by its ``jti``;
- an ``oauth_client`` subject (``client_id``) in any of them: every token of that client.

Subject identifiers are per issuer: every selector names the SET's ``iss`` too, so a SET revokes
only tokens whose ``iss`` is its own (an issuer cannot revoke another issuer's subjects, clients or
tokens), and an ``iss_sub`` identifier naming another issuer revokes nothing.

The subject is the event's ``subject`` member, else the SET's ``sub_id`` claim (OpenID SSF). RFC
9493 formats matched: ``iss_sub`` (``sub`` and ``iss``), ``opaque`` (``sub``), ``email`` (the kept
``email`` claim, or ``username``), ``aliases`` (each one); the legacy ``subject_type`` names the
format too; a CAEP complex subject's ``user``. Other formats and event types revoke nothing (the
SET is still accepted: RFC 8417 §2.2 lets a receiver ignore what it does not understand). The time
of a revocation is the later of the SET's ``iat`` and a subject event's ``event_timestamp`` (tokens
issued up to then are refused), never past now.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sidecar.core.revocation import MAX_VALUE, Selector

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
OAUTH = "https://schemas.openid.net/secevent/oauth/event-type/"
SUBJECT_EVENTS = frozenset({CAEP + "session-revoked", RISC + "sessions-revoked", RISC + "account-disabled",
                            RISC + "account-purged", RISC + "credential-compromise"})
TOKEN_REVOKED = OAUTH + "token-revoked"
MAX_EVENTS = 16
MAX_ALIASES = 16


class SetRefused(Exception):
    """RFC 8935 §2.3: a SET refused, with its §2.4 error code and a description for the transmitter."""

    def __init__(self, err: str, description: str) -> None:
        super().__init__(f"{err}: {description}")
        self.err = err
        self.description = description


def revocations(claims: Mapping[str, Any], now: float,
                key_of: Callable[[str], bytes]) -> tuple[list[Selector], float]:
    """The selectors a verified SET revokes, and when; SetRefused (``invalid_request``) when an event
    this receiver acts on does not conform to its definition."""
    events = claims["events"]
    if len(events) > MAX_EVENTS:
        raise SetRefused("invalid_request", "too many events in one SET")
    selectors: list[Selector] = []
    at, iss = float(claims["iat"]), claims["iss"]
    for event_type, payload in events.items():
        if event_type not in SUBJECT_EVENTS and event_type != TOKEN_REVOKED:
            continue
        if not isinstance(payload, Mapping):
            raise SetRefused("invalid_request", f"the payload of {event_type} is not an object")
        subject = payload.get("subject", claims.get("sub_id"))
        if not isinstance(subject, Mapping):
            raise SetRefused("invalid_request", f"{event_type} names no subject")
        stamp = payload.get("event_timestamp")
        if isinstance(stamp, int | float) and not isinstance(stamp, bool):
            at = max(at, float(stamp)) if event_type in SUBJECT_EVENTS else at
        found = _token(subject, key_of, iss) if event_type == TOKEN_REVOKED else _subject(subject, 0, iss)
        selectors += found
    return list(dict.fromkeys(selectors)), min(at, now)


def _text(subject: Mapping[str, Any], name: str) -> str | None:
    value = subject.get(name)
    return value if isinstance(value, str) and 0 < len(value) <= MAX_VALUE else None


def _subject(subject: Mapping[str, Any], depth: int, iss: str) -> Iterator[Selector]:
    """RFC 9493 subject identifiers (and a CAEP complex subject's user) of issuer ``iss``."""
    kind = subject.get("format", subject.get("subject_type"))
    if kind == "iss_sub" and (sub := _text(subject, "sub")) and _text(subject, "iss") == iss:
        yield Selector("sub", sub, iss)
    elif kind == "opaque" and (value := _text(subject, "id")):
        yield Selector("sub", value, iss)
    elif kind == "email" and (email := _text(subject, "email")):
        yield Selector("email", email, iss)
    elif kind == "oauth_client" and (client := _text(subject, "client_id")):
        yield Selector("client_id", client, iss)
    elif kind == "aliases" and depth == 0 and isinstance(subject.get("identifiers"), list):
        for alias in subject["identifiers"][:MAX_ALIASES]:
            if isinstance(alias, Mapping):
                yield from _subject(alias, 1, iss)
    elif kind is None and isinstance(subject.get("user"), Mapping) and depth == 0:
        yield from _subject(subject["user"], 1, iss)


def _token(subject: Mapping[str, Any], key_of: Callable[[str], bytes], iss: str) -> Iterator[Selector]:
    """The OAuth event's token subject: the token itself (``plain``) or its ``jti``; a client."""
    kind = subject.get("format", subject.get("subject_type"))
    if kind == "oauth_client" and (client := _text(subject, "client_id")):
        yield Selector("client_id", client, iss)
        return
    if kind != "oauth_token":
        raise SetRefused("invalid_request", "token-revoked names no oauth_token")
    if (jti := _text(subject, "jti")) is not None:
        yield Selector("jti", jti, iss)
    elif subject.get("token_identifier_alg") == "plain" and isinstance(token := subject.get("token"), str) and token:
        yield Selector("key", key_of(token).hex(), iss)
    else:
        raise SetRefused("invalid_request", "token-revoked needs a jti, or a plain token")
