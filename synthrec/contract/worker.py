"""The contract between whoever runs a worker (the operator's Jobs, the local executor) and the worker.

A worker is started as ``python -m synthrec.workers STAGE --task TASK.json`` with these environment
variables, exits with one of these codes, and writes one line of JSON (≤ 4 KiB) to the termination log: a
typed summary (``synthrec.contract.summaries``).
"""

from __future__ import annotations

import os
from pathlib import Path

# Exit codes. The operator maps them onto the Job's podFailurePolicy.
EXIT_OK = 0
EXIT_RETRYABLE = (
    1  # transient trouble (storage throttling, OOM-like crashes, unexpected errors): retry the shard
)
EXIT_CONFIG_ERROR = 3  # the task cannot work anywhere (bad model ref, bad spec): fail the whole Job (FailJob)
EXIT_DATA_ERROR = 42  # this shard's input is bad (corrupt real images, foreign prompt file): fail the index

# Environment.
ENV_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes for Indexed Jobs (index within the attempt)
ENV_SHARD = "SYNTHREC_SHARD"  # explicit shard id (local runs, debugging); wins over the completion index
ENV_TERMINATION_LOG = "SYNTHREC_TERMINATION_LOG"  # default /dev/termination-log
ENV_PROGRESS_FILE = "SYNTHREC_PROGRESS_FILE"  # optional local JSON file with in-flight progress
ENV_CACHE = "SYNTHREC_CACHE"  # model cache folder
ENV_DEVICE = "SYNTHREC_DEVICE"  # force a torch device (cpu, cuda, cuda:1)
# A multi-node stage's torchrun rendezvous, index 0's <job>-0.<headless service>:<port> (set by the operator)
ENV_RENDEZVOUS = "SYNTHREC_RDZV_ENDPOINT"

ENV_TINY_MODELS = (
    "SYNTHREC_TINY_MODELS"  # where tiny:// models and data are built (default: <cache>/tiny-models)
)

DEFAULT_TERMINATION_LOG = "/dev/termination-log"

# Where the operator mounts the task ConfigMap in worker pods.
TASK_MOUNT_DIR = "/etc/synthrec/task"
TASK_FILE_NAME = "task.json"


def cache_root() -> Path:
    """$SYNTHREC_CACHE, else ~/.cache/synthrec: models, the tiny demo models and feature caches live below."""
    base = os.environ.get(ENV_CACHE)
    return Path(base) if base else Path.home() / ".cache" / "synthrec"
