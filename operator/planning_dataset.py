"""Planning a SyntheticDataset: prompts -> generate -> filter (skipped when disabled) -> reduce.

Each stage runs in attempts, decided by the shared stage decision (``synthrec.plan.decision``) from what
planning_stage.py observes of its Jobs. The union of committed shards is kept in status as a range string
(``stages.<stage>.shards.succeededIndexes``) together with the image totals of exactly those shards: a
shard's totals are added exactly when it enters the union. This module walks the stages in order and turns
their results into conditions, the dataset's totals and its progress.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from synthrec import api
from synthrec.contract.layout import DatasetLayout
from synthrec.contract.summaries import GenerateSummary, ReduceSummary
from synthrec.operator.observed import JobView
from synthrec.operator.planning_stage import StagePass, StageResult
from synthrec.operator.reconcile_pass import (
    Actions,
    Pass,
    persisted_terminal,
)
from synthrec.plan import (
    StageDef,
    StagePolicy,
    dataset_stages,
    parse_ranges,
    wanted_shards,
)

STAGE_WEIGHTS = {"prompts": 5, "generate": 70, "filter": 20, "reduce": 5}


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
            stage = StagePass(p, sd, prev, ss, wanted, policy, jobs_by_stage.get(sd.stage, []), may_start)
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
