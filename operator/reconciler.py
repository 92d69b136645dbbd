"""The level-triggered reconcile loop: one asyncio task per resource, woken by watch events.

Kopf watches our resources, their Jobs and Pods (and referenced datasets) and keeps compact views of the
children in in-memory indexes (handlers.py). Every event about a resource or one of its children wakes
that resource's task, which then reads everything from memory, plans (planning.py, pure) and applies the
plan: idempotent creates and deletes, Job patches, and a status patch only when something changed and at
most every ``status_interval`` seconds. A quiet resource is still reconciled every ``resync_interval``.

Why not a Kopf timer or daemon per resource: both make Kopf put a finalizer on every resource, which
blocks ``kubectl delete`` whenever the operator is down. Here the only finalizer is the one an explicit
``spec.output.onDelete: Delete`` needs (handlers.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from synthrec import api
from synthrec.operator import planning
from synthrec.operator.kube import ApiFailure, KubeApi, merge_diff
from synthrec.operator.metrics import Metrics
from synthrec.operator.observed import DatasetView, JobView, OwnerKey, PodView, controller_uid
from synthrec.operator.settings import OperatorConfig
from synthrec.operator.status import Event, StatusThrottle, transitions
from synthrec.plan import referenced_datasets

log = logging.getLogger("synthrec.operator")

DATASET = "SyntheticDataset"
EXPERIMENT = "RecognitionExperiment"
RECENT_CREATE_SECONDS = 15.0  # a Job we created may take this long to show up in the watch-fed index
MAX_BACKOFF = 60.0
CONFLICT_REPLANS = 3  # status writes that met a newer resource in a row before the pass gives up (backoff)


class StatusConflict(Exception):
    """The resource changed since the body the pass planned from (409 on the conditional status write)."""


@dataclass
class _ResourceState:
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    created: dict[str, float] = field(default_factory=dict)  # Job name -> monotonic time of our create
    failures: int = 0
    last_error: str = ""
    last_run: float = 0.0
    reported_foreign: set[str] = field(default_factory=set)  # Jobs (uid or name) already in an Event


class Reconciler:
    """Owns the per-resource tasks; Kopf handlers feed it bodies, indexes and nudges."""

    def __init__(
        self,
        config: OperatorConfig,
        *,
        metrics: Metrics | None = None,
        api_factory: Callable[[], KubeApi] | None = None,
        post_event: Callable[[dict[str, Any], Event], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self._api_factory = api_factory
        self._api: KubeApi | None = None
        self._post_event = post_event
        self.clock = clock
        self.throttle = StatusThrottle(config.status_interval)
        self.bodies: dict[OwnerKey, dict[str, Any]] = {}
        self.states: dict[OwnerKey, _ResourceState] = {}
        self.jobs: Mapping[Any, Iterable[JobView]] | None = None
        self.pods: Mapping[Any, Iterable[PodView]] | None = None
        self.datasets: Mapping[Any, Iterable[DatasetView]] | None = None
        self.last_watch_event = time.time()
        self.reconcile_durations: list[float] = []  # seconds, for benchmarks (bounded)
        # Passes per resource, ended (planned and applied, or failed): what tests and benchmarks wait on.
        self.passes: collections.Counter[OwnerKey] = collections.Counter()
        self._semaphore: asyncio.Semaphore | None = None
        self._stopped = False

    # ------------------------------------------------------------------------------- feeding

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            factory = self._api_factory or (
                lambda: KubeApi(
                    request_timeout=self.config.request_timeout,
                    workers=self.config.max_concurrent_reconciles,
                    on_error=lambda verb, code: self.metrics.api_errors.labels(verb, str(code)).inc(),
                )
            )
            self._api = factory()
        return self._api

    def bind_indexes(self, jobs: Any, pods: Any, datasets: Any) -> None:
        self.jobs, self.pods, self.datasets = jobs, pods, datasets

    def watch_event(self) -> None:
        self.last_watch_event = time.time()
        self.metrics.watch_event()

    def resource_event(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A SyntheticDataset or RecognitionExperiment was listed, added, modified or deleted."""
        self.watch_event()
        meta = body.get("metadata") or {}
        key: OwnerKey = (str(meta.get("namespace") or ""), kind, str(meta.get("name")))
        if event_type == "DELETED":
            self.forget(key)
        else:
            self.bodies[key] = copy.deepcopy(dict(body))
            self._ensure_task(key)
            self.nudge(key)
        if kind == DATASET:  # experiments waiting for this dataset re-check it
            for other, other_body in list(self.bodies.items()):
                if other[1] == EXPERIMENT and other[0] == key[0] and key[2] in _referenced(other_body):
                    self.nudge(other)

    def child_event(self, key: OwnerKey | None) -> None:
        self.watch_event()
        if key is not None:
            self.nudge(key)

    def nudge(self, key: OwnerKey) -> None:
        state = self.states.get(key)
        if state is not None:
            state.wakeup.set()

    def forget(self, key: OwnerKey) -> None:
        self.bodies.pop(key, None)
        self.throttle.forget(key)
        state = self.states.pop(key, None)
        if state is not None and state.task is not None:
            state.task.cancel()

    def stop(self) -> None:
        """Cancel every resource task (operator shutdown)."""
        self._stopped = True
        for state in self.states.values():
            if state.task is not None:
                state.task.cancel()
        self.states.clear()
        if self._api is not None:
            self._api.close()
            self._api = None

    async def wait_stopped(self) -> None:
        tasks = [s.task for s in self.states.values() if s.task is not None]
        self.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------- the loop

    def _ensure_task(self, key: OwnerKey) -> None:
        if self._stopped:
            return
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = _ResourceState()
        if state.task is None or state.task.done():
            # Created from a Kopf handler, the task inherits Kopf's context (Event posting works).
            state.task = asyncio.create_task(self._run(key, state), name=f"synthrec reconcile {key}")

    async def _run(self, key: OwnerKey, state: _ResourceState) -> None:
        while key in self.bodies and not self._stopped:
            gap = state.last_run + self.config.min_reconcile_interval - self.clock()
            if gap > 0:
                await asyncio.sleep(gap)
            state.wakeup.clear()
            state.last_run = self.clock()
            delay = await self._reconcile_guarded(key, state)
            if key not in self.bodies:
                return
            wait = self.config.resync_interval if delay is None else min(delay, self.config.resync_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wakeup.wait(), wait)

    async def _reconcile_guarded(self, key: OwnerKey, state: _ResourceState) -> float | None:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.config.max_concurrent_reconciles)
        started = self.clock()
        kind = key[1]
        async with self._semaphore:
            try:
                delay = await self.reconcile(key, state)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.failures += 1
                backoff = min(MAX_BACKOFF, 0.5 * 2 ** min(state.failures, 8))
                message = str(exc)[:1000]
                level = logging.WARNING if isinstance(exc, ApiFailure) else logging.ERROR
                log.log(
                    level,
                    "reconcile of %s/%s %s failed (%d in a row), retrying in %.0f s: %s",
                    key[0],
                    kind,
                    key[2],
                    state.failures,
                    backoff,
                    message,
                    exc_info=not isinstance(exc, ApiFailure),
                )
                if message != state.last_error and key in self.bodies:
                    self._event(self.bodies[key], Event("Warning", "ReconcileError", message))
                state.last_error = message
                self.metrics.reconciles.labels(kind, "error").inc()
                return backoff
            finally:
                elapsed = self.clock() - started
                self.metrics.reconcile_seconds.labels(kind).observe(elapsed)
                if len(self.reconcile_durations) < 100_000:
                    self.reconcile_durations.append(elapsed)
                self.passes[key] += 1
        state.failures, state.last_error = 0, ""
        self.metrics.reconciles.labels(kind, "ok").inc()
        return delay

    def observed(self, key: OwnerKey) -> planning.Observed:
        namespace, kind, _ = key
        obs = planning.Observed(jobs=list(_values(self.jobs, key)), pods=list(_values(self.pods, key)))
        if kind == EXPERIMENT:
            for ref in _referenced(self.bodies.get(key) or {}):
                views = list(_values(self.datasets, (namespace, ref)))
                obs.datasets[ref] = views[0] if views else None
        return obs

    async def reconcile(self, key: OwnerKey, state: _ResourceState | None = None) -> float | None:
        """One pass: plan from memory, apply; returns when to come back (None: at the resync interval).

        The status write is conditional on the resourceVersion the plan was made from; when the resource
        changed meanwhile (409) the pass re-reads it and plans again from that fresh state."""
        state = state or self.states.setdefault(key, _ResourceState())
        for _ in range(CONFLICT_REPLANS):
            try:
                return await self._reconcile_once(key, state)
            except StatusConflict:
                namespace, kind, name = key
                fresh = await self.api.read_resource(kind, namespace, name)
                if fresh is None or key not in self.bodies:
                    return None  # deleted meanwhile: its DELETED event ends this resource's task
                self.bodies[key] = fresh
        raise ApiFailure("patch", f"{key[1]} {key[0]}/{key[2]} status", 409, "the resource kept changing")

    async def _reconcile_once(self, key: OwnerKey, state: _ResourceState) -> float | None:
        body = self.bodies.get(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None  # deletion: the garbage collector removes the children (and handlers.py the data)
        namespace, kind, _ = key
        ctx = planning.Context(
            now=datetime.now(UTC),
            defaults=self.config.worker,
            fold_grace_seconds=self.config.fold_grace_seconds,
        )
        actions = planning.plan(body, self.observed(key), ctx)
        self._report_foreign(body, actions.foreign, state)
        rejected, blocked = await self._apply(namespace, kind, body, actions, state)
        if rejected is not None:
            actions.status = planning.fail_status(
                kind, actions.status, body, "JobRejected", rejected, ctx.stamp
            )
        elif blocked:
            actions.status = planning.blocked_status(kind, actions.status, body, blocked, ctx.stamp)
        for stage, count in actions.shards_done.items():
            self.metrics.shards_done.labels(stage).inc(count)
        for stage, count in actions.shards_failed.items():
            self.metrics.shards_failed.labels(stage).inc(count)
        wait = await self._write_status(key, body, actions.status, force=rejected is not None)
        delays = [d for d in (actions.requeue_after, wait) if d is not None]
        return min(delays) if delays else None

    def _report_foreign(self, body: dict[str, Any], jobs: Iterable[JobView], state: _ResourceState) -> None:
        """One Warning Event per Job that claims the resource by its labels but is not controlled by it."""
        for job in jobs:
            self._report_foreign_job(body, job.name, job.uid, state)

    def _report_foreign_job(self, body: dict[str, Any], name: str, uid: str, state: _ResourceState) -> None:
        if (uid or name) in state.reported_foreign:
            return
        state.reported_foreign.add(uid or name)
        meta = body.get("metadata") or {}
        kind = body.get("kind")
        message = (
            f"Job {name} is not controlled by this {kind} (uid {meta.get('uid')}): made by hand or left by "
            f"an earlier {kind} named {meta.get('name')}. synthrec ignores it (its results never count) and "
            "never adopts it"
        )
        self._event(body, Event("Warning", "ForeignJob", message))

    async def _apply(
        self,
        namespace: str,
        kind: str,
        body: dict[str, Any],
        actions: planning.Actions,
        state: _ResourceState,
    ) -> tuple[str | None, list[str]]:
        """Apply creates, deletes and patches; returns a message when the API rejected a Job for good, and
        the Jobs not created because somebody else's Job holds their name."""
        api_ = self.api
        blocked: list[str] = []
        now = self.clock()
        state.created = {n: t for n, t in state.created.items() if now - t < RECENT_CREATE_SECONDS}
        for create in actions.create:
            if create.name in state.created:
                continue  # created a moment ago; the watch has not shown it yet
            try:
                created = await self._create(namespace, body, create, state)
            except ApiFailure as exc:
                if exc.permanent:
                    return f"the API server rejected Job {create.name}: {exc.message}", blocked
                raise
            if created is None:
                blocked.append(create.name)  # a foreign Job holds the name: reported, never touched
                continue
            state.created[create.name] = self.clock()
            if created:
                stage = create.job["metadata"]["labels"].get("synthrec.io/stage", "")
                self.metrics.jobs_created.labels(kind, stage).inc()
                self._event(body, create.event)
        for name in actions.delete_jobs:
            await api_.delete_job(namespace, name)
            state.created.pop(name, None)
        # ConfigMaps go before the TTL patch: should a delete fail, the Job keeps no TTL and the next
        # reconcile plans both again, so a task ConfigMap is never left behind a Job that expired.
        for name in actions.delete_configmaps:
            await api_.delete_configmap(namespace, name)
        for name in actions.delete_services:
            await api_.delete_service(namespace, name)
        for name, patch in actions.patch_jobs:
            await api_.patch_job(namespace, name, patch)
        for event in actions.events:
            self._event(body, event)
        return None, blocked

    async def _create(
        self, namespace: str, body: dict[str, Any], create: planning.Create, state: _ResourceState
    ) -> bool | None:
        """The task ConfigMap, then the Job. True: created now; False: this resource's Job exists already;
        None: somebody else's Job holds the name (reported once, left alone).

        A ConfigMap of the name that exists already is never replaced while a Job of that name exists (the
        Job's pods mount it); without one it is replaced when its task differs (left by a crash between the
        two creates, or by hand), conditional on its resourceVersion."""
        api_, name = self.api, create.name
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if not await api_.create_configmap(namespace, create.configmap):
            job = await api_.read_job(namespace, name)
            if job is not None:
                return self._existing(body, job, uid, state)
            current = await api_.read_configmap(namespace, name)
            if (
                current is None
                or current.get("data") != create.configmap.get("data")
                or (controller_uid(current) != uid)
            ):
                if current is None:
                    await api_.create_configmap(namespace, create.configmap)
                elif not await api_.replace_configmap(
                    namespace, create.configmap, str(current["metadata"]["resourceVersion"])
                ):
                    raise ApiFailure("update", f"ConfigMap {namespace}/{name}", 409, "it changed meanwhile")
        if create.service is not None:  # before the Job: its pods' DNS names come from it
            await api_.create_service(namespace, create.service)
        existing = await api_.create_job(namespace, create.job)
        if existing is None:
            return True
        return self._existing(body, existing, uid, state)

    def _existing(
        self, body: dict[str, Any], job: dict[str, Any], uid: str, state: _ResourceState
    ) -> bool | None:
        if uid and controller_uid(job) == uid:
            return False
        meta = job.get("metadata") or {}
        self._report_foreign_job(body, str(meta.get("name")), str(meta.get("uid") or ""), state)
        return None

    async def _write_status(
        self, key: OwnerKey, body: dict[str, Any], status: dict[str, Any], *, force: bool = False
    ) -> float | None:
        persisted = body.get("status") or {}
        now = self.clock()
        due, wait = self.throttle.decide(key, persisted, status, now)
        if not due and not force:
            return wait
        status = copy.deepcopy(status)
        status.setdefault("progress", {})["lastUpdateTime"] = planning.Context(now=datetime.now(UTC)).stamp
        patch = merge_diff(persisted, status)
        if not patch:
            return None
        namespace, kind, name = key
        version = (body.get("metadata") or {}).get("resourceVersion")
        try:
            updated = await self.api.patch_status(kind, namespace, name, patch, version)
        except ApiFailure as exc:
            if exc.conflict:
                raise StatusConflict(str(exc)) from None
            raise
        if updated is None:
            return None  # the resource is gone
        if key in self.bodies:
            self.bodies[key] = updated  # the next pass plans from what was written, not from a stale view
        self.throttle.patched(key, status, now)
        self.metrics.status_patches.labels(kind).inc()
        old_phase, new_phase = persisted.get("phase"), status.get("phase")
        if old_phase != new_phase:
            if old_phase:
                self.metrics.resources.labels(kind, old_phase).dec()
            self.metrics.resources.labels(kind, new_phase or "Pending").inc()
        for event in transitions(persisted.get("conditions"), status.get("conditions") or []):
            self._event(body, event)
        return None

    def _event(self, body: dict[str, Any], event: Event) -> None:
        meta = body.get("metadata") or {}
        ref = {
            "apiVersion": body.get("apiVersion") or api.API_VERSION,
            "kind": body.get("kind"),
            "metadata": {
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
        }
        if self._post_event is not None:
            try:
                self._post_event(ref, event)
            except Exception as exc:  # events are best effort; never fail a reconcile over one
                log.debug("could not post event %s: %s", event.reason, exc)


def _values(index: Mapping[Any, Iterable[Any]] | None, key: Any) -> Iterable[Any]:
    if index is None:
        return ()
    try:
        return index.get(key, ())  # type: ignore[attr-defined]
    except (KeyError, AttributeError):
        return ()


def _referenced(body: Mapping[str, Any]) -> list[str]:
    """The SyntheticDatasets an experiment body references (none while its spec is invalid)."""
    try:
        spec = planning.parse_spec(EXPERIMENT, json.dumps(body.get("spec") or {}, sort_keys=True))
    except (ValidationError, ValueError):
        return []
    return referenced_datasets(spec)
