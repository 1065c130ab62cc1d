"""The registry of denial reasons (sidecar/core/reasons.py) is the code's: every reason raised in
sidecar/ is listed with its class, every listed reason is raised, and the answer tables of the README
and docs/answers.md are the ones generated from it.

The raises are read with ``ast`` from every module of sidecar/: a Denial subclass called with a
literal reason; a subclass whose constructor hands a fixed reason to ``Denial`` (``RateLimited``,
``IdpUnavailable``, ...), wherever it is constructed; and a reason that reaches a constructor
through a variable, which must be one of :data:`INDIRECT` (the functions whose returned literals
it holds).
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.config import KEYS
from sidecar.core import errors
from sidecar.core.reasons import REASONS
from sidecar.fronts.answers import (
    REFERENCE_BEGIN,
    REFERENCE_END,
    TABLE_BEGIN,
    TABLE_END,
    answer,
    answer_table,
    reference_table,
    regenerate,
)
from sidecar.fronts.render import render_denial

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sidecar"
README = ROOT / "README.md"
ANSWERS = ROOT / "docs" / "answers.md"
REGENERATE = "run: python -m sidecar.fronts.answers README.md docs/answers.md"
# A reason passed as a variable: the expression, and the functions whose returned literals it holds.
INDIRECT = {"problem": ("window_problem", "ClientTrust._problem")}


@dataclass(frozen=True)
class Raised:
    reason: str
    denial: str  # the class's name
    where: str  # file:line


def _trees(root: Path = PACKAGE) -> dict[str, ast.Module]:
    return {str(p.relative_to(root.parent)): ast.parse(p.read_text(encoding="utf-8"))
            for p in sorted(root.rglob("*.py"))}


def _classes(trees: dict[str, ast.Module]) -> dict[str, tuple[str, ast.ClassDef]]:
    """Every class: its file and definition (class names are unique in sidecar/)."""
    return {node.name: (path, node) for path, tree in trees.items()
            for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


def denial_classes(trees: dict[str, ast.Module]) -> dict[str, str | None]:
    """Every Denial subclass: its fixed reason, or None when callers pass one (``Denial.__init__``)."""
    classes = _classes(trees)
    found: dict[str, str | None] = {"Denial": None}
    changed = True
    while changed:
        changed = False
        for name, (_, node) in classes.items():
            parents = [b.id for b in node.bases if isinstance(b, ast.Name) and b.id in found]
            if name in found or not parents:
                continue
            found[name] = _fixed_reason(node, found[parents[0]])
            changed = True
    return found


def _fixed_reason(node: ast.ClassDef, inherited: str | None) -> str | None:
    init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
    if init is None:
        return inherited
    for call in ast.walk(init):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "__init__"
                and isinstance(call.func.value, ast.Call) and getattr(call.func.value.func, "id", "") == "super"):
            first = call.args[0] if call.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                return first.value
            assert inherited is not None, f"{node.name} passes a reason to Denial that is not a literal"
            return inherited
    return inherited


def _functions(trees: dict[str, ast.Module]) -> dict[str, ast.FunctionDef]:
    """Module-level functions by name, methods as ``Class.method``."""
    found: dict[str, ast.FunctionDef] = {}
    for tree in trees.values():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                found[node.name] = node
            elif isinstance(node, ast.ClassDef):
                found.update({f"{node.name}.{f.name}": f for f in node.body if isinstance(f, ast.FunctionDef)})
    return found


def _returned_literals(function: ast.FunctionDef) -> list[str]:
    return [r.value.value for r in ast.walk(function) if isinstance(r, ast.Return)
            and isinstance(r.value, ast.Constant) and isinstance(r.value.value, str)]


def raised(trees: dict[str, ast.Module], indirect: dict[str, tuple[str, ...]]) -> tuple[list[Raised], list[str]]:
    """Every (reason, class) the code raises, and the calls whose reason could not be read."""
    classes = denial_classes(trees)
    functions = _functions(trees)
    found: list[Raised] = []
    unread: list[str] = []
    for path, tree in trees.items():
        aliases = {a.asname: a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   for a in node.names if a.asname and a.name in classes}
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            name = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
            name = aliases.get(name, name)
            if name not in classes:
                continue
            where = f"{path}:{call.lineno}"
            fixed = classes[name]
            if fixed is not None:
                found.append(Raised(fixed, name, where))
                continue
            reason = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "reason"), None)
            if isinstance(reason, ast.Constant) and isinstance(reason.value, str):
                found.append(Raised(reason.value, name, where))
            elif reason is not None and ast.unparse(reason) in indirect:
                for source in indirect[ast.unparse(reason)]:
                    assert source in functions, f"{where}: INDIRECT names {source}, which is not defined"
                    literals = _returned_literals(functions[source])
                    assert literals, f"{where}: {source} returns no literal reason"
                    found += [Raised(literal, name, where) for literal in literals]
            else:
                unread.append(f"{where}: {name}({ast.unparse(reason) if reason is not None else ''})")
    return found, unread


@functools.cache
def _package() -> dict[str, ast.Module]:
    return _trees()


@functools.cache
def _class_of(name: str) -> type[errors.Denial]:
    path, _ = _classes(_package())[name]
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    cls: type[errors.Denial] = getattr(module, name)
    return cls


@pytest.fixture(scope="module")
def in_code() -> list[Raised]:
    found, unread = raised(_package(), INDIRECT)
    assert not unread, f"reasons that are neither a literal nor in INDIRECT: {unread}"
    return found


def test_a_reason_reaches_a_denial_only_as_a_literal_or_from_a_known_function() -> None:
    _, unread = raised(_package(), INDIRECT)
    assert not unread, f"pass the reason as a literal, or add its source functions to INDIRECT: {unread}"


def test_every_reason_the_code_raises_is_in_the_registry(in_code: list[Raised]) -> None:
    unlisted = sorted({f"{r.reason} ({r.where})" for r in in_code if r.reason not in REASONS})
    assert not unlisted, f"add these to SITUATIONS in sidecar/core/reasons.py: {unlisted}"


def test_every_reason_is_raised_with_the_class_the_registry_gives_it(in_code: list[Raised]) -> None:
    for r in (r for r in in_code if r.reason in REASONS):  # the others fail the test above
        listed = REASONS[r.reason].denial
        cls = _class_of(r.denial)
        assert issubclass(cls, listed), f"{r.where}: {r.reason} is raised as {r.denial}, listed as {listed.__name__}"
        assert (cls.status, cls.error) == (listed.status, listed.error), r.where


def test_every_reason_in_the_registry_is_raised_somewhere(in_code: list[Raised]) -> None:
    never = sorted(set(REASONS) - {r.reason for r in in_code})
    assert not never, f"listed in sidecar/core/reasons.py but raised nowhere: {never}"


def test_the_scan_reads_literal_fixed_inherited_and_indirect_reasons(tmp_path: Path) -> None:
    package = tmp_path / "sidecar"
    package.mkdir()
    (package / "sample.py").write_text(
        "class Denial(Exception):\n    pass\n"
        "class Taking(Denial):\n    pass\n"
        "class Fixed(Denial):\n    def __init__(self):\n        super().__init__('fixed_reason')\n"
        "class Inheriting(Fixed):\n    def __init__(self, kind):\n        super().__init__(kind)\n"
        "from elsewhere import Fixed as Renamed\n"
        "def source(x):\n    if x:\n        return 'from_source'\n    return None\n"
        "def stages(problem, other):\n"
        "    raise Taking('literal_reason', 'detail')\n"
        "    Fixed()\n"
        "    errors.Inheriting(1)\n"
        "    Taking(problem)\n"
        "    Taking(reason='keyword_reason')\n"
        "    Renamed()\n"
        "    Taking(other)\n"
    )
    found, unread = raised(_trees(package), {"problem": ("source",)})
    assert [(r.reason, r.denial) for r in found] == [
        ("literal_reason", "Taking"), ("fixed_reason", "Fixed"), ("fixed_reason", "Inheriting"),
        ("from_source", "Taking"), ("keyword_reason", "Taking"), ("fixed_reason", "Fixed")]
    assert unread == ["sidecar/sample.py:23: Taking(other)"]


def test_the_readme_answer_table_is_the_one_generated_from_the_registry() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count(TABLE_BEGIN) == 1 and text.count(TABLE_END) == 1
    section = text.split("\n## How it answers\n", 1)[1].split("\n## ", 1)[0]
    assert TABLE_BEGIN in section, "the answer table belongs under 'How it answers'"
    assert text.partition(TABLE_BEGIN)[2].partition(TABLE_END)[0] == "\n" + answer_table(), REGENERATE


def test_the_answer_reference_is_the_one_generated_from_the_registry() -> None:
    text = ANSWERS.read_text(encoding="utf-8")
    assert text.partition(REFERENCE_BEGIN)[2].partition(REFERENCE_END)[0] == "\n" + reference_table(), REGENERATE


def _denial(name: str) -> errors.Denial:
    """A denial of this reason, made as the code makes it."""
    fixed: dict[str, errors.Denial] = {
        "rate_limited": errors.RateLimited(), "dpop_replay_full": errors.ReplayStoreFull(),
        "internal_error": errors.InternalError(), "idp_unavailable": errors.IdpUnavailable("timeout"),
    }
    denial = fixed.get(name) or REASONS[name].denial(name)
    assert denial.reason == name and type(denial) is REASONS[name].denial
    return denial


def _row_of(name: str) -> list[str]:
    """The README row naming this reason, as its cells; exactly one."""
    rows = README.read_text(encoding="utf-8").partition(TABLE_BEGIN)[2].partition(TABLE_END)[0].splitlines()
    (row,) = [r for r in rows[4:] if f"`{name}`" in r.rsplit(" | ", 1)[-1]]
    return row.strip("| ").split(" | ")


def test_every_reason_is_in_one_readme_row_with_the_status_and_error_a_client_receives() -> None:
    for name in REASONS:
        _, status, challenge, _ = _row_of(name)
        rendered = render_denial(_denial(name), "api")
        assert status.split(" ", 1)[0] == str(rendered.status), name
        error = re.search(r'error="([^"]+)"', rendered.headers.get("WWW-Authenticate", ""))
        assert (error is None) == (not challenge.startswith("`")), name
        assert error is None or challenge.startswith(f"`{error.group(1)}`"), name
    assert _row_of("path_invalid")[1:3] == ["400 (`server.invalid_request_status`)", "`invalid_request`"]
    assert _row_of("dpop_scheme_required")[1:3] == ["401", "`invalid_token`"]


def test_the_answer_follows_the_rendering_of_a_denial() -> None:
    assert answer(REASONS["path_invalid"]).status == "400 (`server.invalid_request_status`)"
    assert answer(REASONS["cert_invalid"]).status == "401"
    assert answer(REASONS["dpop_replayed"], "DPoP").challenge == "`invalid_dpop_proof` in the `DPoP` challenge"
    assert answer(REASONS["dpop_scheme_required"]).challenge == "`invalid_token`"
    assert answer(REASONS["token_missing"]).challenge == "none (realm only)"
    idp = answer(REASONS["idp_unavailable"])
    assert (idp.status, idp.challenge) == ("503 + `Retry-After`", "no header")
    assert idp.body_error == "temporarily_unavailable"


def test_regenerating_rewrites_only_what_lies_between_the_markers() -> None:
    text = f"# Title\n{TABLE_BEGIN}\n| stale |\n{TABLE_END}\nafter\n"
    assert regenerate(text) == f"# Title\n{TABLE_BEGIN}\n{answer_table()}{TABLE_END}\nafter\n"
    with pytest.raises(ValueError, match="markers"):
        regenerate("# no table here\n")


_TREE_LINE = re.compile(r"^\s*[├└]── (\w+)\s+(\d{3})(?: (\w+))?", re.M)


def test_the_class_tree_in_the_errors_docstring_gives_each_class_its_status_and_error() -> None:
    lines = _TREE_LINE.findall(errors.__doc__ or "")
    assert len(lines) >= 10
    for name, status, error in lines:
        cls = getattr(errors, name)
        assert (cls.status, cls.error) == (int(status), error or None), name


_CODE = re.compile(r"`((?:dpop|jwt|cert)_[a-z_]+)`")


def test_every_dpop_jwt_and_cert_reason_the_docs_name_exists() -> None:
    """A reason renamed in the code must not live on in a document."""
    not_reasons = {k.name for k in KEYS} | {str(c) for k in KEYS for c in (k.spec.choices or ())}
    for document in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        named = set(_CODE.findall(document.read_text(encoding="utf-8"))) - not_reasons
        assert named <= set(REASONS), f"{document.name} names reasons that do not exist: {sorted(named - set(REASONS))}"
