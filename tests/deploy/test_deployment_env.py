"""The Deployment's configuration is environment only (a ConfigMap through envFrom, no file):
the sidecar started with exactly the rendered ConfigMap's variables becomes ready and decides.

Only what differs between a cluster and this machine is mapped: the Secret's mount directory (a
kubelet-style volume here), the IdP's address, and loopback instead of 0.0.0.0 for the admin port.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from sidecar.dev.devidp import Client
from sidecar.dev.fakeidp import FakeIdp
from tests.deploy.test_kubernetes import OVERLAYS, pod_spec, sidecar_env
from tests.support.kubelet import SecretVolume
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port
from tests.support.sidecar_process import running_sidecar


def process_env(overlay: str, idp: FakeIdp, volume: SecretVolume) -> dict[str, str]:
    config = sidecar_env(overlay)
    mount = str(Path(config["SIDECAR_IDP__CERT_FILE"]).parent)
    mapped = {key: value.replace(mount, str(volume.root)) for key, value in config.items()}
    mapped.update(SIDECAR_IDP__ISSUER=idp.issuer, SIDECAR_SERVER__ADMIN_HOST="127.0.0.1",
                  SIDECAR_SERVER__PORT=str(free_port()), SIDECAR_SERVER__ADMIN_PORT=str(free_port()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    return {**env, **mapped}


@pytest.mark.parametrize("overlay", OVERLAYS)
async def test_the_sidecar_runs_from_the_rendered_configmap_alone(
    overlay: str, idp: FakeIdp, pki: TestPki, tmp_path: Path
) -> None:
    client_id = sidecar_env(overlay)["SIDECAR_IDP__CLIENT_ID"]
    idp.add_client(Client(client_id, may_introspect=True))
    issued = pki.ca.issue(client_id)
    volume = SecretVolume(tmp_path / "idp")
    volume.publish({"tls.crt": issued.cert_pem, "tls.key": issued.key_pem, "ca.crt": pki.ca.root.cert_pem})
    (container,) = pod_spec(overlay)["initContainers"]
    env = process_env(overlay, idp, volume)
    header = env["SIDECAR_CLIENT_CERT__HEADER"]

    def presented(cert_pem: bytes) -> str:
        if env["SIDECAR_CLIENT_CERT__FORMAT"] == "xfcc":
            return f'By=spiffe://api;Cert="{quote(cert_pem.decode(), safe="")}"'
        return quote(cert_pem.decode(), safe="")

    token = idp.mint("alice", cnf=pki.alice.x5t_s256, aud=env["SIDECAR_POLICY__AUDIENCES"])  # the API's identifier
    async with running_sidecar(env, *container["args"]) as process, aiohttp.ClientSession() as client:
        # What the pod's proxy says about the original request: the API's public origin (routing.origins).
        auth = {"Authorization": f"Bearer {token}", "Host": "api.example.com", "X-Forwarded-Proto": "https"}
        async with client.get(process.check_url, headers={**auth, header: presented(pki.alice.cert_pem)}) as ok:
            assert ok.status == 200 and ok.headers["x-credential-sub"] == "alice"
        async with client.get(process.check_url, headers={**auth, header: presented(pki.bob.cert_pem)}) as bad:
            assert bad.status == 401
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(timeout=30) == 0
    assert idp.last_form is not None and idp.last_form["client_id"] == client_id
