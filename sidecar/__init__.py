"""Authorization sidecar for certificate-bound OAuth 2.0 access tokens (RFC 8705).

Answers nginx ``auth_request`` and Envoy ``ext_authz`` checks: introspects the bearer token
(RFC 7662) over mutual TLS, caches the answer, verifies ``cnf.x5t#S256`` against the client
certificate the proxy forwarded, and allows with ``x-credential-*`` headers or denies.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
