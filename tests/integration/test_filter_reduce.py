"""filter + reduce stages end to end on a small dataset written here (a WebDataset shard of drawn images
with the documented json fields and a generate marker), with the tiny open_clip model."""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from synthrec import contract
from synthrec.api import SyntheticDatasetSpec
from synthrec.layout import DatasetLayout
from synthrec.plan import dataset_task
from synthrec.storage import commit_file, open_storage, read_marker, write_marker
from synthrec.tasks import ResourceRef, dump_task
from synthrec.workers import filter as filter_stage
from synthrec.workers import reduce as reduce_stage
from synthrec.workers.runtime import run_stage
from synthrec.workers.shards import read_features, soft_targets

COLOURS = [(220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 210, 40)]


def drawn_jpeg(cls: int, rng: random.Random) -> bytes:
    """A 64 px picture of the tiny class ``cls`` (colour + shape) on a light background."""
    img = Image.new("RGB", (64, 64), tuple(rng.randint(150, 235) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    s = rng.randint(20, 40)
    x, y = rng.randint(2, 62 - s), rng.randint(2, 62 - s)
    box = (x, y, x + s, y + s)
    [
        draw.ellipse,
        draw.rectangle,
        lambda b, fill: draw.polygon([(x + s / 2, y), (x, y + s), (x + s, y + s)], fill=fill),
        lambda b, fill: draw.rectangle((x + s // 3, y, x + 2 * s // 3, y + s), fill=fill),
    ][cls](box, fill=COLOURS[cls])
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def write_shard(
    storage: Any,
    shard: int,
    generate_hash: str,
    per_class: int,
    scratch: Path,
    *,
    seed: int = 0,
    corrupt: set[str] = frozenset(),
) -> list[str]:
    """Write shards/gen-NNNNN.tar (+ marker) the way the generate stage does; returns the keys."""
    rng = random.Random(seed * 1000 + shard)
    keys = []
    path = scratch / f"shard-{shard}.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for cls in range(4):
            for i in range(per_class):
                key = f"c{cls:05d}-p{shard:05d}-i{i:05d}"
                jpg = drawn_jpeg(cls, rng)
                if key in corrupt:
                    jpg = jpg[: len(jpg) // 3]  # truncated JPEG
                meta = {
                    "class": cls,
                    "class_name": ["red circle", "green square", "blue triangle", "yellow cross"][cls],
                    "prompt": "a photo",
                    "seed": i,
                    "item": i,
                    "real_source": None,
                    "model": "tiny://sd",
                    "revision": "r0",
                }
                for ext, data in (("jpg", jpg), ("json", json.dumps(meta).encode()), ("cls", b"%d" % cls)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                keys.append(key)
    commit_file(
        storage,
        path,
        DatasetLayout.shard(shard),
        DatasetLayout.shard_marker(shard),
        spec_hash=generate_hash,
        count=len(keys),
    )
    path.unlink()
    return keys


def dataset_spec(
    out_uri: str, clip_uri: str, real_guidance: dict[str, Any] | None = None, **filter_kw: Any
) -> SyntheticDatasetSpec:
    body = {
        "labels": {"preset": "tiny"},
        "generator": {"model": "tiny://sd", "resolution": 64},
        "filter": {"clip": {"model": clip_uri}, "keepPerClass": 3, "batchSize": 8, **filter_kw},
        "sharding": {"shards": 2},
        "output": {"uri": out_uri},
    }
    if real_guidance is not None:
        body["realGuidance"] = real_guidance
    return SyntheticDatasetSpec.model_validate(body)


def run_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: SyntheticDatasetSpec, stage: str, shard: int = 0
) -> tuple[int, dict[str, Any]]:
    task = dataset_task(spec, stage, ResourceRef(kind="SyntheticDataset", name="t"))  # type: ignore[arg-type]
    task_file = tmp_path / f"{stage}-task.json"
    task_file.write_text(dump_task(task))
    log = tmp_path / f"{stage}-{shard}.log"
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(log))
    module = {"filter": filter_stage, "reduce": reduce_stage}[stage]
    code = run_stage(stage, module.run, str(task_file), shard)
    return code, json.loads(log.read_text())


def make_dataset(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clip_uri: str,
    per_class: int = 5,
    corrupt: set[str] = frozenset(),
    out_uri: str | None = None,
    real_guidance: dict[str, Any] | None = None,
    **filter_kw: Any,
) -> tuple[SyntheticDatasetSpec, Any]:
    """A 2-shard dataset of the tiny label space with ``per_class`` images per class and shard."""
    if out_uri is None:
        (tmp_path / "ds").mkdir()
        out_uri = (tmp_path / "ds").as_uri() + "/"
    spec = dataset_spec(out_uri, clip_uri, real_guidance, **filter_kw)
    storage = open_storage(spec.output.uri)
    task = dataset_task(spec, "filter", ResourceRef(kind="SyntheticDataset", name="t"))
    for shard in range(2):
        write_shard(storage, shard, task.hashes["generate"], per_class, tmp_path, corrupt=corrupt)
    return spec, storage


def test_filter_and_reduce_end_to_end(tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = "c00002-p00001-i00003"
    spec, storage = make_dataset(tmp_path, monkeypatch, tiny_models.clip.as_uri(), corrupt={bad})
    hashes = dataset_task(spec, "filter", ResourceRef(kind="SyntheticDataset", name="t")).hashes
    for shard in range(2):
        code, summary = run_worker(tmp_path, monkeypatch, spec, "filter", shard)
        assert code == 0, summary
        assert summary["images"] == (20 if shard == 0 else 19) and summary["skipped"] is False
    assert summary["corrupt"] == 1

    # the features file: one row per decodable image, logits = 100 * cos, probs = softmax(logits)
    local = tmp_path / "f1.safetensors"
    storage.download_file(DatasetLayout.features(1), local)
    feats = read_features(local)
    assert feats.features.shape == (19, 32) and str(feats.features.dtype) == "float16"
    assert feats.logits.shape == feats.probs.shape == (19, 4)
    assert bad not in feats.keys and feats.corrupt == [
        {"key": bad, "class": 2, "reason": "undecodable image"}
    ]
    assert abs(float(feats.meta["logit_scale"]) - 100.0) < 1e-3
    assert read_marker(storage, DatasetLayout.features_marker(1))["spec_hash"] == hashes["filter"]

    # a second run of a committed shard returns at once
    code, again = run_worker(tmp_path, monkeypatch, spec, "filter", 1)
    assert code == 0 and again["skipped"] is True

    code, summary = run_worker(tmp_path, monkeypatch, spec, "reduce")
    assert code == 0, summary
    assert summary["generated"] == 40 and summary["kept"] == 12 and summary["rejected"] == 28
    manifest_raw = storage.read_bytes("manifest.json")
    import hashlib

    assert summary["digest"] == hashlib.sha256(manifest_raw).hexdigest()
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
    # the pointer gives the soft target softmax(logits / T) and the score is p(class)
    storage.download_file(row["features"], local)
    f = read_features(local)
    assert f.keys[row["row"]] == row["key"]
    assert abs(float(f.probs[row["row"], row["class"]]) - row["score"]) < 1e-5
    target = soft_targets(f.logits[row["row"]], manifest["soft_targets"]["temperature"])
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
    assert code == 0 and again["digest"] == summary["digest"] and again["skipped"] is True


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
    assert summary["error"] == "data" and "written by another spec" in summary["message"]
    storage.delete(DatasetLayout.shard_marker(1))
    code, summary = run_worker(tmp_path, monkeypatch, spec, "filter", 1)
    assert code == contract.EXIT_DATA_ERROR and "has no commit marker" in summary["message"]


def test_filter_detects_a_damaged_tar(tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, storage = make_dataset(tmp_path, monkeypatch, tiny_models.clip.as_uri(), per_class=1)
    raw = bytearray(storage.read_bytes(DatasetLayout.shard(0)))
    raw[700] ^= 0xFF
    storage.write_bytes(DatasetLayout.shard(0), bytes(raw))
    code, summary = run_worker(tmp_path, monkeypatch, spec, "filter", 0)
    assert code == contract.EXIT_DATA_ERROR and "does not match the sha256" in summary["message"]


def test_reduce_with_the_filter_disabled_keeps_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, storage = make_dataset(tmp_path, monkeypatch, "RN50", per_class=2, enabled=False)
    code, summary = run_worker(tmp_path, monkeypatch, spec, "reduce")
    assert code == 0, summary
    assert summary["generated"] == summary["kept"] == summary["passed"] == 16 and summary["rejected"] == 0
    manifest = storage.read_json("manifest.json")
    assert (
        manifest["filter"]["enabled"] is False
        and "every generated image is kept" in manifest["filter"]["note"]
    )
    assert manifest["soft_targets"] is None
    row = json.loads(storage.read_bytes("index/kept.jsonl").decode().splitlines()[0])
    assert row["score"] is None and row["passed"] is None and "features" not in row


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
    from synthrec.labels import resolve_labels
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
