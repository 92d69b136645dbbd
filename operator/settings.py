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
SYNTHREC_STATUS_INTERVAL            seconds between status patches of one resource (default 5)
SYNTHREC_METRICS_PORT               Prometheus metrics port (default 8080; 0 disables)
SYNTHREC_LIVENESS_PORT              liveness endpoint port (default 8081; 0 disables), path /healthz
SYNTHREC_RESYNC_INTERVAL            seconds between reconciles of a resource without any event (default 30)
SYNTHREC_RECONCILE_MIN_INTERVAL     minimum seconds between two reconciles of one resource (default 0.5)
SYNTHREC_MAX_CONCURRENT_RECONCILES  reconciles running at once across resources (default 8)
SYNTHREC_REQUEST_TIMEOUT            seconds per Kubernetes API request (default 30)
==================================  =======================================================================
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from synthrec.api import GROUP
from synthrec.operator.jobs import DEFAULT_IMAGE, WorkerDefaults

FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_PREFIX = GROUP
REPORTING_COMPONENT = "synthrec-operator"


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
        )
        return cls(
            namespaces=namespaces,
            worker=worker,
            status_interval=_number(env, "SYNTHREC_STATUS_INTERVAL", 5.0, minimum=0.0),
            metrics_port=int(_number(env, "SYNTHREC_METRICS_PORT", 8080, minimum=0, integer=True)),
            liveness_port=int(_number(env, "SYNTHREC_LIVENESS_PORT", 8081, minimum=0, integer=True)),
            resync_interval=_number(env, "SYNTHREC_RESYNC_INTERVAL", 30.0, minimum=0.01),
            min_reconcile_interval=_number(env, "SYNTHREC_RECONCILE_MIN_INTERVAL", 0.5, minimum=0.0),
            max_concurrent_reconciles=int(
                _number(env, "SYNTHREC_MAX_CONCURRENT_RECONCILES", 8, minimum=1, integer=True)
            ),
            request_timeout=_number(env, "SYNTHREC_REQUEST_TIMEOUT", 30.0, minimum=1.0),
        )

    def with_overrides(self, **changes: Any) -> OperatorConfig:
        return replace(self, **changes)


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = env.get(name) or None
    if value is not None and value not in allowed:
        raise SettingsError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


def _json(env: Mapping[str, str], name: str, kind: type) -> Any:
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
    if kind is dict and not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SettingsError(f"{name}: nodeSelector keys and values must be strings")
    if kind is list and not all(isinstance(t, dict) for t in value):
        raise SettingsError(f"{name}: every toleration must be a JSON object")
    return value


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
