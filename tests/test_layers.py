"""The package's layers (docs/layout.md): no module imports upward, there is no import cycle, and
fronts, the IdP client and the fleet keep to themselves (APART).

Every ``import`` and ``from … import`` in sidecar/, including those inside functions and under
TYPE_CHECKING, is read with ``ast``; relative imports are resolved first.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sidecar"
# Lowest first; a module may import its own layer and the ones before it.
LAYERS = (
    ("sidecar.support",),
    ("sidecar.config",),
    ("sidecar.core",),
    ("sidecar.idp", "sidecar.fleet"),  # side by side, never importing each other (APART)
    ("sidecar.runtime",),
    ("sidecar.fronts",),
    ("sidecar.app", "sidecar.workers"),
    ("sidecar.dev",),
    ("sidecar.__main__",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from pkg import module` imports the module, else a name of base
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {name for name in found if name == "sidecar" or name.startswith("sidecar.")}


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def known(name: str) -> str | None:
    """The module ``name`` refers to (``sidecar.core.errors.Denial`` -> ``sidecar.core.errors``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@functools.cache
def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = {known(i) for i in imports_of(path)}
        edges[name] = {t for t in targets if t and t != name and t != "sidecar"}
    return edges


def test_every_module_belongs_to_a_layer() -> None:
    assert [m for m in MODULES if m != "sidecar" and layer_of(m) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_higher_layer(module: str) -> None:
    own = layer_of(module)
    if own is None:
        return  # the package's own __init__ imports nothing of its layers
    upward = sorted(t for t in graph()[module] if (layer_of(t) or 0) > own)
    assert upward == [], f"{module} (layer {own}) imports upward: {upward}"


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, f"import cycle: {' -> '.join([*visiting[visiting.index(node):], node])}"
        visiting.append(node)
        for target in sorted(edges.get(node, ())):
            visit(target)
        visiting.pop()
        done.add(node)

    for module in sorted(edges):
        visit(module)


# Packages that never import the other, whatever the layers allow: a front only translates (the
# core decides, the runtime wires the IdP and the fleet in), and the IdP client and the Redis fleet
# know nothing of each other (the core's ports are their only meeting point).
APART = (
    ("sidecar.fronts", "sidecar.idp"),
    ("sidecar.fronts", "sidecar.fleet"),
    ("sidecar.idp", "sidecar.fleet"),
    ("sidecar.fleet", "sidecar.idp"),
)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def forbidden(module: str, targets: set[str]) -> list[str]:
    return sorted(t for t in targets for source, apart in APART if _within(module, source) and _within(t, apart))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_fronts_never_import_the_idp_or_the_fleet_and_those_two_never_import_each_other(module: str) -> None:
    assert forbidden(module, graph()[module]) == [], f"{module} imports across a wall"


def test_the_wall_checker_sees_a_front_importing_the_idp_and_the_fleet_importing_the_idp() -> None:
    assert forbidden("sidecar.fronts.http", {"sidecar.idp.guard", "sidecar.core.decision"}) == ["sidecar.idp.guard"]
    assert forbidden("sidecar.fleet.store", {"sidecar.idp.failures"}) == ["sidecar.idp.failures"]
    assert forbidden("sidecar.idp.jwks", {"sidecar.fleet.seal"}) == ["sidecar.fleet.seal"]
    assert forbidden("sidecar.runtime", {"sidecar.idp.issuer", "sidecar.fleet.store"}) == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule can fail: a core module importing a front is reported."""
    fake = tmp_path / "sidecar" / "core"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from sidecar.fronts.http import check\n")
    found = {known(name) for name in imports_of_at(fake / "bad.py", tmp_path / "sidecar")}
    assert "sidecar.fronts.http" in found
    assert (layer_of("sidecar.fronts.http") or 0) > (layer_of("sidecar.core.bad") or 0)


def imports_of_at(path: Path, package: Path) -> set[str]:
    global PACKAGE
    saved, PACKAGE = PACKAGE, package
    try:
        return imports_of(path)
    finally:
        PACKAGE = saved
