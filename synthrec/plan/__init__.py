"""Pure planning shared by the operator and the local runner: spec -> stages, runs, tasks and decisions.

- ``stages``: a dataset's stages, their chained spec hashes and the task JSON of each;
- ``decision``: the one stage decision (start attempt N with these shards / wait / done / failed);
- ``runs``: an experiment's runs (the matrix expanded, defaults filled), its referenced datasets, their
  pinning, and the train task of each run;
- ``pretraining``: a pre-training experiment's runs (data size x init x objective x label space x seed),
  their chained hashes and their pretrain and transfer tasks;
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
from synthrec.plan.pretraining import (
    PRETRAIN_STAGE,
    TRANSFER_STAGE,
    pretrain_runs,
    pretrain_task,
    run_stages,
    stage_task,
    transfer_task,
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
    runs_of,
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
from synthrec.plan.tasks import PretrainRun, Run

__all__ = [
    "FEW_SHOT_LR",
    "HASH_VERSION",
    "PRETRAIN_STAGE",
    "TRANSFER_STAGE",
    "ZERO_SHOT_LR",
    "PretrainRun",
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
    "pretrain_runs",
    "pretrain_task",
    "referenced_datasets",
    "resolve_classifier_tuning",
    "run_hash",
    "run_name",
    "run_stages",
    "runs_of",
    "stage_task",
    "storage_target",
    "train_task",
    "transfer_task",
    "wanted_shards",
]
