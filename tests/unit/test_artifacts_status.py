"""What is done and what is missing comes from the artifacts alone: commit markers with the stage's spec hash,
manifest.json, runs/<run>/done.json, and spec.json saying what a folder is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from synthrec import api, plan
from synthrec.cli import main
from synthrec.contract import artifacts
from synthrec.contract.layout import DatasetLayout, ExperimentLayout
from synthrec.plan.tasks import ResourceRef
from synthrec.storage import FileStorage, write_marker
from synthrec.workers.runtime import spec_document
from tests.harness.artifacts import dataset_manifest, run_metrics

DATASET = {
    "apiVersion": "synthrec.io/v1alpha1",
    "kind": "SyntheticDataset",
    "metadata": {"name": "cats"},
    "spec": {
        "labels": {"classes": [{"name": "cat"}, {"name": "dog"}]},
        "generator": {"model": "tiny://sd"},
        "sharding": {"shards": 5},
        "output": {"uri": "file:///elsewhere/cats/"},
    },
}
EXPERIMENT = {
    "apiVersion": "synthrec.io/v1alpha1",
    "kind": "RecognitionExperiment",
    "metadata": {"name": "cats-ct"},
    "spec": {
        "labels": {"classes": [{"name": "cat"}, {"name": "dog"}]},
        "data": {"synthetic": [{"datasetRef": "cats"}], "test": {"uri": "tiny://real/test"}},
        "matrix": {"shots": [0], "seeds": [1, 2, 3]},
        "output": {"uri": "file:///elsewhere/cats-ct/"},
    },
}


def dataset_at(root: Path) -> tuple[FileStorage, api.SyntheticDataset]:
    res = api.parse_resource(DATASET)
    storage = FileStorage(root)
    task = plan.dataset_task(res.spec, "prompts", ResourceRef(kind="SyntheticDataset", name="cats"))
    storage.write_json(DatasetLayout.spec, spec_document(task))  # what the first worker stage writes
    return storage, res


def experiment_at(root: Path) -> tuple[FileStorage, api.RecognitionExperiment]:
    res = api.parse_resource(EXPERIMENT)
    storage = FileStorage(root)
    run = plan.experiment_runs(res.spec)[0]
    task = plan.train_task(res.spec, run, [], ResourceRef(kind="RecognitionExperiment", name="cats-ct"))
    storage.write_json(ExperimentLayout.spec, spec_document(task))
    return storage, res


def finish_run(storage: FileStorage, name: str, top1: float, spec_hash: str = "h", **fields: Any) -> None:
    metrics = run_metrics(name, top1=top1, zero_shot_top1=30.0, **fields)
    storage.write_json(ExperimentLayout.run_metrics(name), metrics.document())
    write_marker(storage, ExperimentLayout.run_marker(name), spec_hash=spec_hash)


def test_committed_missing_and_conflicting_shards_come_from_the_markers(tmp_path: Path) -> None:
    storage, res = dataset_at(tmp_path)
    hashes = plan.dataset_hashes(res.spec)
    write_marker(storage, DatasetLayout.prompts_marker, spec_hash=hashes["prompts"])
    for shard in (0, 2):
        write_marker(storage, DatasetLayout.shard_marker(shard), spec_hash=hashes["generate"])
    write_marker(storage, DatasetLayout.shard_marker(3), spec_hash="another-spec")
    storage.write_bytes(DatasetLayout.shard(4), b"uncommitted data: no marker")
    state = artifacts.dataset_state(storage, res.spec, name="cats")
    assert state.stage("prompts").complete
    generate = state.stage("generate")
    assert generate.committed == {0, 2} and generate.foreign == {3}
    assert plan.format_ranges(generate.missing) == "1,3-4"
    assert state.stage("filter").missing == {0, 1, 2, 3, 4}
    assert state.manifest is None and not state.complete


def test_a_manifest_of_another_spec_is_not_this_datasets_commit(tmp_path: Path) -> None:
    storage, res = dataset_at(tmp_path)
    storage.write_json(DatasetLayout.manifest, dataset_manifest("another-spec", ["cat", "dog"]).document())
    state = artifacts.dataset_state(storage, res.spec)
    assert state.manifest is None and state.stage("reduce").foreign == {0}
    ours = dataset_manifest(plan.dataset_hashes(res.spec)["reduce"], ["cat", "dog"], kept=3, generated=4)
    storage.write_json(DatasetLayout.manifest, ours.document())
    state = artifacts.dataset_state(storage, res.spec)
    assert state.complete and state.manifest == ours
    assert state.manifest_digest == storage.sha256(DatasetLayout.manifest)


def test_a_disabled_filter_is_never_missing(tmp_path: Path) -> None:
    body = json.loads(json.dumps(DATASET))
    body["spec"]["filter"] = {"enabled": False}
    res = api.parse_resource(body)
    state = artifacts.dataset_state(FileStorage(tmp_path), res.spec)
    assert state.stage("filter").missing == set() and not state.stage("filter").enabled


def test_runs_are_done_by_their_marker_and_with_run_hashes_only_by_the_right_one(tmp_path: Path) -> None:
    storage, res = experiment_at(tmp_path)
    finish_run(storage, "shots0-seed1", 41.5, spec_hash="current")
    finish_run(storage, "shots0-seed2", 42.5, spec_hash="before-the-dataset-changed")
    state = artifacts.experiment_state(storage, res.spec)
    assert [r.done for r in state.runs] == [True, True, False]
    assert state.runs[0].top1 == 41.5 and state.runs[0].zero_shot_top1 == 30.0
    pinned = artifacts.experiment_state(
        storage, res.spec, run_hashes={"shots0-seed1": "current", "shots0-seed2": "current"}
    )
    assert [r.done for r in pinned.runs] == [True, False, False] and pinned.runs[1].stale
    summary = artifacts.experiment_summary(pinned)
    assert summary["best"] == {"name": "shots0-seed1", "top1": 41.5} and not summary["complete"]


def test_resources_are_found_under_a_storage_root_or_at_their_own_root(tmp_path: Path) -> None:
    dataset_at(tmp_path / "datasets" / "cats")
    experiment_at(tmp_path / "experiments" / "cats-ct")
    found = artifacts.find_resources(tmp_path.as_uri())
    assert [(r.kind, r.name) for r in found] == [
        ("SyntheticDataset", "cats"),
        ("RecognitionExperiment", "cats-ct"),
    ]
    assert found[0].uri == (tmp_path / "datasets" / "cats").as_uri() + "/"
    single = artifacts.find_resources((tmp_path / "experiments" / "cats-ct").as_uri())
    assert [r.name for r in single] == ["cats-ct"]
    with pytest.raises(artifacts.ArtifactError, match="no synthrec resource at"):
        artifacts.find_resources((tmp_path / "datasets").as_uri())


def test_status_prints_missing_ranges_and_exits_1_until_everything_is_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, res = dataset_at(tmp_path / "datasets" / "cats")
    hashes = plan.dataset_hashes(res.spec)
    write_marker(storage, DatasetLayout.prompts_marker, spec_hash=hashes["prompts"])
    for shard in (0, 2):
        write_marker(storage, DatasetLayout.shard_marker(shard), spec_hash=hashes["generate"])
    write_marker(storage, DatasetLayout.shard_marker(3), spec_hash="another-spec")
    exp, _ = experiment_at(tmp_path / "experiments" / "cats-ct")
    finish_run(exp, "shots0-seed1", 41.5)

    assert main(["status", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "SyntheticDataset cats  [incomplete]" in out
    assert "prompts   1/1 committed" in out
    assert (
        "generate  2/5 committed, missing shards 1,3-4, CONFLICT: shards 3 committed by another spec" in out
    )
    assert "filter    0/5 committed, missing shards 0-4" in out
    assert "manifest.json missing" in out
    assert "runs 1/3 done" in out and "shots0-seed2                     missing" in out
    assert "top-1   41.5%" in out

    for shard in range(5):
        for marker, stage in (
            (DatasetLayout.shard_marker, "generate"),
            (DatasetLayout.features_marker, "filter"),
        ):
            write_marker(storage, marker(shard), spec_hash=hashes[stage])
    storage.write_json(DatasetLayout.manifest, dataset_manifest(hashes["reduce"], ["cat", "dog"]).document())
    finish_run(exp, "shots0-seed2", 40.0)
    finish_run(exp, "shots0-seed3", 40.0)
    assert main(["status", tmp_path.as_uri(), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["complete"] and [r["complete"] for r in doc["resources"]] == [True, True]


def test_status_shows_the_last_epoch_and_the_best_validation_model_where_a_run_has_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp, _ = experiment_at(tmp_path)
    finish_run(exp, "shots0-seed1", 41.5)  # no validation set: one model
    finish_run(exp, "shots0-seed2", 40.0, top1_last=40.0, top1_best_validation=43.5)
    assert main(["status", str(tmp_path)]) == 1
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "last epoch" not in lines["shots0-seed1"]
    assert lines["shots0-seed2"].endswith("(last epoch 40.0%, best validation 43.5%)")
    assert main(["status", str(tmp_path), "--json"]) == 1
    runs = {r["name"]: r for r in json.loads(capsys.readouterr().out)["resources"][0]["runs"]}
    assert (runs["shots0-seed2"]["top1_last"], runs["shots0-seed2"]["top1_best_validation"]) == (40.0, 43.5)
    assert runs["shots0-seed2"]["method"] == "classifier-tuning"


def test_status_of_a_place_without_resources_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(tmp_path)]) == 1
    assert "no synthrec resource at" in capsys.readouterr().err
