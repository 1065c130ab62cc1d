"""What every front answers for each denial reason: the README's answer table and the reference in
docs/answers.md, generated from the registry of reasons (sidecar/core/reasons.py) and the one
rendering of a denial (:func:`sidecar.fronts.render.render_denial`), so status and challenge are
what a client receives. ``python -m sidecar.fronts.answers README.md docs/answers.md`` rewrites both;
tests/unit/test_reasons.py fails when either is stale.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from sidecar.config import ResponseConfig
from sidecar.core.errors import Denial
from sidecar.core.reasons import SITUATIONS, Reason, Scheme
from sidecar.fronts.render import render_denial
from sidecar.support import markers

TABLE_BEGIN = "<!-- answer-table:begin -->"
TABLE_END = "<!-- answer-table:end -->"
REFERENCE_BEGIN = "<!-- answer-reference:begin -->"
REFERENCE_END = "<!-- answer-reference:end -->"
_SCHEME = re.compile(r'(?:^|, )(Bearer|DPoP) realm=')
_ERROR = re.compile(r'(?:^|, )error="([^"]+)"')


@dataclass(frozen=True, slots=True)
class Answer:
    """What a client receives for a reason, as :func:`render_denial` renders it."""

    status: str  # "401", "400 (`server.invalid_request_status`)", "503 + `Retry-After`"
    challenge: str  # the WWW-Authenticate error and the scheme that carries it, or that there is none
    body_error: str


def answer(reason: Reason, scheme: Scheme = "Bearer") -> Answer:
    denial = reason.denial.__new__(reason.denial)
    Denial.__init__(denial, reason.name)  # the class's attributes, whatever its own constructor takes
    realm, dpop = ResponseConfig().realm, scheme == "DPoP"
    rendered = render_denial(denial, realm, proof_algs="ES256" if dpop else None, dpop_scheme=dpop)
    status = str(rendered.status)
    if render_denial(denial, realm, 401 if rendered.status == 400 else 400).status != rendered.status:
        status += " (`server.invalid_request_status`)"
    if "Retry-After" in rendered.headers:
        status += " + `Retry-After`"
    return Answer(status, _challenge_error(rendered.headers.get("WWW-Authenticate")),
                  json.loads(rendered.body)["error"])


def _challenge_error(header: str | None) -> str:
    """The ``error`` of a ``WWW-Authenticate`` value, naming its scheme when that is not Bearer."""
    if header is None:
        return "no header"
    found = _ERROR.search(header)
    if found is None:
        return "none (realm only)"
    scheme = [m.group(1) for m in _SCHEME.finditer(header) if m.start() < found.start()][-1]
    return f"`{found.group(1)}`" + ("" if scheme == "Bearer" else f" in the `{scheme}` challenge")


def answer_table() -> str:
    """The README's table: one row per situation, every reason in it."""
    rows = ["| situation | status | `WWW-Authenticate` error | reasons |", "|---|---|---|---|",
            "| valid, bound to the presented certificate, policy met | 200 + `x-credential-*` | | |"]
    for situation in SITUATIONS:
        shown = answer(situation.reasons[0], situation.scheme)
        names = ", ".join(f"`{r.name}`" for r in situation.reasons)
        rows.append(f"| {situation.text} | {shown.status} | {shown.challenge} | {names} |")
    return "\n".join(rows) + "\n"


def reference_table() -> str:
    """docs/answers.md: one row per reason, with its meaning and the body's ``error``."""
    rows = ["| reason | status | `WWW-Authenticate` error | body `error` | meaning |", "|---|---|---|---|---|"]
    for situation in SITUATIONS:
        for reason in situation.reasons:
            shown = answer(reason, situation.scheme)
            meaning = reason.meaning.replace("|", "\\|")
            rows.append(f"| `{reason.name}` | {shown.status} | {shown.challenge} | `{shown.body_error}` | {meaning} |")
    return "\n".join(rows) + "\n"


REGIONS: tuple[markers.Region, ...] = ((TABLE_BEGIN, TABLE_END, answer_table),
                                       (REFERENCE_BEGIN, REFERENCE_END, reference_table))


def regenerate(text: str) -> str:
    """Every answer region of ``text`` filled (the README's table, docs/answers.md's reference);
    ValueError when there is none."""
    return markers.fill(text, REGIONS)


def main(argv: Sequence[str]) -> int:
    return markers.rewrite(argv, REGIONS, reference_table)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
