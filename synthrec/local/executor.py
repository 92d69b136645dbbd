"""The local executor: every resource of a file on one machine, with the operator's plan, tasks and workers.

For each SyntheticDataset, the stages of ``synthrec.plan.dataset_stages`` run in order. Before each stage
attempt the runner reads the commit markers (``synthrec.contract.artifacts``), writes ONE task file with
``synthrec.plan.dataset_task(..., shard_ids=<shards without a marker>)`` and starts
``python -m synthrec.workers STAGE --task FILE`` once per shard with the environment a Job gives its pods
(``JOB_COMPLETION_INDEX``, a termination log, a progress file, CPU threads divided among the shards that
run at once). Exit codes mean what they mean to the Job: 1 retries the shard (``retriesPerShard``), 42
fails the shard (the stage fails when more than ``maxFailedShards`` did), 3 stops the stage at once.
RecognitionExperiments run after the datasets they reference, each run one ``train`` task pinned to the
sha256 of its datasets' manifest.json; a pre-training experiment runs its runs' ``pretrain`` then
``transfer`` tasks (synthrec.local.pretraining).

Nothing is committed by the runner: workers write data first and their marker last, so an interrupted
run (Ctrl-C, a crash, a full disk) leaves only whole shards, and the next run starts from them.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrec import api, plan
from synthrec.contract import artifacts
from synthrec.contract.layout import DatasetLayout, StorageLayout
from synthrec.local.input import Resource, RunError, check_writable, storage_of
from synthrec.local.pool import BatchResult, WorkerPool, WorkUnit, available_cpus, visible_gpus
from synthrec.local.ui import QuietUI
from synthrec.plan.tasks import DatasetInput, ResourceRef, dump_task
from synthrec.storage import Storage, StorageError, open_storage
from synthrec.storage.uris import join


@dataclass
class DatasetOutcome:
    name: str
    ok: bool
    message: str = ""
    state: artifacts.DatasetState | None = None


@dataclass
class ExperimentOutcome:
    name: str
    ok: bool
    message: str = ""
    state: artifacts.ExperimentState | None = None


@dataclass
class RunOutcome:
    datasets: list[DatasetOutcome] = field(default_factory=list)
    experiments: list[ExperimentOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.datasets) and all(e.ok for e in self.experiments)


class LocalRunner:
    """Runs datasets, then experiments, of an already validated and re-rooted list of resources."""

    def __init__(
        self,
        resources: list[Resource],
        *,
        parallel: int | None = None,
        ui: Any = None,
        work_dir: Path | None = None,
        worker_module: str = "synthrec.workers",
        grace_s: float = 30.0,
        poll_s: float = 0.1,
        storage_root: str | None = None,
        available: Sequence[Resource] = (),
    ) -> None:
        self.resources = resources
        self.available = list(available)  # resources of the file not selected with --only
        self.parallel = parallel
        self.ui = ui or QuietUI()
        self.work_dir = work_dir
        self.worker_module = worker_module
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.storage_root = storage_root
        self.stopping = False
        self.kill_now = False
        self.pool = WorkerPool(self)
        self._logs_kept = False
        self._gpus: list[str] | None = None

    def gpus(self) -> list[str]:
        if self._gpus is None:
            self._gpus = visible_gpus()
        return self._gpus

    # ---- the whole run

    def run(self) -> RunOutcome:
        started = time.monotonic()
        outcome = RunOutcome()
        datasets = [r for r in self.resources if isinstance(r, api.SyntheticDataset)]
        experiments = [r for r in self.resources if isinstance(r, api.RecognitionExperiment)]
        for res in self.resources:
            check_writable(storage_of(res.spec.output))
        self._check_references(experiments)
        with self._signals(), self._work_dir():
            failed: set[str] = set()
            for ds in datasets:
                result = self.run_dataset(ds)
                outcome.datasets.append(result)
                if not result.ok:
                    failed.add(ds.metadata.name)
            for ex in experiments:
                blocked = sorted(set(plan.referenced_datasets(ex.spec)) & failed)
                if blocked:
                    msg = f"skipped: dataset {', '.join(blocked)} did not complete"
                    self.ui.error(f"{ex.metadata.name}: {msg}")
                    outcome.experiments.append(ExperimentOutcome(ex.metadata.name, False, msg))
                    continue
                outcome.experiments.append(self.run_experiment(ex))
        outcome.seconds = time.monotonic() - started
        return outcome

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            if self.stopping:
                self.kill_now = True
            self.stopping = True

        try:
            previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread (embedded use): no signal forwarding
            yield
            return
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    @contextlib.contextmanager
    def _work_dir(self) -> Iterator[None]:
        """Task files, termination logs, progress files and worker logs of this run (removed on success)."""
        own = self.work_dir is None
        try:
            folder = Path(tempfile.mkdtemp(prefix="synthrec-run-")) if own else self.work_dir
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create a working folder for task files: {_os_reason(exc)}") from None
        self.work_dir = folder
        try:
            yield
        finally:
            if own and not self._logs_kept:
                shutil.rmtree(folder, ignore_errors=True)

    def keep_logs(self) -> Path | None:
        self._logs_kept = True
        return self.work_dir

    def open_log(self, path: Path) -> Any:
        try:
            return open(path, "wb")
        except OSError as exc:
            raise RunError(f"cannot write the worker log {path}: {_os_reason(exc)}") from None

    def write_task(self, resource: str, name: str, task: Any) -> Path:
        assert self.work_dir is not None
        folder = self.work_dir / resource
        path = folder / f"{name}.json"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(dump_task(task))
        except OSError as exc:
            raise RunError(f"cannot write the task file {path}: {_os_reason(exc)}") from None
        return path

    def default_parallel(self, count: int, cap: int | None = None, gpus_per_worker: int = 0) -> int:
        """--parallel, else as many workers as the machine holds: one per GPU share for resources that
        ask for GPUs (one at a time without GPUs: the models are large), else one per CPU; never more than
        the spec's own parallelism."""
        if self.parallel:
            return max(1, min(count, self.parallel))
        if gpus_per_worker > 0:
            gpus = self.gpus()
            limit = max(1, len(gpus) // gpus_per_worker) if gpus else 1
        else:
            limit = available_cpus()
        return max(1, min(count, limit, cap or count))

    # ---- datasets

    def run_dataset(self, res: api.SyntheticDataset) -> DatasetOutcome:
        name, spec = res.metadata.name, res.spec
        storage = storage_of(spec.output)
        ref = ResourceRef(kind="SyntheticDataset", name=name, namespace=res.metadata.namespace)
        self.ui.section(f"SyntheticDataset {name} -> {spec.output.uri}")
        for stage in plan.dataset_stages(spec):
            if not stage.enabled:
                self.ui.note(f"{name} {stage.stage}: disabled")
                continue
            failure = with_hint(self._run_dataset_stage(res, stage, storage, ref))
            if failure:
                self.ui.error(f"{name} {stage.stage}: {failure}")
                return DatasetOutcome(name, False, f"{stage.stage}: {failure}")
        state = artifacts.dataset_state(storage, spec, name=name)
        if state.manifest is None:
            return DatasetOutcome(name, False, "manifest.json was not written by the reduce stage", state)
        return DatasetOutcome(name, True, "", state)

    def _run_dataset_stage(
        self, res: api.SyntheticDataset, stage: plan.StageDef, storage: Storage, ref: ResourceRef
    ) -> str | None:
        """Run one stage until the stage decision says it is done; returns why it failed, or None.

        Observed here: the commit markers in storage, and the shards whose workers exited 0 (a worker that
        exits 0 without its marker is caught after the stage, not retried)."""
        name, spec = res.metadata.name, res.spec
        title = f"{name} {stage.stage}"
        started = time.monotonic()
        reported: set[int] = set()  # shards whose workers exited 0
        attempt, failed, stopped = 0, {}, None
        while True:
            state = artifacts.dataset_state(storage, spec, name=name)
            generated = state.stage("generate").committed
            committed = state.stage(stage.stage).committed
            wanted = plan.wanted_shards(stage, generated)
            upstream_failed = stage.shards - len(generated) if stage.stage == "filter" else 0
            policy = plan.StagePolicy.of(spec, stage, upstream_failed=upstream_failed)
            observed = plan.StageObservation(
                wanted=wanted,
                committed=frozenset(committed | reported),
                attempt=attempt,
                finished=attempt > 0,
                failed=failed,
                stopped=stopped,
            )
            step = plan.next_step(observed, policy)
            if isinstance(step, plan.StartAttempt):
                attempt = step.attempt
                if step.retry:
                    left = plan.format_ranges(set(step.shards))
                    self.ui.warn(f"{title}: attempt {attempt - 1} left shard(s) {left}; retrying them")
                result = self._run_attempt(spec, stage, ref, step, policy, len(committed))
                reported |= {w.shard for w in result.succeeded}
                failed = {
                    shard: plan.ShardFailure(retryable=shard in result.exhausted, message=message)
                    for shard, message in result.failed.items()
                }
                stopped = ("ConfigError", f"stopped: {result.config_error}") if result.config_error else None
                continue
            if isinstance(step, plan.StageFailed):
                return step.message
            assert isinstance(step, plan.StageDone), step  # nothing runs between two observations here
            break
        if attempt == 0:
            self.ui.note(f"{title}: {len(committed)}/{stage.shards} shard(s) already committed, skipped")
            return None
        if step.tolerated:
            self.ui.warn(
                f"{title}: shard(s) {plan.format_ranges(set(step.tolerated))} failed; tolerated "
                f"(sharding.maxFailedShards={spec.sharding.max_failed_shards})"
            )
        # A worker that exits 0 without its commit marker must not let the next stage start on a gap.
        gap = wanted - committed - step.tolerated
        if gap:
            return (
                f"shard(s) {plan.format_ranges(gap)} have no commit marker although their workers exited "
                f"0; see the worker logs in {self.keep_logs()}"
            )
        self.ui.note(f"{title}: done in {time.monotonic() - started:.1f} s")
        return None

    def _run_attempt(
        self,
        spec: api.SyntheticDatasetSpec,
        stage: plan.StageDef,
        ref: ResourceRef,
        step: plan.StartAttempt,
        policy: plan.StagePolicy,
        already_done: int,
    ) -> BatchResult:
        """One attempt: one task file, one worker process per shard (completion index i -> i-th shard)."""
        shards = sorted(step.shards)
        task = plan.dataset_task(spec, stage.stage, ref, attempt=step.attempt, shard_ids=shards)
        task_path = self.write_task(ref.name, f"{stage.stage}-attempt{step.attempt}", task)
        units = [
            WorkUnit(stage.stage, task_path, i, shard, f"shard {shard}") for i, shard in enumerate(shards)
        ]
        title = f"{ref.name} {stage.stage}"
        return self.pool.run(
            units,
            parallel=self.default_parallel(
                len(units), spec.sharding.parallelism or stage.shards, spec.resources.gpus
            ),
            retries=spec.sharding.retries_per_shard,
            max_failed=policy.max_failed,
            gpus_per_worker=spec.resources.gpus,
            title=title if step.attempt == 1 else f"{title} (attempt {step.attempt})",
            total=stage.shards,
            already_done=already_done,
        )

    # ---- experiments

    def _check_references(self, experiments: list[api.RecognitionExperiment]) -> None:
        """Every datasetRef must name a dataset of the file or one committed in storage; fail before work."""
        for ex in experiments:
            for run in plan.runs_of(ex.spec):
                for source in run.synthetic:
                    self._locate(ex, source, check_only=True)

    def _dataset_of_file(self, name: str) -> api.SyntheticDataset | None:
        for res in [*self.resources, *self.available]:
            if isinstance(res, api.SyntheticDataset) and res.metadata.name == name:
                return res
        return None

    def _locate(
        self, ex: api.RecognitionExperiment, source: api.SyntheticSource, *, check_only: bool
    ) -> DatasetInput | None:
        """A synthetic source pinned at the sha256 of its committed manifest.json, read from storage.

        With ``check_only``, a dataset that this run produces first is accepted without looking at storage.
        """
        experiment = f"RecognitionExperiment {ex.metadata.name}"
        if source.uri is not None:
            name, uri = None, source.uri
            endpoint, region = ex.spec.output.endpoint, ex.spec.output.region
            will_run, in_file = False, None
        else:
            name = str(source.dataset_ref)
            in_file = self._dataset_of_file(name)
            will_run = in_file is not None and any(r is in_file for r in self.resources)
            if in_file is not None:
                out = in_file.spec.output
                uri, endpoint, region = out.uri, out.endpoint, out.region
            elif self.storage_root is not None:
                uri, endpoint, region = StorageLayout(self.storage_root).dataset_root(name), None, None
            else:
                raise RunError(
                    f"{experiment}: datasetRef {name!r} is not a SyntheticDataset in the file, and with "
                    "--storage spec there is no storage root to look for it in; add the dataset to the file, "
                    "or point data.synthetic[].uri at its output"
                )
        if check_only and will_run:
            return None
        digest = artifacts.manifest_digest(open_storage(uri, endpoint=endpoint, region=region))
        if digest is not None:
            return DatasetInput(name=name, uri=uri, digest=digest, endpoint=endpoint, region=region)
        manifest = join(uri, DatasetLayout.manifest)
        if name is None:
            raise RunError(
                f"{experiment}: data.synthetic uri {uri} holds no committed dataset (no {manifest})"
            )
        if in_file is not None:
            raise RunError(
                f"{experiment}: datasetRef {name!r} is in the file but not selected with --only, and it has "
                f"no committed dataset in storage (no {manifest}); run it too (--only {name} "
                f"--only {ex.metadata.name}) or first on its own (--only {name})"
            )
        raise RunError(
            f"{experiment}: datasetRef {name!r} is neither a SyntheticDataset in the file nor a committed "
            f"dataset in the storage (no {manifest}); add the dataset to the file or run it first"
        )

    def pinned(self, ex: api.RecognitionExperiment, source: api.SyntheticSource) -> DatasetInput:
        found = self._locate(ex, source, check_only=False)
        assert found is not None  # check_only=False finds it or raises
        return found

    def run_experiment(self, res: api.RecognitionExperiment) -> ExperimentOutcome:
        if res.spec.method.pretrain is not None:
            from synthrec.local.pretraining import run_pretraining

            return run_pretraining(self, res)
        name, spec = res.metadata.name, res.spec
        storage = storage_of(spec.output)
        ref = ResourceRef(kind="RecognitionExperiment", name=name, namespace=res.metadata.namespace)
        self.ui.section(f"RecognitionExperiment {name} -> {spec.output.uri}")
        runs = plan.experiment_runs(spec)
        inputs = plan.pin_datasets(runs, lambda source: self.pinned(res, source))
        tasks = {run.name: plan.train_task(spec, run, inputs[run.name], ref) for run in runs}
        pinned = {i.name or i.uri: i for run_inputs in inputs.values() for i in run_inputs}
        for value in pinned.values():
            self.ui.note(
                f"{name}: dataset {value.name or value.uri} pinned at manifest sha256 {value.digest}"
            )
        hashes = {n: t.spec_hash for n, t in tasks.items()}
        state = artifacts.experiment_state(storage, spec, name=name, run_hashes=hashes)
        todo = [r for r in runs if r.name in {s.name for s in state.missing}]
        if len(todo) < len(runs):
            self.ui.note(f"{name}: {len(runs) - len(todo)}/{len(runs)} run(s) already done, skipped")
        started = time.monotonic()
        if todo:
            units = []
            for run in todo:
                path = self.write_task(name, f"train-{run.name}", tasks[run.name])
                units.append(WorkUnit("train", path, 0, run.index, f"run {run.name}"))
            result = self.pool.run(
                units,
                parallel=self.default_parallel(len(units), spec.execution.parallelism, spec.resources.gpus),
                retries=spec.execution.retries_per_run,
                max_failed=len(units),  # a failed run does not stop the others
                gpus_per_worker=spec.resources.gpus,
                title=f"{name} train",
                total=len(runs),
                already_done=len(runs) - len(todo),
            )
            if result.config_error:
                msg = with_hint(f"stopped: {result.config_error}")
                self.ui.error(f"{name}: {msg}")
                return ExperimentOutcome(name, False, msg, self.final_state(storage, res, hashes))
            if result.failed:
                names = [r.name for r in runs if r.index in result.failed]
                first = next(iter(result.failed.values()))
                msg = f"run(s) {', '.join(names)} failed; first error: {first}"
                self.ui.error(f"{name}: {msg}")
                return ExperimentOutcome(name, False, msg, self.final_state(storage, res, hashes))
            self.ui.note(f"{name} train: done in {time.monotonic() - started:.1f} s")
        final = self.final_state(storage, res, hashes)
        ok = final.complete
        return ExperimentOutcome(name, ok, "" if ok else "some runs have no done.json", final)

    def final_state(
        self, storage: Storage, res: api.RecognitionExperiment, hashes: dict[str, str]
    ) -> artifacts.ExperimentState:
        state = artifacts.experiment_state(storage, res.spec, name=res.metadata.name, run_hashes=hashes)
        try:
            from synthrec.contract.layout import ExperimentLayout

            storage.write_json(ExperimentLayout.summary, artifacts.experiment_summary(state))
        except StorageError as exc:
            self.ui.warn(f"{res.metadata.name}: could not write summary.json: {exc}")
        return state


def with_hint(message: str | None) -> str | None:
    if message and "no space left" in message.lower():
        return message + "; free some space and run the same command again (committed shards are kept)"
    return message


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device; free some space and run the same command again"
    return exc.strerror or str(exc)
