"""filter + reduce stages end to end on a small dataset written here (a WebDataset shard of drawn images
with the documented json fields and a generate marker), with the tiny open_clip model."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthrec import contract
from synthrec.contract.layout import DatasetLayout
from synthrec.plan import dataset_task
from synthrec.plan.tasks import ResourceRef, dump_task
from synthrec.storage import open_storage, read_marker, write_marker
from synthrec.workers.shards import read_features, soft_targets
from tests.harness.stages import dataset_spec, make_dataset, run_worker, write_shard


def test_filter_and_reduce_end_to_end(tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = "c00002-p00001-i00003"
    spec, storage = make_dataset(tmp_path, monkeypatch, tiny_models.clip.as_uri(), corrupt={bad})
    hashes = dataset_task(spec, "filter", ResourceRef(kind="SyntheticDataset", name="t")).hashes
    for shard in range(2):
        code, summary = run_worker(tmp_path, monkeypatch, spec, "filter", shard)
        assert code == 0, summary
        assert summary.images == (20 if shard == 0 else 19) and summary.skipped is False
    assert summary.corrupt == 1

    # the features file (format 2): one row per decodable image, float16 logits = 100 * cos, nothing
    # derived from them (scores and soft targets are their softmax, taken where they are used)
    local = tmp_path / "f1.safetensors"
    storage.download_file(DatasetLayout.features(1), local)
    feats = read_features(local)
    assert feats.meta["format"] == "2"
    assert feats.features.shape == (19, 32) and str(feats.features.dtype) == "float16"
    assert feats.logits.shape == feats.filter_logits.shape == (19, 4) and feats.probs is None
    assert str(feats.logits.dtype) == str(feats.filter_logits.dtype) == "float16"
    from safetensors import safe_open

    with safe_open(str(local), framework="numpy") as f:
        assert set(f.keys()) == {"features", "logits", "filter_logits", "class_index"}
    assert bad not in feats.keys and feats.corrupt == [
        {"key": bad, "class": 2, "reason": "undecodable image"}
    ]
    assert abs(float(feats.meta["logit_scale"]) - 100.0) < 1e-3
    assert read_marker(storage, DatasetLayout.features_marker(1))["spec_hash"] == hashes["filter"]

    # a second run of a committed shard returns at once
    code, again = run_worker(tmp_path, monkeypatch, spec, "filter", 1)
    assert code == 0 and again.skipped is True

    code, summary = run_worker(tmp_path, monkeypatch, spec, "reduce")
    assert code == 0, summary
    assert summary.generated == 40 and summary.kept == 12 and summary.rejected == 28
    manifest_raw = storage.read_bytes("manifest.json")
    import hashlib

    assert summary.digest == hashlib.sha256(manifest_raw).hexdigest()
    manifest = json.loads(manifest_raw)
    assert manifest["spec_hash"] == hashes["reduce"] and manifest["counts"]["corrupt"] == 1
    assert [c["generated"] for c in manifest["per_class"]] == [10, 10, 10, 10]
    assert [c["kept"] for c in manifest["per_class"]] == [3, 3, 3, 3]
    assert manifest["per_class"][2]["corrupt"] == 1
    assert manifest["filter"]["threshold"] == 0.25 and manifest["filter"]["threshold_rule"] == "1/C"
    assert {s["shard"] for s in manifest["shards"]} == {0, 1}
    assert all(s["tar_sha256"] and s["features_sha256"] for s in manifest["shards"])
    assert manifest["models"]["filter_clip"]["model"] == tiny_models.clip.as_uri()

    rows = [json.loads(line) for line in storage.read_bytes("index/kept.jsonl").decode().splitlines()]
    assert (
        len(rows) == 12
        and manifest["index"]["sha256"] == hashlib.sha256(storage.read_bytes("index/kept.jsonl")).hexdigest()
    )
    assert rows == sorted(rows, key=lambda r: (r["shard"], r["key"]))
    row = rows[0]
    assert set(row) == {"shard", "key", "class", "class_name", "score", "passed", "features", "row"}
    # the pointer gives the soft target softmax(logits / T) at an experiment's T; the score is p(class)
    storage.download_file(row["features"], local)
    f = read_features(local)
    assert f.keys[row["row"]] == row["key"]
    z = f.filter_logits[row["row"]].astype(np.float64)
    assert abs(float(np.exp(z[row["class"]] - z.max()) / np.exp(z - z.max()).sum()) - row["score"]) < 1e-5
    assert (
        manifest["soft_targets"]["temperature"] is None
        and "softTarget.temperature" in (manifest["soft_targets"]["formula"])
    )
    target = soft_targets(f.logits[row["row"]], 2.0)
    assert abs(float(target.sum()) - 1) < 1e-5

    # every shard has its index: each decodable sample in tar order with its kept flag, and its counts
    kept_keys = {r["key"] for r in rows}
    for record in manifest["shards"]:
        shard = record["shard"]
        assert record["index"] == DatasetLayout.shard_index(shard)
        raw = storage.read_bytes(record["index"])
        assert record["index_sha256"] == hashlib.sha256(raw).hexdigest()
        lines = [json.loads(line) for line in raw.decode().splitlines()]
        assert [r["key"] for r in lines] == [k for k in tar_keys(storage, shard) if k != bad]
        assert all(set(r) == {"key", "class", "kept"} for r in lines)
        assert {r["key"] for r in lines if r["kept"]} == {r["key"] for r in rows if r["shard"] == shard}
        assert record["kept"] == sum(r["kept"] for r in lines)
        assert sum(record["classes"].values()) == len(lines) == record["images"]
        assert record["kept_classes"] == {
            str(c): n for c in range(4) if (n := sum(r["kept"] and r["class"] == c for r in lines))
        }

    # the documented few lines read exactly the kept set with the webdataset library
    kept, samples = read_kept_set_as_documented(storage.uri.removeprefix("file://").rstrip("/"))
    assert kept == kept_keys
    assert sorted(cls for _, cls in samples) == sorted(r["class"] for r in rows)
    assert all(image.size == (64, 64) for image, _ in samples)

    # reduce again: the committed manifest is the answer
    code, again = run_worker(tmp_path, monkeypatch, spec, "reduce")
    assert code == 0 and again.digest == summary.digest and again.skipped is True


@pytest.mark.parametrize("prompts", ["filter-template", "head-templates"])
def test_the_filter_scores_with_its_prompts_and_soft_targets_come_from_the_head(
    tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prompts: str
) -> None:
    import numpy as np

    from synthrec.workers.clip import load_clip

    spec, storage = make_dataset(
        tmp_path, monkeypatch, tiny_models.clip.as_uri(), per_class=2, prompts=prompts
    )
    assert run_worker(tmp_path, monkeypatch, spec, "filter", 0)[0] == 0
    local = tmp_path / "f0.safetensors"
    storage.download_file(DatasetLayout.features(0), local)
    feats = read_features(local)

    clip = load_clip(tiny_models.clip.as_uri(), None, "cpu")
    names = ["red circle", "green square", "blue triangle", "yellow cross"]
    # The tiny preset's head has two templates; its filter template is one ("a photo of a {c}.").
    head = clip.text_head(names, ["a photo of a {c}.", "a drawing of a {c}."]).numpy()
    official = clip.text_head(names, ["a photo of a {c}."]).numpy()
    image = feats.features.astype(np.float32)
    scorer = official if prompts == "filter-template" else head
    expected = np.exp(100 * image @ scorer.T)
    expected /= expected.sum(axis=1, keepdims=True)
    rows = np.arange(len(feats.keys))
    assert np.allclose(feats.scores(), expected[rows, feats.class_index], atol=2e-3)
    assert np.allclose(feats.logits.astype(np.float32), 100 * image @ head.T, atol=0.2)  # soft targets
    # the head's own prompts score with the head's logits: stored once
    assert (feats.filter_logits is feats.logits) == (prompts == "head-templates")
    assert not np.allclose(official, head, atol=1e-3)  # the two modes do score differently

    assert run_worker(tmp_path, monkeypatch, spec, "filter", 1)[0] == 0
    assert run_worker(tmp_path, monkeypatch, spec, "reduce")[0] == 0
    card = json.loads(storage.read_bytes("manifest.json"))["filter"]["prompts"]
    if prompts == "filter-template":
        assert card == {
            "mode": "filter-template",
            "names": "generation names",
            "templates": ["a photo of a {c}."],
            "example": ["a photo of a red circle."],
        }
    else:
        assert card["mode"] == "head-templates" and card["names"] == "head names"
        assert card["templates"] == ["a photo of a {c}.", "a drawing of a {c}."]


def tar_keys(storage: Any, shard: int) -> list[str]:
    """The sample keys of a shard tar, in tar order."""
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(DatasetLayout.shard(shard)))) as tar:
        return list(dict.fromkeys(m.name.partition(".")[0] for m in tar.getmembers()))


def read_kept_set_as_documented(root: str) -> tuple[set[str], list[tuple[Any, int]]]:
    """Run the snippet of docs/datasets.md with its root replaced; returns its kept keys and what its
    dataset yields."""
    doc = (Path(__file__).parents[2] / "docs" / "datasets.md").read_text()
    block = doc.split("<!-- kept-set-snippet -->")[1].split("<!-- /kept-set-snippet -->")[0]
    code = block.strip().removeprefix("```python").removesuffix("```")
    assert 'root = "/data/eurosat-le-cf"' in code
    code = code.replace('root = "/data/eurosat-le-cf"', f"root = {root!r}")
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/datasets.md", "exec"), namespace)
    return namespace["kept"], list(namespace["dataset"])


def test_filter_refuses_a_shard_of_another_spec(
    tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, storage = make_dataset(tmp_path, monkeypatch, tiny_models.clip.as_uri(), per_class=1)
    storage.write_json(DatasetLayout.shard_marker(0), {"spec_hash": "someone-else", "sha256": None})
    code, summary = run_worker(tmp_path, monkeypatch, spec, "filter", 0)
    assert code == contract.EXIT_DATA_ERROR
    assert summary.error == "data" and "written by another spec" in summary.message
    storage.delete(DatasetLayout.shard_marker(1))
    code, summary = run_worker(tmp_path, monkeypatch, spec, "filter", 1)
    assert code == contract.EXIT_DATA_ERROR and "has no commit marker" in summary.message


def test_filter_detects_a_damaged_tar(tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, storage = make_dataset(tmp_path, monkeypatch, tiny_models.clip.as_uri(), per_class=1)
    raw = bytearray(storage.read_bytes(DatasetLayout.shard(0)))
    raw[700] ^= 0xFF
    storage.write_bytes(DatasetLayout.shard(0), bytes(raw))
    code, summary = run_worker(tmp_path, monkeypatch, spec, "filter", 0)
    assert code == contract.EXIT_DATA_ERROR and "does not match the sha256" in summary.message


def test_reduce_with_the_filter_disabled_keeps_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, storage = make_dataset(tmp_path, monkeypatch, "RN50", per_class=2, enabled=False)
    code, summary = run_worker(tmp_path, monkeypatch, spec, "reduce")
    assert code == 0, summary
    assert summary.generated == summary.kept == summary.passed == 16 and summary.rejected == 0
    manifest = storage.read_json("manifest.json")
    assert (
        manifest["filter"]["enabled"] is False
        and "every generated image is kept" in manifest["filter"]["note"]
    )
    assert manifest["soft_targets"] is None
    row = json.loads(storage.read_bytes("index/kept.jsonl").decode().splitlines()[0])
    assert row["score"] is None and row["passed"] is None and "features" not in row


def test_the_card_says_at_which_size_and_from_which_noise_level_the_images_were_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the generate stage writes into its markers (see test_generate) reaches the card unchanged.
    start = {
        "strength": 0.08,
        "strength_source": "matched",
        "target_alpha_bar": 0.946,
        "alpha_bar": 0.94,
        "start_timestep": 61.0,
        "steps_run": 4,
        "steps": 50,
        "scheduler": "DDIMScheduler",
        "shots": 16,
    }
    generation = {"generation_resolution": 512, "resolution": 64, "real_guidance": start}
    spec = dataset_spec((tmp_path / "ds").as_uri() + "/", "RN50", None, enabled=False)
    storage = open_storage(spec.output.uri)
    generate_hash = dataset_task(spec, "reduce", ResourceRef(kind="SyntheticDataset", name="t")).hashes[
        "generate"
    ]
    for shard in range(2):
        write_shard(storage, shard, generate_hash, 1, tmp_path, marker_extra=generation)
    assert run_worker(tmp_path, monkeypatch, spec, "reduce")[0] == 0
    card = storage.read_json("manifest.json")["generation"]
    assert card["real_guidance"] == start
    assert (card["generation_resolution"], card["resolution"]) == (512, 64)
    assert card["resize"] == "Lanczos (antialiased)"
    assert card["generation_resolution_source"] == "pipeline native size"


def test_reduce_with_real_filtering_drops_before_selecting(
    tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = {"uri": (tiny_models.real / "train").as_uri(), "onBadImage": "skip"}
    rf = {"enabled": True, "source": real, "shots": 2, "k": 1, "rule": "nearest", "seed": 3}
    spec, storage = make_dataset(
        tmp_path, monkeypatch, tiny_models.clip.as_uri(), per_class=4, realFiltering=rf
    )
    for shard in range(2):
        assert run_worker(tmp_path, monkeypatch, spec, "filter", shard)[0] == 0
    code, summary = run_worker(tmp_path, monkeypatch, spec, "reduce")
    assert code == 0, summary
    manifest = storage.read_json("manifest.json")
    info = manifest["filter"]["real_filtering"]
    assert info["rule"] == "nearest" and info["k"] == 1 and info["shots"] == 2 and info["seed"] == 3
    assert len(info["shot_uris"]) == 8 and info["dropped"] == manifest["counts"]["real_filtered"] > 0
    for c in manifest["per_class"]:
        survivors = c["generated"] - c["corrupt"] - c["real_filtered"]
        assert c["kept"] == min(3, survivors)  # the CLIP Filter keeps K of what Real Filtering left
    dropped = {
        r["key"] for r in map(json.loads, storage.read_bytes("index/kept.jsonl").decode().splitlines())
    }
    assert len(dropped) == manifest["counts"]["kept"]


def test_real_filtering_uses_the_shots_real_guidance_used(
    tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthrec.api.labels import resolve_labels
    from synthrec.workers.realdata import index_real_data, sample_shots

    real = {"uri": (tiny_models.real / "train").as_uri()}
    rg = {"source": real, "shots": 2, "seed": 5}
    spec, storage = make_dataset(
        tmp_path,
        monkeypatch,
        tiny_models.clip.as_uri(),
        per_class=2,
        real_guidance=rg,
        realFiltering={"enabled": True},
    )
    for shard in range(2):
        assert run_worker(tmp_path, monkeypatch, spec, "filter", shard)[0] == 0
    assert run_worker(tmp_path, monkeypatch, spec, "reduce")[0] == 0
    info = storage.read_json("manifest.json")["filter"]["real_filtering"]
    index = index_real_data(spec.real_guidance.source, resolve_labels(spec.labels), open_storage)
    rg_shots = sorted(img.uri for imgs in sample_shots(index, 2, 5).values() for img in imgs)
    assert info["seed"] == 5 and info["shots"] == 2
    assert info["shot_uris"] == rg_shots


def test_committed_stages_return_at_once_without_importing_torch(tmp_path: Path) -> None:
    """The worker CLI on a shard whose marker carries this spec's hash: done, and torch never loads."""
    import subprocess
    import sys

    spec = dataset_spec((tmp_path / "ds").as_uri() + "/", "RN50")
    storage = open_storage(spec.output.uri)
    hashes = dataset_task(spec, "filter", ResourceRef(kind="SyntheticDataset", name="t")).hashes
    write_marker(storage, DatasetLayout.features_marker(1), spec_hash=hashes["filter"], images=7, corrupt=0)
    task_file = tmp_path / "task.json"
    task_file.write_text(
        dump_task(dataset_task(spec, "filter", ResourceRef(kind="SyntheticDataset", name="t")))
    )
    log = tmp_path / "log"
    code = (
        "import sys\n"
        "from synthrec.workers.__main__ import main\n"
        f"rc = main(['filter', '--task', {str(task_file)!r}, '--shard', '1'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, contract.ENV_TERMINATION_LOG: str(log)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(log.read_text())
    assert summary["skipped"] is True and summary["images"] == 7
