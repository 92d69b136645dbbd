"""Planning a SyntheticDataset: prompts -> generate -> filter (skipped when disabled) -> reduce.

Each stage runs in attempts, decided by the shared stage decision (``synthrec.plan.decision``): this module
observes the stage's Jobs (completed indexes, failed pods, Job conditions), folds what finished into
status, asks ``next_step`` and renders its answer (a Job to create, a Degraded reason, a final state). The
union of committed shards is kept in status as a range string (``stages.<stage>.shards.succeededIndexes``)
together with the image totals of exactly those shards: a shard's totals are added exactly when it enters
the union.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from synthrec import api, contract
from synthrec.contract.layout import DatasetLayout
from synthrec.contract.summaries import GenerateSummary, ReduceSummary
from synthrec.operator.jobs import JobShape, child_labels, render_configmap, render_job, stage_job_name
from synthrec.operator.observed import JobView, PodView
from synthrec.operator.reconcile_pass import (
    Actions,
    Create,
    Pass,
    age_of,
    failed_pod_message,
    persisted_terminal,
    pods_by_job,
    resource_ref,
    successful_pods,
)
from synthrec.operator.status import Event
from synthrec.plan import (
    ShardFailure,
    StageDef,
    StageDone,
    StageFailed,
    StageObservation,
    StagePolicy,
    StartAttempt,
    dataset_stages,
    dataset_task,
    format_ranges,
    next_step,
    parse_ranges,
    wanted_shards,
)

MAX_RANGE_STRING = 4096  # the CRD's maxLength of succeededIndexes / failedIndexes
STAGE_WEIGHTS = {"prompts": 5, "generate": 70, "filter": 20, "reduce": 5}


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


def plan_dataset(p: Pass) -> Actions:
    spec: api.SyntheticDatasetSpec = p.spec
    old: api.SyntheticDatasetStatus = p.old
    status: api.SyntheticDatasetStatus = p.status
    stages = dataset_stages(spec)
    status.spec_hash = stages[-1].spec_hash

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
        return (settled or persisted_terminal(old)) and persisted_shards(job)

    if p.settled:
        return p.settle(folded)
    p.accept()
    activity = p.activity()
    suspended = spec.run_policy.suspend
    deadline = p.deadline(activity)
    may_start = not suspended and deadline is None

    jobs_by_stage: dict[str, list[JobView]] = defaultdict(list)
    for job in p.observed.jobs:
        jobs_by_stage[job.stage].append(job)
    result: StageResult | None = None
    current: StageDef | None = None
    generated: set[int] = set()
    generate_failed: set[int] = set()
    failed_stage: tuple[str, str] | None = None
    for sd in stages:
        ss: api.StageStatus = getattr(status.stages, sd.stage)
        if not sd.enabled:
            ss.state, ss.message = "Skipped", "filter.enabled is false"
            continue
        wanted = set(wanted_shards(sd, generated))
        prev: api.StageStatus = getattr(old.stages, sd.stage)
        if prev.state == "Succeeded":
            # Final once persisted: its Jobs may be gone (TTL), never re-run it.
            result = StageResult(
                state="done",
                wanted=wanted,
                union=parse_ranges(prev.shards.succeeded_indexes),
                failed=parse_ranges(prev.shards.failed_indexes),
            )
        else:
            upstream_failed = len(generate_failed) if sd.stage == "filter" else 0
            policy = StagePolicy.of(spec, sd, upstream_failed=upstream_failed)
            stage = _StagePass(p, sd, prev, ss, wanted, policy, jobs_by_stage.get(sd.stage, []), may_start)
            result = stage.advance()
            _fold_totals(sd.stage, result, status, DatasetLayout(spec.output.uri))
        if sd.stage == "generate":
            generated, generate_failed = set(result.union), set(result.failed)
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
        p.fail(*(deadline or failed_stage or ("", "")))
    elif current is None:
        images = status.images
        p.complete(
            "AllShardsSucceeded" if not troubles else "CompletedWithFailedShards",
            f"{images.generated} images generated, {images.passed} passed the filter, {images.kept} kept",
            f"complete: {images.kept} images kept",
        )
    elif suspended:
        stopping = _suspend(p.actions, p.observed.jobs, persisted_shards)
        p.suspend(
            stopping, f"suspended at stage {current.stage}; resuming runs only the shards without a commit"
        )
    else:
        ss = getattr(status.stages, current.stage)
        p.run(activity, "ShardsRunning", f"{current.stage}: {ss.shards.succeeded}/{ss.shards.total} shards")
    p.degraded(troubles, "no failing shards")

    _dataset_progress(status, stages, current, p.conds)
    p.expire(folded)
    actions = p.close()
    if not p.conds.terminal and actions.requeue_after is None and (activity.queued or activity.running):
        actions.requeue(30.0)
    return actions


def _suspend(actions: Actions, jobs: list[JobView], deletable: Any) -> list[str]:
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


class _StagePass:
    """One stage in one pass: fold what its Jobs finished, observe, decide (next_step), render."""

    def __init__(
        self,
        p: Pass,
        sd: StageDef,
        prev: api.StageStatus,
        ss: api.StageStatus,
        wanted: set[int],
        policy: StagePolicy,
        jobs: list[JobView],
        may_start: bool,
    ) -> None:
        self.p, self.sd, self.prev, self.ss = p, sd, prev, ss
        self.wanted, self.policy, self.jobs, self.may_start = wanted, policy, jobs, may_start
        self.pods_by_job = pods_by_job(p.observed.pods)
        self.res = StageResult(state="running", wanted=wanted)
        self.stop_detail = ""  # what the pod that stopped the attempt said

    def advance(self) -> StageResult:
        pending_fold, completed = self._fold()
        attempt = max([self.prev.attempt, *[j.attempt for j in self.jobs]])
        candidates = [j for j in self.jobs if j.attempt == attempt]
        current = next((j for j in candidates if not j.deleting), candidates[0] if candidates else None)
        pods = self.pods_by_job.get(current.uid, []) if current else []
        if current is not None:
            # Derived from the observed Jobs, not only from the status write that started them: that write
            # may have been coalesced away by the status throttle.
            self.ss.attempt = attempt
        in_flight = current is not None and (current.deleting or not current.finished)
        observed = StageObservation(
            wanted=frozenset(self.wanted),
            committed=frozenset(self.res.union | (completed - pending_fold)),
            attempt=attempt,
            running=bool(pending_fold) or in_flight,
            finished=current is not None and current.finished,
            failed=self._failures(current, pods),
            stopped=self._stopped(current, pods),
        )
        step = next_step(observed, self.policy)
        if isinstance(step, StageDone):
            return self._done(step, attempt)
        if isinstance(step, StageFailed):
            return self._failed(step, attempt, pods)
        if isinstance(step, StartAttempt):
            return self._start(step, current, pods, attempt)
        return self._wait(current, pods, attempt)

    # ---- observing

    def _fold(self) -> tuple[set[int], set[int]]:
        """Fold the shards the Jobs completed into the union (with their pods' summaries); returns the
        completed shards whose pods have not arrived yet, and every shard the Jobs completed."""
        persisted_union = parse_ranges(self.prev.shards.succeeded_indexes) & self.wanted
        res, ctx = self.res, self.p.ctx
        pending_fold: set[int] = set()
        completed_all: set[int] = set()
        for job in sorted(self.jobs, key=lambda j: j.attempt):
            succeeded = successful_pods(self.pods_by_job.get(job.uid, []))
            for index in sorted(parse_ranges(job.completed_indexes)):
                shard = job.shard_of(index)
                if shard not in self.wanted:
                    continue
                completed_all.add(shard)
                if shard in persisted_union or shard in res.newly:
                    continue
                pod = succeeded.get(index)
                if pod is None:
                    age = age_of(job.finished_at, ctx) if job.finished else None
                    if age is None or age < ctx.fold_grace_seconds:
                        pending_fold.add(shard)
                        continue
                res.newly[shard] = pod
        union = persisted_union | set(res.newly)
        res.union = union
        if res.newly:
            self.p.actions.shards_done[self.sd.stage] = len(res.newly)
        range_string = format_ranges(union)
        if len(range_string) > MAX_RANGE_STRING:
            # Too fragmented to persist: keep the old union (the Jobs stay until it merges; nothing is lost).
            res.newly = {}
            union = res.union = persisted_union
            range_string = self.prev.shards.succeeded_indexes
        ss = self.ss
        ss.shards.total = len(self.wanted)
        ss.shards.succeeded = len(union)
        ss.shards.succeeded_indexes = range_string
        return pending_fold, completed_all

    @staticmethod
    def _failures(current: JobView | None, pods: list[PodView]) -> dict[int, ShardFailure]:
        """The failed shards of a finished attempt; one whose last pod had a data error is not retryable."""
        if current is None or not current.finished:
            return {}
        last: dict[int, PodView] = {}
        for pod in pods:
            if pod.index is not None and pod.exit_code not in (None, 0):
                last[current.shard_of(pod.index)] = pod
        failures = {}
        for shard in current.failed_shards():
            pod = last.get(shard)
            failures[shard] = ShardFailure(
                retryable=pod is None or pod.exit_code != contract.EXIT_DATA_ERROR,
                message=failed_pod_message([pod]) if pod is not None else "",
            )
        return failures

    def _stopped(self, current: JobView | None, pods: list[PodView]) -> tuple[str, str] | None:
        if current is None or not current.finished or current.complete:
            return None
        failure = current.failure
        reason = failure.reason if failure else "Failed"
        stage = self.sd.stage
        if reason == "PodFailurePolicy":
            code = contract.EXIT_CONFIG_ERROR
            self.stop_detail = failed_pod_message(pods, code) or (failure.message if failure else "")
            message = f"{stage} failed with a configuration error (not retried): {self.stop_detail}"
            return "ConfigError", message
        if reason == "DeadlineExceeded":
            return "DeadlineExceeded", f"{stage}: the Job ran longer than runPolicy.activeDeadlineSeconds"
        return None

    # ---- rendering the decision

    def _counts(self, job: JobView | None, pods: list[PodView]) -> None:
        ss, res = self.ss, self.res
        failed = job.failed_shards() if job is not None and not job.finished else set()
        running = sum(1 for p in pods if p.running and not p.deleting) if job and not job.finished else 0
        ss.shards.failed, ss.shards.failed_indexes = len(failed), format_ranges(failed)
        ss.shards.running = running
        ss.shards.pending = max(0, len(self.wanted) - len(res.union) - len(failed) - running)
        res.failed = failed

    def _done(self, step: StageDone, attempt: int) -> StageResult:
        ss, res = self.ss, self.res
        res.state = "done"
        if not self.wanted:  # e.g. filtering a dataset whose every generated shard failed (within the budget)
            ss.state, ss.message = "Succeeded", "nothing to do"
            return res
        self._counts(None, [])
        ss.state, ss.message = "Succeeded", None
        if step.tolerated:
            tolerated = set(step.tolerated)
            ss.shards.failed = len(tolerated)
            ss.shards.failed_indexes = format_ranges(tolerated)[:MAX_RANGE_STRING]
            ss.message = f"{len(tolerated)} shard(s) failed after {attempt} attempt(s)"
            res.failed = tolerated
        ss.shards.pending = 0
        return res

    def _failed(self, step: StageFailed, attempt: int, pods: list[PodView]) -> StageResult:
        ss, res = self.ss, self.res
        self._counts(None, pods)
        ss.state = "Failed"
        if step.reason == "ConfigError":
            ss.message = f"configuration error: {self.stop_detail}"[:1024]
            res.message = step.message
        elif step.reason == "DeadlineExceeded":
            ss.message = "activeDeadlineSeconds exceeded"
            res.message = step.message
        else:
            failed = set(step.shards)
            ss.shards.failed, ss.shards.failed_indexes = len(failed), format_ranges(failed)[:MAX_RANGE_STRING]
            ss.shards.pending = 0
            ss.message = f"{len(failed)} shard(s) failed after {attempt} attempt(s)"
            res.failed = failed
            res.message = f"{self.sd.stage}: {step.message}"
        res.state, res.reason = "failed", step.reason
        return res

    def _start(
        self, step: StartAttempt, current: JobView | None, pods: list[PodView], attempt: int
    ) -> StageResult:
        ss, res = self.ss, self.res
        self._counts(None, pods)
        if current is None:
            ss.state = "Pending" if attempt == 0 else "Running"
        else:
            ss.job, ss.state = current.name, "Running"
        if step.retry:
            detail = failed_pod_message(pods)
            previous, missing = step.attempt - 1, set(step.shards)
            res.trouble = (
                "RetryingAttempt",
                f"{self.sd.stage}: attempt {previous} left {len(missing)} shard(s) without a commit "
                f"({format_ranges(missing)}); attempt {step.attempt} of {self.policy.max_attempts} "
                "runs only those" + (f" (last error: {detail})" if detail else ""),
            )
        if self.may_start:
            p = self.p
            ss.attempt, ss.state = step.attempt, "Running"
            ss.job = stage_job_name(p.owner.name, self.sd.stage, step.attempt)
            p.started()
            p.actions.create.append(_stage_create(p, self.sd, step.attempt, set(step.shards)))
        return res

    def _wait(self, current: JobView | None, pods: list[PodView], attempt: int) -> StageResult:
        ss, res, p = self.ss, self.res, self.p
        if current is None:
            ss.state = "Pending" if attempt == 0 else "Running"
            self._counts(None, pods)
            p.actions.requeue(1.0)  # only completed shards whose pods have not arrived yet
            return res
        ss.job, ss.state = current.name, "Running"
        if current.deleting or current.finished:
            self._counts(None, pods)
            p.actions.requeue(1.0)  # going away, or a completed index whose pod has not arrived yet
            return res
        self._counts(current, pods)
        if res.failed:
            res.trouble = (
                "ShardsFailing",
                f"{self.sd.stage}: shard(s) {format_ranges(res.failed)} failed in attempt {attempt}"
                + (f"; attempt {attempt + 1} will retry them" if attempt < self.policy.max_attempts else ""),
            )
        desired = _stage_parallelism(p.spec, self.sd, current.completions)
        if current.parallelism is not None and current.parallelism != desired and not current.suspended:
            p.actions.patch_jobs.append((current.name, {"spec": {"parallelism": desired}}))
        return res


def _stage_parallelism(spec: api.SyntheticDatasetSpec, sd: StageDef, completions: int) -> int:
    if sd.shards == 1:
        return 1
    return max(1, min(spec.sharding.parallelism or completions, completions))


def _stage_create(p: Pass, sd: StageDef, attempt: int, shards: set[int]) -> Create:
    spec, owner = p.spec, p.owner
    ordered = sorted(shards)
    identity = ordered == list(range(sd.shards))
    task = dataset_task(
        spec, sd.stage, resource_ref(owner), attempt=attempt, shard_ids=None if identity else ordered
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
        active_deadline_seconds=p.remaining_deadline(),
    )
    job = render_job(
        owner, name=name, stage=sd.stage, labels=labels, shape=shape, spec=spec, defaults=p.ctx.defaults
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
        if isinstance(summary, GenerateSummary):
            images.generated += summary.images
        elif isinstance(summary, ReduceSummary):  # the manifest's own counts are the final word
            images.generated, images.passed = summary.generated, summary.passed
            images.kept, images.rejected = summary.kept, summary.rejected
            artifacts.manifest_digest = summary.digest or artifacts.manifest_digest
        if stage == "reduce":
            artifacts.manifest = getattr(summary, "manifest", None) or layout.url(layout.manifest)
    if stage == "prompts" and res.state == "done":
        artifacts.prompts = layout.url(layout.prompts)


def _dataset_progress(
    status: api.SyntheticDatasetStatus, stages: list[StageDef], current: StageDef | None, conds: Any
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
