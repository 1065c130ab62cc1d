"""The container image: the Dockerfile lints clean, and the install step it runs gives a working
``sidecar`` command. Here the build stage is replayed without a container engine: the files the
Dockerfile copies are the only build context, and its ``uv sync --locked`` installs the package
and exactly the locked runtime dependencies into a fresh venv, and the entry point runs from
there. The image itself is built and run with podman in test_image_podman.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.lock import canonical, locked_versions
from tests.support.pki_fixtures import TestPki

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), one list per stage."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = subprocess.run([str(HADOLINT), "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_report_a_root_user_and_a_shell_form_entrypoint(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER root\nENTRYPOINT sidecar\n")
    result = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3002" in result.stdout and "DL3025" in result.stdout


def test_the_final_stage_runs_the_entry_point_as_a_numeric_non_root_user_with_both_ports_exposed() -> None:
    build, final = stages()
    assert build[0].endswith(" AS build")
    assert "uv sync --locked --no-editable" in " ".join(build)  # exactly uv.lock, never the newest release
    copies = [line for line in final if line.startswith("COPY")]
    assert copies == ["COPY --from=build /opt/sidecar /opt/sidecar"]
    user = next(line for line in final if line.startswith("USER ")).split()[1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit()
    assert 'ENTRYPOINT ["sidecar"]' in final
    assert "EXPOSE 8080 8081" in final
    labels = " ".join(line for line in final if line.startswith("LABEL"))
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels


BUILD_CONTEXT = {"tools/uv.txt", "pyproject.toml", "uv.lock", "README.md", "sidecar"}


def test_the_build_context_is_only_what_the_dockerfile_copies() -> None:
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignored[0] == "*"
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    copied = {part.rstrip("/") for line in stages()[0] if line.startswith("COPY") for part in line.split()[1:-1]}
    assert copied == allowed == BUILD_CONTEXT


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Replay the build stage: the copied files only, installed by the Dockerfile's own uv command."""
    work = tmp_path_factory.mktemp("image")
    context = work / "src"
    context.mkdir()
    for name in BUILD_CONTEXT - {"sidecar"}:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "sidecar", context / "sidecar", ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    (sync,) = [line.removeprefix("RUN ").split(" && ")[0] for line in stages()[0] if "uv sync " in line]
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never",
           "PYTHONDONTWRITEBYTECODE": "1", "UV_NATIVE_TLS": "1"}
    uv = ROOT / ".uv" / "bin" / "uv"  # the same pinned uv (tools/uv.txt) that ./test.sh installed
    subprocess.run([str(uv), *sync.split()[1:]], cwd=context, check=True, env=env, timeout=600,
                   capture_output=True)
    return venv


def files_under(directory: Path) -> set[Path]:
    return set(directory.rglob("*"))


def test_the_installed_wheel_gives_a_sidecar_command_that_answers_help(installed: Path) -> None:
    result = subprocess.run([str(installed / "bin" / "sidecar"), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "check-config" in result.stdout


def test_the_installed_sidecar_validates_an_environment_only_configuration_and_writes_nothing(
    installed: Path, pki: TestPki
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(PYTHONDONTWRITEBYTECODE="1", SIDECAR_IDP__ISSUER="https://idp.example", SIDECAR_IDP__CLIENT_ID="sidecar",
               SIDECAR_IDP__CERT_FILE=str(pki.sidecar_files[0]), SIDECAR_IDP__KEY_FILE=str(pki.sidecar_files[1]),
               SIDECAR_IDP__CA_FILE=str(pki.ca_file))
    before = files_under(installed)
    ok = subprocess.run([str(installed / "bin" / "sidecar"), "check-config"], capture_output=True, text=True,
                        env=env, timeout=60)
    assert ok.returncode == 0 and "configuration ok" in ok.stdout, ok.stderr
    env["SIDECAR_IDP__KEY_FILE"] = str(pki.bob_files[1])  # a key that is not the certificate's
    bad = subprocess.run([str(installed / "bin" / "sidecar"), "check-config"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode == 2 and "idp.cert_file/idp.key_file" in bad.stderr
    assert files_under(installed) == before  # nothing written into the install (read-only root)


def test_the_installed_venv_holds_exactly_the_locked_runtime_dependencies_and_no_test_tools(installed: Path) -> None:
    probe = ("import importlib.metadata as m, json; "
             "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    result = subprocess.run([str(installed / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True)
    found = {canonical(name): version for name, version in json.loads(result.stdout).items()}
    assert found.pop("sidecar") == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    locked = locked_versions()
    assert {name: version for name, version in found.items() if version not in locked.get(name, ())} == {}
    assert {"aiohttp", "cryptography", "pyjwt", "prometheus-client", "redis"} <= found.keys()  # fleet extra too
    assert not {"pytest", "mypy", "ruff", "pip"} & found.keys()
