"""Pure planning shared by the operator and the local runner: spec -> stages, runs, tasks and decisions.

- ``stages``: a dataset's stages, their chained spec hashes and the task JSON of each;
- ``decision``: the one stage decision (start attempt N with these shards / wait / done / failed);
- ``runs``: an experiment's runs (the matrix expanded, defaults filled), its referenced datasets, their
  pinning, and the train task of each run;
- ``tasks``: the task JSON models workers read; ``ranges``: the Job status range strings.

Nothing here does I/O or reads a clock: the executors observe, this package decides.
"""

from synthrec.plan.decision import (
    ShardFailure,
    StageDone,
    StageFailed,
    StageObservation,
    StagePolicy,
    StartAttempt,
    Wait,
    next_step,
)
from synthrec.plan.ranges import format_ranges, parse_ranges
from synthrec.plan.runs import (
    FEW_SHOT_LR,
    ZERO_SHOT_LR,
    default_lr,
    experiment_hash,
    experiment_runs,
    pin_datasets,
    referenced_datasets,
    resolve_classifier_tuning,
    run_hash,
    run_name,
    train_task,
)
from synthrec.plan.stages import (
    HASH_VERSION,
    StageDef,
    dataset_hashes,
    dataset_stages,
    dataset_task,
    digest,
    storage_target,
    wanted_shards,
)
from synthrec.plan.tasks import Run

__all__ = [
    "FEW_SHOT_LR",
    "HASH_VERSION",
    "ZERO_SHOT_LR",
    "Run",
    "ShardFailure",
    "StageDef",
    "StageDone",
    "StageFailed",
    "StageObservation",
    "StagePolicy",
    "StartAttempt",
    "Wait",
    "dataset_hashes",
    "dataset_stages",
    "dataset_task",
    "default_lr",
    "digest",
    "experiment_hash",
    "experiment_runs",
    "format_ranges",
    "next_step",
    "parse_ranges",
    "pin_datasets",
    "referenced_datasets",
    "resolve_classifier_tuning",
    "run_hash",
    "run_name",
    "storage_target",
    "train_task",
    "wanted_shards",
]
