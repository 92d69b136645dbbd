"""/dev/shm for image loaders, sized once for the worker (batches kept ready) and the operator (the pod's
volume): uint8 batches x workers x prefetch, from the stage's batch size, cpu and model."""

from __future__ import annotations

import pytest

from synthrec import api
from synthrec.plan.shm import (
    fit_prefetch,
    image_side,
    loader_shm_bytes,
    loader_workers,
    parse_quantity,
    stage_shared_memory,
)


def spec(**resources: object) -> api.SyntheticDatasetSpec:
    return api.SyntheticDatasetSpec.model_validate(
        {
            "labels": {"preset": "tiny"},
            "generator": {"model": "file:///m"},
            "filter": {"clip": {"model": "ViT-L-14-336"}, "batchSize": 256},
            "resources": {"cpu": "8", "memory": "64Gi", **resources},
            "output": {"uri": "s3://bucket/ds/"},
        }
    )


def test_quantities_and_the_model_input_side() -> None:
    assert parse_quantity("16Gi") == 16 * 2**30 and parse_quantity("500m") == 0.5
    assert parse_quantity("2e9") == 2e9 and parse_quantity("4") == 4
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("lots")
    assert image_side("ViT-L-14-336") == 336 and image_side("RN50") == 224
    assert image_side("hf://timm/ViT-SO400M-14-SigLIP-384") == 384


def test_auto_sizes_the_volume_from_the_batch_workers_and_input_side() -> None:
    s = spec()
    assert s.resources.shared_memory == "auto"  # the default
    need = loader_shm_bytes(256, loader_workers(8), 336)  # 7 workers x 2 batches x 256 x 3 x 336 x 336
    assert need == 7 * 2 * 256 * 3 * 336 * 336
    expected = -(-(need * 5 // 4 + 64 * 2**20) // 2**20)
    assert stage_shared_memory(s, "filter") == f"{expected}Mi"
    assert stage_shared_memory(s, "generate") == "256Mi"  # no image loader
    # the volume counts against the memory limit: at most half of it
    assert stage_shared_memory(spec(memory="2Gi"), "filter") == "1024Mi"
    # an explicit size is kept, null mounts none
    assert stage_shared_memory(spec(sharedMemory="8Gi"), "filter") == "8Gi"
    assert stage_shared_memory(spec(sharedMemory=None), "filter") is None


def test_the_worker_fits_its_prefetch_to_what_it_finds() -> None:
    one = 256 * 3 * 224 * 224
    assert fit_prefetch(256, 7, 224, 2 * 7 * 2 * one) == (7, 2)
    assert fit_prefetch(256, 7, 224, 2 * 7 * one) == (7, 1)
    assert fit_prefetch(256, 7, 224, 2 * 3 * one) == (3, 1)  # fewer workers before none
    assert fit_prefetch(256, 7, 224, one) == (0, 0)
