"""How every benchmark here compares two sides: the same thread settings for both, warm-up rounds that are
not counted, then at least 3 rounds in alternating order, each giving one ratio; the headline is the
median of the per-round ratios, printed with its spread (min-max), never one side's median over the
other's (on a shared host the absolute rates swing by 2x between rounds; a ratio measured within one
round cancels most of that).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

MIN_ROUNDS = 3


@dataclass
class Ratio:
    """Per-round ``numerator / denominator`` ratios of two measured quantities."""

    name: str
    per_round: list[float] = field(default_factory=list)
    sides: dict[str, list[float]] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.per_round)

    def spread(self) -> tuple[float, float]:
        return min(self.per_round), max(self.per_round)

    def text(self, unit: str = "x") -> str:
        lo, hi = self.spread()
        n = len(self.per_round)
        return f"{self.name}: {self.median:.3g}{unit} (median of {n} rounds, {lo:.3g}-{hi:.3g})"

    def as_json(self) -> dict[str, Any]:
        lo, hi = self.spread()
        return {
            "median": round(self.median, 4),
            "min": round(lo, 4),
            "max": round(hi, 4),
            "rounds": [round(r, 4) for r in self.per_round],
            **{f"{k}_per_round": [round(v, 5) for v in vs] for k, vs in self.sides.items()},
        }


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Both sides of a comparison run under this one setting (``None``: torch's default, unchanged)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def paired_rounds(
    name: str,
    sides: dict[str, Callable[[], float]],
    ratio: Callable[[dict[str, float]], float],
    *,
    rounds: int = MIN_ROUNDS,
    warmup: int = 1,
) -> Ratio:
    """Run each side once per round (order alternating between rounds, after ``warmup`` uncounted rounds);
    each side returns its measured quantity (seconds or a rate) and ``ratio`` turns one round's values
    into the round's ratio."""
    if rounds < MIN_ROUNDS:
        raise ValueError(f"{name}: at least {MIN_ROUNDS} rounds, not {rounds}")
    names = list(sides)
    result = Ratio(name, sides={n: [] for n in names})
    for i in range(warmup + rounds):
        order = names if i % 2 == 0 else names[::-1]
        values = {n: sides[n]() for n in order}
        if i < warmup:
            continue
        for n in names:
            result.sides[n].append(values[n])
        result.per_round.append(ratio(values))
    return result
