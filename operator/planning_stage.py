"""One stage of a SyntheticDataset in one reconcile pass: fold what its Jobs finished into status,
describe what was observed (committed shards, failed shards and whether they are worth another attempt,
what runs, what stopped it) to the shared stage decision (``synthrec.plan.decision.next_step``), and
render its answer: a Job to create, a Degraded reason, a final state."""

from __future__ import annotations

from dataclasses import dataclass, field

from synthrec import api, contract
from synthrec.operator.jobs import JobShape, child_labels, render_configmap, render_job, stage_job_name
from synthrec.operator.observed import JobView, PodView
from synthrec.operator.reconcile_pass import (
    Create,
    Pass,
    age_of,
    failed_pod_message,
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
    dataset_task,
    format_ranges,
    next_step,
    parse_ranges,
)

MAX_RANGE_STRING = 4096  # the CRD's maxLength of succeededIndexes / failedIndexes


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


class StagePass:
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
        """The failed shards of a finished attempt. A data error ends its index at once (podFailurePolicy
        FailIndex), so a shard with a pod that exited with one is not worth another attempt either."""
        if current is None or not current.finished:
            return {}
        failed: dict[int, list[PodView]] = {}
        for pod in pods:
            if pod.index is not None and pod.exit_code not in (None, 0):
                failed.setdefault(current.shard_of(pod.index), []).append(pod)
        failures = {}
        for shard in current.failed_shards():
            shard_pods = failed.get(shard, [])
            data_errors = [pod for pod in shard_pods if pod.exit_code == contract.EXIT_DATA_ERROR]
            failures[shard] = ShardFailure(
                retryable=not data_errors,
                message=failed_pod_message(data_errors or shard_pods),
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
