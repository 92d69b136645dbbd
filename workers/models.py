"""Model references as local folders for the worker stages, and quiet model loading."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synthrec.workers.runtime import ConfigError, worker_error


def resolve_model_folder(
    ref: str, field_name: str, storage_opts: dict[str, Any] | None = None
) -> tuple[Path, str | None]:
    """A model reference as a local folder and its revision; ConfigError naming the spec field if it
    cannot be resolved (unknown id, missing folder, no access, no network)."""
    from synthrec.workers.modelref import ModelRefError, resolve_model

    opts = {k: v for k, v in (storage_opts or {}).items() if v}
    try:
        resolved = resolve_model(ref, storage_opts=opts)
    except ModelRefError as exc:
        raise worker_error(exc.failure, f"{field_name}: {exc}") from None
    if resolved.path is None:
        raise ConfigError(
            f"{field_name} {ref!r} is not a model folder; use hf://org/name, s3://bucket/folder/ or "
            "file:///folder"
        )
    return resolved.path, resolved.revision


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def quiet_hub_progress() -> Iterator[None]:
    """No per-file 'Loading weights' bars from transformers/diffusers in worker logs (one line per load
    is logged by the caller instead); their warnings still show."""
    restore = []
    for name in ("transformers", "diffusers"):
        try:
            module = __import__(f"{name}.utils.logging", fromlist=["logging"])
        except ImportError:
            continue
        if module.is_progress_bar_enabled():
            module.disable_progress_bar()
            restore.append(module.enable_progress_bar)
    try:
        yield
    finally:
        for enable in restore:
            enable()


def quiet_library_loggers() -> None:
    # diffusers logs a notice per pipeline about the disabled safety checker; a dataset generator
    # disables it on purpose (it would silently replace images with black ones).
    logging.getLogger("diffusers.pipelines").setLevel(logging.ERROR)
