"""The operator runs RecognitionExperiments: it waits for referenced datasets, pins their manifest digest,
runs the matrix with bounded parallelism and folds top-1 per run into status; a referenced dataset that is
deleted or fails while the experiment waits fails the experiment with a clear reason."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.harness.k8s import wait_for
from tests.harness.operator import (
    DATASETS,
    EXPERIMENTS,
    NS,
    dataset_body,
    experiment_body,
    failure,
    fake_worker,
    operator_harness,
    record_api_calls,
    stage_of,
)
from tests.k8s.runners import FakeRunner

DIGEST = "sha256:" + "ab" * 32


class Concurrency:
    """A fake worker that tracks how many train runs are in flight at once: each run waits until a second
    one runs beside it (a barrier of 2), so the test sees that the parallelism is used, not only bounded."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.pair = asyncio.Barrier(2)
        self.ok = fake_worker(top1=lambda job: {"0": 0.41, "1": 0.83}[self.shots(job)])

    @staticmethod
    def shots(job: dict[str, Any]) -> str:
        return job["metadata"]["labels"]["synthrec.io/run"].split("-")[0].removeprefix("shots")

    async def __call__(self, job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        if stage_of(job) != "train":
            return self.ok(job, index, attempt)
        self.now += 1
        self.most = max(self.most, self.now)
        await self.pair.wait()
        self.now -= 1
        return self.ok(job, index, attempt)


async def test_experiment_waits_for_its_dataset_then_reports_top1_per_run(k8s_op, tmp_path: Path) -> None:
    worker = Concurrency()
    async with operator_harness(k8s_op, FakeRunner(worker), tmp_path) as h:
        await h.create(experiment_body("exp", dataset="ds"))  # GitOps order: the dataset comes later
        waiting = await h.wait_condition(EXPERIMENTS, "exp", "DatasetReady", "False")
        assert waiting["reason"] == "DatasetNotFound" and "ds" in waiting["message"]
        assert not h.job_names("exp")

        await h.create(dataset_body("ds", shards=2))
        status = await h.wait_phase(EXPERIMENTS, "exp", "Succeeded", timeout=30)
        assert status["datasets"] == [{"name": "ds", "uri": "s3://bucket/ds/", "digest": DIGEST}]
        assert h.condition(EXPERIMENTS, "exp", "DatasetReady")["reason"] == "DigestResolved"
        results = {r["name"]: r for r in status["results"]}
        assert set(results) == {"shots0-seed1", "shots0-seed2", "shots1-seed1", "shots1-seed2"}
        assert results["shots1-seed2"]["top1"] == 0.83 and results["shots0-seed1"]["top1"] == 0.41
        assert results["shots0-seed1"]["zeroShotTop1"] == 0.25
        assert all(r["state"] == "Succeeded" for r in results.values())
        assert status["runs"] == {"total": 4, "succeeded": 4, "failed": 0, "running": 0, "pending": 0}
        assert status["best"]["top1"] == 0.83 and status["best"]["name"].startswith("shots1")
        assert status["progress"]["summary"] == "4/4"
        assert worker.most == 2  # execution.parallelism, used and not exceeded
        # every run trains on the pinned dataset
        task = json.loads(h.created("ConfigMap", "exp-r3-a1")["data"]["task.json"])
        assert task["run"]["synthetic"] == [{"dataset_ref": "ds", "uri": None}]
        assert task["datasets"] == [
            {"name": "ds", "uri": "s3://bucket/ds/", "digest": DIGEST, "endpoint": None, "region": None}
        ]
        assert (task["run"]["shots"], task["run"]["seed"]) == (1, 2)
        assert h.validate_children() == 16  # 4 dataset stages + 4 runs, each a Job and a ConfigMap
    record_api_calls(k8s_op, "experiment-complete")


async def test_a_dataset_deleted_while_an_experiment_waits_fails_it(k8s_op, tmp_path: Path) -> None:
    hold = asyncio.Event()
    ok = fake_worker()

    async def slow(job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        await hold.wait()
        return ok(job, index, attempt)

    async with operator_harness(k8s_op, FakeRunner(slow), tmp_path) as h:
        await h.create(dataset_body("ds", shards=2))
        await h.create(experiment_body("exp", dataset="ds"))
        waiting = await h.wait_condition(EXPERIMENTS, "exp", "DatasetReady", "False")
        await wait_for(lambda: h.status(EXPERIMENTS, "exp").get("datasets"), 10)  # seen, not pinned yet
        assert waiting["reason"] == "WaitingForDataset"
        await k8s_op.api.delete(DATASETS, "ds", NS)
        await h.wait_phase(EXPERIMENTS, "exp", "Failed")
        failed = h.condition(EXPERIMENTS, "exp", "Failed")
        assert failed["reason"] == "DatasetDeleted"
        assert "SyntheticDataset ds was deleted while this experiment waited for it" in failed["message"]
        assert not h.job_names("exp")
        hold.set()
    record_api_calls(k8s_op, "experiment-dataset-deleted")


async def test_a_failed_dataset_fails_the_waiting_experiment(k8s_op, tmp_path: Path) -> None:
    ok = fake_worker()

    def broken(job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        if stage_of(job) == "prompts":
            return 3, failure("prompts", "unknown preset", error="config")
        return ok(job, index, attempt)

    async with operator_harness(k8s_op, FakeRunner(broken), tmp_path) as h:
        await h.create(dataset_body("ds", shards=2))
        await h.create(experiment_body("exp", dataset="ds"))
        await h.wait_phase(EXPERIMENTS, "exp", "Failed")
        failed = h.condition(EXPERIMENTS, "exp", "Failed")
        assert failed["reason"] == "DatasetFailed" and "unknown preset" in failed["message"]


async def test_failed_runs_complete_the_experiment_degraded(k8s_op, tmp_path: Path) -> None:
    ok = fake_worker(top1=lambda job: 0.5)

    def flaky(job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        if stage_of(job) == "train" and job["metadata"]["labels"]["synthrec.io/run"].startswith("shots1"):
            return 1, failure("train", "out of memory")
        return ok(job, index, attempt)

    async with operator_harness(k8s_op, FakeRunner(flaky), tmp_path) as h:
        await h.create(experiment_body("exp", dataset=None, execution={"retriesPerRun": 1, "parallelism": 4}))
        status = await h.wait_phase(EXPERIMENTS, "exp", "Succeeded")
        assert status["runs"]["succeeded"] == 2 and status["runs"]["failed"] == 2
        assert h.condition(EXPERIMENTS, "exp", "Complete")["reason"] == "RunsCompleted"
        degraded = h.condition(EXPERIMENTS, "exp", "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "RunsFailed"
        assert h.condition(EXPERIMENTS, "exp", "DatasetReady")["reason"] == "NoDatasetReferences"
