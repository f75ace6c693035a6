"""The ``filter`` parameter of list methods, as GCE accepts it (a useful subset).

Supported::

    name = "x"          exact match (= / !=), quotes optional
    name eq x           RE2-style regular expression matching the whole value (eq / ne)
    labels.env = "prod" dotted paths into the resource (labels.KEY, status, zone, ...)
    labels.env:*        ":" means "has"; with * it tests presence, otherwise equality
    (a) (b)             AND-ed parenthesised terms; also "a AND b", "(a) AND (b)"

Anything else (OR, NOT, nested parentheses...) answers 400 invalid with the
reason, never a silently wrong list.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from haplane.emulator.errors import invalid

_TERM = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(!=|=|:|\beq\b|\bne\b)\s*(.*?)\s*$")


def _value(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if not text:
        raise invalid("Invalid list filter expression: missing value")
    return text


def _lookup(resource: dict, path: str):
    value = resource
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _split_terms(expr: str) -> list[str]:
    expr = expr.strip()
    if not expr:
        return []
    if re.search(r"\bOR\b|\bNOT\b|(^|\s)-\w", expr):
        raise invalid(f"Invalid list filter expression {expr!r}: OR/NOT are not supported by the emulator")
    if expr.startswith("("):
        terms, rest = [], expr
        while rest:
            m = re.match(r"^\(([^()]*)\)\s*(?:AND\s+)?", rest)
            if not m:
                raise invalid(f"Invalid list filter expression {expr!r}")
            terms.append(m.group(1))
            rest = rest[m.end() :].strip()
        return terms
    if "(" in expr or ")" in expr:
        raise invalid(f"Invalid list filter expression {expr!r}")
    return [t for t in re.split(r"\s+AND\s+", expr)]


def compile_filter(expr: str | None) -> Callable[[dict], bool]:
    """A predicate over served resource dicts; raises ApiError(400) when ``expr`` can't be parsed."""
    tests: list[Callable[[dict], bool]] = []
    for term in _split_terms(expr or ""):
        m = _TERM.match(term)
        if not m:
            raise invalid(f"Invalid list filter expression: {term!r}")
        field, op, raw = m.group(1), m.group(2), _value(m.group(3))
        tests.append(_term(field, op, raw))
    return lambda resource: all(t(resource) for t in tests)


def _term(field: str, op: str, raw: str) -> Callable[[dict], bool]:
    if op in ("eq", "ne"):
        try:
            pattern = re.compile(raw)
        except re.error as exc:
            raise invalid(f"Invalid regular expression {raw!r} in list filter: {exc}") from None

        def regex(resource: dict) -> bool:
            value = _lookup(resource, field)
            hit = value is not None and pattern.fullmatch(_text(value)) is not None
            return hit if op == "eq" else not hit

        return regex
    if op == ":" and raw == "*":
        return lambda resource: _lookup(resource, field) is not None

    def exact(resource: dict) -> bool:
        value = _lookup(resource, field)
        hit = value is not None and _text(value) == raw
        return not hit if op == "!=" else hit

    return exact
