"""The contract between the executors (operator Jobs, the local runner) and the workers, and the typed
artifacts workers write: the worker protocol (exit codes, environment, the termination summary), the
artifact layout, and reading the artifacts back."""

from synthrec.contract.worker import (
    DEFAULT_TERMINATION_LOG,
    ENV_CACHE,
    ENV_COMPLETION_INDEX,
    ENV_DEVICE,
    ENV_PROGRESS_FILE,
    ENV_SHARD,
    ENV_TERMINATION_LOG,
    ENV_TINY_MODELS,
    EXIT_CONFIG_ERROR,
    EXIT_DATA_ERROR,
    EXIT_OK,
    EXIT_RETRYABLE,
    TASK_FILE_NAME,
    TASK_MOUNT_DIR,
    TERMINATION_LOG_LIMIT,
    cache_root,
    parse_summary,
    summary_line,
)

__all__ = [
    "DEFAULT_TERMINATION_LOG",
    "ENV_CACHE",
    "ENV_COMPLETION_INDEX",
    "ENV_DEVICE",
    "ENV_PROGRESS_FILE",
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
    "cache_root",
    "parse_summary",
    "summary_line",
]
