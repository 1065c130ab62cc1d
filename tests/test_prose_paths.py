"""Docstrings and comments name modules and files that exist: a module moved or renamed does not
live on in the prose of the code under its old name.

Read in every Python file of sidecar/, tests/, bench/ and fuzz/ (docstrings with ``ast``, comments
with ``tokenize``): dotted names under ``sidecar`` (the longest prefix that is a module, the rest
attributes of it), repository paths (``deploy/nginx/sidecar.toml``, globs and ``<mode>`` or
``{a,b}`` placeholders read as ``*``, ``tests/support/ports.free_port`` as a module and an attribute) and,
inside sidecar/, paths relative to the package (``core/forged.py``).
"""

from __future__ import annotations

import ast
import functools
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("sidecar", "tests", "bench", "fuzz")
_DOTTED = re.compile(r"(?<![\w./-])sidecar(?:\.[A-Za-z_]\w*)+")
_PATH = re.compile(r"(?<![\w./-])(?:sidecar|deploy|tests|bench|docs|fuzz|tools)/[\w./*<>{},-]*")
_IN_PACKAGE = re.compile(r"(?<![\w./-])(?:core|fronts|idp|fleet|support|config|dev)/\w+\.py\b")
_PLACEHOLDER = re.compile(r"<[^>/]*>|\{[^}/]*\}")
# ``sidecar.toml`` and its kin are file names, not modules.
_FILE_SUFFIXES = {"toml", "env", "lua", "log", "crt", "key", "pem", "yaml", "json", "conf", "pid"}


def prose(source: str) -> list[str]:
    """The docstrings and comments of a Python source."""
    found = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                found.append(docstring)
    return found


@functools.cache
def _modules() -> frozenset[str]:
    return frozenset(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "sidecar").rglob("*.py"))


def dotted_exists(name: str) -> bool:
    parts = name.split(".")
    if parts[-1] in _FILE_SUFFIXES:
        return True
    prefix = next((i for i in range(len(parts), 1, -1) if ".".join(parts[:i]) in _modules()), None)
    if prefix is None:
        return False
    value: object = importlib.import_module(".".join(parts[:prefix]))
    for attribute in parts[prefix:]:
        if not hasattr(value, attribute):
            return False
        value = getattr(value, attribute)
    return True


def path_exists(path: str, base: Path = ROOT) -> bool:
    path = _PLACEHOLDER.sub("*", path.rstrip(".,"))
    if any(ch in path for ch in "*?["):
        return any(base.glob(path))
    if (base / path).exists():
        return True
    module, _, attribute = path.rpartition(".")  # tests/support/ports.free_port
    return bool(module) and attribute.isidentifier() and (base / f"{module}.py").exists()


def missing(text: str, *, in_package: bool) -> list[str]:
    found = [name for name in _DOTTED.findall(text) if not dotted_exists(name)]
    found += [path for path in _PATH.findall(text) if not path_exists(path)]
    if in_package:
        found += [path for path in _IN_PACKAGE.findall(text) if not path_exists(path, ROOT / "sidecar")]
    return found


def _sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if "node_modules" not in p.parts)


@pytest.mark.parametrize("folder", FOLDERS)
def test_docstrings_and_comments_name_only_modules_and_files_that_exist(folder: str) -> None:
    stale = {}
    for path in (p for p in _sources() if p.relative_to(ROOT).parts[0] == folder):
        names = [n for text in prose(path.read_text(encoding="utf-8"))
                 for n in missing(text, in_package=folder == "sidecar")]
        if names:
            stale[str(path.relative_to(ROOT))] = names
    assert not stale, f"docstrings and comments name what is not there: {stale}"


def test_the_check_sees_moved_modules_missing_attributes_and_paths() -> None:
    source = (
        '"""Uses :class:`sidecar.decision.Decider` and :func:`sidecar.fronts.render.render_denial`."""\n'
        "# reads deploy/envoy/sidecar-<mode>.toml and deploy/envoy/sidecar-{grpc,http}-routes.toml\n"
        "def f():\n"
        '    """See sidecar.core.errors.NoSuchDenial, core/gone.py, tests/support/ports.free_port, sidecar.toml."""\n'
        "    return 'sidecar.decision in code is not prose'\n"
    )
    texts = prose(source)
    assert len(texts) == 3
    found = [n for text in texts for n in missing(text, in_package=True)]
    assert found == ["sidecar.decision.Decider", "sidecar.core.errors.NoSuchDenial", "core/gone.py"]
