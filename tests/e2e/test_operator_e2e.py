"""End to end on one machine: the operator (Kopf, in-process) against the API emulator, the fake kubelet
running every Job's pods as real subprocesses (``python -m synthrec.workers STAGE --task ...`` with the
task ConfigMap mounted, env from Secrets, termination messages), tiny random-weight models and S3 on moto.

A SyntheticDataset goes prompts -> generate -> filter -> reduce to Complete with the right counts in status
and its artifacts in the bucket; a RecognitionExperiment referencing it goes to Complete with top-1 per run.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from synthrec.contract.layout import DatasetLayout
from synthrec.storage import open_storage
from tests.harness.operator import (
    DATASETS,
    EXPERIMENTS,
    FAST,
    NS,
    operator_harness,
    record_api_calls,
)
from tests.k8s.runners import SubprocessRunner

SECRET = "s3-creds"


def dataset(tiny: Any, bucket_uri: str, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": "SyntheticDataset",
        "metadata": {"name": "shapes", "namespace": NS},
        "spec": {
            "labels": {"preset": "tiny"},
            "prompts": {"strategy": "basic"},
            "generator": {
                "model": tiny.sd.as_uri(),
                "steps": 2,
                "resolution": 64,
                "imagesPerPrompt": 3,
                "batchSize": 12,
            },
            "filter": {"clip": {"model": tiny.clip.as_uri()}, "keepPerClass": 2, "batchSize": 16},
            "sharding": {"shards": 2, "parallelism": 2, "retriesPerShard": 1},
            "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
            "output": {
                "uri": bucket_uri + "datasets/shapes/",
                "endpoint": endpoint,
                "credentialsSecret": SECRET,
            },
        },
    }


def experiment(tiny: Any, bucket_uri: str, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": "RecognitionExperiment",
        "metadata": {"name": "shapes-ct", "namespace": NS},
        "spec": {
            "labels": {"preset": "tiny"},
            "backbone": {"model": tiny.clip.as_uri()},
            "data": {
                "synthetic": [{"datasetRef": "shapes"}],
                "realTrain": {"uri": (tiny.real / "train").as_uri()},
                "test": {"uri": (tiny.real / "test").as_uri()},
            },
            "method": {"classifierTuning": {"epochs": 2, "batchSizeReal": 4, "batchSizeSynthetic": 8}},
            "matrix": {"shots": [0, 1], "seeds": [1]},
            "execution": {"parallelism": 2},
            "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
            "output": {
                "uri": bucket_uri + "experiments/shapes-ct/",
                "endpoint": endpoint,
                "credentialsSecret": SECRET,
            },
        },
    }


async def test_dataset_then_experiment_with_real_workers(
    k8s_op, tiny_models, s3_bucket, tmp_path: Path
) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NS},
        "data": {
            k: base64.b64encode(b"testing").decode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        },
    }
    await k8s_op.api.create("v1/secrets", secret, NS)
    config = FAST.with_overrides(status_interval=0.2, resync_interval=1.0)
    runner = SubprocessRunner(extra_env={"SYNTHREC_DEVICE": "cpu", "OMP_NUM_THREADS": "1"})
    async with operator_harness(k8s_op, runner, tmp_path, config, kubelet_options={"grace_period": 5.0}) as h:
        await h.create(dataset(tiny_models, s3_bucket.uri, s3_bucket.endpoint))
        await h.create(experiment(tiny_models, s3_bucket.uri, s3_bucket.endpoint))
        ds = await h.wait_phase(DATASETS, "shapes", "Succeeded", timeout=420)

        # counts in status: 4 classes x 1 template x 3 images; K=2 kept per class
        images = ds["images"]
        assert images["generated"] == 12, ds
        assert images["kept"] == 8 and images["kept"] + images["rejected"] == images["generated"]
        assert 0 < images["passed"] <= images["generated"]
        assert ds["stages"]["generate"]["shards"]["succeededIndexes"] == "0-1"
        # artifacts in the bucket, and the digest in status is the manifest's sha256
        root = s3_bucket.uri + "datasets/shapes/"
        storage = open_storage(root, endpoint=s3_bucket.endpoint)
        keys = {info.key for info in storage.list("")}
        layout = DatasetLayout(root)
        for key in (
            "spec.json",
            layout.prompts,
            layout.prompts_marker,
            layout.index,
            layout.manifest,
            layout.shard(0),
            layout.shard(1),
            layout.shard_marker(1),
            layout.features(0),
        ):
            assert key in keys, (key, sorted(keys))
        assert ds["artifacts"]["manifest"] == root + "manifest.json"
        assert storage.sha256(layout.manifest) in ds["artifacts"]["manifestDigest"]

        exp = await h.wait_phase(EXPERIMENTS, "shapes-ct", "Succeeded", timeout=420)
        assert exp["datasets"][0]["digest"] == ds["artifacts"]["manifestDigest"]
        results = {r["name"]: r for r in exp["results"]}
        assert set(results) == {"shots0-seed1", "shots1-seed1"}
        for result in results.values():
            assert result["state"] == "Succeeded" and 0.0 <= result["top1"] <= 100.0, result  # percent
            metrics = json.loads(
                open_storage(
                    result["metrics"].rsplit("/", 1)[0] + "/", endpoint=s3_bucket.endpoint
                ).read_bytes("metrics.json")
            )
            assert metrics["top1"] == result["top1"]
        assert exp["best"]["top1"] == max(r["top1"] for r in results.values())
        assert exp["runs"]["succeeded"] == 2
        assert h.validate_children() == 12  # 4 stages + 2 runs, each a Job and its task ConfigMap
    record_api_calls(k8s_op, "e2e-real-workers")
