"""The container image, built from the Dockerfile with podman and run: /healthz, an allow and a
deny against the development IdP on the host, a numeric non-root user, a read-only root
filesystem, and SIGTERM draining a check in flight.

No registry is reachable, so the base image is made here (once, then reused): a Debian bookworm
``debootstrap --variant=minbase`` with python3, venv, pip and ca-certificates, ``podman import``ed
and passed to the Dockerfile as ``PYTHON_IMAGE``. The build runs with ``--isolation chroot
--network host`` and the host's CA bundle mounted read-only for the build only (pip reaches
PyPI through it). ``podman run`` uses runc and ulimits within this machine's hard limits
(a containers.conf of the test's own, via CONTAINERS_CONF).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import pytest
from aiohttp import web

from sidecar.dev.devidp import server_context
from sidecar.dev.fakeidp import FakeIdp, Fault, standard_idp
from tests.conftest import escaped_pem
from tests.interop.https import Reply, request
from tests.interop.processes import accepts_connections
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port

pytestmark = pytest.mark.fronts

ROOT = Path(__file__).resolve().parents[2]
# Bump the tag when the recipe below changes: an existing base is reused as it is.
BASE = "localhost/sidecar-base:bookworm-1"
BASE_PACKAGES = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
IMAGE = "localhost/sidecar:fronts-test"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
IN_IMAGE_TLS = "/etc/sidecar/tls"
UID = 65532


def apt_mirror() -> str:
    """The Debian mirror apt already uses (deb822 or one-line sources), else deb.debian.org."""
    for source in [*Path("/etc/apt/sources.list.d").glob("*.sources"), Path("/etc/apt/sources.list")]:
        if not source.is_file():
            continue
        for line in source.read_text().splitlines():
            words = line.split()
            if line.startswith("URIs:") and len(words) > 1 and words[1].rstrip("/").endswith("/debian"):
                return words[1]
            if words[:1] == ["deb"] and any(w.rstrip("/").endswith("/debian") for w in words[1:3]):
                return next(w for w in words[1:3] if w.rstrip("/").endswith("/debian"))
    return "http://deb.debian.org/debian"


class Podman:
    """podman with this test's containers.conf: runc, and ulimits this machine allows."""

    def __init__(self, work: Path) -> None:
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
        conf = work / "containers.conf"
        conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
                        '[engine]\nruntime = "runc"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.timings: dict[str, float] = {}

    def __call__(self, *args: str, check: bool = True, timeout: float = 120,
                 stdin: IO[bytes] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                stdin=stdin)
        if check:
            assert result.returncode == 0, f"podman {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result

    def ensure_base(self, work: Path) -> None:
        if self("image", "exists", BASE, check=False).returncode == 0:
            return
        started = time.monotonic()
        rootfs = work / "rootfs"
        made = subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
                               str(rootfs), apt_mirror()], capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            self("import", "-", BASE, stdin=tar.stdout, timeout=600)
        shutil.rmtree(rootfs, ignore_errors=True)
        self.timings["base"] = time.monotonic() - started

    def image_id(self) -> str:
        return self("image", "inspect", "--format", "{{.Id}}", IMAGE, check=False).stdout.strip()

    def build(self) -> None:
        """Build the Dockerfile; unchanged steps come from podman's layer cache."""
        started, before = time.monotonic(), self.image_id()
        self("build", "--isolation", "chroot", "--network", "host", "--build-arg", f"PYTHON_IMAGE={BASE}",
             "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "-t", IMAGE, str(ROOT), timeout=900)
        self.timings["build"] = time.monotonic() - started
        if before and before != self.image_id():  # the previous build, untagged by this one
            self("rmi", before, check=False)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    work = tmp_path_factory.mktemp("podman")
    tool = Podman(work)
    tool.ensure_base(work)
    tool.build()
    print(f"\nimage timings (s): {json.dumps({k: round(v, 1) for k, v in tool.timings.items()})}")
    return tool


class ThreadedIdp:
    """The development IdP (with fault injection) over mutual TLS on the host's loopback,
    served from a thread of its own: the container reaches it through the host network."""

    def __init__(self, pki: TestPki) -> None:
        self.fake: FakeIdp = standard_idp()
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(self.fake.app())
        context = server_context(*pki.idp_files, pki.ca_file)
        self.port = free_port()
        self.fake.issuer = f"https://127.0.0.1:{self.port}"

        async def start() -> None:
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=context).start()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def devidp(pki: TestPki) -> Iterator[ThreadedIdp]:
    idp = ThreadedIdp(pki)
    yield idp
    idp.close()


@pytest.fixture(scope="module")
def tls_dir(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sidecar's client certificate, key and the IdP's CA, readable by the image's user."""
    directory = tmp_path_factory.mktemp("container-tls")
    for source, name in ((pki.sidecar_files[0], "client.crt"), (pki.sidecar_files[1], "client.key"),
                         (pki.ca_file, "idp-ca.crt")):
        shutil.copy(source, directory / name)
        (directory / name).chmod(0o644)  # test keys only
    directory.chmod(0o755)
    return directory


class Container:
    def __init__(self, podman: Podman, idp: ThreadedIdp, tls_dir: Path, **env: str) -> None:
        self.podman = podman
        self.name = f"sidecar-test-{uuid.uuid4().hex[:8]}"
        self.port, self.admin_port = free_port(), free_port()
        settings = {
            "SIDECAR_SERVER__PORT": str(self.port), "SIDECAR_SERVER__ADMIN_PORT": str(self.admin_port),
            "SIDECAR_IDP__ISSUER": idp.fake.issuer, "SIDECAR_IDP__CLIENT_ID": "sidecar",
            "SIDECAR_IDP__CERT_FILE": f"{IN_IMAGE_TLS}/client.crt",
            "SIDECAR_IDP__KEY_FILE": f"{IN_IMAGE_TLS}/client.key",
            "SIDECAR_IDP__CA_FILE": f"{IN_IMAGE_TLS}/idp-ca.crt", **env,
        }
        # As deploy/kubernetes runs it: read-only root, a writable /tmp, no capabilities.
        podman("run", "--detach", "--name", self.name, "--network", "host", "--read-only",
               "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=16m", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "-v", f"{tls_dir}:{IN_IMAGE_TLS}:ro",
               *(f"--env={k}={v}" for k, v in settings.items()), IMAGE)
        deadline = time.monotonic() + 30
        while not self._ready():
            assert self.running, f"the container exited:\n{self.logs()}"
            assert time.monotonic() < deadline, f"not ready after 30 s:\n{self.logs()}"
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            return self.admin("/readyz").status == 200
        except OSError:
            return False

    def admin(self, path: str) -> Reply:
        return request(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)

    def check(self, token: str, cert_pem: str) -> Reply:
        return request(f"http://127.0.0.1:{self.port}/check", timeout=10,
                       headers={"Authorization": f"Bearer {token}", "X-Client-Cert": cert_pem})

    def state(self) -> dict[str, object]:
        found: dict[str, object] = json.loads(self.podman("inspect", self.name).stdout)[0]
        return found

    @property
    def running(self) -> bool:
        return bool(self.state()["State"]["Running"])  # type: ignore[index]

    def logs(self) -> str:
        result = self.podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        self.podman("rm", "--force", "--time", "0", self.name, check=False)


@pytest.fixture(scope="module")
def container(podman: Podman, devidp: ThreadedIdp, tls_dir: Path) -> Iterator[Container]:
    started = Container(podman, devidp, tls_dir)
    yield started
    started.remove()


def test_the_image_answers_healthz_and_readyz_on_its_admin_port(container: Container) -> None:
    assert container.admin("/healthz").json() == {"status": "ok"}
    assert container.admin("/readyz").status == 200


def test_the_image_allows_a_bound_token_with_its_certificate_and_denies_it_with_another(
    container: Container, devidp: ThreadedIdp, pki: TestPki
) -> None:
    token = devidp.fake.mint("alice", cnf=pki.alice.x5t_s256, scope="read")
    allowed = container.check(token, escaped_pem(pki.alice))
    assert allowed.status == 200, container.logs()
    assert allowed.headers["x-credential-client-id"] == "alice"
    assert allowed.headers["x-credential-cnf-x5t-s256"] == pki.alice.x5t_s256
    denied = container.check(token, escaped_pem(pki.bob))
    assert denied.status == 401
    assert denied.json() == {"error": "invalid_token", "reason": "cnf_mismatch"}
    assert devidp.fake.introspect_requests >= 1  # the container asked the IdP on the host


def test_the_image_runs_as_a_numeric_non_root_user_on_a_read_only_root_filesystem(container: Container) -> None:
    state = container.state()
    assert state["Config"]["User"] == f"{UID}:{UID}"  # type: ignore[index]
    assert state["HostConfig"]["ReadonlyRootfs"] is True  # type: ignore[index]
    ids = container.podman("exec", container.name, "id", "-u").stdout.split()
    assert ids == [str(UID)]
    # Even root inside the container cannot write the image's files; /tmp is the one writable place.
    written = container.podman("exec", "--user", "0", container.name, "touch", "/opt/sidecar/probe", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr
    assert container.podman("exec", container.name, "touch", "/tmp/probe", check=False).returncode == 0


def test_sigterm_lets_a_check_in_flight_finish_then_the_container_exits_0(
    podman: Podman, devidp: ThreadedIdp, tls_dir: Path, pki: TestPki
) -> None:
    own = Container(podman, devidp, tls_dir, SIDECAR_IDP__TIMEOUT="5")
    try:
        token = devidp.fake.mint("alice", cnf=pki.alice.x5t_s256)
        before = devidp.fake.introspect_requests
        devidp.fake.fault = Fault(delay=1.5)  # the IdP answers slowly: the check is in flight
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(own.check, token, escaped_pem(pki.alice))
            deadline = time.monotonic() + 10
            while devidp.fake.introspect_requests == before:
                assert time.monotonic() < deadline, "the check never reached the IdP"
                time.sleep(0.02)
            signalled = time.monotonic()
            podman("kill", "--signal", "TERM", own.name)
            # The check port stops taking connections while the check in flight goes on.
            deadline = time.monotonic() + 5
            while accepts_connections(own.port):
                assert time.monotonic() < deadline, "the check port still accepts connections"
                time.sleep(0.02)
            reply = in_flight.result(timeout=15)
        assert reply.status == 200, own.logs()
        assert reply.headers["x-credential-client-id"] == "alice"
        exit_code = podman("wait", own.name, timeout=30).stdout.strip()
        assert exit_code == "0", own.logs()
        assert time.monotonic() - signalled < 10
        logs = [json.loads(line) for line in own.logs().splitlines() if line.startswith("{")]
        assert any(entry.get("msg") == "draining" and entry.get("in_flight") == 1 for entry in logs), logs
        assert token not in own.logs()  # tokens are never logged
    finally:
        devidp.fake.fault = None
        own.remove()
