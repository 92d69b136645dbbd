"""Lifecycle of a SyntheticDataset under the operator: restart mid-run, suspend and resume, deletion (cascade;
onDelete: Delete is in test_operator_deletion.py), an invalid spec, pods stuck Pending (unschedulable, image
pulls, Kueue quota), and namespaced mode."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import yaml

from synthrec.operator.settings import FINALIZER
from synthrec.storage import open_storage
from tests.harness.k8s import free_port, running_operator, wait_for
from tests.harness.operator import (
    CONFIGMAPS,
    DATASETS,
    FAST,
    JOBS,
    NS,
    PODS,
    ROOT,
    dataset_body,
    fake_worker,
    operator_harness,
    operator_in_thread,
    record_api_calls,
    shard_of,
    stage_of,
)
from tests.k8s.client import ApiError
from tests.k8s.emulator import ApiCall
from tests.k8s.runners import FakeRunner


class Gate:
    """A fake worker whose generate shards in ``held`` wait until ``release()``."""

    def __init__(self, held: set[int]) -> None:
        self.held = held
        self.open = asyncio.Event()
        self.started: set[int] = set()
        self.ok = fake_worker(images_per_shard=10)

    def release(self) -> None:
        self.open.set()

    async def __call__(self, job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        shard = shard_of(job, index)
        if stage_of(job) == "generate" and shard in self.held:
            self.started.add(shard)
            await self.open.wait()
        return self.ok(job, index, attempt)


async def test_operator_restarted_mid_run_converges_without_duplicate_jobs(k8s_op, tmp_path: Path) -> None:
    gate = Gate(held={0, 1, 2, 3})
    async with operator_harness(k8s_op, FakeRunner(gate), tmp_path, start_operator=False) as h:
        async with operator_in_thread(FAST):
            await h.create(dataset_body("ds", shards=4))
            await wait_for(lambda: gate.started == {0, 1, 2, 3}, 15, message="generate shards running")
            await h.wait_condition(DATASETS, "ds", "Running")
        # The operator is gone (task cancelled, as on a crash); the shards finish meanwhile.
        gate.release()
        await wait_for(lambda: "Complete" in str(h.obj(JOBS, "ds-generate-a1").get("status")), 10)
        async with operator_in_thread(FAST):
            status = await h.wait_phase(DATASETS, "ds", "Succeeded")
        assert status["images"]["generated"] == 40  # each shard counted once, across the restart
        assert sorted(h.job_names("ds")) == [
            "ds-filter-a1",
            "ds-generate-a1",
            "ds-prompts-a1",
            "ds-reduce-a1",
        ]
        assert k8s_op.operator_calls[ApiCall("create", "batch", "jobs", "", NS)] == 4
        assert h.validate_children() == 8
    record_api_calls(k8s_op, "operator-restart")


async def test_suspend_deletes_the_attempt_and_resume_runs_only_the_missing_shards(
    k8s_op, tmp_path: Path
) -> None:
    gate = Gate(held={2, 3})
    async with operator_harness(k8s_op, FakeRunner(gate), tmp_path) as h:
        await h.create(dataset_body("ds", shards=4))
        await wait_for(lambda: gate.started == {2, 3}, 15, message="held shards running")
        await wait_for(
            lambda: h.status(DATASETS, "ds")["stages"]["generate"]["shards"]["succeededIndexes"] == "0-1"
        )
        await k8s_op.api.patch(DATASETS, "ds", {"spec": {"runPolicy": {"suspend": True}}}, NS)
        await h.wait_phase(DATASETS, "ds", "Suspended")
        await wait_for(lambda: h.obj(JOBS, "ds-generate-a1") is None, 10, message="attempt Job deleted")
        await wait_for(
            lambda: (
                not [
                    p
                    for p in k8s_op.list_objects(PODS, NS)
                    if "generate" in p["metadata"]["name"] and p["status"].get("phase") == "Running"
                ]
            ),
            10,
            message="pods stopped",
        )
        suspended = h.condition(DATASETS, "ds", "Suspended")
        assert suspended["reason"] == "UserSuspended"
        assert h.condition(DATASETS, "ds", "Running")["status"] == "False"
        await h.settle(DATASETS, "ds")
        assert h.obj(JOBS, "ds-generate-a1") is None  # stays stopped

        gate.release()
        await k8s_op.api.patch(DATASETS, "ds", {"spec": {"runPolicy": {"suspend": False}}}, NS)
        status = await h.wait_phase(DATASETS, "ds", "Succeeded")
        # the same attempt, re-created for shards 2-3 only
        recreated = [
            b for b in k8s_op.created if b["kind"] == "Job" and b["metadata"]["name"] == "ds-generate-a1"
        ]
        assert len(recreated) == 2
        assert recreated[1]["metadata"]["annotations"]["synthrec.io/shards"] == "2-3"
        assert recreated[1]["spec"]["completions"] == 2
        assert status["images"]["generated"] == 40
        assert h.condition(DATASETS, "ds", "Suspended")["status"] == "False"
        assert h.validate_children() >= 10
    record_api_calls(k8s_op, "suspend-resume")


async def test_deleting_a_dataset_cascades_and_keeps_artifacts_by_default(
    k8s_op, s3_bucket, tmp_path: Path
) -> None:
    gate = Gate(held={0, 1})
    output = open_storage(s3_bucket.uri + "ds/")
    output.write_bytes("spec.json", b"{}")
    async with operator_harness(k8s_op, FakeRunner(gate), tmp_path) as h:
        await h.create(dataset_body("ds", shards=2, output={"uri": output.uri}))
        await wait_for(lambda: gate.started == {0, 1}, 15)
        assert FINALIZER not in (h.obj(DATASETS, "ds")["metadata"].get("finalizers") or [])
        await k8s_op.api.delete(DATASETS, "ds", NS)
        await wait_for(lambda: h.obj(DATASETS, "ds") is None, 5, message="deleted without waiting for anyone")
        await wait_for(lambda: not h.job_names("ds"), 10, message="Jobs garbage-collected")
        await wait_for(
            lambda: not k8s_op.list_objects(CONFIGMAPS, NS, label_selector="synthrec.io/resource=ds"), 10
        )
        await wait_for(
            lambda: not k8s_op.list_objects(PODS, NS, label_selector="synthrec.io/resource=ds"), 10
        )
        assert output.exists("spec.json")  # artifacts are retained
        gate.release()
    record_api_calls(k8s_op, "delete-cascade")


@pytest.mark.parametrize(
    ("spec", "api_answer", "message"),
    [
        (
            {"sharding": {"shards": 2, "parallelism": 5}},
            'spec.sharding.parallelism: Invalid value: "object": '
            "sharding.parallelism must not exceed sharding.shards",
            "sharding.parallelism must not exceed sharding.shards",
        ),
        (
            {"generator": {"model": "file:///models/sd", "steps": 0}},
            "spec.generator.steps: Invalid value: 0: spec.generator.steps in body should be greater than "
            "or equal to 1",
            "spec.generator.steps",
        ),
        ({"bogusField": 1}, None, "spec.bogusField: Extra inputs are not permitted"),
    ],
)
async def test_an_invalid_spec_fails_with_invalid_spec_and_creates_nothing(
    k8s_op, tmp_path: Path, spec: dict[str, Any], api_answer: str | None, message: str
) -> None:
    async with operator_harness(k8s_op, FakeRunner(fake_worker()), tmp_path) as h:
        # With synthrec's CRDs the API server itself rejects the spec, naming the field; an unknown
        # field is pruned (with a warning) and the rest is valid.
        if api_answer is not None:
            with pytest.raises(ApiError) as rejected:
                await h.create(dataset_body("ds", **spec))
            assert rejected.value.status == 422 and api_answer in rejected.value.message
        # A cluster whose CRD is older or looser than the operator lets it through: the operator fails it.
        k8s_op.declare_crd_manifest(loose_crd(DATASETS))
        await h.create(dataset_body("ds", **spec))
        await h.wait_phase(DATASETS, "ds", "Failed")
        failed = h.condition(DATASETS, "ds", "Failed")
        assert failed["reason"] == "InvalidSpec" and message in failed["message"], failed
        assert h.condition(DATASETS, "ds", "Accepted")["status"] == "False"
        ready, stalled = h.condition(DATASETS, "ds", "Ready"), h.condition(DATASETS, "ds", "Stalled")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert (stalled["status"], stalled["reason"]) == ("True", "InvalidSpec")
        await h.settle(DATASETS, "ds")
        assert not h.job_names("ds")
        assert not k8s_op.created
    record_api_calls(k8s_op, "invalid-spec")


def loose_crd(resource: str) -> dict[str, Any]:
    """synthrec's CRD for ``resource`` with a spec schema that accepts anything (an outdated CRD)."""
    plural = resource.rsplit("/", 1)[-1]
    crd = yaml.safe_load((ROOT / "crds" / f"synthrec.io_{plural}.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return crd


async def test_pods_stuck_pending_show_the_schedulers_message_not_running(k8s_op, tmp_path: Path) -> None:
    async with operator_harness(k8s_op, FakeRunner(fake_worker()), tmp_path) as h:
        h.kubelet.block_scheduling("ds-prompts-a1")
        await h.create(dataset_body("ds", shards=2))
        queued = await wait_for(
            lambda: (c := h.condition(DATASETS, "ds", "Queued")) and c["reason"] == "Unschedulable" and c, 10
        )
        assert "Insufficient nvidia.com/gpu" in queued["message"]
        assert h.status(DATASETS, "ds")["phase"] == "Queued"
        running = h.condition(DATASETS, "ds", "Running")
        assert running is None or running["status"] == "False"

        h.kubelet.unblock("ds-prompts-a1")
        h.kubelet.fail_image_pull("ds-generate-a1", message='Back-off pulling image "ghcr.io/x/y:bad"')
        degraded = await h.wait_condition(DATASETS, "ds", "Degraded")
        assert degraded["reason"] == "ImagePullBackOff" and "Back-off pulling image" in degraded["message"]
        assert h.condition(DATASETS, "ds", "Queued")["reason"] == "ImagePullBackOff"

        h.kubelet.unblock("ds-generate-a1")
        await h.wait_phase(DATASETS, "ds", "Succeeded")
        assert h.condition(DATASETS, "ds", "Degraded")["status"] == "False"


async def test_a_job_held_by_kueue_shows_waiting_for_quota(k8s_op, tmp_path: Path) -> None:
    async with operator_harness(k8s_op, FakeRunner(fake_worker()), tmp_path) as h:
        h.kubelet.block_scheduling("ds-prompts-a1")
        await h.create(dataset_body("ds", shards=2, scheduling={"queueName": "team-a"}))
        await wait_for(lambda: h.obj(JOBS, "ds-prompts-a1"), 10)
        assert h.obj(JOBS, "ds-prompts-a1")["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        # What Kueue does with a Job that has no quota yet: suspend it.
        await k8s_op.api.patch(JOBS, "ds-prompts-a1", {"spec": {"suspend": True}}, NS)
        queued = await wait_for(
            lambda: (c := h.condition(DATASETS, "ds", "Queued")) and c["reason"] == "WaitingForQuota" and c,
            10,
        )
        assert "waiting for Kueue to admit it" in queued["message"]
        h.kubelet.unblock("ds-prompts-a1")
        await k8s_op.api.patch(JOBS, "ds-prompts-a1", {"spec": {"suspend": False}}, NS)  # admitted
        await h.wait_phase(DATASETS, "ds", "Succeeded")


async def test_namespaced_mode_serves_only_its_namespaces(k8s_op, tmp_path: Path) -> None:
    from synthrec.operator.handlers import register

    await k8s_op.api.create("v1/namespaces", {"metadata": {"name": "other"}})
    config = FAST.with_overrides(namespaces=("default",))
    reconcilers = []
    setup = lambda registry: reconcilers.append(register(registry, config, login=False))  # noqa: E731
    async with (
        operator_harness(k8s_op, FakeRunner(fake_worker()), tmp_path, start_operator=False) as h,
        running_operator(setup, namespaces=["default"]),
    ):
        h.reconciler = reconcilers[0]
        await h.create(dataset_body("ds", shards=2))
        other = dataset_body("ds2", shards=2)
        other["metadata"]["namespace"] = "other"
        await k8s_op.api.create(DATASETS, other, "other")
        await h.wait_phase(DATASETS, "ds", "Succeeded")
        await h.settle(DATASETS, "ds")  # the watch of "other" would have shown ds2 by now
        assert not k8s_op.get_object(DATASETS, "ds2", "other").get("status")
        assert ("other", "SyntheticDataset", "ds2") not in h.reconciler.passes
    cluster_calls = {c for c in k8s_op.operator_calls if c.namespace is None}
    assert not cluster_calls, cluster_calls  # no cluster-wide list/watch: a Role is enough
    record_api_calls(k8s_op, "namespaced")


async def test_a_job_the_api_server_rejects_fails_the_dataset_instead_of_retrying_for_ever(
    k8s_op, tmp_path: Path
) -> None:
    denied = {
        "kind": "Status",
        "status": "Failure",
        "code": 422,
        "message": "admission webhook denied: no GPUs",
    }
    k8s_op["post", kmock.resource("batch/v1/jobs")] << 422 << denied
    async with operator_harness(k8s_op, FakeRunner(fake_worker()), tmp_path) as h:
        await h.create(dataset_body("ds", shards=2))
        await h.wait_phase(DATASETS, "ds", "Failed")
        failed = h.condition(DATASETS, "ds", "Failed")
        assert failed["reason"] == "JobRejected" and "admission webhook denied: no GPUs" in failed["message"]


async def test_transient_api_errors_are_retried_with_backoff(k8s_op, tmp_path: Path) -> None:
    k8s_op["post", kmock.resource("batch/v1/jobs")][:2] << 503
    async with operator_harness(k8s_op, FakeRunner(fake_worker()), tmp_path) as h:
        await h.create(dataset_body("ds", shards=2))
        await h.wait_phase(DATASETS, "ds", "Succeeded", timeout=30)
        reasons = [e["reason"] for e in h.events("ds")]
        assert "ReconcileError" in reasons  # said once, in an Event, not silently
        assert sorted(h.job_names("ds")) == [
            "ds-filter-a1",
            "ds-generate-a1",
            "ds-prompts-a1",
            "ds-reduce-a1",
        ]


async def test_liveness_endpoint_reports_the_age_of_the_last_watch_event(k8s_op, tmp_path: Path) -> None:
    from synthrec.operator.handlers import register

    port = free_port()
    async with (
        operator_harness(k8s_op, FakeRunner(fake_worker()), tmp_path, start_operator=False) as h,
        running_operator(
            lambda registry: register(registry, FAST, login=False),
            liveness_endpoint=f"http://127.0.0.1:{port}/healthz",
        ),
    ):
        await h.create(dataset_body("ds", shards=1))
        await h.wait_phase(DATASETS, "ds", "Succeeded")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            assert resp.status == 200
            health = await resp.json()
        assert 0 <= health["lastWatchEventAgeSeconds"] < 5 and health["resources"] == 1


async def test_a_stale_task_configmap_of_the_same_name_is_replaced(k8s_op, tmp_path: Path) -> None:
    stale = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ds-prompts-a1", "namespace": NS},
        "data": {"task.json": '{"stage": "prompts", "shard_ids": [7]}'},
    }
    await k8s_op.api.create(CONFIGMAPS, stale, NS)
    async with operator_harness(k8s_op, FakeRunner(fake_worker()), tmp_path) as h:
        await h.create(dataset_body("ds", shards=2, runPolicy={"ttlSecondsAfterFinished": None}))
        await h.wait_phase(DATASETS, "ds", "Succeeded")
        task = h.obj(CONFIGMAPS, "ds-prompts-a1")["data"]["task.json"]
        assert '"shard_ids": null' in task and '"spec_hash"' in task
    record_api_calls(k8s_op, "stale-configmap")


async def test_the_synthrec_operator_command_runs_the_operator(k8s_op, tmp_path: Path) -> None:
    """`python -m synthrec.operator` as its own process: reconciles, serves /healthz and /metrics, and stops
    cleanly on SIGTERM."""
    liveness, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "SYNTHREC_STATUS_INTERVAL": "0.1",
        "SYNTHREC_RESYNC_INTERVAL": "0.5",
        "SYNTHREC_RECONCILE_MIN_INTERVAL": "0.05",
        "SYNTHREC_NAMESPACES": NS,
    }
    async with operator_harness(k8s_op, FakeRunner(fake_worker()), tmp_path, start_operator=False) as h:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "synthrec.operator",
            "--liveness",
            str(liveness),
            "--metrics-port",
            str(metrics),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await h.create(dataset_body("ds", shards=2))
            await h.wait_phase(DATASETS, "ds", "Succeeded", timeout=60)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{liveness}/healthz") as resp:
                    assert resp.status == 200 and "lastWatchEventAgeSeconds" in await resp.json()
                async with session.get(f"http://127.0.0.1:{metrics}/metrics") as resp:
                    text = await resp.text()
            assert (
                'synthrec_operator_jobs_created_total{kind="SyntheticDataset",stage="generate"} 1.0' in text
            )
            process.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 0, output.decode()[-3000:]
            assert "synthrec operator starting (namespaces default)" in output.decode()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
