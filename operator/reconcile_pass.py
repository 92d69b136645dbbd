"""One reconcile pass of one resource: what the dataset and the experiment planners share.

A :class:`Pass` is opened from the persisted status and the observed children, edited by a planner
(planning_dataset.py, planning_experiment.py) and closed into :class:`Actions`: the same opening (status
copy, conditions, the Accepted condition, terminal states are sticky) and the same closing (Failed,
Suspended, Degraded, TTLs of folded Jobs, phase from conditions) for both kinds. Pure, like the planners.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from synthrec import api
from synthrec.operator.jobs import Gang, JobShape, Owner, WorkerDefaults, render_job
from synthrec.operator.observed import DatasetView, JobView, PodView
from synthrec.operator.status import Activity, Conditions, Event, pod_activity
from synthrec.plan.tasks import ResourceRef
from synthrec.timestamps import utc_stamp


@dataclass(frozen=True)
class Context:
    """What a plan depends on besides the resource and its children."""

    now: datetime
    defaults: WorkerDefaults = field(default_factory=WorkerDefaults)
    # How long a completed index may lack a visible successful pod (its summary) before it is folded
    # without totals; pods and Jobs arrive on different watch streams.
    fold_grace_seconds: float = 30.0

    @property
    def stamp(self) -> str:
        return utc_stamp(self.now)


@dataclass
class Observed:
    jobs: list[JobView] = field(default_factory=list)
    pods: list[PodView] = field(default_factory=list)
    datasets: dict[str, DatasetView | None] = field(default_factory=dict)  # experiments: ref -> view
    # Jobs that carry the resource's labels but whose controller ownerReference is not the resource's uid:
    # made by hand, or left by an earlier resource of the same name. Never counted, never adopted.
    foreign: list[JobView] = field(default_factory=list)

    def controlled_by(self, uid: str) -> Observed:
        """Only the Jobs whose controller is the resource ``uid`` (and their pods); the rest as foreign."""
        owned = [j for j in self.jobs if uid and j.controller_uid == uid]
        uids = {j.uid for j in owned}
        return Observed(
            jobs=owned,
            pods=[p for p in self.pods if p.job_uid in uids],
            datasets=self.datasets,
            foreign=[*self.foreign, *(j for j in self.jobs if j not in owned)],
        )


@dataclass(frozen=True)
class Create:
    """A stage attempt or run to start: its task ConfigMap first, its headless Service (multi-node
    torchrun stages), then its Job."""

    name: str
    configmap: dict[str, Any]
    job: dict[str, Any]
    event: Event
    service: dict[str, Any] | None = None


@dataclass
class Actions:
    status: dict[str, Any]
    create: list[Create] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    delete_configmaps: list[str] = field(default_factory=list)
    delete_services: list[str] = field(default_factory=list)
    patch_jobs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # besides condition transitions
    requeue_after: float | None = None  # come back this soon even without a watch event
    shards_done: dict[str, int] = field(default_factory=dict)  # newly folded, per stage (metrics)
    shards_failed: dict[str, int] = field(default_factory=dict)
    foreign: list[JobView] = field(default_factory=list)  # Jobs with our labels, not ours: to report once

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def status_model(kind: str, persisted: dict[str, Any]) -> Any:
    model = api.KIND_INFO[kind].status
    try:
        return model.model_validate(persisted or {})
    except ValidationError:
        return model()  # somebody wrote junk into status: start over from the observed children


@dataclass
class Pass:
    """The status being written in one pass, with what it was computed from."""

    owner: Owner
    generation: int | None
    spec: Any
    observed: Observed
    ctx: Context
    old: Any  # the persisted status (model)
    status: Any  # the new status (a deep copy of ``old``, edited by the planner)
    conds: Conditions
    actions: Actions

    @classmethod
    def open(
        cls,
        owner: Owner,
        generation: int | None,
        spec: Any,
        persisted: dict[str, Any],
        observed: Observed,
        ctx: Context,
    ) -> Pass:
        old = status_model(owner.kind, persisted)
        status = old.model_copy(deep=True)
        status.artifacts.uri = spec.output.uri
        conds = Conditions([c.wire() for c in old.conditions], generation, ctx.stamp)
        return cls(owner, generation, spec, observed, ctx, old, status, conds, Actions(status={}))

    # ---- opening

    @property
    def settled(self) -> bool:
        """A persisted terminal state that stays (an InvalidSpec failure is re-evaluated on a new spec)."""
        return persisted_terminal(self.old) and not self.regenerated

    @property
    def regenerated(self) -> bool:
        for c in self.old.conditions:
            if c.type == "Failed" and c.status == "True" and c.reason == "InvalidSpec":
                return self.generation is not None and c.observed_generation != self.generation
        return False

    def settle(self, folded: Callable[[JobView], bool]) -> Actions:
        """Terminal states are sticky: stop what still runs, expire what finished, change nothing else."""
        stop_unfinished(self.actions, self.observed.jobs)
        self.expire(folded)
        self.conds.stop_activity("Complete" if self.conds.is_true("Complete") else "Failed")
        return self.close()

    def accept(self) -> None:
        if self.regenerated:
            self.conds.items = [c for c in self.conds.items if c.get("type") not in ("Failed", "Accepted")]
        self.conds.set("Accepted", True, "Valid", "the spec is valid")

    def activity(self) -> Activity:
        return pod_activity([j for j in self.observed.jobs if not j.finished], self.observed.pods)

    def deadline(self, activity: Activity) -> tuple[str, str] | None:
        """A Failed reason and message when runPolicy's deadlines are exceeded."""
        policy = self.spec.run_policy
        if policy.active_deadline_seconds is not None:
            age = age_of(self.status.start_time, self.ctx)
            if age is not None and age > policy.active_deadline_seconds:
                return "DeadlineExceeded", (
                    f"running for {int(age)} s, longer than runPolicy.activeDeadlineSeconds="
                    f"{policy.active_deadline_seconds}"
                )
        if policy.startup_deadline_seconds is not None and not activity.running:
            queued = self.conds.get("Queued")
            if queued and queued.get("status") == "True":
                age = age_of(queued.get("lastTransitionTime"), self.ctx)
                if age is not None and age > policy.startup_deadline_seconds:
                    return "StartupDeadlineExceeded", (
                        f"no pod started within runPolicy.startupDeadlineSeconds="
                        f"{policy.startup_deadline_seconds}: {queued.get('message')}"
                    )
        return None

    def remaining_deadline(self) -> int | None:
        limit = self.spec.run_policy.active_deadline_seconds
        if limit is None:
            return None
        age = age_of(self.status.start_time, self.ctx) or 0.0
        return max(1, int(limit - age))

    def started(self) -> None:
        if self.status.start_time is None:
            self.status.start_time = self.ctx.stamp

    # ---- closing

    def fail(self, reason: str, message: str) -> None:
        """Failed=True: stop every unfinished Job."""
        self.conds.set("Failed", True, reason, message)
        self.conds.stop_activity(reason)
        self.status.completion_time = self.status.completion_time or self.ctx.stamp
        self.status.message = message[:4096]
        stop_unfinished(self.actions, self.observed.jobs)

    def complete(self, reason: str, message: str, summary: str) -> None:
        self.conds.set("Complete", True, reason, message)
        self.conds.stop_activity("Complete")
        self.status.completion_time = self.status.completion_time or self.ctx.stamp
        self.status.message = summary

    def suspend(self, stopping: list[str], idle_message: str) -> None:
        """Suspended=True while ``stopping`` Jobs go away (come back soon), ``idle_message`` after."""
        noun = "Job(s)" if self.owner.kind == "SyntheticDataset" else "run Job(s)"
        message = f"stopping {len(stopping)} {noun}" if stopping else idle_message
        self.conds.set("Suspended", True, "UserSuspended", message)
        self.conds.stop_activity("Suspended")
        self.status.message = message
        if stopping:
            self.actions.requeue(1.0)

    def run(self, activity: Activity, running_reason: str, message: str) -> None:
        """Still going: Running/Queued from what the pods do; Suspended=False after a resume."""
        if self.conds.is_true("Suspended"):
            self.conds.set("Suspended", False, "Resumed", "runPolicy.suspend is false")
        activity.starting += [c.name for c in self.actions.create]  # created in this pass
        self.conds.apply_activity(activity, running_reason)
        self.status.message = message

    def degraded(self, troubles: list[tuple[str, str]], recovered: str) -> None:
        if troubles:
            self.conds.set("Degraded", True, troubles[0][0], "; ".join(m for _, m in troubles)[:4000])
        else:
            self.conds.clear("Degraded", "Recovered", recovered)

    def expire(self, folded: Callable[[JobView], bool]) -> None:
        """Finished Jobs whose results are in the persisted status get a TTL (and lose their ConfigMap)."""
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        if ttl is None:
            return
        for job in self.observed.jobs:
            if job.finished and not job.deleting and job.ttl is None and folded(job):
                self.actions.patch_jobs.append((job.name, {"spec": {"ttlSecondsAfterFinished": ttl}}))
                release(self.actions, job)

    def close(self) -> Actions:
        self._blocked_by_foreign_jobs()
        finish_status(self.status, self.conds, self.generation)
        self.actions.status = self.status.wire()
        return self.actions

    def _blocked_by_foreign_jobs(self) -> None:
        """A Job this pass would create whose name a foreign Job holds is not created (it would be a 409,
        and the foreign Job is never taken over): the resource waits and says what to delete."""
        taken = {j.name: j for j in self.observed.foreign if not j.deleting}
        blocked = [c.name for c in self.actions.create if c.name in taken]
        if not blocked:
            return
        self.actions.create = [c for c in self.actions.create if c.name not in taken]
        name_taken(self.conds, self.owner, blocked)
        self.actions.requeue(5.0)


# ------------------------------------------------------------------------------------------- helpers


def name_taken(conds: Conditions, owner: Owner, names: list[str]) -> None:
    """Degraded: Jobs this resource needs cannot be created, because Jobs it does not control hold their
    names (made by hand, or left by an earlier resource of the same name)."""
    joined = ", ".join(names)
    conds.set(
        "Degraded",
        True,
        "NameTakenByForeignJob",
        f"Job {joined} exists but is not controlled by this {owner.kind} (uid {owner.uid}): it was made by "
        "hand or left by an earlier resource of the same name. synthrec never adopts it and waits: delete it "
        f"(kubectl -n {owner.namespace} delete job {joined}) to go on",
    )


def finish_status(status: Any, conds: Conditions, generation: int | None) -> None:
    status.phase = conds.finish()
    status.conditions = [api.Condition.model_validate(c) for c in conds.items]
    status.observed_generation = generation


def persisted_terminal(status: Any) -> bool:
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in status.conditions)


def resource_ref(owner: Owner) -> ResourceRef:
    return ResourceRef(
        kind=owner.kind, name=owner.name, namespace=owner.namespace or None, uid=owner.uid or None
    )


def _parse_time(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def age_of(stamp: str | None, ctx: Context) -> float | None:
    when = _parse_time(stamp)
    return None if when is None else (ctx.now - when).total_seconds()


def pods_by_job(pods: Iterable[PodView]) -> dict[str, list[PodView]]:
    out: dict[str, list[PodView]] = defaultdict(list)
    for pod in pods:
        out[pod.job_uid].append(pod)
    return out


def successful_pods(pods: Iterable[PodView]) -> dict[int, PodView]:
    """Completion index -> a succeeded pod of it (one with a summary when there are several)."""
    found: dict[int, PodView] = {}
    for pod in pods:
        if pod.index is not None and pod.succeeded:
            best = found.get(pod.index)
            if best is None or (best.summary is None and pod.summary is not None):
                found[pod.index] = pod
    return found


def failed_pod_message(pods: list[PodView], code: int | None = None) -> str:
    """What the last failed pod said (optionally: the one that exited with ``code``)."""
    for pod in reversed(pods):
        if pod.exit_code not in (None, 0) and (code is None or pod.exit_code == code):
            text = pod.error_message
            if text:
                return f"pod {pod.name} exited {pod.exit_code}: {text}"
            return f"pod {pod.name} exited {pod.exit_code}"
    return ""


def run_failure_message(reason: str, detail: str, stage: str | None = None) -> str:
    """A failed run's status message: where (the stage of a pre-training run), the Job's reason, and what
    its last failed pod said; cut to the status field's 1024 characters."""
    message = f"{stage} {reason}" if stage else reason
    return (f"{message}: {detail}" if detail else message)[:1024]


def stop_unfinished(actions: Actions, jobs: Iterable[JobView]) -> None:
    for job in jobs:
        if not job.finished and not job.deleting:
            actions.delete_jobs.append(job.name)
            release(actions, job)


def release(actions: Actions, job: JobView) -> None:
    """What a Job leaves behind once it ends or is stopped: its task ConfigMap and its Service."""
    actions.delete_configmaps.append(job.name)
    if job.service:
        actions.delete_services.append(job.service)


def render_run_job(
    p: Pass, name: str, stage: str, labels: dict[str, str], run_index: int, gang: Gang | None = None
) -> dict[str, Any]:
    """The Job of one run (or one stage of a pre-training run): one pod, or a gang's ``nodes`` pods, each
    index failing the run after ``execution.retriesPerRun`` retries."""
    nodes = gang.nodes if gang else 1
    shape = JobShape(
        completions=nodes,
        parallelism=nodes,
        retries_per_index=p.spec.execution.retries_per_run,
        max_failed_indexes=0,
        active_deadline_seconds=p.remaining_deadline(),
    )
    return render_job(
        p.owner,
        name=name,
        stage=stage,
        labels=labels,
        shape=shape,
        spec=p.spec,
        defaults=p.ctx.defaults,
        run_index=run_index,
        gang=gang,
    )
