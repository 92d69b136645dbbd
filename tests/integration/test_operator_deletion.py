"""``spec.output.onDelete: Delete`` on a cluster: the operator has a Job in the resource's namespace delete
exactly the keys the resource's workers recorded, with that namespace's credentials Secret; objects
synthrec did not write survive, and the operator itself never touches the storage.

Here the prompts stage and the cleanup run as real worker processes (S3 on moto behind the fault proxy,
which records whose credentials signed each request); the other stages are instant fakes.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from synthrec.contract.layout import WRITTEN_KEYS
from synthrec.contract.written import Writer, WrittenKeys
from synthrec.operator.jobs import ANNOTATION_OWNER_UID
from synthrec.operator.settings import FINALIZER
from synthrec.storage import open_storage
from tests.harness.k8s import wait_for
from tests.harness.operator import (
    DATASETS,
    EXPERIMENTS,
    FAST,
    JOBS,
    K8S_VERSION,
    NS,
    StageRunner,
    dataset_body,
    experiment_body,
    fake_worker,
    operator_harness,
    record_api_calls,
)
from tests.harness.pss import assert_restricted
from tests.k8s.runners import SubprocessRunner

SECRET = "team-a-s3"
TEAM_KEY = "team-a-key"
QUICK = FAST.with_overrides(
    cleanup_poll_interval=0.1
)  # the namespace's credentials; the test process (and the operator) use 'testing'


async def team_secret(k8s: Any) -> None:
    data = {"AWS_ACCESS_KEY_ID": TEAM_KEY, "AWS_SECRET_ACCESS_KEY": "team-a-secret"}
    await k8s.api.create(
        "v1/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NS},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        },
        NS,
    )


def deleting(uri: str, endpoint: str) -> dict[str, Any]:
    return dataset_body(
        "ds",
        shards=2,
        prompts={"strategy": "basic"},
        output={"uri": uri, "endpoint": endpoint, "credentialsSecret": SECRET, "onDelete": "Delete"},
    )


def runner() -> StageRunner:
    real = SubprocessRunner(extra_env={"SYNTHREC_DEVICE": "cpu", "OMP_NUM_THREADS": "1"})
    return StageRunner({"prompts", "cleanup"}, fake_worker(), real)


def keys(uri: str) -> set[str]:
    return {info.key for info in open_storage(uri).list()}


def events(h: Any, reason: str) -> list[dict[str, Any]]:
    return [e for e in h.events("ds") if e.get("reason") == reason]


async def test_deleting_removes_what_the_resource_wrote_with_its_namespaces_credentials(
    k8s_op, s3_faults, tmp_path: Path
) -> None:
    bucket = open_storage(s3_faults.uri)
    bucket.write_bytes("team-a/ds/notes.txt", b"the team's own file, there before the dataset")
    bucket.write_bytes("team-b/data.bin", b"another team's data")
    uri = s3_faults.uri + "team-a/ds/"
    await team_secret(k8s_op)
    async with operator_harness(k8s_op, runner(), tmp_path, QUICK) as h:
        await h.create(deleting(uri, s3_faults.endpoint))
        await h.wait_phase(DATASETS, "ds", "Succeeded", timeout=60)
        assert FINALIZER in h.obj(DATASETS, "ds")["metadata"]["finalizers"]
        written = keys(uri) - {"notes.txt"}
        assert {"spec.json", "prompts.jsonl", "prompts.done.json"} < written
        assert any(k.startswith(WRITTEN_KEYS) for k in written)  # the ledger, with the dataset's uid
        artifacts = [k for k in written if not k.startswith(WRITTEN_KEYS)]  # models/mirror.json too on S3
        bucket.write_bytes("team-a/ds/shards/by-hand.tar", b"put there by hand, later")

        s3_faults.proxy.reset()
        await k8s_op.api.delete(DATASETS, "ds", NS)
        await wait_for(lambda: h.obj(DATASETS, "ds") is None, 60, message="finalizer released")
        seen = list(s3_faults.proxy.seen)  # before this test reads the bucket itself

        assert keys(uri) == {"notes.txt", "shards/by-hand.tar"}
        assert keys(s3_faults.uri + "team-b/") == {"data.bin"}
        (event,) = await wait_for(lambda: events(h, "ArtifactsDeleted"), 10, message="the Event")
        assert (
            f"deleted {len(artifacts)} objects" in event["message"] and "2 other objects" in event["message"]
        )
        # Every storage request of the deletion was signed with the namespace's key, none with the
        # operator's (the test process's 'testing'): the operator never touched the bucket.
        assert [s for s in seen if s.method == "DELETE"] and {s.access_key for s in seen} == {TEAM_KEY}
        # The cleanup Job: in the resource's namespace, restricted, not owned (a foreground deletion must
        # not kill it), naming the resource's uid; deleted once its result was read.
        job = h.created("Job", "ds-cleanup")
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        assert job["metadata"]["namespace"] == NS and "ownerReferences" not in job["metadata"]
        assert job["metadata"]["annotations"][ANNOTATION_OWNER_UID]
        assert_restricted(job, writable=("/tmp",))
        env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == SECRET
        assert "HF_TOKEN" not in env
        await wait_for(lambda: h.obj(JOBS, "ds-cleanup") is None, 10, message="cleanup Job deleted")
    record_api_calls(k8s_op, "delete-artifacts")


OTHERS = {
    # An earlier dataset of the same name wrote here and kept its artifacts (onDelete: Retain).
    "earlier": (
        "team-a/ds/",
        Writer(kind="SyntheticDataset", name="ds", namespace=NS, uid="uid-of-an-earlier-ds"),
    ),
    # Team B's dataset, in another namespace, wrote here; team A's resource points at B's prefix.
    "team-b": (
        "team-b/data/",
        Writer(kind="SyntheticDataset", name="data", namespace="team-b", uid="uid-of-b"),
    ),
}


@pytest.mark.parametrize("other", list(OTHERS))
async def test_a_prefix_holding_another_resources_artifacts_is_kept_whole(
    other: str, k8s_op, s3_faults, tmp_path: Path
) -> None:
    prefix, writer = OTHERS[other]
    uri = s3_faults.uri + prefix
    theirs = WrittenKeys(resource=writer, stage="generate", shard=0, keys=["shards/gen-00000.tar"])
    storage = open_storage(uri)
    storage.write_bytes(WRITTEN_KEYS + "generate-00000-earlier.json", theirs.document())
    storage.write_bytes("shards/gen-00000.tar", b"its shard")
    await team_secret(k8s_op)
    async with operator_harness(k8s_op, runner(), tmp_path, QUICK) as h:
        await h.create(deleting(uri, s3_faults.endpoint))
        await h.wait_phase(DATASETS, "ds", "Succeeded", timeout=60)
        before = keys(uri)
        await k8s_op.api.delete(DATASETS, "ds", NS)
        await wait_for(lambda: h.obj(DATASETS, "ds") is None, 60, message="finalizer released")
        assert keys(uri) == before
        (event,) = await wait_for(lambda: events(h, "ArtifactsRetained"), 10, message="the Event")
        assert event["type"] == "Warning" and writer.uid in event["message"]
    record_api_calls(k8s_op, "delete-artifacts")


async def test_a_bucket_root_is_never_deleted_and_needs_no_job(k8s_op, s3_bucket, tmp_path: Path) -> None:
    open_storage(s3_bucket.uri).write_bytes("precious", b"z")
    body = dataset_body("ds", shards=1, output={"uri": s3_bucket.uri, "onDelete": "Delete"})
    async with operator_harness(k8s_op, runner(), tmp_path, QUICK) as h:
        await h.create(body)
        await h.wait_phase(DATASETS, "ds", "Succeeded", timeout=60)
        await k8s_op.api.delete(DATASETS, "ds", NS)
        await wait_for(lambda: h.obj(DATASETS, "ds") is None, 30, message="finalizer released")
        (event,) = await wait_for(lambda: events(h, "ArtifactsRetained"), 10, message="the Event")
        assert "root of bucket" in event["message"]
        assert ("jobs", "ds-cleanup") not in k8s_op.creations
        assert "precious" in keys(s3_bucket.uri)


async def test_an_experiment_is_cleaned_up_the_same_way(k8s_op, s3_bucket, tmp_path: Path) -> None:
    uri = s3_bucket.uri + "team-a/exp/"
    open_storage(uri).write_bytes("runs/by-hand/metrics.json", b"{}")
    body = experiment_body("exp", dataset=None, output={"uri": uri, "onDelete": "Delete"})
    async with operator_harness(k8s_op, runner(), tmp_path, QUICK) as h:
        await h.create(body)
        await h.wait_phase(EXPERIMENTS, "exp", "Succeeded")
        await k8s_op.api.delete(EXPERIMENTS, "exp", NS)
        await wait_for(lambda: h.obj(EXPERIMENTS, "exp") is None, 60, message="finalizer released")
        (event,) = await wait_for(
            lambda: [e for e in h.events("exp") if e.get("reason") == "ArtifactsDeleted"], 10, message="Event"
        )
        # Its (fake) runs wrote nothing: nothing of its own to delete, the object put there by hand is kept.
        assert "deleted 0 objects" in event["message"] and "1 other objects" in event["message"]
        assert keys(uri) == {"runs/by-hand/metrics.json"}
    record_api_calls(k8s_op, "delete-artifacts")
