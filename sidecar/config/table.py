"""The configuration tables, generated from the declarations.

The README's short table (the keys by section: ``config-table`` markers), and in
docs/configuration.md every section (``config-sections``) and the full reference (type with its
range, default, environment variable, meaning: ``config-reference``); the keys of a ``[[routes]]``
rule in docs/routes.md (``routes-reference``). ``python -m sidecar.config.table`` prints the full table;
``python -m sidecar.config.table FILE...`` rewrites every marked region of those files in place;
docs/operations.md lists the keys only a restart changes (``restart-keys``).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Mapping, Sequence
from typing import Any, get_args, get_origin

from sidecar.config.sections import KEYS, ROUTE_KEYS, SECTIONS, Config, Key
from sidecar.support import markers

BEGIN = "<!-- config-table:begin -->"
END = "<!-- config-table:end -->"
REFERENCE_BEGIN = "<!-- config-reference:begin -->"
REFERENCE_END = "<!-- config-reference:end -->"
ROUTES_BEGIN = "<!-- routes-reference:begin -->"
ROUTES_END = "<!-- routes-reference:end -->"
SECTIONS_BEGIN = "<!-- config-sections:begin -->"
SECTIONS_END = "<!-- config-sections:end -->"
RESTART_BEGIN = "<!-- restart-keys:begin -->"
RESTART_END = "<!-- restart-keys:end -->"


def short_table() -> str:
    """The README's table: every declared key, by section (types, defaults and meanings are in the
    reference table, which a README of a fixed size cannot hold); keys declared ``readme=False`` only
    in the reference."""
    rows = ["| section | keys |", "|---|---|"]
    sections: dict[str, list[str]] = {}
    for k in (k for k in KEYS if k.spec.readme):
        sections.setdefault(k.section, []).append(f"`{k.name}`")
    rows += [f"| `[{section}]` | {', '.join(names)} |" for section, names in sections.items()]
    return "\n".join(rows) + "\n"


def sections_table() -> str:
    """docs/configuration.md: every section a file may hold, one per field of :class:`Config` (a
    section, ``[name.NAME]`` tables, a ``[[name]]`` array), with the docstring of its dataclass or
    the ``doc`` of its field. ValueError when one has neither: a new section is never left out."""
    rows = ["| section | what it holds |", "|---|---|"]
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            heading, doc = f"[{f.name}]", SECTIONS[f.name].__doc__ or ""
            if doc.startswith(f"{SECTIONS[f.name].__name__}("):  # the docstring dataclass writes itself
                doc = ""
        elif get_origin(hints[f.name]) is tuple:
            heading, doc = f"[[{f.name}]]", f.metadata.get("doc", "")
        elif get_origin(hints[f.name]) is Mapping:
            heading, doc = f"[{f.name}.NAME]", f.metadata.get("doc", "")
        else:
            raise ValueError(f"Config.{f.name} is neither a section, a table of tables nor an array of tables")
        if not doc:
            raise ValueError(f"the section {heading} has no doc: a docstring, or metadata={{'doc': ...}}")
        rows.append(f"| `{heading}` | {' '.join(doc.split())} |")
    return "\n".join(rows) + "\n"


def markdown_table() -> str:
    """One row per declared key: key, type, default, environment variable, doc."""
    return _reference(KEYS, env=True)


def restart_keys() -> str:
    """docs/operations.md: the keys only a restart changes (a reload that changes one is refused)."""
    return ", ".join(f"`{k.dotted}`" for k in KEYS if k.spec.restart) + "\n"


def routes_table() -> str:
    """The keys of one ``[[routes]]`` rule (docs/routes.md): no environment variables."""
    return _reference(ROUTE_KEYS, env=False)


def _reference(keys: Sequence[Key], *, env: bool) -> str:
    rows = (["| key | type | default | environment variable | meaning |", "|---|---|---|---|---|"] if env
            else ["| key | type | default | meaning |", "|---|---|---|---|"])
    for k in keys:
        doc = k.spec.doc.replace("|", "\\|") + ("; **restart**" if k.spec.restart else "")
        name = f"`{k.dotted}`" if env else f"`{k.name}`"
        variable = f" `{k.env}` |" if env else ""
        rows.append(f"| {name} | {type_text(k)} | {default_text(k.default)} |{variable} {doc} |")
    return "\n".join(rows) + "\n"


def type_text(k: Key) -> str:
    """The accepted values in words: the type, its choices or its declared range and unit."""
    spec = k.spec
    if spec.choices is not None:
        return ", ".join(f"`{c}`" for c in spec.choices)
    tp = k.type
    optional = get_origin(tp) is not None and type(None) in get_args(tp)
    if optional:
        tp = next(a for a in get_args(tp) if a is not type(None))
    if spec.kind:
        return spec.kind
    words = _TYPE_WORDS.get(tp) or _TYPE_WORDS[get_origin(tp)]
    if spec.min_length:
        words += f", ≥ {spec.min_length} characters"
    if spec.range_text():
        words += f" {spec.range_text().replace('>=', '≥').replace('<=', '≤')}"
    if spec.unit:
        words += f", {spec.unit}"
    return words


def default_text(value: Any) -> str:
    """The default as an operator would write it in the environment; empty when unset."""
    if value is None or value in ("", (), {}):
        return ""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`"
    return f"`{value}`"


_TYPE_WORDS: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    tuple: "list of strings",
    Mapping: "map of strings",
}


def replace_between_markers(text: str, table: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with the lines between the markers (the README's short table by default) replaced by ``table``."""
    return markers.replace_between_markers(text, table, begin, end)


REGIONS: tuple[markers.Region, ...] = (
    (BEGIN, END, short_table), (REFERENCE_BEGIN, REFERENCE_END, markdown_table),
    (ROUTES_BEGIN, ROUTES_END, routes_table), (SECTIONS_BEGIN, SECTIONS_END, sections_table),
    (RESTART_BEGIN, RESTART_END, restart_keys))


def regenerate(text: str) -> str:
    """Every marked region of ``text`` filled with its table; ValueError when there is none."""
    return markers.fill(text, REGIONS)


def main(argv: Sequence[str]) -> int:
    return markers.rewrite(argv, REGIONS, markdown_table)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
