"""The operator runs SyntheticDatasets against the emulator, with the FakeKubelet and in-process fake workers:
success with the right counts, shard retries inside an attempt, retry attempts over the missing shards only,
the shard budget (Degraded or Failed), configuration errors, TTL of folded Jobs, and the status patch rate."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.harness.k8s import wait_for
from tests.harness.operator import (
    DATASETS,
    FAST,
    JOBS,
    NS,
    ManualClock,
    dataset_body,
    failure,
    fake_worker,
    operator_harness,
    record_api_calls,
    shard_of,
    stage_of,
)
from tests.k8s.emulator import ApiCall
from tests.k8s.runners import FakeRunner


def failing(stage: str, shards: set[int], *, times: int | None = None, code: int = 1, message: str = "boom"):
    """A fake worker whose ``stage`` fails on ``shards`` (``times`` pods per shard, None = always)."""
    ok = fake_worker(images_per_shard=10)
    tries: dict[int, int] = {}

    def run(job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        shard = shard_of(job, index)
        if stage_of(job) == stage and shard in shards:
            tries[shard] = tries.get(shard, 0) + 1
            if times is None or tries[shard] <= times:
                return code, failure(stage, message, shard=shard)
        return ok(job, index, attempt)

    run.tries = tries  # type: ignore[attr-defined]
    return run


async def test_dataset_reaches_complete_with_counts_and_valid_children(k8s_op, tmp_path: Path) -> None:
    # Generation waits until the test has seen it running: fake workers otherwise finish before a
    # loaded machine lets the operator observe a running pod.
    running_seen = asyncio.Event()
    worker = fake_worker(images_per_shard=10)

    async def gated(job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        if stage_of(job) == "generate":
            await running_seen.wait()
        return worker(job, index, attempt)

    async with operator_harness(k8s_op, FakeRunner(gated), tmp_path) as h:
        await h.create(dataset_body("ds", shards=4))
        running = await wait_for(
            lambda: (
                (c := h.condition(DATASETS, "ds", "Running"))["status"] == "True"
                and h.status(DATASETS, "ds")["stages"]["generate"]["state"] == "Running"
                and c
            ),
            20,
            message="the dataset shows its generation pods running",
        )
        assert running["reason"] == "ShardsRunning" and "pod(s) running" in running["message"]
        assert h.status(DATASETS, "ds")["phase"] == "Running"
        assert _kstatus(h, "ds") == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
        running_seen.set()
        status = await h.wait_phase(DATASETS, "ds", "Succeeded")
        assert _kstatus(h, "ds") == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
        assert status["images"] == {"generated": 40, "passed": 32, "kept": 20, "rejected": 99}
        assert status["artifacts"]["manifestDigest"] == "sha256:" + "ab" * 32
        assert status["artifacts"]["manifest"] == "s3://bucket/ds/manifest.json"
        assert status["artifacts"]["prompts"] == "s3://bucket/ds/prompts.jsonl"
        generate = status["stages"]["generate"]
        assert generate["state"] == "Succeeded" and generate["attempt"] == 1
        assert generate["shards"]["succeeded"] == 4 and generate["shards"]["succeededIndexes"] == "0-3"
        assert status["progress"] == {**status["progress"], "summary": "4/4", "percent": 100, "stage": "done"}
        assert status["observedGeneration"] == 1
        assert all(c["observedGeneration"] == 1 for c in status["conditions"])
        assert h.condition(DATASETS, "ds", "Complete")["reason"] == "AllShardsSucceeded"
        # one Job per stage: O(1) objects per stage, never one per shard
        assert sorted(h.job_names("ds")) == [
            "ds-filter-a1",
            "ds-generate-a1",
            "ds-prompts-a1",
            "ds-reduce-a1",
        ]
        generate_job = h.obj(JOBS, "ds-generate-a1")
        assert generate_job["spec"]["completions"] == 4
        assert (
            generate_job["metadata"]["ownerReferences"][0]["uid"] == h.obj(DATASETS, "ds")["metadata"]["uid"]
        )
        assert h.validate_children() == 8  # 4 Jobs and their 4 task ConfigMaps, kubernetes-validate strict
        # Events on transitions (posted in the background): Job creations, Running, Complete.
        reasons = await wait_for(
            lambda: (r := {e["reason"] for e in h.events("ds")}) >= {"JobCreated", "AllShardsSucceeded"} and r
        )
        assert "ShardsRunning" in reasons
    record_api_calls(k8s_op, "dataset-complete")


def _kstatus(h: Any, name: str) -> dict[str, str]:
    """The kstatus summary conditions Flux, Argo CD and `kubectl wait --for=condition=Ready` read."""
    return {t: h.condition(DATASETS, name, t)["status"] for t in ("Ready", "Reconciling", "Stalled")}


async def test_a_shard_failing_once_is_retried_inside_the_attempt(k8s_op, tmp_path: Path) -> None:
    worker = failing("generate", {2}, times=1)
    async with operator_harness(k8s_op, FakeRunner(worker), tmp_path) as h:
        await h.create(dataset_body("ds", shards=4, sharding={"retriesPerShard": 1}))
        status = await h.wait_phase(DATASETS, "ds", "Succeeded")
        assert worker.tries[2] == 2  # failed once, the Job replaced the pod (backoffLimitPerIndex)
        assert status["images"]["generated"] == 40
        assert status["stages"]["generate"]["attempt"] == 1
        assert "ds-generate-a2" not in h.job_names("ds")
        assert h.condition(DATASETS, "ds", "Degraded") is None
    record_api_calls(k8s_op, "dataset-shard-retry")


async def test_a_shard_failing_beyond_its_retries_under_the_budget_degrades(k8s_op, tmp_path: Path) -> None:
    worker = failing("generate", {2})
    sharding = {"retriesPerShard": 0, "maxAttempts": 2, "maxFailedShards": 1}
    async with operator_harness(k8s_op, FakeRunner(worker), tmp_path) as h:
        await h.create(dataset_body("ds", shards=4, sharding=sharding))
        status = await h.wait_phase(DATASETS, "ds", "Succeeded")
        # attempt 2 ran only the shard without a commit
        retry = h.obj(JOBS, "ds-generate-a2")
        assert retry["spec"]["completions"] == 1
        assert retry["metadata"]["annotations"]["synthrec.io/shards"] == "2"
        task = json.loads(h.created("ConfigMap", "ds-generate-a2")["data"]["task.json"])
        assert (task["shard_ids"], task["attempt"], task["shards"]) == ([2], 2, 4)
        assert worker.tries[2] == 2
        generate = status["stages"]["generate"]["shards"]
        assert (generate["succeededIndexes"], generate["failedIndexes"], generate["failed"]) == (
            "0-1,3",
            "2",
            1,
        )
        assert status["images"]["generated"] == 30
        filt = h.obj(JOBS, "ds-filter-a1")  # filtering covers only the generated shards
        assert filt["metadata"]["annotations"]["synthrec.io/shards"] == "0-1,3"
        degraded = h.condition(DATASETS, "ds", "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "ShardsFailed"
        assert h.condition(DATASETS, "ds", "Complete")["reason"] == "CompletedWithFailedShards"
    record_api_calls(k8s_op, "dataset-shard-budget")


async def test_a_shard_failing_beyond_the_budget_fails_the_dataset(k8s_op, tmp_path: Path) -> None:
    worker = failing("generate", {1}, message="CUDA error: an illegal memory access")
    sharding = {"retriesPerShard": 1, "maxAttempts": 2, "maxFailedShards": 0}
    async with operator_harness(k8s_op, FakeRunner(worker), tmp_path) as h:
        await h.create(dataset_body("ds", shards=3, sharding=sharding))
        status = await h.wait_phase(DATASETS, "ds", "Failed")
        failed = h.condition(DATASETS, "ds", "Failed")
        assert failed["reason"] == "MaxFailedShardsExceeded"
        assert "shard(s) (1) failed after 2 attempt(s)" in failed["message"]
        assert "CUDA error" in failed["message"]  # the worker's own words, from its termination message
        assert worker.tries[1] == 4  # 2 attempts x (1 + retriesPerShard)
        assert h.obj(JOBS, "ds-generate-a2")["metadata"]["annotations"]["synthrec.io/shards"] == "1"
        assert status["stages"]["generate"]["state"] == "Failed"
        assert "ds-filter-a1" not in h.job_names("ds")
        assert status["completionTime"]
    record_api_calls(k8s_op, "dataset-failed")


async def test_a_configuration_error_fails_at_once_without_retries(k8s_op, tmp_path: Path) -> None:
    worker = failing("prompts", {0}, code=3, message="model file:///models/t5 not found")
    async with operator_harness(k8s_op, FakeRunner(worker), tmp_path) as h:
        await h.create(dataset_body("ds", shards=2))
        await h.wait_phase(DATASETS, "ds", "Failed")
        failed = h.condition(DATASETS, "ds", "Failed")
        assert failed["reason"] == "ConfigError"
        assert "model file:///models/t5 not found" in failed["message"]
        assert worker.tries[0] == 1  # podFailurePolicy FailJob: no retry, no second attempt
        assert h.job_names("ds") == ["ds-prompts-a1"]


async def test_finished_jobs_get_their_ttl_only_after_their_results_are_in_status(
    k8s_op, tmp_path: Path
) -> None:
    async with operator_harness(k8s_op, FakeRunner(fake_worker()), tmp_path) as h:
        await h.create(dataset_body("ds", shards=2, runPolicy={"ttlSecondsAfterFinished": 0}))
        status = await h.wait_phase(DATASETS, "ds", "Succeeded")
        await wait_for(lambda: not h.job_names("ds"), 10, message="Jobs expired by their TTL")
        await wait_for(
            lambda: not k8s_op.list_objects("v1/configmaps", NS, label_selector="synthrec.io/resource=ds"),
            10,
            message="task ConfigMaps deleted with their folded Jobs",
        )
        await h.settle(DATASETS, "ds")  # several reconciles later: nothing re-created, counts kept
        assert not h.job_names("ds")
        assert h.status(DATASETS, "ds")["images"] == status["images"]
        creates = k8s_op.operator_calls[ApiCall("create", "batch", "jobs", "", NS)]
        assert creates == 4
    record_api_calls(k8s_op, "dataset-ttl")


async def test_status_is_patched_at_most_once_per_interval(k8s_op, tmp_path: Path) -> None:
    interval = 10.0
    clock = ManualClock()  # the operator's clock: the interval passes when the test says so
    held = asyncio.Event()
    ok = fake_worker()

    async def half_held(job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        if stage_of(job) == "generate" and shard_of(job, index) >= 10:
            await held.wait()
        return ok(job, index, attempt)

    def patches() -> int:
        return k8s_op.operator_calls[ApiCall("patch", "synthrec.io", "syntheticdatasets", "status", NS)]

    def job_done(name: str, count: int) -> bool:
        status = (h.obj(JOBS, name) or {}).get("status") or {}
        return status.get("succeeded", 0) >= count

    config = FAST.with_overrides(status_interval=interval)
    async with operator_harness(k8s_op, FakeRunner(half_held), tmp_path, config, clock=clock) as h:
        await h.create(dataset_body("ds", shards=20, sharding={"parallelism": 5}))
        await wait_for(lambda: patches() == 1, message="the first status, written at once")
        await wait_for(lambda: job_done("ds-generate-a1", 10), message="half of the generate shards")
        await h.settle(DATASETS, "ds")
        assert patches() == 1  # prompts done and 10 shards in: the interval has not passed

        clock.advance(interval)  # the next status goes out once, and it shows the progress made
        await wait_for(lambda: patches() == 2, message="the status after one interval")
        status = h.status(DATASETS, "ds")
        assert status["phase"] == "Running" and status["stages"]["generate"]["shards"]["succeeded"] == 10
        await h.settle(DATASETS, "ds")
        assert patches() == 2

        held.set()
        await wait_for(lambda: job_done("ds-reduce-a1", 1), 20, message="every stage done")
        await h.settle(DATASETS, "ds")
        assert patches() == 2  # the rest of the run happened without a status patch
        for _ in range(3):  # its results go out within the next intervals, one patch each at most
            before = patches()
            clock.advance(interval)
            await h.settle(DATASETS, "ds")
            assert patches() <= before + 1
            if h.status(DATASETS, "ds").get("phase") == "Succeeded":
                break
        assert h.status(DATASETS, "ds")["phase"] == "Succeeded"
