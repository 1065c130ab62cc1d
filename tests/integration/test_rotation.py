"""Rotation of the IdP client certificate (RFC 8705 §2.1 tls_client_auth) without a restart.

The files live in a Secret volume published exactly the way the kubelet does it (timestamped
directory, ``..data`` symlink renamed atomically); the fake IdP records the thumbprint of the
client certificate of every introspection call over real mutual TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.app import admin_app
from sidecar.core.client_cert import thumbprint
from sidecar.dev.devidp import server_context
from sidecar.dev.fakeidp import FakeIdp, Handler, standard_idp
from sidecar.dev.pki import CertificateAuthority, Issued
from sidecar.runtime import Sidecar
from tests.conftest import escaped_pem, sidecar_config
from tests.support.check_server import CheckTestServer
from tests.support.kubelet import SecretVolume
from tests.support.pki_fixtures import TestPki

MAX_CHECKS = 4000
MAX_SECONDS = 30.0
WORKERS = 16


class RecordingIdp(FakeIdp):
    """Records the x5t#S256 of the client certificate presented on each introspection call."""

    seen: list[str]

    def app(self) -> web.Application:
        self.seen = []
        app = super().app()
        app.middlewares.insert(0, self._record)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/introspect" and request.transport is not None:
            ssl_object = request.transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            self.seen.append(thumbprint(der) if der else "none")
        return await handler(request)


def recording_idp() -> RecordingIdp:
    idp = RecordingIdp()
    idp.clients = standard_idp().clients
    return idp


def payload(pki: TestPki, cert: Issued, key: Issued | None = None) -> dict[str, bytes]:
    return {"tls.crt": cert.cert_pem, "tls.key": (key or cert).key_pem, "ca.crt": pki.ca.root.cert_pem}


class Harness:
    def __init__(self, sidecar: Sidecar, check: TestClient[Any, Any], admin: TestClient[Any, Any]) -> None:
        self.sidecar, self.check, self.admin = sidecar, check, admin


@pytest.fixture
async def rotating(pki: TestPki, aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """Start a fake IdP and a sidecar whose TLS files come from a kubelet-style Secret volume."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(first: Issued, reload_interval: float) -> tuple[RecordingIdp, SecretVolume, Harness]:
            idp = recording_idp()
            server = await aiohttp_server(idp.app(), ssl=server_context(*pki.idp_files, pki.ca_file))
            idp.issuer = f"https://127.0.0.1:{server.port}"
            volume = SecretVolume(tmp_path / "idp-tls")
            volume.publish(payload(pki, first))
            config = sidecar_config(pki, idp, idp={
                "cert_file": str(volume.path("tls.crt")), "key_file": str(volume.path("tls.key")),
                "ca_file": str(volume.path("ca.crt")), "reload_interval": reload_interval,
            }, cache={"max_entries": 0}, admission={"miss_rate": 0, "max_share": 1.0})  # one client, no cache
            sidecar = await stack.enter_async_context(Sidecar.running(config))
            check = await stack.enter_async_context(TestClient(CheckTestServer(sidecar)))
            admin = await stack.enter_async_context(TestClient(TestServer(admin_app(sidecar))))
            return idp, volume, Harness(sidecar, check, admin)

        yield start


async def test_a_kubelet_style_swap_under_load_fails_no_check_and_the_idp_then_sees_the_new_certificate(
    rotating: Any, pki: TestPki
) -> None:
    renewed = pki.ca.issue("sidecar")
    idp, volume, harness = await rotating(pki.sidecar, reload_interval=0.05)
    cert_header = escaped_pem(pki.alice)
    statuses: Counter[int] = Counter()
    sent = 0
    swapped_at: int | None = None
    deadline = time.monotonic() + MAX_SECONDS

    def done() -> bool:
        after_swap = idp.seen[swapped_at:] if swapped_at is not None else []
        return sent >= MAX_CHECKS or time.monotonic() > deadline or after_swap.count(renewed.x5t_s256) >= 200

    async def worker() -> None:
        nonlocal sent, swapped_at
        # One token per worker: concurrent checks of one token would share one IdP call.
        headers = {"Authorization": f"Bearer {idp.mint('alice', cnf=pki.alice.x5t_s256)}",
                   "x-client-cert": cert_header}
        while not done():
            sent += 1
            response = await harness.check.get("/check", headers=headers)
            statuses[response.status] += 1
            response.release()
            if swapped_at is None and sent >= 200:
                swapped_at = len(idp.seen)
                volume.publish(payload(pki, renewed))

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    failed = sent - statuses[200]
    old, new = pki.sidecar.x5t_s256, renewed.x5t_s256
    print(f"\nrotation: checks sent={sent} ok={statuses[200]} failed={failed} statuses={dict(statuses)} "
          f"idp calls with old cert={idp.seen.count(old)} with new cert={idp.seen.count(new)}")
    assert swapped_at is not None
    assert failed == 0, dict(statuses)
    assert harness.sidecar.issuer.cert_watcher.reloads == 1
    assert idp.seen[:swapped_at] == [old] * swapped_at
    assert idp.seen.count(new) >= 200 and idp.seen[-50:] == [new] * 50
    assert set(idp.seen) == {old, new}
    assert harness.sidecar.metrics.tls_reload_errors._value.get() == 0
    for _ in range(100):  # the old session closes idp.timeout + 1 s after the swap
        if not harness.sidecar.issuer.session._retiring:
            break
        await asyncio.sleep(0.1)
    assert not harness.sidecar.issuer.session._retiring


async def test_a_key_that_does_not_match_the_certificate_keeps_the_old_one_and_counts_an_error(
    rotating: Any, pki: TestPki, captured_logs: pytest.LogCaptureFixture
) -> None:
    idp, volume, harness = await rotating(pki.sidecar, reload_interval=0)
    watcher, sidecar = harness.sidecar.issuer.cert_watcher, harness.sidecar
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    stranger = pki.ca.issue("sidecar")
    volume.publish(payload(pki, stranger, key=pki.ca.issue("sidecar")))
    assert watcher.poll() is False
    assert watcher.poll() is False  # the same broken content is not retried nor counted again
    assert sidecar.metrics.tls_reload_errors._value.get() == 1
    response = await harness.check.get("/check", headers={
        "Authorization": f"Bearer {token}", "x-client-cert": escaped_pem(pki.alice)})
    assert response.status == 200
    assert idp.seen[-1] == pki.sidecar.x5t_s256
    assert (await harness.admin.get("/readyz")).status == 200
    errors = [r for r in captured_logs.records if r.name == "sidecar.idp.rotation" and r.levelname == "ERROR"]
    assert len(errors) == 1 and "KEY_VALUES_MISMATCH" in getattr(errors[0], "error", "")
    secret_lines = [line for line in stranger.key_pem.decode().splitlines() if "PRIVATE KEY" not in line]
    assert not any(part in captured_logs.text for part in secret_lines)


async def test_a_half_written_certificate_keeps_the_old_one_until_a_whole_one_arrives(
    rotating: Any, pki: TestPki
) -> None:
    idp, volume, harness = await rotating(pki.sidecar, reload_interval=0)
    watcher = harness.sidecar.issuer.cert_watcher
    renewed = pki.ca.issue("sidecar")
    half = payload(pki, renewed)
    half["tls.crt"] = half["tls.crt"][: len(half["tls.crt"]) // 2]
    volume.publish(half)
    assert watcher.poll() is False
    assert harness.sidecar.metrics.tls_reload_errors._value.get() == 1
    volume.publish(payload(pki, renewed))
    assert watcher.poll() is True
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    response = await harness.check.get("/check", headers={
        "Authorization": f"Bearer {token}", "x-client-cert": escaped_pem(pki.alice)})
    assert response.status == 200 and idp.seen[-1] == renewed.x5t_s256


async def test_readiness_turns_false_only_when_the_certificate_in_use_has_expired(
    rotating: Any, pki: TestPki
) -> None:
    expired = pki.ca.issue("sidecar", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=2), days=1)
    _, volume, harness = await rotating(expired, reload_interval=0)
    watcher = harness.sidecar.issuer.cert_watcher
    readyz = await harness.admin.get("/readyz")
    assert readyz.status == 503 and (await readyz.json())["reason"] == "client_certificate_expired"
    volume.publish(payload(pki, pki.ca.issue("sidecar"), key=pki.bob))  # broken renewal: still not ready
    assert watcher.poll() is False
    assert (await harness.admin.get("/readyz")).status == 503
    volume.publish(payload(pki, pki.sidecar))
    assert watcher.poll() is True
    assert not watcher.expired()
    for _ in range(100):  # discovery, refused with the expired certificate, is retried in the background
        readyz = await harness.admin.get("/readyz")
        if readyz.status == 200:
            break
        assert (await readyz.json())["reason"] == "discovery_pending"
        await asyncio.sleep(0.1)
    assert readyz.status == 200


async def test_a_rewrite_with_the_same_content_is_not_a_reload(rotating: Any, pki: TestPki) -> None:
    _, volume, harness = await rotating(pki.sidecar, reload_interval=0)
    volume.publish(payload(pki, pki.sidecar))
    assert harness.sidecar.issuer.cert_watcher.poll() is False
    assert harness.sidecar.issuer.cert_watcher.reloads == 0
    assert harness.sidecar.metrics.tls_reload_errors._value.get() == 0


async def test_a_new_ca_bundle_alone_is_a_reload_and_still_verifies_the_idp(rotating: Any, pki: TestPki) -> None:
    idp, volume, harness = await rotating(pki.sidecar, reload_interval=0)
    other_ca = CertificateAuthority("another CA")
    bundle = payload(pki, pki.sidecar)
    bundle["ca.crt"] = other_ca.root.cert_pem + pki.ca.root.cert_pem  # the CA rollover case: both trusted
    volume.publish(bundle)
    assert harness.sidecar.issuer.cert_watcher.poll() is True
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    response = await harness.check.get("/check", headers={
        "Authorization": f"Bearer {token}", "x-client-cert": escaped_pem(pki.alice)})
    assert response.status == 200 and idp.seen[-1] == pki.sidecar.x5t_s256
