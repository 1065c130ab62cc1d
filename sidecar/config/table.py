"""The README's configuration table, generated from the declarations.

``python -m sidecar.config.table`` prints it; ``python -m sidecar.config.table README.md``
rewrites the lines between the ``config-table`` markers of that file in place.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

from sidecar.config.sections import KEYS, Key

BEGIN = "<!-- config-table:begin -->"
END = "<!-- config-table:end -->"


def markdown_table() -> str:
    """One row per declared key: key, type, default, environment variable, doc."""
    rows = ["| key | type | default | environment variable | meaning |", "|---|---|---|---|---|"]
    for k in KEYS:
        doc = k.spec.doc.replace("|", "\\|")
        rows.append(f"| `{k.dotted}` | {type_text(k)} | {default_text(k.default)} | `{k.env}` | {doc} |")
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


def replace_between_markers(text: str, table: str) -> str:
    """``text`` with the lines between the markers replaced by ``table``."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the markers {BEGIN} and {END} are missing")
    return f"{head}{BEGIN}\n{table}{END}{tail}"


def main(argv: Sequence[str]) -> int:
    if not argv:
        sys.stdout.write(markdown_table())
        return 0
    path = Path(argv[0])
    path.write_text(replace_between_markers(path.read_text(encoding="utf-8"), markdown_table()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
