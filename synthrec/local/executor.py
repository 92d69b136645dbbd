"""The local executor: every resource of a file on one machine, with the operator's plan, tasks and workers.

For each SyntheticDataset, the stages of ``synthrec.plan.dataset_stages`` run in order. Before each stage
attempt the runner reads the commit markers (``synthrec.contract.artifacts``), writes ONE task file with
``synthrec.plan.dataset_task(..., shard_ids=<shards without a marker>)`` and starts
``python -m synthrec.workers STAGE --task FILE`` once per shard with the environment a Job gives its pods
(``JOB_COMPLETION_INDEX``, a termination log, a progress file, CPU threads divided among the shards that
run at once). Exit codes mean what they mean to the Job: 1 retries the shard (``retriesPerShard``), 42
fails the shard (the stage fails when more than ``maxFailedShards`` did), 3 stops the stage at once.
RecognitionExperiments run after the datasets they reference, each run one ``train`` task pinned to the
sha256 of its datasets' manifest.json.

Nothing is committed by the runner: workers write data first and their marker last, so an interrupted
run (Ctrl-C, a crash, a full disk) leaves only whole shards, and the next run starts from them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrec import api, contract, plan
from synthrec.contract import artifacts
from synthrec.contract.layout import DatasetLayout, StorageLayout
from synthrec.plan.tasks import DatasetInput, ResourceRef, dump_task
from synthrec.storage import Storage, StorageError, open_storage
from synthrec.storage.uris import join
from synthrec.tiny import references_tiny

Resource = api.SyntheticDataset | api.RecognitionExperiment

STORAGE_FROM_SPEC = "spec"
DEFAULT_STORAGE_DIR = "synthrec-out"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
TINY_WARNING = (
    "The tiny:// models have RANDOM weights: the images are coloured noise and every accuracy is "
    "meaningless. This run shows the mechanics of the pipeline only."
)


class RunError(Exception):
    """The run cannot start or cannot go on; the message says what was wrong and what to do."""


class Interrupted(RunError):
    """Ctrl-C or SIGTERM: the workers were stopped; committed shards are kept."""


# ---------------------------------------------------------------------------------------- the input


def load_resources(path: str | Path) -> list[Resource]:
    """The resources of a file, validated exactly as ``synthrec validate`` does (same messages)."""
    from synthrec.api.validation import FileError, load_documents, validate_resource

    try:
        docs = load_documents(path)
    except FileError as exc:
        raise RunError(str(exc)) from None
    problems = []
    for doc in docs:
        for problem in validate_resource(doc.body):
            problems.append(f"{path}: document {doc.index} ({doc.label}): {problem}")
    if problems:
        raise RunError("\n".join(problems) + "\nnothing was run; `synthrec validate` shows the same problems")
    resources = [api.parse_resource(doc.body) for doc in docs]
    seen: dict[tuple[str, str], int] = {}
    for doc, res in zip(docs, resources, strict=True):
        key = (res.kind, res.metadata.name)
        if key in seen:
            raise RunError(
                f"{path}: document {doc.index}: {res.kind} {res.metadata.name!r} is already defined in "
                f"document {seen[key]}; names must be unique per kind"
            )
        seen[key] = doc.index
    return resources


def storage_root(value: str | None, cwd: Path | None = None) -> str | None:
    """The storage root URI for ``--storage``: None for 'spec' (each resource keeps its output.uri)."""
    if value == STORAGE_FROM_SPEC:
        return None
    from synthrec.storage.uris import URIError, parse_storage_uri

    if value is None:
        value = (cwd or Path.cwd()).joinpath(DEFAULT_STORAGE_DIR).resolve().as_uri()
    elif "://" not in value:  # a plain local path
        value = (cwd or Path.cwd()).joinpath(value).resolve().as_uri()
    try:
        parsed = parse_storage_uri(value, allow_tiny=False)
    except URIError as exc:
        raise RunError(f"--storage {value}: {exc}") from None
    return str(parsed).rstrip("/") + "/"


def rehome(resources: Sequence[Resource], root: str | None) -> list[Resource]:
    """Copies of the resources whose output.uri is <root>/datasets/<name>/ or <root>/experiments/<name>/.

    The stage hashes do not cover the output, so artifacts written under the new root stay valid.
    """
    if root is None:
        return list(resources)
    layout = StorageLayout(root)
    out = []
    for res in resources:
        output = res.spec.output.model_copy(update={"uri": layout.resource_root(res.kind, res.metadata.name)})
        spec = res.spec.model_copy(update={"output": output})
        out.append(res.model_copy(update={"spec": spec}))
    return out


def select(resources: list[Resource], only: Sequence[str]) -> list[Resource]:
    if not only:
        return resources
    names = {r.metadata.name for r in resources}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise RunError(
            f"--only {', '.join(unknown)}: no such resource in the file (it has: {', '.join(sorted(names))})"
        )
    return [r for r in resources if r.metadata.name in set(only)]


def uses_tiny_models(resources: Sequence[Resource]) -> bool:
    """Whether any model or data reference is a built-in tiny one (random weights)."""
    return any(references_tiny(res.spec) for res in resources)


def _storage_of(output: Any) -> Storage:
    return open_storage(output.uri, endpoint=output.endpoint, region=output.region)


def check_writable(storage: Storage) -> None:
    """Write and delete a small probe object, so an unwritable or full storage fails before any work."""
    key = f".synthrec-write-check-{os.getpid()}"
    try:
        storage.write_bytes(key, b"synthrec\n")
        storage.delete(key)
    except StorageError as exc:
        raise RunError(f"cannot write to the storage {storage.uri}: {exc}") from None


# ------------------------------------------------------------------------------------ worker processes


@dataclass
class WorkItem:
    """One worker process to run: a shard of a stage attempt, or one experiment run."""

    stage: str
    task_path: Path
    index: int  # JOB_COMPLETION_INDEX within the attempt
    shard: int  # the shard id it produces (the run index for train)
    label: str  # what the user sees ('shard 3', 'run shots4-seed1')
    tries: int = 0


@dataclass
class BatchResult:
    succeeded: list[WorkItem] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # shard -> why
    exhausted: set[int] = field(default_factory=set)  # failed after all retries (retryable errors)
    config_error: str | None = None
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Running:
    item: WorkItem
    proc: subprocess.Popen[bytes]
    slot: int
    log_path: Path
    term_path: Path
    progress_path: Path
    started: float
    bar: Any = None


def cpu_slots(parallel: int) -> list[list[int]]:
    """Split the CPUs this process may use into ``parallel`` groups (a pod's CPU share, locally)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    n = len(cpus)
    if parallel >= n:
        return [[cpus[k % n]] for k in range(parallel)]
    return [cpus[k * n // parallel : (k + 1) * n // parallel] for k in range(parallel)]


def visible_gpus() -> list[str]:
    """GPU ids this process may use: $CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return (
        [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()]
        if out.returncode == 0
        else []
    )


def gpu_slots(parallel: int, per_worker: int, gpus: list[str]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each worker slot: ``per_worker`` GPUs each (shared round-robin when there are
    too few); "" hides the GPUs from a resource that asks for none; None leaves the environment alone (a
    resource asks for GPUs but there are none here: the workers fall back to the CPU)."""
    if per_worker == 0:
        return [""] * parallel
    if not gpus:
        return [None] * parallel
    return [
        ",".join(gpus[(k * per_worker + j) % len(gpus)] for j in range(per_worker)) for k in range(parallel)
    ]


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class WorkerPool:
    """Runs worker processes like an Indexed Job: up to ``parallel`` at once, retries, failure policy."""

    def __init__(self, runner: LocalRunner) -> None:
        self.runner = runner

    def run(
        self,
        items: list[WorkItem],
        *,
        parallel: int,
        retries: int,
        max_failed: int,
        title: str,
        total: int,
        already_done: int,
        gpus_per_worker: int = 0,
    ) -> BatchResult:
        ui = self.runner.ui
        result = BatchResult()
        pending: deque[WorkItem] = deque(items)
        running: list[_Running] = []
        slots = cpu_slots(parallel)
        devices = gpu_slots(parallel, gpus_per_worker, self.runner.gpus() if gpus_per_worker else [])
        free = list(range(parallel))
        stage_bar = ui.add_stage(title, total=total, completed=already_done)
        stop_reason: str | None = None
        try:
            while pending or running:
                if self.runner.stopping:
                    self._stop_all(running)
                    raise Interrupted("interrupted")
                while pending and free and stop_reason is None:
                    item = pending.popleft()
                    slot = free.pop(0)
                    running.append(self._start(item, slot, slots[slot], devices[slot]))
                for job in list(running):
                    code = job.proc.poll()
                    if code is None:
                        ui.update_shard(job.bar, job.progress_path)
                        continue
                    running.remove(job)
                    free.append(job.slot)
                    ui.remove_shard(job.bar)
                    stop_reason = self._finish(job, code, result, pending, retries) or stop_reason
                    if code == contract.EXIT_OK:
                        ui.advance(stage_bar)
                    if stop_reason is None and len(result.failed) > max_failed:
                        stop_reason = (
                            f"{len(result.failed)} shards failed (sharding.maxFailedShards={max_failed})"
                        )
                    if stop_reason is not None:
                        pending.clear()
                        self._terminate(running)  # empties running
                        break
                time.sleep(self.runner.poll_s)
        finally:
            ui.finish_stage(stage_bar)
        return result

    def _start(self, item: WorkItem, slot: int, cpus: list[int], gpus: str | None) -> _Running:
        runner = self.runner
        item.tries += 1
        stem = f"{item.stage}-{item.shard:05d}-try{item.tries}"
        folder = item.task_path.parent
        log_path = folder / f"{stem}.log"
        term_path = folder / f"{stem}.termination"
        progress_path = folder / f"{item.stage}-{item.shard:05d}.progress.json"
        env = dict(os.environ)
        env.pop(contract.ENV_SHARD, None)  # the completion index must pick the shard, as in a Job
        env[contract.ENV_COMPLETION_INDEX] = str(item.index)
        env[contract.ENV_TERMINATION_LOG] = str(term_path)
        env[contract.ENV_PROGRESS_FILE] = str(progress_path)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        for name in THREAD_VARIABLES:
            env[name] = str(len(cpus))
        if gpus is not None:  # the worker's own GPUs, as a pod gets its nvidia.com/gpu (none: hidden)
            env["CUDA_VISIBLE_DEVICES"] = gpus
        cmd = [sys.executable, "-m", runner.worker_module, item.stage, "--task", str(item.task_path)]
        log = runner.open_log(log_path)
        try:
            with _affinity(cpus):  # the child inherits this thread's CPU set: its share of the machine
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # Ctrl-C reaches the runner only; it stops the workers itself
                )
        finally:
            log.close()
        bar = runner.ui.add_shard(f"{item.stage} {item.label}")
        return _Running(item, proc, slot, log_path, term_path, progress_path, time.monotonic(), bar)

    def _finish(
        self, job: _Running, code: int, result: BatchResult, pending: deque[WorkItem], retries: int
    ) -> str | None:
        """Record a finished process; returns a reason to stop the whole batch (a config error)."""
        item = job.item
        summary = contract.parse_summary(_read(job.term_path)) or {}
        message = str(summary.get("message") or "") or _tail(job.log_path)
        where = f"{item.stage} {item.label}"
        if code == contract.EXIT_OK:
            result.succeeded.append(item)
            result.summaries[item.shard] = summary
            return None
        if code == contract.EXIT_CONFIG_ERROR:
            result.config_error = f"{where}: {message}"
            result.failed[item.shard] = message
            return result.config_error
        if code == contract.EXIT_DATA_ERROR:
            self.runner.ui.warn(f"{where} failed (data error, not retried): {message}  [log: {job.log_path}]")
            result.failed[item.shard] = message
            return None
        if self.runner.stopping:
            return None
        reason = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
        if item.tries <= retries:
            self.runner.ui.warn(
                f"{where} failed ({reason}; try {item.tries} of {retries + 1}), retrying: {message}"
            )
            pending.append(item)
            return None
        self.runner.ui.warn(
            f"{where} failed after {item.tries} tries ({reason}): {message}  [log: {job.log_path}]"
        )
        result.failed[item.shard] = message
        result.exhausted.add(item.shard)
        return None

    def _terminate(self, running: list[_Running]) -> None:
        for job in running:
            _signal(job.proc, signal.SIGTERM)
        self._wait(running)
        for job in running:
            self.runner.ui.remove_shard(job.bar)
        running.clear()

    def _stop_all(self, running: list[_Running]) -> None:
        """Ctrl-C: SIGTERM to every worker (they stop before committing anything else), then wait."""
        if running:
            self.runner.ui.warn(
                f"stopping {len(running)} worker(s); waiting up to {self.runner.grace_s:g} s "
                "(Ctrl-C again to kill them now)"
            )
        self._terminate(running)

    def _wait(self, running: list[_Running]) -> None:
        deadline = time.monotonic() + self.runner.grace_s
        for job in running:
            while job.proc.poll() is None:
                if time.monotonic() >= deadline or self.runner.kill_now:
                    _signal(job.proc, signal.SIGKILL)
                    job.proc.wait()
                    break
                time.sleep(0.05)


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


@contextlib.contextmanager
def _affinity(cpus: list[int]) -> Iterator[None]:
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cpus)  # this thread only; restored right after the fork
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _tail(path: Path, lines: int = 6) -> str:
    text = _read(path) or ""
    tail = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(tail) if tail else "no output"


# --------------------------------------------------------------------------------------------- output


class QuietUI:
    """What the runner tells the user; this one prints problems to stderr only (the CLI shows more)."""

    def section(self, text: str) -> None: ...
    def note(self, text: str) -> None: ...
    def banner(self, text: str) -> None: ...

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=sys.stderr)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=sys.stderr)

    def add_stage(self, title: str, *, total: int, completed: int) -> Any:
        return None

    def advance(self, handle: Any) -> None: ...
    def finish_stage(self, handle: Any) -> None: ...

    def add_shard(self, label: str) -> Any:
        return None

    def update_shard(self, handle: Any, progress_file: Path) -> None: ...
    def remove_shard(self, handle: Any) -> None: ...
    def summary(self, outcome: RunOutcome, *, tiny: bool) -> None: ...
    def report(self, where: str, *, tiny: bool) -> None: ...

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        yield


# --------------------------------------------------------------------------------------------- runner


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
            check_writable(_storage_of(res.spec.output))
        self._check_references(experiments)
        with self._signals(), self._work_dir():
            failed: set[str] = set()
            for ds in datasets:
                result = self.run_dataset(ds)
                outcome.datasets.append(result)
                if not result.ok:
                    failed.add(ds.metadata.name)
            for ex in experiments:
                needs = {s.dataset_ref for r in plan.experiment_runs(ex.spec) for s in r.synthetic}
                blocked = sorted(needs & failed)
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
        storage = _storage_of(spec.output)
        ref = ResourceRef(kind="SyntheticDataset", name=name, namespace=res.metadata.namespace)
        self.ui.section(f"SyntheticDataset {name} -> {spec.output.uri}")
        for stage in plan.dataset_stages(spec):
            if not stage.enabled:
                self.ui.note(f"{name} {stage.stage}: disabled")
                continue
            failure = _with_hint(self._run_dataset_stage(res, stage, storage, ref))
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
        """Run one stage until all its shards are committed; returns why it failed, or None."""
        name, spec = res.metadata.name, res.spec
        sharding = spec.sharding
        title = f"{name} {stage.stage}"
        started = time.monotonic()
        tolerated: set[int] = set()
        for attempt in range(1, sharding.max_attempts + 1):
            state = artifacts.dataset_state(storage, spec, name=name)
            current = state.stage(stage.stage)
            missing = sorted(current.missing)
            upstream_failed: list[int] = []
            if stage.stage == "filter":  # only shards whose images were committed can be filtered
                generated = state.stage("generate").committed
                upstream_failed = [s for s in missing if s not in generated]
                missing = [s for s in missing if s in generated]
            if not missing:
                if attempt == 1:
                    done = f"{len(current.committed)}/{stage.shards} shard(s) already committed"
                    self.ui.note(f"{title}: {done}, skipped")
                    return None
                break
            task = plan.dataset_task(spec, stage.stage, ref, attempt=attempt, shard_ids=missing)
            task_path = self.write_task(name, f"{stage.stage}-attempt{attempt}", task)
            items = [
                WorkItem(stage.stage, task_path, i, shard, f"shard {shard}")
                for i, shard in enumerate(missing)
            ]
            cap = sharding.parallelism or stage.shards
            result = self.pool.run(
                items,
                parallel=self.default_parallel(len(items), cap, spec.resources.gpus),
                retries=sharding.retries_per_shard,
                max_failed=max(0, sharding.max_failed_shards - len(upstream_failed)),
                gpus_per_worker=spec.resources.gpus,
                title=title if attempt == 1 else f"{title} (attempt {attempt})",
                total=stage.shards,
                already_done=len(current.committed),
            )
            if result.config_error:
                return f"stopped: {result.config_error}"
            failed = set(result.failed) | set(upstream_failed)
            if not failed:
                break
            last = attempt == sharding.max_attempts
            if len(failed) <= sharding.max_failed_shards and (last or not result.exhausted):
                tolerated = failed
                self.ui.warn(
                    f"{title}: shard(s) {plan.format_ranges(failed)} failed; tolerated "
                    f"(sharding.maxFailedShards={sharding.max_failed_shards})"
                )
                break
            if last:
                first = next(iter(result.failed.values()), "its images were not generated")
                return (
                    f"shard(s) {plan.format_ranges(failed)} failed after {attempt} attempt(s) "
                    f"(sharding.maxAttempts={sharding.max_attempts}); first error: {first}"
                )
            self.ui.warn(
                f"{title}: attempt {attempt} left shard(s) {plan.format_ranges(failed)}; retrying them"
            )
        # A worker that exits 0 without its commit marker must not let the next stage start on a gap.
        final = artifacts.dataset_state(storage, spec, name=name)
        gap = final.stage(stage.stage).missing - tolerated
        if stage.stage == "filter":  # shards without images are the generate stage's tolerated failures
            gap &= final.stage("generate").committed
        if gap:
            return (
                f"shard(s) {plan.format_ranges(gap)} have no commit marker although their workers exited "
                f"0; see the worker logs in {self.keep_logs()}"
            )
        self.ui.note(f"{title}: done in {time.monotonic() - started:.1f} s")
        return None

    # ---- experiments

    def _check_references(self, experiments: list[api.RecognitionExperiment]) -> None:
        """Every datasetRef must name a dataset of the file or one committed in storage; fail before work."""
        for ex in experiments:
            for run in plan.experiment_runs(ex.spec):
                for source in run.synthetic:
                    self._locate(ex, source, check_only=True)

    def _dataset_of_file(self, name: str) -> api.SyntheticDataset | None:
        for res in [*self.resources, *self.available]:
            if isinstance(res, api.SyntheticDataset) and res.metadata.name == name:
                return res
        return None

    def _locate(self, ex: api.RecognitionExperiment, source: api.SyntheticSource, *, check_only: bool) -> Any:
        """Where a synthetic source lives: (name, uri, endpoint, region, manifest digest).

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
            return name, uri, endpoint, region, digest
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

    def run_experiment(self, res: api.RecognitionExperiment) -> ExperimentOutcome:
        name, spec = res.metadata.name, res.spec
        storage = _storage_of(spec.output)
        ref = ResourceRef(kind="RecognitionExperiment", name=name, namespace=res.metadata.namespace)
        self.ui.section(f"RecognitionExperiment {name} -> {spec.output.uri}")
        runs = plan.experiment_runs(spec)
        pinned: dict[str, DatasetInput] = {}
        tasks = {}
        for run in runs:
            inputs = []
            for source in run.synthetic:
                key = source.dataset_ref or source.uri or ""
                if key not in pinned:
                    ds_name, uri, endpoint, region, digest = self._locate(res, source, check_only=False)
                    pinned[key] = DatasetInput(
                        name=ds_name, uri=uri, digest=digest, endpoint=endpoint, region=region
                    )
                inputs.append(pinned[key])
            tasks[run.name] = plan.train_task(spec, run, inputs, ref)
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
            items = []
            for run in todo:
                path = self.write_task(name, f"train-{run.name}", tasks[run.name])
                items.append(WorkItem("train", path, 0, run.index, f"run {run.name}"))
            result = self.pool.run(
                items,
                parallel=self.default_parallel(len(items), spec.execution.parallelism, spec.resources.gpus),
                retries=spec.execution.retries_per_run,
                max_failed=len(items),  # a failed run does not stop the others
                gpus_per_worker=spec.resources.gpus,
                title=f"{name} train",
                total=len(runs),
                already_done=len(runs) - len(todo),
            )
            if result.config_error:
                msg = _with_hint(f"stopped: {result.config_error}")
                self.ui.error(f"{name}: {msg}")
                return ExperimentOutcome(name, False, msg, self._final_state(storage, res, hashes))
            if result.failed:
                names = [r.name for r in runs if r.index in result.failed]
                first = next(iter(result.failed.values()))
                msg = f"run(s) {', '.join(names)} failed; first error: {first}"
                self.ui.error(f"{name}: {msg}")
                return ExperimentOutcome(name, False, msg, self._final_state(storage, res, hashes))
            self.ui.note(f"{name} train: done in {time.monotonic() - started:.1f} s")
        final = self._final_state(storage, res, hashes)
        ok = final.complete
        return ExperimentOutcome(name, ok, "" if ok else "some runs have no done.json", final)

    def _final_state(
        self, storage: Storage, res: api.RecognitionExperiment, hashes: dict[str, str]
    ) -> artifacts.ExperimentState:
        state = artifacts.experiment_state(storage, res.spec, name=res.metadata.name, run_hashes=hashes)
        try:
            from synthrec.contract.layout import ExperimentLayout

            storage.write_json(ExperimentLayout.summary, artifacts.experiment_summary(state))
        except StorageError as exc:
            self.ui.warn(f"{res.metadata.name}: could not write summary.json: {exc}")
        return state


def _with_hint(message: str | None) -> str | None:
    if message and "no space left" in message.lower():
        return message + "; free some space and run the same command again (committed shards are kept)"
    return message


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device; free some space and run the same command again"
    return exc.strerror or str(exc)


# ------------------------------------------------------------------------------------------ entry point


@dataclass
class RunRequest:
    file: str
    storage: str | None = None
    parallel: int | None = None
    only: Sequence[str] = ()
    report: bool = True
    worker_module: str = "synthrec.workers"
    grace_s: float = 30.0


def execute(request: RunRequest, ui: Any, *, prepare: Callable[[list[Resource]], None] | None = None) -> int:
    """``synthrec run``: returns the exit status (0 all done, 1 failed or bad input, 130 interrupted)."""
    try:
        resources = load_resources(request.file)
        root = storage_root(request.storage)
        resources = rehome(resources, root)
        selected = select(resources, request.only)
    except RunError as exc:
        ui.error(str(exc))
        return 1
    tiny = uses_tiny_models(selected)
    if tiny:
        ui.banner(TINY_WARNING)
    if prepare is not None:
        prepare(selected)
    runner = LocalRunner(
        selected,
        parallel=request.parallel,
        ui=ui,
        worker_module=request.worker_module,
        grace_s=request.grace_s,
        storage_root=root,
        available=[r for r in resources if r not in selected],
    )
    try:
        with ui.live():
            outcome = runner.run()
    except Interrupted:
        ui.error(
            "interrupted: the workers were stopped; every committed shard is kept. Run the same command "
            "again to continue where it stopped."
        )
        return 130
    except RunError as exc:
        ui.error(str(exc))
        return 1
    except StorageError as exc:
        ui.error(f"storage error: {exc}")
        return 1
    ui.summary(outcome, tiny=tiny)
    if not outcome.ok:
        kept = runner.keep_logs()
        ui.error(f"the run did not complete; worker logs and task files are kept in {kept}")
    if request.report:
        _report(ui, root, selected, tiny)
    if tiny:
        ui.banner(TINY_WARNING)
    return 0 if outcome.ok else 1


def _report(ui: Any, root: str | None, resources: list[Resource], tiny: bool) -> None:
    from synthrec import report

    try:
        if root is not None:
            where = report.build_report(root)
        else:
            roots = [res.spec.output.uri for res in resources]
            where = report.build_report_for(roots, out_uri=Path.cwd().joinpath("synthrec-report").as_uri())
    except (StorageError, OSError, report.ReportError) as exc:
        ui.warn(f"the report could not be written: {exc}")
        return
    ui.report(where, tiny=tiny)
