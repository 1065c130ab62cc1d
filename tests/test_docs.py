"""The README stays short, starts with the two commands, and every path the docs name exists.

Checked in README.md and docs/*.md: relative markdown links (to an existing file, no anchor:
headings move and an anchor breaks silently), repository paths written in code (inline or
fenced: ``sidecar/core/decision.py``, ``deploy/nginx/``, globs included), and documents cited
by file name, which must be in the repository. In every tracked file: no document cited that is
not in the repository, and no relative path that climbs out of it. docs/layout.md names every
module of the package once.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_BYTES = 12 * 1024

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_REPO_PATH = re.compile(r"(?<![\w./-])(?:sidecar|deploy|tests|bench|docs|fuzz)/[\w./*-]*")
_CITED_DOC = re.compile(r"(?<![\w/.-])[\w-]+\.md\b")
_ISSUE = re.compile(r"\bissues? #?\d+", re.I)


def _documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _code(text: str) -> list[str]:
    """The contents of fenced blocks and inline code spans (inline spans outside fences only)."""
    fences = [m.group(0) for m in _FENCE.finditer(text)]
    prose = _FENCE.sub("", text)
    return fences + _INLINE_CODE.findall(prose)


def _links(text: str) -> list[str]:
    prose = _FENCE.sub("", text)
    prose = _INLINE_CODE.sub("", prose)
    return _LINK.findall(prose) + _REFERENCE.findall(prose)


def _exists(pattern: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return any(ROOT.glob(pattern))
    return (ROOT / pattern).exists()


def test_readme_is_at_most_12_kib() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail to docs/"


def test_the_two_commands_come_before_the_first_section() -> None:
    text = README.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# "), "README.md starts with its title"
    intro = text.split("\n## ", 1)[0]
    for command in ("./run.sh", "./test.sh"):
        assert re.search(rf"^{re.escape(command)}\b", intro, re.M), f"{command} is not at the top of README.md"


def test_the_configuration_table_region_is_marked_once_under_configuration() -> None:
    """The key table is generated into this region: one pair of markers, inside the section."""
    text = README.read_text()
    begin, end = "<!-- config-table:begin -->", "<!-- config-table:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    assert begin in section and end in section and section.index(begin) < section.index(end)
    region = section.split(begin, 1)[1].split(end, 1)[0]
    assert region.strip().startswith("| section | keys |")


@pytest.mark.parametrize("document", _documents(), ids=_id)
def test_relative_links_point_to_existing_files(document: Path) -> None:
    broken = []
    for target in _links(document.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
            continue
        if "#" in target:
            broken.append(f"{target} (anchor)")
            continue
        resolved = (document.parent / target).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    assert not broken, f"{_id(document)}: {broken}"


@pytest.mark.parametrize("document", _documents(), ids=_id)
def test_repository_paths_in_code_exist(document: Path) -> None:
    missing = []
    for code in _code(document.read_text()):
        for path in _REPO_PATH.findall(code):
            path = path.rstrip(".")
            if not _exists(path):
                missing.append(path)
    assert not missing, f"{_id(document)} names paths that are not in the repository: {missing}"


@pytest.mark.parametrize("document", _documents(), ids=_id)
def test_no_citation_of_documents_outside_the_repository(document: Path) -> None:
    text = document.read_text()
    cited = {name for name in _CITED_DOC.findall(text)}
    outside = sorted(n for n in cited if not (ROOT / n).exists() and not (ROOT / "docs" / n).exists())
    assert not outside, f"{_id(document)} cites documents that are not in the repository: {outside}"
    assert not _ISSUE.findall(text), f"{_id(document)} cites the issue tracker: {_ISSUE.findall(text)}"


# Built at run time: this file must not cite a document that is not in the repository either.
_OUTSIDE, _MISSING = "OUTSIDE" + ".md", "docs/missing" + ".md"


def test_the_checks_catch_what_they_claim_to() -> None:
    """The extractors see a broken link, an anchor, a moved path and an outside document."""
    sample = (
        f"See [the design]({_OUTSIDE}), [perf](#performance) and `sidecar/decision.py`.\n"
        "```sh\nSIDECAR_CONFIG=deploy/nginx/sidecar.toml ./run.sh  # /etc/sidecar/tls/ is not ours\n```\n"
        f"[ref]: {_MISSING}\n"
    )
    assert _links(sample) == [_OUTSIDE, "#performance", _MISSING]
    paths = [p for code in _code(sample) for p in _REPO_PATH.findall(code)]
    assert sorted(paths) == ["deploy/nginx/sidecar.toml", "sidecar/decision.py"]
    assert not _exists("sidecar/decision.py") and _exists("deploy/nginx/sidecar.toml")
    assert _exists("deploy/nginx/snippets/*.conf")
    assert _CITED_DOC.findall(sample) == [_OUTSIDE]
    assert _ISSUE.findall("the figures of issue 6") == ["issue 6"]


LAYOUT = ROOT / "docs" / "layout.md"
_MODULE = re.compile(r"(?<![\w/.-])sidecar/[\w/]+\.py\b")


def _modules() -> set[str]:
    """Every module of the package: each .py file, and an ``__init__.py`` only when it defines
    something (the others hold a docstring, imports and ``__all__``: their package is the folder)."""
    found = set()
    for path in (ROOT / "sidecar").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if path.name != "__init__.py" or any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                                             for n in tree.body):
            found.add(str(path.relative_to(ROOT)))
    return found


def test_the_layout_names_every_module_exactly_once_and_no_module_that_is_not_there() -> None:
    named = Counter(_MODULE.findall(LAYOUT.read_text(encoding="utf-8")))
    modules = _modules()
    assert not sorted(modules - set(named)), f"docs/layout.md does not name: {sorted(modules - set(named))}"
    assert not sorted(set(named) - modules), f"docs/layout.md names what is not there: {sorted(set(named) - modules)}"
    twice = sorted(m for m, count in named.items() if count > 1)
    assert not twice, f"docs/layout.md names these more than once (one row each): {twice}"


def test_the_layout_has_a_section_for_every_package() -> None:
    text = LAYOUT.read_text(encoding="utf-8")
    packages = sorted(str(p.parent.relative_to(ROOT)) + "/" for p in (ROOT / "sidecar").glob("*/__init__.py"))
    missing = [p for p in packages if f"\n## `{p}`" not in text]
    assert not missing, f"docs/layout.md has no section for: {missing}"


_ANY_DOC = re.compile(r"(?<![\w./:-])(?:\.\.?/)*(?:[\w-]+/)*[\w-]+\.md\b")
_CLIMB = re.compile(r"(?<![\w/.%-])(?:\.\./)+[\w/.-]*")


def _tracked() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def outside_citations(path: Path, text: str) -> list[str]:
    """Documents ``text`` cites that are not in the repository (found from the root, docs/ or the
    file's folder), and relative paths that climb to what is not in it."""
    found = []
    for name in _ANY_DOC.findall(text):
        places = [(base / name).resolve() for base in (ROOT, ROOT / "docs", path.parent)]
        if not any(p.is_relative_to(ROOT) and p.exists() for p in places):
            found.append(name)
    for up in (m.rstrip(".") for m in _CLIMB.findall(text)):
        place = (path.parent / up).resolve()
        if not (place.is_relative_to(ROOT) and place.exists()):
            found.append(up)
    return found


def test_no_tracked_file_cites_a_file_outside_the_repository() -> None:
    """Design notes that live beside the repository are not the project's: state the fact, or cite
    the RFC or the project's own document."""
    cited = {}
    for path in _tracked():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary
            continue
        if found := outside_citations(path, text):
            cited[str(path.relative_to(ROOT))] = found
    assert not cited, f"files cite what is not in the repository: {cited}"


def test_the_outside_citation_check_sees_outside_documents_and_paths() -> None:
    docs = ROOT / "docs" / "layout.md"
    sample = (f"as {_OUTSIDE} says; see ../{'shared'}/notes.txt, [readme](../README.md), routes.md, "
              "a path /public/../admin, https://example.com/a/" + _OUTSIDE)
    assert outside_citations(docs, sample) == [_OUTSIDE, f"../{'shared'}/notes.txt"]
    climb = "../" + "elsewhere"
    assert outside_citations(ROOT / "README.md", f"docs/routes.md and {climb}") == [climb]
