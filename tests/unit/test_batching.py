"""The generation batch size is chosen by measurement: sizes 1, 2, 4, ... each run once to warm up and once
timed, until a larger one is not at least 5 % faster per image, runs out of memory or is the largest
allowed; the fastest size wins. Timings here are given, not measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthrec.workers.batching import BatchSearch, candidates


def run(search: BatchSearch, seconds_per_batch: dict[int, float], items: int = 10_000) -> list[int]:
    """Drive the search like the generate stage does; returns the batch sizes run, in order."""
    sizes = []
    while not search.done and items > 0:
        size = search.size
        made = min(size, items)
        items -= made
        sizes.append(size)
        search.record(size, made, seconds_per_batch[size])
    return sizes


def test_candidates_double_up_to_the_maximum() -> None:
    assert candidates(16) == [1, 2, 4, 8, 16]
    assert candidates(24) == [1, 2, 4, 8, 16, 24]
    assert candidates(1) == [1]


def test_the_search_stops_where_a_larger_batch_stops_paying() -> None:
    # images/s: 1 -> 10, 2 -> 18, 4 -> 30, 8 -> 31 (3 % more: not worth it)
    search = BatchSearch(64)
    sizes = run(search, {1: 0.1, 2: 2 / 18, 4: 4 / 30, 8: 8 / 31})
    assert sizes == [1, 1, 2, 2, 4, 4, 8, 8]  # each size warmed up, then timed
    assert search.done and search.best == 8 and search.size == 8
    assert search.rates == pytest.approx({1: 10, 2: 18, 4: 30, 8: 31})


def test_a_slower_larger_batch_keeps_the_smaller_one() -> None:
    search = BatchSearch(64)
    run(search, {1: 0.1, 2: 2 / 18, 4: 4 / 12})
    assert search.best == 2


def test_the_search_ends_at_the_maximum_and_when_the_shard_runs_out() -> None:
    search = BatchSearch(4)
    assert run(search, {1: 0.1, 2: 0.1, 4: 0.1}) == [1, 1, 2, 2, 4, 4] and search.best == 4
    short = BatchSearch(64)
    # 5 images: 1 (warm), 1 (timed), 2 (warm), then only 1 left: the search ends on what it measured
    assert run(short, {1: 0.1, 2: 0.1, 4: 0.1}, items=5) == [1, 1, 2, 2] and short.done and short.best == 1


def test_out_of_memory_ends_the_search_with_the_best_size_that_fit() -> None:
    search = BatchSearch(64)
    run(search, {1: 0.1, 2: 0.1}, items=6)  # 1 and 2 measured, the shard would go on
    search.done = False
    search.out_of_memory(4)
    assert search.done and search.best == 2
    with pytest.raises(MemoryError):
        BatchSearch(8).out_of_memory(1)


def test_images_made_uint8_on_the_device_round_as_the_numpy_path() -> None:
    from synthrec.workers.diffusion import HostImages
    from synthrec.workers.shardio import to_uint8

    images = torch.rand(3, 3, 8, 8, dtype=torch.float32) * 1.2 - 0.1  # outside [0, 1] too
    images[0, 0, 0, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 254.5 / 255, 0.999])
    host = HostImages(images.half())  # the pipeline's own dtype on a GPU
    numpy_path = to_uint8(images.half().float().permute(0, 2, 3, 1).numpy())  # diffusers' np output
    assert len(host) == 3 and np.array_equal(to_uint8(host), numpy_path)
