"""Worker processes run the way an Indexed Job runs its pods: up to ``parallel`` at once, each with the
environment a pod gets (``JOB_COMPLETION_INDEX``, a termination log, its share of the CPUs and GPUs),
retries per shard, a failure budget, a configuration error stopping the batch, Ctrl-C stopping all."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthrec import contract
from synthrec.local.input import Interrupted

if TYPE_CHECKING:
    from synthrec.local.executor import LocalRunner

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass
class WorkUnit:
    """One worker process to run: a shard of a stage attempt, or one experiment run."""

    stage: str
    task_path: Path
    index: int  # JOB_COMPLETION_INDEX within the attempt
    shard: int  # the shard id it produces (the run index for train)
    label: str  # what the user sees ('shard 3', 'run shots4-seed1')
    tries: int = 0


@dataclass
class BatchResult:
    succeeded: list[WorkUnit] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # shard -> why
    exhausted: set[int] = field(default_factory=set)  # failed after all retries (retryable errors)
    config_error: str | None = None


@dataclass
class _Running:
    unit: WorkUnit
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
        units: list[WorkUnit],
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
        pending: deque[WorkUnit] = deque(units)
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
                    unit = pending.popleft()
                    slot = free.pop(0)
                    running.append(self._start(unit, slot, slots[slot], devices[slot]))
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

    def _start(self, unit: WorkUnit, slot: int, cpus: list[int], gpus: str | None) -> _Running:
        runner = self.runner
        unit.tries += 1
        stem = f"{unit.stage}-{unit.shard:05d}-try{unit.tries}"
        folder = unit.task_path.parent
        log_path = folder / f"{stem}.log"
        term_path = folder / f"{stem}.termination"
        progress_path = folder / f"{unit.stage}-{unit.shard:05d}.progress.json"
        env = dict(os.environ)
        env.pop(contract.ENV_SHARD, None)  # the completion index must pick the shard, as in a Job
        env[contract.ENV_COMPLETION_INDEX] = str(unit.index)
        env[contract.ENV_TERMINATION_LOG] = str(term_path)
        env[contract.ENV_PROGRESS_FILE] = str(progress_path)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        for name in THREAD_VARIABLES:
            env[name] = str(len(cpus))
        if gpus is not None:  # the worker's own GPUs, as a pod gets its nvidia.com/gpu (none: hidden)
            env["CUDA_VISIBLE_DEVICES"] = gpus
        cmd = [sys.executable, "-m", runner.worker_module, unit.stage, "--task", str(unit.task_path)]
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
        bar = runner.ui.add_shard(f"{unit.stage} {unit.label}")
        return _Running(unit, proc, slot, log_path, term_path, progress_path, time.monotonic(), bar)

    def _finish(
        self, job: _Running, code: int, result: BatchResult, pending: deque[WorkUnit], retries: int
    ) -> str | None:
        """Record a finished process; returns a reason to stop the whole batch (a config error)."""
        unit = job.unit
        summary = contract.parse_summary(_read(job.term_path))
        said = summary.message if isinstance(summary, contract.FailureSummary) else ""
        message = said or _tail(job.log_path)
        where = f"{unit.stage} {unit.label}"
        if code == contract.EXIT_OK:
            result.succeeded.append(unit)
            return None
        if code == contract.EXIT_CONFIG_ERROR:
            result.config_error = f"{where}: {message}"
            result.failed[unit.shard] = message
            return result.config_error
        if code == contract.EXIT_DATA_ERROR:
            self.runner.ui.warn(f"{where} failed (data error, not retried): {message}  [log: {job.log_path}]")
            result.failed[unit.shard] = message
            return None
        if self.runner.stopping:
            return None
        reason = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
        if unit.tries <= retries:
            self.runner.ui.warn(
                f"{where} failed ({reason}; try {unit.tries} of {retries + 1}), retrying: {message}"
            )
            pending.append(unit)
            return None
        self.runner.ui.warn(
            f"{where} failed after {unit.tries} tries ({reason}): {message}  [log: {job.log_path}]"
        )
        result.failed[unit.shard] = message
        result.exhausted.add(unit.shard)
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
