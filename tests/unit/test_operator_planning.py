"""The operator's planner as a pure function: spec + persisted status + observed children -> actions."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from synthrec.contract import parse_summary
from synthrec.operator import planning
from synthrec.operator.observed import DatasetView, JobCondition, JobView, PodView
from synthrec.operator.planning import Context, Observed, plan

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
CTX = Context(now=NOW, fold_grace_seconds=30)
DIGEST = "sha256:" + "cd" * 32


def dataset(**spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": "SyntheticDataset",
        "metadata": {"name": "ds", "namespace": "ns", "uid": "uid-ds", "generation": 1},
        "spec": {
            "labels": {"preset": "tiny"},
            "generator": {"model": "file:///m/sd"},
            "filter": {"clip": {"model": "file:///m/clip"}},
            "sharding": {"shards": 4, "retriesPerShard": 1, "maxAttempts": 2},
            "output": {"uri": "s3://bucket/ds/"},
        },
    }
    body["spec"].update(spec)
    return body


def experiment(**spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": "RecognitionExperiment",
        "metadata": {"name": "exp", "namespace": "ns", "uid": "uid-exp", "generation": 1},
        "spec": {
            "labels": {"preset": "tiny"},
            "data": {"synthetic": [{"datasetRef": "ds"}], "test": {"uri": "s3://bucket/test/"}},
            "matrix": {"shots": [0], "seeds": [1, 2, 3, 4]},
            "execution": {"parallelism": 2},
            "output": {"uri": "s3://bucket/exp/"},
        },
    }
    body["spec"].update(spec)
    return body


def job(
    name: str,
    stage: str,
    attempt: int = 1,
    *,
    completions: int = 1,
    shards: tuple[int, ...] | None = None,
    completed: str = "",
    failed: str = "",
    final: str | None = None,
    reason: str = "",
    finished_ago: float = 0.0,
    run_index: int | None = None,
    ttl: int | None = None,
    deleting: bool = False,
) -> JobView:
    conditions = ()
    if final:
        stamp = (NOW - timedelta(seconds=finished_ago)).isoformat().replace("+00:00", "Z")
        conditions = (JobCondition(final, "True", reason, "", stamp),)
    return JobView(
        name=name,
        uid=f"uid-{name}",
        stage=stage,
        attempt=attempt,
        run_index=run_index,
        shard_ids=shards,
        completions=completions,
        parallelism=completions,
        completed_indexes=completed,
        failed_indexes=failed,
        conditions=conditions,
        ttl=ttl,
        deleting=deleting,
        # controlled by the resource: the experiment's stages, or the dataset's
        controller_uid="uid-exp" if stage in ("train", "pretrain", "transfer") else "uid-ds",
    )


def pod(
    j: JobView, index: int, *, exit_code: int | None = 0, running: bool = False, **fields: Any
) -> PodView:
    """A pod of ``j``; ``fields`` make its termination summary (a failure's when it exited non-zero)."""
    summary = None
    if fields:
        failed = exit_code not in (0, None)
        raw = {"stage": j.stage, "shard": index, "ok": not failed, **fields}
        if failed:
            raw.setdefault("error", "data" if exit_code == 42 else "retryable")
        summary = parse_summary(json.dumps(raw))
        assert summary is not None, raw
    return PodView(
        name=f"{j.name}-{index}-x",
        job_uid=j.uid,
        job_name=j.name,
        index=index,
        phase="Running" if running else ("Succeeded" if exit_code == 0 else "Failed"),
        running=running,
        exit_code=None if running else exit_code,
        summary=summary,
    )


def with_status(body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {**copy.deepcopy(body), "status": status}


def stage_status(actions: planning.Actions, stage: str) -> dict[str, Any]:
    return actions.status["stages"][stage]


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == ctype), None)


# ------------------------------------------------------------------------------------------ datasets


def test_a_new_dataset_starts_its_first_stage_with_a_task_configmap_and_one_job() -> None:
    actions = plan(dataset(), Observed(), CTX)
    assert [c.name for c in actions.create] == ["ds-prompts-a1"]
    create = actions.create[0]
    assert create.configmap["metadata"]["name"] == create.job["metadata"]["name"] == "ds-prompts-a1"
    task = json.loads(create.configmap["data"]["task.json"])
    assert (task["stage"], task["attempt"], task["shards"], task["shard_ids"]) == ("prompts", 1, 1, None)
    status = actions.status
    assert condition(status, "Accepted")["status"] == "True"
    # Queued for the Job just created (not Pending: the work has started and never steps back to Pending)
    assert status["phase"] == "Queued" and status["startTime"] == "2026-01-01T12:00:00Z"
    assert condition(status, "Queued")["reason"] == "JobStarting"
    assert stage_status(actions, "prompts")["state"] == "Running"
    assert stage_status(actions, "prompts")["job"] == "ds-prompts-a1"


def test_the_next_stage_starts_when_the_previous_one_completed() -> None:
    prompts = job("ds-prompts-a1", "prompts", final="Complete", completed="0")
    observed = Observed(jobs=[prompts], pods=[pod(prompts, 0, prompts=12, classes=4, images=48)])
    actions = plan(dataset(), observed, CTX)
    assert stage_status(actions, "prompts")["state"] == "Succeeded"
    assert actions.status["artifacts"]["prompts"] == "s3://bucket/ds/prompts.jsonl"
    generate = actions.create[0].job
    assert generate["metadata"]["name"] == "ds-generate-a1"
    assert generate["spec"]["completions"] == 4
    assert "synthrec.io/shards" not in (generate["metadata"].get("annotations") or {})  # index == shard


def test_the_attempt_in_status_follows_the_observed_jobs() -> None:
    # The status write that started attempt 1 may have been coalesced away by the throttle.
    persisted = {"stages": {"prompts": {"state": "Succeeded", "attempt": 1}}}
    gen = job("ds-generate-a1", "generate", completions=4, completed="0")
    actions = plan(
        with_status(dataset(), persisted), Observed(jobs=[gen], pods=[pod(gen, 0, images=10)]), CTX
    )
    assert stage_status(actions, "generate")["attempt"] == 1
    assert stage_status(actions, "generate")["job"] == "ds-generate-a1"


def test_shards_are_folded_into_status_exactly_once() -> None:
    gen = job("ds-generate-a1", "generate", completions=4, completed="0-3")
    pods = [pod(gen, i, images=10) for i in range(4)]
    persisted = {
        "stages": {
            "prompts": {"state": "Succeeded", "attempt": 1, "shards": {"total": 1, "succeeded": 1}},
            "generate": {
                "state": "Running",
                "attempt": 1,
                "shards": {"succeededIndexes": "0-1", "succeeded": 2},
            },
        },
        "images": {"generated": 20},
    }
    body = with_status(dataset(), persisted)
    first = plan(body, Observed(jobs=[gen], pods=pods), CTX)
    assert first.status["images"]["generated"] == 40  # 20 persisted + shards 2 and 3
    assert stage_status(first, "generate")["shards"]["succeededIndexes"] == "0-3"
    assert first.shards_done == {"generate": 2}
    again = plan(body, Observed(jobs=[gen], pods=pods), CTX)  # same persisted status: same answer
    assert again.status == first.status
    after = plan(with_status(dataset(), first.status), Observed(jobs=[gen], pods=pods), CTX)
    assert after.status["images"]["generated"] == 40  # folded shards are never counted twice


def test_a_completed_index_waits_for_its_pod_then_folds_without_totals_after_the_grace() -> None:
    persisted = {"stages": {"prompts": {"state": "Succeeded", "attempt": 1}, "generate": {"attempt": 1}}}
    early = job(
        "ds-generate-a1", "generate", completions=4, completed="0-3", final="Complete", finished_ago=1
    )
    pods = [pod(early, i, images=10) for i in range(3)]  # the pod of index 3 has not arrived yet
    actions = plan(with_status(dataset(), persisted), Observed(jobs=[early], pods=pods), CTX)
    assert stage_status(actions, "generate")["shards"]["succeededIndexes"] == "0-2"
    assert stage_status(actions, "generate")["state"] == "Running" and actions.requeue_after == 1.0
    assert not actions.create
    late = job(
        "ds-generate-a1", "generate", completions=4, completed="0-3", final="Complete", finished_ago=60
    )
    actions = plan(with_status(dataset(), persisted), Observed(jobs=[late], pods=pods), CTX)
    assert stage_status(actions, "generate")["state"] == "Succeeded"
    assert actions.status["images"]["generated"] == 30


def test_a_failed_attempt_is_retried_with_only_the_shards_without_a_commit() -> None:
    gen = job(
        "ds-generate-a1",
        "generate",
        completions=4,
        completed="0,2",
        failed="1,3",
        final="Failed",
        reason="FailedIndexes",
    )
    pods = [pod(gen, 0, images=10), pod(gen, 2, images=10), pod(gen, 1, exit_code=1, message="OOM")]
    persisted = {"stages": {"prompts": {"state": "Succeeded", "attempt": 1}, "generate": {"attempt": 1}}}
    actions = plan(with_status(dataset(), persisted), Observed(jobs=[gen], pods=pods), CTX)
    create = actions.create[0]
    assert create.name == "ds-generate-a2"
    assert create.job["spec"]["completions"] == 2
    assert create.job["metadata"]["annotations"]["synthrec.io/shards"] == "1,3"
    task = json.loads(create.configmap["data"]["task.json"])
    assert (task["shard_ids"], task["shards"], task["attempt"]) == ([1, 3], 4, 2)
    degraded = condition(actions.status, "Degraded")
    assert degraded["reason"] == "RetryingAttempt" and "OOM" in degraded["message"]
    assert stage_status(actions, "generate")["attempt"] == 2


def test_the_last_attempt_failing_within_the_budget_completes_the_stage_degraded() -> None:
    spec_sharding = {"shards": 4, "retriesPerShard": 0, "maxAttempts": 2, "maxFailedShards": 1}
    a1 = job(
        "ds-generate-a1",
        "generate",
        1,
        completions=4,
        completed="0-2",
        failed="3",
        final="Failed",
        reason="FailedIndexes",
    )
    a2 = job(
        "ds-generate-a2",
        "generate",
        2,
        completions=1,
        shards=(3,),
        failed="0",
        final="Failed",
        reason="FailedIndexes",
    )
    persisted = {
        "stages": {
            "prompts": {"state": "Succeeded", "attempt": 1},
            "generate": {"attempt": 2, "shards": {"succeededIndexes": "0-2"}},
        }
    }
    pods = [pod(a1, i, images=10) for i in range(3)]
    actions = plan(
        with_status(dataset(sharding=spec_sharding), persisted), Observed(jobs=[a1, a2], pods=pods), CTX
    )
    generate = stage_status(actions, "generate")
    assert generate["state"] == "Succeeded"
    assert (generate["shards"]["failed"], generate["shards"]["failedIndexes"]) == (1, "3")
    filt = actions.create[0]
    assert filt.name == "ds-filter-a1"
    assert filt.job["metadata"]["annotations"]["synthrec.io/shards"] == "0-2"
    assert condition(actions.status, "Degraded")["reason"] == "ShardsFailed"


def _data_error_attempt() -> tuple[JobView, list[PodView], dict[str, Any]]:
    """Attempt 1 of generate: shards 0, 2, 3 committed, shard 1's input is bad (exit 42, FailIndex)."""
    gen = job(
        "ds-generate-a1",
        "generate",
        completions=4,
        completed="0,2-3",
        failed="1",
        final="Failed",
        reason="FailedIndexes",
    )
    pods = [pod(gen, i, images=10) for i in (0, 2, 3)]
    pods.append(pod(gen, 1, exit_code=42, message="real image 7 of class 2 is corrupt"))
    persisted = {"stages": {"prompts": {"state": "Succeeded", "attempt": 1}, "generate": {"attempt": 1}}}
    return gen, pods, persisted


def test_a_data_error_within_the_budget_is_tolerated_without_another_attempt() -> None:
    gen, pods, persisted = _data_error_attempt()
    spec = dataset(sharding={"shards": 4, "maxAttempts": 3, "maxFailedShards": 1})
    actions = plan(with_status(spec, persisted), Observed(jobs=[gen], pods=pods), CTX)
    generate = stage_status(actions, "generate")
    assert generate["state"] == "Succeeded" and generate["shards"]["failedIndexes"] == "1"
    assert [c.name for c in actions.create] == ["ds-filter-a1"]  # no ds-generate-a2: it would fail again


def test_a_data_error_beyond_the_budget_fails_at_once() -> None:
    gen, pods, persisted = _data_error_attempt()
    spec = dataset(sharding={"shards": 4, "maxAttempts": 3, "maxFailedShards": 0})
    actions = plan(with_status(spec, persisted), Observed(jobs=[gen], pods=pods), CTX)
    failed = condition(actions.status, "Failed")
    assert failed["reason"] == "MaxFailedShardsExceeded" and "after 1 attempt(s)" in failed["message"]
    assert "real image 7 of class 2 is corrupt" in failed["message"] and not actions.create


def test_a_config_error_fails_the_dataset_and_stops_nothing_else() -> None:
    prompts = job("ds-prompts-a1", "prompts", final="Failed", reason="PodFailurePolicy")
    failed_pod = pod(prompts, 0, exit_code=3, error="config", message="bad model ref")
    actions = plan(dataset(), Observed(jobs=[prompts], pods=[failed_pod]), CTX)
    failed = condition(actions.status, "Failed")
    assert failed["reason"] == "ConfigError" and "bad model ref" in failed["message"]
    assert actions.status["phase"] == "Failed" and not actions.create


def test_finished_jobs_expire_only_once_their_results_are_persisted() -> None:
    prompts = job("ds-prompts-a1", "prompts", final="Complete", completed="0")
    observed = Observed(jobs=[prompts], pods=[pod(prompts, 0)])
    first = plan(dataset(), observed, CTX)
    assert not first.patch_jobs  # the result is only in the new status, not yet in the persisted one
    second = plan(with_status(dataset(), first.status), observed, CTX)
    assert second.patch_jobs == [("ds-prompts-a1", {"spec": {"ttlSecondsAfterFinished": 86400}})]
    assert second.delete_configmaps == ["ds-prompts-a1"]
    expired = job("ds-prompts-a1", "prompts", final="Complete", completed="0", ttl=86400)
    third = plan(with_status(dataset(), second.status), Observed(jobs=[expired], pods=[pod(prompts, 0)]), CTX)
    assert not third.patch_jobs
    gone = plan(with_status(dataset(), second.status), Observed(), CTX)  # the TTL deleted it: nothing re-made
    assert [c.name for c in gone.create] == ["ds-generate-a1"]


def test_suspend_deletes_the_running_attempt_only_after_its_shards_are_persisted() -> None:
    spec = dict(runPolicy={"suspend": True})
    gen = job("ds-generate-a1", "generate", completions=4, completed="0-1")
    pods = [pod(gen, 0, images=10), pod(gen, 1, images=10), pod(gen, 2, running=True)]
    persisted = {"stages": {"prompts": {"state": "Succeeded", "attempt": 1}, "generate": {"attempt": 1}}}
    first = plan(with_status(dataset(**spec), persisted), Observed(jobs=[gen], pods=pods), CTX)
    assert not first.delete_jobs and first.requeue_after == 1.0
    assert condition(first.status, "Suspended")["status"] == "True"
    assert first.status["phase"] == "Suspended"
    second = plan(with_status(dataset(**spec), first.status), Observed(jobs=[gen], pods=pods), CTX)
    assert second.delete_jobs == ["ds-generate-a1"] and second.delete_configmaps == ["ds-generate-a1"]
    resumed = plan(with_status(dataset(), second.status), Observed(), CTX)
    assert resumed.create[0].name == "ds-generate-a1"  # the interrupted attempt, not a new one
    assert resumed.create[0].job["metadata"]["annotations"]["synthrec.io/shards"] == "2-3"
    assert condition(resumed.status, "Suspended")["reason"] == "Resumed"


def test_the_active_deadline_fails_the_run_and_stops_its_jobs() -> None:
    spec = dict(runPolicy={"activeDeadlineSeconds": 600})
    gen = job("ds-generate-a1", "generate", completions=4)
    persisted = {
        "startTime": "2026-01-01T11:00:00Z",
        "stages": {"prompts": {"state": "Succeeded", "attempt": 1}},
    }
    actions = plan(with_status(dataset(**spec), persisted), Observed(jobs=[gen]), CTX)
    assert condition(actions.status, "Failed")["reason"] == "DeadlineExceeded"
    assert actions.delete_jobs == ["ds-generate-a1"]


def test_jobs_get_the_remaining_active_deadline() -> None:
    spec = dict(runPolicy={"activeDeadlineSeconds": 600})
    persisted = {"startTime": "2026-01-01T11:55:00Z"}
    actions = plan(with_status(dataset(**spec), persisted), Observed(), CTX)
    assert actions.create[0].job["spec"]["activeDeadlineSeconds"] == 300


def test_an_invalid_spec_fails_without_jobs_and_is_reconsidered_when_the_spec_changes() -> None:
    bad = dataset(sharding={"shards": 2, "parallelism": 3})
    actions = plan(bad, Observed(), CTX)
    assert not actions.create
    failed = condition(actions.status, "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "sharding.parallelism must not exceed sharding.shards" in failed["message"]
    assert plan(with_status(bad, actions.status), Observed(), CTX).create == []  # sticky for this generation
    fixed = with_status(dataset(), actions.status)
    fixed["metadata"]["generation"] = 2
    again = plan(fixed, Observed(), CTX)
    assert [c.name for c in again.create] == ["ds-prompts-a1"]
    assert condition(again.status, "Failed") is None


@pytest.mark.parametrize("make", [dataset, experiment])
def test_a_file_output_is_refused_with_a_clear_condition_and_no_jobs(make: Any) -> None:
    body = make(output={"uri": "file:///data/out/"})
    actions = plan(body, Observed(), CTX)
    assert not actions.create
    accepted, failed = condition(actions.status, "Accepted"), condition(actions.status, "Failed")
    assert accepted["status"] == "False" and accepted["reason"] == "UnsupportedOutput"
    assert failed["status"] == "True" and failed["reason"] == "UnsupportedOutput"
    assert "file:///data/out/" in failed["message"] and "emptyDir" in failed["message"]
    assert "s3://" in failed["message"]
    assert actions.status["phase"] == "Failed"


def test_terminal_states_are_sticky() -> None:
    done = plan(dataset(), Observed(), CTX).status
    done["conditions"].append(
        {"type": "Complete", "status": "True", "reason": "AllShardsSucceeded", "lastTransitionTime": "x"}
    )
    actions = plan(with_status(dataset(), done), Observed(), CTX)
    assert not actions.create and actions.status["phase"] == "Succeeded"


def test_a_too_fragmented_union_is_not_persisted_and_nothing_is_lost() -> None:
    shards = 3000
    odd = ",".join(str(i) for i in range(0, shards, 2))  # 1500 single ranges: longer than 4096 chars
    gen = job("ds-generate-a1", "generate", completions=shards, completed=odd)
    persisted = {"stages": {"prompts": {"state": "Succeeded", "attempt": 1}, "generate": {"attempt": 1}}}
    pods = [pod(gen, i, images=1) for i in range(0, shards, 2)]
    actions = plan(
        with_status(dataset(sharding={"shards": shards}), persisted), Observed(jobs=[gen], pods=pods), CTX
    )
    assert stage_status(actions, "generate")["shards"]["succeededIndexes"] == ""
    assert actions.status["images"]["generated"] == 0  # counted later, when the union can be stored


# ---------------------------------------------------------------------------------------- experiments


def ds_view(*, complete: bool = True, failed: bool = False, digest: str | None = DIGEST) -> DatasetView:
    return DatasetView(
        name="ds",
        uid="uid-ds",
        uri="s3://bucket/ds/",
        endpoint=None,
        region=None,
        complete=complete,
        failed=failed,
        phase="Succeeded" if complete else "Running",
        message="",
        manifest=None,
        digest=digest,
    )


def test_an_experiment_waits_for_a_missing_dataset() -> None:
    actions = plan(experiment(), Observed(datasets={"ds": None}), CTX)
    ready = condition(actions.status, "DatasetReady")
    assert (ready["status"], ready["reason"]) == ("False", "DatasetNotFound")
    assert not actions.create and actions.status["phase"] == "Pending"


def test_an_experiment_pins_the_dataset_digest_and_bounds_parallel_runs() -> None:
    actions = plan(experiment(), Observed(datasets={"ds": ds_view()}), CTX)
    assert actions.status["datasets"] == [{"name": "ds", "uri": "s3://bucket/ds/", "digest": DIGEST}]
    assert [c.name for c in actions.create] == ["exp-r0-a1", "exp-r1-a1"]  # execution.parallelism = 2
    task = json.loads(actions.create[0].configmap["data"]["task.json"])
    assert task["run"]["name"] == "shots0-seed1" and task["datasets"][0]["digest"] == DIGEST
    assert [r["state"] for r in actions.status["results"]] == ["Running", "Running", "Pending", "Pending"]
    labels = actions.create[0].job["metadata"]["labels"]
    assert labels["synthrec.io/run"] == "shots0-seed1" and labels["synthrec.io/stage"] == "train"


def test_an_experiment_with_a_dataset_per_cell_waits_for_each_and_gives_each_run_its_own() -> None:
    from dataclasses import replace

    body = experiment(
        data={
            "synthetic": [{"datasetRef": "rg-{shots}shot-seed{seed}"}],
            "realTrain": {"uri": "s3://bucket/train/"},
            "test": {"uri": "s3://bucket/test/"},
        },
        matrix={
            "shots": [1, 4],
            "seeds": [1, 2],
            "variants": [{"name": "coop", "method": "coop"}, {"name": "syn"}],
        },
        execution={"parallelism": 8},
    )
    names = ["rg-1shot-seed1", "rg-1shot-seed2", "rg-4shot-seed1", "rg-4shot-seed2"]

    def view(name: str, **kw: Any) -> DatasetView:
        return replace(ds_view(**kw), name=name, uid=f"uid-{name}", uri=f"s3://bucket/{name}/")

    waiting = plan(body, Observed(datasets={n: view(n, complete=n != "rg-4shot-seed2") for n in names}), CTX)
    ready = condition(waiting.status, "DatasetReady")
    assert (ready["status"], ready["reason"]) == ("False", "WaitingForDataset") and "rg-4shot-seed2" in ready[
        "message"
    ]
    assert not waiting.create
    actions = plan(body, Observed(datasets={n: view(n) for n in names}), CTX)
    assert [d["name"] for d in actions.status["datasets"]] == names
    tasks = {
        t["run"]["name"]: t for t in (json.loads(c.configmap["data"]["task.json"]) for c in actions.create)
    }
    assert len(tasks) == 8
    assert [d["uri"] for d in tasks["shots4-seed2-syn"]["datasets"]] == ["s3://bucket/rg-4shot-seed2/"]
    assert (
        tasks["shots4-seed2-coop"]["datasets"] == [] and tasks["shots4-seed2-coop"]["run"]["method"] == "coop"
    )
    methods = {r["name"]: r["method"] for r in actions.status["results"]}
    assert methods["shots1-seed1-coop"] == "coop" and methods["shots1-seed1-syn"] == "classifier-tuning"


def test_a_pinned_digest_does_not_move_when_the_dataset_changes() -> None:
    first = plan(experiment(), Observed(datasets={"ds": ds_view()}), CTX)
    later = plan(with_status(experiment(), first.status), Observed(datasets={"ds": None}), CTX)
    assert later.status["datasets"][0]["digest"] == DIGEST
    assert condition(later.status, "Failed") is None


def test_run_results_fold_into_status_with_the_best_run() -> None:
    first = plan(experiment(), Observed(datasets={"ds": ds_view()}), CTX)
    r0 = job("exp-r0-a1", "train", final="Complete", completed="0", run_index=0)
    r1 = job("exp-r1-a1", "train", final="Complete", completed="0", run_index=1)
    pods = [
        pod(r0, 0, run="shots0-seed1", top1=0.6, zero_shot_top1=0.3),
        pod(
            r1,
            0,
            run="shots0-seed2",
            method="classifier-tuning",
            top1=0.7,
            top1_last=0.7,
            top1_best_validation=0.72,
            zero_shot_top1=0.3,
            metrics="s3://x/m.json",
        ),
    ]
    actions = plan(
        with_status(experiment(), first.status),
        Observed(jobs=[r0, r1], pods=pods, datasets={"ds": ds_view()}),
        CTX,
    )
    results = {r["name"]: r for r in actions.status["results"]}
    assert results["shots0-seed1"]["top1"] == 0.6 and results["shots0-seed1"]["zeroShotTop1"] == 0.3
    # the method and both selections (last epoch, best validation epoch) are in status
    assert results["shots0-seed1"]["method"] == "classifier-tuning"
    assert (results["shots0-seed2"]["top1Last"], results["shots0-seed2"]["top1BestValidation"]) == (0.7, 0.72)
    assert results["shots0-seed1"]["metrics"] == "s3://bucket/exp/runs/shots0-seed1/metrics.json"
    assert results["shots0-seed2"]["metrics"] == "s3://x/m.json"
    assert actions.status["best"] == {"name": "shots0-seed2", "top1": 0.7}
    assert [c.name for c in actions.create] == ["exp-r2-a1", "exp-r3-a1"]
    assert actions.status["progress"]["summary"] == "2/4"


def test_a_config_error_in_a_run_fails_the_experiment_and_stops_the_others() -> None:
    first = plan(experiment(), Observed(datasets={"ds": ds_view()}), CTX)
    r0 = job("exp-r0-a1", "train", final="Failed", reason="PodFailurePolicy", run_index=0)
    r1 = job("exp-r1-a1", "train", run_index=1)
    pods = [pod(r0, 0, exit_code=3, message="backbone not found")]
    actions = plan(
        with_status(experiment(), first.status),
        Observed(jobs=[r0, r1], pods=pods, datasets={"ds": ds_view()}),
        CTX,
    )
    failed = condition(actions.status, "Failed")
    assert failed["reason"] == "ConfigError" and "backbone not found" in failed["message"]
    assert actions.delete_jobs == ["exp-r1-a1"] and not actions.create


def test_all_runs_failing_fails_the_experiment() -> None:
    spec = dict(matrix={"shots": [0], "seeds": [1]}, data={"test": {"uri": "s3://bucket/test/"}})
    r0 = job("exp-r0-a1", "train", final="Failed", reason="FailedIndexes", run_index=0)
    actions = plan(experiment(**spec), Observed(jobs=[r0], pods=[pod(r0, 0, exit_code=1)]), CTX)
    assert condition(actions.status, "Failed")["reason"] == "AllRunsFailed"


def test_a_failed_run_says_why_in_its_status_row() -> None:
    spec = dict(matrix={"shots": [0], "seeds": [1, 2]}, data={"test": {"uri": "s3://bucket/test/"}})
    r0 = job("exp-r0-a1", "train", final="Failed", reason="BackoffLimitExceeded", run_index=0)
    pods = [pod(r0, 0, exit_code=1, message="CUDA error: out of memory")]
    actions = plan(experiment(**spec), Observed(jobs=[r0], pods=pods), CTX)
    failed, other = actions.status["results"]
    assert failed["state"] == "Failed" and failed["message"].startswith("BackoffLimitExceeded: pod ")
    assert "CUDA error: out of memory" in failed["message"]
    assert other.get("message") is None


def test_a_failed_pretraining_run_names_the_stage_and_the_error_in_its_status_row() -> None:
    first = plan(pretraining(), Observed(datasets={"ds": ds_view()}), CTX)
    broken = job("exp-r1-pretrain-a1", "pretrain", final="Failed", reason="BackoffLimitExceeded", run_index=1)
    failing = pod(broken, 0, exit_code=1, message="NCCL timeout " + "x" * 3000)
    actions = plan(
        with_status(pretraining(), first.status),
        Observed(jobs=[broken], pods=[failing], datasets={"ds": ds_view()}),
        CTX,
    )
    row = next(r for r in actions.status["results"] if r["name"] == "sup-1k-scratch")
    assert row["state"] == "Failed" and row["message"].startswith("pretrain BackoffLimitExceeded: pod ")
    assert "NCCL timeout" in row["message"] and len(row["message"]) == 1024  # the status field's bound


@pytest.mark.parametrize(
    ("view", "reason"),
    [(ds_view(complete=False, failed=True), "DatasetFailed"), (ds_view(complete=False), None)],
)
def test_a_referenced_dataset_failing_fails_the_experiment(view: DatasetView, reason: str | None) -> None:
    actions = plan(experiment(), Observed(datasets={"ds": view}), CTX)
    failed = condition(actions.status, "Failed")
    assert (failed["reason"] if failed else None) == reason


def test_a_parallelism_change_is_applied_to_the_running_job() -> None:
    gen = job("ds-generate-a1", "generate", completions=4)
    persisted = {"stages": {"prompts": {"state": "Succeeded", "attempt": 1}, "generate": {"attempt": 1}}}
    body = with_status(dataset(sharding={"shards": 4, "parallelism": 2}), persisted)
    actions = plan(body, Observed(jobs=[gen]), CTX)
    assert actions.patch_jobs == [("ds-generate-a1", {"spec": {"parallelism": 2}})]


def test_pods_queued_longer_than_the_startup_deadline_fail_the_run() -> None:
    spec = dict(runPolicy={"startupDeadlineSeconds": 300})
    prompts = job("ds-prompts-a1", "prompts")
    queued_since = (NOW - timedelta(seconds=600)).isoformat().replace("+00:00", "Z")
    persisted = {
        "conditions": [
            {
                "type": "Queued",
                "status": "True",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available",
                "lastTransitionTime": queued_since,
            }
        ]
    }
    pending = PodView(
        name="p",
        job_uid=prompts.uid,
        job_name=prompts.name,
        index=0,
        phase="Pending",
        unschedulable="0/3 nodes are available",
    )
    actions = plan(with_status(dataset(**spec), persisted), Observed(jobs=[prompts], pods=[pending]), CTX)
    failed = condition(actions.status, "Failed")
    assert failed["reason"] == "StartupDeadlineExceeded" and "0/3 nodes are available" in failed["message"]
    assert actions.delete_jobs == ["ds-prompts-a1"]


# ----------------------------------------------------------------------------------- pre-training


def pretraining(**matrix: Any) -> dict[str, Any]:
    """A pre-training experiment: data size 0 (transfer only) and 1000 (pretrain, transfer), 2 nodes."""
    return experiment(
        data={
            "synthetic": [{"datasetRef": "ds"}],
            "realTrain": {"uri": "s3://bucket/train/"},
            "test": {"uri": "s3://bucket/test/"},
        },
        method={
            "pretrain": {
                "backbone": "resnet50",
                "batchSize": 16,
                "distributed": {"nodes": 2},
                "transfer": {"linearProbe": {}},
            }
        },
        matrix={"dataSizes": [0, 1000], **matrix},
        resources={"gpus": 2},
    )


def test_a_pretraining_run_goes_through_its_stages_and_its_jobs_expire_once_folded() -> None:
    first = plan(pretraining(), Observed(datasets={"ds": ds_view()}), CTX)
    # size 0 only transfers its init; size 1000 pre-trains first; both on 2-pod gangs with a Service
    assert [c.name for c in first.create] == ["exp-r0-transfer-a1", "exp-r1-pretrain-a1"]
    assert [c.service["metadata"]["name"] for c in first.create] == [c.name for c in first.create]
    assert first.create[1].job["spec"]["completions"] == first.create[1].job["spec"]["parallelism"] == 2
    task = json.loads(first.create[1].configmap["data"]["task.json"])
    assert (task["stage"], task["data"]["size"], task["distributed"]["nnodes"]) == ("pretrain", 1000, 2)
    assert task["data"]["synthetic"][0]["digest"] == DIGEST
    rows = {r["name"]: r for r in first.status["results"]}
    assert rows["sup-1k-scratch"]["stage"] == "pretrain" and rows["sup-0-scratch"]["stage"] == "transfer"

    # the pretrain Job completes: the run moves to its transfer stage, which starts
    pretrain = job("exp-r1-pretrain-a1", "pretrain", final="Complete", completed="0-1", run_index=1)
    pretrain = JobView(**{**pretrain.__dict__, "service": "exp-r1-pretrain-a1"})
    done = pod(pretrain, 0, run="sup-1k-scratch", steps=62, loss=1.5, card="s3://bucket/exp/c.json")
    transfer0 = job("exp-r0-transfer-a1", "transfer", run_index=0)
    second = plan(
        with_status(pretraining(), first.status),
        Observed(jobs=[transfer0, pretrain], pods=[done], datasets={"ds": ds_view()}),
        CTX,
    )
    rows = {r["name"]: r for r in second.status["results"]}
    assert rows["sup-1k-scratch"]["stage"] == "transfer" and rows["sup-1k-scratch"]["state"] == "Running"
    # the pre-training's own numbers stay in the row: steps, last loss, the card transfer reads
    pretrained = rows["sup-1k-scratch"]
    assert (pretrained["pretrainSteps"], pretrained["pretrainLoss"]) == (62, 1.5)
    assert pretrained["card"] == "s3://bucket/exp/c.json"
    assert [c.name for c in second.create] == ["exp-r1-transfer-a1"]
    assert not second.patch_jobs  # not folded in the persisted status yet: the pretrain Job stays
    third = plan(
        with_status(pretraining(), second.status),
        Observed(jobs=[transfer0, pretrain], pods=[done], datasets={"ds": ds_view()}),
        CTX,
    )
    assert [name for name, _ in third.patch_jobs] == ["exp-r1-pretrain-a1"]
    assert third.delete_configmaps == third.delete_services == ["exp-r1-pretrain-a1"]

    # the transfer results make the transfer table: linear probe top-1, the best run
    transfer1 = job("exp-r1-transfer-a1", "transfer", final="Complete", completed="0-1", run_index=1)
    transfer0 = job("exp-r0-transfer-a1", "transfer", final="Complete", completed="0-1", run_index=0)
    pods = [
        pod(transfer0, 0, run="sup-0-scratch", linear_probe_top1=40.0),
        pod(transfer1, 0, run="sup-1k-scratch", linear_probe_top1=55.0),
    ]
    last = plan(
        with_status(pretraining(), third.status),
        Observed(jobs=[transfer0, transfer1, pretrain], pods=pods, datasets={"ds": ds_view()}),
        CTX,
    )
    rows = {r["name"]: r for r in last.status["results"]}
    assert rows["sup-1k-scratch"]["linearProbeTop1"] == 55.0 and rows["sup-0-scratch"]["top1"] == 40.0
    assert rows["sup-1k-scratch"]["metrics"] == "s3://bucket/exp/runs/sup-1k-scratch/transfer/"
    assert rows["sup-1k-scratch"]["card"] == "s3://bucket/exp/c.json" and "card" not in rows["sup-0-scratch"]
    assert rows["sup-1k-scratch"]["pretrainSteps"] == 62 and "pretrainSteps" not in rows["sup-0-scratch"]
    assert last.status["best"] == {"name": "sup-1k-scratch", "top1": 55.0}
    assert condition(last.status, "Complete")["status"] == "True"
    assert (rows["sup-1k-scratch"]["dataSize"], rows["sup-0-scratch"]["init"]) == (1000, "scratch")


def test_a_config_error_of_a_pretrain_stage_fails_the_experiment_with_the_run_and_stage_named() -> None:
    first = plan(pretraining(), Observed(datasets={"ds": ds_view()}), CTX)
    broken = job("exp-r1-pretrain-a1", "pretrain", final="Failed", reason="PodFailurePolicy", run_index=1)
    failing = pod(broken, 0, exit_code=3, error="config", message="backbone 'resnet5' is not a timm model")
    actions = plan(
        with_status(pretraining(), first.status),
        Observed(jobs=[broken], pods=[failing], datasets={"ds": ds_view()}),
        CTX,
    )
    failed = condition(actions.status, "Failed")
    assert failed["reason"] == "ConfigError" and "run sup-1k-scratch pretrain" in failed["message"]
    assert "not a timm model" in failed["message"]
