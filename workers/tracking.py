"""Experiment tracking of a train run: what researchers compare runs in.

- TensorBoard, always: the training scalars and the final metrics, written with the tensorboard package's
  own ``EventFileWriter`` to ``runs/<run>/tensorboard/`` next to the run's other artifacts, so any
  TensorBoard opens the experiment's ``runs/`` folder as a log dir, on s3:// or file://. The run's
  hyper-parameters go in as a session of TensorBoard's HParams dashboard, so a shots x seeds matrix is a
  table there.
- MLflow, when ``MLFLOW_TRACKING_URI`` is set (MLflow's own variables apply: ``MLFLOW_EXPERIMENT_NAME``,
  ``MLFLOW_TRACKING_TOKEN`` ...): one MLflow run per synthrec run, in the experiment named after the
  RecognitionExperiment unless MLFLOW_EXPERIMENT_NAME/ID says otherwise.
- Weights & Biases, when ``WANDB_API_KEY``, ``WANDB_PROJECT`` or ``WANDB_MODE`` (online/offline) is set and
  neither ``WANDB_MODE=disabled`` nor ``WANDB_DISABLED`` is: one W&B run per synthrec run, grouped by the
  RecognitionExperiment, in ``WANDB_PROJECT`` (default ``synthrec``).

MLflow and W&B are optional dependencies (``pip install 'synthrec[tracking]'``, in the image), imported
only when configured. Nothing here fails a run: a backend that cannot log (not installed, unreachable,
refused) is skipped with a warning, and the run's own artifacts stay the record.

Logging happens once, after training, from the run's records (``TuneResult``: every step's losses and
learning rate, every epoch's loss and validation top-1), all on the global step axis; the final metrics
at the step after the last. A retried run (the pod died before ``done.json``) overwrites its TensorBoard
file, resumes the same W&B run id and skips an MLflow run that already finished, so it logs nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrec.contract.layout import ExperimentLayout
from synthrec.storage import Storage

log = logging.getLogger(__name__)

EVENTS_FILE = "events.out.tfevents.train"  # one fixed name: a retry replaces it instead of adding another
DEFAULT_WANDB_PROJECT = "synthrec"
# The final metrics of metrics.json and their scalar tags.
FINAL_METRICS = {
    "top1": "test/top1",
    "zero_shot_top1": "test/zero_shot_top1",
    "validation_top1": "validation/top1",
    "top1_last": "test/top1_last",
    "top1_best_validation": "test/top1_best_validation",
}
# Fields of metrics.json that describe the run (its hyper-parameters), flattened with dots.
PARAM_FIELDS = (
    "run",
    "variant",
    "method",
    "shots",
    "seed",
    "lr",
    "epochs",
    "selection",
    "backbone",
    "classifier_tuning",
    "settings",
)
# MLflow's default is 7 retries of 120 s each: a tracking server that is down would hold the run for many
# minutes. These bounds apply only where the user has not set them.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_LOG_BATCH = 1000  # metrics per MLflow log_batch request (its limit)
MLFLOW_PARAM_LIMIT = 6000  # characters of a parameter value MLflow accepts


@dataclass
class RunRecord:
    """What every backend logs about one run."""

    name: str  # the run (shots16-seed1-ct-syn)
    experiment: str  # the RecognitionExperiment
    namespace: str | None
    key: str  # stable across retries of this run at this output: W&B run id, MLflow tag
    params: dict[str, Any]  # flat: str -> str | int | float | bool
    config: dict[str, Any]  # the same, nested (W&B config)
    rows: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (global step, tag -> value)
    links: dict[str, str] = field(default_factory=dict)  # artifact URIs


def log_run(task: Any, storage: Storage, metrics: Mapping[str, Any], result: Any) -> dict[str, Any]:
    """Log one finished train run everywhere configured; returns where it went (for metrics.json), e.g.
    {"tensorboard": "s3://.../runs/<run>/tensorboard/", "mlflow": {...}, "wandb": {...}}. Never raises."""
    layout = ExperimentLayout(storage.uri)
    record = run_record(task, storage.uri, metrics, result)
    record.links = {
        "artifacts": layout.url(layout.run(record.name, "")),
        "metrics": layout.url(layout.run_metrics(record.name)),
        "tensorboard": layout.url(layout.run_tensorboard(record.name)),
    }
    where: dict[str, Any] = {}
    backends = [("tensorboard", lambda: write_tensorboard(record, storage, layout))]
    if os.environ.get("MLFLOW_TRACKING_URI"):
        backends.append(("mlflow", lambda: log_mlflow(record)))
    if wandb_configured(os.environ):
        backends.append(("wandb", lambda: log_wandb(record)))
    for name, backend in backends:
        try:
            where[name] = backend()
        except ImportError as e:
            log.warning(
                "run %s: %s is configured but cannot be imported (%s); install it with "
                "pip install 'synthrec[tracking]'. The run goes on without it.",
                record.name,
                name,
                e,
            )
        except Exception as e:  # a tracking failure never fails the run
            log.warning(
                "run %s: logging to %s failed, the run goes on without it: %s: %s",
                record.name,
                name,
                type(e).__name__,
                _first_line(e),
            )
    return where


def run_record(task: Any, root: str, metrics: Mapping[str, Any], result: Any) -> RunRecord:
    """The backend-neutral record of a run: parameters from metrics.json, scalars from the TuneResult."""
    name = str(metrics["run"])
    config = {k: metrics[k] for k in PARAM_FIELDS if metrics.get(k) is not None}
    config["spec_hash"] = task.spec_hash
    config["datasets"] = [{"name": d["name"], "digest": d["digest"]} for d in metrics.get("datasets", [])]
    config["counts"] = dict(metrics.get("counts", {}))
    key = hashlib.sha256(f"{root}\n{name}\n{task.spec_hash}".encode()).hexdigest()[:16]
    return RunRecord(
        name=name,
        experiment=task.resource.name,
        namespace=task.resource.namespace,
        key=key,
        params=dict(_flatten(config)),
        config=config,
        rows=scalar_rows(metrics, result),
    )


def scalar_rows(metrics: Mapping[str, Any], result: Any) -> list[tuple[int, dict[str, float]]]:
    """(global step, scalars) rows: each step's losses and learning rate, each epoch's mean loss and
    validation top-1 at its last step, and the final metrics at the step after the last."""
    rows: list[tuple[int, dict[str, float]]] = []
    steps = list(result.steps) if result is not None else []
    for step, s in enumerate(steps):
        row = {"train/loss": s["loss"], "train/lr": s["lr"]}
        if "syn" in s:
            row["train/loss_synthetic"] = s["syn"]
        if "real" in s:
            row["train/loss_real"] = s["real"]
        rows.append((step, row))
    if result is not None:
        for end, epoch in zip(_epoch_ends(result.phases), result.epochs, strict=False):
            extra = {"epoch/loss": epoch["loss"]}
            if epoch.get("val_top1") is not None:
                extra["epoch/val_top1"] = epoch["val_top1"]
            if 0 <= end < len(rows):
                rows[end][1].update(extra)
    final = {tag: float(metrics[k]) for k, tag in FINAL_METRICS.items() if metrics.get(k) is not None}
    rows.append((len(steps), final))
    return rows


def _epoch_ends(phases: list[dict[str, Any]]) -> Iterator[int]:
    """The global step index of each epoch's last step (phases run one after another)."""
    step = 0
    for phase in phases:
        for _ in range(phase["epochs"]):
            step += phase["steps_per_epoch"]
            yield step - 1


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif value is None or isinstance(value, bool | int | float | str):
        yield prefix, "" if value is None else value
    else:  # lists: one JSON string, so every backend shows the same thing
        yield prefix, json.dumps(value, sort_keys=True)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


# ------------------------------------------------------------------------------------- TensorBoard


def write_tensorboard(record: RunRecord, storage: Storage, layout: ExperimentLayout) -> str:
    """Write the event file locally with TensorBoard's writer, then store it under the run's folder."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import summary_v2 as hparams
    from tensorboard.plugins.scalar import summary_v2 as scalar
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    now = time.time()
    with tempfile.TemporaryDirectory(prefix="synthrec-tb-") as tmp:
        writer = EventFileWriter(tmp)
        try:
            session = hparams.hparams_pb(record.params, trial_id=record.name, start_time_secs=now)
            writer.add_event(event_pb2.Event(wall_time=now, step=0, summary=session))
            for step, row in record.rows:
                for tag, value in row.items():
                    summary = scalar.scalar_pb(tag, value)
                    writer.add_event(event_pb2.Event(wall_time=now, step=step, summary=summary))
        finally:
            writer.close()
        (path,) = Path(tmp).iterdir()
        key = layout.run_tensorboard(record.name) + EVENTS_FILE
        storage.write_bytes(key, path.read_bytes())
    return layout.url(layout.run_tensorboard(record.name))


# ------------------------------------------------------------------------------------------ MLflow


def log_mlflow(record: RunRecord) -> dict[str, Any]:
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if not experiment_id:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or record.experiment
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                experiment_id = client.create_experiment(name)
            except MlflowException:  # another run of the experiment created it first
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
        experiment_id = experiment_id or found.experiment_id
    done = client.search_runs(
        [experiment_id], f"tags.`synthrec.key` = '{record.key}' and attributes.status = 'FINISHED'"
    )
    if done:
        run_id = done[0].info.run_id
        log.info("run %s: already in MLflow as run %s; not logged again", record.name, run_id)
        return {"tracking_uri": mlflow.get_tracking_uri(), "experiment_id": experiment_id, "run_id": run_id}
    tags = {
        "synthrec.key": record.key,
        "synthrec.experiment": record.experiment,
        **({"synthrec.namespace": record.namespace} if record.namespace else {}),
        **{f"synthrec.{k}": v for k, v in record.links.items()},
    }
    run = client.create_run(experiment_id, run_name=record.name, tags=tags)
    run_id = run.info.run_id
    stamp = int(time.time() * 1000)
    params = [Param(k, str(v)[:MLFLOW_PARAM_LIMIT]) for k, v in record.params.items()]
    for i in range(0, len(params), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=params[i : i + 100])
    metrics = [Metric(tag, value, stamp, step) for step, row in record.rows for tag, value in row.items()]
    for i in range(0, len(metrics), _LOG_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _LOG_BATCH])
    client.set_terminated(run_id)
    return {"tracking_uri": mlflow.get_tracking_uri(), "experiment_id": experiment_id, "run_id": run_id}


# ---------------------------------------------------------------------------------- Weights & Biases


def wandb_configured(env: Mapping[str, str]) -> bool:
    """W&B's own switches: WANDB_MODE=disabled or WANDB_DISABLED turn it off; a key, a project or an
    explicit online/offline mode turn it on."""
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled" or env.get("WANDB_DISABLED", "").strip().lower() in {"1", "true", "yes"}:
        return False
    return bool(env.get("WANDB_API_KEY") or env.get("WANDB_PROJECT") or mode in {"online", "offline"})


def log_wandb(record: RunRecord) -> dict[str, Any]:
    import wandb

    run = wandb.init(
        project=None if os.environ.get("WANDB_PROJECT") else DEFAULT_WANDB_PROJECT,
        group=None if os.environ.get("WANDB_RUN_GROUP") else record.experiment,
        job_type="train",
        name=record.name,
        id=record.key,
        resume="allow",
        config={**record.config, "synthrec": {"experiment": record.experiment, **record.links}},
        settings=wandb.Settings(console="off"),  # the worker's own logs stay as they are
    )
    try:
        for step, row in record.rows:
            run.log(row, step=step)
        info = {"project": run.project, "id": run.id, "url": run.url}
    finally:
        run.finish()
    return info
