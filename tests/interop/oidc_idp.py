"""The real OpenID provider (oidc-provider 8.8.1 under Node, tests/interop/oidc/server.mjs).

Its issuer listener serves discovery and the plain endpoints; its mutual-TLS listener serves the
RFC 8705 §5 ``mtls_endpoint_aliases``. Clients: alice and bob (tls_client_auth, certificate-bound
tokens), carol (client_secret_basic, unbound tokens), dave (client_secret_basic, DPoP-bound tokens:
each token request carries a proof, RFC 9449 §5) and the sidecar (tls_client_auth, the only client
allowed to introspect). Tokens and signing keys persist in ``state_dir``, so
:meth:`OidcProvider.stop` followed by :meth:`OidcProvider.start` is an outage, not a new IdP.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from tests.interop.https import Reply, request
from tests.interop.processes import stop, tail, wait_until
from tests.support.dpop_proof import DpopKey
from tests.support.pki_fixtures import TestPki

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
OPAQUE_RESOURCE = "https://api.example/opaque"
JWT_RESOURCE = "https://api.example/jwt"
# bulky's tokens carry these claims (extraTokenClaims in server.mjs), in four-byte UTF-8
# characters: sub, username and five more at 8,192 characters (response.max_value_length at its
# maximum) and one shorter, so that the introspection answer stays just under the 256 KiB the
# sidecar reads of it (idp/introspection.py). The largest answers the sidecar can send (nginx).
BULKY_VALUE = "\U0001d518" * 8192
BULKY_CLAIMS = {"sub": BULKY_VALUE, "username": BULKY_VALUE, **{f"bulky_{i}": BULKY_VALUE for i in range(5)},
                "bulky_5": "\U0001d518" * 7700}


class OidcProvider:
    def __init__(self, pki: TestPki, state_dir: Path, *, token_ttl: int = 600,
                 reject_unauthorized: bool = False) -> None:
        """``reject_unauthorized``: the mutual-TLS listener ends the handshake on a client
        certificate that does not chain to the PKI's CA."""
        self.pki = pki
        self.reject_unauthorized = reject_unauthorized
        self.state_dir = state_dir
        self.carol_secret = secrets.token_urlsafe(24)
        self.dave_secret = secrets.token_urlsafe(24)
        self.token_ttl = token_ttl
        self.log = state_dir / "oidc-provider.log"
        self.issuer = ""
        self.mtls_base = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, int] = {}
        self._metadata: dict[str, Any] | None = None
        # Our other ways to authenticate: an assertion key (private_key_jwt) and a self-signed
        # certificate (self_signed_tls_client_auth); the IdP knows only their public keys.
        state_dir.mkdir(parents=True, exist_ok=True)
        self.assertion_key_file, self.assertion_jwk = _assertion_key(state_dir)
        self.self_signed_files, self.self_signed_jwk = _self_signed(state_dir)

    def start(self) -> None:
        """Start (or start again on the same ports, keeping tokens and keys)."""
        node = shutil.which("node")
        assert node, "Node.js is required for the interop tests (./test.sh installs it)"
        assert (OIDC_DIR / "node_modules" / "oidc-provider").is_dir(), "run `npm ci` in tests/interop/oidc"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config, ready_file = self.state_dir / "config.json", self.state_dir / "ready.json"
        ready_file.unlink(missing_ok=True)
        config.write_text(json.dumps({
            "server_cert": str(self.pki.idp_files[0]), "server_key": str(self.pki.idp_files[1]),
            "ca": str(self.pki.ca_file), "state_dir": str(self.state_dir),
            "carol_secret": self.carol_secret, "dave_secret": self.dave_secret, "token_ttl": self.token_ttl,
            "opaque_resource": OPAQUE_RESOURCE, "jwt_resource": JWT_RESOURCE, "bulky_claims": BULKY_CLAIMS,
            "pkjwt_jwk": self.assertion_jwk, "self_signed_jwk": self.self_signed_jwk,
            "ready_file": str(ready_file), "mtls_reject_unauthorized": self.reject_unauthorized, **self._ports,
        }))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [node, str(OIDC_DIR / "server.mjs"), str(config)], cwd=OIDC_DIR,
                stdout=log, stderr=subprocess.STDOUT,
            )
        # Written once both listeners accept connections.
        wait_until(ready_file.exists, what="oidc-provider", process=self.process, log=self.log)
        ready = json.loads(ready_file.read_text())
        self.issuer, self.mtls_base = ready["issuer"], ready["mtls"]
        self._ports = {"plain_port": _port(self.issuer), "mtls_port": _port(self.mtls_base)}

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ---- what a client of the IdP does ----

    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            reply = request(f"{self.issuer}/.well-known/openid-configuration", ca_file=self.pki.ca_file)
            assert reply.status == 200, reply.body
            self._metadata = reply.json()
        return self._metadata

    def mtls_endpoint(self, name: str) -> str:
        return str(self.metadata()["mtls_endpoint_aliases"][name])

    def client_files(self, client_id: str) -> tuple[Path, Path]:
        if client_id == "selfie":  # self_signed_tls_client_auth: the certificate registered by its key
            return self.self_signed_files
        files: tuple[Path, Path] = getattr(self.pki, f"{client_id}_files")
        return files

    def token(self, client_id: str = "alice", *, scope: str = "read write",
              resource: str = OPAQUE_RESOURCE, dpop: DpopKey | None = None) -> dict[str, Any]:
        """Client credentials: alice and bob present their certificate at the mTLS alias
        (tls_client_auth, RFC 8705 §2.1) and get a token bound to it; carol uses her secret; dave
        his secret and a DPoP proof of ``dpop`` (RFC 9449 §5), which binds the token to that key."""
        form = {"grant_type": "client_credentials", "scope": scope, "resource": resource}
        if client_id in ("carol", "dave"):
            endpoint = self.metadata()["token_endpoint"]
            secret = self.carol_secret if client_id == "carol" else self.dave_secret
            headers = {"Authorization": _basic(client_id, secret)}
            if dpop is not None:
                headers["DPoP"] = dpop.proof("POST", endpoint)
            reply = request(endpoint, ca_file=self.pki.ca_file, form=form, headers=headers)
        else:
            reply = request(self.mtls_endpoint("token_endpoint"), ca_file=self.pki.ca_file,
                            cert=self.client_files(client_id), form={**form, "client_id": client_id})
        assert reply.status == 200, (reply.status, reply.body, tail(self.log))
        answer: dict[str, Any] = reply.json()
        return answer

    def access_token(self, client_id: str = "alice", **kwargs: Any) -> str:
        return str(self.token(client_id, **kwargs)["access_token"])

    def refresh_token(self, client_id: str = "alice") -> str:
        """A refresh token the provider stores and introspects as its own (test-only route)."""
        reply = request(f"{self.issuer}/__test__/refresh_token", ca_file=self.pki.ca_file,
                        form={"client_id": client_id})
        assert reply.status == 200, (reply.status, reply.body, tail(self.log))
        return str(reply.json()["refresh_token"])

    def revoke(self, token: str, client_id: str = "alice") -> None:
        """RFC 7009 at the mTLS alias, by the client the token was issued to."""
        reply = request(self.mtls_endpoint("revocation_endpoint"), ca_file=self.pki.ca_file,
                        cert=self.client_files(client_id), form={"client_id": client_id, "token": token})
        assert reply.status == 200, (reply.status, reply.body)

    def introspect(self, token: str, *, client_id: str = "sidecar", endpoint: str | None = None) -> Reply:
        """RFC 7662 as the sidecar does it (the test's own view of what the IdP says)."""
        return request(endpoint or self.mtls_endpoint("introspection_endpoint"), ca_file=self.pki.ca_file,
                       cert=self.client_files(client_id), form={"client_id": client_id, "token": token})


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _basic(client_id: str, secret: str) -> str:
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode()


def _public_jwk(public_key: Any) -> dict[str, Any]:
    import jwt

    jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public_key))
    return jwk


def _assertion_key(directory: Path) -> tuple[Path, dict[str, Any]]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / "assertion.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path, {**_public_jwk(key.public_key()), "kid": "sidecar-assertion-1", "use": "sig", "alg": "ES256"}


def _self_signed(directory: Path) -> tuple[tuple[Path, Path], dict[str, Any]]:
    """A self-signed client certificate, registered at the IdP by its x5t#S256 (RFC 8705 §2.2)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from sidecar.core.client_cert import thumbprint

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sidecar-self")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=7)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "self-signed.crt", directory / "self-signed.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    der = cert.public_bytes(serialization.Encoding.DER)
    return (cert_path, key_path), {**_public_jwk(key.public_key()), "x5t#S256": thumbprint(der)}
