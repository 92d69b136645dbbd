"""Operator configuration: environment variables (the Helm chart sets them) and Kopf's settings.

Environment (all optional):

==================================  =======================================================================
SYNTHREC_NAMESPACES                 comma-separated namespaces to watch; empty = cluster-wide
SYNTHREC_WORKER_IMAGE               default worker image (spec.scheduling.image overrides)
SYNTHREC_WORKER_IMAGE_PULL_POLICY   Always | IfNotPresent | Never
SYNTHREC_WORKER_SERVICE_ACCOUNT     default ServiceAccount of worker pods (spec overrides)
SYNTHREC_DEFAULT_QUEUE              default Kueue LocalQueue (spec overrides; empty = none)
SYNTHREC_GPU_RESOURCE               GPU resource name used where the spec keeps the default nvidia.com/gpu
SYNTHREC_S3_ENDPOINT                default S3 endpoint (spec.output.endpoint overrides)
SYNTHREC_S3_SECRET                  default Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
SYNTHREC_HF_TOKEN_SECRET            default Secret with HF_TOKEN (spec.modelHub.tokenSecret overrides)
SYNTHREC_WORKER_NODE_SELECTOR       JSON object: default nodeSelector of worker pods
SYNTHREC_WORKER_TOLERATIONS         JSON list: default tolerations of worker pods
SYNTHREC_WORKER_CACHE_SIZE_LIMIT    sizeLimit of the /cache emptyDir of worker pods (e.g. 50Gi)
SYNTHREC_WORKER_CACHE_VOLUME        JSON object: a volume source for /cache instead of the emptyDir
SYNTHREC_WORKER_EPHEMERAL_STORAGE   ephemeral-storage request of worker containers (e.g. 20Gi)
SYNTHREC_WORKER_VOLUMES             JSON list of Volumes added to worker pods (e.g. a ReadOnlyMany PVC)
SYNTHREC_WORKER_VOLUME_MOUNTS       JSON list of VolumeMounts of those volumes in the worker container
SYNTHREC_WORKER_ENV                 JSON list of EnvVars added to workers (MLFLOW_TRACKING_URI, WANDB_*)
SYNTHREC_STATUS_INTERVAL            seconds between status patches of one resource (default 5)
SYNTHREC_METRICS_PORT               Prometheus metrics port (default 8080; 0 disables)
SYNTHREC_LIVENESS_PORT              liveness endpoint port (default 8081; 0 disables), path /healthz
SYNTHREC_RESYNC_INTERVAL            seconds between reconciles of a resource without any event (default 30)
SYNTHREC_RECONCILE_MIN_INTERVAL     minimum seconds between two reconciles of one resource (default 0.5)
SYNTHREC_MAX_CONCURRENT_RECONCILES  reconciles running at once across resources (default 8)
SYNTHREC_REQUEST_TIMEOUT            seconds per Kubernetes API request (default 30)
SYNTHREC_CLEANUP_TIMEOUT            seconds a cleanup Job (onDelete: Delete) may take before the data is
                                    kept and the resource let go (default 1800)
SYNTHREC_LEADER_ELECTION            true (default): lead a coordination.k8s.io Lease before doing anything
SYNTHREC_LEASE_NAME                 the Lease's name (default synthrec-operator)
SYNTHREC_LEASE_NAMESPACE            its namespace (default $POD_NAMESPACE, else the pod's own, else default)
SYNTHREC_LEASE_DURATION             seconds before a Lease not renewed may be taken over (default 15)
SYNTHREC_LEASE_RENEW_DEADLINE       seconds the leader keeps trying to renew before it stops (default 10)
SYNTHREC_LEASE_RETRY_PERIOD         seconds between tries to acquire or renew (default 2)
==================================  =======================================================================
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from synthrec.api import GROUP
from synthrec.operator.jobs import (
    BUILTIN_MOUNT_PATHS,
    BUILTIN_VOLUMES,
    DEFAULT_IMAGE,
    WorkerDefaults,
)

FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_PREFIX = GROUP
REPORTING_COMPONENT = "synthrec-operator"
# A Kubernetes quantity, as the API server's regex has it.
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")


class SettingsError(ValueError):
    """An operator environment variable with a value that cannot be used."""


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()
    worker: WorkerDefaults = field(default_factory=WorkerDefaults)
    status_interval: float = 5.0
    metrics_port: int = 8080
    liveness_port: int = 8081
    resync_interval: float = 30.0
    min_reconcile_interval: float = 0.5
    max_concurrent_reconciles: int = 8
    request_timeout: float = 30.0
    fold_grace_seconds: float = 30.0
    cleanup_timeout: float = 1800.0  # onDelete: Delete (operator/cleanup.py)
    cleanup_poll_interval: float = 5.0
    leader_election: bool = True  # only `synthrec operator` (operator/process.py) reads these
    lease_name: str = "synthrec-operator"
    lease_namespace: str | None = None
    lease_duration: float = 15.0
    lease_renew_deadline: float = 10.0
    lease_retry_period: float = 2.0

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read the SYNTHREC_* variables; raises SettingsError naming the variable on a bad value."""
        env = os.environ if env is None else env
        namespaces = tuple(n.strip() for n in env.get("SYNTHREC_NAMESPACES", "").split(",") if n.strip())
        worker = WorkerDefaults(
            image=env.get("SYNTHREC_WORKER_IMAGE") or DEFAULT_IMAGE,
            image_pull_policy=_choice(
                env, "SYNTHREC_WORKER_IMAGE_PULL_POLICY", ("Always", "IfNotPresent", "Never")
            ),
            service_account=env.get("SYNTHREC_WORKER_SERVICE_ACCOUNT") or None,
            queue_name=env.get("SYNTHREC_DEFAULT_QUEUE") or None,
            gpu_resource=env.get("SYNTHREC_GPU_RESOURCE") or None,
            s3_endpoint=env.get("SYNTHREC_S3_ENDPOINT") or None,
            s3_secret=env.get("SYNTHREC_S3_SECRET") or None,
            hf_token_secret=env.get("SYNTHREC_HF_TOKEN_SECRET") or None,
            node_selector=_json(env, "SYNTHREC_WORKER_NODE_SELECTOR", dict),
            tolerations=_json(env, "SYNTHREC_WORKER_TOLERATIONS", list),
            cache_size_limit=_quantity(env, "SYNTHREC_WORKER_CACHE_SIZE_LIMIT"),
            cache_volume=_volume_source(env, "SYNTHREC_WORKER_CACHE_VOLUME"),
            ephemeral_storage=_quantity(env, "SYNTHREC_WORKER_EPHEMERAL_STORAGE"),
            **_volumes(env, "SYNTHREC_WORKER_VOLUMES", "SYNTHREC_WORKER_VOLUME_MOUNTS"),
            env=_env_vars(env, "SYNTHREC_WORKER_ENV"),
        )
        metrics_port = int(_number(env, "SYNTHREC_METRICS_PORT", 8080, minimum=0, integer=True))
        liveness_port = int(_number(env, "SYNTHREC_LIVENESS_PORT", 8081, minimum=0, integer=True))
        if metrics_port and metrics_port == liveness_port:
            raise SettingsError(
                f"SYNTHREC_METRICS_PORT and SYNTHREC_LIVENESS_PORT are both {metrics_port}: the operator "
                "serves /metrics and /healthz on separate ports; change one of them"
            )
        return cls(
            namespaces=namespaces,
            worker=worker,
            status_interval=_number(env, "SYNTHREC_STATUS_INTERVAL", 5.0, minimum=0.0),
            metrics_port=metrics_port,
            liveness_port=liveness_port,
            resync_interval=_number(env, "SYNTHREC_RESYNC_INTERVAL", 30.0, minimum=0.01),
            min_reconcile_interval=_number(env, "SYNTHREC_RECONCILE_MIN_INTERVAL", 0.5, minimum=0.0),
            max_concurrent_reconciles=int(
                _number(env, "SYNTHREC_MAX_CONCURRENT_RECONCILES", 8, minimum=1, integer=True)
            ),
            request_timeout=_number(env, "SYNTHREC_REQUEST_TIMEOUT", 30.0, minimum=1.0),
            cleanup_timeout=_number(env, "SYNTHREC_CLEANUP_TIMEOUT", 1800.0, minimum=10.0),
            **_leader_election(env),
        )

    def with_overrides(self, **changes: Any) -> OperatorConfig:
        return replace(self, **changes)


def _leader_election(env: Mapping[str, str]) -> dict[str, Any]:
    raw = env.get("SYNTHREC_LEADER_ELECTION", "true").strip().lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"SYNTHREC_LEADER_ELECTION={raw!r}: expected true or false")
    duration = _number(env, "SYNTHREC_LEASE_DURATION", 15.0, minimum=1.0)
    deadline = _number(env, "SYNTHREC_LEASE_RENEW_DEADLINE", 10.0, minimum=0.1)
    retry = _number(env, "SYNTHREC_LEASE_RETRY_PERIOD", 2.0, minimum=0.05)
    if not retry < deadline < duration:
        raise SettingsError(
            f"leader election needs SYNTHREC_LEASE_RETRY_PERIOD ({retry}) < SYNTHREC_LEASE_RENEW_DEADLINE "
            f"({deadline}) < SYNTHREC_LEASE_DURATION ({duration}): the leader must stop before the Lease "
            "expires for the others"
        )
    return {
        "leader_election": raw in ("true", "1", "yes"),
        "lease_name": env.get("SYNTHREC_LEASE_NAME", "").strip() or "synthrec-operator",
        "lease_namespace": env.get("SYNTHREC_LEASE_NAMESPACE", "").strip() or None,
        "lease_duration": duration,
        "lease_renew_deadline": deadline,
        "lease_retry_period": retry,
    }


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = env.get(name) or None
    if value is not None and value not in allowed:
        raise SettingsError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


def _parse(env: Mapping[str, str], name: str, kind: type) -> Any:
    """The variable's JSON value of type ``kind`` (dict or list), empty when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return kind()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(
            f"{name} is not valid JSON ({exc.msg} at position {exc.pos}): {raw[:80]!r}"
        ) from None
    if not isinstance(value, kind):
        raise SettingsError(f"{name} must be a JSON {'object' if kind is dict else 'list'}, got {raw[:80]!r}")
    return value


def _json(env: Mapping[str, str], name: str, kind: type) -> Any:
    value = _parse(env, name, kind)
    if kind is dict and not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SettingsError(f"{name}: nodeSelector keys and values must be strings")
    if kind is list and not all(isinstance(t, dict) for t in value):
        raise SettingsError(f"{name}: every toleration must be a JSON object")
    return value


def _quantity(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if raw and not _QUANTITY.match(raw):
        raise SettingsError(f"{name}={raw!r} is not a Kubernetes quantity such as 50Gi")
    return raw or None


def _objects(env: Mapping[str, str], name: str) -> list[dict[str, Any]]:
    value = _parse(env, name, list)
    if not all(isinstance(item, dict) for item in value):
        raise SettingsError(f"{name}: every item must be a JSON object")
    return value


def _volume_source(env: Mapping[str, str], name: str) -> dict[str, Any] | None:
    """A volume source: one key naming its type, e.g. {"persistentVolumeClaim": {"claimName": "x"}}."""
    value = _parse(env, name, dict)
    if not value:
        return None
    if len(value) != 1 or "name" in value or not isinstance(next(iter(value.values())), dict):
        raise SettingsError(
            f"{name} must name exactly one volume source without a name, e.g. "
            f'{{"persistentVolumeClaim": {{"claimName": "model-cache"}}}}, got {json.dumps(value)[:120]}'
        )
    return value


def _volumes(env: Mapping[str, str], volumes_name: str, mounts_name: str) -> dict[str, Any]:
    """Extra volumes and their mounts; every mount names one of them, and none takes a built-in name or
    path (a path below /cache, such as a read-only /cache/huggingface, is fine)."""
    volumes, mounts = _objects(env, volumes_name), _objects(env, mounts_name)
    names = [v.get("name") for v in volumes]
    for n in names:
        if not isinstance(n, str) or not n:
            raise SettingsError(f"{volumes_name}: every volume needs a name")
        if n in BUILTIN_VOLUMES:
            raise SettingsError(f"{volumes_name}: the volume name {n!r} is taken by the worker pod itself")
        if names.count(n) > 1:
            raise SettingsError(f"{volumes_name}: the volume name {n!r} is used twice")
    for m in mounts:
        where = f"{mounts_name}: the mount of {m.get('name')!r}"
        if m.get("name") not in names:
            raise SettingsError(f"{where} names no volume of {volumes_name} ({', '.join(map(str, names))})")
        path = m.get("mountPath")
        if not isinstance(path, str) or not path.startswith("/"):
            raise SettingsError(f"{where} needs an absolute mountPath")
        if path.rstrip("/") in BUILTIN_MOUNT_PATHS:
            raise SettingsError(f"{where} at {path} would hide the worker's own {path}")
    return {"volumes": volumes, "volume_mounts": mounts}


def _env_vars(env: Mapping[str, str], name: str) -> list[dict[str, Any]]:
    items = _objects(env, name)
    for item in items:
        var = item.get("name")
        if not isinstance(var, str) or not var:
            raise SettingsError(f"{name}: every variable needs a name, got {json.dumps(item)[:120]}")
    return items


def _number(
    env: Mapping[str, str], name: str, default: float, *, minimum: float, integer: bool = False
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {'an integer' if integer else 'a number'}") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


def configure_kopf(settings: Any, config: OperatorConfig) -> None:
    """Kopf settings that are part of synthrec's contract (applied in the startup handler)."""
    import kopf

    settings.peering.standalone = True  # one replica (Deployment strategy Recreate); no peering objects
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Kopf's own per-handler success/failure Events are noise; ours are posted with kopf.event().
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = REPORTING_COMPONENT
    settings.posting.event_name_prefix = "synthrec-"
    settings.networking.request_timeout = config.request_timeout
    settings.networking.connect_timeout = min(10.0, config.request_timeout)
    settings.execution.max_workers = max(4, config.max_concurrent_reconciles)
    if config.namespaces:
        settings.scanning.disabled = True  # namespaced RBAC: no cluster-wide namespace/CRD listing
    # Only our children: the API server filters the Job and Pod watch streams.
    selector = "app.kubernetes.io/managed-by=synthrec"
    settings.watching.label_selectors["batch", "v1", "jobs"] = selector
    settings.watching.label_selectors["v1", "pods"] = selector
