"""The selection rules of the reduce stage, on numpy arrays (pure): the CLIP Filter of one class and Real
Filtering (their definitions are in synthrec.workers.reduce's docstring).

Both select by partial selection, not by sorting: the top K of a class's n scores with a partition
(O(n)); the k nearest real shots of each image with ``argpartition`` over its similarities, in chunks of at
most RF_SIMILARITIES pairs. Ties go where the stable sorts they replace put them (lower position first),
which tests/unit/test_clip_filter.py checks against those sorts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

RF_SIMILARITIES = 1 << 24  # Real Filtering compares at most this many (image, shot) pairs at once: 64 MB


def clip_filter(
    scores: Sequence[float], threshold: float, keep: int, selection: str, seed: int, class_index: int
) -> tuple[list[int], list[bool]]:
    """The CLIP Filter for one class. ``scores`` are in (shard, key) order; returns the kept positions
    (sorted) and whether each position passed the threshold."""
    import numpy as np

    kept, passed = select_class(
        np.asarray(scores, dtype=np.float64), threshold, keep, selection, seed, class_index
    )
    return kept.tolist(), passed.tolist()


def select_class(
    scores: Any, threshold: float, keep: int, selection: str, seed: int, class_index: int
) -> tuple[Any, Any]:
    """``clip_filter`` on a numpy array: (kept positions, sorted; passed mask). The random draw is the
    official rule's ``random.Random(...).sample(passing, K)`` (drawn over positions, which picks the same
    images without a Python list of the class); ``top`` is a partial selection (O(n), not a sort)."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)  # compared in float64, as Python floats were
    passed = scores > threshold
    n = len(scores)
    if n <= keep:
        return np.arange(n), passed
    passing = np.flatnonzero(passed)
    if selection == "random" and len(passing) >= keep:
        draw = random.Random(f"synthrec-cf:{seed}:{class_index}").sample(range(len(passing)), keep)
        return np.sort(passing[np.asarray(draw, dtype=np.int64)]), passed
    return top_positions(scores, keep), passed


def top_positions(scores: Any, k: int) -> Any:
    """Positions of the ``k`` highest scores, ties going to the lower position, sorted: the first ``k`` of
    a stable sort by descending score, found with a partition instead of the sort."""
    import numpy as np

    n = len(scores)
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(scores, n - k)[n - k]  # the k-th largest value
    above = np.flatnonzero(scores > kth)
    ties = np.flatnonzero(scores == kth)[: k - len(above)]
    return np.sort(np.concatenate([above, ties]))


def nearest_shots(sim: Any, k: int) -> Any:
    """[rows, k]: the indices of the ``k`` largest similarities per row, most similar first, ties to the
    lower index (what a stable descending argsort's first k columns are), by partial selection."""
    import numpy as np

    n = sim.shape[1]
    k = min(k, n)
    if k == 1:
        return np.argmax(sim, axis=1)[:, None]  # the first maximum: ties go to the lower index
    if k == n:
        return np.argsort(-sim, axis=1, kind="stable")
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(sim, part, axis=1).min(axis=1, keepdims=True)
    # A row whose k-th value is tied with a value outside the partition needs the stable rule.
    ties = (sim == kth).sum(axis=1) != (np.take_along_axis(sim, part, axis=1) == kth).sum(axis=1)
    vals = np.take_along_axis(sim, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    if ties.any():
        rows = np.flatnonzero(ties)
        top[rows] = np.argsort(-sim[rows], axis=1, kind="stable")[:, :k]
    return top


def real_filter_keep(
    syn_feats: Any, syn_class: Any, real_feats: Any, real_class: Any, k: int, rule: str
) -> Any:
    """Bool mask over synthetic images: True = keep (see the module docstring for the rules)."""
    import numpy as np

    syn = np.asarray(syn_feats, dtype=np.float32)
    real = np.asarray(real_feats, dtype=np.float32)
    real_class = np.asarray(real_class)
    syn_class = np.asarray(syn_class)
    k = max(1, min(k, len(real)))
    keep = np.ones(len(syn), dtype=bool)
    classes = int(max(real_class.max(initial=0), syn_class.max(initial=0))) + 1
    chunk = max(1, RF_SIMILARITIES // max(1, len(real)))  # bounded memory: chunk x shots similarities
    for start in range(0, len(syn), chunk):
        sim = syn[start : start + chunk] @ real.T
        labels = real_class[nearest_shots(sim, k)]  # the k most similar shots, most similar first
        own = syn_class[start : start + chunk]
        rows = np.arange(len(labels))
        if k == 1:
            ok = labels[:, 0] == own
        else:
            votes = np.zeros((len(labels), classes), dtype=np.int32)
            np.add.at(votes, (rows[:, None], labels), 1)
            ok = votes[rows, own] >= votes.max(axis=1)
        if rule == "strict":
            ok &= labels[:, 0] == own
        keep[start : start + chunk] = ok
    return keep
