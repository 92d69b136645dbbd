"""Custom resources the way kube-apiserver serves them from a CustomResourceDefinition.

Used by the emulator (tests/k8s/emulator.py) on every CRD and CR write:

- a CRD is checked with :func:`tests.k8s.crd_rules.validate_crd` (422 when kube-apiserver would reject
  it) and, when accepted, gets ``NamesAccepted``/``Established`` conditions, ``acceptedNames`` and
  ``storedVersions``; a CRD whose names clash with another CRD of its group is NamesAccepted=False and
  not served;
- a CR write goes through fieldValidation (Strict: 400/422, Warn: ``Warning`` headers, Ignore), pruning,
  defaulting and validation (schema + CEL, transition rules on update, ratcheting), and the status
  subresource validates ``.status`` only;
- :func:`table` answers ``Accept: ...;as=Table`` with the printer columns.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from typing import Any

from tests.k8s import schema_validation
from tests.k8s.crd_rules import FieldError, aggregate, validate_crd

Obj = dict[str, Any]


class Rejected(Exception):
    """An API error answered as a Kubernetes ``Status`` (the emulator renders it)."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}


@dataclass(frozen=True)
class ServedVersion:
    """One served version of an established CRD."""

    crd_name: str
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...]
    categories: tuple[str, ...]
    schema: Obj
    status_subresource: bool
    printer_columns: tuple[Obj, ...]


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> Rejected:
    """``errors.NewInvalid``: 422 with one cause per field error."""
    qualified = f"{kind}.{group}" if group else kind
    return Rejected(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: {aggregate(errors)}',
        {
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [{"reason": e.cause_reason, "message": e.body(), "field": e.field} for e in errors],
        },
    )


# ------------------------------------------------------------------------------------------- CRDs


def check_crd(crd: Obj) -> None:
    """Raise the 422 kube-apiserver answers for an invalid CRD."""
    errors = validate_crd(crd)
    if errors:
        name = (crd.get("metadata") or {}).get("name", "")
        raise invalid("CustomResourceDefinition", "apiextensions.k8s.io", name, errors)


def crd_status(crd: Obj, others: list[Obj], now: str) -> Obj:
    """What the naming and establishing controllers write into a CRD's status."""
    spec, names = crd["spec"], crd["spec"]["names"]
    conflict = ""
    for other in others:
        if other["metadata"]["name"] == crd["metadata"]["name"] or other["spec"]["group"] != spec["group"]:
            continue
        theirs = other["spec"]["names"]
        if theirs.get("plural") == names.get("plural"):
            conflict = f'"{names["plural"]}" is already in use'
        elif theirs.get("kind") == names.get("kind"):
            conflict = f'"{names["kind"]}" is already in use'
        elif set(theirs.get("shortNames") or ()) & set(names.get("shortNames") or ()):
            shared = sorted(set(theirs.get("shortNames") or ()) & set(names.get("shortNames") or ()))
            conflict = f'"{shared[0]}" is already in use'
    accepted = {
        "plural": names["plural"],
        "singular": names.get("singular") or names["kind"].lower(),
        "kind": names["kind"],
        "listKind": names.get("listKind") or f"{names['kind']}List",
    }
    for key in ("shortNames", "categories"):
        if names.get(key):
            accepted[key] = list(names[key])
    storage = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
    if conflict:
        conditions = [
            _condition("NamesAccepted", "False", "NameConflict", conflict, now),
            _condition("Established", "False", "NotAccepted", "not all names are accepted", now),
        ]
        return {"conditions": conditions, "acceptedNames": {}, "storedVersions": storage}
    conditions = [
        _condition("NamesAccepted", "True", "NoConflicts", "no conflicts found", now),
        _condition(
            "Established", "True", "InitialNamesAccepted", "the initial names have been accepted", now
        ),
    ]
    return {"conditions": conditions, "acceptedNames": accepted, "storedVersions": storage}


def _condition(ctype: str, status: str, reason: str, message: str, now: str) -> Obj:
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": now}


def is_established(crd: Obj) -> bool:
    return any(
        c.get("type") == "Established" and c.get("status") == "True"
        for c in (crd.get("status") or {}).get("conditions") or []
    )


def served_versions(crd: Obj) -> list[ServedVersion]:
    spec, names = crd["spec"], crd["spec"]["names"]
    out = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        out.append(
            ServedVersion(
                crd_name=crd["metadata"]["name"],
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                singular=names.get("singular") or names["kind"].lower(),
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                schema=(version.get("schema") or {}).get("openAPIV3Schema") or {},
                status_subresource="status" in (version.get("subresources") or {}),
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            )
        )
    return out


# -------------------------------------------------------------------------------------------- CRs


def decode(served: ServedVersion, body: Obj, field_validation: str, *, patch: bool) -> list[str]:
    """Unknown fields of a request body: Strict rejects them, Warn returns the warnings, Ignore nothing."""
    mode = field_validation or "Warn"
    if mode not in ("Strict", "Warn", "Ignore"):
        raise Rejected(
            400,
            "BadRequest",
            f'fieldValidation parameter unsupported: "{mode}"; must be one of Ignore, Warn, Strict',
        )
    unknown = sorted(schema_validation.unknown_fields(body, served.schema))  # sorted, as the server does
    if not unknown or mode == "Ignore":
        return []
    texts = [f'unknown field "{path}"' for path in unknown]
    if mode == "Warn":
        return texts
    if patch:  # the patch handler reports on the patched object, with no kind and no name
        patched = json.dumps(json.dumps(body, separators=(",", ":")))
        detail = f"Invalid value: {patched}: strict decoding error: {', '.join(texts)}"
        raise Rejected(
            422,
            "Invalid",
            f' "" is invalid: patch: {detail}',
            {"causes": [{"reason": "FieldValueInvalid", "message": detail, "field": "patch"}]},
        )
    raise Rejected(
        400,
        "BadRequest",
        f'{served.kind} in version "{served.version}" cannot be handled as a {served.kind}: '
        f"strict decoding error: {', '.join(texts)}",
    )


def prepare(served: ServedVersion, obj: Obj) -> Obj:
    """Prune then default, with the request version's schema."""
    pruned = schema_validation.prune(obj, served.schema, root=True)
    return schema_validation.default(pruned, served.schema)


def validate(served: ServedVersion, obj: Obj, old: Obj | None, *, status_only: bool = False) -> list[str]:
    """Raise 422 for an invalid object; return the ratcheting warnings."""
    errors: list[FieldError] = []
    for key, expected in (("kind", served.kind), ("apiVersion", f"{served.group}/{served.version}")):
        if obj.get(key) != expected:
            errors.append(FieldError("Invalid", key, f"must be {expected}", obj.get(key)))
    if errors:
        raise invalid(served.kind, served.group, obj["metadata"].get("name", ""), errors)
    outcome = schema_validation.validate(obj, old, served.schema, status_only=status_only)
    if outcome.errors:
        raise invalid(served.kind, served.group, obj["metadata"].get("name", ""), outcome.errors)
    return outcome.warnings


# ------------------------------------------------------------------------------------------ Table


def wants_table(accept: str) -> bool:
    return "as=Table" in accept.replace(" ", "")


def _json_path(obj: Any, path: str) -> tuple[bool, Any]:
    current = obj
    for name, key in re.findall(r"\.([A-Za-z0-9_$-]+)|\['([^']*)'\]", path):
        step = name or key
        if not isinstance(current, dict) or step not in current:
            return False, None
        current = current[step]
    return True, current


def human_duration(seconds: float) -> str:
    """``k8s.io/apimachinery/pkg/util/duration.HumanDuration``."""
    seconds = int(seconds)
    if seconds < 0:
        return "<invalid>"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // 24 // 365}y{(hours // 24) % 365}d"


def _age(stamp: Any) -> str | None:
    if not isinstance(stamp, str):
        return None
    try:
        then = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return human_duration((datetime.datetime.now(tz=datetime.UTC) - then).total_seconds())


def _cell(column: Obj, obj: Obj) -> Any:
    found, value = _json_path(obj, column.get("jsonPath", ""))
    if not found:
        return None
    kind = column.get("type")
    if kind == "date":
        return _age(value)
    if kind == "integer":
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if kind == "number":
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    return value if isinstance(value, str) else json.dumps(value)


def table(objects: list[Obj], columns: tuple[Obj, ...], resource_version: str) -> Obj:
    """A ``meta.k8s.io/v1`` Table: Name first, then the printer columns (Name and Age without any)."""
    if not columns:
        columns = ({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},)
    definitions = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name must be unique within a namespace.",
            "priority": 0,
        }
    ]
    for column in columns:
        definitions.append(
            {
                "name": column["name"],
                "type": column["type"],
                "format": column.get("format", ""),
                "description": column.get("description", ""),
                "priority": column.get("priority", 0),
            }
        )
    rows = []
    for obj in objects:
        meta = obj.get("metadata") or {}
        partial_meta = {
            k: meta[k]
            for k in (
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "labels",
                "annotations",
                "generation",
            )
            if k in meta
        }
        rows.append(
            {
                "cells": [meta.get("name"), *(_cell(c, obj) for c in columns)],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": partial_meta,
                },
            }
        )
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }
