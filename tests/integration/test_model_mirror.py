"""Models fetched once per dataset, not once per pod: the prompts stage pins the generator and the filter's
CLIP and copies them into the dataset's output; generate and filter pods load the copies (here: after the
origin is gone) and report the pinned revision; a second prompts run copies nothing; a built-in open_clip
architecture's pretrained weights are mirrored as its weights file and load to the same model."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from synthrec import contract
from synthrec.api import SyntheticDatasetSpec
from synthrec.contract.layout import DatasetLayout
from synthrec.plan import dataset_task
from synthrec.plan.tasks import ResourceRef, dump_task
from synthrec.storage import open_storage, read_marker, upload_tree
from synthrec.tiny import TinyModels
from synthrec.workers import filter as filter_stage
from synthrec.workers import generate, prompts
from synthrec.workers.mirror import mirror_hash, mirror_target
from synthrec.workers.runtime import run_stage

pytestmark = pytest.mark.slow
STAGES = {"prompts": prompts.run, "generate": generate.run, "filter": filter_stage.run}


def run(spec: SyntheticDatasetSpec, stage: str, folder: Path, shard: int | None = None) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    task = folder / f"{stage}.json"
    task.write_text(dump_task(dataset_task(spec, stage, ResourceRef(kind="SyntheticDataset", name="m"))))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = run_stage(stage, STAGES[stage], str(task), shard)
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = contract.parse_summary(Path(os.environ[contract.ENV_TERMINATION_LOG]).read_text())
    assert code == 0, summary
    return summary


def spec_for(generator: str, clip: str, out: str, **mirror: Any) -> SyntheticDatasetSpec:
    return SyntheticDatasetSpec.model_validate(
        {
            "labels": {"preset": "tiny", "subset": ["red circle", "green square"]},
            "generator": {"model": generator, "steps": 2, "resolution": 64, "imagesPerPrompt": 2},
            "filter": {"clip": {"model": clip, "pretrained": None}, "batchSize": 4},
            "sharding": {"shards": 2},
            "output": {"uri": out},
            **({"modelMirror": mirror} if mirror else {}),
        }
    )


@pytest.fixture(autouse=True)
def _contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(tmp_path / "termination-log"))
    monkeypatch.setattr(torch, "get_num_threads", torch.get_num_threads)
    torch.set_num_threads(1)


def test_pods_load_the_copies_made_once_and_report_the_pinned_revisions(
    tiny_models: TinyModels, s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = open_storage(s3_bucket.uri + "origin/")
    upload_tree(origin, tiny_models.sd, "sd")
    upload_tree(origin, tiny_models.clip, "clip")
    spec = spec_for(origin.uri + "sd/", origin.uri + "clip/", s3_bucket.uri + "ds/")
    assert mirror_target(spec) == "output"  # the default for an s3:// output
    monkeypatch.setenv("SYNTHREC_CACHE", str(tmp_path / "prompts-pod-cache"))

    first = run(spec, "prompts", tmp_path / "tasks")
    assert first.models_mirrored == 2
    out = open_storage(spec.output.uri)
    record = read_marker(out, DatasetLayout.models_mirror)
    assert record["spec_hash"] == mirror_hash(spec) and record["target"] == "output"
    by_field = {m["field"]: m for m in record["models"]}
    sd = by_field["generator.model"]
    assert sd["copied"] and sd["uri"].startswith(out.uri + "models/") and sd["files"] > 5
    mirrored_keys = {o.key for o in out.list("models/")}
    assert {f"models/{sd['uri'].rsplit('models/', 1)[1]}model_index.json"} <= mirrored_keys

    # the hub (here: the origin folder) is gone; a fresh pod still generates and filters, from the copies
    for info in list(origin.list()):
        origin.delete(info.key)
    monkeypatch.setenv("SYNTHREC_CACHE", str(tmp_path / "generate-pod-cache"))
    summary = run(spec, "generate", tmp_path / "tasks", 0)
    assert summary.images > 0
    marker = read_marker(out, DatasetLayout.shard_marker(0))
    assert marker["revision"] == sd["revision"]  # the origin's revision, pinned
    monkeypatch.setenv("SYNTHREC_CACHE", str(tmp_path / "filter-pod-cache"))
    run(spec, "filter", tmp_path / "tasks", 0)
    features = read_marker(out, DatasetLayout.features_marker(0))
    assert features["clip"]["revision"] == by_field["filter.clip.model"]["revision"]
    assert features["clip"]["model"] == spec.filter.clip.model  # named as the spec names it

    # done once: a second prompts run copies nothing
    again = run(spec, "prompts", tmp_path / "tasks")
    assert again.models_mirrored == 2 and again.skipped
    assert read_marker(out, DatasetLayout.models_mirror)["written_at"] == record["written_at"]


def test_a_file_output_mirrors_nothing_unless_asked_and_file_models_are_pinned_in_place(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    out = (tmp_path / "ds").as_uri() + "/"
    spec = spec_for(tiny_models.sd.as_uri(), tiny_models.clip.as_uri(), out)
    assert mirror_target(spec) == "off"
    assert run(spec, "prompts", tmp_path / "a").models_mirrored == 0
    asked = spec_for(tiny_models.sd.as_uri(), tiny_models.clip.as_uri(), out + "b/", target="output")
    assert run(asked, "prompts", tmp_path / "b").models_mirrored == 0  # file:// models: pinned only
    record = open_storage(asked.output.uri).read_json(DatasetLayout.models_mirror)
    assert all(m["copied"] is False and m["uri"] == m["ref"] for m in record["models"])
    assert all(m["revision"].startswith("sha256:") for m in record["models"])


def test_a_builtin_architectures_pretrained_weights_are_mirrored_as_a_file(
    tiny_models: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import open_clip
    import torch
    from open_clip import factory, pretrained

    from synthrec.workers.clip import load_clip
    from synthrec.workers.mirror import load_dataset_clip

    config = json.loads((tiny_models.clip / "open_clip_config.json").read_text())
    monkeypatch.setitem(factory._MODEL_CONFIGS, "synthrec-tiny", config["model_cfg"])
    weights = tiny_models.clip / "open_clip_model.safetensors"
    tag = pretrained._pcfg(url=weights.as_uri())  # a tag whose weights are downloaded from a URL
    monkeypatch.setitem(pretrained._PRETRAINED, "synthrec-tiny", {"test": tag})
    spec = SyntheticDatasetSpec.model_validate(
        {
            "labels": {"preset": "tiny"},
            "generator": {"model": tiny_models.sd.as_uri()},
            "filter": {"clip": {"model": "synthrec-tiny", "pretrained": "test"}},
            "output": {"uri": (tmp_path / "ds").as_uri() + "/"},
            "modelMirror": {"target": "output"},
        }
    )
    monkeypatch.setenv("SYNTHREC_CACHE", str(tmp_path / "cache"))
    assert run(spec, "prompts", tmp_path / "tasks").models_mirrored == 1
    entry = next(
        m
        for m in open_storage(spec.output.uri).read_json(DatasetLayout.models_mirror)["models"]
        if m["field"] == "filter.clip.model"
    )
    assert entry["kind"] == "name" and entry["weights"] == weights.name and entry["copied"]

    # a pod: the weights from the mirror, never from the tag's URL
    monkeypatch.setitem(
        pretrained._PRETRAINED, "synthrec-tiny", {"test": pretrained._pcfg(url="file:///gone")}
    )
    task = dataset_task(spec, "filter", ResourceRef(kind="SyntheticDataset", name="m"))
    ctx = type("Ctx", (), {"task": task, "storage": open_storage(spec.output.uri)})()
    mirrored = load_dataset_clip(ctx, "cpu")
    monkeypatch.setitem(pretrained._PRETRAINED, "synthrec-tiny", {"test": tag})
    direct = load_clip("synthrec-tiny", "test", "cpu", cache_dir=tmp_path / "direct")
    assert mirrored.revision == direct.revision == "open_clip:synthrec-tiny:test"
    x = torch.randint(0, 255, (2, *direct.image_shape()), dtype=torch.uint8)
    assert torch.equal(mirrored.encode(x), direct.encode(x))
    assert mirrored.pixels.mean == direct.pixels.mean and open_clip.__version__


def test_the_cache_target_copies_into_the_shared_cache_and_a_pod_without_it_falls_back(
    tiny_models: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthrec.workers import mirror

    monkeypatch.setenv("SYNTHREC_CACHE", str(tmp_path / "shared-cache"))
    spec = spec_for("tiny://sd", "tiny://clip", (tmp_path / "ds").as_uri() + "/", target="cache")
    assert run(spec, "prompts", tmp_path / "tasks").models_mirrored == 2
    storage = open_storage(spec.output.uri)
    sd = next(m for m in storage.read_json(DatasetLayout.models_mirror)["models"] if m["ref"] == "tiny://sd")
    copy = Path(sd["uri"].removeprefix("file://"))
    assert copy.parent == tmp_path / "shared-cache" / "mirror" and (copy / "model_index.json").is_file()
    assert mirror.source_of(storage, "tiny://sd") == (sd["uri"], sd["revision"])
    copy.rename(copy.with_name("elsewhere"))  # a pod whose /cache is not the shared volume
    assert mirror.source_of(storage, "tiny://sd") == ("tiny://sd", sd["revision"])


def test_a_model_that_cannot_be_fetched_leaves_the_prompts_stage_done_and_is_tried_again(
    tiny_models: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from open_clip import pretrained

    tries: list[str] = []

    def unreachable(cfg: Any, **kwargs: Any) -> str:
        tries.append(cfg.get("hf_hub", "") or cfg.get("url", ""))
        raise OSError("the hub is unreachable")

    monkeypatch.setattr(pretrained, "download_pretrained", unreachable)
    spec = spec_for(tiny_models.sd.as_uri(), "RN50", (tmp_path / "ds").as_uri() + "/", target="output")
    spec = spec.model_copy(
        update={
            "filter": spec.filter.model_copy(
                update={"clip": spec.filter.clip.model_copy(update={"pretrained": "openai"})}
            )
        }
    )
    monkeypatch.setenv("SYNTHREC_CACHE", str(tmp_path / "cache"))
    assert run(spec, "prompts", tmp_path / "a").models_mirrored == 0  # the stage itself succeeded
    record = open_storage(spec.output.uri).read_json(DatasetLayout.models_mirror)
    clip = next(m for m in record["models"] if m["field"] == "filter.clip.model")
    assert clip["uri"] is None and "unreachable" in clip["error"]  # its pods load RN50 themselves
    run(spec, "prompts", tmp_path / "b")
    assert len(tries) == 2  # not taken as done: the next prompts run tries again
