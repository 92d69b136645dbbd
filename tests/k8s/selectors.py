"""Kubernetes label and field selectors, parsed from their query-string form."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_EXISTS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s*$")
_EQUALITY = re.compile(r"^\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)\s*$")
_SET = re.compile(r"^\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s+(in|notin)\s*\(([^)]*)\)\s*$")


class SelectorError(ValueError):
    """A selector string that the API server would reject with 400 BadRequest."""


Matcher = Callable[[Mapping[str, Any]], bool]


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are not inside ``(...)`` of set-based requirements."""
    terms: list[str] = []
    depth, start = 0, 0
    for pos, char in enumerate(selector):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            terms.append(selector[start:pos])
            start = pos + 1
    terms.append(selector[start:])
    return [term for term in terms if term.strip()]


def parse_label_selector(selector: str | None) -> Matcher:
    """A predicate over a labels dict: ``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``."""
    requirements: list[Matcher] = []
    for term in _split_terms(selector or ""):
        if match := _SET.match(term):
            key, op, raw_values = match.groups()
            values = frozenset(value.strip() for value in raw_values.split(",") if value.strip())
            if op == "in":
                requirements.append(lambda labels, k=key, vs=values: k in labels and labels[k] in vs)
            else:
                requirements.append(lambda labels, k=key, vs=values: k not in labels or labels[k] not in vs)
        elif match := _EQUALITY.match(term):
            key, op, value = match.groups()
            if op == "!=":
                requirements.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                requirements.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif match := _EXISTS.match(term):
            negated, key = match.groups()
            if negated:
                requirements.append(lambda labels, k=key: k not in labels)
            else:
                requirements.append(lambda labels, k=key: k in labels)
        else:
            raise SelectorError(f"unable to parse requirement {term.strip()!r} in labelSelector {selector!r}")
    return lambda labels: all(requirement(labels) for requirement in requirements)


def _field_value(obj: Mapping[str, Any], path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        return "true" if value else "false"
    return None if value is None else str(value)


def parse_field_selector(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over a whole object: ``path=value``, ``path==value``, ``path!=value`` (AND-ed).

    Any dotted path works (``metadata.name``, ``status.phase``, ``spec.nodeName``): a superset of what a
    real API server allows per resource, so a selector that works here may still be refused there.
    """
    requirements: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in _split_terms(selector or ""):
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if match is None:
            raise SelectorError(f"invalid selector term {term.strip()!r} in fieldSelector {selector!r}")
        path, op, value = match.groups()
        if op == "!=":
            requirements.append(lambda obj, p=path, v=value: _field_value(obj, p) != v)
        else:
            requirements.append(lambda obj, p=path, v=value: (_field_value(obj, p) or "") == v)
    return lambda obj: all(requirement(obj) for requirement in requirements)
