"""The local runner's part for a pre-training experiment (``method.pretrain``): its runs' pretrain
stages, then their transfer stages, with the shared plan (synthrec.plan.pretraining), task JSON and
workers. Each worker is ``python -m synthrec.workers pretrain|transfer``, which starts torchrun with one
process per GPU it is given (one on CPU) and reports its steps in the progress file the bars read."""

from __future__ import annotations

import time

from synthrec import api, plan
from synthrec.contract import artifacts
from synthrec.local.executor import ExperimentOutcome, LocalRunner, with_hint
from synthrec.local.input import storage_of
from synthrec.local.pool import WorkUnit
from synthrec.plan.tasks import ResourceRef


def run_pretraining(runner: LocalRunner, res: api.RecognitionExperiment) -> ExperimentOutcome:
    """A pre-training experiment: every run's pretrain stage, then every run's transfer stage, each a
    ``python -m synthrec.workers pretrain|transfer`` that starts torchrun with one process per GPU it
    is given (one on CPU); a run whose stage is committed for this spec is skipped."""
    name, spec = res.metadata.name, res.spec
    storage = storage_of(spec.output)
    ref = ResourceRef(kind="RecognitionExperiment", name=name, namespace=res.metadata.namespace)
    runner.ui.section(f"RecognitionExperiment {name} (pre-training) -> {spec.output.uri}")
    runs = plan.pretrain_runs(spec)
    inputs = plan.pin_datasets(runs, lambda source: runner.pinned(res, source))
    for value in {i.name or i.uri: i for ins in inputs.values() for i in ins}.values():
        runner.ui.note(f"{name}: dataset {value.name or value.uri} pinned at manifest sha256 {value.digest}")
    tasks = {
        (run.name, stage): plan.stage_task(spec, run, stage, inputs[run.name], ref, cluster=False)
        for run in runs
        for stage in plan.run_stages(spec, run)
    }
    hashes = {f"{run}/{stage}": task.spec_hash for (run, stage), task in tasks.items()}
    gpus = spec.resources.gpus
    failed: dict[str, str] = {}
    for stage in (plan.PRETRAIN_STAGE, plan.TRANSFER_STAGE):
        wanted = [run for run in runs if (run.name, stage) in tasks]
        if not wanted:
            continue
        state = artifacts.experiment_state(storage, spec, name=name, run_hashes=hashes)
        committed = {
            r.name for r in state.pretraining if (r.pretrain_done if stage == "pretrain" else r.transfer_done)
        }
        todo = [run for run in wanted if run.name not in committed and run.name not in failed]
        if len(todo) < len(wanted):
            runner.ui.note(f"{name} {stage}: {len(wanted) - len(todo)}/{len(wanted)} run(s) done or skipped")
        if not todo:
            continue
        units = [
            WorkUnit(
                stage,
                runner.write_task(name, f"{stage}-{run.name}", tasks[run.name, stage]),
                0,
                run.index,
                f"run {run.name}",
            )
            for run in todo
        ]
        started = time.monotonic()
        result = runner.pool.run(
            units,
            # a run takes the GPUs it is given (torchrun: one process each) or, on CPU, the machine
            parallel=runner.default_parallel(len(units), spec.execution.parallelism, gpus) if gpus else 1,
            retries=spec.execution.retries_per_run,
            max_failed=len(units),  # a failed run does not stop the others
            gpus_per_worker=gpus,
            title=f"{name} {stage}",
            total=len(wanted),
            already_done=len(wanted) - len(todo),
        )
        if result.config_error:
            msg = with_hint(f"stopped: {result.config_error}")
            runner.ui.error(f"{name}: {msg}")
            return ExperimentOutcome(name, False, msg, runner.final_state(storage, res, hashes))
        failed.update({r.name: result.failed[r.index] for r in todo if r.index in result.failed})
        runner.ui.note(f"{name} {stage}: done in {time.monotonic() - started:.1f} s")
    final = runner.final_state(storage, res, hashes)
    if failed:
        first = next(iter(failed.values()))
        msg = f"run(s) {', '.join(failed)} failed; first error: {first}"
        runner.ui.error(f"{name}: {msg}")
        return ExperimentOutcome(name, False, msg, final)
    return ExperimentOutcome(
        name, final.complete, "" if final.complete else "some runs have no done.json", final
    )
