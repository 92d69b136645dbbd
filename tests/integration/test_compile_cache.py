"""torch.compile's artifacts are kept in the output store: the first pod compiles and stores them, a later
pod (here: this process with its caches emptied, as a fresh pod has them) loads them and compiles nothing
itself (Inductor's graph cache hits, no miss), and stores nothing new."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthrec.contract.layout import DatasetLayout
from synthrec.storage import open_storage
from synthrec.workers.diffusion import CompileCache

pytestmark = pytest.mark.slow


def _compile_and_run() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        torch.compile(model)(torch.randn(3, 8))


def test_a_later_pod_loads_what_the_first_compiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.utils import counters
    from torch._inductor.utils import fresh_cache

    storage = open_storage((tmp_path / "ds").as_uri() + "/")
    key = CompileCache.key_of(model="m", revision="r", dtype="float32")
    torch._dynamo.reset()
    counters.clear()
    with fresh_cache():  # the first pod: empty caches
        first = CompileCache(storage, key)
        assert first.load() is False
        _compile_and_run()
        assert counters["inductor"]["fxgraph_cache_miss"] >= 1
        assert first.save() is True
    assert storage.exists(DatasetLayout.compile_cache(key))

    torch._dynamo.reset()
    counters.clear()
    with fresh_cache():  # a later pod: empty local caches again, the store holds the artifacts
        later = CompileCache(storage, key)
        assert later.load() is True
        _compile_and_run()
        assert counters["inductor"]["fxgraph_cache_hit"] >= 1
        assert counters["inductor"]["fxgraph_cache_miss"] == 0
        assert later.save() is False  # nothing new to store
