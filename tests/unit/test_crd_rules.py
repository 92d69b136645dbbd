"""crds/ passes kube-apiserver's own CRD validation (tests/k8s/crd_rules.py, written from the
apiextensions-apiserver source, not from synthrec's generator), and that check catches what a real API
server rejects: the metadata.name fieldPath defect the CRDs once had, non-structural schemas, rules that
do not compile or cost too much.

CEL is checked by a second implementation: cel-rust (the ``common-expression-language`` package) parses
and runs every rule, and its verdicts must agree with cel-python's (synthrec.api.cel, which ``synthrec
validate`` uses) on the examples.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import cel as cel_rust
import pytest
import yaml

from synthrec.api import cel as synthrec_cel
from tests.k8s import cel_static, schema_validation
from tests.k8s.crd_rules import (
    STATIC_ESTIMATED_COST_LIMIT,
    STATIC_ESTIMATED_CRD_COST_LIMIT,
    validate_crd,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))
ROOT_PATH = "spec.versions[0].schema.openAPIV3Schema"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def sds_crd() -> dict[str, Any]:
    return load(ROOT / "crds" / "synthrec.io_syntheticdatasets.yaml")


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def rules_with_types(
    schema: dict[str, Any], path: str = "", root: bool = True
) -> list[tuple[str, Any, dict]]:
    """(path, CEL type of self, rule) for every x-kubernetes-validations entry, with list/map bounds."""
    out = [
        (path, cel_static.schema_decl_type(schema, resource_root=root), rule)
        for rule in schema.get("x-kubernetes-validations") or []
    ]
    for key, sub in (schema.get("properties") or {}).items():
        out += rules_with_types(sub, f"{path}.{key}", False)
    if isinstance(schema.get("items"), dict):
        out += rules_with_types(schema["items"], f"{path}[]", False)
    return out


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_kube_apiserver_accepts_the_committed_crds(path: Path) -> None:
    assert [str(e) for e in validate_crd(load(path))] == []


def test_the_old_metadata_name_rule_is_rejected_as_kube_apiserver_did() -> None:
    """The rule the CRDs carried until the fix: metadata declared bare, a fieldPath into it."""
    old = sds_crd()
    schema = schema_of(old)
    schema["properties"]["metadata"] = {"type": "object"}
    schema["x-kubernetes-validations"] = [
        {
            "rule": "size(self.metadata.name) <= 40",
            "fieldPath": ".metadata.name",
            "message": "metadata.name must be at most 40 characters",
        }
    ]
    assert [str(e) for e in validate_crd(old)] == [
        f'{ROOT_PATH}.x-kubernetes-validations[0].fieldPath: Invalid value: ".metadata.name": '
        "must be a valid path"
    ]


def test_the_committed_crds_limit_the_name_length_where_kubernetes_allows_it() -> None:
    for path in CRD_FILES:
        metadata = schema_of(load(path))["properties"]["metadata"]
        assert set(metadata) == {"type", "properties"} and set(metadata["properties"]) == {"name"}
        assert metadata["properties"]["name"]["maxLength"] == 40


def _mutated(change: Any) -> list[str]:
    crd = sds_crd()
    change(schema_of(crd))
    return [str(e) for e in validate_crd(crd)]


SPEC = "properties[spec]"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda s: s["properties"]["spec"]["properties"].update(x={"description": "no type"}),
            f"{ROOT_PATH}.{SPEC}.properties[x].type: Required value: must not be empty for specified object "
            "fields",
        ),
        (
            lambda s: s["properties"]["spec"].update(additionalProperties={"type": "string"}),
            f"{ROOT_PATH}.{SPEC}.additionalProperties: Forbidden: additionalProperties and properties are "
            "mutual exclusive",
        ),
        (
            lambda s: s["properties"]["metadata"]["properties"].update(labels={"type": "object"}),
            f"{ROOT_PATH}.properties[metadata]: Forbidden: must not specify anything other than name and "
            "generateName, but metadata is implicitly specified",
        ),
        (
            lambda s: s["properties"]["spec"]["properties"].update(tags={"type": "array"}),
            f"{ROOT_PATH}.{SPEC}.properties[tags].items: Required value: must be specified",
        ),
        (
            lambda s: s["properties"]["spec"]["properties"]["sharding"]["properties"]["shards"].update(
                default="four"
            ),
            f'{ROOT_PATH}.{SPEC}.properties[sharding].properties[shards].default: Invalid value: "four": '
            f"{ROOT_PATH}.{SPEC}.properties[sharding].properties[shards].default in body must be of type "
            'integer: "string"',
        ),
        (
            lambda s: s["properties"]["spec"]["properties"]["sharding"].update(default={"bogus": 1}),
            f'{ROOT_PATH}.{SPEC}.properties[sharding].default: Invalid value: {{"bogus":1}}: must not have '
            "unknown fields",
        ),
        (
            lambda s: s["properties"]["spec"]["x-kubernetes-validations"].append(
                {"rule": "self.sharding.shards >", "message": "m"}
            ),
            "compilation failed: ERROR: <input>:1:",
        ),
        (
            lambda s: s["properties"]["spec"]["x-kubernetes-validations"].append(
                {"rule": "self.sharding.nosuch > 1", "message": "m"}
            ),
            "compilation failed: ERROR: <input>:1:15: undefined field 'nosuch'",
        ),
        (
            lambda s: s["properties"]["spec"]["x-kubernetes-validations"].append(
                {"rule": "self.sharding.shards + 'x'", "message": "m"}
            ),
            "found no matching overload for '_+_' applied to '(int, string)'",
        ),
        (
            lambda s: s["properties"]["spec"]["x-kubernetes-validations"].append(
                {"rule": "self.sharding.shards", "message": "m"}
            ),
            "cel expression must evaluate to a bool",
        ),
        (
            lambda s: s["properties"]["spec"]["x-kubernetes-validations"].append(
                {"rule": "true", "message": "two\nlines"}
            ),
            'message: Invalid value: "two\\nlines": must not contain line breaks',
        ),
        (
            lambda s: s["properties"]["spec"]["x-kubernetes-validations"].append(
                {"rule": "true", "reason": "FieldValueWrong"}
            ),
            'reason: Unsupported value: "FieldValueWrong": supported values: "FieldValueDuplicate", '
            '"FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired"',
        ),
        (
            lambda s: s["properties"]["spec"]["properties"].update(
                words={
                    "type": "array",
                    "items": {"type": "string"},
                    "x-kubernetes-validations": [{"rule": "self.all(x, self.all(y, x != y || x == y))"}],
                }
            ),
            "rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try "
            "simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, "
            "and strings are declared)",
        ),
        (
            lambda s: s["properties"]["spec"]["properties"].update(
                steps={
                    "type": "array",
                    "maxItems": 8,
                    "items": {
                        "type": "object",
                        "properties": {"n": {"type": "integer"}},
                        "x-kubernetes-validations": [{"rule": "self.n == oldSelf.n"}],
                    },
                }
            ),
            "oldSelf cannot be used on the uncorrelatable portion of the schema",
        ),
        (
            lambda s: s["properties"]["spec"]["properties"].update(
                named={
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                }
            ),
            "this property is in x-kubernetes-list-map-keys, so it must have a default or be a required "
            "property",
        ),
    ],
    ids=[
        "untyped-node",
        "additionalProperties-beside-properties",
        "metadata-labels",
        "array-without-items",
        "default-of-the-wrong-type",
        "default-with-unknown-field",
        "syntax-error",
        "undefined-field",
        "no-matching-overload",
        "not-a-bool",
        "message-with-line-break",
        "unsupported-reason",
        "unbounded-nested-loop",
        "transition-rule-in-atomic-list",
        "list-map-key-not-required",
    ],
)
def test_kube_apiserver_rejections_are_reported(change: Any, expected: str) -> None:
    errors = _mutated(change)
    assert any(expected in e for e in errors), errors


def test_every_rule_compiles_in_both_implementations_and_fits_the_cost_budget() -> None:
    total = {}
    for path in CRD_FILES:
        crd = load(path)
        costs = []
        for where, self_type, rule in rules_with_types(schema_of(crd)):
            cel_rust.compile(rule["rule"])  # raises ValueError on what cel-go's parser would reject
            compiled = cel_static.compile_rule(rule["rule"], self_type)
            assert compiled.max_cost < STATIC_ESTIMATED_COST_LIMIT, (where, rule["rule"], compiled.max_cost)
            costs.append(compiled.max_cost)
        total[path.name] = sum(costs)
        assert total[path.name] < STATIC_ESTIMATED_CRD_COST_LIMIT
    # A rule over every template string costs what cel-go estimates for it (maxItems x maxLength).
    assert max(total.values()) > 10_000


@pytest.mark.parametrize(
    "rule",
    [
        "self.a.all(x, x.contains('{c}'))",
        "has(self.b) ? self.b.exists(y, y > 1) : size(self.a) <= 3",
        "self.s.matches('^[a-z]+$') && self.s.startsWith('a') && !self.s.endsWith('z')",
        "[1, 2, 3].map(x, x * 2).filter(y, y > 2).exists_one(z, z == 4)",
        "{'k': 1}['k'] == 1 && 'k' in {'k': 1} && 2 in [1, 2]",
        "self.a == oldSelf.a",
        "self.f >= 0.5 || -self.n < 3u",
        "r'raw\\d' != \"x\" && b'bytes' != b'x' && '''tri''' == 'tri'",
    ],
)
def test_the_parser_accepts_what_cel_rust_accepts(rule: str) -> None:
    cel_rust.compile(rule)
    cel_static.parse(rule)


@pytest.mark.parametrize("rule", ["self.a ==", "has(self)", "1 +* 2", "self.a.foo(", "(1 + 2"])
def test_the_parser_rejects_what_cel_rust_rejects(rule: str) -> None:
    with pytest.raises(ValueError):
        cel_rust.compile(rule)
    with pytest.raises(cel_static.CelCompileError):
        cel_static.parse(rule)


def _example_specs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion", "").startswith("synthrec.io/"):
                out.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return out


@pytest.mark.parametrize(("where", "doc"), _example_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_cel_rust_and_cel_python_agree_on_every_rule_for_the_examples(
    where: str, doc: dict[str, Any]
) -> None:
    crd = next(load(p) for p in CRD_FILES if load(p)["spec"]["names"]["kind"] == doc["kind"])
    schema = schema_of(crd)
    obj = schema_validation.default(schema_validation.prune(doc, schema, root=True), schema)
    broken = copy.deepcopy(obj)
    if "sharding" in broken["spec"]:
        broken["spec"]["sharding"]["parallelism"] = broken["spec"]["sharding"]["shards"] + 1
    if "matrix" in broken["spec"]:
        broken["spec"]["matrix"]["shots"] = [-1]
    checked = 0
    for value in (obj, broken):
        for here, _, has_old, node, _, is_root in schema_validation._walk(
            value, value, schema, "", root=True, has_old=True
        ):
            for rule in node["x-kubernetes-validations"]:
                context = schema_validation._cel_value(here, node, root=is_root)
                rust = cel_rust.compile(rule["rule"]).execute({"self": context, "oldSelf": context})
                python = synthrec_cel.evaluate(rule["rule"], context, context if has_old else None)
                assert rust == python, (where, rule["rule"])
                checked += 1
    assert checked >= 10
