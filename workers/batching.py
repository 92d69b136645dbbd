"""The generation batch size, chosen by measurement (``generator.batchSizeSearch``).

The first batches of a shard try batch sizes 1, 2, 4, ... up to ``generator.batchSize``: each size runs once
to warm up (its first call pays cuDNN autotuning and, with compile, compilation) and once timed; the search
stops when a size brings less than MIN_GAIN over the best so far, runs out of memory, or reaches the
maximum. The fastest size generates the rest. Nothing is wasted: the search batches are the shard's own
items, and each image has its own seed, so a batch's size does not change its images.

The choice is stored in the output (``DatasetLayout.batch_choice``) under a key of everything it depends on
(model revision, pipeline, device, dtype, size, guidance, compile, Real Guidance, torch), so the pods after
the first ones read it instead of searching again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from synthrec.contract.layout import DatasetLayout
from synthrec.storage import ObjectNotFound, Storage, StorageError

log = logging.getLogger(__name__)

MIN_GAIN = 1.05  # a larger batch must be at least 5 % faster per image to be worth it


def candidates(maximum: int) -> list[int]:
    """1, 2, 4, ... below ``maximum``, then ``maximum``."""
    sizes, size = [], 1
    while size < maximum:
        sizes.append(size)
        size *= 2
    return [*sizes, maximum]


@dataclass
class BatchSearch:
    """The search as a state machine: ``size`` is the next batch to run, ``record`` reports how it went."""

    maximum: int
    rates: dict[int, float] = field(default_factory=dict)  # size -> images/s of its timed batch
    done: bool = False
    _sizes: list[int] = field(default_factory=list)
    _warmed: bool = False

    def __post_init__(self) -> None:
        self._sizes = candidates(self.maximum)

    @property
    def size(self) -> int:
        return self.best if self.done else self._sizes[0]

    @property
    def timed(self) -> bool:
        """Whether the next batch is a timed one (time it synchronously)."""
        return not self.done and self._warmed

    @property
    def best(self) -> int:
        return max(self.rates, key=lambda s: (self.rates[s], -s)) if self.rates else self._sizes[0]

    def record(self, size: int, images: int, seconds: float) -> None:
        """A batch of ``size`` (``images`` of them made, fewer at the shard's end) took ``seconds``."""
        if self.done:
            return
        if images < size:  # the shard ran out: keep what is known
            self.done = True
            return
        if not self._warmed:
            self._warmed = True
            return
        rate = images / max(seconds, 1e-9)
        previous = max(self.rates.values(), default=0.0)
        self.rates[size] = rate
        self._warmed = False
        self._sizes.pop(0)
        if not self._sizes or (previous and rate < previous * MIN_GAIN):
            self.done = True

    def out_of_memory(self, size: int) -> None:
        """``size`` does not fit: the search ends with the best size that did."""
        if not self.rates:
            raise MemoryError(f"a batch of {size} image(s) does not fit on the device")
        self.done = True


def choice_key(**facts: Any) -> str:
    blob = json.dumps(facts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def load_choice(storage: Storage, key: str) -> dict[str, Any] | None:
    """A batch size measured before under the same key, or None."""
    try:
        record = storage.read_json(DatasetLayout.batch_choice(key))
    except ObjectNotFound:
        return None
    except StorageError as exc:
        log.warning("cannot read the stored batch size choice (%s); searching again", exc)
        return None
    return record if isinstance(record, dict) and isinstance(record.get("batch_size"), int) else None


def save_choice(storage: Storage, key: str, search: BatchSearch, **facts: Any) -> None:
    record = {
        "batch_size": search.best,
        "images_per_s": {str(k): round(v, 4) for k, v in sorted(search.rates.items())},
        **facts,
    }
    try:
        storage.write_json(DatasetLayout.batch_choice(key), record)
    except StorageError as exc:  # an optimisation for later pods: never fail the shard over it
        log.warning("cannot store the batch size choice: %s", exc)
