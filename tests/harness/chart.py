"""Render helm/synthrec offline with Helm's own library (helm-python-sdk, imported as helm_python).

objects = render_chart({"rbac": {"scope": "namespaced"}})      # list of manifest dicts, CRDs included
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "synthrec"
RELEASE = "synthrec"
NAMESPACE = "synthrec-system"
K8S_VERSION = "1.33.0"


def render_manifests(
    values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE, release: str = RELEASE
) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included), exactly as `helm install` renders it.

    Helm's loader logs one INFO line to stderr for the files/crds -> crds/ symlink; that is expected.
    """
    return dict(_render(json.dumps(values or {}, sort_keys=True), namespace, release))


@functools.lru_cache(maxsize=64)
def _render(values_json: str, namespace: str, release: str) -> tuple[tuple[str, str], ...]:
    # Rendering the CRDs through fromYaml/toYaml takes ~0.4 s; tests render the same values repeatedly.
    import helm_python

    with helm_python.Chart.load(str(CHART)) as chart:
        rendered = chart.render(json.loads(values_json), name=release, namespace=namespace, is_install=True)
    return tuple(rendered.items())


def render_chart(
    values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE, release: str = RELEASE
) -> list[dict[str, Any]]:
    """Every rendered Kubernetes object, in template order (NOTES.txt and empty documents left out)."""
    key = json.dumps(values or {}, sort_keys=True)
    return copy.deepcopy(_parse(_render(key, namespace, release)))  # callers may modify what they get


class GoYamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Reads Helm's output as kubectl and the API server do (Go's YAML): PyYAML's YAML 1.1 rules take
    ``1e-05`` (no dot, which Helm's toYaml writes for 1.0e-05) for a string, Go for a float."""


GoYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)$"),
    list("-+0123456789."),
)


@functools.lru_cache(maxsize=64)
def _parse(rendered: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path, text in sorted(rendered):
        if not path.endswith("NOTES.txt"):
            objects += [doc for doc in yaml.load_all(text, Loader=GoYamlLoader) if doc]
    return objects


def lint_chart(values: Mapping[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """`helm lint` of the chart with these values, as data: {'errors': [...], 'messages': [...]}."""
    import helm_python

    return helm_python.lint(str(CHART), dict(values or {}), namespace=NAMESPACE, kube_version="v1.33.0", **kw)


def notes(values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE) -> str:
    manifests = render_manifests(values, namespace=namespace)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# ------------------------------------------------------------------------------------------------ RBAC


def rule_allows(
    rule: Mapping[str, Any],
    verb: str,
    group: str,
    resource: str,
    subresource: str = "",
    name: str | None = None,
) -> bool:
    """Whether one PolicyRule grants a request, as the RBAC authorizer decides it: a rule with
    resourceNames grants only requests for one of those names (never list, watch or create)."""
    what = f"{resource}/{subresource}" if subresource else resource
    names = rule.get("resourceNames")
    return (
        (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
        and (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
        and (what in rule.get("resources", []) or "*" in rule.get("resources", []))
        and (not names or (name is not None and name in names))
    )


def allows(
    rules: list[Mapping[str, Any]],
    verb: str,
    group: str,
    resource: str,
    subresource: str = "",
    name: str | None = None,
) -> bool:
    return any(rule_allows(r, verb, group, resource, subresource, name) for r in rules)


def operator_roles(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Roles/ClusterRoles bound to the operator's ServiceAccount by the rendered bindings."""
    sa_names = {
        o["metadata"]["name"]
        for o in of_kind(objects, "ServiceAccount")
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"
    }
    bound: set[tuple[str, str, str | None]] = set()
    for binding in of_kind(objects, "RoleBinding") + of_kind(objects, "ClusterRoleBinding"):
        if any(s.get("kind") == "ServiceAccount" and s.get("name") in sa_names for s in binding["subjects"]):
            ref = binding["roleRef"]
            ns = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
            bound.add((ref["kind"], ref["name"], ns))
    return [
        o
        for o in of_kind(objects, "Role") + of_kind(objects, "ClusterRole")
        if (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) in bound
    ]


def grants(rules: list[Mapping[str, Any]]) -> set[tuple[str, str, str, str]]:
    """Every (verb, group, resource, subresource) the rules grant, expanded (no wildcards expected)."""
    out = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                resource, _, sub = res.partition("/")
                for verb in rule["verbs"]:
                    out.add((verb, group, resource, sub))
    return out
