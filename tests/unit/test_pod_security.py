"""Every pod synthrec runs satisfies the "restricted" Pod Security Standard plus a read-only root filesystem:
the operator pod rendered by the chart, and every worker Job template the operator renders."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.chart import CHART, render_chart
from tests.harness.pss import assert_restricted, pod_security_violations

ROOT = Path(__file__).resolve().parents[2]
WORKER_WRITABLE = ("/tmp", "/cache", "/dev/shm")  # /work/contracts.md: the only writable paths of workers
POD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}

COMPLIANT: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "ok"},
    "spec": {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "main",
                "image": "synthrec:0.1.0",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    },
}


def _with(path: str, value: Any) -> dict[str, Any]:
    """COMPLIANT with one field set (path like 'spec.containers.0.securityContext.privileged')."""
    pod = copy.deepcopy(COMPLIANT)
    *parents, last = path.split(".")
    node: Any = pod
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    key: Any = int(last) if isinstance(node, list) else last
    if value is None:
        del node[key]
    else:
        node[key] = value
    return pod


def test_the_reference_pod_is_compliant() -> None:
    assert pod_security_violations(COMPLIANT) == []


C = "spec.containers.0"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("spec.hostNetwork", True, "hostNetwork must not be true"),
        ("spec.hostPID", True, "hostPID must not be true"),
        ("spec.hostIPC", True, "hostIPC must not be true"),
        (f"{C}.securityContext.privileged", True, "privileged must not be true"),
        (f"{C}.securityContext.allowPrivilegeEscalation", None, "allowPrivilegeEscalation must be false"),
        (f"{C}.securityContext.allowPrivilegeEscalation", True, "allowPrivilegeEscalation must be false"),
        ("spec.securityContext.runAsNonRoot", None, "runAsNonRoot must be true"),
        (f"{C}.securityContext.runAsNonRoot", False, "runAsNonRoot must be true"),
        ("spec.securityContext.runAsUser", 0, "runAsUser must not be 0"),
        (f"{C}.securityContext.runAsUser", 0, "runAsUser must not be 0"),
        (
            "spec.securityContext.seccompProfile",
            None,
            "seccompProfile.type must be RuntimeDefault or Localhost",
        ),
        ("spec.securityContext.seccompProfile.type", "Unconfined", "must be RuntimeDefault or Localhost"),
        (
            f"{C}.securityContext.seccompProfile",
            {"type": "Unconfined"},
            "must be RuntimeDefault or Localhost",
        ),
        (f"{C}.securityContext.capabilities.drop", ["NET_RAW"], "capabilities.drop must contain ALL"),
        (f"{C}.securityContext.capabilities.add", ["SYS_ADMIN"], "SYS_ADMIN may not be added"),
        (f"{C}.ports", [{"containerPort": 80, "hostPort": 80}], "hostPort 80 is not allowed"),
        (f"{C}.securityContext.procMount", "Unmasked", "procMount must be Default"),
        ("spec.securityContext.seLinuxOptions", {"type": "spc_t"}, "seLinuxOptions.type 'spc_t'"),
        ("spec.securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], "not a safe sysctl"),
        ("spec.volumes.0", {"name": "tmp", "hostPath": {"path": "/"}}, "type hostPath is not allowed"),
        ("spec.volumes.0", {"name": "tmp", "nfs": {"server": "x", "path": "/"}}, "type nfs is not allowed"),
        (f"{C}.securityContext.readOnlyRootFilesystem", None, "readOnlyRootFilesystem must be true"),
        (f"{C}.volumeMounts", [], "/tmp must be a writable emptyDir mount"),
        ("spec.volumes.0", {"name": "tmp", "configMap": {"name": "x"}}, "which is not an emptyDir"),
    ],
)
def test_each_restricted_rule_is_enforced(path: str, value: Any, expected: str) -> None:
    violations = pod_security_violations(_with(path, value))
    assert any(expected in v for v in violations), violations


def test_container_level_settings_satisfy_the_rules_without_pod_level_ones() -> None:
    pod = _with("spec.securityContext", {})
    pod["spec"]["containers"][0]["securityContext"].update(
        {"runAsNonRoot": True, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}
    )
    assert pod_security_violations(pod) == []
    assert pod_security_violations(_with(f"{C}.securityContext.capabilities.add", ["NET_BIND_SERVICE"])) == []


def test_init_containers_are_checked_too() -> None:
    pod = copy.deepcopy(COMPLIANT)
    pod["spec"]["initContainers"] = [{"name": "init", "image": "busybox"}]
    violations = pod_security_violations(pod)
    assert any("initContainers[init]: securityContext.allowPrivilegeEscalation" in v for v in violations)


def _ci_values() -> list[dict[str, Any]]:
    return [{}] + [yaml.safe_load(p.read_text()) for p in sorted((CHART / "ci").glob("*-values.yaml"))]


@pytest.mark.parametrize("values", _ci_values(), ids=["defaults", "gpu-cluster", "namespaced"])
def test_every_pod_the_chart_renders_is_restricted(values: dict[str, Any]) -> None:
    pods = [o for o in render_chart(values) if o["kind"] in POD_KINDS]
    assert pods, "the chart renders the operator Deployment"
    for obj in pods:
        assert_restricted(obj, writable=("/tmp",))


# ------------------------------------------------------------------------------- operator-created pods


def _operator_jobs() -> list[dict[str, Any]]:
    """Worker Jobs rendered by the operator (synthrec.operator.jobs) for the example resources."""
    jobs = pytest.importorskip(
        "synthrec.operator.jobs", reason="synthrec.operator.jobs (issue 5) is not there yet"
    )
    from synthrec.api import parse_resource

    defaults = jobs.WorkerDefaults(
        image="synthrec:0.1.0",
        service_account="synthrec-worker",
        queue_name="gpu-batch",
        s3_secret="synthrec-s3",
        hf_token_secret="hf-token",
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    rendered = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            resource = parse_resource(doc)
            owner = jobs.Owner(resource.kind, resource.metadata.name, "team-a", "0f0f0f0f-uid")
            shape = jobs.JobShape(completions=4, parallelism=2, retries_per_index=2, max_failed_indexes=0)
            for stage in ("prompts", "generate", "filter", "reduce", "train"):
                name = jobs.stage_job_name(resource.metadata.name, stage, 1)
                labels = jobs.child_labels(owner, stage, 1)
                rendered.append(
                    jobs.render_job(
                        owner,
                        name=name,
                        stage=stage,
                        labels=labels,
                        shape=shape,
                        spec=resource.spec,
                        defaults=defaults,
                    )
                )
    return rendered


def test_every_worker_job_the_operator_renders_is_restricted() -> None:
    rendered = _operator_jobs()
    assert len(rendered) >= 10
    for job in rendered:
        assert_restricted(job, writable=WORKER_WRITABLE)
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, "workers never talk to the Kubernetes API"
