"""Running the dataset stages in tests without the generate stage: a small dataset of drawn images written
the way the generate stage writes it, and a stage run in this process with its typed summary back."""

from __future__ import annotations

import io
import json
import random
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from synthrec import contract
from synthrec.api import SyntheticDatasetSpec
from synthrec.contract.layout import DatasetLayout
from synthrec.plan import dataset_task
from synthrec.plan.tasks import ResourceRef, dump_task
from synthrec.storage import commit_file, open_storage
from synthrec.workers import filter as filter_stage
from synthrec.workers import reduce as reduce_stage
from synthrec.workers.runtime import run_stage

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
    marker_extra: dict[str, Any] | None = None,
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
        **(marker_extra or {}),
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


def run_task(
    task: Any, folder: Path, monkeypatch: pytest.MonkeyPatch, shard: int | None = None
) -> tuple[int, Any]:
    """Run any task in this process under the worker contract (``python -m synthrec.workers`` without the
    process); returns the exit code and the typed termination summary."""
    import importlib
    import signal

    from synthrec.workers.__main__ import STAGES

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task.stage}-{shard}-task.json"
    path.write_text(dump_task(task))
    log = folder / f"{task.stage}-{shard}.termination-log"
    log.write_text("")
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(log))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = run_stage(task.stage, importlib.import_module(STAGES[task.stage]).run, str(path), shard)
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = contract.parse_summary(log.read_text())
    assert summary is not None, log.read_text()
    return code, summary


def run_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: SyntheticDatasetSpec, stage: str, shard: int = 0
) -> tuple[int, Any]:
    """Run a stage in this process; returns the exit code and the typed termination summary."""
    task = dataset_task(spec, stage, ResourceRef(kind="SyntheticDataset", name="t"))  # type: ignore[arg-type]
    task_file = tmp_path / f"{stage}-task.json"
    task_file.write_text(dump_task(task))
    log = tmp_path / f"{stage}-{shard}.log"
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(log))
    module = {"filter": filter_stage, "reduce": reduce_stage}[stage]
    code = run_stage(stage, module.run, str(task_file), shard)
    summary = contract.parse_summary(log.read_text())
    assert summary is not None, log.read_text()
    return code, summary


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


def write_scored_shards(
    storage: Any,
    hashes: dict[str, str],
    shards: range,
    per_shard: int,
    classes: int,
    *,
    dim: int = 4,
    seed: int = 0,
) -> None:
    """Features files (format 2) with random logits, and their generate and filter markers, for
    ``per_shard`` images of ``classes`` classes in each shard: what reduce reads, without any model."""
    import numpy as np

    from synthrec.storage import write_marker
    from synthrec.workers.shards import FEATURES_FORMAT, write_features

    for shard in shards:
        rng = np.random.default_rng(seed * 100_003 + shard)
        cls = rng.integers(0, classes, per_shard)
        local = Path(tempfile.mkdtemp()) / "f.safetensors"
        write_features(
            local,
            {
                "features": rng.standard_normal((per_shard, dim)).astype(np.float16),
                "logits": (rng.standard_normal((per_shard, classes)) * 3).astype(np.float16),
                "class_index": cls.astype(np.int64),
            },
            {
                "format": FEATURES_FORMAT,
                "keys": [f"c{c:05d}-p{shard:05d}-i{i:05d}" for i, c in enumerate(cls.tolist())],
                "corrupt": [],
                "classes": str(classes),
                "logit_scale": "100.0",
                "clip": {"model": "RN50", "revision": "r"},
                "generator": {"model": "m", "revision": "g"},
            },
        )
        commit_file(
            storage,
            local,
            DatasetLayout.features(shard),
            DatasetLayout.features_marker(shard),
            spec_hash=hashes["filter"],
        )
        local.unlink()
        write_marker(storage, DatasetLayout.shard_marker(shard), spec_hash=hashes["generate"], sha256="x")
