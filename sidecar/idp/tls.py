"""The TLS side of the IdP connection: an SSLContext with our client certificate (RFC 8705 §2.1
``tls_client_auth``), and on it one long-lived aiohttp session and the introspection call's lean
client (http1.py), both with keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiohttp

from sidecar.config import IdpConfig
from sidecar.idp.http1 import FormPoster


class TlsConfigError(ValueError):
    """A certificate, key or CA file could not be loaded; the message names the key."""


def client_context(idp: IdpConfig) -> ssl.SSLContext:
    """Verify the IdP against ``ca_file`` (or the system store) and present our certificate."""
    try:
        context = ssl.create_default_context(cafile=idp.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"idp.ca_file: cannot load CA bundle: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if idp.cert_file and idp.key_file:
        try:
            # A callable, never None: with None OpenSSL asks for the pass phrase on the terminal.
            context.load_cert_chain(idp.cert_file, idp.key_file, password=lambda: _key_password(idp))
        except _EncryptedKey:
            raise TlsConfigError(f"idp.key_file: {idp.key_file} is encrypted: set idp.key_password") from None
        except (OSError, ssl.SSLError) as exc:
            # Never include the key password or key bytes; name the files' keys only.
            raise TlsConfigError(
                f"idp.cert_file/idp.key_file: cannot load client certificate: {type(exc).__name__}"
                f" {getattr(exc, 'reason', None) or getattr(exc, 'strerror', '')}"
            ) from None
    return context


USER_AGENT = "sidecar/0.1 (+RFC 8705)"
KEEPALIVE = 60.0  # seconds an idle connection to the IdP is kept for the next call


class _EncryptedKey(Exception):
    """The key file is encrypted and no ``idp.key_password`` is set."""


def _key_password(idp: IdpConfig) -> str:
    if idp.key_password is None:
        raise _EncryptedKey
    return idp.key_password


def client_session(context: ssl.SSLContext, idp: IdpConfig) -> aiohttp.ClientSession:
    """One session per SSLContext: keep-alive connections reuse the mTLS handshake."""
    connector = aiohttp.TCPConnector(
        ssl=context, limit=idp.max_connections, keepalive_timeout=KEEPALIVE
    )
    timeout = aiohttp.ClientTimeout(total=idp.timeout, sock_connect=idp.connect_timeout)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, raise_for_status=False, headers={"User-Agent": USER_AGENT},
    )


class IdpSession:
    """Holds the current session, and the lean client of the introspection call (http1.py) on the
    same context; rotation swaps both without dropping calls in flight."""

    def __init__(self, idp: IdpConfig) -> None:
        self._idp = idp
        self.context = client_context(idp)
        self._session: aiohttp.ClientSession | None = None
        self._poster: FormPoster | None = None
        self._retiring: dict[aiohttp.ClientSession | FormPoster, asyncio.Task[None]] = {}

    def swap(self, context: ssl.SSLContext) -> None:
        """Use ``context`` for every call from now on; the old session ends after its calls.

        Every call on a session is bounded by ``idp.timeout`` (its ClientTimeout total covers
        connect, request and body), so ``idp.timeout`` + 1 s after the swap nothing can still be
        using the old session and closing it cannot cut a call short.
        """
        old, self._session, self.context = self._session, None, context
        old_poster, self._poster = self._poster, None
        for retired in (old, old_poster):
            if retired is not None and not retired.closed:
                self._retiring[retired] = asyncio.get_running_loop().create_task(self._retire(retired))

    async def _retire(self, old: aiohttp.ClientSession | FormPoster) -> None:
        try:
            await asyncio.sleep(self._idp.timeout + 1.0)
        finally:
            self._retiring.pop(old, None)
            await old.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = client_session(self.context, self._idp)
        return self._session

    @property
    def poster(self) -> FormPoster:
        if self._poster is None:
            self._poster = FormPoster(self.context, limit=self._idp.max_connections, user_agent=USER_AGENT,
                                      keepalive=KEEPALIVE)
        return self._poster

    async def aclose(self) -> None:
        for task in list(self._retiring.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._poster is not None:
            await self._poster.close()
            self._poster = None
