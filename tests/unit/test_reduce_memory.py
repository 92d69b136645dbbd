"""Reduce's memory grows by a bounded number of bytes per image, whatever the number of shards: the stated
MAX_BYTES_PER_IMAGE, so that 4M images reduce in well under 1 GB (bench/reduce_memory.py runs 4M).

Measured with tracemalloc (numpy's buffers are traced too) as the growth of the peak between two datasets
that differ only in their number of shards of the same size: the shards in flight cost the same in both,
so the difference is what reduce keeps per image."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from synthrec import contract
from synthrec.api import SyntheticDatasetSpec
from synthrec.plan import dataset_task
from synthrec.plan.tasks import ResourceRef, dump_task
from synthrec.storage import open_storage
from synthrec.workers import reduce as reduce_stage
from synthrec.workers.reduce_collect import MAX_BYTES_PER_IMAGE
from synthrec.workers.runtime import run_stage
from tests.harness.stages import write_scored_shards

CLASSES = 10
PER_SHARD = 4000


def _reduce_peak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shards: int) -> tuple[int, dict]:
    spec = SyntheticDatasetSpec.model_validate(
        {
            "labels": {"classes": [{"name": f"class {i}"} for i in range(CLASSES)]},
            "generator": {"model": "tiny://sd"},
            "filter": {"keepPerClass": 50, "clip": {"model": "RN50"}},
            "sharding": {"shards": shards},
            "output": {"uri": (tmp_path / f"ds{shards}").as_uri() + "/"},
        }
    )
    task = dataset_task(spec, "reduce", ResourceRef(kind="SyntheticDataset", name="x"))
    storage = open_storage(spec.output.uri)
    write_scored_shards(storage, task.hashes, range(shards), PER_SHARD, CLASSES)
    task_file = tmp_path / f"task{shards}.json"
    task_file.write_text(dump_task(task))
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(tmp_path / "log"))
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert run_stage("reduce", reduce_stage.run, str(task_file), 0) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before, storage.read_json("manifest.json")


def test_reduce_keeps_at_most_the_stated_bytes_per_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small, few = _reduce_peak(tmp_path, monkeypatch, 10)
    large, many = _reduce_peak(tmp_path, monkeypatch, 40)
    assert few["counts"]["generated"] == 10 * PER_SHARD and many["counts"]["generated"] == 40 * PER_SHARD
    assert many["counts"]["kept"] == CLASSES * 50
    per_image = (large - small) / (30 * PER_SHARD)
    print(json.dumps({"peak_10_shards": small, "peak_40_shards": large, "bytes_per_image": per_image}))
    assert 0 < per_image <= MAX_BYTES_PER_IMAGE
