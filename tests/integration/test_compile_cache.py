"""torch.compile's work is kept in the output store: the first pod compiles and stores its artifacts and
the native kernels it built; a later pod (here: this process with its caches emptied, as a fresh pod has
them) on the same CPU loads both, compiles nothing and builds no kernel, and stores nothing new. A pod on
another CPU model builds its own kernels and stores them beside the first's."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from synthrec.contract.layout import DatasetLayout
from synthrec.storage import open_storage
from synthrec.workers.compile_cache import CompileCache, _extract_kernels, host_key, inductor_cache_dir
from tests.harness.artifacts import tar_bytes

pytestmark = pytest.mark.slow


def _compile_and_run() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        torch.compile(model)(torch.randn(3, 8))


def _built_libraries() -> set[str]:
    return {p.name for p in inductor_cache_dir().glob("*/*.so")}


def test_a_later_pod_loads_what_the_first_compiled_and_built(tmp_path: Path) -> None:
    from torch._dynamo.utils import counters
    from torch._inductor.utils import fresh_cache

    storage = open_storage((tmp_path / "ds").as_uri() + "/")
    key = CompileCache.key_of(model="m", revision="r", dtype="float32")

    def pod(host: str | None = None) -> tuple[CompileCache, set[str], set[str]]:
        torch._dynamo.reset()
        counters.clear()
        cache = CompileCache(storage, key, host=host)
        cache.load()
        placed = _built_libraries()
        _compile_and_run()
        return cache, placed, _built_libraries() - placed

    with fresh_cache():  # the first pod: empty caches (but another program's kernel), compiles and builds
        unrelated = inductor_cache_dir() / "zz" / "another-programs-kernel.so"
        unrelated.parent.mkdir(parents=True)
        unrelated.write_bytes(b"not ours")
        first, placed, built = pod()
        assert (first.loaded, first.kernels_loaded, placed) == (False, 0, {unrelated.name})
        assert counters["inductor"]["fxgraph_cache_miss"] >= 1
        assert built, "the first pod builds native kernels"
        assert first.save() is True
    assert storage.exists(DatasetLayout.compile_cache(key))
    stored = _names_in(storage.read_bytes(DatasetLayout.compile_kernels(key, host_key())))
    assert {name.split("/")[1] for name in stored} >= built
    assert "zz/another-programs-kernel.so" not in stored, "only what the pod built is stored"

    with fresh_cache():  # a later pod on the same CPU: empty local caches, the store holds both
        later, placed, built = pod()
        assert later.loaded is True and later.kernels_loaded > 0
        assert counters["inductor"]["fxgraph_cache_hit"] >= 1
        assert counters["inductor"]["fxgraph_cache_miss"] == 0
        assert built == set(), "a later pod builds no kernel"
        assert later.save() is False  # nothing new to store

    with fresh_cache():  # a pod on another CPU model: the artifacts load, the kernels are its own
        other, placed, built = pod(host="another-cpu")
        assert other.loaded is True and other.kernels_loaded == 0 and placed == set()
        assert built, "kernels built for another CPU are not used"
        assert other.save() is True
    assert storage.exists(DatasetLayout.compile_kernels(key, "another-cpu"))
    assert storage.exists(DatasetLayout.compile_kernels(key, host_key()))


def _names_in(archive: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return set(tar.getnames())


def test_stored_kernels_are_placed_only_as_files_in_the_code_cache_folders(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / "ab").mkdir(parents=True)
    (root / "ab" / "kept.so").write_bytes(b"local")
    data = tar_bytes(
        {
            "ab/kept.so": b"stored",  # already here: may be in use, kept
            "cd/new.so": b"kernel",
            "../outside.so": b"x",
            "/abs/olute.so": b"x",
            "fxgraph/entry": b"x",  # graph caches travel in the artifacts, never as files
            "ef/../../escape.so": b"x",
            "ab/.hidden": b"x",
        },
        links={"gh/link.so": "/etc/passwd"},
        mode="w:gz",
    )
    names, placed = _extract_kernels(data, root)
    assert (names, placed) == ({"ab/kept.so", "cd/new.so"}, 1)
    assert (root / "ab" / "kept.so").read_bytes() == b"local"
    assert (root / "cd" / "new.so").read_bytes() == b"kernel"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "cache/ab/kept.so",
        "cache/cd/new.so",
    ]


def test_the_host_key_names_the_cpu_the_kernels_were_built_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import synthrec.workers.compile_cache as cc

    here = host_key()
    assert here == host_key()
    cpuinfo = (
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: sse avx2 fma\ncpu MHz\t\t: 2000\n\n"
        "processor\t: 1\nmodel name\t: Some CPU\n"
    )

    def fake(text: str) -> str:
        monkeypatch.setattr(cc.Path, "read_text", lambda self: text)
        return host_key()

    one = fake(cpuinfo)
    assert fake(cpuinfo.replace(": 2000", ": 3100")) == one  # a clock reading is not the CPU
    assert fake(cpuinfo.replace("sse avx2 fma", "fma sse avx2")) == one
    assert fake(cpuinfo.replace("avx2", "avx512f")) != one
    assert fake(cpuinfo.replace("Some CPU", "Other CPU")) != one
