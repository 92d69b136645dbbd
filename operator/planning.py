"""Planning: (spec, persisted status, observed children) -> actions. Pure functions, no I/O.

The reconciler calls :func:`plan` on every pass (level-triggered): it reads the resource, its child Jobs
and Pods (and, for an experiment, the referenced datasets), and gets back the Jobs and ConfigMaps to
create, the Jobs to delete or patch, and the status to write. Nothing here remembers anything between
calls: what must survive a restart lives in status.

Datasets: prompts -> generate (Indexed Job over shards) -> filter (Indexed Job over the generated shards;
skipped when disabled) -> reduce. Each stage runs in attempts: attempt 1 runs every shard; when it ends
with failed shards, attempt 2 runs only the shards without a commit, and so on up to
``sharding.maxAttempts``. The union of committed shards is kept in status as a range string
(``stages.<stage>.shards.succeededIndexes``), together with the image totals of exactly those shards, in
one status object: a shard's totals are added exactly when it enters the union.

Experiments: wait until every referenced SyntheticDataset is Complete, pin its manifest URI and digest
(``status.datasets``), expand the matrix, run at most ``execution.parallelism`` runs at once and fold each
run's metrics into ``status.results``.

Two rules make it safe to lose the operator at any moment:
- a child Job is destroyed (TTL, suspend) only after its results are in the *persisted* status;
- names are deterministic (``<resource>-<stage>-a<attempt>``, ``<resource>-r<run>-a<attempt>``), so a
  plan repeated after a crash creates nothing twice (409 on create is success).
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from synthrec import api
from synthrec.contract.layout import DatasetLayout, ExperimentLayout
from synthrec.operator.jobs import (
    JobShape,
    Owner,
    WorkerDefaults,
    child_labels,
    render_configmap,
    render_job,
    run_job_name,
    stage_job_name,
)
from synthrec.operator.observed import DatasetView, JobView, PodView
from synthrec.operator.status import (
    Activity,
    Conditions,
    Event,
    pod_activity,
    summary_float,
    summary_int,
    summary_str,
)
from synthrec.plan import (
    StageDef,
    dataset_stages,
    dataset_task,
    experiment_hash,
    experiment_runs,
    format_ranges,
    parse_ranges,
    train_task,
)
from synthrec.plan.tasks import DatasetInput, ResourceRef
from synthrec.timestamps import utc_stamp

MAX_RANGE_STRING = 4096  # the CRD's maxLength of succeededIndexes / failedIndexes
STAGE_WEIGHTS = {"prompts": 5, "generate": 70, "filter": 20, "reduce": 5}
TRAIN_STAGE = "train"

# Keys read from worker termination summaries (synthrec.contract.summary_line), first match wins.
GENERATED_KEYS = ("images", "generated", "written", "count")
PASSED_KEYS = ("passed",)
KEPT_KEYS = ("kept",)
REJECTED_KEYS = ("rejected",)
MANIFEST_KEYS = ("manifest", "manifest_uri")
DIGEST_KEYS = ("manifest_digest", "digest", "sha256")
REPORT_KEYS = ("report",)
TOP1_KEYS = ("top1", "test_top1", "accuracy")
ZERO_SHOT_KEYS = ("zero_shot_top1", "zeroshot_top1")
METRICS_KEYS = ("metrics", "metrics_uri")


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


@dataclass(frozen=True)
class Create:
    """A stage attempt or run to start: its task ConfigMap first, then its Job."""

    name: str
    configmap: dict[str, Any]
    job: dict[str, Any]
    event: Event


@dataclass
class Actions:
    status: dict[str, Any]
    create: list[Create] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    delete_configmaps: list[str] = field(default_factory=list)
    patch_jobs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # besides condition transitions
    requeue_after: float | None = None  # come back this soon even without a watch event
    shards_done: dict[str, int] = field(default_factory=dict)  # newly folded, per stage (metrics)
    shards_failed: dict[str, int] = field(default_factory=dict)

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


# ------------------------------------------------------------------------------------------ entry point


def plan(body: dict[str, Any], observed: Observed, ctx: Context) -> Actions:
    """Plan one reconcile pass of a SyntheticDataset or RecognitionExperiment ``body`` (as from the API)."""
    kind = str(body.get("kind"))
    meta = body.get("metadata") or {}
    owner = Owner(kind, str(meta.get("name")), str(meta.get("namespace") or ""), str(meta.get("uid") or ""))
    generation = meta.get("generation")
    persisted = body.get("status") or {}
    try:
        api.ObjectMeta.model_validate({"name": owner.name})
        spec = parse_spec(kind, json.dumps(body.get("spec") or {}, sort_keys=True))
    except (ValidationError, ValueError, KeyError) as exc:
        return _invalid(kind, owner, generation, persisted, observed, ctx, describe_error(exc))
    if kind == "SyntheticDataset":
        return plan_dataset(owner, generation, spec, persisted, observed, ctx)
    return plan_experiment(owner, generation, spec, persisted, observed, ctx)


@functools.lru_cache(maxsize=512)
def parse_spec(kind: str, spec_json: str) -> Any:
    """The validated spec model (CEL rules included: the costly part of a plan, hence the cache; the planner
    never mutates it)."""
    return api.KIND_INFO[kind].spec.model_validate(json.loads(spec_json))


def describe_error(exc: Exception) -> str:
    """A pydantic error as one line per problem, with the field path in the wire (camelCase) form."""
    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors()[:10]:
            loc = ".".join(_camel(str(p)) for p in err.get("loc", ()))
            where = f"spec.{loc}" if loc and not loc.startswith("name") else (loc or "spec")
            lines.append(f"{where}: {err.get('msg')}")
        return "; ".join(lines)
    if isinstance(exc, KeyError):
        return f"unknown kind {exc}"
    return str(exc)


def _camel(part: str) -> str:
    head, *rest = part.split("_")
    return head + "".join(p.title() for p in rest)


def _status_model(kind: str, persisted: dict[str, Any]) -> Any:
    model = api.KIND_INFO[kind].status
    try:
        return model.model_validate(persisted or {})
    except ValidationError:
        return model()  # somebody wrote junk into status: start over from the observed children


def _invalid(
    kind: str,
    owner: Owner,
    generation: int | None,
    persisted: dict[str, Any],
    observed: Observed,
    ctx: Context,
    message: str,
) -> Actions:
    """An invalid spec that slipped past the schema: Failed/InvalidSpec, and no Jobs."""
    status = _status_model(kind, persisted)
    conds = Conditions(status.conditions and [c.wire() for c in status.conditions], generation, ctx.stamp)
    conds.set("Accepted", False, "InvalidSpec", message)
    conds.set("Failed", True, "InvalidSpec", f"the spec is invalid: {message}")
    conds.stop_activity("InvalidSpec")
    status.message = f"invalid spec: {message}"[:4096]
    status.completion_time = status.completion_time or ctx.stamp
    actions = Actions(status={})
    for job in observed.jobs:  # a spec that became invalid (never via the API server) stops its Jobs
        if not job.finished and not job.deleting:
            actions.delete_jobs.append(job.name)
    _finish_status(status, conds, generation)
    actions.status = status.wire()
    return actions


def _finish_status(status: Any, conds: Conditions, generation: int | None) -> None:
    status.conditions = [api.Condition.model_validate(c) for c in conds.items]
    status.phase = conds.phase()
    status.observed_generation = generation


def _resource_ref(owner: Owner) -> ResourceRef:
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


def _age(stamp: str | None, ctx: Context) -> float | None:
    when = _parse_time(stamp)
    return None if when is None else (ctx.now - when).total_seconds()


def _pods_by_job(pods: Iterable[PodView]) -> dict[str, list[PodView]]:
    out: dict[str, list[PodView]] = defaultdict(list)
    for pod in pods:
        out[pod.job_uid].append(pod)
    return out


def _successful_pods(pods: Iterable[PodView]) -> dict[int, PodView]:
    """Completion index -> a succeeded pod of it (one with a summary when there are several)."""
    found: dict[int, PodView] = {}
    for pod in pods:
        if pod.index is not None and pod.succeeded:
            best = found.get(pod.index)
            if best is None or (best.summary is None and pod.summary is not None):
                found[pod.index] = pod
    return found


def _failed_pod_message(pods: list[PodView], code: int | None = None) -> str:
    """What the last failed pod said (optionally: the one that exited with ``code``)."""
    for pod in reversed(pods):
        if pod.exit_code not in (None, 0) and (code is None or pod.exit_code == code):
            text = pod.error_message
            if text:
                return f"pod {pod.name} exited {pod.exit_code}: {text}"
            return f"pod {pod.name} exited {pod.exit_code}"
    return ""


def _deadlines(
    spec: Any, status: Any, conds: Conditions, activity: Activity, ctx: Context
) -> tuple[str, str] | None:
    """A Failed reason and message when runPolicy's deadlines are exceeded."""
    policy = spec.run_policy
    if policy.active_deadline_seconds is not None:
        age = _age(status.start_time, ctx)
        if age is not None and age > policy.active_deadline_seconds:
            return "DeadlineExceeded", (
                f"running for {int(age)} s, longer than runPolicy.activeDeadlineSeconds="
                f"{policy.active_deadline_seconds}"
            )
    if policy.startup_deadline_seconds is not None and not activity.running:
        queued = conds.get("Queued")
        if queued and queued.get("status") == "True":
            age = _age(queued.get("lastTransitionTime"), ctx)
            if age is not None and age > policy.startup_deadline_seconds:
                return "StartupDeadlineExceeded", (
                    f"no pod started within runPolicy.startupDeadlineSeconds="
                    f"{policy.startup_deadline_seconds}: {queued.get('message')}"
                )
    return None


def _remaining_deadline(spec: Any, status: Any, ctx: Context) -> int | None:
    limit = spec.run_policy.active_deadline_seconds
    if limit is None:
        return None
    age = _age(status.start_time, ctx) or 0.0
    return max(1, int(limit - age))


def _ttl_and_cleanup(actions: Actions, jobs: Iterable[JobView], ttl: int | None, folded: Any) -> None:
    """Finished Jobs whose results are in the persisted status get their TTL (and lose their ConfigMap)."""
    if ttl is None:
        return
    for job in jobs:
        if job.finished and not job.deleting and job.ttl is None and folded(job):
            actions.patch_jobs.append((job.name, {"spec": {"ttlSecondsAfterFinished": ttl}}))
            actions.delete_configmaps.append(job.name)


def _stop_unfinished(actions: Actions, jobs: Iterable[JobView]) -> None:
    for job in jobs:
        if not job.finished and not job.deleting:
            actions.delete_jobs.append(job.name)
            actions.delete_configmaps.append(job.name)


# ----------------------------------------------------------------------------------------- datasets


@dataclass
class StageResult:
    state: str  # done | running | failed
    reason: str = ""
    message: str = ""
    trouble: tuple[str, str] | None = None  # a Degraded reason/message while running
    newly: dict[int, PodView | None] = field(default_factory=dict)  # shards folded in this pass
    union: set[int] = field(default_factory=set)
    wanted: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)


def plan_dataset(
    owner: Owner,
    generation: int | None,
    spec: api.SyntheticDatasetSpec,
    persisted: dict[str, Any],
    observed: Observed,
    ctx: Context,
) -> Actions:
    old: api.SyntheticDatasetStatus = _status_model("SyntheticDataset", persisted)
    status = old.model_copy(deep=True)
    actions = Actions(status={})
    conds = Conditions([c.wire() for c in old.conditions], generation, ctx.stamp)
    layout = DatasetLayout(spec.output.uri)
    stages = dataset_stages(spec)
    status.spec_hash = stages[-1].spec_hash
    status.artifacts.uri = spec.output.uri
    jobs_by_stage: dict[str, list[JobView]] = defaultdict(list)
    for job in observed.jobs:
        jobs_by_stage[job.stage].append(job)
    pods_by_job = _pods_by_job(observed.pods)

    def persisted_shards(job: JobView) -> bool:
        """Every shard this Job completed is in the persisted union of its stage."""
        prev = getattr(old.stages, job.stage, None)
        return prev is None or job.completed_shards() <= parse_ranges(prev.shards.succeeded_indexes)

    def folded(job: JobView) -> bool:
        """The persisted status holds this finished Job's outcome: it may expire."""
        prev = getattr(old.stages, job.stage, None)
        if prev is None:
            return True  # not a stage of ours any more
        settled = prev.state in ("Succeeded", "Failed", "Skipped") or prev.attempt > job.attempt
        return (settled or _persisted_terminal(old)) and persisted_shards(job)

    if _persisted_terminal(old) and not _regenerate(old, generation):
        return _settle_terminal(status, conds, generation, observed, actions, spec, folded)
    if _regenerate(old, generation):
        conds.items = [c for c in conds.items if c.get("type") not in ("Failed", "Accepted")]

    conds.set("Accepted", True, "Valid", "the spec is valid")
    active_jobs = [j for j in observed.jobs if not j.finished]
    activity = pod_activity(active_jobs, observed.pods)
    suspended = spec.run_policy.suspend
    deadline = _deadlines(spec, status, conds, activity, ctx)
    may_start = not suspended and deadline is None

    result: StageResult | None = None
    current: StageDef | None = None
    generate_union: set[int] = set()
    generate_failed: set[int] = set()
    failed_stage: tuple[str, str] | None = None
    for sd in stages:
        ss: api.StageStatus = getattr(status.stages, sd.stage)
        if not sd.enabled:
            ss.state, ss.message = "Skipped", "filter.enabled is false"
            continue
        if sd.stage == "filter":
            wanted = set(generate_union)
        elif sd.stage == "generate":
            wanted = set(range(sd.shards))
        else:
            wanted = {0}
        allowed = 0
        if sd.stage in ("generate", "filter"):
            allowed = spec.sharding.max_failed_shards - (len(generate_failed) if sd.stage == "filter" else 0)
        prev: api.StageStatus = getattr(old.stages, sd.stage)
        if prev.state == "Succeeded":
            # Final once persisted: its Jobs may be gone (TTL), never re-run it.
            result = StageResult(
                state="done",
                wanted=wanted,
                union=parse_ranges(prev.shards.succeeded_indexes),
                failed=parse_ranges(prev.shards.failed_indexes),
            )
            if sd.stage == "generate":
                generate_union, generate_failed = set(result.union), set(result.failed)
            continue
        result = _advance_stage(
            owner,
            spec,
            sd,
            prev,
            ss,
            wanted,
            allowed,
            jobs_by_stage.get(sd.stage, []),
            pods_by_job,
            status,
            actions,
            ctx,
            may_start,
        )
        _fold_totals(sd.stage, result, status, layout)
        if sd.stage == "generate":
            generate_union, generate_failed = set(result.union), set(result.failed)
        if result.state == "failed":
            failed_stage = (result.reason, result.message)
            current = sd
            break
        if result.state == "running":
            current = sd
            break

    # Conditions and the end of the run.
    troubles: list[tuple[str, str]] = []
    for sd in stages:
        ss = getattr(status.stages, sd.stage)
        if ss.state == "Succeeded" and ss.shards.failed:
            troubles.append(
                (
                    "ShardsFailed",
                    f"{sd.stage}: {ss.shards.failed} shard(s) failed and were left out "
                    f"({ss.shards.failed_indexes}); within sharding.maxFailedShards",
                )
            )
    if result is not None and result.trouble:
        troubles.insert(0, result.trouble)
    if activity.trouble:
        troubles.insert(0, activity.trouble)

    if deadline is not None or failed_stage is not None:
        reason, message = deadline or failed_stage or ("", "")
        conds.set("Failed", True, reason, message)
        conds.stop_activity(reason)
        status.completion_time = status.completion_time or ctx.stamp
        status.message = message[:4096]
        _stop_unfinished(actions, observed.jobs)
    elif current is None:
        images = status.images
        conds.set(
            "Complete",
            True,
            "AllShardsSucceeded" if not troubles else "CompletedWithFailedShards",
            f"{images.generated} images generated, {images.passed} passed the filter, {images.kept} kept",
        )
        conds.stop_activity("Complete")
        status.completion_time = status.completion_time or ctx.stamp
        status.message = f"complete: {images.kept} images kept"
    elif suspended:
        stopping = _suspend(actions, observed.jobs, persisted_shards)
        message = (
            f"stopping {len(stopping)} Job(s)"
            if stopping
            else f"suspended at stage {current.stage}; resuming runs only the shards without a commit"
        )
        conds.set("Suspended", True, "UserSuspended", message)
        conds.stop_activity("Suspended")
        status.message = message
        if stopping:
            actions.requeue(1.0)
    else:
        if conds.is_true("Suspended"):
            conds.set("Suspended", False, "Resumed", "runPolicy.suspend is false")
        conds.apply_activity(activity, "ShardsRunning")
        ss = getattr(status.stages, current.stage)
        status.message = f"{current.stage}: {ss.shards.succeeded}/{ss.shards.total} shards"
    if troubles:
        conds.set("Degraded", True, troubles[0][0], "; ".join(m for _, m in troubles)[:4000])
    else:
        conds.clear("Degraded", "Recovered", "no failing shards")

    _dataset_progress(status, stages, current, conds)
    _ttl_and_cleanup(actions, observed.jobs, spec.run_policy.ttl_seconds_after_finished, folded)
    _finish_status(status, conds, generation)
    actions.status = status.wire()
    if not conds.terminal and actions.requeue_after is None and (activity.queued or activity.running):
        actions.requeue(30.0)
    return actions


def _persisted_terminal(status: Any) -> bool:
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in status.conditions)


def _regenerate(status: Any, generation: int | None) -> bool:
    """An InvalidSpec failure is re-evaluated when the spec changes (nothing ran)."""
    for c in status.conditions:
        if c.type == "Failed" and c.status == "True" and c.reason == "InvalidSpec":
            return generation is not None and c.observed_generation != generation
    return False


def _settle_terminal(
    status: Any,
    conds: Conditions,
    generation: int | None,
    observed: Observed,
    actions: Actions,
    spec: Any,
    folded: Any,
) -> Actions:
    """Terminal states are sticky: stop what still runs, expire what finished, change nothing else."""
    _stop_unfinished(actions, observed.jobs)
    _ttl_and_cleanup(actions, observed.jobs, spec.run_policy.ttl_seconds_after_finished, folded)
    conds.stop_activity("Complete" if conds.is_true("Complete") else "Failed")
    _finish_status(status, conds, generation)
    actions.status = status.wire()
    return actions


def _suspend(actions: Actions, jobs: Iterable[JobView], deletable: Callable[[JobView], bool]) -> list[str]:
    """Delete the unfinished Jobs whose committed shards are already in the persisted status; return the
    names of those still going away (or still waiting for their results to be persisted first)."""
    stopping = []
    for job in jobs:
        if job.finished:
            continue
        stopping.append(job.name)
        if not job.deleting and deletable(job):
            actions.delete_jobs.append(job.name)
            actions.delete_configmaps.append(job.name)
    return stopping


def _advance_stage(
    owner: Owner,
    spec: api.SyntheticDatasetSpec,
    sd: StageDef,
    prev: api.StageStatus,
    ss: api.StageStatus,
    wanted: set[int],
    allowed_failures: int,
    jobs: list[JobView],
    pods_by_job: dict[str, list[PodView]],
    status: api.SyntheticDatasetStatus,
    actions: Actions,
    ctx: Context,
    may_start: bool,
) -> StageResult:
    stage = sd.stage
    persisted_union = parse_ranges(prev.shards.succeeded_indexes) & wanted
    res = StageResult(state="running", wanted=wanted)
    pending_fold: set[int] = set()
    completed_all: set[int] = set()
    for job in sorted(jobs, key=lambda j: j.attempt):
        succeeded = _successful_pods(pods_by_job.get(job.uid, []))
        for index in sorted(parse_ranges(job.completed_indexes)):
            shard = job.shard_of(index)
            if shard not in wanted:
                continue
            completed_all.add(shard)
            if shard in persisted_union or shard in res.newly:
                continue
            pod = succeeded.get(index)
            if pod is None:
                age = _age(job.finished_at, ctx) if job.finished else None
                if age is None or age < ctx.fold_grace_seconds:
                    pending_fold.add(shard)
                    continue
            res.newly[shard] = pod
    union = persisted_union | set(res.newly)
    res.union = union
    if res.newly:
        actions.shards_done[stage] = len(res.newly)
    range_string = format_ranges(union)
    if len(range_string) > MAX_RANGE_STRING:
        # Too fragmented to persist: keep the old union (the Jobs stay until it merges; nothing is lost).
        res.newly = {}
        union = res.union = persisted_union
        range_string = prev.shards.succeeded_indexes
    ss.shards.total = len(wanted)
    ss.shards.succeeded = len(union)
    ss.shards.succeeded_indexes = range_string

    attempt = max([prev.attempt, *[j.attempt for j in jobs]])
    candidates = [j for j in jobs if j.attempt == attempt]
    current = next((j for j in candidates if not j.deleting), candidates[0] if candidates else None)
    pods = pods_by_job.get(current.uid, []) if current else []
    if current is not None:
        # Derived from the observed Jobs, not only from the status write that started them: that write may
        # have been coalesced away by the status throttle.
        ss.attempt = attempt

    def start(number: int, shards: set[int]) -> None:
        if not may_start:
            return
        ss.attempt, ss.state = number, "Running"
        ss.job = stage_job_name(owner.name, stage, number)
        if status.start_time is None:
            status.start_time = ctx.stamp
        actions.create.append(_stage_create(owner, spec, sd, number, shards, status, ctx))

    def running_counts(job: JobView | None) -> None:
        failed = job.failed_shards() if job is not None and not job.finished else set()
        running = sum(1 for p in pods if p.running and not p.deleting) if job and not job.finished else 0
        ss.shards.failed, ss.shards.failed_indexes = len(failed), format_ranges(failed)
        ss.shards.running = running
        ss.shards.pending = max(0, len(wanted) - len(union) - len(failed) - running)
        res.failed = failed

    if wanted and wanted <= union and not pending_fold:
        ss.state, ss.message = "Succeeded", None
        running_counts(None)
        ss.shards.pending = 0
        res.state = "done"
        return res
    if not wanted:  # e.g. filtering a dataset whose every generated shard failed (within the budget)
        ss.state, ss.message = "Succeeded", "nothing to do"
        res.state = "done"
        return res

    missing = wanted - union - pending_fold - completed_all
    if current is None:
        # Attempt 0 (never started), or the attempt's Job is gone before finishing (suspend, user delete):
        # (re)start it with the shards that have no commit yet.
        ss.state = "Pending" if attempt == 0 else "Running"
        running_counts(None)
        if missing:
            start(max(1, attempt), missing)
        else:
            actions.requeue(1.0)  # only completed shards whose pods have not arrived yet
        return res
    ss.job, ss.state = current.name, "Running"
    if current.deleting:
        running_counts(None)
        actions.requeue(1.0)
        return res
    if not current.finished:
        ss.state = "Running"
        running_counts(current)
        if res.failed:
            res.trouble = (
                "ShardsFailing",
                f"{stage}: shard(s) {format_ranges(res.failed)} failed in attempt {attempt}"
                + (
                    f"; attempt {attempt + 1} will retry them" if attempt < spec.sharding.max_attempts else ""
                ),
            )
        desired = _stage_parallelism(spec, sd, current.completions)
        if current.parallelism is not None and current.parallelism != desired and not current.suspended:
            actions.patch_jobs.append((current.name, {"spec": {"parallelism": desired}}))
        return res
    running_counts(None)
    if pending_fold:
        actions.requeue(1.0)  # a completed index whose pod has not arrived yet
        return res
    if current.complete:
        if not missing:
            ss.state = "Succeeded"
            res.state = "done"
        return res
    failure = current.failure
    reason = failure.reason if failure else "Failed"
    if reason == "PodFailurePolicy":
        detail = _failed_pod_message(pods, 3) or (failure.message if failure else "")
        ss.state, ss.message = "Failed", f"configuration error: {detail}"[:1024]
        res.state, res.reason = "failed", "ConfigError"
        res.message = f"{stage} failed with a configuration error (not retried): {detail}"
        return res
    if reason == "DeadlineExceeded":
        ss.state, ss.message = "Failed", "activeDeadlineSeconds exceeded"
        res.state, res.reason = "failed", "DeadlineExceeded"
        res.message = f"{stage}: the Job ran longer than runPolicy.activeDeadlineSeconds"
        return res
    if not missing:
        ss.state = "Succeeded"
        res.state = "done"
        return res
    detail = _failed_pod_message(pods)
    if attempt < spec.sharding.max_attempts:
        start(attempt + 1, missing)
        res.trouble = (
            "RetryingAttempt",
            f"{stage}: attempt {attempt} left {len(missing)} shard(s) without a commit "
            f"({format_ranges(missing)}); attempt {attempt + 1} of {spec.sharding.max_attempts} "
            "runs only those" + (f" (last error: {detail})" if detail else ""),
        )
        return res
    ss.shards.failed, ss.shards.failed_indexes = len(missing), format_ranges(missing)[:MAX_RANGE_STRING]
    ss.shards.pending = 0
    res.failed = missing
    if len(missing) <= allowed_failures:
        ss.state, ss.message = "Succeeded", f"{len(missing)} shard(s) failed after {attempt} attempt(s)"
        res.state = "done"
        return res
    ss.state = "Failed"
    ss.message = f"{len(missing)} shard(s) failed after {attempt} attempt(s)"
    res.state, res.reason = "failed", "MaxFailedShardsExceeded"
    res.message = (
        f"{stage}: {len(missing)} shard(s) ({format_ranges(missing)}) failed after {attempt} attempt(s) "
        f"of {spec.sharding.retries_per_shard + 1} tries each; sharding.maxFailedShards allows "
        f"{max(0, allowed_failures)}" + (f". Last error: {detail}" if detail else "")
    )
    return res


def _stage_parallelism(spec: api.SyntheticDatasetSpec, sd: StageDef, completions: int) -> int:
    if sd.shards == 1:
        return 1
    return max(1, min(spec.sharding.parallelism or completions, completions))


def _stage_create(
    owner: Owner,
    spec: api.SyntheticDatasetSpec,
    sd: StageDef,
    attempt: int,
    shards: set[int],
    status: Any,
    ctx: Context,
) -> Create:
    ordered = sorted(shards)
    identity = ordered == list(range(sd.shards))
    task = dataset_task(
        spec, sd.stage, _resource_ref(owner), attempt=attempt, shard_ids=None if identity else ordered
    )
    name = stage_job_name(owner.name, sd.stage, attempt)
    labels = child_labels(owner, sd.stage, attempt)
    sharded = sd.shards > 1
    shape = JobShape(
        completions=len(ordered),
        parallelism=_stage_parallelism(spec, sd, len(ordered)),
        retries_per_index=spec.sharding.retries_per_shard,
        max_failed_indexes=spec.sharding.max_failed_shards if sharded else 0,
        shard_ids=None if identity else tuple(ordered),
        active_deadline_seconds=_remaining_deadline(spec, status, ctx),
    )
    job = render_job(
        owner, name=name, stage=sd.stage, labels=labels, shape=shape, spec=spec, defaults=ctx.defaults
    )
    what = f"{len(ordered)} shard(s)" if sharded else "1 pod"
    if not identity and sharded:
        what += f" ({format_ranges(ordered)})"
    return Create(
        name,
        render_configmap(owner, name, labels, task),
        job,
        Event("Normal", "JobCreated", f"{sd.stage} attempt {attempt}: Job {name} runs {what}"),
    )


def _fold_totals(
    stage: str, res: StageResult, status: api.SyntheticDatasetStatus, layout: DatasetLayout
) -> None:
    """Add the totals of the shards folded in this pass (each shard exactly once: it just entered the
    persisted union together with these totals)."""
    images, artifacts = status.images, status.artifacts
    for pod in res.newly.values():
        summary = pod.summary if pod else None
        if stage == "generate":
            images.generated += summary_int(summary, *GENERATED_KEYS) or 0
        elif stage == "filter":
            images.passed += summary_int(summary, *PASSED_KEYS) or 0
        elif stage == "reduce":
            for attr, keys in (
                ("kept", KEPT_KEYS),
                ("rejected", REJECTED_KEYS),
                ("generated", ("generated",)),
                ("passed", PASSED_KEYS),
            ):
                value = summary_int(summary, *keys)
                if value is not None:
                    setattr(images, attr, value)  # the manifest's own counts are the final word
            artifacts.manifest = summary_str(summary, *MANIFEST_KEYS) or layout.url(layout.manifest)
            artifacts.manifest_digest = summary_str(summary, *DIGEST_KEYS) or artifacts.manifest_digest
            artifacts.report = summary_str(summary, *REPORT_KEYS) or artifacts.report
    if stage == "prompts" and res.state == "done":
        artifacts.prompts = layout.url(layout.prompts)


def _dataset_progress(
    status: api.SyntheticDatasetStatus, stages: list[StageDef], current: StageDef | None, conds: Conditions
) -> None:
    enabled = [sd for sd in stages if sd.enabled]
    total_weight = sum(STAGE_WEIGHTS[sd.stage] for sd in enabled)
    done = 0.0
    for sd in enabled:
        ss = getattr(status.stages, sd.stage)
        if ss.state == "Succeeded":
            done += STAGE_WEIGHTS[sd.stage]
        elif ss.shards.total:
            done += STAGE_WEIGHTS[sd.stage] * ss.shards.succeeded / ss.shards.total
    progress = status.progress
    if conds.is_true("Complete"):
        progress.percent, progress.stage = 100, "done"
        generate = status.stages.generate.shards
        progress.summary = f"{generate.succeeded}/{generate.total}"
    else:
        progress.percent = min(99, int(100 * done / total_weight)) if total_weight else 0
        if current is not None:
            ss = getattr(status.stages, current.stage)
            progress.stage = current.stage
            progress.summary = f"{ss.shards.succeeded}/{ss.shards.total}"


# -------------------------------------------------------------------------------------------- experiments


def dataset_refs(spec: api.RecognitionExperimentSpec) -> list[str]:
    """Every SyntheticDataset an experiment references (data.synthetic and variants), in order."""
    refs: list[str] = []
    for run in experiment_runs(spec):
        for source in run.synthetic:
            if source.dataset_ref and source.dataset_ref not in refs:
                refs.append(source.dataset_ref)
    return refs


def plan_experiment(
    owner: Owner,
    generation: int | None,
    spec: api.RecognitionExperimentSpec,
    persisted: dict[str, Any],
    observed: Observed,
    ctx: Context,
) -> Actions:
    old: api.RecognitionExperimentStatus = _status_model("RecognitionExperiment", persisted)
    status = old.model_copy(deep=True)
    actions = Actions(status={})
    conds = Conditions([c.wire() for c in old.conditions], generation, ctx.stamp)
    layout = ExperimentLayout(spec.output.uri)
    runs = experiment_runs(spec)
    status.spec_hash = experiment_hash(spec)
    status.artifacts.uri = spec.output.uri
    persisted_results = {r.name: r for r in old.results}
    run_names = {r.index: r.name for r in runs}

    def folded(job: JobView) -> bool:
        """The persisted status holds this finished run's result: its Job may expire."""
        prev = persisted_results.get(run_names.get(job.run_index if job.run_index is not None else -1, ""))
        return _persisted_terminal(old) or (prev is not None and prev.state in ("Succeeded", "Failed"))

    if _persisted_terminal(old) and not _regenerate(old, generation):
        return _settle_terminal(status, conds, generation, observed, actions, spec, folded)
    if _regenerate(old, generation):
        conds.items = [c for c in conds.items if c.get("type") not in ("Failed", "Accepted")]
    conds.set("Accepted", True, "Valid", "the spec is valid")

    # 1. Referenced datasets: wait for them, then pin their manifest URI and digest.
    failure = _resolve_datasets(spec, status, observed, conds)
    ready = conds.is_true("DatasetReady")
    active_jobs = [j for j in observed.jobs if not j.finished]
    activity = pod_activity(active_jobs, observed.pods)
    suspended = spec.run_policy.suspend
    deadline = _deadlines(spec, status, conds, activity, ctx)
    may_start = ready and not suspended and deadline is None and failure is None

    # 2. Runs: fold finished ones, start pending ones within the parallelism budget.
    pods_by_job = _pods_by_job(observed.pods)
    jobs_by_run: dict[int, list[JobView]] = defaultdict(list)
    for job in observed.jobs:
        if job.run_index is not None:
            jobs_by_run[job.run_index].append(job)
    results: list[api.RunResult] = []
    to_start: list[Any] = []
    config_error: str | None = None
    active = sum(1 for j in observed.jobs if not j.finished)
    for run in runs:
        prev = persisted_results.get(run.name)
        result = (prev.model_copy(deep=True) if prev else None) or api.RunResult(
            name=run.name, shots=run.shots, seed=run.seed, variant=run.variant
        )
        results.append(result)
        if result.state in ("Succeeded", "Failed"):
            continue
        jobs = sorted(jobs_by_run.get(run.index, []), key=lambda j: j.attempt)
        job = next((j for j in reversed(jobs) if not j.deleting), jobs[-1] if jobs else None)
        if job is None:
            result.state = "Pending"
            to_start.append(run)
            continue
        pods = pods_by_job.get(job.uid, [])
        if job.deleting or not job.finished:
            result.state = "Running" if not job.deleting else result.state
            continue
        if job.complete:
            pod = _successful_pods(pods).get(0)
            age = _age(job.finished_at, ctx)
            if pod is None and (age is None or age < ctx.fold_grace_seconds):
                actions.requeue(1.0)
                result.state = "Running"
                continue
            summary = pod.summary if pod else None
            result.state = "Succeeded"
            result.top1 = summary_float(summary, *TOP1_KEYS)
            result.zero_shot_top1 = summary_float(summary, *ZERO_SHOT_KEYS)
            result.metrics = summary_str(summary, *METRICS_KEYS) or layout.url(layout.run_metrics(run.name))
            actions.shards_done[TRAIN_STAGE] = actions.shards_done.get(TRAIN_STAGE, 0) + 1
            continue
        failure_cond = job.failure
        reason = failure_cond.reason if failure_cond else "Failed"
        detail = _failed_pod_message(pods) or (failure_cond.message if failure_cond else "")
        result.state = "Failed"
        actions.shards_failed[TRAIN_STAGE] = actions.shards_failed.get(TRAIN_STAGE, 0) + 1
        if reason == "PodFailurePolicy" and config_error is None:
            config_error = f"run {run.name} failed with a configuration error (not retried): {detail}"
        elif reason == "DeadlineExceeded" and deadline is None:
            deadline = ("DeadlineExceeded", f"run {run.name} ran longer than runPolicy.activeDeadlineSeconds")
    if may_start and config_error is None and deadline is None:
        slots = spec.execution.parallelism - active
        for run in to_start[: max(0, slots)]:
            actions.create.append(_run_create(owner, spec, run, status, observed, ctx))
            next(r for r in results if r.name == run.name).state = "Running"
            if status.start_time is None:
                status.start_time = ctx.stamp
    status.results = results
    counts = status.runs
    counts.total = len(results)
    counts.succeeded = sum(1 for r in results if r.state == "Succeeded")
    counts.failed = sum(1 for r in results if r.state == "Failed")
    counts.running = sum(1 for r in results if r.state == "Running")
    counts.pending = sum(1 for r in results if r.state == "Pending")
    scored = [r for r in results if r.state == "Succeeded" and r.top1 is not None]
    best = max(scored, key=lambda r: r.top1 or 0.0) if scored else None
    status.best = api.BestRun(name=best.name, top1=float(best.top1 or 0.0)) if best else None
    finished = counts.succeeded + counts.failed

    # 3. Conditions.
    troubles: list[tuple[str, str]] = []
    if activity.trouble:
        troubles.append(activity.trouble)
    if counts.failed:
        troubles.append(("RunsFailed", f"{counts.failed} of {counts.total} run(s) failed"))
    terminal_failure = failure or (("ConfigError", config_error) if config_error else None) or deadline
    if terminal_failure is not None:
        reason, message = terminal_failure
        conds.set("Failed", True, reason, message)
        conds.stop_activity(reason)
        status.completion_time = status.completion_time or ctx.stamp
        status.message = message[:4096]
        _stop_unfinished(actions, observed.jobs)
    elif ready and finished == counts.total and counts.total:
        if counts.succeeded:
            best_text = f"; best {status.best.name} top-1 {status.best.top1:.4f}" if status.best else ""
            conds.set(
                "Complete",
                True,
                "AllRunsSucceeded" if not counts.failed else "RunsCompleted",
                f"{counts.succeeded} of {counts.total} run(s) succeeded{best_text}",
            )
            conds.stop_activity("Complete")
            status.message = f"complete: {counts.succeeded}/{counts.total} runs{best_text}"
        else:
            message = f"all {counts.total} run(s) failed"
            conds.set("Failed", True, "AllRunsFailed", message)
            conds.stop_activity("AllRunsFailed")
            status.message = message
        status.completion_time = status.completion_time or ctx.stamp
    elif suspended:
        stopping = [j.name for j in observed.jobs if not j.finished]
        for job in observed.jobs:
            if not job.finished and not job.deleting:
                actions.delete_jobs.append(job.name)
                actions.delete_configmaps.append(job.name)
        message = (
            f"stopping {len(stopping)} run Job(s)"
            if stopping
            else "suspended; resuming restarts unfinished runs"
        )
        conds.set("Suspended", True, "UserSuspended", message)
        conds.stop_activity("Suspended")
        status.message = message
        if stopping:
            actions.requeue(1.0)
    elif ready:
        if conds.is_true("Suspended"):
            conds.set("Suspended", False, "Resumed", "runPolicy.suspend is false")
        conds.apply_activity(activity, "Training")
        status.message = f"{finished}/{counts.total} runs finished, {counts.running} running"
    else:
        conds.stop_activity("WaitingForDataset")
        status.message = (conds.get("DatasetReady") or {}).get("message")
    if troubles:
        conds.set("Degraded", True, troubles[0][0], "; ".join(m for _, m in troubles)[:4000])
    else:
        conds.clear("Degraded", "Recovered", "no failing runs")

    progress = status.progress
    progress.stage = TRAIN_STAGE if ready else "waiting"
    progress.summary = f"{finished}/{counts.total}"
    if conds.is_true("Complete"):
        progress.percent = 100
    else:
        progress.percent = min(99, int(100 * finished / counts.total)) if counts.total else 0
    _ttl_and_cleanup(actions, observed.jobs, spec.run_policy.ttl_seconds_after_finished, folded)
    _finish_status(status, conds, generation)
    actions.status = status.wire()
    if not ready and failure is None and actions.requeue_after is None:
        actions.requeue(30.0)
    return actions


def _resolve_datasets(
    spec: api.RecognitionExperimentSpec,
    status: api.RecognitionExperimentStatus,
    observed: Observed,
    conds: Conditions,
) -> tuple[str, str] | None:
    """Update status.datasets and DatasetReady; return a Failed reason/message when a dataset is gone."""
    refs = dataset_refs(spec)
    pinned = {p.name: p for p in status.datasets if p.name}
    waiting: list[str] = []
    missing: list[str] = []
    for ref in refs:
        entry = pinned.get(ref)
        if entry is not None and entry.digest:
            continue  # pinned at start; later changes to the dataset do not move this experiment
        view = observed.datasets.get(ref)
        if view is None or view.deleting:
            if entry is not None:
                message = (
                    f"SyntheticDataset {ref} was deleted while this experiment waited for it; "
                    "re-create it (or reference another) and re-create this experiment"
                )
                conds.set("DatasetReady", False, "DatasetDeleted", message)
                return "DatasetDeleted", message
            missing.append(ref)
            continue
        if view.failed:
            message = f"SyntheticDataset {ref} failed: {view.message or view.phase}"
            conds.set("DatasetReady", False, "DatasetFailed", message)
            return "DatasetFailed", message
        if view.complete and view.digest:
            pinned[ref] = api.PinnedDataset(name=ref, uri=view.uri, digest=view.digest)
        else:
            pinned[ref] = api.PinnedDataset(name=ref, uri=view.uri, digest="")  # seen, not pinned yet
            waiting.append(f"{ref} ({view.phase})")
    status.datasets = [pinned[r] for r in refs if r in pinned]
    if missing:
        conds.set(
            "DatasetReady",
            False,
            "DatasetNotFound",
            f"waiting for SyntheticDataset(s) {', '.join(missing)} to be created in this namespace",
        )
    elif waiting:
        conds.set("DatasetReady", False, "WaitingForDataset", f"waiting for {', '.join(waiting)} to complete")
    elif refs:
        pins = ", ".join(f"{p.name}@{p.digest[:19]}" for p in status.datasets)
        conds.set("DatasetReady", True, "DigestResolved", f"pinned {pins}")
    else:
        conds.set("DatasetReady", True, "NoDatasetReferences", "no SyntheticDataset is referenced")
    return None


def _run_create(
    owner: Owner,
    spec: api.RecognitionExperimentSpec,
    run: Any,
    status: api.RecognitionExperimentStatus,
    observed: Observed,
    ctx: Context,
    attempt: int = 1,
) -> Create:
    pinned = {p.name: p for p in status.datasets}
    inputs = []
    for source in run.synthetic:
        if source.dataset_ref:
            pin = pinned[source.dataset_ref]
            view = observed.datasets.get(source.dataset_ref)
            inputs.append(
                DatasetInput(
                    name=source.dataset_ref,
                    uri=pin.uri,
                    digest=pin.digest,
                    endpoint=view.endpoint if view else None,
                    region=view.region if view else None,
                )
            )
        else:
            inputs.append(DatasetInput(uri=source.uri))
    task = train_task(spec, run, inputs, _resource_ref(owner), attempt=attempt)
    name = run_job_name(owner.name, run.index, attempt)
    labels = child_labels(owner, TRAIN_STAGE, attempt, run=run.name)
    shape = JobShape(
        completions=1,
        parallelism=1,
        retries_per_index=spec.execution.retries_per_run,
        max_failed_indexes=0,
        active_deadline_seconds=_remaining_deadline(spec, status, ctx),
    )
    job = render_job(
        owner,
        name=name,
        stage=TRAIN_STAGE,
        labels=labels,
        shape=shape,
        spec=spec,
        defaults=ctx.defaults,
        run_index=run.index,
    )
    return Create(
        name,
        render_configmap(owner, name, labels, task),
        job,
        Event("Normal", "JobCreated", f"run {run.name}: Job {name} (shots {run.shots}, seed {run.seed})"),
    )


def fail_status(
    kind: str, status: dict[str, Any], body: dict[str, Any], reason: str, message: str, stamp: str
) -> dict[str, Any]:
    """``status`` with Failed=True (for failures found while applying a plan, e.g. a rejected Job)."""
    model = _status_model(kind, status)
    generation = (body.get("metadata") or {}).get("generation")
    conds = Conditions([c.wire() for c in model.conditions], generation, stamp)
    conds.set("Failed", True, reason, message)
    conds.stop_activity(reason)
    model.message = message[:4096]
    model.completion_time = model.completion_time or stamp
    _finish_status(model, conds, generation)
    return model.wire()
