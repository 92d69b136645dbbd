"""Kopf wiring: watches, in-memory indexes, nudges, liveness, metrics and the optional artifact cleanup.

``register(registry)`` adds every handler to a ``kopf.OperatorRegistry`` and returns the Reconciler that
does the actual work (reconciler.py). Kopf watches:

- SyntheticDatasets and RecognitionExperiments (every event wakes that resource's reconcile task; datasets
  are also indexed, so experiments read their state from memory);
- Jobs and Pods labelled ``app.kubernetes.io/managed-by=synthrec`` (server-side label selector), kept as
  compact views in indexes keyed by their owner; every event wakes the owner.

No handler returns a value (nothing lands in ``status.<handler>``) and none is a create/update handler, so
Kopf keeps no progress or diff-base annotations on our resources. The only finalizer (``synthrec.io/
finalizer``) is added to resources with ``spec.output.onDelete: Delete``: it holds the resource while a
cleanup Job in its namespace deletes what it wrote (cleanup.py); the operator never touches the storage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from synthrec.api import GROUP, VERSION
from synthrec.operator import cleanup
from synthrec.operator.observed import (
    LABEL_MANAGED_BY,
    LABEL_RESOURCE,
    MANAGED_BY,
    DatasetView,
    JobView,
    PodView,
    owner_key,
)
from synthrec.operator.reconciler import DATASET, EXPERIMENT, Reconciler
from synthrec.operator.settings import OperatorConfig, configure_kopf
from synthrec.operator.status import Event

log = logging.getLogger("synthrec.operator")


def post_event(ref: dict[str, Any], event: Event) -> None:
    """A Kubernetes Event on ``ref`` through Kopf's poster (needs Kopf's context, see reconciler.py)."""
    import kopf

    kopf.event(ref, type=event.type, reason=event.reason, message=event.message)


def register(
    registry: Any,
    config: OperatorConfig | None = None,
    *,
    login: bool = True,
    reconciler: Reconciler | None = None,
) -> Reconciler:
    """Register the operator's handlers into ``registry``; returns its Reconciler."""
    import kopf

    config = config or OperatorConfig.from_env()
    rec = reconciler or Reconciler(config, post_event=post_event)
    children = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_RESOURCE: kopf.PRESENT}

    @kopf.on.startup(registry=registry)
    async def synthrec_startup(settings: Any, **_: Any) -> None:
        configure_kopf(settings, config)
        await asyncio.to_thread(lambda: rec.api)  # load the client now, not at the first create
        if config.metrics_port:
            port = rec.metrics.serve(config.metrics_port)
            log.info("Prometheus metrics on :%d/metrics", port)
        # This task lives as long as the operator (it runs the cleanup activity too) and is cancelled when
        # the operator stops, also on task.cancel() where no cleanup handler runs: stop our tasks with it.
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(lambda _: rec.stop())

    @kopf.on.cleanup(registry=registry)
    async def synthrec_cleanup(**_: Any) -> None:
        await rec.wait_stopped()
        rec.metrics.stop()

    if login:

        @kopf.on.login(registry=registry)
        def synthrec_login(**kwargs: Any) -> Any:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                return kopf.login_with_service_account(**kwargs)
            return kopf.login_with_kubeconfig(**kwargs)

    # ----------------------------------------------------------------------------- indexes

    @kopf.index("batch", "v1", "jobs", id="synthrec_jobs", labels=children, registry=registry)
    def synthrec_jobs(body: Any, **_: Any) -> dict[Any, Any]:
        key = owner_key(body)
        return {key: JobView.from_obj(body)} if key else {}

    @kopf.index("v1", "pods", id="synthrec_pods", labels=children, registry=registry)
    def synthrec_pods(body: Any, **_: Any) -> dict[Any, Any]:
        key = owner_key(body)
        return {key: PodView.from_obj(body)} if key else {}

    @kopf.index(GROUP, VERSION, "syntheticdatasets", id="synthrec_datasets", registry=registry)
    def synthrec_datasets(body: Any, namespace: str | None, name: str, **_: Any) -> dict[Any, Any]:
        return {(namespace or "", name): DatasetView.from_obj(body)}

    # ----------------------------------------------------------------------------- events -> nudges

    def bind(kwargs: dict[str, Any]) -> None:
        if rec.jobs is None:
            rec.bind_indexes(kwargs["synthrec_jobs"], kwargs["synthrec_pods"], kwargs["synthrec_datasets"])

    @kopf.on.event(GROUP, VERSION, "syntheticdatasets", registry=registry)
    async def synthrec_dataset_event(type: str | None, body: Any, **kwargs: Any) -> None:
        bind(kwargs)
        rec.resource_event(DATASET, type, body)

    @kopf.on.event(GROUP, VERSION, "recognitionexperiments", registry=registry)
    async def synthrec_experiment_event(type: str | None, body: Any, **kwargs: Any) -> None:
        bind(kwargs)
        rec.resource_event(EXPERIMENT, type, body)

    @kopf.on.event("batch", "v1", "jobs", labels=children, registry=registry)
    async def synthrec_job_event(body: Any, **kwargs: Any) -> None:
        bind(kwargs)
        rec.child_event(owner_key(body))

    @kopf.on.event("v1", "pods", labels=children, registry=registry)
    async def synthrec_pod_event(body: Any, **kwargs: Any) -> None:
        bind(kwargs)
        rec.child_event(owner_key(body))

    # ----------------------------------------------------------------------------- liveness

    @kopf.on.probe(id="lastWatchEventAgeSeconds", registry=registry)
    def synthrec_watch_age(**_: Any) -> float:
        return round(time.time() - rec.last_watch_event, 3)

    @kopf.on.probe(id="resources", registry=registry)
    def synthrec_resource_count(**_: Any) -> int:
        return len(rec.bodies)

    # ----------------------------------------------------------------------------- onDelete: Delete

    def deletes_artifacts(spec: Any, **_: Any) -> bool:
        return ((spec or {}).get("output") or {}).get("onDelete") == "Delete"

    for plural in ("syntheticdatasets", "recognitionexperiments"):

        @kopf.on.delete(
            GROUP,
            VERSION,
            plural,
            id=f"delete-artifacts-{plural}",
            when=deletes_artifacts,
            retries=None,  # bounded by config.cleanup_timeout in cleanup.step
            registry=registry,
        )
        async def synthrec_delete_artifacts(body: Any, runtime: Any, **_: Any) -> None:
            # Waits in the handler (not by TemporaryError, which Kopf logs as an error every time);
            # ``runtime`` counts from the first start, across operator restarts.
            resource = dict(body)
            meta = resource.get("metadata") or {}
            key = (str(meta.get("namespace") or ""), str(resource.get("kind")), str(meta.get("name")))
            loop = asyncio.get_running_loop()
            began = loop.time() - runtime.total_seconds()
            while True:
                pods = list(_views(rec.pods, key))
                done = await cleanup.step(rec.api, resource, config, pods, loop.time() - began)
                if done.done:
                    break
                await asyncio.sleep(done.retry_after)
            if done.event is not None:
                post_event(resource, done.event)

    return rec


def _views(index: Any, key: Any) -> Iterable[Any]:
    try:
        return index.get(key, ()) if index is not None else ()
    except (KeyError, AttributeError):
        return ()
