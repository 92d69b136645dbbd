"""Compact, immutable views of what the operator observes: its child Jobs and Pods, and referenced datasets.

The watch streams hand the operator full objects; it keeps only these small views in memory (a 1000-shard
dataset means 1000 pods), and the planner works on them. Everything here is pure: dict in, view out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from synthrec.contract.summaries import FailureSummary, StageSummary, parse_summary
from synthrec.plan import parse_ranges

# Labels on everything the operator creates (the contract in /work/contracts.md).
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# The other recommended labels on children (kubernetes.io/docs/concepts/overview/working-with-objects/
# common-labels): name = the application, instance = the resource, component = the stage.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "synthrec"
LABEL_RESOURCE = "synthrec.io/resource"
LABEL_KIND = "synthrec.io/kind"
LABEL_STAGE = "synthrec.io/stage"
LABEL_ATTEMPT = "synthrec.io/attempt"
LABEL_RUN = "synthrec.io/run"
# The shard ids of an attempt, as a range string: completion index i runs the i-th smallest id.
ANNOTATION_SHARDS = "synthrec.io/shards"
ANNOTATION_RUN_INDEX = "synthrec.io/run-index"
# The headless Service of a multi-node (torchrun) Job: deleted with the Job's task ConfigMap.
ANNOTATION_SERVICE = "synthrec.io/service"

WORKER_CONTAINER = "worker"
_JOB_INDEX_KEY = "batch.kubernetes.io/job-completion-index"

OwnerKey = tuple[str, str, str]  # (namespace, kind, name) of a SyntheticDataset/RecognitionExperiment


def owner_key(obj: dict[str, Any]) -> OwnerKey | None:
    """The resource a child object claims to belong to, from its labels; None for objects that are not ours.

    Labels are only a claim anybody can make: whether the resource really controls the object is decided
    by the uid of its controller ownerReference (``controller_uid``), which the planner checks."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(LABEL_MANAGED_BY) != MANAGED_BY or not labels.get(LABEL_RESOURCE):
        return None
    return (str(meta.get("namespace") or ""), str(labels.get(LABEL_KIND) or ""), str(labels[LABEL_RESOURCE]))


def controller_uid(obj: dict[str, Any], kind: str | None = None) -> str:
    """The uid in the object's controller ownerReference (of ``kind`` when given), else ''."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") is True and (kind is None or ref.get("kind") == kind):
            return str(ref.get("uid") or "")
    return ""


@dataclass(frozen=True)
class JobCondition:
    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""


@dataclass(frozen=True)
class JobView:
    """One child batch/v1 Job (one attempt of one stage, or one run of an experiment)."""

    name: str
    uid: str
    stage: str
    attempt: int
    run: str | None = None
    run_index: int | None = None
    shard_ids: tuple[int, ...] | None = None  # None: completion index == shard id
    completions: int = 1
    parallelism: int | None = None
    service: str | None = None
    suspended: bool = False
    ttl: int | None = None
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0
    completed_indexes: str = ""
    failed_indexes: str = ""
    conditions: tuple[JobCondition, ...] = ()
    deleting: bool = False
    created: str = ""
    controller_uid: str = ""  # the resource that really controls it (its controller ownerReference)

    @classmethod
    def from_obj(cls, job: dict[str, Any]) -> JobView:
        meta = job.get("metadata") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        spec = job.get("spec") or {}
        status = job.get("status") or {}
        shards = annotations.get(ANNOTATION_SHARDS)
        run_index = annotations.get(ANNOTATION_RUN_INDEX)
        return cls(
            name=str(meta.get("name")),
            uid=str(meta.get("uid") or ""),
            stage=str(labels.get(LABEL_STAGE) or ""),
            attempt=_int(labels.get(LABEL_ATTEMPT), 1),
            run=labels.get(LABEL_RUN),
            run_index=_int(run_index, None) if run_index is not None else None,
            shard_ids=tuple(sorted(parse_ranges(shards))) if shards else None,
            completions=_int(spec.get("completions"), 1),
            parallelism=spec.get("parallelism"),
            suspended=bool(spec.get("suspend")),
            ttl=spec.get("ttlSecondsAfterFinished"),
            active=_int(status.get("active"), 0),
            ready=_int(status.get("ready"), 0),
            succeeded=_int(status.get("succeeded"), 0),
            failed=_int(status.get("failed"), 0),
            completed_indexes=str(status.get("completedIndexes") or ""),
            failed_indexes=str(status.get("failedIndexes") or ""),
            service=annotations.get(ANNOTATION_SERVICE),
            conditions=tuple(
                JobCondition(
                    str(c.get("type")),
                    str(c.get("status")),
                    str(c.get("reason") or ""),
                    str(c.get("message") or ""),
                    str(c.get("lastTransitionTime") or ""),
                )
                for c in status.get("conditions") or []
            ),
            deleting=bool(meta.get("deletionTimestamp")),
            created=str(meta.get("creationTimestamp") or ""),
            controller_uid=controller_uid(job),
        )

    def condition(self, ctype: str) -> JobCondition | None:
        for c in self.conditions:
            if c.type == ctype and c.status == "True":
                return c
        return None

    @property
    def complete(self) -> bool:
        return self.condition("Complete") is not None

    @property
    def failed_final(self) -> bool:
        return self.condition("Failed") is not None

    @property
    def finished(self) -> bool:
        return self.complete or self.failed_final

    @property
    def finished_at(self) -> str:
        c = self.condition("Complete") or self.condition("Failed")
        return c.last_transition_time if c else ""

    @property
    def failure(self) -> JobCondition | None:
        """The terminal (or about to be terminal) failure of the Job, with the Job controller's reason."""
        return self.condition("Failed") or self.condition("FailureTarget")

    def shard_of(self, index: int) -> int:
        if self.shard_ids is None:
            return index
        return self.shard_ids[index] if 0 <= index < len(self.shard_ids) else -1

    def completed_shards(self) -> set[int]:
        return {self.shard_of(i) for i in parse_ranges(self.completed_indexes)} - {-1}

    def failed_shards(self) -> set[int]:
        return {self.shard_of(i) for i in parse_ranges(self.failed_indexes)} - {-1}

    def all_shards(self) -> set[int]:
        if self.shard_ids is not None:
            return set(self.shard_ids)
        return set(range(self.completions))


@dataclass(frozen=True)
class PodView:
    """One worker pod, reduced to what status needs: where it is in its life and what it reported."""

    name: str
    job_uid: str
    job_name: str
    index: int | None
    phase: str
    running: bool = False
    exit_code: int | None = None
    summary: StageSummary | FailureSummary | None = field(default=None, compare=False, hash=False)
    message: str = ""  # the termination message when it is not our JSON summary (e.g. log tail)
    waiting_reason: str = ""
    waiting_message: str = ""
    unschedulable: str = ""  # the scheduler's message while PodScheduled=False
    deleting: bool = False
    disrupted: bool = False

    @classmethod
    def from_obj(cls, pod: dict[str, Any]) -> PodView:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        status = pod.get("status") or {}
        job_uid, job_name = (
            "",
            str(labels.get("batch.kubernetes.io/job-name") or labels.get("job-name") or ""),
        )
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == "Job" and ref.get("controller") is True:  # the Job that really runs it
                job_uid, job_name = str(ref.get("uid") or ""), str(ref.get("name") or job_name)
        index = annotations.get(_JOB_INDEX_KEY, labels.get(_JOB_INDEX_KEY))
        container = _worker_status(status)
        state = (container or {}).get("state") or {}
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        unschedulable = ""
        disrupted = False
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                unschedulable = str(c.get("message") or c.get("reason") or "Unschedulable")
            if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
                disrupted = True
        raw = terminated.get("message")
        summary = parse_summary(raw)
        return cls(
            name=str(meta.get("name")),
            job_uid=job_uid,
            job_name=job_name,
            index=_int(index, None) if index is not None else None,
            phase=str(status.get("phase") or "Pending"),
            running=status.get("phase") == "Running" and "running" in state,
            exit_code=terminated.get("exitCode") if terminated else None,
            summary=summary,
            message="" if summary is not None else str(raw or "")[-1024:],
            waiting_reason=str(waiting.get("reason") or ""),
            waiting_message=str(waiting.get("message") or ""),
            unschedulable=unschedulable,
            deleting=bool(meta.get("deletionTimestamp")),
            disrupted=disrupted,
        )

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded" or self.exit_code == 0

    @property
    def error_message(self) -> str:
        """What the worker said about its failure (its summary's message, else the raw message)."""
        if isinstance(self.summary, FailureSummary) and self.summary.message:
            return self.summary.message
        return self.message


@dataclass(frozen=True)
class DatasetView:
    """What an experiment needs to know about a referenced SyntheticDataset."""

    name: str
    uid: str
    uri: str
    endpoint: str | None
    region: str | None
    complete: bool
    failed: bool
    phase: str
    message: str
    manifest: str | None
    digest: str | None
    deleting: bool = False

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> DatasetView:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        output = spec.get("output") or {}
        status = obj.get("status") or {}
        artifacts = status.get("artifacts") or {}
        conds = {c.get("type"): c for c in status.get("conditions") or []}
        failed = (conds.get("Failed") or {}).get("status") == "True"
        complete = (conds.get("Complete") or {}).get("status") == "True"
        message = str((conds.get("Failed") or {}).get("message") or status.get("message") or "")
        return cls(
            name=str(meta.get("name")),
            uid=str(meta.get("uid") or ""),
            uri=str(output.get("uri") or ""),
            endpoint=output.get("endpoint"),
            region=output.get("region"),
            complete=complete,
            failed=failed,
            phase=str(status.get("phase") or "Pending"),
            message=message,
            manifest=artifacts.get("manifest"),
            digest=artifacts.get("manifestDigest"),
            deleting=bool(meta.get("deletionTimestamp")),
        )


def _worker_status(status: dict[str, Any]) -> dict[str, Any] | None:
    statuses = status.get("containerStatuses") or []
    for c in statuses:
        if c.get("name") == WORKER_CONTAINER:
            return c
    return statuses[0] if statuses else None


def _int(value: Any, default: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
