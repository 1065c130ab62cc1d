"""Stage 1b: the client certificate a trusted proxy forwarded, reduced to its RFC 8705 thumbprint.

One small parser per header format turns the value into the leaf certificate's DER (or, for an
XFCC ``Hash``, straight into the thumbprint). The result, or the failure, is memoized per header
value in a memo bounded by bytes (``client_cert.memo_max_bytes``), so a cache hit costs one dict
lookup and no X.509 work, and a client sending many distinct certificates cannot grow memory
past the bound. A value longer than ``client_cert.max_size`` is refused before any parsing. Every
parser is linear in the size of the value.

``auto`` never lets client-written bytes choose the certificate. A proxy that appends to a
client-sent header (Envoy ``APPEND_FORWARD``, or any proxy that appends) puts the client's bytes
first, so: a value holding any XFCC key is read as XFCC, whose last element is the nearest
proxy's; any other value holding more than one certificate is refused. Chains in one header
(Traefik's list, an ALB chain) need their explicit format.

RFC 8705 §3.1: ``x5t#S256`` is the base64url encoding, without padding, of the SHA-256 of the DER.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from urllib.parse import unquote

from cryptography import x509

from sidecar.config import CertFormat
from sidecar.core import xfcc
from sidecar.core.client_trust import ClientTrust, Presented
from sidecar.support.jose import b64url, sha256_thumbprint
from sidecar.support.memo import Memo

MAX_MEMO = 10_000
MEMO_OVERHEAD = 200  # bytes per memoized value beyond the key's characters (dict slot, str, result)
_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"
_XFCC_KEY = re.compile(r"(?:^|[,;])[ \t]*(?:by|hash|cert|chain|subject|uri|dns)=", re.IGNORECASE)
_SEVERAL = ("BEGIN CERTIFICATE", "BEGIN%20CERTIFICATE", "BEGIN+CERTIFICATE")


class CertificateError(ValueError):
    """The header value is not a certificate in the expected format."""


def thumbprint(der: bytes) -> str:
    """RFC 8705 §3.1 ``x5t#S256`` of a DER certificate."""
    return sha256_thumbprint(der)


def _b64decode(text: str) -> bytes:
    text = "".join(text.split())
    if not text:
        raise CertificateError("empty certificate")
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CertificateError("invalid base64") from None


def _from_pem(text: str, *, alone: bool = False) -> bytes:
    """The first (leaf) certificate of a PEM block; line breaks may be spaces or missing.

    Two ``find`` calls, not a regular expression: a search for ``BEGIN(.*?)END`` restarts at every
    BEGIN and is quadratic on a header of BEGIN lines without an END. ``alone``: nothing but white
    space may stand around the block (``auto``: bytes before or after it may be a client's).
    """
    start = text.find(_BEGIN)
    end = text.find(_END, start + len(_BEGIN)) if start >= 0 else -1
    if end < 0:
        raise CertificateError("no PEM certificate block")
    if alone and (text[:start].strip() or text[end + len(_END):].strip()):
        raise CertificateError("more than the certificate in the header (client_cert.format auto)")
    return _b64decode(text[start + len(_BEGIN):end])


def _all_pem(text: str, limit: int = 9) -> list[bytes]:
    """Every PEM certificate block, leaf first (at most ``limit``): a chain's intermediates."""
    found: list[bytes] = []
    start = text.find(_BEGIN)
    while start >= 0 and len(found) < limit:
        end = text.find(_END, start + len(_BEGIN))
        if end < 0:
            break
        found.append(_b64decode(text[start + len(_BEGIN):end]))
        start = text.find(_BEGIN, end + len(_END))
    if not found:
        raise CertificateError("no PEM certificate block")
    return found


def parse_escaped_pem(value: str) -> bytes:
    """nginx ``$ssl_client_escaped_cert`` and AWS ALB: URL-encoded PEM (``+`` stays ``+``)."""
    return _from_pem(unquote(value, errors="strict"))


def parse_pem(value: str) -> bytes:
    return _from_pem(value)


def parse_der_base64(value: str) -> bytes:
    """HAProxy ``%[ssl_c_der,base64]`` and similar: base64 of the DER."""
    return _b64decode(value)


def parse_traefik(value: str) -> bytes:
    """Traefik PassTLSClientCert ``pem: true``: base64 DER list, comma-separated, leaf first."""
    return _b64decode(value.split(",", 1)[0])


def parse_rfc9440(value: str) -> bytes:
    """RFC 9440 ``Client-Cert: :<base64 DER>:`` (a structured-field byte sequence)."""
    value = value.strip()
    if len(value) < 3 or value[0] != ":" or value[-1] != ":":
        raise CertificateError("not an RFC 9440 byte sequence")
    return _b64decode(value[1:-1])


PARSERS: dict[str, Callable[[str], bytes]] = {
    "escaped_pem": parse_escaped_pem,
    "alb": parse_escaped_pem,
    "pem": parse_pem,
    "der_base64": parse_der_base64,
    "traefik": parse_traefik,
    "rfc9440": parse_rfc9440,
}


def detect_format(value: str) -> str:
    """The format ``auto`` reads ``value`` in (see the module docstring for why it is safe).

    Raises CertificateError for a value that holds more than one certificate outside XFCC.
    """
    if _XFCC_KEY.search(value):
        return "xfcc"  # last element: the nearest proxy's, whatever the client wrote before it
    if "," in value or sum(value.count(marker) for marker in _SEVERAL) > 1:
        raise CertificateError("more than one certificate in the header (client_cert.format auto)")
    head = value.lstrip()[:64]
    if head.startswith(":"):
        return "rfc9440"
    if head.startswith(("-----BEGIN ", "-----BEGIN\n")):
        return "pem"
    if "%" in head:
        return "escaped_pem"
    return "der_base64"


def _memo_size(value: str, _result: object) -> int:
    return len(value) + MEMO_OVERHEAD


class CertificateReader:
    """Header value -> thumbprint (or, with a ``trust``, a :class:`Presented` verdict), memoized
    (bounded by count and bytes, oldest dropped first)."""

    __slots__ = ("_format", "_max_size", "_memo", "_trust", "_trust_xfcc_hash")

    def __init__(self, fmt: CertFormat, *, trust_xfcc_hash: bool = False, max_size: int = 16384,
                 memo_bytes: int = 8 * 1024 * 1024, trust: ClientTrust | None = None) -> None:
        self._format = fmt
        self._trust_xfcc_hash = trust_xfcc_hash
        self._max_size = max_size
        self._trust = trust
        self._memo: Memo[str, str | Presented | CertificateError] = Memo(MAX_MEMO, max_bytes=memo_bytes,
                                                                         size_of=_memo_size)

    def thumbprint(self, value: str) -> str:
        """The thumbprint of the leaf; raises CertificateError (also memoized)."""
        found = self._memo.get(value)
        if isinstance(found, str):
            return found  # memoized, no trust configured: a cache hit's path
        return self.presented(value).thumbprint

    def presented(self, value: str) -> Presented:
        """The leaf's thumbprint with (with a trust) its chain's verdict and validity window."""
        found = self._memo.get(value)
        if found is None:
            found = self._compute_checked(value)
        if isinstance(found, Presented):
            return found
        if isinstance(found, str):  # no trust configured on this reader
            return Presented(found, float("-inf"), float("inf"), None)
        # A fresh exception each time: re-raising the memoized instance would chain every
        # raise's traceback (and its frames) onto it, a leak per request (found by the soak).
        raise CertificateError(*found.args)

    def forget(self) -> None:
        """Drop every memoized verdict (the CA bundle changed)."""
        self._memo.clear()

    def _compute_checked(self, value: str) -> str | Presented | CertificateError:
        if len(value) > self._max_size:
            raise CertificateError(f"certificate header longer than {self._max_size} (client_cert.max_size)")
        return self._memo.put(value, self._compute(value))

    def _compute(self, value: str) -> str | Presented | CertificateError:
        try:
            ders, hashed = self._certificates(value)
            if hashed is not None:  # an XFCC Hash alone: nothing to validate a chain with
                return hashed if self._trust is None else Presented(hashed, 0.0, 0.0, "cert_untrusted")
            print_ = _checked_thumbprint(ders[0])
            return print_ if self._trust is None else self._trust.check(print_, ders[0], ders[1:])
        except CertificateError as exc:
            return exc
        except (ValueError, UnicodeError) as exc:
            return CertificateError(f"unreadable certificate header: {type(exc).__name__}")

    def _certificates(self, value: str) -> tuple[list[bytes], str | None]:
        """(leaf DER and the chain the header carries, or an XFCC Hash thumbprint)."""
        fmt: str = self._format
        if fmt == "auto":
            fmt = detect_format(value)
            if fmt in ("pem", "escaped_pem"):  # exactly one certificate, nothing around it
                text = value if fmt == "pem" else unquote(value, errors="strict")
                return [_from_pem(text, alone=True)], None
        if fmt == "xfcc":
            return self._from_xfcc(value)
        if self._trust is None:  # the leaf is all a thumbprint needs
            return [PARSERS[fmt](value)], None
        if fmt in ("escaped_pem", "alb"):
            return _all_pem(unquote(value, errors="strict")), None
        if fmt == "pem":
            return _all_pem(value), None
        if fmt == "traefik":
            return [_b64decode(part) for part in value.split(",")[:9]], None
        return [PARSERS[fmt](value)], None

    def _from_xfcc(self, value: str) -> tuple[list[bytes], str | None]:
        try:
            pairs = xfcc.last_element(value)
        except xfcc.XfccError as exc:
            raise CertificateError(str(exc)) from None
        # Cert is the leaf; Chain (set_current_client_cert_details chain) starts with the leaf.
        cert, chain = pairs.get("cert"), pairs.get("chain")
        if cert or chain:
            chain_ders = _all_pem(unquote(chain, errors="strict")) if chain and self._trust is not None else []
            if not cert:
                return chain_ders or [parse_escaped_pem(chain or "")], None
            leaf = parse_escaped_pem(cert)
            return [leaf, *[der for der in chain_ders if der != leaf]], None
        if self._trust_xfcc_hash and "hash" in pairs:
            return [], _hash_to_thumbprint(pairs["hash"])
        raise CertificateError("XFCC element has no Cert or Chain (and Hash is not trusted)")


def _checked_thumbprint(der: bytes) -> str:
    try:
        x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is not a ValueError (found by fuzzing)
        raise CertificateError("not an X.509 certificate") from None
    return thumbprint(der)


def _hash_to_thumbprint(hex_hash: str) -> str:
    """XFCC ``Hash`` is the hex SHA-256 of the DER: the same digest, another encoding."""
    try:
        digest = bytes.fromhex(hex_hash)
    except ValueError:
        raise CertificateError("XFCC Hash is not hex") from None
    if len(digest) != 32:
        raise CertificateError("XFCC Hash is not a SHA-256 digest")
    return b64url(digest)
