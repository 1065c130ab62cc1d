"""The lock decides what a fresh machine installs, not the registry.

``uv.lock`` pins every Python package of every install path (runtime, ``fleet``, ``test``, the
Envoy binary's group) with its hashes; ``./test.sh``, ``./run.sh`` and the Dockerfile install
from it with ``uv sync --locked``, which refuses a lock that no longer matches ``pyproject.toml``.
These tests hold both halves: the lock matches the declared ranges, and the environment the
tests run in is exactly the lock.
"""

from __future__ import annotations

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
