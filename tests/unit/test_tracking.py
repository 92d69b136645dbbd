"""Experiment tracking of a train run (synthrec.workers.tracking), read back with each tool's own reader:
TensorBoard's EventAccumulator opens the event file next to the run's artifacts (scalars and the HParams
session); MLflow's client finds the run in a file:// store; W&B's offline run log holds the run, its
config and its history. A retry logs nothing twice, and no tracking failure fails a run."""

from __future__ import annotations

import json
import logging
import struct
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from synthrec.contract.layout import ExperimentLayout
from synthrec.storage import open_storage
from synthrec.workers import tracking
from synthrec.workers.tuning import TuneResult

RUN = "shots2-seed1-ct-syn"
TASK = SimpleNamespace(
    spec_hash="a" * 64, resource=SimpleNamespace(name="eurosat-fewshot", namespace="team-a")
)
# Two phases of 2 epochs x 3 steps (12 steps), as synthetic-then-real records them.
PHASES = [
    {"name": "synthetic", "epochs": 2, "steps": 6, "steps_per_epoch": 3},
    {"name": "real", "epochs": 2, "steps": 6, "steps_per_epoch": 3},
]
TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "WANDB_API_KEY")
WANDB_ENV = ("WANDB_PROJECT", "WANDB_MODE", "WANDB_DISABLED", "WANDB_RUN_GROUP", "WANDB_DIR")


def result() -> TuneResult:
    steps = []
    for i in range(12):
        source = "syn" if i < 6 else "real"
        steps.append({"lr": 1e-3 * (12 - i) / 12, source: 2.0 - i / 10, "loss": 2.0 - i / 10})
    epochs = [
        {
            "epoch": e + 1,
            "phase": PHASES[e // 2]["name"],
            "loss": 1.9 - e / 3,
            "lr": 1e-4,
            "val_top1": 50.0 + e,
        }
        for e in range(4)
    ]
    return TuneResult(phases=PHASES, epochs=epochs, steps=steps, selected_epoch=4)


def metrics() -> dict[str, Any]:
    return {
        "run": RUN,
        "variant": "ct-syn",
        "shots": 2,
        "seed": 1,
        "lr": 1e-3,
        "epochs": 2,
        "selection": "last",
        "top1": 62.5,
        "zero_shot_top1": 41.25,
        "validation_top1": None,
        "backbone": {"model": "RN50", "pretrained": "openai"},
        "classifier_tuning": {"mixing": "synthetic-then-real", "headInitTemplates": ["a photo of a {}."]},
        "datasets": [{"name": "ds", "uri": "s3://b/ds/", "digest": "d" * 64, "kept": 12}],
        "counts": {"synthetic": 12, "real_train": 8},
    }


@pytest.fixture(autouse=True)
def no_tracking_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from no tracking configuration, whatever the developer's shell has."""
    for name in TRACKING_ENV + WANDB_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def out(tmp_path: Path) -> Any:
    return open_storage((tmp_path / "exp").as_uri() + "/")


def tensorboard(logdir: str) -> Any:
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def scalars(acc: Any, tag: str) -> list[tuple[int, float]]:
    from tensorboard.util import tensor_util

    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


# ------------------------------------------------------------------------------------- TensorBoard


def test_tensorboard_reads_the_training_scalars_and_final_metrics_next_to_the_run(out: Any) -> None:
    where = tracking.log_run(TASK, out, metrics(), result())
    logdir = out.uri + f"runs/{RUN}/tensorboard"
    assert where == {"tensorboard": logdir}
    acc = tensorboard(logdir.removeprefix("file://"))
    loss = scalars(acc, "train/loss")
    assert [s for s, _ in loss] == list(range(12))
    assert loss[0][1] == pytest.approx(2.0) and loss[-1][1] == pytest.approx(0.9)
    assert [s for s, _ in scalars(acc, "train/loss_synthetic")] == list(range(6))
    assert [s for s, _ in scalars(acc, "train/loss_real")] == list(range(6, 12))
    assert len(scalars(acc, "train/lr")) == 12
    # Each epoch at its last step, across both phases.
    assert scalars(acc, "epoch/val_top1") == [(2, 50.0), (5, 51.0), (8, 52.0), (11, 53.0)]
    assert scalars(acc, "test/top1") == [(12, 62.5)]
    assert scalars(acc, "test/zero_shot_top1") == [(12, 41.25)]
    assert "validation/top1" not in acc.Tags()["tensors"]  # no validation split: nothing made up


def test_the_run_is_a_session_of_tensorboards_hparams_dashboard(out: Any) -> None:
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    tracking.log_run(TASK, out, metrics(), result())
    acc = tensorboard(str(Path(out.uri.removeprefix("file://")) / "runs" / RUN / "tensorboard"))
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    session = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert session.group_name == RUN
    hparams = session.hparams
    assert hparams["shots"].number_value == 2 and hparams["variant"].string_value == "ct-syn"
    assert hparams["backbone.model"].string_value == "RN50"
    assert hparams["classifier_tuning.mixing"].string_value == "synthetic-then-real"
    assert json.loads(hparams["classifier_tuning.headInitTemplates"].string_value) == ["a photo of a {}."]
    assert hparams["spec_hash"].string_value == TASK.spec_hash


def test_a_retried_run_replaces_its_event_file(out: Any) -> None:
    tracking.log_run(TASK, out, metrics(), result())
    tracking.log_run(TASK, out, metrics(), result())
    files = [o.key for o in out.list(f"runs/{RUN}/tensorboard/")]
    assert files == [f"runs/{RUN}/tensorboard/{tracking.EVENTS_FILE}"]
    acc = tensorboard(str(Path(out.uri.removeprefix("file://")) / "runs" / RUN / "tensorboard"))
    assert len(scalars(acc, "train/loss")) == 12


def test_an_untrained_run_logs_its_zero_shot_result_at_step_zero(out: Any) -> None:
    zero = {**metrics(), "top1": 41.25}
    tracking.log_run(TASK, out, zero, None)
    acc = tensorboard(str(Path(out.uri.removeprefix("file://")) / "runs" / RUN / "tensorboard"))
    assert scalars(acc, "test/top1") == [(0, 41.25)] and "train/loss" not in acc.Tags()["tensors"]


def test_the_run_folder_is_where_the_layout_says(out: Any) -> None:
    assert ExperimentLayout(out.uri).run_tensorboard(RUN) == f"runs/{RUN}/tensorboard/"


# ------------------------------------------------------------------------------------------ MLflow


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pytest.importorskip("mlflow", reason="mlflow-skinny (synthrec[tracking], part of the dev extra)")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this
    return uri


def test_mlflow_gets_one_run_with_params_metric_history_and_artifact_links(
    out: Any, mlflow_store: str
) -> None:
    import mlflow

    where = tracking.log_run(TASK, out, metrics(), result())
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    experiment = client.get_experiment_by_name("eurosat-fewshot")
    (run,) = client.search_runs([experiment.experiment_id])
    assert where["mlflow"] == {
        "tracking_uri": mlflow_store,
        "experiment_id": experiment.experiment_id,
        "run_id": run.info.run_id,
    }
    assert run.info.run_name == RUN and run.info.status == "FINISHED"
    assert run.data.params["shots"] == "2" and run.data.params["backbone.pretrained"] == "openai"
    assert run.data.metrics["test/top1"] == 62.5 and run.data.metrics["test/zero_shot_top1"] == 41.25
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(12))
    assert run.data.tags["synthrec.tensorboard"] == out.uri + f"runs/{RUN}/tensorboard"
    assert run.data.tags["synthrec.namespace"] == "team-a"

    again = tracking.log_run(TASK, out, metrics(), result())  # a retry of the same run
    assert again["mlflow"]["run_id"] == run.info.run_id
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_mlflow_experiment_name_from_its_own_variable(
    out: Any, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-a-ablations")
    tracking.log_run(TASK, out, metrics(), result())
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    assert client.get_experiment_by_name("team-a-ablations") is not None
    assert client.get_experiment_by_name("eurosat-fewshot") is None


# ---------------------------------------------------------------------------------- Weights & Biases


def wandb_records(path: Path) -> list[Any]:
    """The records of a W&B run log (.wandb): W&B's protobuf Records in LevelDB's log framing (32 KiB
    blocks of 7-byte-headed chunks) after a 7-byte W&B header. W&B reads it only from Go nowadays."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, header, pos, chunk, records = 32768, 7, 7, b"", []
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:  # the tail of a block too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        chunk += data[pos + header : pos + header + length]
        pos += header + length
        if kind in (1, 4):  # FULL or LAST: the record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_wandb_offline_holds_the_run_its_config_and_history(
    out: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb", reason="wandb (synthrec[tracking], part of the dev extra)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    where = tracking.log_run(TASK, out, metrics(), result())
    # W&B's service process writes the run log; it has closed the file once it has shut down.
    wandb.teardown()
    run_id = where["wandb"]["id"]
    assert where["wandb"]["project"] == "synthrec"
    (log_file,) = tmp_path.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    records = wandb_records(log_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.display_name, run.run_group, run.job_type, run.project) == (
        RUN,
        "eurosat-fewshot",
        "train",
        "synthrec",
    )
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["shots"] == 2 and config["backbone"] == {"model": "RN50", "pretrained": "openai"}
    assert config["synthrec"]["tensorboard"] == out.uri + f"runs/{RUN}/tensorboard"
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    assert [row["_step"] for row in rows] == list(range(13))
    assert [row["train/loss"] for row in rows[:12]] == pytest.approx([2.0 - i / 10 for i in range(12)])
    assert rows[-1]["test/top1"] == 62.5 and rows[11]["epoch/val_top1"] == 53.0


@pytest.mark.parametrize(
    ("env", "configured"),
    [
        ({}, False),
        ({"WANDB_API_KEY": "k"}, True),
        ({"WANDB_PROJECT": "p"}, True),
        ({"WANDB_MODE": "offline"}, True),
        ({"WANDB_MODE": "disabled", "WANDB_API_KEY": "k"}, False),
        ({"WANDB_DISABLED": "true", "WANDB_PROJECT": "p"}, False),
        ({"WANDB_ENTITY": "team"}, False),  # where to log, not whether
    ],
)
def test_wandb_is_used_when_its_own_variables_say_so(env: dict[str, str], configured: bool) -> None:
    assert tracking.wandb_configured(env) is configured


# ------------------------------------------------------------------------------------------ failures


def test_an_unreachable_mlflow_server_warns_and_the_run_goes_on(
    out: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with caplog.at_level(logging.WARNING, logger="synthrec.workers.tracking"):
        where = tracking.log_run(TASK, out, metrics(), result())
    assert set(where) == {"tensorboard"}
    assert any("logging to mlflow failed, the run goes on without it" in r.message for r in caplog.records)


def test_a_configured_library_that_is_not_installed_warns_how_to_install_it(
    out: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "p")
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with caplog.at_level(logging.WARNING, logger="synthrec.workers.tracking"):
        where = tracking.log_run(TASK, out, metrics(), result())
    assert set(where) == {"tensorboard"}
    (warning,) = [r.message for r in caplog.records]
    assert "wandb is configured but cannot be imported" in warning
    assert "pip install 'synthrec[tracking]'" in warning


def test_storage_that_refuses_the_event_file_only_warns(
    out: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(key: str, data: bytes) -> None:
        raise PermissionError(f"{key}: access denied")

    monkeypatch.setattr(out, "write_bytes", refuse)
    with caplog.at_level(logging.WARNING, logger="synthrec.workers.tracking"):
        assert tracking.log_run(TASK, out, metrics(), result()) == {}
    assert any(
        "logging to tensorboard failed" in r.message and "access denied" in r.message for r in caplog.records
    )
