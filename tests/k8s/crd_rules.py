"""kube-apiserver's validation of a CustomResourceDefinition, written from its source, not from ours.

What ``POST/PUT .../customresourcedefinitions`` checks before it accepts a CRD (apiextensions-apiserver
``pkg/apis/apiextensions/validation/validation.go``, ``pkg/apiserver/schema/validation.go``,
``pkg/apiserver/schema/cel/compilation.go``), as field errors with kube-apiserver's paths and wording:

- names: ``<plural>.<group>``, a group with a dot, DNS-1035 plural/singular/shortNames/categories, a kind;
- versions: at least one, unique names, exactly one storage version, a schema for each, printer columns;
- structural schemas: every node typed, ``items`` for arrays, no ``additionalProperties`` at the root or
  beside ``properties``, no ``$ref``/``uniqueItems``, value validations (allOf/anyOf/oneOf/not) without
  types, defaults or extensions; ``metadata`` at the root restricting only ``name``/``generateName``;
- extensions: preserve-unknown-fields/int-or-string true, embedded resources typed, list-type and
  list-map-keys and map-type where allowed;
- defaults that validate against their schema and survive pruning;
- ``x-kubernetes-validations``: messages on one line, a supported reason, a fieldPath naming a declared
  field, rules that compile in the Kubernetes CEL environment (tests/k8s/cel_static.py) with an estimated
  cost under the per-rule and per-CRD limits, transition rules only where old values correlate.

The emulator runs this on every CRD it is given; tests/unit/test_crd_rules.py runs it on crds/.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tests.k8s import cel_static

STATIC_ESTIMATED_COST_LIMIT = 10_000_000  # per rule
STATIC_ESTIMATED_CRD_COST_LIMIT = 100_000_000  # per version schema
SUPPORTED_REASONS = ("FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired")
PRINTER_COLUMN_TYPES = ("boolean", "date", "integer", "number", "string")
PRINTER_COLUMN_FORMATS = ("byte", "date", "date-time", "double", "float", "int32", "int64", "password")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_FORBIDDEN_KEYWORDS = (
    "$ref",
    "$schema",
    "id",
    "definitions",
    "dependencies",
    "patternProperties",
    "additionalItems",
)
# What a node inside allOf/anyOf/oneOf/not may not carry (Structural "ForbiddenGenerics/Extensions").
_NOT_IN_VALUE_VALIDATION = (
    "type", "description", "title", "default", "nullable", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string", "x-kubernetes-embedded-resource", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-validations",
)  # fmt: skip
_ERROR_NAMES = {
    "Required": "Required value",
    "Invalid": "Invalid value",
    "NotSupported": "Unsupported value",
    "Forbidden": "Forbidden",
    "TooLong": "Too long",
    "TooMany": "Too many",
    "Duplicate": "Duplicate value",
    "TypeInvalid": "Invalid value",
}
_CAUSE_REASONS = {
    "Required": "FieldValueRequired",
    "Invalid": "FieldValueInvalid",
    "NotSupported": "FieldValueNotSupported",
    "Forbidden": "FieldValueForbidden",
    "TooLong": "FieldValueTooLong",
    "TooMany": "FieldValueTooMany",
    "Duplicate": "FieldValueDuplicate",
    "TypeInvalid": "FieldValueTypeInvalid",
}
_OMIT = object()


@dataclass(frozen=True)
class FieldError:
    """``k8s.io/apimachinery/pkg/util/validation/field.Error``: ``<field>: <Type>: <value>: <detail>``."""

    type: str  # Required Invalid NotSupported Forbidden TooLong TooMany Duplicate TypeInvalid
    field: str
    detail: str = ""
    value: Any = _OMIT

    @property
    def cause_reason(self) -> str:
        return _CAUSE_REASONS[self.type]

    def body(self) -> str:
        name = _ERROR_NAMES[self.type]
        if self.type in ("Required", "Forbidden", "TooLong") or self.value is _OMIT:
            text = name
        else:
            text = f"{name}: {render_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def render_value(value: Any) -> str:
    """How field.Error prints a bad value: scalars plainly, strings quoted, the rest as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) and not value.is_integer() else str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def aggregate(errors: list[FieldError]) -> str:
    """``ErrorList.ToAggregate().Error()``: one error plainly, several as ``[a, b]``, deduplicated."""
    texts = list(dict.fromkeys(str(e) for e in errors))
    return texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"


# -------------------------------------------------------------------------------------- the CRD


def validate_crd(crd: dict[str, Any]) -> list[FieldError]:
    """Every reason kube-apiserver would reject ``crd`` on create (an empty list: it is accepted)."""
    errors: list[FieldError] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = str(spec.get("group") or "")
    plural = str(names.get("plural") or "")
    name = (crd.get("metadata") or {}).get("name", "")
    if name != f"{plural}.{group}":
        errors.append(
            FieldError("Invalid", "metadata.name", 'must be spec.names.plural+"."+spec.group', name)
        )
    if not group:
        errors.append(FieldError("Required", "spec.group"))
    elif "." not in group:
        errors.append(FieldError("Invalid", "spec.group", "should be a domain with at least one dot", group))
    if spec.get("scope") not in ("Cluster", "Namespaced"):
        errors.append(FieldError("NotSupported", "spec.scope", '"Cluster", "Namespaced"', spec.get("scope")))
    errors += _validate_names(names)
    versions = spec.get("versions") or []
    if not versions:
        errors.append(
            FieldError(
                "Invalid", "spec.versions", "must have exactly one version marked as storage version", []
            )
        )
    seen: set[str] = set()
    for i, version in enumerate(versions):
        path = f"spec.versions[{i}]"
        vname = version.get("name", "")
        if not _DNS1035.match(vname or ""):
            errors.append(FieldError("Invalid", f"{path}.name", _dns1035_detail(), vname))
        if vname in seen:
            errors.append(FieldError("Duplicate", f"{path}.name", value=vname))
        seen.add(vname)
        errors += _validate_version(version, path)
    storage = [v for v in versions if v.get("storage")]
    if versions and len(storage) != 1:
        errors.append(
            FieldError(
                "Invalid",
                "spec.versions",
                "must have exactly one version marked as storage version",
                versions,
            )
        )
    if spec.get("preserveUnknownFields"):
        errors.append(
            FieldError(
                "Invalid",
                "spec.preserveUnknownFields",
                "cannot set to true, set x-kubernetes-preserve-unknown-fields to true in "
                "spec.versions[*].schema instead",
                True,
            )
        )
    return errors


def _dns1035_detail() -> str:
    return (
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
        "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
        "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
    )


def _validate_names(names: dict[str, Any]) -> list[FieldError]:
    errors = []
    for key in ("plural", "singular"):
        value = names.get(key) or ""
        if key == "plural" and not value:
            errors.append(FieldError("Required", "spec.names.plural"))
        elif value and not _DNS1035.match(value):
            errors.append(FieldError("Invalid", f"spec.names.{key}", _dns1035_detail(), value))
    kind = names.get("kind") or ""
    if not kind:
        errors.append(FieldError("Required", "spec.names.kind"))
    elif not _DNS1035.match(kind.lower()):
        errors.append(
            FieldError(
                "Invalid",
                "spec.names.kind",
                "may have mixed case, but should otherwise match: " + _dns1035_detail(),
                kind,
            )
        )
    list_kind = names.get("listKind") or ""
    if list_kind and list_kind == kind:
        errors.append(
            FieldError(
                "Invalid",
                "spec.names.listKind",
                "kind and listKind may not be the same or parsing become ambiguous",
                list_kind,
            )
        )
    for key in ("shortNames", "categories"):
        values = names.get(key) or []
        for i, value in enumerate(values):
            if not _DNS1035.match(str(value)):
                errors.append(FieldError("Invalid", f"spec.names.{key}[{i}]", _dns1035_detail(), value))
            if values.index(value) != i:
                errors.append(FieldError("Duplicate", f"spec.names.{key}[{i}]", value=value))
    return errors


def _validate_version(version: dict[str, Any], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    schema = (
        ((version.get("schema") or {}).get("openAPIV3Schema"))
        if isinstance(version.get("schema"), dict)
        else None
    )
    if not isinstance(schema, dict):
        errors.append(FieldError("Required", f"{path}.schema.openAPIV3Schema", "schemas are required"))
    else:
        errors += validate_schema(schema, f"{path}.schema.openAPIV3Schema")
    subresources = version.get("subresources") or {}
    if "status" in subresources and subresources["status"] not in ({}, None):
        errors.append(
            FieldError("Invalid", f"{path}.subresources.status", "must be empty", subresources["status"])
        )
    for i, column in enumerate(version.get("additionalPrinterColumns") or []):
        where = f"{path}.additionalPrinterColumns[{i}]"
        if not column.get("name"):
            errors.append(FieldError("Required", f"{where}.name"))
        if column.get("type") not in PRINTER_COLUMN_TYPES:
            errors.append(
                FieldError(
                    "NotSupported", f"{where}.type", _supported(PRINTER_COLUMN_TYPES), column.get("type")
                )
            )
        if column.get("format") and column["format"] not in PRINTER_COLUMN_FORMATS:
            errors.append(
                FieldError(
                    "NotSupported", f"{where}.format", _supported(PRINTER_COLUMN_FORMATS), column["format"]
                )
            )
        json_path = column.get("jsonPath") or ""
        if not json_path:
            errors.append(FieldError("Required", f"{where}.JSONPath"))
        elif not re.fullmatch(r"(\.[A-Za-z0-9_$-]+|\[[^\]]+\])+", json_path):
            errors.append(
                FieldError(
                    "Invalid", f"{where}.JSONPath", "must be a simple json path starting with .", json_path
                )
            )
    return errors


def _supported(values: tuple[str, ...]) -> str:
    return "supported values: " + ", ".join(json.dumps(v) for v in values)


# ----------------------------------------------------------------------------------- the schema


@dataclass
class _Context:
    """Where a schema node sits: how often it can repeat, and whether old values correlate there."""

    cardinality: int | None  # product of enclosing maxItems/maxProperties; None: unbounded
    uncorrelatable: str | None  # the first list above that is not list-type=map, if any
    total_cost: list[int]


def validate_schema(schema: dict[str, Any], path: str) -> list[FieldError]:
    """Structural, extension, default and CEL checks of one version's openAPIV3Schema."""
    errors = _structural(schema, path, "root", value_validation=False)
    if errors:
        return errors  # kube-apiserver only compiles CEL rules of an otherwise valid schema
    context = _Context(cardinality=1, uncorrelatable=None, total_cost=[0])
    errors += _cel(schema, path, context, root=True)
    if context.total_cost[0] > STATIC_ESTIMATED_CRD_COST_LIMIT:
        errors.append(
            FieldError(
                "Forbidden",
                path,
                cost_message(
                    "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                    context.total_cost[0],
                    STATIC_ESTIMATED_CRD_COST_LIMIT,
                ),
            )
        )
    return errors


def cost_message(what: str, cost: int, limit: int) -> str:
    factor = cost / limit
    shown = "more than 100x" if factor > 100 else f"{factor:f}x" if factor < 1.5 else f"{factor:.1f}x"
    return (
        f"{what} exceeds budget by factor of {shown} (try simplifying the rule, or adding maxItems, "
        "maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )


def _structural(node: Any, path: str, level: str, *, value_validation: bool) -> list[FieldError]:
    """``level``: root, field (an object property), item (array items) or additional (map values)."""
    errors: list[FieldError] = []
    if not isinstance(node, dict):
        return [FieldError("Invalid", path, "must be an object", node)]
    for keyword in _FORBIDDEN_KEYWORDS:
        if keyword in node:
            errors.append(FieldError("Forbidden", f"{path}.{keyword}", f"{keyword} is not supported"))
    if node.get("uniqueItems") is True:
        errors.append(
            FieldError(
                "Forbidden",
                f"{path}.uniqueItems",
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            )
        )
    if value_validation:
        for keyword in _NOT_IN_VALUE_VALIDATION:
            if keyword in node:
                errors.append(FieldError("Forbidden", f"{path}.{keyword}", "must be empty to be structural"))
    for keyword in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(keyword) or []):
            errors += _structural(sub, f"{path}.{keyword}[{i}]", "field", value_validation=True)
            errors += _completeness(sub, node, f"{path}.{keyword}[{i}]")
    if "not" in node:
        errors += _structural(node["not"], f"{path}.not", "field", value_validation=True)
    if value_validation:
        for key, sub in (node.get("properties") or {}).items():
            errors += _structural(sub, f"{path}.properties[{key}]", "field", value_validation=True)
        if isinstance(node.get("items"), dict):
            errors += _structural(node["items"], f"{path}.items", "item", value_validation=True)
        return errors

    kind = node.get("type")
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    int_or_string = node.get("x-kubernetes-int-or-string")
    embedded = node.get("x-kubernetes-embedded-resource")
    if preserve is not None and preserve is not True:
        errors.append(
            FieldError(
                "Invalid",
                f"{path}.x-kubernetes-preserve-unknown-fields",
                "must be true or undefined",
                preserve,
            )
        )
    if int_or_string is not None and int_or_string is not True:
        errors.append(
            FieldError(
                "Invalid", f"{path}.x-kubernetes-int-or-string", "must be true or undefined", int_or_string
            )
        )
    if embedded and kind != "object":
        errors.append(
            FieldError(
                "Required" if not kind else "Invalid",
                f"{path}.type",
                "must be object if x-kubernetes-embedded-resource is true",
                *([kind] if kind else []),
            )
        )
    elif not kind and not int_or_string and not preserve:
        where = {"root": "at the root", "item": "for specified array items"}.get(
            level, "for specified object fields"
        )
        errors.append(FieldError("Required", f"{path}.type", f"must not be empty {where}"))
    if kind is not None and kind not in ("object", "array", "string", "integer", "number", "boolean"):
        errors.append(
            FieldError(
                "NotSupported",
                f"{path}.type",
                _supported(("array", "boolean", "integer", "number", "object", "string")),
                kind,
            )
        )
    if level == "root" and kind and kind != "object":
        errors.append(FieldError("Invalid", f"{path}.type", "must be object at the root", kind))
    if kind == "array" and not isinstance(node.get("items"), dict):
        errors.append(FieldError("Required", f"{path}.items", "must be specified"))
    extra = node.get("additionalProperties")
    if extra is not None:
        if level == "root":
            errors.append(
                FieldError("Forbidden", f"{path}.additionalProperties", "must not be used at the root")
            )
        if node.get("properties"):
            errors.append(
                FieldError(
                    "Forbidden",
                    f"{path}.additionalProperties",
                    "additionalProperties and properties are mutual exclusive",
                )
            )
        if extra is False:
            errors.append(FieldError("Forbidden", f"{path}.additionalProperties", "must not be false"))
        if embedded:
            errors.append(
                FieldError(
                    "Forbidden",
                    f"{path}.additionalProperties",
                    "must not be used if x-kubernetes-embedded-resource is set",
                )
            )
    if embedded and not preserve and not node.get("properties"):
        errors.append(
            FieldError(
                "Required",
                f"{path}.properties",
                "must not be empty if x-kubernetes-embedded-resource is true without "
                "x-kubernetes-preserve-unknown-fields",
            )
        )
    errors += _list_and_map_types(node, path)
    props = node.get("properties") or {}
    check_meta = level == "root" or bool(embedded)
    for key in ("kind", "apiVersion"):
        if key in props and check_meta and props[key].get("type") != "string":
            errors.append(
                FieldError(
                    "Invalid", f"{path}.properties[{key}].type", "must be string", props[key].get("type")
                )
            )
    if "metadata" in props:
        errors += _metadata(props["metadata"], f"{path}.properties[metadata]", level, check_meta)
    if "default" in node:
        errors += _default(node, path, level)
    for key, sub in props.items():
        if key == "metadata" and level == "root":
            continue  # checked above; its name/generateName are free-form
        errors += _structural(sub, f"{path}.properties[{key}]", "field", value_validation=False)
    if isinstance(node.get("items"), dict):
        errors += _structural(node["items"], f"{path}.items", "item", value_validation=False)
    if isinstance(extra, dict):
        errors += _structural(extra, f"{path}.additionalProperties", "additional", value_validation=False)
    errors += _rule_shapes(node, path)
    return errors


def _completeness(sub: dict[str, Any], outer: dict[str, Any], path: str) -> list[FieldError]:
    """A field a value validation mentions must be declared outside it too."""
    errors = []
    for key in sub.get("properties") or {}:
        if key not in (outer.get("properties") or {}):
            errors.append(
                FieldError(
                    "Required",
                    f"{path}.properties[{key}]",
                    "must have a properties/items/additionalProperties specified outside of value "
                    "validations",
                )
            )
    if "items" in sub and "items" not in outer:
        errors.append(
            FieldError(
                "Required",
                f"{path}.items",
                "must have a properties/items/additionalProperties specified outside of value validations",
            )
        )
    return errors


def _metadata(meta: dict[str, Any], path: str, level: str, check_meta: bool) -> list[FieldError]:
    if level != "root" and not check_meta:
        return [FieldError("Forbidden", path, "must not be specified in a nested context")]
    errors = []
    if check_meta and meta.get("type") != "object":
        errors.append(FieldError("Invalid", f"{path}.type", "must be object", meta.get("type")))
    if level == "root":
        rest = {k: v for k, v in meta.items() if k not in ("type", "properties")}
        props = set((meta.get("properties") or {}).keys())
        if rest or not props <= {"name", "generateName"}:
            errors.append(
                FieldError(
                    "Forbidden",
                    path,
                    "must not specify anything other than name and generateName, but metadata is "
                    "implicitly specified",
                )
            )
        for key, sub in (meta.get("properties") or {}).items():
            if key in ("name", "generateName"):
                if sub.get("type") not in (None, "string"):
                    errors.append(
                        FieldError(
                            "Invalid", f"{path}.properties[{key}].type", "must be string", sub.get("type")
                        )
                    )
                if "default" in sub:
                    errors.append(
                        FieldError("Forbidden", f"{path}.properties[{key}].default", "must not be set")
                    )
    return errors


def _list_and_map_types(node: dict[str, Any], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    list_type = node.get("x-kubernetes-list-type")
    keys = node.get("x-kubernetes-list-map-keys")
    items = node.get("items") if isinstance(node.get("items"), dict) else None
    if list_type is not None:
        if node.get("type") != "array":
            errors.append(
                FieldError(
                    "Invalid" if node.get("type") else "Required",
                    f"{path}.type",
                    "must be array if x-kubernetes-list-type is specified",
                    *([node["type"]] if node.get("type") else []),
                )
            )
        elif list_type not in ("atomic", "set", "map"):
            errors.append(
                FieldError(
                    "NotSupported",
                    f"{path}.x-kubernetes-list-type",
                    _supported(("atomic", "set", "map")),
                    list_type,
                )
            )
        elif (
            list_type == "set"
            and items is not None
            and items.get("type") in ("object", "array")
            and items.get("x-kubernetes-map-type") != "atomic"
            and items.get("x-kubernetes-list-type") != "atomic"
        ):
            errors.append(
                FieldError(
                    "Invalid",
                    f"{path}.items.x-kubernetes-map-type",
                    "must be atomic as item of a list with x-kubernetes-list-type=set",
                    items.get("x-kubernetes-map-type"),
                )
            )
    if keys and list_type != "map":
        errors.append(
            FieldError(
                "Required" if list_type is None else "Invalid",
                f"{path}.x-kubernetes-list-type",
                "must be map if x-kubernetes-list-map-keys is non-empty",
                *([list_type] if list_type else []),
            )
        )
    if list_type == "map":
        if not keys:
            errors.append(
                FieldError(
                    "Required",
                    f"{path}.x-kubernetes-list-map-keys",
                    "must not be empty if x-kubernetes-list-type is map",
                )
            )
        elif items is None:
            errors.append(
                FieldError("Required", f"{path}.items", "must have a schema if x-kubernetes-list-type is map")
            )
        elif items.get("type") != "object":
            errors.append(
                FieldError(
                    "Invalid",
                    f"{path}.items.type",
                    "must be object if parent array's x-kubernetes-list-type is map",
                    items.get("type"),
                )
            )
        else:
            props = items.get("properties") or {}
            if any(k not in props for k in keys):
                errors.append(
                    FieldError(
                        "Invalid",
                        f"{path}.x-kubernetes-list-map-keys",
                        "entries must all be names of item properties",
                        keys,
                    )
                )
            if len(set(keys)) != len(keys):
                errors.append(
                    FieldError(
                        "Invalid",
                        f"{path}.x-kubernetes-list-map-keys",
                        "must not contain duplicate entries",
                        keys,
                    )
                )
            for key in keys:
                prop = props.get(key) or {}
                if prop and prop.get("type") not in ("string", "integer", "number", "boolean"):
                    errors.append(
                        FieldError(
                            "Invalid",
                            f"{path}.items.properties[{key}].type",
                            "must be a scalar type if parent array's x-kubernetes-list-type is map",
                            prop.get("type"),
                        )
                    )
                if prop and key not in (items.get("required") or []) and "default" not in prop:
                    errors.append(
                        FieldError(
                            "Required",
                            f"{path}.items.properties[{key}].default",
                            "this property is in x-kubernetes-list-map-keys, so it must have a default "
                            "or be a required property",
                        )
                    )
    map_type = node.get("x-kubernetes-map-type")
    if map_type is not None:
        if node.get("type") != "object":
            errors.append(
                FieldError(
                    "Invalid",
                    f"{path}.type",
                    "must be object if x-kubernetes-map-type is specified",
                    node.get("type"),
                )
            )
        elif map_type not in ("granular", "atomic"):
            errors.append(
                FieldError(
                    "NotSupported",
                    f"{path}.x-kubernetes-map-type",
                    _supported(("atomic", "granular")),
                    map_type,
                )
            )
    return errors


def _default(node: dict[str, Any], path: str, level: str) -> list[FieldError]:
    """A default must validate against its own schema and must not carry fields pruning would drop."""
    from tests.k8s import schema_validation  # late: schema_validation imports this module

    value = node["default"]
    if value is None and not node.get("nullable"):
        return [FieldError("Invalid", f"{path}.default", "must not be null for a non-nullable schema", None)]
    errors = []
    pruned = schema_validation.prune(value, node)
    if pruned != value:
        errors.append(FieldError("Invalid", f"{path}.default", "must not have unknown fields", value))
    for problem in schema_validation.validate_value(value, node, f"{path}.default"):
        errors.append(problem)
    return errors


def _rule_shapes(node: dict[str, Any], path: str) -> list[FieldError]:
    """The parts of x-kubernetes-validations entries checked before any CEL is compiled."""
    errors = []
    for i, rule in enumerate(node.get("x-kubernetes-validations") or []):
        where = f"{path}.x-kubernetes-validations[{i}]"
        text = str(rule.get("rule") or "").strip()
        message = rule.get("message")
        if not text:
            errors.append(FieldError("Required", f"{where}.rule", "rule is not specified"))
        elif message is not None and not str(message).strip():
            errors.append(
                FieldError("Invalid", f"{where}.message", "must be non-empty if specified", message)
            )
        elif message and re.search(r"[\r\n]", str(message).strip()):
            errors.append(FieldError("Invalid", f"{where}.message", "must not contain line breaks", message))
        elif re.search(r"[\r\n]", text) and not (message or "").strip():
            errors.append(
                FieldError(
                    "Required", f"{where}.message", "message must be specified if rule contains line breaks"
                )
            )
        if rule.get("reason") is not None and rule["reason"] not in SUPPORTED_REASONS:
            errors.append(
                FieldError("NotSupported", f"{where}.reason", _supported(SUPPORTED_REASONS), rule["reason"])
            )
        field_path = rule.get("fieldPath")
        if field_path is not None:
            if not str(field_path).strip():
                errors.append(
                    FieldError("Invalid", f"{where}.fieldPath", "must be non-empty if specified", field_path)
                )
            elif re.search(r"[\r\n]", str(field_path)):
                errors.append(
                    FieldError("Invalid", f"{where}.fieldPath", "must not contain line breaks", field_path)
                )
            elif resolve_field_path(field_path, node) is None:
                errors.append(FieldError("Invalid", f"{where}.fieldPath", "must be a valid path", field_path))
    return errors


def resolve_field_path(field_path: str, node: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``cel.ValidFieldPath``: the normalised path and the schema it names, or None when it names no
    declared field (``.a.b`` and ``['a']`` steps through properties or additionalProperties only)."""
    tokens = re.findall(r"'(?:\\.|[^'\\])*'|[.\[\]]|[^.\[\]']+", field_path)
    out = ""
    schema = node
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "[":
            if i + 2 >= len(tokens) or not tokens[i + 1].startswith("'") or tokens[i + 2] != "]":
                return None
            name = tokens[i + 1][1:-1].replace("\\'", "'")
            i += 3
        elif token == ".":
            if i + 1 >= len(tokens) or tokens[i + 1] in ".[]":
                return None
            name = tokens[i + 1]
            i += 2
        else:
            return None
        if schema.get("properties") is not None:
            if name not in schema["properties"]:
                return None
            schema = schema["properties"][name]
            out += f".{name}" if out else name
        elif isinstance(schema.get("additionalProperties"), dict):
            schema = schema["additionalProperties"]
            out += f"[{name}]"
        else:
            return None
    return out, schema


def _cel(node: dict[str, Any], path: str, context: _Context, *, root: bool = False) -> list[FieldError]:
    errors: list[FieldError] = []
    rules = node.get("x-kubernetes-validations") or []
    if rules:
        self_type = cel_static.schema_decl_type(
            node, resource_root=root or bool(node.get("x-kubernetes-embedded-resource"))
        )
        for i, rule in enumerate(rules):
            where = f"{path}.x-kubernetes-validations[{i}]"
            if self_type is None:
                errors.append(
                    FieldError(
                        "Invalid", f"{where}.rule", "internal error: no CEL type for this schema", rule
                    )
                )
                continue
            try:
                compiled = cel_static.compile_rule(str(rule["rule"]), self_type)
            except cel_static.CelCompileError as exc:
                detail = str(exc)
                prefix = "" if detail.startswith("cel expression") else "compilation failed: "
                errors.append(FieldError("Invalid", f"{where}.rule", prefix + detail, rule))
                continue
            cardinality = context.cardinality
            cost = compiled.max_cost * (
                cardinality if cardinality is not None else cel_static.max_cardinality(self_type.min_size)
            )
            if cost > STATIC_ESTIMATED_COST_LIMIT:
                errors.append(
                    FieldError(
                        "Forbidden",
                        f"{where}.rule",
                        cost_message("estimated rule cost", cost, STATIC_ESTIMATED_COST_LIMIT),
                    )
                )
            context.total_cost[0] += cost
            if compiled.uses_old_self and context.uncorrelatable is not None:
                errors.append(
                    FieldError(
                        "Invalid",
                        f"{where}.rule",
                        "oldSelf cannot be used on the uncorrelatable portion of the schema within "
                        f"{context.uncorrelatable}",
                        rule["rule"],
                    )
                )
            elif not compiled.uses_old_self and rule.get("optionalOldSelf") is not None:
                errors.append(
                    FieldError(
                        "Invalid",
                        f"{where}.optionalOldSelf",
                        "may not be set if oldSelf is not used in rule",
                        rule["optionalOldSelf"],
                    )
                )
    for key, sub in (node.get("properties") or {}).items():
        if root and key == "metadata":
            continue
        errors += _cel(sub, f"{path}.properties[{key}]", context)
    items = node.get("items")
    if isinstance(items, dict):
        bound = node.get("maxItems")
        correlatable = node.get("x-kubernetes-list-type") == "map"
        child = _Context(
            cardinality=None if bound is None or context.cardinality is None else context.cardinality * bound,
            uncorrelatable=context.uncorrelatable or (None if correlatable else f"{path}.items"),
            total_cost=context.total_cost,
        )
        errors += _cel(items, f"{path}.items", child)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        bound = node.get("maxProperties")
        child = _Context(
            cardinality=None if bound is None or context.cardinality is None else context.cardinality * bound,
            uncorrelatable=context.uncorrelatable,
            total_cost=context.total_cost,
        )
        errors += _cel(extra, f"{path}.additionalProperties", child)
    return errors
