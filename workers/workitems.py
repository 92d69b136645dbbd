"""Prompt rows and generation work items: what the prompts stage writes and the generate stage splits.

Pure Python (no torch), so a finished shard can be recognised without loading anything heavy.

A *work item* is one image to make: (class, prompt row, image number), plus the real shot it starts
from under Real Guidance. Items are numbered in one global order (class, then prompt row, then image),
shard ``s`` of ``S`` takes the contiguous slice ``[s*T//S, (s+1)*T//S)`` of the ``T`` items (as the
official code splits its flat prompt list), and every item's seed is derived from the generate stage hash
and the item's key, so an image never depends on the shard count at run time, the batch it landed in or
how often the shard was retried.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# Prompt rows (prompts.jsonl) are a typed artifact: synthrec.contract.prompts. Re-exported for the stages.
from synthrec.contract.prompts import PromptRow as PromptRow
from synthrec.contract.prompts import PromptSource as PromptSource
from synthrec.contract.prompts import dump_rows as dump_rows
from synthrec.contract.prompts import parse_rows as parse_rows


def even_split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible, the first ones taking the remainder."""
    if parts <= 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (hash-based, so nearby inputs give unrelated seeds)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


# -------------------------------------------------------------------------------------- work items


@dataclass(frozen=True)
class WorkItem:
    index: int  # global position over the whole dataset
    key: str  # WebDataset key: made of indexes only, never of class names or prompts
    class_index: int
    class_name: str
    prompt_index: int
    image: int  # image number among the prompt's images
    prompt: str
    prompt_source: str
    seed: int
    shot: int | None  # Real Guidance: index into the class's sampled shots


def item_key(class_index: int, prompt_index: int, image: int) -> str:
    # No '.', so WebDataset cannot mistake part of the key for an extension.
    return f"c{class_index:05d}-p{prompt_index:05d}-i{image:05d}"


def item_seed(stage_hash: str, key: str) -> int:
    return derive_seed("synthrec-image", stage_hash, key)


def total_items(rows: Iterable[PromptRow]) -> int:
    return sum(r.images for r in rows)


def shard_range(total: int, shard: int, shards: int) -> tuple[int, int]:
    """Global item range ``[lo, hi)`` of ``shard``: contiguous, sizes differing by at most one."""
    return shard * total // shards, (shard + 1) * total // shards


def shard_items(
    rows: list[PromptRow],
    *,
    shard: int,
    shards: int,
    stage_hash: str,
    shots: int | None = None,
    interleaved: bool = False,
) -> Iterator[WorkItem]:
    """The work items of ``shard``, in global order, built without materialising the other shards: a
    contiguous range of the class-major order, or with ``interleaved`` every ``shards``-th item from
    ``shard`` on, so that every shard holds every class evenly (``sharding.order``). Keys and seeds do not
    depend on the shard, so both orders make the same images.

    With ``shots`` (Real Guidance), each class's images are spread evenly over its shots in order:
    images_per_class / shots per real image, as in the paper.
    """
    total = total_items(rows)
    lo, hi = (0, total) if interleaved else shard_range(total, shard, shards)
    per_class: dict[int, int] = {}
    for r in rows:
        per_class[r.class_index] = per_class.get(r.class_index, 0) + r.images
    start = 0  # global index of the row's first image
    class_offset: dict[int, int] = {}  # images of the class before this row
    for row in rows:
        offset = class_offset.get(row.class_index, 0)
        class_offset[row.class_index] = offset + row.images
        first, start = start, start + row.images
        if start <= lo or first >= hi:
            continue
        bounds = _shot_bounds(per_class[row.class_index], shots) if shots else None
        images = (
            range((shard - first) % shards, row.images, shards)
            if interleaved
            else range(max(0, lo - first), min(row.images, hi - first))
        )
        for image in images:
            key = item_key(row.class_index, row.index, image)
            shot = _shot_of(offset + image, bounds) if bounds else None
            yield WorkItem(
                index=first + image,
                key=key,
                class_index=row.class_index,
                class_name=row.class_name,
                prompt_index=row.index,
                image=image,
                prompt=row.prompt,
                prompt_source=row.source,
                seed=item_seed(stage_hash, key),
                shot=shot,
            )


def _shot_bounds(images: int, shots: int) -> list[int]:
    bounds, acc = [], 0
    for n in even_split(images, shots):
        acc += n
        bounds.append(acc)
    return bounds


def _shot_of(position: int, bounds: list[int]) -> int:
    return bisect.bisect_right(bounds, position)


def per_class_counts(items: Iterable[Any], attr: str = "class_index") -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        k = str(getattr(item, attr))
        counts[k] = counts.get(k, 0) + 1
    return counts
