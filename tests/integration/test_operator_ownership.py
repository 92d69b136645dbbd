"""Which Jobs count for a resource: only those whose controller ownerReference carries its uid.

A Job with the right labels that somebody made by hand, or one left behind by an earlier resource of the
same name, is ignored (never folded into status, never adopted) and reported once in an Event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthrec.contract.summaries import GenerateSummary
from synthrec.operator.jobs import Owner, child_labels
from tests.harness.k8s import wait_for
from tests.harness.operator import (
    DATASETS,
    JOBS,
    NS,
    dataset_body,
    fake_worker,
    operator_harness,
    record_api_calls,
    shard_of,
    summary,
)
from tests.k8s.runners import FakeRunner

FORGED_IMAGES_PER_SHARD = 1000


def forged_job(name: str, stage: str, *, completions: int, resource: str = "ds") -> dict[str, Any]:
    """A Job labelled exactly like the operator labels its own, without an ownerReference."""
    labels = child_labels(Owner("SyntheticDataset", resource, NS, ""), stage, 1)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": completions,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "worker", "image": "evil:latest", "command": ["true"]}],
                },
            },
        },
    }


def worker_with_forgery() -> Any:
    """The operator's Jobs behave like real workers (10 images a shard); the forged Job claims 1000."""
    honest = fake_worker(images_per_shard=10)

    def run(job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        if not job["metadata"].get("ownerReferences"):
            return 0, summary(GenerateSummary(shard=shard_of(job, index), images=FORGED_IMAGES_PER_SHARD))
        return honest(job, index, attempt)

    return run


def foreign_job_events(h: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in h.events(name) if e.get("reason") == "ForeignJob"]


async def test_a_hand_made_job_with_the_right_labels_does_not_count(k8s_op, tmp_path: Path) -> None:
    async with operator_harness(k8s_op, FakeRunner(worker_with_forgery()), tmp_path) as h:
        await k8s_op.api.create(JOBS, forged_job("forged", "generate", completions=4), NS)
        await wait_for(
            lambda: "Complete" in str((h.obj(JOBS, "forged") or {}).get("status")), 10, message="forged done"
        )
        await h.create(dataset_body("ds", shards=4))
        status = await h.wait_phase(DATASETS, "ds", "Succeeded")
        # The forged 4000 images never reach status; the operator ran its own generate Job.
        assert status["images"]["generated"] == 40
        assert status["stages"]["generate"]["job"] == "ds-generate-a1"
        assert "ds-generate-a1" in h.job_names("ds")
        forged = h.obj(JOBS, "forged")
        assert forged is not None and not forged["metadata"].get("ownerReferences")  # never adopted
        await h.settle(DATASETS, "ds")
        (event,) = foreign_job_events(h, "ds")  # reported once, not on every pass
        assert event["type"] == "Warning" and "forged" in event["message"]
        assert "not controlled by this SyntheticDataset" in event["message"]
    record_api_calls(k8s_op, "foreign-job")


async def test_orphans_of_an_earlier_resource_with_the_same_name_are_never_adopted(
    k8s_op, tmp_path: Path
) -> None:
    async with operator_harness(k8s_op, FakeRunner(fake_worker(images_per_shard=10)), tmp_path) as h:
        await h.create(dataset_body("ds", shards=2))
        await h.wait_phase(DATASETS, "ds", "Succeeded")
        first_uid = h.obj(DATASETS, "ds")["metadata"]["uid"]
        await k8s_op.api.delete(DATASETS, "ds", NS, propagation_policy="Orphan")
        await wait_for(lambda: h.obj(DATASETS, "ds") is None, 10, message="first ds gone")
        orphans = sorted(h.job_names("ds"))
        assert orphans and all(not h.obj(JOBS, n)["metadata"].get("ownerReferences") for n in orphans)

        await h.create(dataset_body("ds", shards=2))
        second_uid = h.obj(DATASETS, "ds")["metadata"]["uid"]
        assert second_uid != first_uid
        # The orphan prompts Job holds the name the new resource's first Job needs: it waits, says why
        # (once), and neither counts the orphan's results nor takes it over.
        degraded = await h.wait_condition(DATASETS, "ds", "Degraded")
        assert degraded["reason"] == "NameTakenByForeignJob" and "ds-prompts-a1" in degraded["message"]
        await h.settle(DATASETS, "ds")
        assert h.status(DATASETS, "ds")["phase"] != "Succeeded"
        assert h.status(DATASETS, "ds")["stages"]["prompts"]["state"] != "Succeeded"
        assert len(foreign_job_events(h, "ds")) == len(orphans)
        for name in orphans:
            assert not h.obj(JOBS, name)["metadata"].get("ownerReferences")

        for name in orphans:  # what the event tells the user to do
            await k8s_op.api.delete(JOBS, name, NS, propagation_policy="Background")
        await h.wait_phase(DATASETS, "ds", "Succeeded")
        # Each incarnation created (and owns) its own Jobs.
        creates = [b["metadata"]["name"] for b in k8s_op.created if b["kind"] == "Job"]
        assert sorted(creates) == sorted(orphans * 2)
        for name in h.job_names("ds"):
            (ref,) = h.obj(JOBS, name)["metadata"]["ownerReferences"]
            assert ref["uid"] == second_uid and ref["controller"] is True
    record_api_calls(k8s_op, "foreign-job")


async def test_a_job_without_our_labels_that_holds_a_name_we_need_is_reported_and_left_alone(
    k8s_op, tmp_path: Path
) -> None:
    squatter = forged_job("ds-prompts-a1", "prompts", completions=1)
    squatter["metadata"]["labels"] = squatter["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    ours = fake_worker()

    def run(job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        return ours(job, index, attempt) if job["metadata"].get("ownerReferences") else (0, "")

    async with operator_harness(k8s_op, FakeRunner(run), tmp_path) as h:
        await k8s_op.api.create(JOBS, squatter, NS)
        await h.create(dataset_body("ds", shards=2))
        degraded = await h.wait_condition(DATASETS, "ds", "Degraded")
        assert degraded["reason"] == "NameTakenByForeignJob" and "ds-prompts-a1" in degraded["message"]
        await h.settle(DATASETS, "ds")
        (event,) = foreign_job_events(h, "ds")
        assert "ds-prompts-a1" in event["message"]
        job = h.obj(JOBS, "ds-prompts-a1")
        assert job["metadata"]["labels"] == {"app": "other"} and not job["metadata"].get("ownerReferences")

        await k8s_op.api.delete(JOBS, "ds-prompts-a1", NS, propagation_policy="Background")
        await h.wait_phase(DATASETS, "ds", "Succeeded", timeout=60)  # noticed at the next resync
        (ref,) = h.obj(JOBS, "ds-prompts-a1")["metadata"]["ownerReferences"]
        assert ref["uid"] == h.obj(DATASETS, "ds")["metadata"]["uid"]
        assert h.condition(DATASETS, "ds", "Degraded")["status"] == "False"
    record_api_calls(k8s_op, "foreign-job")
