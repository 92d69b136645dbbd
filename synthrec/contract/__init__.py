"""The contract between the executors (operator Jobs, the local runner) and the workers, and the typed
artifacts the workers write, which everybody else parses:

- ``worker``: how a worker is started (environment), how it ends (exit codes);
- ``summaries``: the termination summary of each stage; ``manifest``: a dataset's manifest.json;
  ``metrics``: a run's metrics.json; ``confusion``: a run's confusion.json (each a model with a version);
- ``layout``: where each artifact lives under an output URI;
- ``artifacts``: reading them back (which shards and runs are committed, resources found in storage).
"""

from synthrec.contract.summaries import (
    TERMINATION_LOG_LIMIT,
    CleanupSummary,
    FailureSummary,
    FilterSummary,
    GenerateSummary,
    PretrainSummary,
    PromptsSummary,
    ReduceSummary,
    StageSummary,
    Summary,
    TrainSummary,
    TransferSummary,
    parse_summary,
    summary_line,
)
from synthrec.contract.worker import (
    DEFAULT_TERMINATION_LOG,
    ENV_CACHE,
    ENV_COMPLETION_INDEX,
    ENV_DEVICE,
    ENV_PROGRESS_FILE,
    ENV_RENDEZVOUS,
    ENV_SHARD,
    ENV_TERMINATION_LOG,
    ENV_TINY_MODELS,
    EXIT_CONFIG_ERROR,
    EXIT_DATA_ERROR,
    EXIT_OK,
    EXIT_RETRYABLE,
    TASK_FILE_NAME,
    TASK_MOUNT_DIR,
    cache_root,
)

__all__ = [
    "DEFAULT_TERMINATION_LOG",
    "ENV_CACHE",
    "ENV_COMPLETION_INDEX",
    "ENV_DEVICE",
    "ENV_PROGRESS_FILE",
    "ENV_RENDEZVOUS",
    "ENV_SHARD",
    "ENV_TERMINATION_LOG",
    "ENV_TINY_MODELS",
    "EXIT_CONFIG_ERROR",
    "EXIT_DATA_ERROR",
    "EXIT_OK",
    "EXIT_RETRYABLE",
    "TASK_FILE_NAME",
    "TASK_MOUNT_DIR",
    "TERMINATION_LOG_LIMIT",
    "CleanupSummary",
    "FailureSummary",
    "FilterSummary",
    "GenerateSummary",
    "PretrainSummary",
    "PromptsSummary",
    "ReduceSummary",
    "StageSummary",
    "Summary",
    "TrainSummary",
    "TransferSummary",
    "cache_root",
    "parse_summary",
    "summary_line",
]
