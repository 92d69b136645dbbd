"""``spec.output.onDelete: Delete``: delete exactly what a resource wrote, from a Job in its own namespace.

The operator holds no storage credentials and never opens the storage. While the resource's finalizer
holds it (handlers.py), each step here looks at the cleanup Job (``<name>-cleanup``,
``python -m synthrec.workers cleanup``), which runs with the namespace's credentials Secret and the
resource's endpoint and deletes the keys the resource's workers recorded (workers/cleanup.py): create it,
wait for it, then report what it did in an Event and let the resource go. Whatever happens the finalizer is
released in the end (never blocking a deletion for ever): a refusal, a failure or a timeout keeps the data
and says so in a Warning Event.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from synthrec.contract.summaries import CleanupSummary, FailureSummary
from synthrec.contract.written import root_refusal
from synthrec.operator import planning
from synthrec.operator.jobs import ANNOTATION_OWNER_UID, Owner, cleanup_job_name, render_cleanup_job
from synthrec.operator.kube import KubeApi
from synthrec.operator.observed import JobView, PodView
from synthrec.operator.reconcile_pass import Context, age_of, resource_ref
from synthrec.operator.settings import OperatorConfig
from synthrec.operator.status import Event
from synthrec.plan.tasks import StorageTarget, cleanup_task


@dataclass(frozen=True)
class Step:
    """Where a cleanup stands: done (with the Event to post) or to be looked at again after a while."""

    done: bool
    event: Event | None = None
    retry_after: float = 0.0


def retained(message: str) -> Step:
    return Step(True, Event("Warning", "ArtifactsRetained", message[:1000]))


async def step(
    api: KubeApi, body: dict[str, Any], config: OperatorConfig, pods: Iterable[PodView], elapsed: float
) -> Step:
    """One look at the cleanup of ``body`` (a resource being deleted), ``elapsed`` seconds after it began."""
    kind = str(body.get("kind"))
    meta = body.get("metadata") or {}
    owner = Owner(kind, str(meta.get("name")), str(meta.get("namespace") or ""), str(meta.get("uid") or ""))
    try:
        spec = planning.parse_spec(kind, json.dumps(body.get("spec") or {}, sort_keys=True))
    except (ValidationError, ValueError) as exc:
        return retained(f"the spec is invalid ({planning.describe_error(exc)}): nothing was deleted")
    uri = spec.output.uri
    refused = planning.refused_output(uri) or root_refusal(uri)
    if refused is not None:
        return retained(f"nothing was deleted: {refused}")
    name = cleanup_job_name(owner.name)
    job = await api.read_job(owner.namespace, name)
    if job is None:
        if elapsed >= config.cleanup_timeout:
            return retained(f"the cleanup Job {name} could not be started in {config.cleanup_timeout:.0f} s")
        task = cleanup_task(
            resource_ref(owner),
            StorageTarget(uri=uri, endpoint=spec.output.endpoint, region=spec.output.region),
        )
        deadline = max(1, int(config.cleanup_timeout - elapsed))
        manifest = render_cleanup_job(owner, spec, config.worker, task, deadline_seconds=deadline)
        job = await api.create_job(owner.namespace, manifest)
        if job is None:  # created now: look again soon
            return Step(False, retry_after=config.cleanup_poll_interval)
    if (job.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_OWNER_UID) != owner.uid:
        # An earlier resource's cleanup (or somebody else's Job) holds the name: wait for it to go.
        if elapsed >= config.cleanup_timeout:
            return retained(f"Job {name} exists and is not this {kind}'s cleanup; nothing was deleted")
        return Step(False, retry_after=config.cleanup_poll_interval)
    view = JobView.from_obj(job)
    if not view.finished:
        if elapsed >= config.cleanup_timeout:
            await api.delete_job(owner.namespace, name, propagation="Background")
            return retained(f"the cleanup Job {name} did not finish in {config.cleanup_timeout:.0f} s")
        return Step(False, retry_after=config.cleanup_poll_interval)
    summaries = [p.summary for p in pods if p.job_uid == view.uid and p.summary is not None]
    if view.complete:
        done = next((s for s in summaries if isinstance(s, CleanupSummary)), None)
        since = age_of(view.finished_at, Context(now=datetime.now(UTC))) or 0.0
        if done is None and since < config.fold_grace_seconds:
            return Step(False, retry_after=config.cleanup_poll_interval)  # its pod's summary is on the way
        counts = (
            f"deleted {done.deleted} objects this {kind} wrote under {uri} ({done.ledgers} ledgers); "
            f"{done.kept} other objects there are not its own and were kept"
            if done is not None
            else f"deleted the objects this {kind} wrote under {uri}"
        )
        event = Event("Normal", "ArtifactsDeleted", counts)
    else:
        failure = next((s for s in reversed(summaries) if isinstance(s, FailureSummary)), None)
        why = failure.message if failure is not None else (view.failure.message if view.failure else "")
        event = retained(f"deleting the artifacts under {uri} failed, the data is kept: {why}").event
    await api.delete_job(owner.namespace, name, propagation="Background")
    return Step(True, event)
