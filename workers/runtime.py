"""What every worker stage shares: task loading, shard selection, exit codes, the termination summary,
progress reporting and the mapping of failures onto the contract (``synthrec.contract``).

A stage is a plain function ``run(ctx: StageContext) -> Summary`` returning its typed termination summary
(``synthrec.contract.summaries``: counts, URIs). It raises ConfigError / DataError / RetryableError for
failures the operator must treat differently; a storage error carries its own class
(synthrec.storage.errors: a missing input fails the shard, a full disk is retried, refused credentials
fail the Job); anything unexpected is logged with its traceback and treated as retryable.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrec import contract
from synthrec.contract.summaries import FailureSummary, Summary, summary_line
from synthrec.plan.tasks import load_task
from synthrec.storage import RecordingStorage, Storage, StorageError, open_storage
from synthrec.tiny import TINY_SCHEME, TinyModels, build_tiny_models, default_tiny_dir, resolve_uri
from synthrec.tiny.layout import references_toy_world

log = logging.getLogger("synthrec.workers")


class WorkerError(Exception):
    """A failure with a meaning for the scheduler; the message is written for the user."""

    exit_code = contract.EXIT_RETRYABLE
    kind = "retryable"


class RetryableError(WorkerError):
    pass


class ConfigError(WorkerError):
    """The task cannot succeed anywhere (bad model reference, unusable spec): fail the whole Job."""

    exit_code = contract.EXIT_CONFIG_ERROR
    kind = "config"


class DataError(WorkerError):
    """This shard's input is bad (corrupt images, prompts from another spec): fail this index only."""

    exit_code = contract.EXIT_DATA_ERROR
    kind = "data"


class Terminated(RetryableError):
    """SIGTERM (pod eviction, Ctrl-C in local mode): stop cleanly, nothing half-committed."""


_BY_FAILURE: dict[str, type[WorkerError]] = {
    "retryable": RetryableError,
    "data": DataError,
    "config": ConfigError,
}


def worker_error(failure: str, message: str) -> WorkerError:
    """The WorkerError of a failure class (``retryable``, ``data``, ``config``; unknown: retryable)."""
    return _BY_FAILURE.get(failure, RetryableError)(message)


@dataclass
class Progress:
    """In-flight progress: a small JSON file (for the local mode's bars) and a log line now and then."""

    stage: str
    shard: int | None
    total: int = 0
    done: int = 0
    path: Path | None = None
    log_every_s: float = 10.0
    _last_log: float = field(default=0.0, repr=False)
    _last_write: float = field(default=0.0, repr=False)

    def start(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._write(force=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._write()

    def finish(self) -> None:
        self.done = max(self.done, self.total)
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.path is not None and (force or now - self._last_write >= 0.5):
            self._last_write = now
            payload = {
                "stage": self.stage,
                "shard": self.shard,
                "done": self.done,
                "total": self.total,
                "time": time.time(),
            }
            tmp = self.path.with_name(self.path.name + ".tmp")
            try:
                tmp.write_text(json.dumps(payload))
                os.replace(tmp, self.path)
            except OSError:
                pass  # progress is best effort; never fail a shard over it
        if force or now - self._last_log >= self.log_every_s:
            self._last_log = now
            log.info("%s shard %s: %d/%d", self.stage, self.shard, self.done, self.total)


@dataclass
class StageContext:
    task: Any  # one of synthrec.plan.tasks' task models
    shard: int  # the shard id this process produces (0 for single-pod stages)
    storage: Storage  # the resource's output root
    progress: Progress

    @property
    def stage(self) -> str:
        return str(self.task.stage)

    def open(self, uri: str) -> Storage:
        """Open another location (real data, a referenced dataset) with the task's storage settings."""
        return open_location(uri, endpoint=self.task.output.endpoint, region=self.task.output.region)


def open_location(uri: str, *, endpoint: str | None = None, region: str | None = None) -> Storage:
    """Open a folder a task reads; ``tiny://real/...`` is the built demo data (see ``tiny_models``)."""
    if references_toy_world(uri):
        uri = resolve_uri(uri, world=toy_world().root)
    elif uri.startswith(TINY_SCHEME):
        uri = resolve_uri(uri, tiny_models().root)
    return open_storage(uri, endpoint=endpoint, region=region)


_TINY_BUILT: dict[Path, TinyModels] = {}


def tiny_models() -> TinyModels:
    """The tiny models (random weights) behind tiny:// references: the one place a worker resolves them,
    built offline on first use, once per process and folder; tiny:// then maps to their file:// folders."""
    root = default_tiny_dir()
    if root not in _TINY_BUILT:
        _TINY_BUILT[root] = build_tiny_models(root)
    return _TINY_BUILT[root]


_TOY_WORLDS: dict[Path, Any] = {}


def toy_world() -> Any:
    """The toy world (trained tiny models, synthrec.toyworld) behind tiny://world/ references: built on first
    use (minutes; ``synthrec run`` builds it first, with a progress bar), once per process and folder."""
    from synthrec.toyworld.builder import build_toy_world, default_root

    root = default_root()
    if root not in _TOY_WORLDS:
        _TOY_WORLDS[root] = build_toy_world(root)
    return _TOY_WORLDS[root]


def select_device() -> str:
    """SYNTHREC_DEVICE if set, else cuda when available, else cpu."""
    forced = os.environ.get(contract.ENV_DEVICE)
    if forced:
        return forced
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_shard(task: Any, explicit: int | None) -> int:
    """The shard id to produce: --shard, else $SYNTHREC_SHARD, else the Job completion index mapped through
    the task's shard map, else 0."""
    if explicit is not None:
        return explicit
    if os.environ.get(contract.ENV_SHARD):
        return int(os.environ[contract.ENV_SHARD])
    index = int(os.environ.get(contract.ENV_COMPLETION_INDEX, "0"))
    return task.shard_for_index(index)


def spec_document(task: Any) -> dict[str, Any]:
    """What spec.json at a resource's output root holds: the resolved spec and its hashes, so the artifacts
    alone say what they are (synthrec status, synthrec report, a later run with the same storage)."""
    from synthrec import __version__, plan

    doc: dict[str, Any] = {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": task.resource.kind,
        "metadata": {"name": task.resource.name, "namespace": task.resource.namespace},
        "synthrec": __version__,
    }
    if task.stage in ("train", "pretrain", "transfer"):
        spec = task.experiment
        doc["spec"] = spec.wire()
        doc["specHash"] = plan.experiment_hash(spec)
        doc["runs"] = [r.name for r in plan.runs_of(spec)]
    else:
        doc["spec"] = task.dataset.wire()
        doc["hashes"] = dict(task.hashes)
        doc["specHash"] = task.hashes["reduce"]
    return doc


def write_spec_json(task: Any, storage: Storage) -> None:
    from synthrec.contract.layout import DatasetLayout

    doc = spec_document(task)
    key = DatasetLayout.spec  # same key for experiments (ExperimentLayout.spec)
    try:
        if storage.exists(key) and storage.read_json(key) == doc:
            return
        storage.write_json(key, doc)
    except StorageError as exc:  # descriptive only: never fail a stage over it
        log.warning("could not write %s: %s", storage.url(key), exc)


def recording(storage: Storage, task: Any, stage: str, shard: int | None) -> Storage:
    """``storage`` with every key written recorded in this process's ledger (synthrec.contract.written),
    for a resource with a uid (every one on a cluster): deleting its artifacts then deletes exactly
    those. Local runs (no uid) write no ledger."""
    from synthrec.contract.layout import written_keys
    from synthrec.contract.written import Writer, WrittenKeys

    ref = task.resource
    if not ref.uid:
        return storage
    writer = Writer(kind=ref.kind, name=ref.name, namespace=ref.namespace, uid=ref.uid)

    def render(keys: list[str]) -> bytes:
        return WrittenKeys(resource=writer, stage=stage, shard=shard, keys=keys).document()

    return RecordingStorage(storage, written_keys(stage, shard, uuid.uuid4().hex[:12]), render)


def write_termination_log(summary: Summary) -> None:
    path = os.environ.get(contract.ENV_TERMINATION_LOG, contract.DEFAULT_TERMINATION_LOG)
    try:
        Path(path).write_text(summary_line(summary) + "\n")
    except OSError as exc:  # e.g. /dev/termination-log outside a pod
        log.debug("no termination log at %s: %s", path, exc)


def _install_sigterm() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated("received SIGTERM; stopping before committing anything else")

    signal.signal(signal.SIGTERM, handler)


def run_stage(stage: str, fn: Callable[[StageContext], Summary], task_path: str, shard: int | None) -> int:
    """Run one stage function under the worker contract; returns the process exit code."""
    _install_sigterm()
    shard_id: int | None = None
    started = time.monotonic()
    try:
        try:
            task = load_task(task_path)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if task.stage != stage:
            raise ConfigError(f"task file {task_path} is for stage {task.stage!r}, not {stage!r}")
        try:
            shard_id = resolve_shard(task, shard)
        except (IndexError, ValueError) as exc:
            raise ConfigError(f"cannot pick a shard: {exc}") from None
        storage = open_storage(task.output.uri, endpoint=task.output.endpoint, region=task.output.region)
        if stage != "cleanup":
            storage = recording(storage, task, stage, shard_id)
        progress_path = os.environ.get(contract.ENV_PROGRESS_FILE)
        progress = Progress(stage, shard_id, path=Path(progress_path) if progress_path else None)
        ctx = StageContext(task=task, shard=shard_id, storage=storage, progress=progress)
        if stage in ("prompts", "train"):  # the first stage of a resource describes it at its root
            write_spec_json(task, storage)
        result = fn(ctx)
        progress.finish()
        summary = result.model_copy(
            update={"shard": shard_id, "ok": True, "seconds": round(time.monotonic() - started, 2)}
        )
        write_termination_log(summary)
        log.info("%s shard %s done: %s", stage, shard_id, summary_line(summary))
        return contract.EXIT_OK
    except (Exception, KeyboardInterrupt) as exc:
        kind, message, code = classify_failure(exc, stage)
        return _fail(stage, shard_id, kind, message, code)


def classify_failure(exc: BaseException, stage: str) -> tuple[str, str, int]:
    """(kind, message, exit code) of a stage's failure under the contract; an unexpected exception is
    logged with its traceback and treated as retryable (a bug or an unforeseen environment problem)."""
    if isinstance(exc, WorkerError):
        return exc.kind, str(exc), exc.exit_code
    if isinstance(exc, StorageError):  # each class says what kind of failure it is (synthrec.storage.errors)
        error = worker_error(exc.failure, str(exc))
        return error.kind, str(error), error.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "retryable", "interrupted", contract.EXIT_RETRYABLE
    log.error("unexpected error in %s:\n%s", stage, "".join(traceback.format_exception(exc)))
    return "retryable", f"{type(exc).__name__}: {exc}", contract.EXIT_RETRYABLE


def _fail(stage: str, shard: int | None, kind: str, message: str, code: int) -> int:
    write_termination_log(FailureSummary(stage=stage, shard=shard, error=kind, message=message))  # type: ignore[arg-type]
    print(f"synthrec {stage}: {kind} error: {message}", file=sys.stderr)
    return code
