"""Validate resources the way the cluster would, before anything runs.

Three layers, in the order the API server and the operator apply them:

1. the generated CRD schema (types, enums, ranges, patterns, unknown fields as ``kubectl
   --validate=strict`` reports them), with the CRD defaults applied afterwards;
2. the CEL rules (``x-kubernetes-validations``), including transition rules when an old version is given;
3. the pydantic models (semantic checks that need code: known presets, URI syntax, unique names).

A later layer only runs when the earlier ones found nothing, so each problem is reported once.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from synthrec import api
from synthrec.api import cel, crdgen
from synthrec.limits import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, bounded

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Problem:
    path: str  # e.g. spec.sharding.parallelism
    message: str
    layer: str  # schema | cel | model | file

    def __post_init__(self) -> None:  # a value echoed in a message can be megabytes: keep lines short
        object.__setattr__(self, "path", bounded(self.path, 300))
        object.__setattr__(self, "message", bounded(self.message, 1000))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass
class Document:
    index: int  # position in the file, from 1
    body: dict[str, Any]

    @property
    def label(self) -> str:
        kind, name = self.body.get("kind", "?"), _name_of(self.body)
        return bounded(f"{kind}/{'?' if name is None else name}", 200)


def _name_of(body: dict[str, Any]) -> Any:
    """metadata.name of a resource body that may be anything (None when there is no such field)."""
    metadata = body.get("metadata")
    return metadata.get("name") if isinstance(metadata, dict) else None


class FileError(ValueError):
    """The file itself cannot be read as resources."""


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the bounds of synthrec.limits: nesting depth (checked before it
    recurses, so 50,000 levels are an error, not a RecursionError) and the size of each document with
    its aliases expanded (an alias bomb is refused before anything walks it)."""

    def __init__(self, stream: str, name: str = "<unicode string>") -> None:
        super().__init__(stream)
        self.name = name  # what marks in messages call the file
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_YAML_DEPTH} levels of nesting", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        size, depth = _expanded(node, MAX_YAML_NODES)
        if size > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"its aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?); write the "
                "values out, or use fewer aliases",
                node.start_mark,
            )
        if depth > MAX_YAML_DEPTH:  # each alias within the limit, nested in one another beyond it
            raise yaml.composer.ComposerError(
                None,
                None,
                f"its aliases nest more than {MAX_YAML_DEPTH} levels deep; write the values out",
                node.start_mark,
            )
        return node


def _expanded(root: Any, limit: int) -> tuple[int, int]:
    """Values in a document once every alias is replaced by what it names (a shared node counts each
    time it is used; a recursive alias counts as over the limit; counting stops past ``limit``), and the
    nesting depth it then has. Recursion here stays within the composed depth: an alias names a node
    that appears earlier, so it has been measured already (or is an ancestor: recursive)."""
    measured: dict[int, tuple[int, int]] = {}
    busy: set[int] = set()

    def measure(node: Any) -> tuple[int, int]:
        key = id(node)
        if key in measured:
            return measured[key]
        if key in busy:  # an alias to a collection it is part of: infinite
            return limit + 1, 0
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        busy.add(key)
        total, deepest = 1, 0
        for child in children:
            size, depth = measure(child)
            total, deepest = total + size, max(deepest, depth)
            if total > limit:
                break
        busy.discard(key)
        measured[key] = (min(total, limit + 1), deepest + 1 if children else 0)
        return measured[key]

    return measure(root)


def load_documents(path: str | Path) -> list[Document]:
    """All non-empty YAML documents of a file; raises FileError with a clear reason.

    Bounded (synthrec.limits): the file's size, its nesting depth and its size with aliases expanded;
    it must be UTF-8 text."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_YAML_BYTES:
            raise FileError(
                f"{p}: {size} bytes is more than the {MAX_YAML_BYTES} a resource file may have; a cluster "
                "stores at most about 1.5 MiB per resource"
            )
        data = p.read_bytes()
    except OSError as exc:
        raise FileError(f"{p}: cannot read the file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FileError(
            f"{p}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, offset {exc.start}); "
            "save the file as UTF-8"
        ) from None
    try:
        docs = list(yaml.load_all(text, Loader=lambda stream: _LimitedLoader(stream, str(p))))
    except yaml.YAMLError as exc:
        raise FileError(bounded(f"{p}: not valid YAML: {exc}")) from None
    out = []
    for i, body in enumerate(docs, start=1):
        if body is None:
            continue
        if not isinstance(body, dict):
            raise FileError(f"{p}: document {i} is a {type(body).__name__}, expected a mapping (a resource)")
        out.append(Document(i, body))
    if not out:
        raise FileError(f"{p}: no resources found (expected SyntheticDataset and/or RecognitionExperiment)")
    return out


@lru_cache(maxsize=4)
def _schema(kind: str) -> dict[str, Any]:
    return crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``schema`` that rejects unknown fields (what kubectl --validate=strict does)."""
    out = copy.deepcopy(schema)

    def walk(node: dict[str, Any]) -> None:
        if "properties" in node and node.get("type") == "object":
            node["additionalProperties"] = False
            for sub in node["properties"].values():
                walk(sub)
        if isinstance(node.get("items"), dict):
            walk(node["items"])
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])

    walk(out)
    # metadata is free-form in CRD schemas; the API server checks it itself.
    out["properties"]["metadata"] = {"type": "object"}
    return out


@lru_cache(maxsize=4)
def _validator(kind: str) -> Any:
    import jsonschema

    return jsonschema.Draft4Validator(_strict(_schema(kind)))


def _path(parts: Iterator[Any] | list[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# Size rules whose default message repeats the whole value (a 100,000-item list: a 2 MB line).
_SIZE_LIMITS = {
    "maxItems": "items",
    "minItems": "items",
    "maxLength": "characters",
    "minLength": "characters",
    "maxProperties": "fields",
    "minProperties": "fields",
}
MAX_PROBLEMS = 50  # per document; the rest are counted


def _pattern_message(value: str, pattern: str) -> str:
    """A URI or model reference that fails its pattern: the parser's words for why (the regular
    expression itself helps nobody); anything else: the value and the pattern, both short."""
    from synthrec.storage import uris

    parsers = {
        uris.OUTPUT_URI_PATTERN: lambda v: uris.parse_storage_uri(v, allow_tiny=False),
        uris.STORAGE_URI_PATTERN: uris.parse_storage_uri,
        uris.VOC_URI_PATTERN: lambda v: uris.parse_storage_uri(v, tiny_set="voc"),
        uris.MODEL_REF_PATTERN: uris.parse_model_ref,
    }
    if pattern in parsers:
        try:
            parsers[pattern](value)
        except uris.URIError as exc:
            return str(exc)
    return f"{bounded(repr(value), 200)} does not match {bounded(pattern, 200)}"


def _schema_problems(kind: str, body: dict[str, Any]) -> list[Problem]:
    problems = []
    for err in sorted(_validator(kind).iter_errors(body), key=lambda e: list(e.absolute_path)):
        path = _path(list(err.absolute_path))
        if err.validator == "additionalProperties":
            unexpected = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            for field in unexpected:
                known = ", ".join(sorted(err.schema.get("properties", {})))
                problems.append(
                    Problem(_path([*err.absolute_path, field]), f"unknown field (known: {known})", "schema")
                )
            continue
        if err.validator == "enum":
            allowed = ", ".join(map(str, err.validator_value))
            problems.append(
                Problem(path, f"{bounded(repr(err.instance), 100)} is not one of: {allowed}", "schema")
            )
            continue
        if err.validator == "pattern" and isinstance(err.instance, str):
            problems.append(Problem(path, _pattern_message(err.instance, err.validator_value), "schema"))
            continue
        if err.validator in _SIZE_LIMITS:
            what, most = _SIZE_LIMITS[err.validator], err.validator_value
            side = "more" if err.validator.startswith("max") else "fewer"
            message = f"{len(err.instance)} {what}, {side} than the {most} allowed"
            problems.append(Problem(path, message, "schema"))
            continue
        if err.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", err.message)
            field = missing[0] if missing else "?"
            problems.append(
                Problem(_path([*err.absolute_path, field]), "required field is missing", "schema")
            )
            continue
        problems.append(Problem(path, err.message, "schema"))
    return problems


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill CRD defaults into ``value`` as the API server does (returns a new object)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        out = dict(value)
        for key, sub in schema.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(sub, out[key])
        if isinstance(schema.get("additionalProperties"), dict):
            for key in out:
                out[key] = apply_defaults(schema["additionalProperties"], out[key])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def _coerce_numbers(schema: dict[str, Any], value: Any) -> Any:
    """JSON numbers in ``type: number`` fields are doubles in the API server's CEL, even when written as 1."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = (
            schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        )
        return {k: _coerce_numbers(props.get(k, extra), v) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce_numbers(schema["items"], v) for v in value]
    return value


def _cel_problems(schema: dict[str, Any], value: Any, old: Any, path: str) -> list[Problem]:
    problems: list[Problem] = []
    for rule in schema.get("x-kubernetes-validations", []):
        is_transition = cel.rule_is_transition(rule["rule"])
        if is_transition and old is None:
            continue
        try:
            ok = cel.evaluate(rule["rule"], value, old if is_transition else None)
        except cel.CelEvaluationError as exc:
            problems.append(Problem(path, f"rule could not be evaluated: {exc}", "cel"))
            continue
        if not ok:
            where = path + rule.get("fieldPath", "") if path else rule.get("fieldPath", "").lstrip(".")
            problems.append(Problem(where, rule["message"], "cel"))
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                sub_old = old.get(key) if isinstance(old, dict) else None
                problems.extend(_cel_problems(sub, value[key], sub_old, f"{path}.{key}" if path else key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        # Transition rules on list items only apply to map lists matched by key; we have none with CEL.
        for i, item in enumerate(value):
            problems.extend(_cel_problems(schema["items"], item, None, f"{path}[{i}]"))
    return problems


def _model_problems(body: dict[str, Any]) -> list[Problem]:
    from pydantic import ValidationError

    try:
        api.parse_resource(body)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
            message = err["msg"].removeprefix("Value error, ")
            problems.append(Problem(_path(loc), message, "model"))
        return problems
    except ValueError as exc:
        return [Problem("", str(exc), "model")]
    return []


def validate_resource(body: dict[str, Any], old: dict[str, Any] | None = None) -> list[Problem]:
    """Every problem of one resource; an empty list means the cluster (and synthrec) will accept it."""
    kind = body.get("kind")
    if not isinstance(kind, str) or kind not in api.KINDS:
        return [
            Problem(
                "kind",
                f"unknown kind {bounded(repr(kind), 100)}: synthrec knows {', '.join(sorted(api.KINDS))}",
                "schema",
            )
        ]
    if body.get("apiVersion") != api.API_VERSION:
        return [
            Problem(
                "apiVersion",
                f"expected {api.API_VERSION!r}, got {bounded(repr(body.get('apiVersion')), 100)}",
                "schema",
            )
        ]
    name = _name_of(body)
    if not isinstance(name, str) or not _NAME.match(name):
        return [
            Problem(
                "metadata.name",
                f"{bounded(repr(name), 100)} is not a valid name (lowercase letters, digits and '-', "
                "starting and ending with a letter or digit)",
                "schema",
            )
        ]
    problems = _schema_problems(kind, body)
    if problems:
        return _at_most(problems)
    schema = _schema(kind)
    value = _coerce_numbers(schema, apply_defaults(schema, body))
    old_value = _coerce_numbers(schema, apply_defaults(schema, old)) if old is not None else None
    problems = _cel_problems(schema, value, old_value, "")
    if problems:
        return _at_most(problems)
    return _at_most(_model_problems(body))


def _at_most(problems: list[Problem]) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    rest = len(problems) - MAX_PROBLEMS
    return [*problems[:MAX_PROBLEMS], Problem("", f"... and {rest} more problems", problems[0].layer)]


@dataclass
class FileReport:
    path: Path
    results: list[tuple[Document, list[Problem]]]

    @property
    def ok(self) -> bool:
        return all(not problems for _, problems in self.results)


def validate_file(path: str | Path, old_path: str | Path | None = None) -> FileReport:
    """Validate every resource in a file; with ``old_path``, also the update rules against that version."""
    docs = load_documents(path)
    olds: dict[tuple[str, str], dict[str, Any]] = {}
    if old_path is not None:
        for d in load_documents(old_path):
            olds[(str(d.body.get("kind")), str(_name_of(d.body)))] = d.body
    results = []
    for doc in docs:
        key = (str(doc.body.get("kind")), str(_name_of(doc.body)))
        results.append((doc, validate_resource(doc.body, olds.get(key))))
    return FileReport(Path(path), results)
