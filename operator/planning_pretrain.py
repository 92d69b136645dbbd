"""Planning a pre-training RecognitionExperiment (``method.pretrain``): each run goes through its stages
(``pretrain``, unless its data size is 0, then ``transfer``), one Job per stage, at most
``execution.parallelism`` Jobs at once; each finished stage is folded into the run's ``status.results``
row (the stage it is at, then the transfer table's numbers), which is what lets a finished Job expire.

A stage on ``method.pretrain.distributed.nodes`` > 1 is a gang: one Indexed Job with completions =
parallelism = nodes (Kueue admits the pod set as one), a headless Service owned by the resource (its pods'
stable names, ``<job>-<index>.<service>``), and torchrun in every pod meeting at index 0
(``synthrec.operator.jobs.Gang``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from synthrec import api
from synthrec.contract.layout import ExperimentLayout
from synthrec.contract.summaries import PretrainSummary, TransferSummary
from synthrec.operator.jobs import (
    Gang,
    child_labels,
    gang_service_name,
    render_configmap,
    render_service,
    run_job_name,
)
from synthrec.operator.observed import JobView
from synthrec.operator.reconcile_pass import (
    Create,
    Pass,
    age_of,
    failed_pod_message,
    pods_by_job,
    render_run_job,
    resource_ref,
    run_failure_message,
    successful_pods,
)
from synthrec.operator.status import Event
from synthrec.plan import PRETRAIN_STAGE, pin_datasets, pretrain_runs, run_stages, stage_task
from synthrec.plan.tasks import DatasetInput, PretrainRun

TERMINAL = ("Succeeded", "Failed")


def fold_pretraining(
    p: Pass,
    may_start: bool,
    deadline: tuple[str, str] | None,
    pinned: Callable[[api.SyntheticSource], DatasetInput],
) -> tuple[list[api.RunResult], str | None, tuple[str, str] | None]:
    """Fold finished stage Jobs into the runs' rows and start the next stages within the parallelism
    budget (datasets pinned by ``pinned``); returns the rows, a configuration error and a deadline
    failure."""
    spec, observed, ctx, actions = p.spec, p.observed, p.ctx, p.actions
    layout = ExperimentLayout(spec.output.uri)
    persisted = {r.name: r for r in p.old.results}
    by_job = pods_by_job(observed.pods)
    jobs_by_stage: dict[tuple[int, str], list[JobView]] = defaultdict(list)
    for job in observed.jobs:
        if job.run_index is not None:
            jobs_by_stage[job.run_index, job.stage].append(job)
    active = sum(1 for j in observed.jobs if not j.finished)
    results: list[api.RunResult] = []
    to_start: list[tuple[PretrainRun, str]] = []
    config_error: str | None = None
    for run in pretrain_runs(spec):
        prev = persisted.get(run.name)
        result = prev.model_copy(deep=True) if prev else _row(run)
        results.append(result)
        stages = run_stages(spec, run)
        while result.state not in TERMINAL:
            stage = result.stage if result.stage in stages else stages[0]
            result.stage = stage
            jobs = sorted(jobs_by_stage.get((run.index, stage), []), key=lambda j: j.attempt)
            job = next((j for j in reversed(jobs) if not j.deleting), jobs[-1] if jobs else None)
            if job is None:
                result.state = "Running" if stage != stages[0] else "Pending"
                to_start.append((run, stage))
                break
            if job.deleting or not job.finished:
                result.state = "Running" if not job.deleting else result.state
                break
            pods = by_job.get(job.uid, [])
            if not job.complete:
                failure = job.failure
                reason = failure.reason if failure else "Failed"
                detail = failed_pod_message(pods) or (failure.message if failure else "")
                result.state, result.message = "Failed", run_failure_message(reason, detail, stage)
                actions.shards_failed[stage] = actions.shards_failed.get(stage, 0) + 1
                if reason == "PodFailurePolicy" and config_error is None:
                    config_error = f"run {run.name} {stage} failed with a configuration error: {detail}"
                elif reason == "DeadlineExceeded" and deadline is None:
                    deadline = (
                        "DeadlineExceeded",
                        f"run {run.name} ran longer than runPolicy.activeDeadlineSeconds",
                    )
                break
            pod = successful_pods(pods).get(0)  # every node ends with the same summary; index 0's is read
            age = age_of(job.finished_at, ctx)
            if pod is None and (age is None or age < ctx.fold_grace_seconds):
                actions.requeue(1.0)
                result.state = "Running"
                break
            _fold(result, pod.summary if pod else None, stage, layout, run.name)
            actions.shards_done[stage] = actions.shards_done.get(stage, 0) + 1
            later = stages[stages.index(stage) + 1 :]
            if not later:
                result.state = "Succeeded"
                break
            result.stage = later[0]  # persisted: the pretrain Job may now expire
    if may_start and config_error is None and deadline is None:
        slots = spec.execution.parallelism - active
        for run, stage in to_start[: max(0, slots)]:
            actions.create.append(_create(p, run, stage, pin_datasets([run], pinned)[run.name]))
            next(r for r in results if r.name == run.name).state = "Running"
            p.started()
    return results, config_error, deadline


def _row(run: PretrainRun) -> api.RunResult:
    return api.RunResult(
        name=run.name,
        seed=run.seed,
        objective=run.objective,
        label_space=run.label_space,
        data_size=run.size,
        init=run.init,
    )


def _fold(result: api.RunResult, summary: object, stage: str, layout: ExperimentLayout, run: str) -> None:
    """A finished stage's summary into the run's row (percentages; detection: the VOC07 AP50)."""
    if stage == PRETRAIN_STAGE:
        card = summary.card if isinstance(summary, PretrainSummary) else None
        result.card = result.metrics = card or layout.url(ExperimentLayout.pretrain(run, "card.json"))
        if isinstance(summary, PretrainSummary):
            result.pretrain_steps, result.pretrain_loss = summary.steps, summary.loss
        return
    result.metrics = layout.root.rstrip("/") + "/" + ExperimentLayout.transfer(run)
    if isinstance(summary, TransferSummary):
        result.classification_top1 = summary.classification_top1
        result.linear_probe_top1 = summary.linear_probe_top1
        result.ap50 = summary.ap50_voc07
        result.top1 = (
            summary.classification_top1
            if summary.classification_top1 is not None
            else (summary.linear_probe_top1)
        )


def _create(p: Pass, run: PretrainRun, stage: str, inputs: list[DatasetInput], attempt: int = 1) -> Create:
    spec, owner = p.spec, p.owner
    task = stage_task(spec, run, stage, inputs, resource_ref(owner), cluster=True, attempt=attempt)
    name = run_job_name(owner.name, run.index, attempt, stage)
    labels = child_labels(owner, stage, attempt, run=run.name)
    method = spec.method.pretrain
    nodes = method.distributed.nodes
    gang = Gang(
        nodes=nodes,
        port=method.distributed.port,
        grace_seconds=method.distributed.termination_grace_seconds,
        service=gang_service_name(name) if nodes > 1 else None,
    )
    job = render_run_job(p, name, stage, labels, run.index, gang)
    service = render_service(owner, gang.service, labels, name, gang.port) if gang.service else None
    where = f"{nodes} pods x {max(1, spec.resources.gpus)} process(es)" if nodes > 1 else "1 pod"
    return Create(
        name,
        render_configmap(owner, name, labels, task),
        job,
        Event("Normal", "JobCreated", f"run {run.name} {stage}: Job {name} ({where})"),
        service,
    )
