"""Range strings, the Job status format of index sets: {0,1,2,3,5} <-> '0-3,5'."""

from __future__ import annotations


def format_ranges(indexes: set[int] | list[int]) -> str:
    """{0,1,2,3,5} -> '0-3,5' (the Job status format)."""
    values = sorted(set(indexes))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


def parse_ranges(text: str | None) -> set[int]:
    """'0-3,5' -> {0,1,2,3,5}; empty or None -> set()."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out
