"""Server-side defaulting and validation of the builtins the operator writes (Job, Pod, Secret, Service).

Only what a real API server does and a controller would trip over: Job defaults (parallelism,
completions, backoffLimit, podReplacementPolicy, selector and template labels), the Job validation
rules around Indexed Jobs and podFailurePolicy, immutable Job fields, container defaults, and
``Secret.stringData`` folded into ``data``, pod ``hostname``/``subdomain`` as DNS labels, and Service
defaults and validation (a DNS-1035 name, headless ``clusterIP: None`` only for ClusterIP Services, ports,
selectors, an immutable clusterIP). Objects are mutated in place (callers pass copies).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

MAX_INT32 = 2147483647
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # <= 15 chars, a letter, no '--'
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
JOB_LABELS = (
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "controller-uid",
    "job-name",
)


class Undecodable(Exception):
    """The body cannot be decoded into the type (a malformed time, a string for a number): 400, before any
    validation, ``<Kind> in version "<v>" cannot be handled as a <Kind>: <why>``."""


class Invalid(Exception):
    """Field errors; rendered as 422 ``<Kind> "<name>" is invalid: <field>: <error>``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def admit(resource: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Default and validate ``obj`` (a create when ``old`` is None, else an update of ``old``)."""
    errors: list[str] = []
    name = obj["metadata"].get("name", "")
    if old is None and (len(name) > 253 or not DNS_SUBDOMAIN.match(name)):
        errors.append(
            f"metadata.name: Invalid value: {json.dumps(name)}: a lowercase RFC 1123 subdomain must consist "
            "of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
            "character (e.g. 'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        )
    if resource == "batch/v1/jobs":
        _admit_job(obj, old, errors)
    elif resource == "v1/pods":
        for container in _containers(obj.get("spec") or {}):
            _default_container(container)
        _validate_pod_names(obj.get("spec") or {}, "spec", errors)
    elif resource == "v1/secrets":
        _admit_secret(obj)
    elif resource == "v1/services":
        _admit_service(obj, old, errors)
    elif resource == "coordination.k8s.io/v1/leases":
        _admit_lease(obj, errors)
    if errors:
        raise Invalid(errors)


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c for key in ("initContainers", "containers") for c in pod_spec.get(key) or [] if isinstance(c, dict)
    ]


def _default_container(container: dict[str, Any]) -> None:
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault(
        "imagePullPolicy", "Always" if str(container.get("image", "")).endswith(":latest") else "IfNotPresent"
    )


def _admit_secret(obj: dict[str, Any]) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = dict(obj.get("data") or {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data


# metav1.MicroTime decodes with Go's RFC3339Micro layout: exactly six fraction digits.
MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"


def _admit_lease(lease: dict[str, Any], errors: list[str]) -> None:
    """Decoding (MicroTime, integer fields) and ValidateLeaseSpec of pkg/apis/coordination/validation."""
    spec = lease.get("spec") or {}
    for field in ("acquireTime", "renewTime"):
        value = spec.get(field)
        if value is not None and not (isinstance(value, str) and MICRO_TIME.match(value)):
            raise Undecodable(
                f'Lease in version "v1" cannot be handled as a Lease: parsing time {json.dumps(value)} as '
                f'"{RFC3339_MICRO}": cannot parse {json.dumps(value)} as "{RFC3339_MICRO}"'
            )
    for field in ("leaseDurationSeconds", "leaseTransitions"):
        value = spec.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise Undecodable(
                f'Lease in version "v1" cannot be handled as a Lease: json: cannot unmarshal '
                f"{type(value).__name__} into Go struct field LeaseSpec.spec.{field} of type int32"
            )
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        errors.append(f"spec.leaseDurationSeconds: Invalid value: {duration}: must be greater than 0")
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        errors.append(
            f"spec.leaseTransitions: Invalid value: {transitions}: must be greater than or equal to 0"
        )


def _admit_job(job: dict[str, Any], old: dict[str, Any] | None, errors: list[str]) -> None:
    meta, spec = job["metadata"], job.setdefault("spec", {})
    if len(meta.get("name", "")) > 63:
        errors.append(
            "metadata.name: Invalid value: must be no more than 63 characters (it becomes a label value)"
        )
    _default_job(job)
    template_spec = spec.get("template", {}).get("spec") or {}
    _validate_pod_names(template_spec, "spec.template.spec", errors)
    indexed = spec["completionMode"] == "Indexed"
    restart = template_spec.get("restartPolicy")
    if restart not in ("Never", "OnFailure"):
        errors.append(
            "spec.template.spec.restartPolicy: Required value: valid values: "
            f'"OnFailure", "Never" (got {restart!r})'
        )
    if not template_spec.get("containers"):
        errors.append("spec.template.spec.containers: Required value")
    for i, container in enumerate(template_spec.get("containers") or []):
        for field in ("name", "image"):
            if not container.get(field):
                errors.append(f"spec.template.spec.containers[{i}].{field}: Required value")
    if indexed and spec.get("completions") is None:
        errors.append("spec.completions: Required value: when completion mode is Indexed")
    if spec.get("backoffLimitPerIndex") is not None:
        if not indexed:
            errors.append("spec.backoffLimitPerIndex: Forbidden: requires indexed completion mode")
        if (spec.get("completions") or 0) > 100000:
            errors.append(
                "spec.completions: Invalid value: must be less than or equal to 100000 "
                "when backoffLimitPerIndex is specified"
            )
    if spec.get("maxFailedIndexes") is not None:
        if spec.get("backoffLimitPerIndex") is None:
            errors.append(
                "spec.maxFailedIndexes: Forbidden: cannot set maxFailedIndexes without backoffLimitPerIndex"
            )
        elif spec["maxFailedIndexes"] > (spec.get("completions") or 0):
            errors.append("spec.maxFailedIndexes: Invalid value: must be less than or equal to completions")
    if spec.get("successPolicy") is not None and not indexed:
        errors.append("spec.successPolicy: Invalid value: requires indexed completion mode")
    policy = spec.get("podFailurePolicy")
    if policy is not None:
        if restart != "Never":
            errors.append("spec.podFailurePolicy: Invalid value: only allowed with restartPolicy Never")
        if spec["podReplacementPolicy"] != "Failed":
            errors.append(
                "spec.podReplacementPolicy: Not supported: must be Failed when podFailurePolicy is set"
            )
        for i, rule in enumerate(policy.get("rules") or []):
            _validate_pod_failure_rule(i, rule, spec, errors)
    if old is not None:
        _validate_job_update(spec, old.get("spec") or {}, errors)


def _default_job(job: dict[str, Any]) -> None:
    meta, spec = job["metadata"], job["spec"]
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    if spec.get("backoffLimit") is None:
        spec["backoffLimit"] = MAX_INT32 if spec.get("backoffLimitPerIndex") is not None else 6
    if spec.get("podReplacementPolicy") is None:
        spec["podReplacementPolicy"] = (
            "Failed" if spec.get("podFailurePolicy") is not None else "TerminatingOrFailed"
        )
    for rule in (spec.get("podFailurePolicy") or {}).get("rules") or []:
        for condition in rule.get("onPodConditions") or []:
            condition.setdefault("status", "True")
    uid, name = meta["uid"], meta["name"]
    spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
    template = spec.setdefault("template", {})
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    for key, value in zip(JOB_LABELS, (uid, name, uid, name), strict=True):
        labels.setdefault(key, value)
    for container in _containers(template.get("spec") or {}):
        _default_container(container)
    if not meta.get("labels"):  # a Job without labels gets its template's
        meta["labels"] = dict(labels)


def _validate_pod_failure_rule(i: int, rule: dict[str, Any], spec: dict[str, Any], errors: list[str]) -> None:
    where = f"spec.podFailurePolicy.rules[{i}]"
    action = rule.get("action")
    if action not in ("FailJob", "FailIndex", "Ignore", "Count"):
        errors.append(f"{where}.action: Unsupported value: {action!r}")
    if action == "FailIndex" and spec.get("backoffLimitPerIndex") is None:
        errors.append(f"{where}.action: Forbidden: FailIndex requires backoffLimitPerIndex")
    exit_codes, conditions = rule.get("onExitCodes"), rule.get("onPodConditions")
    if (exit_codes is None) == (conditions is None):
        errors.append(
            f"{where}: Invalid value: specifying exactly one of onExitCodes and onPodConditions is required"
        )
    if exit_codes is not None:
        if exit_codes.get("operator") not in ("In", "NotIn"):
            errors.append(f"{where}.onExitCodes.operator: Unsupported value: {exit_codes.get('operator')!r}")
        values = exit_codes.get("values") or []
        if not values:
            errors.append(f"{where}.onExitCodes.values: Invalid value: at least one value is required")
        if exit_codes.get("operator") == "In" and 0 in values:
            errors.append(f"{where}.onExitCodes.values: Invalid value: 0: must not be 0 for the In operator")


def _validate_job_update(spec: dict[str, Any], old_spec: dict[str, Any], errors: list[str]) -> None:
    for field in ("template", "selector", "completionMode", "podFailurePolicy", "backoffLimitPerIndex"):
        if spec.get(field) != old_spec.get(field):
            errors.append(f"spec.{field}: Invalid value: field is immutable")
    if spec.get("completions") != old_spec.get("completions"):
        elastic = spec["completionMode"] == "Indexed" and spec.get("completions") == spec.get("parallelism")
        if not elastic:
            errors.append(
                "spec.completions: Invalid value: field is immutable "
                "(except for Indexed Jobs changing completions and parallelism together)"
            )


def _validate_pod_names(pod_spec: dict[str, Any], where: str, errors: list[str]) -> None:
    """A pod's hostname and subdomain are RFC 1123 labels (its DNS name is <hostname>.<subdomain>...)."""
    for field in ("hostname", "subdomain"):
        value = pod_spec.get(field)
        if value is not None and (len(value) > 63 or not DNS_LABEL.match(value)):
            errors.append(
                f"{where}.{field}: Invalid value: {json.dumps(value)}: a lowercase RFC 1123 label must "
                "consist of lower case alphanumeric characters or '-', and must start and end with an "
                "alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            )


def _admit_service(svc: dict[str, Any], old: dict[str, Any] | None, errors: list[str]) -> None:
    name = svc["metadata"].get("name", "")
    if old is None and (len(name) > 63 or not DNS_1035_LABEL.match(name)):
        errors.append(
            f"metadata.name: Invalid value: {json.dumps(name)}: a DNS-1035 label must consist of lower case "
            "alphanumeric characters or '-', start with an alphabetic character, and end with an "
            "alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is "
            "'[a-z]([-a-z0-9]*[a-z0-9])?')"
        )
    spec = svc.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    kind = spec["type"]
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        errors.append(f"spec.type: Unsupported value: {json.dumps(kind)}")
    headless = spec.get("clusterIP") == "None"
    if headless and kind != "ClusterIP":
        errors.append('spec.clusterIPs[0]: Invalid value: ["None"]: may only be set to "None" for ClusterIP')
    ports = spec.get("ports") or []
    if not ports and not headless and kind != "ExternalName":
        errors.append("spec.ports: Required value")
    names: set[str] = set()
    seen: set[tuple[int, str]] = set()
    for i, port in enumerate(ports):
        where = f"spec.ports[{i}]"
        port.setdefault("protocol", "TCP")
        name = port.get("name")
        if len(ports) > 1 and not name:
            errors.append(f"{where}.name: Required value")
        if name:
            if (
                len(name) > 15
                or not IANA_SVC_NAME.match(name)
                or "--" in name
                or not re.search("[a-z]", name)
            ):
                errors.append(f"{where}.name: Invalid value: {json.dumps(name)}: must be an IANA_SVC_NAME")
            if name in names:
                errors.append(f"{where}.name: Duplicate value: {json.dumps(name)}")
            names.add(name)
        number = port.get("port")
        if not isinstance(number, int) or not 1 <= number <= 65535:
            errors.append(f"{where}.port: Invalid value: {json.dumps(number)}: must be between 1 and 65535")
        if port["protocol"] not in ("TCP", "UDP", "SCTP"):
            errors.append(f"{where}.protocol: Unsupported value: {json.dumps(port['protocol'])}")
        target = port.setdefault("targetPort", number)
        if isinstance(target, int) and not 1 <= target <= 65535:
            errors.append(f"{where}.targetPort: Invalid value: {target}: must be between 1 and 65535")
        if (number, port["protocol"]) in seen:
            errors.append(
                f"{where}: Duplicate value: {json.dumps({'port': number, 'protocol': port['protocol']})}"
            )
        seen.add((number, port["protocol"]))
    for key, value in (spec.get("selector") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            errors.append(
                f"spec.selector: Invalid value: {json.dumps(value)}: not a valid label value ({key})"
            )
    if kind == "ClusterIP" and not spec.get("clusterIP"):
        spec["clusterIP"] = "10.96.0.10"  # an allocated address; tests do not route to it
    spec.setdefault("clusterIPs", [spec["clusterIP"]] if kind != "ExternalName" else [])
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if old is not None:
        previous = (old.get("spec") or {}).get("clusterIP")
        if spec.get("clusterIP") != previous:
            errors.append(
                f"spec.clusterIPs[0]: Invalid value: {json.dumps(spec.get('clusterIP'))}: field is immutable"
            )
