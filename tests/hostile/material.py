"""Real certificate header shapes for the hostile-input tests and the fuzz corpus.

Certificates only (public by nature); no private key ever leaves the process that made it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import quote

from sidecar.dev.pki import CertificateAuthority

VECTOR_PEM = (Path(__file__).resolve().parents[1] / "unit" / "vectors" / "vector.crt").read_text()


@dataclass(frozen=True)
class Cert:
    pem: str
    der: bytes
    x5t: str

    @property
    def b64(self) -> str:
        return base64.b64encode(self.der).decode()


def _from_pem(pem: str) -> Cert:
    der = base64.b64decode("".join(pem.strip().splitlines()[1:-1]))
    x5t = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    return Cert(pem, der, x5t)


@cache
def certificates() -> tuple[Cert, ...]:
    """The pinned openssl vector, a leaf and its CA (so that a chain can stand in for a leaf)."""
    ca = CertificateAuthority("hostile-input CA")
    leaf = ca.issue("client")
    return (_from_pem(VECTOR_PEM), _from_pem(leaf.cert_pem.decode()), _from_pem(ca.root.cert_pem.decode()))


def header_values(cert: Cert, chain: tuple[Cert, ...] = ()) -> dict[str, str]:
    """One value per format, as the named proxy sends it; ``chain`` follows the leaf."""
    pems = "".join(c.pem for c in (cert, *chain))
    escaped = quote(pems, safe="")
    return {
        "escaped_pem": escaped,  # nginx $ssl_client_escaped_cert
        "alb": quote(pems, safe="+=/"),  # AWS ALB X-Amzn-Mtls-Clientcert
        "pem": pems.replace("\n", " "),
        "der_base64": cert.b64,  # HAProxy %[ssl_c_der,base64]
        "traefik": ",".join(c.b64 for c in (cert, *chain)),  # X-Forwarded-Tls-Client-Cert
        "rfc9440": f":{cert.b64}:",  # RFC 9440 Client-Cert
        "xfcc": (
            'By=spiffe://cluster.local/ns/far/sa/x;Hash=00;Cert="%2D",'
            f'By=spiffe://cluster.local/ns/api/sa/api;Hash={hashlib.sha256(cert.der).hexdigest()};'
            f'Cert="{escaped}";Subject="CN=client,O=Example\\, Inc.";URI=spiffe://cluster.local/ns/a/sa/b'
        ),
    }
