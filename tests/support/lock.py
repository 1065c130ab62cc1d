"""What uv.lock pins: package versions by canonical name (the tests compare installs against it)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def canonical(name: str) -> str:
    """PEP 503 normalized name: ``Prometheus_Client`` and ``prometheus-client`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions() -> dict[str, set[str]]:
    """Every locked version of each package (a package may have one per Python version: atheris)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        if "version" in package:
            versions.setdefault(canonical(package["name"]), set()).add(package["version"])
    return versions
