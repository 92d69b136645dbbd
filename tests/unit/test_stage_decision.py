"""The one stage decision of both executors (synthrec.plan.decision.next_step), as a table: what was
observed, the sharding policy, and the step that must follow."""

from __future__ import annotations

import pytest

from synthrec import api
from synthrec.plan import (
    ShardFailure,
    StageDone,
    StageFailed,
    StageObservation,
    StagePolicy,
    StartAttempt,
    Wait,
    dataset_stages,
    next_step,
    wanted_shards,
)

ALL = frozenset(range(4))
DATA_ERROR = ShardFailure(retryable=False, message="corrupt real image")
CRASH = ShardFailure(message="CUDA error: an illegal memory access")


def seen(**fields: object) -> StageObservation:
    return StageObservation(wanted=fields.pop("wanted", ALL), **fields)  # type: ignore[arg-type]


def policy(max_attempts: int = 3, max_failed: int = 0, tries: int = 3) -> StagePolicy:
    return StagePolicy(max_attempts=max_attempts, max_failed=max_failed, tries_per_attempt=tries)


CASES = [
    # (what the executor saw, the policy, the step that follows)
    ("never started: attempt 1 with every shard", seen(), policy(), StartAttempt(1, ALL)),
    (
        "never started, some shards committed by an earlier run: only the others",
        seen(committed=frozenset({0, 2})),
        policy(),
        StartAttempt(1, frozenset({1, 3})),
    ),
    ("everything committed before anything ran", seen(committed=ALL), policy(), StageDone()),
    ("an attempt is running", seen(attempt=1, running=True), policy(), Wait()),
    (
        "running but every shard committed: done (nothing left to wait for)",
        seen(attempt=1, running=True, committed=ALL),
        policy(),
        StageDone(attempt=1),
    ),
    (
        "the attempt was interrupted (suspend, Ctrl-C, a deleted Job): the same attempt again",
        seen(attempt=2, committed=frozenset({0, 1})),
        policy(),
        StartAttempt(2, frozenset({2, 3})),
    ),
    (
        "an attempt left a crashed shard: the next attempt runs only it",
        seen(attempt=1, finished=True, committed=frozenset({0, 1, 3}), failed={2: CRASH}),
        policy(),
        StartAttempt(2, frozenset({2}), retry=True),
    ),
    (
        "shards the attempt never ran (stopped at its budget) are retried like failed ones",
        seen(attempt=1, finished=True, committed=frozenset({0}), failed={1: DATA_ERROR}),
        policy(max_failed=1),
        StartAttempt(2, frozenset({1, 2, 3}), retry=True),
    ),
    (
        "the last attempt fails within the budget: done, the shard tolerated",
        seen(attempt=3, finished=True, committed=frozenset({0, 1, 3}), failed={2: CRASH}),
        policy(max_failed=1),
        StageDone(frozenset({2}), attempt=3),
    ),
    (
        "a data error is not worth another attempt: tolerated at once within the budget",
        seen(attempt=1, finished=True, committed=frozenset({0, 1, 3}), failed={2: DATA_ERROR}),
        policy(max_failed=1),
        StageDone(frozenset({2}), attempt=1),
    ),
    (
        "a data error beyond the budget fails the stage without another attempt",
        seen(attempt=1, finished=True, committed=frozenset({0, 1, 3}), failed={2: DATA_ERROR}),
        policy(max_failed=0),
        StageFailed(
            "MaxFailedShardsExceeded",
            "1 shard(s) (2) failed after 1 attempt(s) of 3 tries each; sharding.maxFailedShards allows 0; "
            "first error: corrupt real image",
            frozenset({2}),
            1,
        ),
    ),
    (
        "data errors beyond the budget fail at once, even beside shards worth another attempt",
        seen(attempt=1, finished=True, committed=frozenset({0}), failed={1: DATA_ERROR, 2: CRASH}),
        policy(max_failed=0),
        StageFailed(
            "MaxFailedShardsExceeded",
            "3 shard(s) (1-3) failed after 1 attempt(s) of 3 tries each; sharding.maxFailedShards allows 0; "
            "first error: corrupt real image",
            frozenset({1, 2, 3}),
            1,
        ),
    ),
    (
        "the last attempt fails beyond the budget",
        seen(attempt=2, finished=True, committed=frozenset({0, 3}), failed={1: CRASH, 2: CRASH}),
        policy(max_attempts=2, max_failed=1, tries=2),
        StageFailed(
            "MaxFailedShardsExceeded",
            "2 shard(s) (1-2) failed after 2 attempt(s) of 2 tries each; sharding.maxFailedShards allows 1; "
            "first error: CUDA error: an illegal memory access",
            frozenset({1, 2}),
            2,
        ),
    ),
    (
        "a configuration error stops the stage at once, whatever the attempts left",
        seen(attempt=1, finished=True, stopped=("ConfigError", "model not found"), failed={0: CRASH}),
        policy(),
        StageFailed("ConfigError", "model not found", ALL, 1),
    ),
    (
        "a deadline stops it too, even while running",
        seen(attempt=1, running=True, stopped=("DeadlineExceeded", "ran too long")),
        policy(),
        StageFailed("DeadlineExceeded", "ran too long", ALL, 1),
    ),
    ("nothing wanted (no shard was generated): done", seen(wanted=frozenset()), policy(), StageDone()),
]


@pytest.mark.parametrize(("observed", "rules", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_next_step(observed: StageObservation, rules: StagePolicy, expected: object) -> None:
    assert next_step(observed, rules) == expected


def spec(**sharding: int) -> api.SyntheticDatasetSpec:
    return api.SyntheticDatasetSpec.model_validate(
        {
            "labels": {"preset": "tiny"},
            "generator": {"model": "tiny://sd"},
            "sharding": {"shards": 4, **sharding},
            "output": {"uri": "file:///tmp/ds/"},
        }
    )


def test_the_policy_follows_the_sharding_spec_and_single_pod_stages_may_not_fail() -> None:
    s = spec(maxFailedShards=2, maxAttempts=4, retriesPerShard=1)
    stages = {d.stage: d for d in dataset_stages(s)}
    assert StagePolicy.of(s, stages["generate"]) == StagePolicy(4, 2, 2)
    assert StagePolicy.of(s, stages["prompts"]).max_failed == 0
    assert StagePolicy.of(s, stages["reduce"]).max_failed == 0
    # the filter stage gets what the generate stage left of the budget
    assert StagePolicy.of(s, stages["filter"], upstream_failed=1).max_failed == 1
    assert StagePolicy.of(s, stages["filter"], upstream_failed=3).max_failed == 0


def test_the_filter_stage_wants_only_the_generated_shards() -> None:
    stages = {d.stage: d for d in dataset_stages(spec())}
    assert wanted_shards(stages["generate"], {0}) == ALL
    assert wanted_shards(stages["filter"], {0, 3}) == {0, 3}
    assert wanted_shards(stages["prompts"], set()) == {0}
