"""What kube-apiserver does to a custom resource with its CRD's structural schema, independent of synthrec.

Order on create/update (apiextensions-apiserver ``customresource_handler.go``, ``strategy.go``,
``validator.go``; see shared/reference/kube-apiserver-notes.md §1):

1. :func:`unknown_fields` (for fieldValidation Warn/Strict), then :func:`prune` and :func:`default`;
2. :func:`validate` — the OpenAPI schema through the ``jsonschema`` library (draft 4, which has
   OpenAPI v3's boolean ``exclusiveMinimum``), list-type set/map uniqueness, then the
   ``x-kubernetes-validations`` rules run with the ``common-expression-language`` package (cel-rust),
   transition rules only where an old value correlates, and ratcheting on update (errors on unchanged
   values are dropped, CEL failures on unchanged values become warnings).

Errors are :class:`tests.k8s.crd_rules.FieldError`, worded as kube-apiserver words them.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cel as cel_rust
import jsonschema

from tests.k8s.crd_rules import FieldError

OBJECT_META_FIELDS = frozenset(
    {
        "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
        "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
        "ownerReferences", "finalizers", "managedFields",
    }
)  # fmt: skip
# Errors after which kube-apiserver does not run CEL rules (the object is not well-formed enough).
_SKIP_CEL_AFTER = frozenset({"NotSupported", "Required", "TooLong", "TooMany", "TypeInvalid"})
_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _properties(schema: dict[str, Any]) -> dict[str, Any]:
    return schema.get("properties") or {}


# ---------------------------------------------------------------------- pruning, unknown fields


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "", *, root: bool = True) -> list[str]:
    """Paths of the fields pruning would drop (``spec.foo``, ``spec.list[0].bar``), as fieldValidation
    names them."""
    found: list[str] = []
    if isinstance(value, dict):
        props = _properties(schema)
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            here = _child(path, key)
            if root and key in ("apiVersion", "kind"):
                continue
            if root and key == "metadata":
                if isinstance(sub, dict):
                    found += [_child(here, k) for k in sub if k not in OBJECT_META_FIELDS]
                continue
            if key in props:
                found += unknown_fields(
                    sub, props[key], here, root=bool(props[key].get("x-kubernetes-embedded-resource"))
                )
            elif isinstance(extra, dict):
                found += unknown_fields(
                    sub, extra, here, root=bool(extra.get("x-kubernetes-embedded-resource"))
                )
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and extra is not True:
                found.append(here)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        for i, item in enumerate(value):
            found += unknown_fields(
                item, items, f"{path}[{i}]", root=bool(items.get("x-kubernetes-embedded-resource"))
            )
    return found


def prune(value: Any, schema: dict[str, Any], *, root: bool = False) -> Any:
    """A copy of ``value`` without the fields its schema does not declare (and without non-nullable
    nulls that have no default, which the decoder drops too)."""
    if isinstance(value, dict):
        props = _properties(schema)
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for key, sub in value.items():
            if root and key in ("apiVersion", "kind"):
                out[key] = sub
            elif root and key == "metadata":
                out[key] = (
                    {k: v for k, v in sub.items() if k in OBJECT_META_FIELDS}
                    if isinstance(sub, dict)
                    else sub
                )
            elif key in props:
                prop = props[key]
                if sub is None and not prop.get("nullable") and "default" not in prop:
                    continue
                out[key] = prune(sub, prop, root=bool(prop.get("x-kubernetes-embedded-resource")))
            elif isinstance(extra, dict):
                out[key] = prune(sub, extra, root=bool(extra.get("x-kubernetes-embedded-resource")))
            elif schema.get("x-kubernetes-preserve-unknown-fields") or extra is True:
                out[key] = copy.deepcopy(sub)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        return [prune(item, items, root=bool(items.get("x-kubernetes-embedded-resource"))) for item in value]
    return copy.deepcopy(value)


def default(value: Any, schema: dict[str, Any]) -> Any:
    """``structuraldefaulting.Default``: absent (or non-nullable null) properties get their default, then
    defaulting recurses into them, so nested defaults of a defaulted parent apply too."""
    if isinstance(value, dict):
        out = dict(value)
        props = _properties(schema)
        for key, prop in props.items():
            if "default" in prop and (key not in out or (out[key] is None and not prop.get("nullable"))):
                out[key] = copy.deepcopy(prop["default"])
        for key, sub in list(out.items()):
            if key in props:
                out[key] = default(sub, props[key])
            elif isinstance(schema.get("additionalProperties"), dict):
                out[key] = default(sub, schema["additionalProperties"])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [default(item, schema["items"]) for item in value]
    return value


# ---------------------------------------------------------------------------- OpenAPI validation


def to_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A structural OpenAPI v3 schema as JSON Schema draft 4 (what ``jsonschema`` validates)."""
    out: dict[str, Any] = {}
    kind = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    elif kind:
        out["type"] = [kind, "null"] if schema.get("nullable") else kind
    for key in (
        "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
        "pattern", "minItems", "maxItems", "minProperties", "maxProperties", "multipleOf", "required",
    ):  # fmt: skip
        if key in schema:
            out[key] = schema[key]
    if schema.get("nullable") and "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    if "properties" in schema:
        out["properties"] = {k: to_json_schema(v) for k, v in schema["properties"].items()}
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = to_json_schema(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [to_json_schema(s) for s in schema[key]]
    if "not" in schema:
        out["not"] = to_json_schema(schema["not"])
    return out


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(to_json_schema(json.loads(schema_json)))


def _render_path(base: str, parts: Any) -> str:
    out = base
    for part in parts:
        out = f"{out}[{part}]" if isinstance(part, int) else _child(out, str(part))
    return out


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def validate_value(value: Any, schema: dict[str, Any], path: str = "") -> list[FieldError]:
    """OpenAPI errors of ``value`` (no CEL), converted as ``kubeOpenAPIResultToFieldErrors`` does."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors: list[FieldError] = []
    for error in sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path]):
        where = _render_path(path, error.absolute_path)
        check, expected, actual = error.validator, error.validator_value, error.instance
        if check == "required":
            match = re.match(r"^(.*) is a required property$", error.message)
            missing = ast.literal_eval(match.group(1)) if match else "?"
            errors.append(FieldError("Required", _child(where, missing)))
        elif check == "enum":
            shown = ", ".join(json.dumps(v if isinstance(v, str) else json.dumps(v)) for v in expected)
            errors.append(FieldError("NotSupported", where, f"supported values: {shown}", actual))
        elif check == "maxLength":
            errors.append(FieldError("TooLong", where, f"may not be more than {expected} bytes"))
        elif check in ("maxItems", "maxProperties"):
            unit = "item" if expected == 1 else "items"
            errors.append(FieldError("TooMany", where, f"must have at most {expected} {unit}", len(actual)))
        elif check == "type":
            wanted = expected if isinstance(expected, str) else expected[0]
            got = "null" if actual is None else _TYPE_NAMES.get(type(actual), "object")
            errors.append(
                FieldError("TypeInvalid", where, f'{where} in body must be of type {wanted}: "{got}"', actual)
            )
        else:
            detail = _openapi_detail(error)
            errors.append(FieldError("Invalid", where, f"{where} in body {detail}", actual))
    errors += _list_uniqueness(value, schema, path)
    return errors


def _openapi_detail(error: jsonschema.ValidationError) -> str:
    """kube-openapi's wording of a failed keyword (after "<field> in body ")."""
    expected = error.validator_value
    flags = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "minimum":
        exclusive = " than" if flags.get("exclusiveMinimum") else " than or equal to"
        return f"should be greater{exclusive} {_number(expected)}"
    if error.validator == "maximum":
        exclusive = " than" if flags.get("exclusiveMaximum") else " than or equal to"
        return f"should be less{exclusive} {_number(expected)}"
    return {
        "minLength": f"should be at least {expected} chars long",
        "pattern": f"should match '{expected}'",
        "minItems": f"should have at least {expected} items",
        "minProperties": f"should have at least {expected} properties",
        "multipleOf": f"should be a multiple of {_number(expected)}",
    }.get(str(error.validator), error.message)


def _list_uniqueness(value: Any, schema: dict[str, Any], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        list_type = schema.get("x-kubernetes-list-type")
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: list[Any] = []
        for i, item in enumerate(value):
            identity = (
                {k: item.get(k) for k in keys} if list_type == "map" and isinstance(item, dict) else item
            )
            if list_type in ("set", "map") and identity in seen:
                errors.append(FieldError("Duplicate", f"{path}[{i}]", value=identity))
            seen.append(identity)
            errors += _list_uniqueness(item, schema["items"], f"{path}[{i}]")
    elif isinstance(value, dict):
        props = _properties(schema)
        for key, sub in value.items():
            if key in props:
                errors += _list_uniqueness(sub, props[key], _child(path, key))
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _list_uniqueness(sub, schema["additionalProperties"], _child(path, key))
    return errors


# ----------------------------------------------------------------------------------------- CEL


@dataclass
class Outcome:
    errors: list[FieldError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=1024)
def _program(rule: str) -> Any:
    return cel_rust.compile(rule)


def _cel_value(value: Any, schema: dict[str, Any], *, root: bool = False) -> Any:
    """The value CEL sees: numbers of ``type: number`` as doubles, only name/generateName of metadata."""
    if root and isinstance(value, dict):
        value = dict(value)
        meta = value.get("metadata") or {}
        value["metadata"] = {k: meta[k] for k in ("name", "generateName") if k in meta}
    if isinstance(value, dict):
        props = _properties(schema)
        extra = schema.get("additionalProperties")
        return {
            k: _cel_value(v, props[k])
            if k in props
            else _cel_value(v, extra)
            if isinstance(extra, dict)
            else v
            for k, v in value.items()
        }
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_cel_value(v, schema["items"]) for v in value]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _correlate(old: Any, new_item: dict[str, Any], keys: list[str]) -> Any:
    if not isinstance(old, list):
        return None
    for item in old:
        if isinstance(item, dict) and all(item.get(k) == new_item.get(k) for k in keys):
            return item
    return None


def _walk(
    value: Any, old: Any, schema: dict[str, Any], path: str, *, root: bool, has_old: bool
) -> Iterator[tuple[Any, Any, bool, dict[str, Any], str, bool]]:
    """Every (value, old value, old exists, schema, path, is resource root) with rules, depth first."""
    if schema.get("x-kubernetes-validations"):
        yield value, old, has_old, schema, path, root
    if isinstance(value, dict):
        props = _properties(schema)
        extra = schema.get("additionalProperties")
        for key in value:
            sub_schema = props.get(key) if key in props else extra if isinstance(extra, dict) else None
            if sub_schema is None or (root and key == "metadata"):
                continue
            old_sub = old.get(key) if has_old and isinstance(old, dict) else None
            old_has = has_old and isinstance(old, dict) and key in old
            yield from _walk(value[key], old_sub, sub_schema, _child(path, key), root=False, has_old=old_has)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        for i, item in enumerate(value):
            correlated = (
                _correlate(old, item, keys)
                if has_old and schema.get("x-kubernetes-list-type") == "map" and isinstance(item, dict)
                else None
            )
            yield from _walk(
                item, correlated, schema["items"], f"{path}[{i}]", root=False, has_old=correlated is not None
            )


def run_rules(value: Any, old: Any, schema: dict[str, Any], path: str = "", *, root: bool = True) -> Outcome:
    """Run every x-kubernetes-validations rule; transition rules only where the old value correlates.

    On update, a non-transition rule that fails on a value that did not change is a warning (ratcheting).
    """
    outcome = Outcome()
    for here, before, has_before, node, where, is_root in _walk(
        value, old, schema, path, root=root, has_old=old is not None
    ):
        self_value = _cel_value(here, node, root=is_root)
        old_value = _cel_value(before, node, root=is_root) if has_before else None
        for rule in node["x-kubernetes-validations"]:
            text = rule["rule"]
            transition = "oldSelf" in _program(text).variables()
            if transition and not has_before:
                continue
            context = {"self": self_value}
            if transition:
                context["oldSelf"] = old_value
            try:
                ok = _program(text).execute(context)
            except Exception as exc:  # a runtime error is reported on the rule's node
                outcome.errors.append(
                    FieldError(
                        "Invalid",
                        where,
                        f"{_rule_text(rule)}: evaluation error: {exc}",
                        node.get("type", "object"),
                    )
                )
                continue
            if ok is True:
                continue
            error = _rule_error(rule, node, where, self_value)
            if not transition and has_before and here == before:
                outcome.warnings.append(str(error))  # ratcheting: unchanged values do not newly fail
            else:
                outcome.errors.append(error)
    return outcome


def _rule_text(rule: dict[str, Any]) -> str:
    return f"failed rule: {rule['rule']}"


def _rule_error(rule: dict[str, Any], node: dict[str, Any], where: str, self_value: Any) -> FieldError:
    message = rule.get("message") or _rule_text(rule)
    if rule.get("messageExpression"):
        try:
            evaluated = _program(rule["messageExpression"]).execute({"self": self_value})
            if isinstance(evaluated, str) and evaluated.strip() and "\n" not in evaluated:
                message = evaluated
        except Exception:  # kube-apiserver falls back to message on a failing messageExpression
            pass
    field_path = rule.get("fieldPath")
    if field_path:
        from tests.k8s.crd_rules import resolve_field_path

        resolved = resolve_field_path(field_path, node)
        if resolved is not None:
            where = _child(where, resolved[0]) if not resolved[0].startswith("[") else where + resolved[0]
    reason = rule.get("reason") or "FieldValueInvalid"
    if reason == "FieldValueForbidden":
        return FieldError("Forbidden", where, message)
    if reason == "FieldValueRequired":
        return FieldError("Required", where, message)
    if reason == "FieldValueDuplicate":
        return FieldError("Duplicate", where, value=node.get("type", "object"))
    return FieldError("Invalid", where, message, node.get("type", "object"))


# -------------------------------------------------------------------------------------- together


def validate(
    obj: dict[str, Any], old: dict[str, Any] | None, schema: dict[str, Any], *, status_only: bool = False
) -> Outcome:
    """Schema and CEL validation of a whole custom resource (``status_only``: the /status subresource,
    which validates only ``.status``), with ratcheting on update."""
    if status_only:
        status_schema = _properties(schema).get("status") or {}
        value, before = obj.get("status"), (old or {}).get("status")
        if value is None:
            return Outcome()
        errors = validate_value(value, status_schema, "status")
        outcome = Outcome(errors=_ratchet(errors, value, before, "status", old is not None))
        return _with_rules(outcome, value, before, status_schema, "status", root=False)
    body = {k: v for k, v in obj.items() if k != "metadata"}
    body["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k in ("name", "generateName")}
    errors = validate_value(body, schema, "")
    outcome = Outcome(errors=_ratchet(errors, obj, old, "", old is not None))
    return _with_rules(outcome, obj, old, schema, "", root=True)


def _with_rules(
    outcome: Outcome, value: Any, old: Any, schema: dict[str, Any], path: str, *, root: bool
) -> Outcome:
    """Run the CEL rules unless the OpenAPI errors make kube-apiserver skip them (then it says so)."""
    if not any(e.type in _SKIP_CEL_AFTER for e in outcome.errors):
        rules = run_rules(value, old, schema, path, root=root)
        outcome.errors += rules.errors
        outcome.warnings += rules.warnings
    else:
        outcome.errors.append(
            FieldError(
                "Invalid",
                "<nil>",
                "some validation rules were not checked because the object was invalid; "
                "correct the existing errors to complete validation",
                "null",
            )
        )
    return outcome


def _lookup(obj: Any, path: str, base: str) -> tuple[bool, Any]:
    rest = path[len(base) :].lstrip(".") if base and path.startswith(base) else path
    current = obj
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", rest):
        if index:
            if not isinstance(current, list) or int(index) >= len(current):
                return False, None
            current = current[int(index)]
        else:
            if not isinstance(current, dict) or name not in current:
                return False, None
            current = current[name]
    return True, current


def _ratchet(errors: list[FieldError], new: Any, old: Any, base: str, is_update: bool) -> list[FieldError]:
    """CRDValidationRatcheting: on update, an OpenAPI error on a value equal to the old one is dropped."""
    if not is_update or old is None:
        return errors
    kept = []
    for error in errors:
        target = error.field
        if error.type == "Required":
            target = target.rsplit(".", 1)[0] if "." in target else ""
        found_new, value_new = _lookup(new, target, base)
        found_old, value_old = _lookup(old, target, base)
        if found_new and found_old and value_new == value_old and error.type != "Duplicate":
            continue
        kept.append(error)
    return kept
