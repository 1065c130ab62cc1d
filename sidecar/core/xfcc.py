"""Envoy's ``x-forwarded-client-cert`` header (XFCC).

Elements are separated by ``,`` (one per proxy hop), pairs inside an element by ``;``, each pair
is ``Key=Value`` with a case-insensitive key; a value holding ``,`` ``;`` or ``=`` is
double-quoted with ``\\"`` escapes. The **last** element was added by the nearest proxy; the
earlier ones came from further away and are not trusted by themselves.
"""

from __future__ import annotations


class XfccError(ValueError):
    """The header does not follow the XFCC grammar."""


# Keys naming the certificate: one of each per element, or the element is refused (a second
# one could only come from bytes written into the element, e.g. by a client before an append).
SINGLE_KEYS = frozenset({"cert", "chain", "hash"})


def last_element(header: str) -> dict[str, str]:
    """The pairs of the last element, keys lower-cased; other repeated keys (URI, DNS: one per SAN)
    keep the first value."""
    elements = _split(header, ",")
    if not elements or not elements[-1].strip():
        raise XfccError("empty XFCC element")
    pairs: dict[str, str] = {}
    for pair in _split(elements[-1], ";"):
        key, sep, value = pair.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise XfccError("XFCC pair without key=value")
        if key in SINGLE_KEYS and key in pairs:
            raise XfccError(f"XFCC element with two {key} keys")
        pairs.setdefault(key, _unquote(value.strip()))
    return pairs


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes, honouring backslash escapes."""
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:index])
            start = index + 1
    if quoted:
        raise XfccError("unterminated quoted XFCC value")
    parts.append(text[start:])
    return parts


def _unquote(value: str) -> str:
    if value[:1] == '"' and (len(value) < 2 or value[-1] != '"'):
        raise XfccError("XFCC value with text after its closing quote")
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        out: list[str] = []
        chars = iter(value[1:-1])
        for char in chars:
            out.append(next(chars, "") if char == "\\" else char)
        return "".join(out)
    return value
