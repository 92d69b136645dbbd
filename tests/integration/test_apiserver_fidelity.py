"""The test API server answers synthrec's requests the way kube-apiserver does: one table of requests,
each with the status code and the message kube-apiserver returns (its wording, from the apiextensions-
apiserver and apimachinery sources; see shared/reference/kube-apiserver-notes.md).

The steps run in order against one emulator serving synthrec's CRDs from crds/, so later steps see what
earlier ones wrote (defaults, generations, field managers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.k8s.emulator import RealisticEmulator

ROOT = Path(__file__).resolve().parents[2]
GROUP = "/apis/synthrec.io/v1alpha1"
SDS = f"{GROUP}/namespaces/default/syntheticdatasets"
REXP = f"{GROUP}/namespaces/default/recognitionexperiments"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
MERGE, JSON_PATCH = "application/merge-patch+json", "application/json-patch+json"
APPLY, SMP = "application/apply-patch+yaml", "application/strategic-merge-patch+json"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
NOT_CHECKED = (
    '<nil>: Invalid value: "null": some validation rules were not checked because the object was invalid; '
    "correct the existing errors to complete validation"
)


def dataset(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": "SyntheticDataset",
        "metadata": {"name": name},
        "spec": {
            "labels": {"preset": "tiny"},
            "generator": {"model": "tiny://sd"},
            "filter": {"clip": {"model": "tiny://clip"}},
            "sharding": {"shards": 4},
            "output": {"uri": f"s3://bucket/{name}/"},
        },
    }
    for key, value in spec.items():
        if value is None:
            body["spec"].pop(key, None)
        else:
            body["spec"][key] = value
    return body


def old_crd() -> dict[str, Any]:
    """synthrec's dataset CRD as it was before the fix: a rule whose fieldPath names no declared field."""
    crd = yaml.safe_load((ROOT / "crds" / "synthrec.io_syntheticdatasets.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["metadata"] = {"type": "object"}
    schema["x-kubernetes-validations"] = [
        {"rule": "size(self.metadata.name) <= 40", "fieldPath": ".metadata.name", "message": "too long"}
    ]
    return crd


@dataclass
class Step:
    what: str
    method: str
    path: str
    status: int
    message: str | None = None  # the Status message, exactly (None: a success, or checked by `check`)
    body: Any = None
    content_type: str = "application/json"
    params: dict[str, str] = field(default_factory=dict)
    accept: str = "application/json"
    check: Callable[[Any, Any], None] | None = None  # (response JSON, response headers)


def _spec(path: str) -> Callable[[Any, Any], None]:
    def check(body: Any, _: Any) -> None:
        node = body
        for key in path.split("."):
            node = node[key]

    return check


def _all(*checks: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def check(body: Any, headers: Any) -> None:
        for c in checks:
            c(body, headers)

    return check


def _equals(path: str, expected: Any) -> Callable[[Any, Any], None]:
    def check(body: Any, _: Any) -> None:
        node = body
        for key in path.split("."):
            node = node[int(key)] if isinstance(node, list) else node.get(key)
            if node is None:
                break
        assert node == expected, (path, node, expected)

    return check


def _strict_patch_error(unknown: str) -> Callable[[Any, Any], None]:
    """The patch handler's answer: no kind, no name, the patched object as the value."""

    def check(body: Any, _: Any) -> None:
        message = body["message"]
        assert message.startswith(' "" is invalid: patch: Invalid value: "{'), message
        assert message.endswith(f": strict decoding error: {unknown}"), message
        assert body["details"]["causes"][0]["field"] == "patch"

    return check


def _no_warning(_: Any, headers: Any) -> None:
    assert "Warning" not in headers


def _warning(text: str) -> Callable[[Any, Any], None]:
    def check(_: Any, headers: Any) -> None:
        assert text in headers.getall("Warning", []), headers.getall("Warning", [])

    return check


def _condition(ctype: str, status: str, reason: str) -> Callable[[Any, Any], None]:
    def check(body: Any, _: Any) -> None:
        found = {c["type"]: c for c in body["status"]["conditions"]}
        assert (found[ctype]["status"], found[ctype]["reason"]) == (status, reason), found

    return check


def _table(body: Any, _: Any) -> None:
    assert body["kind"] == "Table"
    names = [c["name"] for c in body["columnDefinitions"]]
    assert names[:5] == ["Name", "Phase", "Stage", "Progress", "Images"]
    assert [c["priority"] for c in body["columnDefinitions"] if c["name"] == "Output"] == [1]
    row = next(r for r in body["rows"] if r["cells"][0] == "ds1")
    assert row["cells"][1] == "Running" and row["object"]["kind"] == "PartialObjectMetadata"


def _discovery(body: Any, _: Any) -> None:
    entries = {r["name"]: r for r in body["resources"]}
    assert entries["syntheticdatasets"]["shortNames"] == ["sds"]
    assert entries["syntheticdatasets"]["categories"] == ["ml", "synthrec"]
    status = entries["syntheticdatasets/status"]
    assert "shortNames" not in status and "categories" not in status
    assert status["verbs"] == ["get", "patch", "update"]


def _managers(*expected: tuple[str, str]) -> Callable[[Any, Any], None]:
    def check(body: Any, _: Any) -> None:
        found = {(e["manager"], e["operation"]) for e in body["metadata"]["managedFields"]}
        assert set(expected) <= found, found

    return check


LONG = "a" * 41
SUPPORTED_PHASES = '"Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed"'
JOB = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "j1"},
    "spec": {
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "w", "image": "busybox", "args": ["a"]}],
            }
        }
    },
}

STEPS = [
    # ----------------------------------------------------------- the CRDs themselves
    Step(
        "a CRD whose rule names an undeclared fieldPath is rejected",
        "POST",
        CRDS,
        422,
        'CustomResourceDefinition.apiextensions.k8s.io "syntheticdatasets.synthrec.io" is invalid: '
        "spec.versions[0].schema.openAPIV3Schema.x-kubernetes-validations[0].fieldPath: "
        'Invalid value: ".metadata.name": must be a valid path',
        body=old_crd(),
    ),
    Step(
        "the committed CRD is accepted with server-side apply",
        "PATCH",
        f"{CRDS}/syntheticdatasets.synthrec.io",
        201,
        body=yaml.safe_load((ROOT / "crds" / "synthrec.io_syntheticdatasets.yaml").read_text()),
        content_type=APPLY,
        params={"fieldManager": "kubectl", "fieldValidation": "Strict"},
    ),
    Step(
        "the CRD is Established with its names accepted",
        "GET",
        f"{CRDS}/syntheticdatasets.synthrec.io",
        200,
        check=_all(
            _condition("Established", "True", "InitialNamesAccepted"),
            _condition("NamesAccepted", "True", "NoConflicts"),
        ),
    ),
    Step(
        "the experiment CRD is accepted by a create",
        "POST",
        CRDS,
        201,
        body=yaml.safe_load((ROOT / "crds" / "synthrec.io_recognitionexperiments.yaml").read_text()),
    ),
    Step("discovery: short names only on the main entry", "GET", GROUP, 200, check=_discovery),
    Step("the server version is in the chart's range", "GET", "/version", 200, check=_equals("minor", "33")),
    # ----------------------------------------------------------- creates
    Step(
        "a valid dataset is created with its defaults filled",
        "POST",
        SDS,
        201,
        body=dataset("ds1"),
        check=_all(
            _equals("spec.generator.guidanceScale", 3.0),
            _equals("spec.filter.keepPerClass", 800),
            _equals("metadata.generation", 1),
            _no_warning,
        ),
    ),
    Step(
        "a duplicate name",
        "POST",
        SDS,
        409,
        'syntheticdatasets.synthrec.io "ds1" already exists',
        body=dataset("ds1"),
    ),
    Step(
        "an unknown field with fieldValidation=Strict",
        "POST",
        SDS,
        400,
        'SyntheticDataset in version "v1alpha1" cannot be handled as a SyntheticDataset: strict decoding '
        'error: unknown field "spec.bogus", unknown field "spec.sharding.extra"',
        body=dataset("ds2", bogus=1, sharding={"shards": 2, "extra": True}),
        params={"fieldValidation": "Strict"},
    ),
    Step(
        "an unknown field by default (Warn): pruned, with a warning",
        "POST",
        SDS,
        201,
        body=dataset("ds2", bogus=1),
        check=_all(_warning('299 - "unknown field \\"spec.bogus\\""'), _equals("spec.bogus", None)),
    ),
    Step(
        "an unknown field with fieldValidation=Ignore: pruned silently",
        "POST",
        SDS,
        201,
        body=dataset("ds3", bogus=1),
        params={"fieldValidation": "Ignore"},
        check=_all(_no_warning, _equals("spec.bogus", None)),
    ),
    Step(
        "an enum value outside the list",
        "POST",
        SDS,
        422,
        'SyntheticDataset.synthrec.io "ds4" is invalid: [spec.prompts.strategy: Unsupported value: '
        '"fancy": supported values: "basic", "language-enhancement", ' + NOT_CHECKED + "]",
        body=dataset("ds4", prompts={"strategy": "fancy"}),
    ),
    Step(
        "a string where an integer belongs",
        "POST",
        SDS,
        422,
        'SyntheticDataset.synthrec.io "ds4" is invalid: [spec.sharding.shards: Invalid value: "four": '
        'spec.sharding.shards in body must be of type integer: "string", ' + NOT_CHECKED + "]",
        body=dataset("ds4", sharding={"shards": "four"}),
    ),
    Step(
        "a value below the minimum",
        "POST",
        SDS,
        422,
        'SyntheticDataset.synthrec.io "ds4" is invalid: spec.generator.steps: Invalid value: 0: '
        "spec.generator.steps in body should be greater than or equal to 1",
        body=dataset("ds4", generator={"model": "tiny://sd", "steps": 0}),
    ),
    Step(
        "a missing required field",
        "POST",
        SDS,
        422,
        'SyntheticDataset.synthrec.io "ds4" is invalid: [spec.labels: Required value, ' + NOT_CHECKED + "]",
        body=dataset("ds4", labels=None),
    ),
    Step(
        "a name longer than the CRD allows",
        "POST",
        SDS,
        422,
        f'SyntheticDataset.synthrec.io "{LONG}" is invalid: [metadata.name: Too long: may not be more than '
        "40 bytes, " + NOT_CHECKED + "]",
        body=dataset(LONG),
    ),
    Step(
        "a name that is no DNS subdomain",
        "POST",
        SDS,
        422,
        'SyntheticDataset.synthrec.io "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a '
        "lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
        "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
        "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        body=dataset("Bad_Name"),
    ),
    Step(
        "a CEL cross-field rule, reported at its fieldPath",
        "POST",
        SDS,
        422,
        'SyntheticDataset.synthrec.io "ds4" is invalid: spec.sharding.parallelism: Invalid value: "object": '
        "sharding.parallelism must not exceed sharding.shards",
        body=dataset("ds4", sharding={"shards": 2, "parallelism": 5}),
    ),
    Step(
        "a CEL rule of the experiment (shots need real training data)",
        "POST",
        REXP,
        422,
        'RecognitionExperiment.synthrec.io "ex1" is invalid: spec.data.realTrain: Required value: '
        "few-shot runs (matrix.shots > 0) need data.realTrain",
        body={
            "apiVersion": "synthrec.io/v1alpha1",
            "kind": "RecognitionExperiment",
            "metadata": {"name": "ex1"},
            "spec": {
                "labels": {"preset": "tiny"},
                "data": {"test": {"uri": "s3://bucket/test/"}},
                "matrix": {"shots": [4]},
                "output": {"uri": "s3://bucket/ex1/"},
            },
        },
    ),
    Step(
        "status sent on create is dropped (status subresource)",
        "POST",
        SDS,
        201,
        body={**dataset("ds5"), "status": {"phase": "Succeeded"}},
        check=_equals("status", None),
    ),
    Step("a custom resource that is not served", "POST", f"{GROUP}/namespaces/default/widgets", 404),
    # ----------------------------------------------------------- updates
    Step(
        "a merge patch of a mutable field bumps the generation",
        "PATCH",
        f"{SDS}/ds1",
        200,
        body={"spec": {"sharding": {"parallelism": 2}}},
        content_type=MERGE,
        check=_equals("metadata.generation", 2),
    ),
    Step(
        "a label change does not bump the generation",
        "PATCH",
        f"{SDS}/ds1",
        200,
        body={"metadata": {"labels": {"team": "vision"}}},
        content_type=MERGE,
        check=_equals("metadata.generation", 2),
    ),
    Step(
        "a transition rule keeps spec.generator immutable",
        "PATCH",
        f"{SDS}/ds1",
        422,
        'SyntheticDataset.synthrec.io "ds1" is invalid: spec.generator: Invalid value: "object": '
        "spec.generator is immutable: create a new resource (e.g. name-v2) to change it",
        body={"spec": {"generator": {"steps": 10}}},
        content_type=MERGE,
    ),
    Step(
        "an unknown field in a strict patch",
        "PATCH",
        f"{SDS}/ds1",
        422,
        body={"spec": {"nope": 1}},
        check=_strict_patch_error('unknown field "spec.nope"'),
        content_type=MERGE,
        params={"fieldValidation": "Strict"},
    ),
    Step(
        "a strategic merge patch of a custom resource",
        "PATCH",
        f"{SDS}/ds1",
        415,
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        body={"spec": {"sharding": {"parallelism": 1}}},
        content_type=SMP,
    ),
    Step(
        "a PUT without resourceVersion",
        "PUT",
        f"{SDS}/ds1",
        422,
        'syntheticdatasets.synthrec.io "ds1" is invalid: metadata.resourceVersion: Invalid value: 0x0: '
        "must be specified for an update",
        body=dataset("ds1"),
    ),
    Step(
        "a PUT with a stale resourceVersion",
        "PUT",
        f"{SDS}/ds1",
        409,
        'Operation cannot be fulfilled on syntheticdatasets.synthrec.io "ds1": the object has been modified; '
        "please apply your changes to the latest version and try again",
        body={**dataset("ds1"), "metadata": {"name": "ds1", "resourceVersion": "1"}},
    ),
    Step(
        "a JSON patch whose test fails",
        "PATCH",
        f"{SDS}/ds1",
        422,
        "the server rejected our request due to an error in our request",
        body=[{"op": "test", "path": "/metadata/resourceVersion", "value": "1"}],
        content_type=JSON_PATCH,
    ),
    # ----------------------------------------------------------- the status subresource
    Step(
        "an invalid status through /status",
        "PATCH",
        f"{SDS}/ds1/status",
        422,
        'SyntheticDataset.synthrec.io "ds1" is invalid: [status.phase: Unsupported value: "Done": '
        f"supported values: {SUPPORTED_PHASES}, " + NOT_CHECKED + "]",
        body={"status": {"phase": "Done"}},
        content_type=MERGE,
    ),
    Step(
        "/status ignores spec and labels, and keeps the generation",
        "PATCH",
        f"{SDS}/ds1/status",
        200,
        body={
            "status": {"phase": "Running"},
            "spec": {"sharding": {"parallelism": 1}},
            "metadata": {"labels": {"x": "y"}},
        },
        content_type=MERGE,
        check=_all(
            _equals("status.phase", "Running"),
            _equals("spec.sharding.parallelism", 2),
            _equals("metadata.labels.x", None),
            _equals("metadata.generation", 2),
        ),
    ),
    Step(
        "the main resource ignores status",
        "PATCH",
        f"{SDS}/ds1",
        200,
        body={"status": {"phase": "Failed"}},
        content_type=MERGE,
        check=_equals("status.phase", "Running"),
    ),
    # ----------------------------------------------------------- server-side apply
    Step(
        "apply without a field manager",
        "PATCH",
        f"{SDS}/ds6",
        422,
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
        body=dataset("ds6"),
        content_type=APPLY,
    ),
    Step(
        "apply creates a dataset",
        "PATCH",
        f"{SDS}/ds6",
        201,
        body=dataset("ds6", sharding={"shards": 4, "parallelism": 2}),
        content_type=APPLY,
        params={"fieldManager": "gitops"},
        check=_managers(("gitops", "Apply")),
    ),
    Step(
        "another manager applying a different value conflicts",
        "PATCH",
        f"{SDS}/ds6",
        409,
        'Apply failed with 1 conflict: conflict with "gitops": .spec.sharding.parallelism',
        body={**dataset("ds6"), "spec": {"sharding": {"shards": 4, "parallelism": 3}}},
        content_type=APPLY,
        params={"fieldManager": "kubectl"},
    ),
    Step(
        "force takes the field over",
        "PATCH",
        f"{SDS}/ds6",
        200,
        body={**dataset("ds6"), "spec": {"sharding": {"shards": 4, "parallelism": 3}}},
        content_type=APPLY,
        params={"fieldManager": "kubectl", "force": "true"},
        check=_all(
            _equals("spec.sharding.parallelism", 3), _managers(("gitops", "Apply"), ("kubectl", "Apply"))
        ),
    ),
    Step(
        "force on a merge patch",
        "PATCH",
        f"{SDS}/ds6",
        422,
        'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be specified for non-apply patch',
        body={"spec": {}},
        content_type=MERGE,
        params={"force": "true"},
    ),
    Step(
        "apply creates a Job",
        "PATCH",
        f"{JOBS}/j1",
        201,
        body=JOB,
        content_type=APPLY,
        params={"fieldManager": "synthrec"},
        check=_all(_equals("spec.backoffLimit", 6), _managers(("synthrec", "Apply"))),
    ),
    Step(
        "apply creates a ConfigMap",
        "PATCH",
        f"{CONFIGMAPS}/c1",
        201,
        body={
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c1"},
            "data": {"task.json": "{}"},
        },
        content_type=APPLY,
        params={"fieldManager": "synthrec"},
    ),
    Step(
        "a second manager changing an applied ConfigMap key conflicts",
        "PATCH",
        f"{CONFIGMAPS}/c1",
        409,
        'Apply failed with 1 conflict: conflict with "synthrec": .data.task.json',
        body={
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c1"},
            "data": {"task.json": "[]"},
        },
        content_type=APPLY,
        params={"fieldManager": "someone-else"},
    ),
    # ----------------------------------------------------------- reads
    Step("a Table with the printer columns", "GET", SDS, 200, accept=TABLE, check=_table),
    Step("a missing object", "GET", f"{SDS}/nope", 404, 'syntheticdatasets.synthrec.io "nope" not found'),
    Step("delete", "DELETE", f"{SDS}/ds3", 200),
]


async def test_requests_get_kube_apiservers_answers(k8s: RealisticEmulator) -> None:
    assert len(STEPS) >= 30
    failures = []
    async with aiohttp.ClientSession(headers={"User-Agent": "fidelity-test/1.0"}) as session:
        for step in STEPS:
            data = None if step.body is None else json.dumps(step.body)
            headers = {"Accept": step.accept}
            if data is not None:
                headers["Content-Type"] = step.content_type
            url = str(k8s.url).rstrip("/") + step.path
            async with session.request(step.method, url, data=data, params=step.params, headers=headers) as r:
                text = await r.text()
                body = json.loads(text) if text else None
                problems = []
                if r.status != step.status:
                    problems.append(f"status {r.status} != {step.status}")
                if step.message is not None and (body or {}).get("message") != step.message:
                    problems.append(f"message {(body or {}).get('message')!r}\n   expected {step.message!r}")
                if step.status >= 400 and (body or {}).get("code") != step.status:
                    problems.append(f"Status code {(body or {}).get('code')}")
                if step.check is not None and r.status == step.status:
                    try:
                        step.check(body, r.headers)
                    except (AssertionError, KeyError, TypeError) as exc:
                        problems.append(f"check: {exc!r}")
                if problems:
                    failures.append(f"{step.what}: " + "; ".join(problems))
    assert not failures, "\n".join(failures)
