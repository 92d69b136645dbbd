"""Planning a RecognitionExperiment: wait until every referenced SyntheticDataset is Complete, pin its
manifest URI and digest (``status.datasets``), expand the matrix, run at most ``execution.parallelism``
runs at once and fold each run's metrics into ``status.results``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from synthrec import api
from synthrec.contract.layout import ExperimentLayout
from synthrec.contract.summaries import TrainSummary
from synthrec.operator.jobs import child_labels, render_configmap, run_job_name
from synthrec.operator.observed import JobView
from synthrec.operator.planning_pretrain import fold_pretraining
from synthrec.operator.reconcile_pass import (
    Actions,
    Create,
    Pass,
    age_of,
    failed_pod_message,
    persisted_terminal,
    pods_by_job,
    release,
    render_run_job,
    resource_ref,
    run_failure_message,
    successful_pods,
)
from synthrec.operator.status import Conditions, Event
from synthrec.plan import (
    PRETRAIN_STAGE,
    TRANSFER_STAGE,
    experiment_hash,
    experiment_runs,
    pin_datasets,
    referenced_datasets,
    runs_of,
    train_task,
)
from synthrec.plan.tasks import DatasetInput

TRAIN_STAGE = "train"


def plan_experiment(p: Pass) -> Actions:
    spec: api.RecognitionExperimentSpec = p.spec
    old: api.RecognitionExperimentStatus = p.old
    status: api.RecognitionExperimentStatus = p.status
    observed, ctx, actions, conds = p.observed, p.ctx, p.actions, p.conds
    layout = ExperimentLayout(spec.output.uri)
    status.spec_hash = experiment_hash(spec)
    persisted_results = {r.name: r for r in old.results}
    run_names = {r.index: r.name for r in runs_of(spec)}

    def folded(job: JobView) -> bool:
        """The persisted status holds this finished Job's result: it may expire. (A pre-training run's
        pretrain Job is folded once the run has moved on to its transfer stage.)"""
        prev = persisted_results.get(run_names.get(job.run_index if job.run_index is not None else -1, ""))
        if persisted_terminal(old):
            return True
        if prev is None:
            return False
        return prev.state in ("Succeeded", "Failed") or (
            job.stage == PRETRAIN_STAGE and prev.stage == TRANSFER_STAGE
        )

    if p.settled:
        return p.settle(folded)
    p.accept()

    # 1. Referenced datasets: wait for them, then pin their manifest URI and digest.
    failure = _resolve_datasets(spec, status, p, conds)
    ready = conds.is_true("DatasetReady")
    activity = p.activity()
    suspended = spec.run_policy.suspend
    deadline = p.deadline(activity)
    may_start = ready and not suspended and deadline is None and failure is None

    # 2. Runs: fold finished ones, start pending ones within the parallelism budget.
    if spec.method.pretrain is not None:
        results, config_error, deadline = fold_pretraining(p, may_start, deadline, pinned_input(p))
    else:
        results, config_error, deadline = _fold_runs(p, layout, may_start, deadline)
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
        p.fail(*terminal_failure)
    elif ready and finished == counts.total and counts.total:
        if counts.succeeded:
            best_text = f"; best {status.best.name} top-1 {status.best.top1:.4f}" if status.best else ""
            p.complete(
                "AllRunsSucceeded" if not counts.failed else "RunsCompleted",
                f"{counts.succeeded} of {counts.total} run(s) succeeded{best_text}",
                f"complete: {counts.succeeded}/{counts.total} runs{best_text}",
            )
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
                release(actions, job)
        p.suspend(stopping, "suspended; resuming restarts unfinished runs")
    elif ready:
        p.run(activity, "Training", f"{finished}/{counts.total} runs finished, {counts.running} running")
    else:
        conds.stop_activity("WaitingForDataset")
        status.message = (conds.get("DatasetReady") or {}).get("message")
    p.degraded(troubles, "no failing runs")

    progress = status.progress
    progress.stage = TRAIN_STAGE if ready else "waiting"
    progress.summary = f"{finished}/{counts.total}"
    if conds.is_true("Complete"):
        progress.percent = 100
    else:
        progress.percent = min(99, int(100 * finished / counts.total)) if counts.total else 0
    p.expire(folded)
    p.close()
    if not ready and failure is None and actions.requeue_after is None:
        actions.requeue(30.0)
    return actions


def _fold_runs(
    p: Pass, layout: ExperimentLayout, may_start: bool, deadline: tuple[str, str] | None
) -> tuple[list[api.RunResult], str | None, tuple[str, str] | None]:
    """Classifier-tuning runs (one Job each): fold finished ones, start pending ones within the
    parallelism budget; returns the results, a configuration error and a deadline failure."""
    spec, observed, ctx, actions = p.spec, p.observed, p.ctx, p.actions
    persisted_results = {r.name: r for r in p.old.results}
    runs = experiment_runs(spec)
    by_job = pods_by_job(observed.pods)
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
            name=run.name, shots=run.shots, seed=run.seed, variant=run.variant, method=run.method
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
        pods = by_job.get(job.uid, [])
        if job.deleting or not job.finished:
            result.state = "Running" if not job.deleting else result.state
            continue
        if job.complete:
            pod = successful_pods(pods).get(0)
            age = age_of(job.finished_at, ctx)
            if pod is None and (age is None or age < ctx.fold_grace_seconds):
                actions.requeue(1.0)
                result.state = "Running"
                continue
            summary = pod.summary if pod else None
            result.state = "Succeeded"
            if isinstance(summary, TrainSummary):
                result.top1, result.zero_shot_top1 = summary.top1, summary.zero_shot_top1
                result.top1_last, result.top1_best_validation = (
                    summary.top1_last,
                    summary.top1_best_validation,
                )
            metrics = summary.metrics if isinstance(summary, TrainSummary) else None
            result.metrics = metrics or layout.url(layout.run_metrics(run.name))
            actions.shards_done[TRAIN_STAGE] = actions.shards_done.get(TRAIN_STAGE, 0) + 1
            continue
        failure_cond = job.failure
        reason = failure_cond.reason if failure_cond else "Failed"
        detail = failed_pod_message(pods) or (failure_cond.message if failure_cond else "")
        result.state, result.message = "Failed", run_failure_message(reason, detail)
        actions.shards_failed[TRAIN_STAGE] = actions.shards_failed.get(TRAIN_STAGE, 0) + 1
        if reason == "PodFailurePolicy" and config_error is None:
            config_error = f"run {run.name} failed with a configuration error (not retried): {detail}"
        elif reason == "DeadlineExceeded" and deadline is None:
            deadline = ("DeadlineExceeded", f"run {run.name} ran longer than runPolicy.activeDeadlineSeconds")
    if may_start and config_error is None and deadline is None:
        slots = spec.execution.parallelism - active
        for run in to_start[: max(0, slots)]:
            actions.create.append(_run_create(p, run))
            next(r for r in results if r.name == run.name).state = "Running"
            p.started()
    return results, config_error, deadline


def _resolve_datasets(
    spec: api.RecognitionExperimentSpec, status: api.RecognitionExperimentStatus, p: Pass, conds: Conditions
) -> tuple[str, str] | None:
    """Update status.datasets and DatasetReady; return a Failed reason/message when a dataset is gone."""
    refs = referenced_datasets(spec)
    pinned = {d.name: d for d in status.datasets if d.name}
    waiting: list[str] = []
    missing: list[str] = []
    for ref in refs:
        entry = pinned.get(ref)
        if entry is not None and entry.digest:
            continue  # pinned at start; later changes to the dataset do not move this experiment
        view = p.observed.datasets.get(ref)
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
        pins = ", ".join(f"{d.name}@{d.digest[:19]}" for d in status.datasets)
        conds.set("DatasetReady", True, "DigestResolved", f"pinned {pins}")
    else:
        conds.set("DatasetReady", True, "NoDatasetReferences", "no SyntheticDataset is referenced")
    return None


def pinned_input(p: Pass) -> Callable[[api.SyntheticSource], DatasetInput]:
    """How a run's synthetic source is pinned: a datasetRef at the digest in status (reached with its own
    output's endpoint), a uri as it is."""
    pins = {d.name: d for d in p.status.datasets}

    def pinned(source: api.SyntheticSource) -> DatasetInput:
        if not source.dataset_ref:
            return DatasetInput(uri=str(source.uri))
        pin, view = pins[source.dataset_ref], p.observed.datasets.get(source.dataset_ref)
        return DatasetInput(
            name=source.dataset_ref,
            uri=pin.uri,
            digest=pin.digest,
            endpoint=view.endpoint if view else None,
            region=view.region if view else None,
        )

    return pinned


def _run_create(p: Pass, run: Any, attempt: int = 1) -> Create:
    spec, owner = p.spec, p.owner
    inputs = pin_datasets([run], pinned_input(p))[run.name]
    task = train_task(spec, run, inputs, resource_ref(owner), attempt=attempt)
    name = run_job_name(owner.name, run.index, attempt)
    labels = child_labels(owner, TRAIN_STAGE, attempt, run=run.name)
    job = render_run_job(p, name, TRAIN_STAGE, labels, run.index)
    return Create(
        name,
        render_configmap(owner, name, labels, task),
        job,
        Event("Normal", "JobCreated", f"run {run.name}: Job {name} (shots {run.shots}, seed {run.seed})"),
    )
