"""The lock decides what a fresh machine installs, not the registry.

``uv.lock`` pins every Python package of every install path (runtime, ``fleet``, ``test``, the
Envoy binary's group) with its hashes; ``./test.sh``, ``./run.sh`` and the Dockerfile install
from it with ``uv sync --locked``, which refuses a lock that no longer matches ``pyproject.toml``.
These tests hold both halves: the lock matches the declared ranges, and the environment the
tests run in is exactly the lock.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tests.support.lock import canonical, locked_versions

ROOT = Path(__file__).resolve().parents[1]
UV = ROOT / ".uv" / "bin" / "uv"  # from the hashed tools/uv.txt (./test.sh)
PROJECT = "sidecar"


def uv_check(project: Path, *, offline: bool = True) -> subprocess.CompletedProcess[str]:
    """``uv lock --check``: exit 0 when the lock satisfies pyproject.toml as it is. A lock that does
    needs no index; one that does not is resolved afresh (with the index) to say so."""
    return subprocess.run([str(UV), "lock", "--check", *(["--offline"] if offline else []), "--python", sys.executable],
                          cwd=project, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})


def test_the_lock_satisfies_every_range_of_pyproject() -> None:
    result = uv_check(ROOT)
    assert result.returncode == 0, result.stderr


def test_the_lock_check_fails_when_pyproject_asks_for_something_the_lock_lacks(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / PROJECT).mkdir()
    (tmp_path / PROJECT / "__init__.py").write_text("")
    assert uv_check(tmp_path).returncode == 0  # the copy alone is as locked as the project
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"aiohttp>=3.9,<4",', '"aiohttp>=3.9,<4",\n    "six>=1.16",'))
    result = uv_check(tmp_path, offline=False)
    assert result.returncode != 0 and "needs to be updated" in result.stderr, result.stderr


def test_every_package_the_tests_run_with_is_the_locked_version() -> None:
    locked = locked_versions()
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions(path=sys.path)}
    installed.pop(PROJECT, None)
    assert installed, "no distribution found on sys.path"
    wrong = {name: version for name, version in installed.items() if version not in locked.get(name, ())}
    assert wrong == {}, "installed (version, locked version) differ: run ./test.sh, which syncs from uv.lock"
    # and the lock's own pins are what the test extra asks for: pytest, mypy and redis among them
    assert {"pytest", "mypy", "redis", "aiohttp", "cryptography"} <= installed.keys()


# Files two locked distributions both ship: xds-protos carries old copies of the OpenTelemetry and
# Google API protos. tools/uv.sh (and the Dockerfile) reinstall their own packages last, so their
# copies are the ones on disk; any other overlap is new and must be looked at.
SHARED_FILES_OWNER = {("opentelemetry-proto", "xds-protos"): "opentelemetry-proto",
                      ("googleapis-common-protos", "xds-protos"): "googleapis-common-protos"}


def test_where_two_installed_distributions_ship_one_file_the_known_owner_s_copy_is_on_disk() -> None:
    owners: dict[str, list[metadata.Distribution]] = {}
    for dist in metadata.distributions(path=sys.path):
        for file in dist.files or ():
            if file.hash is not None and str(file).endswith(".py"):
                owners.setdefault(str(file), []).append(dist)
    shared = {path: dists for path, dists in owners.items() if len(dists) > 1}
    assert shared, "xds-protos and opentelemetry-proto no longer overlap: drop SHARED_FILES_OWNER and the reinstall"
    wrong: list[str] = []
    for path, dists in sorted(shared.items()):
        names = tuple(sorted(canonical(d.metadata["Name"]) for d in dists))
        owner = SHARED_FILES_OWNER.get(names)
        assert owner is not None, f"{path} is shipped by {names}: a new overlap"
        (winner,) = [d for d in dists if canonical(d.metadata["Name"]) == owner]
        (record,) = [f for f in winner.files or () if str(f) == path]
        assert record.hash is not None
        digest = base64.urlsafe_b64encode(hashlib.new(record.hash.mode, record.read_binary()).digest()).rstrip(b"=")
        if digest.decode() != record.hash.value:
            wrong.append(f"{path} (not {owner}'s)")
    assert wrong == [], f"{wrong[:3]}...: tools/uv.sh reinstalls the owners after the sync"
