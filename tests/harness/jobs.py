"""A worker Job rendered by the operator's templates, for tests of what worker pods get."""

from __future__ import annotations

from typing import Any

from synthrec import api
from synthrec.operator.jobs import JobShape, Owner, WorkerDefaults, child_labels, render_job

OWNER = Owner("SyntheticDataset", "ds", "team-a", "0b5e0c1e-0000-4000-8000-000000000001")


def render_generate_job(defaults: WorkerDefaults) -> dict[str, Any]:
    """The generate-stage Job of a small S3 dataset, with the given worker defaults."""
    spec = api.SyntheticDatasetSpec.model_validate(
        {
            "labels": {"preset": "tiny"},
            "generator": {"model": "hf://org/sd@main"},
            "output": {"uri": "s3://bucket/ds/"},
            "modelHub": {"endpoint": "https://hf-mirror.example"},
        }
    )
    return render_job(
        OWNER,
        name="ds-generate-a1",
        stage="generate",
        labels=child_labels(OWNER, "generate", 1),
        shape=JobShape(completions=2, parallelism=2, retries_per_index=1, max_failed_indexes=0),
        spec=spec,
        defaults=defaults,
    )
