"""Fetching many objects concurrently with bounded memory.

``map_bounded(fn, items)`` runs ``fn`` over ``items`` on a few threads (object-store reads wait on the
network, numpy releases the GIL) and yields the results in item order, with at most ``window`` calls
started but not yet consumed: memory holds at most ``window`` downloads at a time, however many shards a
dataset has. The reduce stage reads its features files this way, the train stage the rows it needs.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

ENV_CONCURRENCY = "SYNTHREC_FETCH_CONCURRENCY"
DEFAULT_CONCURRENCY = 8


def fetch_concurrency() -> int:
    """Threads fetching at once: $SYNTHREC_FETCH_CONCURRENCY, default 8 (S3 serves each connection at
    85-90 MB/s, so 8 fill a 5 Gb/s link)."""
    raw = os.environ.get(ENV_CONCURRENCY, "")
    try:
        return max(1, int(raw)) if raw else DEFAULT_CONCURRENCY
    except ValueError:
        raise ValueError(f"{ENV_CONCURRENCY}={raw!r} is not a whole number") from None


def map_bounded(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int | None = None, window: int | None = None
) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in item order; ``workers`` threads, at most ``window`` (default 2 x workers)
    results held. An exception in ``fn`` is raised here, in order; pending calls are cancelled."""
    workers = workers or fetch_concurrency()
    window = max(1, window or 2 * workers)
    pending: deque[tuple[T, Future[R]]] = deque()
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthrec-fetch") as pool:
        try:
            for item in source:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= window:
                    done_item, future = pending.popleft()
                    yield done_item, future.result()
            while pending:
                done_item, future = pending.popleft()
                yield done_item, future.result()
        finally:
            for _, future in pending:
                future.cancel()
