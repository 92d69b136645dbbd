"""The one stage decision both executors make: from what is committed, what failed and what runs, what next.

A dataset stage runs in attempts. Attempt 1 runs every shard the stage wants; when an attempt ends with
shards lacking a commit, the next attempt runs only those, up to ``sharding.maxAttempts``. Retries of a
shard inside an attempt (``retriesPerShard``) are the executor's business (the Job's backoffLimitPerIndex,
the local worker pool). A shard that failed with a data error is not worth another attempt; a stage whose
last attempt leaves more failed shards than its budget fails (at once, when data errors alone exceed it).

The operator observes Jobs (completedIndexes, failed pods, Job conditions) and the local runner observes
commit markers and worker processes; both describe what they saw as a :class:`StageObservation` and ask
:func:`next_step`. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from synthrec.api import SyntheticDatasetSpec
from synthrec.plan.ranges import format_ranges
from synthrec.plan.stages import StageDef
from synthrec.plan.tasks import SHARDED_STAGES

MAX_FAILED_SHARDS_EXCEEDED = "MaxFailedShardsExceeded"


@dataclass(frozen=True)
class StagePolicy:
    """The sharding policy of one stage."""

    max_attempts: int
    max_failed: int  # shards this stage may leave failed (its failure budget)
    tries_per_attempt: int = 1  # 1 + retriesPerShard: how often a shard runs within one attempt

    @classmethod
    def of(cls, spec: SyntheticDatasetSpec, stage: StageDef, upstream_failed: int = 0) -> StagePolicy:
        """The policy of ``stage``: a single-pod stage may not fail at all; the filter stage's budget is
        what the generate stage left of ``sharding.maxFailedShards`` (``upstream_failed`` shards)."""
        sharding = spec.sharding
        budget = sharding.max_failed_shards - upstream_failed if stage.stage in SHARDED_STAGES else 0
        return cls(sharding.max_attempts, max(0, budget), sharding.retries_per_shard + 1)


@dataclass(frozen=True)
class ShardFailure:
    """A shard that ran in the latest attempt and ended without a commit."""

    retryable: bool = True  # False: a data error, another attempt would fail the same way
    message: str = ""  # what the worker said


@dataclass(frozen=True)
class StageObservation:
    """What an executor saw of a stage."""

    wanted: frozenset[int]  # the shards the stage must produce
    committed: frozenset[int] = frozenset()  # shards with a commit (or reported done)
    attempt: int = 0  # the latest attempt started; 0: none yet
    running: bool = False  # that attempt is in flight, or its results are still arriving
    finished: bool = False  # that attempt ended (False with attempt > 0: it was interrupted)
    failed: Mapping[int, ShardFailure] = field(default_factory=dict)  # its shards that failed
    stopped: tuple[str, str] | None = None  # (reason, message): a config error or deadline ended it


@dataclass(frozen=True)
class StartAttempt:
    """Start attempt ``attempt`` with ``shards``; ``retry``: a new attempt after failed shards."""

    attempt: int
    shards: frozenset[int]
    retry: bool = False


@dataclass(frozen=True)
class Wait:
    """Nothing to do until the running attempt (or its results) moves on."""


@dataclass(frozen=True)
class StageDone:
    """Every wanted shard is committed, except ``tolerated`` ones that failed within the budget."""

    tolerated: frozenset[int] = frozenset()
    attempt: int = 0


@dataclass(frozen=True)
class StageFailed:
    reason: str
    message: str
    shards: frozenset[int] = frozenset()
    attempt: int = 0


Step = StartAttempt | Wait | StageDone | StageFailed


def next_step(observed: StageObservation, policy: StagePolicy) -> Step:
    """The next step of a stage (see the module docstring)."""
    missing = observed.wanted - observed.committed
    if not missing:
        return StageDone(attempt=observed.attempt)
    if observed.stopped is not None:
        reason, message = observed.stopped
        return StageFailed(reason, message, frozenset(missing), observed.attempt)
    if observed.running:
        return Wait()
    if observed.attempt == 0 or not observed.finished:
        # Never started, or its attempt was stopped before finishing (suspend, a deleted Job, Ctrl-C):
        # the same attempt again, with the shards that have no commit yet.
        return StartAttempt(max(1, observed.attempt), frozenset(missing))
    # Shards of a finished attempt without a commit failed, also those it never ran (the attempt was
    # stopped once its failures passed the budget); those without a data error are worth another attempt.
    # Data errors fail the same way every time: more of them than the budget allows fail the stage now.
    lost = frozenset(s for s in missing if not observed.failed.get(s, ShardFailure()).retryable)
    if len(lost) < len(missing) and len(lost) <= policy.max_failed and observed.attempt < policy.max_attempts:
        return StartAttempt(observed.attempt + 1, frozenset(missing), retry=True)
    if len(missing) <= policy.max_failed:
        return StageDone(frozenset(missing), observed.attempt)
    return StageFailed(
        MAX_FAILED_SHARDS_EXCEEDED,
        describe_failed(missing, observed, policy),
        frozenset(missing),
        observed.attempt,
    )


def describe_failed(shards: frozenset[int], observed: StageObservation, policy: StagePolicy) -> str:
    """Which shards failed, after how many attempts, what the budget allows and the first error."""
    first = next((observed.failed[s].message for s in sorted(shards) if s in observed.failed), "")
    first = first or next((f.message for _, f in sorted(observed.failed.items()) if f.message), "")
    return (
        f"{len(shards)} shard(s) ({format_ranges(shards)}) failed after {observed.attempt} attempt(s) "
        f"of {policy.tries_per_attempt} tries each; sharding.maxFailedShards allows {policy.max_failed}"
        + (f"; first error: {first}" if first else "")
    )
