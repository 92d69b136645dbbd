"""Render the batch/v1 Jobs, task ConfigMaps and (for multi-node torchrun stages) headless Services of a
stage attempt or an experiment run. Pure: no I/O.

One Indexed Job per attempt of a stage (completion index i runs the attempt's i-th shard), one per run of
an experiment. The task JSON lives in a ConfigMap owned by the resource and mounted at
``synthrec.contract.TASK_MOUNT_DIR``; workers never talk to the API. Pods follow the restricted Pod
Security Standard with writable emptyDirs for /tmp, /cache and /dev/shm only. The model cache at /cache
gets the operator's size limit and the pod an ephemeral-storage request, or /cache is a volume the
cluster admin names (a shared PersistentVolumeClaim); more volumes (a ReadOnlyMany model store) and
environment (experiment tracking) come from the operator's worker defaults too.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from synthrec import contract
from synthrec.api import API_VERSION
from synthrec.operator.observed import (
    ANNOTATION_RUN_INDEX,
    ANNOTATION_SERVICE,
    ANNOTATION_SHARDS,
    LABEL_ATTEMPT,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_KIND,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_RESOURCE,
    LABEL_RUN,
    LABEL_STAGE,
    MANAGED_BY,
    WORKER_CONTAINER,
)
from synthrec.plan import format_ranges
from synthrec.plan.shm import stage_shared_memory
from synthrec.plan.tasks import dump_task

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set on a Job's pods by the Job controller
# The cleanup Job (spec.output.onDelete: Delete): not owned by the resource (a foreground deletion would
# have the garbage collector kill it), so it names the resource's uid itself; its task travels in the pod
# template's annotation, mounted through the downward API (no ConfigMap left behind).
CLEANUP_STAGE = "cleanup"
ANNOTATION_OWNER_UID = "synthrec.io/owner-uid"
ANNOTATION_TASK = "synthrec.io/task"
CLEANUP_TTL_SECONDS = 3600
CLEANUP_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
TASK_VOLUME = "task"
CACHE_VOLUME = "cache"
CACHE_DIR = "/cache"
# Volumes and mount paths every worker pod has; the admin's extra volumes must not collide with them.
BUILTIN_VOLUMES = (TASK_VOLUME, "tmp", CACHE_VOLUME, "dshm")
BUILTIN_MOUNT_PATHS = (contract.TASK_MOUNT_DIR, "/tmp", CACHE_DIR, "/dev/shm")
DEFAULT_IMAGE = "ghcr.io/synthrec/synthrec:latest"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
WORKER_UID = 10001  # the image's non-root user (Dockerfile: USER 10001), numeric for runAsNonRoot

# Environment every worker gets (contracts: only /tmp, /cache and /dev/shm are writable).
CACHE_ENV = {
    "HOME": "/tmp",
    "XDG_CACHE_HOME": "/cache",
    "HF_HOME": "/cache/huggingface",
    "TORCH_HOME": "/cache/torch",
    "SYNTHREC_CACHE": "/cache/synthrec",
    "MPLCONFIGDIR": "/tmp/matplotlib",
}

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class WorkerDefaults:
    """Operator-wide defaults for worker pods (from the operator's environment, see settings.py)."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str | None = None
    service_account: str | None = None
    queue_name: str | None = None
    gpu_resource: str | None = None  # overrides the spec's default nvidia.com/gpu only when set here
    s3_endpoint: str | None = None
    s3_secret: str | None = None
    hf_token_secret: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    # The model cache (/cache: HF_HOME, TORCH_HOME, SYNTHREC_CACHE): an emptyDir with this sizeLimit, or
    # cache_volume (a volume source such as {"persistentVolumeClaim": {"claimName": ...}}) in its place.
    cache_size_limit: str | None = None
    cache_volume: dict[str, Any] | None = None
    ephemeral_storage: str | None = None  # request of the worker container (/tmp, /cache emptyDirs, logs)
    volumes: list[dict[str, Any]] = field(default_factory=list)  # extra Volumes, e.g. a ReadOnlyMany PVC
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)  # their VolumeMounts
    env: list[dict[str, Any]] = field(default_factory=list)  # extra EnvVars (MLFLOW_TRACKING_URI, WANDB_*)


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns the Jobs and ConfigMaps."""

    kind: str
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class Gang:
    """A stage that runs torchrun over several pods (pre-training, transfer): the Job's ``nodes`` pods
    start together (Kueue admits the Job's whole pod set at once), meet at index 0's stable hostname
    ``<job>-0.<service>`` through a headless Service (``service`` None: one node, no rendezvous) and get
    ``grace_seconds`` to write their checkpoint after SIGTERM."""

    nodes: int
    port: int
    grace_seconds: int
    service: str | None = None

    def endpoint(self, job: str) -> str | None:
        return f"{job}-0.{self.service}:{self.port}" if self.service else None


@dataclass(frozen=True)
class JobShape:
    """How one Job spreads and retries its work."""

    completions: int
    parallelism: int
    retries_per_index: int
    max_failed_indexes: int
    shard_ids: tuple[int, ...] | None = None  # None: completion index == shard id
    active_deadline_seconds: int | None = None


def stage_job_name(resource: str, stage: str, attempt: int) -> str:
    return f"{resource}-{stage}-a{attempt}"


def run_job_name(resource: str, run_index: int, attempt: int, stage: str | None = None) -> str:
    """``<resource>-r<run>-a<attempt>``; a pre-training run's stages ``<resource>-r<run>-<stage>-a<n>``
    (at most 40 + 2 + 3 + 9 + 3 characters: its pods' hostnames ``<job>-<index>`` stay DNS labels)."""
    return f"{resource}-r{run_index}-{stage}-a{attempt}" if stage else f"{resource}-r{run_index}-a{attempt}"


def gang_service_name(job: str) -> str:
    """The headless Service of a Job's pods: the Job's name, made a DNS-1035 label (a leading letter)."""
    return job if job[:1].isalpha() else f"s{job}"[:63]


def render_service(owner: Owner, name: str, labels: dict[str, str], job: str, port: int) -> dict[str, Any]:
    """The headless Service that gives the pods of Job ``job`` their stable DNS names
    (``<job>-<index>.<name>``), owned by the resource; addresses are published before the pods are ready,
    since the rendezvous happens before anything could be ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": dict(labels),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "clusterIP": "None",
            "selector": {JOB_NAME_LABEL: job},
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def cleanup_job_name(resource: str) -> str:
    return f"{resource}-{CLEANUP_STAGE}"


def label_value(value: str) -> str:
    """A valid label value (<= 63 chars, alphanumeric ends); long or odd values get a hash suffix."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:54].strip("-_.")
    return f"{cleaned}-{digest}" if cleaned else digest


def child_labels(owner: Owner, stage: str, attempt: int, run: str | None = None) -> dict[str, str]:
    labels = {
        LABEL_NAME: MANAGED_BY,
        LABEL_INSTANCE: label_value(owner.name),
        LABEL_COMPONENT: label_value(stage),
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_RESOURCE: owner.name,
        LABEL_KIND: owner.kind,
        LABEL_STAGE: stage,
        LABEL_ATTEMPT: str(attempt),
    }
    if run is not None:
        labels[LABEL_RUN] = label_value(run)
    return labels


def render_configmap(owner: Owner, name: str, labels: dict[str, str], task: Any) -> dict[str, Any]:
    """The ConfigMap holding a task's JSON (``dump_task``), owned by the resource."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": dict(labels),
            "ownerReferences": [owner.reference()],
        },
        "data": {contract.TASK_FILE_NAME: dump_task(task)},
    }


def render_job(
    owner: Owner,
    *,
    name: str,
    stage: str,
    labels: dict[str, str],
    shape: JobShape,
    spec: Any,
    defaults: WorkerDefaults,
    run_index: int | None = None,
    gang: Gang | None = None,
) -> dict[str, Any]:
    """The Indexed Job of one attempt; ``spec`` is the resource's parsed spec (resources, scheduling,
    output, modelHub). The task ConfigMap has the same name as the Job. A ``gang`` (torchrun over pods)
    has completions = parallelism = nodes, a pod subdomain on its headless Service and the rendezvous
    address in the pods' environment."""
    queue = spec.scheduling.queue_name or defaults.queue_name
    job_labels = dict(labels)
    if queue:
        job_labels[KUEUE_QUEUE_LABEL] = queue
    annotations: dict[str, str] = {}
    if shape.shard_ids is not None:
        annotations[ANNOTATION_SHARDS] = format_ranges(list(shape.shard_ids))
    if run_index is not None:
        annotations[ANNOTATION_RUN_INDEX] = str(run_index)
    if gang is not None and gang.service:
        annotations[ANNOTATION_SERVICE] = gang.service
    completions = shape.completions
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": completions,
        "parallelism": max(1, min(shape.parallelism, completions)),
        "backoffLimitPerIndex": shape.retries_per_index,
        "maxFailedIndexes": max(0, min(shape.max_failed_indexes, completions)),
        "podFailurePolicy": {"rules": _failure_rules(indexed=True)},
        "podReplacementPolicy": "Failed",  # never two pods of one index (and no double Kueue quota)
        "template": {
            "metadata": {"labels": dict(labels)},
            "spec": _pod_spec(name, stage, spec, defaults, gang),
        },
    }
    if shape.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = max(1, int(shape.active_deadline_seconds))
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": job_labels,
        "ownerReferences": [owner.reference()],
    }
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def _failure_rules(*, indexed: bool) -> list[dict[str, Any]]:
    """How exit codes end pods (synthrec.contract.worker): podFailurePolicy rules."""
    rules: list[dict[str, Any]] = [
        # Preemption, eviction, node drain: not the shard's fault, do not burn a retry.
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        # A configuration error cannot succeed anywhere: stop the whole Job.
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": WORKER_CONTAINER,
                "operator": "In",
                "values": [contract.EXIT_CONFIG_ERROR],
            },
        },
    ]
    if indexed:  # FailIndex needs an Indexed Job with backoffLimitPerIndex
        # Bad input of this shard: retrying the same pod cannot help.
        rules.append(
            {
                "action": "FailIndex",
                "onExitCodes": {
                    "containerName": WORKER_CONTAINER,
                    "operator": "In",
                    "values": [contract.EXIT_DATA_ERROR],
                },
            }
        )
    return rules


def render_cleanup_job(
    owner: Owner, spec: Any, defaults: WorkerDefaults, task: Any, *, deadline_seconds: int
) -> dict[str, Any]:
    """The Job that deletes what the resource wrote (``python -m synthrec.workers cleanup``), in the
    resource's namespace with its scheduling and storage settings and that namespace's credentials. Not
    owned by the resource; it names the resource's uid in an annotation and expires on its own."""
    name = cleanup_job_name(owner.name)
    labels = child_labels(owner, CLEANUP_STAGE, 1)
    job_labels = dict(labels)
    queue = spec.scheduling.queue_name or defaults.queue_name
    if queue:
        job_labels[KUEUE_QUEUE_LABEL] = queue
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": job_labels,
            "annotations": {ANNOTATION_OWNER_UID: owner.uid},
        },
        "spec": {
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": 2,
            "activeDeadlineSeconds": max(1, deadline_seconds),
            "ttlSecondsAfterFinished": CLEANUP_TTL_SECONDS,
            "podFailurePolicy": {"rules": _failure_rules(indexed=False)},
            "podReplacementPolicy": "Failed",
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {ANNOTATION_TASK: dump_task(task)}},
                "spec": _pod_spec(name, CLEANUP_STAGE, spec, defaults, cleanup=True),
            },
        },
    }


def _pod_spec(
    name: str,
    stage: str,
    spec: Any,
    defaults: WorkerDefaults,
    gang: Gang | None = None,
    *,
    cleanup: bool = False,
) -> dict[str, Any]:
    """A worker pod. ``cleanup``: no GPU, no model cache, no hub token, the task from the downward API."""
    scheduling, resources = spec.scheduling, spec.resources
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": scheduling.image or defaults.image,
        "command": [
            "python",
            "-m",
            "synthrec.workers",
            stage,
            "--task",
            f"{contract.TASK_MOUNT_DIR}/{contract.TASK_FILE_NAME}",
        ],
        "env": _env(spec, defaults, gang.endpoint(name) if gang else None, hub=not cleanup),
        "resources": copy.deepcopy(CLEANUP_RESOURCES) if cleanup else _resources(resources, defaults),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": contract.DEFAULT_TERMINATION_LOG,
        # A crash before the worker wrote its summary still explains itself with the log tail.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": TASK_VOLUME, "mountPath": contract.TASK_MOUNT_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if not cleanup:
        container["volumeMounts"] += [
            {"name": CACHE_VOLUME, "mountPath": CACHE_DIR},
            *(dict(m) for m in defaults.volume_mounts),
        ]
    pull_policy = scheduling.image_pull_policy or defaults.image_pull_policy
    if pull_policy:
        container["imagePullPolicy"] = pull_policy
    task_file = {"path": contract.TASK_FILE_NAME}
    task_volume: dict[str, Any] = (
        {
            "name": TASK_VOLUME,
            "downwardAPI": {
                "items": [
                    {**task_file, "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_TASK}']"}}
                ]
            },
        }
        if cleanup
        else {
            "name": TASK_VOLUME,
            "configMap": {"name": name, "items": [{"key": contract.TASK_FILE_NAME, **task_file}]},
        }
    )
    volumes: list[dict[str, Any]] = [task_volume, {"name": "tmp", "emptyDir": {}}]
    if not cleanup:
        volumes += [_cache_volume(defaults), *(dict(v) for v in defaults.volumes)]
    if not cleanup:
        # sized for the stage's loaders (synthrec.plan.shm); torchrun's ranks (NCCL, their loaders) get one
        # bounded by the pod's memory limit only, unless the spec names a size
        auto = resources.shared_memory == "auto"
        shared_memory = None if gang is not None and auto else stage_shared_memory(spec, stage)
        if shared_memory or gang is not None:
            container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
            size = {"sizeLimit": shared_memory} if shared_memory else {}
            volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", **size}})
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # workers never talk to the Kubernetes API
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    service_account = scheduling.service_account_name or defaults.service_account
    if service_account:
        pod["serviceAccountName"] = service_account
    node_selector = (
        scheduling.node_selector if scheduling.node_selector is not None else defaults.node_selector
    )
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if scheduling.tolerations is not None:
        tolerations = [t.wire() for t in scheduling.tolerations]
    else:
        tolerations = [dict(t) for t in defaults.tolerations]
    if tolerations:
        pod["tolerations"] = tolerations
    if scheduling.priority_class_name:
        pod["priorityClassName"] = scheduling.priority_class_name
    if gang is not None:
        # SIGTERM (eviction, preemption) -> torchrun -> the ranks save a checkpoint within this time
        pod["terminationGracePeriodSeconds"] = gang.grace_seconds
        if gang.service:
            pod["subdomain"] = gang.service  # <job>-<index>.<service> resolves to the pod
    return pod


def _cache_volume(defaults: WorkerDefaults) -> dict[str, Any]:
    if defaults.cache_volume:
        return {"name": CACHE_VOLUME, **defaults.cache_volume}
    # Without a limit a model download can fill the node's disk. Over the limit the kubelet evicts the pod
    # and the shard is retried, so the limit must fit the models a stage loads.
    empty_dir = {"sizeLimit": defaults.cache_size_limit} if defaults.cache_size_limit else {}
    return {"name": CACHE_VOLUME, "emptyDir": empty_dir}


def _resources(resources: Any, defaults: WorkerDefaults) -> dict[str, Any]:
    amounts: dict[str, str] = {"cpu": resources.cpu, "memory": resources.memory}
    if resources.gpus > 0:
        gpu_name = resources.gpu_resource_name
        # The CRD fills in nvidia.com/gpu, so the operator's default wins only over that built-in value.
        if defaults.gpu_resource and gpu_name == DEFAULT_GPU_RESOURCE:
            gpu_name = defaults.gpu_resource
        amounts[gpu_name] = str(resources.gpus)
    requests = dict(amounts)
    if defaults.ephemeral_storage:
        # A request only: the scheduler places the pod on a node with room for the model cache; a limit
        # would evict it for a few MB of logs over.
        requests["ephemeral-storage"] = defaults.ephemeral_storage
    return {"requests": requests, "limits": dict(amounts)}


def _env(
    spec: Any, defaults: WorkerDefaults, rendezvous: str | None = None, *, hub: bool = True
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in CACHE_ENV.items()]
    if rendezvous:
        env.append({"name": contract.ENV_RENDEZVOUS, "value": rendezvous})
    output = spec.output
    secret = output.credentials_secret or defaults.s3_secret
    if secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    endpoint = output.endpoint or defaults.s3_endpoint
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    if output.region:
        env.append({"name": "AWS_REGION", "value": output.region})
        env.append({"name": "AWS_DEFAULT_REGION", "value": output.region})
    model_hub = spec.model_hub if hub else None
    token_secret = (model_hub.token_secret if model_hub else None) or (
        defaults.hf_token_secret if hub else None
    )
    if token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": token_secret, "key": "HF_TOKEN", "optional": True}},
            }
        )
    if model_hub and model_hub.endpoint:
        env.append({"name": "HF_ENDPOINT", "value": model_hub.endpoint})
    # The admin's variables come last and replace ours of the same name (no duplicate names in the pod).
    extra = {e["name"]: dict(e) for e in defaults.env}
    return [e for e in env if e["name"] not in extra] + list(extra.values())
