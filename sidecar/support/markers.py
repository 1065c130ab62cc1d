"""Generated regions of a document: each lies between a begin and an end marker (HTML comments) and
is rewritten whole from the code that declares it, so a doc cannot drift from the code without a
test noticing. config/table.py (the configuration reference) and fronts/answers.py (the answers
per denial reason) each name their regions; this module rewrites them, in place or to stdout."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Region = tuple[str, str, Callable[[], str]]  # begin marker, end marker, what lies between


def replace_between_markers(text: str, table: str, begin: str, end: str) -> str:
    """``text`` with the lines between the markers replaced by ``table``."""
    head, found_begin, rest = text.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not found_begin or not found_end:
        raise ValueError(f"the markers {begin} and {end} are missing")
    return f"{head}{begin}\n{table}{end}{tail}"


def fill(text: str, regions: Sequence[Region]) -> str:
    """Every region of ``regions`` that ``text`` marks, filled; ValueError when it marks none."""
    present = [(b, e, make) for b, e, make in regions if b in text]
    if not present:
        raise ValueError(f"the markers {regions[0][0]} and {regions[0][1]} (or another region's) are missing")
    for begin, end, make in present:
        text = replace_between_markers(text, make(), begin, end)
    return text


def rewrite(argv: Sequence[str], regions: Sequence[Region], whole: Callable[[], str]) -> int:
    """The command line: fill the regions of each file named in ``argv``; none: print ``whole()``."""
    if not argv:
        sys.stdout.write(whole())
        return 0
    for name in argv:
        path = Path(name)
        path.write_text(fill(path.read_text(encoding="utf-8"), regions), encoding="utf-8")
    return 0
