"""The contract between whoever runs a worker (the operator's Jobs, the local executor) and the worker.

A worker is started as ``python -m synthrec.workers STAGE --task TASK.json`` with these environment
variables, exits with one of these codes, and writes one line of JSON (≤ 4 KiB) to the termination log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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

ENV_TINY_MODELS = (
    "SYNTHREC_TINY_MODELS"  # where tiny:// models and data are built (default: <cache>/tiny-models)
)

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_LIMIT = 4096

# Where the operator mounts the task ConfigMap in worker pods.
TASK_MOUNT_DIR = "/etc/synthrec/task"
TASK_FILE_NAME = "task.json"


def cache_root() -> Path:
    """$SYNTHREC_CACHE, else ~/.cache/synthrec: models, the tiny demo models and feature caches live below."""
    base = os.environ.get(ENV_CACHE)
    return Path(base) if base else Path.home() / ".cache" / "synthrec"


def summary_line(summary: dict[str, Any]) -> str:
    """One line of compact JSON that fits the kubelet's 4 KiB termination-message limit.

    Long string values are shortened first; counts and URIs survive.
    """
    line = json.dumps(summary, separators=(",", ":"), sort_keys=True, default=str)
    if len(line.encode()) <= TERMINATION_LOG_LIMIT:
        return line
    trimmed = {k: (v[:200] + "…" if isinstance(v, str) and len(v) > 200 else v) for k, v in summary.items()}
    line = json.dumps(trimmed, separators=(",", ":"), sort_keys=True, default=str)
    if len(line.encode()) <= TERMINATION_LOG_LIMIT:
        return line
    keep = {
        k: v
        for k, v in trimmed.items()
        if isinstance(v, int | float | bool) or k in ("stage", "shard", "error")
    }
    return json.dumps(keep, separators=(",", ":"), sort_keys=True, default=str)[:TERMINATION_LOG_LIMIT]


def parse_summary(message: str | None) -> dict[str, Any] | None:
    """Read a worker's termination message back; None when it is missing or not ours."""
    if not message:
        return None
    try:
        value = json.loads(message.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return value if isinstance(value, dict) else None
