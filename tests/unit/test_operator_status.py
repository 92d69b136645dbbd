"""Status folding pieces: views of Jobs and Pods, pod activity -> Running/Queued, Events only on transitions,
and the status patch throttle."""

from __future__ import annotations

import json

from synthrec.operator.kube import merge_diff
from synthrec.operator.observed import DatasetView, JobView, PodView, owner_key
from synthrec.operator.status import Conditions, StatusThrottle, pod_activity, transitions

LABELS = {
    "app.kubernetes.io/managed-by": "synthrec",
    "synthrec.io/resource": "ds",
    "synthrec.io/kind": "SyntheticDataset",
    "synthrec.io/stage": "generate",
    "synthrec.io/attempt": "2",
}


def job_obj(**status: object) -> dict[str, object]:
    return {
        "metadata": {
            "name": "ds-generate-a2",
            "namespace": "ns",
            "uid": "j1",
            "labels": LABELS,
            "annotations": {"synthrec.io/shards": "3,7-8"},
        },
        "spec": {"completions": 3, "parallelism": 2},
        "status": status,
    }


def pod_obj(phase: str, state: dict[str, object], conditions: list[dict[str, object]] | None = None) -> dict:
    return {
        "metadata": {
            "name": "ds-generate-a2-1-abcde",
            "namespace": "ns",
            "labels": {**LABELS, "batch.kubernetes.io/job-completion-index": "1"},
            "annotations": {"batch.kubernetes.io/job-completion-index": "1"},
            "ownerReferences": [{"kind": "Job", "name": "ds-generate-a2", "uid": "j1", "controller": True}],
        },
        "status": {
            "phase": phase,
            "conditions": conditions or [],
            "containerStatuses": [{"name": "worker", "state": state}],
        },
    }


def test_a_job_view_maps_completion_indexes_to_shard_ids() -> None:
    view = JobView.from_obj(
        job_obj(
            completedIndexes="0,2",
            failedIndexes="1",
            conditions=[
                {"type": "Failed", "status": "True", "reason": "FailedIndexes", "lastTransitionTime": "t"}
            ],
        )
    )
    assert (view.stage, view.attempt, view.completions) == ("generate", 2, 3)
    assert view.completed_shards() == {3, 8} and view.failed_shards() == {7}
    assert view.finished and view.failed_final and view.failure.reason == "FailedIndexes"
    assert owner_key(job_obj()) == ("ns", "SyntheticDataset", "ds")
    assert owner_key({"metadata": {"labels": {"app": "x"}}}) is None


def test_a_pod_view_reads_the_termination_summary() -> None:
    message = json.dumps({"stage": "generate", "shard": 7, "images": 120, "ok": True})
    view = PodView.from_obj(pod_obj("Succeeded", {"terminated": {"exitCode": 0, "message": message}}))
    assert (view.index, view.job_uid, view.succeeded) == (1, "j1", True)
    assert view.summary.images == 120 and view.message == ""
    crashed = PodView.from_obj(pod_obj("Failed", {"terminated": {"exitCode": 137, "message": "Killed\nOOM"}}))
    assert crashed.summary is None and crashed.error_message == "Killed\nOOM"


def test_running_only_when_a_pod_really_runs() -> None:
    job = JobView.from_obj(job_obj(active=1))
    running = PodView.from_obj(pod_obj("Running", {"running": {}}))
    unschedulable = PodView.from_obj(
        pod_obj(
            "Pending",
            {"waiting": {"reason": "ContainerCreating"}},
            [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        )
    )
    pulling = PodView.from_obj(
        pod_obj("Pending", {"waiting": {"reason": "ImagePullBackOff", "message": "no such"}})
    )

    conds = Conditions([], 1, "2026-01-01T00:00:00Z")
    conds.apply_activity(pod_activity([job], [unschedulable]), "ShardsRunning")
    assert not conds.is_true("Running")
    queued = conds.get("Queued")
    assert queued["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in queued["message"]
    assert conds.phase() == "Queued"

    activity = pod_activity([job], [pulling])
    assert activity.trouble == ("ImagePullBackOff", "pod ds-generate-a2-1-abcde: ImagePullBackOff: no such")

    conds.apply_activity(pod_activity([job], [running, unschedulable]), "ShardsRunning")
    assert conds.is_true("Running") and not conds.is_true("Queued") and conds.phase() == "Running"
    assert conds.get("Running")["observedGeneration"] == 1


def test_a_job_suspended_by_kueue_is_waiting_for_quota() -> None:
    suspended = JobView.from_obj({**job_obj(), "spec": {"completions": 3, "suspend": True}})
    assert pod_activity([suspended], []).queued[0] == "WaitingForQuota"


def test_events_only_on_transitions() -> None:
    old = [{"type": "Running", "status": "True", "reason": "ShardsRunning", "message": "2 pod(s) running"}]
    same = [{"type": "Running", "status": "True", "reason": "ShardsRunning", "message": "5 pod(s) running"}]
    assert transitions(old, same) == []
    done = [
        {"type": "Running", "status": "False", "reason": "Complete"},
        {"type": "Complete", "status": "True", "reason": "AllShardsSucceeded", "message": "40 images"},
    ]
    events = transitions(old, done)
    assert [(e.type, e.reason) for e in events] == [("Normal", "AllShardsSucceeded")]
    failed = [{"type": "Failed", "status": "True", "reason": "ConfigError", "message": "bad ref"}]
    assert transitions([], failed)[0].type == "Warning"
    assert transitions([], [{"type": "Queued", "status": "True", "reason": "PodsPending"}]) == []


def test_status_is_patched_only_on_change_and_at_most_once_per_interval() -> None:
    throttle = StatusThrottle(5.0)
    persisted = {"phase": "Running", "progress": {"summary": "1/4", "lastUpdateTime": "a"}}
    new = {"phase": "Running", "progress": {"summary": "2/4"}}
    assert throttle.decide("k", persisted, {**persisted, "progress": {"summary": "1/4"}}, 0.0) == (
        False,
        None,
    )
    assert throttle.decide("k", persisted, new, 0.0) == (True, None)  # first patch of this operator
    throttle.patched("k", new, 0.0)
    assert throttle.decide("k", persisted, new, 1.0) == (False, None)  # patched, watch event not here yet
    newer = {"phase": "Running", "progress": {"summary": "3/4"}}
    assert throttle.decide("k", new, newer, 1.0) == (False, 4.0)
    assert throttle.decide("k", new, newer, 5.0) == (True, None)


def test_a_merge_patch_carries_only_the_changes() -> None:
    old = {"phase": "Running", "images": {"generated": 10, "kept": 0}, "message": "x", "best": {"top1": 1}}
    new = {"phase": "Succeeded", "images": {"generated": 10, "kept": 8}, "best": {"top1": 1}}
    assert merge_diff(old, new) == {"phase": "Succeeded", "images": {"kept": 8}, "message": None}
    assert merge_diff(new, new) == {}


def test_a_dataset_view_exposes_readiness_and_the_manifest_digest() -> None:
    view = DatasetView.from_obj(
        {
            "metadata": {"name": "ds", "uid": "u"},
            "spec": {"output": {"uri": "s3://b/ds/", "endpoint": "http://minio"}},
            "status": {
                "phase": "Succeeded",
                "conditions": [{"type": "Complete", "status": "True"}],
                "artifacts": {"manifest": "s3://b/ds/manifest.json", "manifestDigest": "sha256:1"},
            },
        }
    )
    assert (view.complete, view.failed, view.digest, view.uri, view.endpoint) == (
        True,
        False,
        "sha256:1",
        "s3://b/ds/",
        "http://minio",
    )
