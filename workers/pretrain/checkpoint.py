"""Checkpoints that survive preemption, on file:// or s3:// (``runs/<run>/pretrain/checkpoints/``).

``step-00001234.pt`` holds everything a resumed run needs to continue the same trajectory: model,
optimizer, scheduler and grad-scaler states, every rank's RNG states (Python, NumPy, torch CPU and CUDA),
the data position (epoch and batches of it consumed) and the loss curve so far. It is written to a local
temporary file, uploaded (an S3 upload or a file:// rename is never visible half-written), and only then
``latest.json`` is replaced to point at it (the commit); older checkpoints beyond ``keep`` are deleted
after that. Loading checks the sha256 recorded in ``latest.json`` and uses ``torch.load(weights_only=True)``:
a checkpoint is data, never code.

A checkpoint of another spec (``spec_hash``) is never resumed: StorageConflict, nothing overwritten.
"""

from __future__ import annotations

import logging
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthrec.storage import Storage, StorageConflict, read_marker, sha256_file, write_marker
from synthrec.workers.runtime import DataError, Terminated

log = logging.getLogger(__name__)

LATEST = "latest.json"
_STEP_FILE = re.compile(r"^step-(\d{8})\.pt$")


def rng_state(device: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (
            kind,
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "torch": torch.get_rng_state(),
    }
    if getattr(device, "type", "cpu") == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: Any) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and getattr(device, "type", "cpu") == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class Checkpoints:
    def __init__(self, storage: Storage, prefix: str, spec_hash: str, keep: int = 2) -> None:
        self.storage = storage
        self.prefix = prefix.rstrip("/") + "/"
        self.spec_hash = spec_hash
        self.keep = keep

    def key(self, name: str) -> str:
        return self.prefix + name

    def latest(self) -> dict[str, Any] | None:
        """The committed pointer to the newest checkpoint, or None; StorageConflict for another spec."""
        pointer = read_marker(self.storage, self.key(LATEST))
        if pointer is not None and pointer["spec_hash"] != self.spec_hash:
            raise StorageConflict(
                f"{self.storage.url(self.key(LATEST))} belongs to another spec (hash {pointer['spec_hash']}, "
                f"this run {self.spec_hash}); nothing was overwritten. Use a new output URI or delete the "
                "run's folder to start over"
            )
        return pointer

    def load(self, pointer: dict[str, Any]) -> dict[str, Any]:
        import torch

        with tempfile.TemporaryDirectory(prefix="synthrec-ckpt-") as tmp:
            local = Path(tmp) / "checkpoint.pt"
            self.storage.download_file(pointer["checkpoint"], local)
            if pointer.get("sha256") and sha256_file(local) != pointer["sha256"]:
                raise DataError(
                    f"{self.storage.url(pointer['checkpoint'])} does not match the sha256 in {LATEST}; "
                    "delete the "
                    "checkpoints folder to start the run over"
                )
            return torch.load(local, map_location="cpu", weights_only=True)

    def save(self, state: dict[str, Any], step: int, *, final: bool = False) -> dict[str, Any]:
        """Write the checkpoint, then commit ``latest.json``; returns the pointer."""
        import torch

        started = time.monotonic()
        name = "final.pt" if final else f"step-{step:08d}.pt"
        with tempfile.TemporaryDirectory(prefix="synthrec-ckpt-") as tmp:
            local = Path(tmp) / name
            torch.save(state, local)
            digest, size = sha256_file(local), local.stat().st_size
            self.storage.upload_file(local, self.key(name))
        pointer = write_marker(
            self.storage,
            self.key(LATEST),
            spec_hash=self.spec_hash,
            checkpoint=self.key(name),
            step=step,
            sha256=digest,
            size=size,
            final=final,
        )
        self._prune(name)
        log.info(
            "checkpoint %s (%.1f MB) saved in %.1f s",
            self.storage.url(self.key(name)),
            size / 1e6,
            time.monotonic() - started,
        )
        return pointer

    def _prune(self, newest: str) -> None:
        steps = sorted(
            info.key
            for info in self.storage.list(self.prefix)
            if _STEP_FILE.match(info.key.rsplit("/", 1)[-1])
        )
        for key in steps[: max(0, len(steps) - self.keep)]:
            if not key.endswith(newest):
                self.storage.delete(key)


def restore(ckpts: Checkpoints, rank: Any, modules: dict[str, Any]) -> dict[str, Any] | None:
    """Resume from the latest checkpoint: load each of ``modules`` (model, optimizer, scheduler, ...) from
    its entry and this rank's RNG states (when the world size is unchanged); returns the whole saved state
    for the caller's own fields, or None when there is none."""
    pointer = ckpts.latest()
    if pointer is None:
        return None
    state = ckpts.load(pointer)
    for name, module in modules.items():
        module.load_state_dict(state[name])
    if state["world"] == rank.world:
        set_rng_state(state["rng"][rank.rank], rank.device)
    else:
        log.warning("resuming with %d processes instead of %d: the random streams differ from the "
                    "interrupted run's", rank.world, state["world"])  # fmt: skip
    log.info("resumed from %s (step %d)", ckpts.storage.url(pointer["checkpoint"]), pointer["step"])
    return state


def save_state(
    ckpts: Checkpoints,
    rank: Any,
    step: int,
    modules: dict[str, Any],
    fields: dict[str, Any],
    *,
    final: bool = False,
) -> dict[str, Any]:
    """Every rank's RNG states are gathered; rank 0 writes the modules' state dicts and ``fields``; all
    ranks wait for it. Returns the committed pointer (empty on the other ranks)."""
    rngs = rank.gather_objects(rng_state(rank.device))
    pointer: dict[str, Any] = {}
    if rank.is_main:
        state = {name: module.state_dict() for name, module in modules.items()}
        pointer = ckpts.save({**state, **fields, "rng": rngs, "world": rank.world}, step, final=final)
    rank.barrier()
    return pointer


class Preemption:
    """After every step the ranks agree on two flags, "a checkpoint is due" (every ``every_s`` seconds of
    rank 0's clock) and "stop" (SIGTERM/SIGINT on any rank), so that all of them save, or stop, on the same
    step: ``save`` runs on either, and a stop then raises Terminated (retryable: the next attempt
    resumes)."""

    def __init__(self, rank: Any, stop: Any, every_s: float, save: Callable[[], Any]) -> None:
        self.rank, self.stop, self.every_s, self.save = rank, stop, every_s, save
        self.last = time.monotonic()

    def after_step(self, where: str) -> None:
        due = self.rank.is_main and time.monotonic() - self.last >= self.every_s
        due, stopping = self.rank.agree(due, self.stop.is_set())
        if due or stopping:
            self.save()
            self.last = time.monotonic()
        if stopping:
            raise Terminated(f"stopped {where} after a signal; the checkpoint resumes it")
