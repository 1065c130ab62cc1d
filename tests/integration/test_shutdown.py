"""Graceful shutdown of the real process: SIGTERM while checks are in flight at a slow IdP.

The sidecar runs as the container would run it (``python -m sidecar``, configured from the
environment only) against the fake IdP over real mutual TLS. A check is *in flight* when the
client sent it before SIGTERM; every such check must be answered, and the process must exit 0
within ``server.shutdown_grace``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import aiohttp
import pytest

from sidecar.dev.fakeidp import FakeIdp, Fault
from tests.conftest import escaped_pem
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port
from tests.support.sidecar_process import Process, running_sidecar

WORKERS = 24
IDP_DELAY = 0.4
GRACE = 5.0


def sidecar_env(pki: TestPki, idp: FakeIdp, **extra: str) -> dict[str, str]:
    """A Deployment-style configuration: environment variables only, no file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(
        SIDECAR_IDP__ISSUER=idp.issuer, SIDECAR_IDP__CLIENT_ID="sidecar",
        SIDECAR_IDP__CERT_FILE=str(pki.sidecar_files[0]), SIDECAR_IDP__KEY_FILE=str(pki.sidecar_files[1]),
        SIDECAR_IDP__CA_FILE=str(pki.ca_file), SIDECAR_IDP__TIMEOUT="5",
        SIDECAR_SERVER__PORT=str(free_port()), SIDECAR_SERVER__ADMIN_PORT=str(free_port()),
        SIDECAR_SERVER__SHUTDOWN_GRACE=str(GRACE), SIDECAR_CACHE__MAX_ENTRIES="0",
        # Every check is one client's IdP call here (no cache): the drain is tested, not admission.
        SIDECAR_ADMISSION__MISS_RATE="0", SIDECAR_ADMISSION__MAX_SHARE="1",
    )
    env.update(extra)
    return env


async def test_sigterm_during_load_answers_every_check_in_flight_and_exits_0_within_the_grace(
    idp: FakeIdp, pki: TestPki
) -> None:
    idp.fault = Fault(delay=IDP_DELAY)  # slow IdP: every check spends IDP_DELAY in flight
    async with running_sidecar(sidecar_env(pki, idp)) as process:
        await load_then_sigterm(process, idp, pki)


async def load_then_sigterm(process: Process, idp: FakeIdp, pki: TestPki) -> None:
    cert = escaped_pem(pki.alice)
    before: Counter[str] = Counter()  # outcomes of checks sent before SIGTERM
    after: Counter[str] = Counter()  # outcomes of checks sent after it
    sigterm = asyncio.Event()
    sent = 0

    async def worker(client: aiohttp.ClientSession, number: int) -> None:
        nonlocal sent
        headers = {"Authorization": f"Bearer {idp.mint('alice', cnf=pki.alice.x5t_s256)}", "x-client-cert": cert}
        await asyncio.sleep(number * IDP_DELAY / WORKERS)  # staggered: SIGTERM finds checks at every stage
        while True:
            outcomes = after if sigterm.is_set() else before
            sent += 1
            try:
                async with client.get(process.check_url, headers=headers) as response:
                    outcomes[str(response.status)] += 1
            except aiohttp.ClientConnectorError:
                outcomes["refused"] += 1  # never accepted: the port no longer listens
                return
            except aiohttp.ClientError as exc:
                outcomes[type(exc).__name__] += 1
                return
            if sent > 20 * WORKERS:  # bound: the test sends SIGTERM long before this
                return

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=WORKERS)) as client:
        load = [asyncio.create_task(worker(client, n)) for n in range(WORKERS)]
        while sum(before.values()) < 2 * WORKERS:  # two rounds answered: the load is steady
            await asyncio.sleep(0.02)
        in_flight_at_sigterm = sent - sum(before.values())
        sigterm.set()
        signalled = time.monotonic()
        process.popen.send_signal(signal.SIGTERM)
        readiness: list[int] = []
        async with aiohttp.ClientSession() as admin:
            for _ in range(10):
                await asyncio.sleep(0.02)
                try:
                    async with admin.get(f"{process.admin_url}/readyz") as response:
                        readiness.append(response.status)
                except aiohttp.ClientError:
                    break
        await asyncio.gather(*load)
    returncode = await asyncio.to_thread(process.popen.wait, GRACE + 5)
    exited_after = time.monotonic() - signalled
    dropped = sum(n for outcome, n in before.items() if outcome != "200")
    print(f"\nshutdown: checks sent={sent} in flight at SIGTERM={in_flight_at_sigterm} "
          f"before SIGTERM={dict(before)} after SIGTERM={dict(after)} dropped={dropped} "
          f"exit={returncode} after {exited_after:.2f}s (grace {GRACE}s) readyz after SIGTERM={readiness}")
    assert in_flight_at_sigterm > 0
    assert dropped == 0, dict(before)
    assert set(after) <= {"200", "refused"}, dict(after)  # accepted means answered, never a 5xx or a reset
    assert returncode == 0
    assert readiness and set(readiness) == {503}
    drained = [line for line in process.logs() if line.get("msg") == "drained"]
    assert drained and drained[0]["in_flight"] == 0


async def test_a_check_slower_than_the_grace_does_not_hold_the_exit(
    idp: FakeIdp, pki: TestPki
) -> None:
    idp.fault = Fault(delay=30)
    env = sidecar_env(pki, idp, SIDECAR_SERVER__SHUTDOWN_GRACE="1", SIDECAR_IDP__TIMEOUT="60")
    async with running_sidecar(env) as process:
        await stuck_check_then_sigterm(process, idp, pki)


async def stuck_check_then_sigterm(process: Process, idp: FakeIdp, pki: TestPki) -> None:
    headers = {"Authorization": f"Bearer {idp.mint('alice', cnf=pki.alice.x5t_s256)}",
               "x-client-cert": escaped_pem(pki.alice)}
    async with aiohttp.ClientSession() as client:
        stuck = asyncio.create_task(client.get(process.check_url, headers=headers))
        while idp.introspect_requests == 0:
            await asyncio.sleep(0.02)
        process.popen.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(process.popen.wait, 10)
        with pytest.raises(aiohttp.ClientError):
            await stuck
    assert returncode == 0
    drained = [line for line in process.logs() if line.get("msg") == "drained"]
    assert drained and drained[0]["in_flight"] == 1
