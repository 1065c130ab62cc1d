"""client_cert.ca_file through the HTTP front: a token bound to a certificate from another CA is
refused even though its thumbprint matches (the header's chain is validated first)."""

from __future__ import annotations

import datetime as dt

from sidecar.dev.fakeidp import FakeIdp
from sidecar.dev.pki import CertificateAuthority
from tests.conftest import MakeSidecar, escaped_pem
from tests.support.pki_fixtures import TestPki


async def test_only_certificates_of_the_configured_ca_bind_tokens(make_sidecar: MakeSidecar, idp: FakeIdp,
                                                                  pki: TestPki) -> None:
    running = await make_sidecar(client_cert={"ca_file": str(pki.ca_file), "format": "escaped_pem"})
    own = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await running.check(own, pki.alice)).status == 200

    rogue = CertificateAuthority("rogue CA").issue("alice")
    stolen = idp.mint("alice", cnf=rogue.x5t_s256)  # bound to the rogue certificate itself
    response = await running.client.get("/", headers={"Authorization": f"Bearer {stolen}",
                                                      "x-client-cert": escaped_pem(rogue)})
    assert response.status == 401 and (await response.json())["reason"] == "cert_untrusted"

    expired = pki.ca.issue("alice", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3), days=1)
    token = idp.mint("alice", cnf=expired.x5t_s256)
    response = await running.client.get("/", headers={"Authorization": f"Bearer {token}",
                                                      "x-client-cert": escaped_pem(expired)})
    assert response.status == 401 and (await response.json())["reason"] == "cert_expired"
