"""The command line as an operator meets it: --version, a plain-text help per command, and every bad
input of a start answered with one line naming the key, file or port, and exit status 2."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import sidecar
from sidecar.dev.pki import CertificateAuthority
from tests.support.ports import free_port


def cli(*args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    return subprocess.run([*prefix, sys.executable, "-m", "sidecar", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    cert, key = CertificateAuthority().issue("sidecar").write(tmp_path, "sidecar")
    return {"SIDECAR_IDP__ISSUER": "https://127.0.0.1:9", "SIDECAR_IDP__CLIENT_ID": "sidecar",
            "SIDECAR_IDP__CERT_FILE": str(cert), "SIDECAR_IDP__KEY_FILE": str(key)}


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    return line


def test_version_names_the_release_and_the_python() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.startswith(f"sidecar {sidecar.__version__} (Python 3.")


@pytest.mark.parametrize(("command", "says"), [
    ((), "serve checks (the default command)"),
    (("serve",), "SIGHUP reads the file and the environment again"),
    (("check-config",), 'print the warnings and "configuration ok"'),
    (("demo",), "removed on exit"),
])
def test_each_command_explains_itself_in_plain_text(command: tuple[str, ...], says: str) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0 and says in " ".join(result.stdout.split())
    assert "``" not in result.stdout and ":class:" not in result.stdout  # no reStructuredText


def test_the_config_file_may_be_named_before_or_after_the_command(tmp_path: Path, files: dict[str, str]) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text('[policy]\nbinding = "loose"\n')
    for args in (("--config", str(path), "check-config"), ("check-config", "--config", str(path))):
        assert "policy.binding" in one_line(cli(*args, env=files))


def test_an_encrypted_key_without_its_password_is_named_not_prompted_for(files: dict[str, str]) -> None:
    key = Path(files["SIDECAR_IDP__KEY_FILE"])
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"pass phrase")))
    line = one_line(cli("check-config", env=files))
    assert line == f"sidecar: invalid configuration: idp.key_file: {key} is encrypted: set idp.key_password"
    assert cli("check-config", env={**files, "SIDECAR_IDP__KEY_PASSWORD": "pass phrase"}).returncode == 0


def test_a_key_file_this_process_cannot_read_is_named_with_its_key(files: dict[str, str]) -> None:
    key = Path(files["SIDECAR_IDP__KEY_FILE"])
    key.chmod(0)
    # As root, without the capabilities that let root read any file (a container user could not).
    prefix = (shutil.which("setpriv") or "setpriv", "--bounding-set=-dac_override,-dac_read_search") \
        if os.geteuid() == 0 else ()
    line = one_line(cli("check-config", env=files, prefix=prefix))
    assert line.startswith("sidecar: invalid configuration: idp.key_file: not readable by this process (uid ")
    assert line.endswith(f"): {key}")


def test_an_unknown_variable_stops_the_start_naming_it(files: dict[str, str]) -> None:
    line = one_line(cli("serve", env={**files, "SIDECAR_IDP__ISSUR": "https://idp.example"}))
    assert line == ("sidecar: invalid configuration: SIDECAR_IDP__ISSUR: unknown environment variable (no such "
                    "key); did you mean SIDECAR_IDP__ISSUER?")


@pytest.mark.parametrize("key", ["server.port", "server.admin_port"])
def test_a_port_in_use_stops_the_start_naming_the_port_and_its_key(files: dict[str, str], key: str) -> None:
    ports = {"server.port": free_port(), "server.admin_port": free_port()}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[key]))
        holder.listen()
        result = cli("serve", env={**files, "SIDECAR_SERVER__PORT": str(ports["server.port"]),
                                   "SIDECAR_SERVER__ADMIN_PORT": str(ports["server.admin_port"])})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # the JSON log lines
    assert lines == [f"sidecar: cannot listen on 127.0.0.1:{ports[key]} ({key}): already in use"], result.stderr
    assert "Traceback" not in result.stderr
