"""The train stage end to end: filter + reduce a small dataset, then the runs of an experiment (zero- and
few-shot, with and without synthetic data) on S3 (moto) and on file://, with the tiny open_clip model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from synthrec import contract
from synthrec.api import RecognitionExperimentSpec
from synthrec.plan import experiment_runs, train_task
from synthrec.plan.tasks import DatasetInput, ResourceRef, dump_task
from synthrec.storage import open_storage
from synthrec.workers import train as train_stage
from synthrec.workers.runtime import run_stage
from tests.harness.stages import make_dataset, run_worker


def experiment(
    out_uri: str, tiny_models: Any, real_test: str | None = None, **ct: Any
) -> RecognitionExperimentSpec:
    return RecognitionExperimentSpec.model_validate(
        {
            "labels": {"preset": "tiny"},
            "backbone": {"model": tiny_models.clip.as_uri()},
            "data": {
                "synthetic": [{"uri": "s3://unused/"}],
                "realTrain": {"uri": (tiny_models.real / "train").as_uri()},
                "test": {"uri": real_test or (tiny_models.real / "test").as_uri()},
                **(
                    {"validation": {"uri": (tiny_models.real / "train").as_uri()}}
                    if "selection" in ct
                    else {}
                ),
            },
            "method": {"classifierTuning": {"epochs": 2, "batchSizeReal": 4, "batchSizeSynthetic": 8, **ct}},
            "matrix": {
                "shots": [0, 2],
                "variants": [{"name": "ct-init", "synthetic": []}, {"name": "ct-syn"}],
            },
            "output": {"uri": out_uri},
        }
    )


def train(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spec: RecognitionExperimentSpec,
    run: Any,
    inputs: list[DatasetInput],
) -> tuple[int, Any]:
    task = train_task(spec, run, inputs, ResourceRef(kind="RecognitionExperiment", name="e"))
    path = tmp_path / f"train-{run.name}.json"
    path.write_text(dump_task(task))
    log = tmp_path / f"train-{run.name}.log"
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(log))
    code = run_stage("train", train_stage.run, str(path), None)
    summary = contract.parse_summary(log.read_text())
    assert summary is not None, log.read_text()
    return code, summary


def tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard log dir, read with TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return {
        tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"
    }


def build_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models: Any, out_uri: str | None
) -> DatasetInput:
    spec, _ = make_dataset(tmp_path, monkeypatch, tiny_models.clip.as_uri(), per_class=4, out_uri=out_uri)
    for shard in range(2):
        assert run_worker(tmp_path, monkeypatch, spec, "filter", shard)[0] == 0
    code, summary = run_worker(tmp_path, monkeypatch, spec, "reduce")
    assert code == 0, summary
    return DatasetInput(name="ds", uri=spec.output.uri, digest=summary.digest)


def test_experiment_runs_end_to_end_on_s3(tiny_models, s3_bucket, tmp_path: Path, monkeypatch) -> None:
    dataset = build_dataset(tmp_path, monkeypatch, tiny_models, s3_bucket.uri + "datasets/ds/")
    spec = experiment(s3_bucket.uri + "exp/", tiny_models)
    out = open_storage(spec.output.uri)
    results = {}
    for run in experiment_runs(spec):
        code, summary = train(tmp_path, monkeypatch, spec, run, [dataset] if run.synthetic else [])
        assert code == 0, summary
        metrics = out.read_json(f"runs/{run.name}/metrics.json")
        assert summary.run == run.name and summary.top1 == metrics["top1"]
        assert summary.metrics == f"{spec.output.uri}runs/{run.name}/metrics.json"
        results[run.name] = metrics

    zero = results["shots0-seed1-ct-init"]  # 0 shots, no synthetic data: the zero-shot head itself
    assert zero["trained"] is False and zero["steps"] == 0 and zero["top1"] == zero["zero_shot_top1"]
    syn_only = results["shots0-seed1-ct-syn"]
    assert [p["name"] for p in syn_only["phases"]] == ["synthetic"] and syn_only["counts"]["synthetic"] == 12
    assert syn_only["datasets"] == [{"name": "ds", "uri": dataset.uri, "digest": dataset.digest, "kept": 12}]
    real_only = results["shots2-seed1-ct-init"]
    assert [p["name"] for p in real_only["phases"]] == ["real"] and real_only["counts"]["real_train"] == 8
    mixed = results["shots2-seed1-ct-syn"]
    assert [p["name"] for p in mixed["phases"]] == ["mixed"] and mixed[
        "steps"
    ] == 2 * 2  # 12 / 8 -> 2 per epoch
    assert mixed["counts"] == {
        "synthetic": 12,
        "real_train": 8,
        "real_train_replaced": 0,
        "test": 80,
        "test_skipped": 0,
        "validation": 0,
        "validation_skipped": 0,
    }
    assert mixed["confusion"] == "runs/shots2-seed1-ct-syn/confusion.json"
    confusions = out.read_json(mixed["confusion"])
    assert confusions["classes"] == ["red circle", "green square", "blue triangle", "yellow cross"]
    for head in ("test", "zero_shot"):  # every test image in exactly one cell
        assert sum(n for _, _, n in confusions[head]) == 80 and all(n > 0 for _, _, n in confusions[head])
    diagonal = sum(n for t, p, n in confusions["test"] if t == p)
    assert diagonal == round(mixed["top1"] * 80 / 100)
    assert [c["name"] for c in mixed["per_class"]] == [
        "red circle",
        "green square",
        "blue triangle",
        "yellow cross",
    ]
    # features are cached once and shared: the test split is encoded by the first run only
    caches = [r["feature_cache"]["test"] for r in results.values()]
    assert len({c["key"] for c in caches}) == 1 and [c["hit"] for c in caches] == [False, True, True, True]
    assert mixed["feature_cache"]["synthetic"]["hit"] is True
    shots_cache = mixed["feature_cache"]["real-train"], real_only["feature_cache"]["real-train"]
    assert shots_cache[0]["key"] == shots_cache[1]["key"] and shots_cache[0]["hit"]  # same shots and seed
    keys = {o.key for o in out.list("runs/shots2-seed1-ct-syn/")}
    assert keys >= {
        f"runs/shots2-seed1-ct-syn/{n}"
        for n in ("metrics.json", "head.safetensors", "curve.json", "curve.png", "confusion.json")
    }
    assert out.read_json("runs/shots2-seed1-ct-syn/done.json")["spec_hash"] == mixed["spec_hash"]
    curve = out.read_json("runs/shots2-seed1-ct-syn/curve.json")
    assert len(curve["steps"]) == 4 and all({"syn", "real", "loss", "lr"} <= set(s) for s in curve["steps"])
    # TensorBoard opens the run's log dir on S3 with its own reader (boto3 finds AWS_ENDPOINT_URL)
    logdir = f"{spec.output.uri}runs/shots2-seed1-ct-syn/tensorboard"
    assert mixed["tracking"] == {"tensorboard": logdir}
    events = tensorboard_scalars(logdir)
    assert [step for step, _ in events["train/loss"]] == [0, 1, 2, 3]
    assert [v for _, v in events["train/loss"]] == pytest.approx([s["loss"] for s in curve["steps"]])
    assert events["test/top1"] == [(4, pytest.approx(mixed["top1"]))]
    assert tensorboard_scalars(f"{spec.output.uri}runs/shots0-seed1-ct-init/tensorboard")["test/top1"] == [
        (0, pytest.approx(zero["top1"]))
    ]

    # a committed run is not trained again
    run = experiment_runs(spec)[3]
    code, again = train(tmp_path, monkeypatch, spec, run, [dataset])
    assert code == 0 and again.skipped is True and again.top1 == mixed["top1"]

    # a dataset that changed after it was pinned is refused
    stale = DatasetInput(name="ds", uri=dataset.uri, digest="0" * 64)
    spec2 = experiment(s3_bucket.uri + "exp2/", tiny_models)
    code, summary = train(tmp_path, monkeypatch, spec2, experiment_runs(spec2)[3], [stale])
    assert code == contract.EXIT_DATA_ERROR and "changed since the experiment pinned it" in summary.message


def test_best_validation_bad_test_images_and_encoder_tuning(tiny_models, tmp_path: Path, monkeypatch) -> None:
    dataset = build_dataset(tmp_path, monkeypatch, tiny_models, None)
    test = tmp_path / "test"
    shutil.copytree(tiny_models.real / "test", test)
    (test / "red_circle" / "0003.png").write_bytes(b"\x89PNG broken")
    spec = experiment(
        (tmp_path / "exp").as_uri() + "/",
        tiny_models,
        test.as_uri(),
        selection="best-validation",
        trainableScope="last-block",
    )
    run = experiment_runs(spec)[3]  # shots2-seed1-ct-syn
    code, summary = train(tmp_path, monkeypatch, spec, run, [dataset])
    assert code == 0, summary
    metrics = open_storage(spec.output.uri).read_json(f"runs/{run.name}/metrics.json")
    assert metrics["counts"]["test"] == 79 and metrics["counts"]["test_skipped"] == 1  # onBadImage: skip
    assert metrics["selection"] == "best-validation" and metrics["selected_epoch"] in (1, 2)
    assert metrics["counts"]["validation"] == 64 and metrics["validation_top1"] is not None
    curve = open_storage(spec.output.uri).read_json(f"runs/{run.name}/curve.json")
    assert [e["epoch"] for e in curve["epochs"]] == [1, 2] and all("val_top1" in e for e in curve["epochs"])

    strict = RecognitionExperimentSpec.model_validate(
        {
            **spec.wire(),
            "output": {"uri": (tmp_path / "exp-strict").as_uri() + "/"},
            "data": {**spec.wire()["data"], "test": {"uri": test.as_uri(), "onBadImage": "fail"}},
        }
    )
    code, summary = train(tmp_path, monkeypatch, strict, experiment_runs(strict)[0], [])
    assert code == contract.EXIT_DATA_ERROR and "cannot be decoded" in summary.message
