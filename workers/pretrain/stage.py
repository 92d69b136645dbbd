"""The entry of the distributed stages (``pretrain``, ``transfer``): ``python -m synthrec.workers STAGE
--task FILE`` as every other stage, with the same exit codes and termination summary.

Started by a user, the local runner or a pod, the process is the launcher (synthrec.workers.pretrain.
distributed): a finished run answers at once from its ``done.json``; one process on one node runs the
rank in place; anything larger runs torchrun, forwards SIGTERM to it, and maps the ranks' result files
onto the contract (configuration error 3 > data error 42 > retryable 1). Under torchrun the process is a
rank: it joins the process group, runs the stage function, and SIGTERM/SIGINT only set ``stop``, which
the training loop turns, on the same step on every rank, into a checkpoint and a clean exit (an exception
raised inside a collective would hang the other ranks).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthrec import contract
from synthrec.contract.summaries import FailureSummary, Summary, parse_summary, summary_line
from synthrec.storage import Storage, open_storage
from synthrec.workers.pretrain import distributed
from synthrec.workers.runtime import (
    ConfigError,
    Progress,
    classify_failure,
    open_location,
    recording,
    write_spec_json,
    write_termination_log,
)

log = logging.getLogger(__name__)

STAGE_MODULES = {
    "pretrain": "synthrec.workers.pretrain.pretrain",
    "transfer": "synthrec.workers.pretrain.transfer",
}
_PRIORITY = {contract.EXIT_CONFIG_ERROR: 3, contract.EXIT_DATA_ERROR: 2, contract.EXIT_RETRYABLE: 1}


@dataclass
class RankContext:
    task: Any  # PretrainTask | TransferTask
    rank: distributed.Rank
    storage: Storage  # the experiment's output root
    progress: Progress
    stop: threading.Event  # set by SIGTERM / SIGINT

    def open(self, uri: str, endpoint: str | None = None, region: str | None = None) -> Storage:
        """Another location (real data, VOC, a pre-training folder; tiny:// demo data resolved)."""
        return open_location(
            uri, endpoint=endpoint or self.task.output.endpoint, region=region or self.task.output.region
        )


def load_task(path: str, stage: str) -> Any:
    """The task file of a distributed stage; ConfigError naming the file for anything invalid."""
    from synthrec.plan.tasks import load_task as read_task

    try:
        task = read_task(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if task.stage != stage:
        raise ConfigError(f"task file {path} is for stage {task.stage!r}, not {stage!r}")
    return task


def main(stage: str, task_path: str) -> int:
    if distributed.under_torchrun():
        return run_rank(stage, task_path)
    return launch(stage, task_path)


# ------------------------------------------------------------------------------------------- launcher


def launch(stage: str, task_path: str) -> int:
    started = time.monotonic()
    try:
        task = load_task(task_path, stage)
        module = importlib.import_module(STAGE_MODULES[stage])
        storage = open_storage(task.output.uri, endpoint=task.output.endpoint, region=task.output.region)
        storage = recording(storage, task, stage, None)  # what onDelete: Delete may delete
        if task.experiment is not None:  # the experiment's root says what it is (synthrec status, report)
            write_spec_json(task, storage)
        done = module.finished(task, storage)
        if done is not None:
            log.info("%s %s is already committed for this spec; nothing to do", stage, task.run)
            return _succeed(done.model_copy(update={"skipped": True}))
        gpus, cpus = _visible_gpus(), os.cpu_count() or 1
        nproc = task.distributed.nproc_per_node or max(1, gpus)
        if task.distributed.nnodes == 1 and nproc == 1:
            return run_rank(stage, task_path)
        with tempfile.TemporaryDirectory(prefix="synthrec-ranks-") as results:
            cmd = distributed.launch_for_task(
                task, task_path, python=sys.executable, gpus=gpus, cpus=cpus, results_dir=results
            )
            log.info("starting %s", " ".join(cmd.argv))
            code = _run_forwarding_signals(cmd)
            ranks = distributed.read_rank_results(results)
    except (Exception, KeyboardInterrupt) as exc:
        kind, message, code = classify_failure(exc, stage)
        return _failed(FailureSummary(stage=stage, error=kind, message=message), code)  # type: ignore[arg-type]
    seconds = round(time.monotonic() - started, 2)
    summaries = {n: parse_summary(json.dumps(r.get("summary"))) for n, r in ranks.items()}
    # this node's ranks (rank 0 only on the node that got it): its lowest rank speaks for the node
    first = summaries[min(summaries)] if summaries else None
    if code == 0 and first is not None and all(r.get("ok") for r in ranks.values()):
        return _succeed(first.model_copy(update={"seconds": seconds}))
    failures = [(r["code"], summaries[n]) for n, r in ranks.items() if not r.get("ok")]
    if failures:
        worst_code, worst = max(failures, key=lambda f: _PRIORITY.get(f[0], 0))
        if worst is not None:
            return _failed(worst.model_copy(update={"seconds": seconds}), worst_code)
    message = (
        f"torchrun exited with code {code} and no process reported a result (killed, out of memory, or the "
        "rendezvous failed); see the log above"
    )
    failure = FailureSummary(stage=stage, error="retryable", message=message, seconds=seconds)
    return _failed(failure, contract.EXIT_RETRYABLE)


def _visible_gpus() -> int:
    if os.environ.get(contract.ENV_DEVICE, "").startswith("cpu"):
        return 0
    import torch

    return torch.cuda.device_count()


def _run_forwarding_signals(cmd: distributed.Launch) -> int:
    """Run torchrun; SIGTERM/SIGINT received here go to it (it stops the ranks and waits for them)."""
    proc = subprocess.Popen(cmd.argv, env={**os.environ, **cmd.env})
    previous = {}

    def forward(signum: int, frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, forward)
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _succeed(summary: Summary) -> int:
    write_termination_log(summary)
    log.info("%s done: %s", summary.stage, summary_line(summary))
    return contract.EXIT_OK


def _failed(summary: Summary, code: int) -> int:
    write_termination_log(summary)
    if isinstance(summary, FailureSummary):
        print(f"synthrec {summary.stage}: {summary.error} error: {summary.message}", file=sys.stderr)
    return code


def run_rank(stage: str, task_path: str) -> int:
    """One process of the stage (rank 0 of 1 when not under torchrun)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    started = time.monotonic()
    rank: distributed.Rank | None = None
    summary: Summary
    try:
        task = load_task(task_path, stage)
        module = importlib.import_module(STAGE_MODULES[stage])
        rank = distributed.init_rank(task.distributed.backend, os.environ.get(contract.ENV_DEVICE))
        storage = open_storage(task.output.uri, endpoint=task.output.endpoint, region=task.output.region)
        storage = recording(storage, task, stage, None)  # each rank keeps its own ledger
        progress_file = os.environ.get(contract.ENV_PROGRESS_FILE) if rank.is_main else None
        progress = Progress(stage, 0, path=Path(progress_file) if progress_file else None)
        result = module.run(RankContext(task, rank, storage, progress, stop))
        progress.finish()
        summary = result.model_copy(update={"ok": True, "seconds": round(time.monotonic() - started, 2)})
        code = contract.EXIT_OK
    except (Exception, KeyboardInterrupt) as exc:
        kind, message, code = classify_failure(exc, stage)
        summary = FailureSummary(stage=stage, error=kind, message=message)  # type: ignore[arg-type]
    finally:
        if rank is not None:
            rank.close()
    number = rank.rank if rank is not None else int(os.environ.get("RANK", "0"))
    result_doc = {"ok": summary.ok, "code": code, "summary": summary.model_dump(mode="json")}
    distributed.write_rank_result(number, result_doc)
    if os.environ.get(distributed.ENV_RESULTS) is None and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        return _succeed(summary) if code == 0 else _failed(summary, code)
    if isinstance(summary, FailureSummary):
        print(f"synthrec {stage} rank {number}: {summary.error} error: {summary.message}", file=sys.stderr)
    return code
