"""torch.compile's work kept in the output store, so that only the first pods of a dataset compile.

Two parts, stored under ``models/compile-cache/`` (``DatasetLayout``):

- the artifacts (``torch.compiler.save_cache_artifacts``: Inductor's generated code, AOTAutograd's
  graphs, autotuning results and, on a GPU, the Triton kernels), keyed on what they depend on
  (``CompileCache.key_of``);
- the native kernels Inductor built with the host's C++ compiler, which the artifacts do not carry: a later
  CPU pod would otherwise rebuild every one before its first batch (about 80 % of its compile startup,
  bench/compile_startup.py). They are built with ``-march=native``, so they are kept per CPU model and
  instruction set as well (``host_key``): a pod on another CPU builds its own and stores them beside.

Both are code a later pod runs, so write access to the output prefix is code execution in its pods
(docs/cluster.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import re
import tarfile
from pathlib import Path
from typing import Any

import torch

from synthrec.workers.models import first_line

log = logging.getLogger("synthrec.workers.compile_cache")

# Inductor's code cache writes a source and what is built from it to <cache dir>/<2 characters of the
# hash>/<hash>.<suffix>; its graph caches, locks and Triton's cache live in named folders and stay out.
_KERNEL_PATH = re.compile(r"[a-z0-9]{2}/[A-Za-z0-9_][A-Za-z0-9_.-]*")


def host_key() -> str:
    """What a kernel built here with ``-march=native`` may run on: the architecture, the CPU model and
    its feature flags (the first processor's in /proc/cpuinfo; elsewhere what ``platform`` knows)."""
    facts = {"machine": platform.machine(), "processor": platform.processor()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.split("\n\n", 1)[0].splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in ("model name", "flags", "features", "cpu implementer", "cpu part", "cpu variant"):
            facts[name] = " ".join(sorted(value.split())) if name in ("flags", "features") else value.strip()
    blob = json.dumps(facts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def inductor_cache_dir() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


class CompileCache:
    """``load`` before the first compiled call, ``save`` after the shard: each part is stored when this
    pod made something the stored one did not hold."""

    def __init__(self, storage: Any, key: str, host: str | None = None) -> None:
        self.storage, self.key = storage, key
        self.host = host or host_key()
        self.loaded = False  # the artifacts
        self.kernels_loaded = 0  # native kernel files placed in the local cache from the store
        self._kernels_local: set[str] = set()  # in the local cache before this process compiled
        self._kernels_stored: set[str] = set()  # named in the stored archive

    @staticmethod
    def key_of(**facts: Any) -> str:
        facts = {**facts, "torch": torch.__version__}
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name()
        blob = json.dumps(facts, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def load(self) -> bool:
        """Load the stored artifacts and place the stored kernels; True when the artifacts loaded."""
        from synthrec.contract.layout import DatasetLayout

        self._load_kernels()
        data = self._read(DatasetLayout.compile_cache(self.key), "compile cache")
        if data is None:
            return False
        try:
            torch.compiler.load_cache_artifacts(data)
        except Exception as exc:  # another torch's or a damaged cache: compile instead
            log.warning("the stored compile cache does not load (%s); compiling", first_line(exc))
            return False
        self.loaded = True
        log.info("compile cache %s loaded (%d bytes)", self.key, len(data))
        return True

    def save(self) -> bool:
        """Store what this pod compiled that the store lacked; True when anything was stored."""
        kernels = self._save_kernels()
        return self._save_artifacts() or kernels

    def _save_artifacts(self) -> bool:
        from synthrec.contract.layout import DatasetLayout

        if self.loaded and not _compiled_anything_new():
            return False
        saved = torch.compiler.save_cache_artifacts()
        if not saved:
            return False
        return self._write(DatasetLayout.compile_cache(self.key), saved[0], "compile cache")

    def _load_kernels(self) -> None:
        from synthrec.contract.layout import DatasetLayout

        root = inductor_cache_dir()
        self._kernels_local = set(_kernel_files(root))
        data = self._read(DatasetLayout.compile_kernels(self.key, self.host), "compiled kernels")
        if data is None:
            return
        try:
            self._kernels_stored, self.kernels_loaded = _extract_kernels(data, root)
        except (tarfile.TarError, OSError) as exc:  # damaged: build them instead
            log.warning("the stored compiled kernels do not unpack (%s); building them", first_line(exc))
            return
        log.info("%d compiled kernel files placed from the store", self.kernels_loaded)

    def _save_kernels(self) -> bool:
        from synthrec.contract.layout import DatasetLayout

        root = inductor_cache_dir()
        files = set(_kernel_files(root))
        built = files - self._kernels_local - self._kernels_stored
        if not built:
            return False
        # What this process built, with what the store held; not the rest of a local cache that outlives
        # pods (a user's own /tmp/torchinductor_* in local mode holds other programs' kernels).
        keep = sorted(built | (self._kernels_stored & files))
        key = DatasetLayout.compile_kernels(self.key, self.host)
        return self._write(key, _pack(root, keep), "compiled kernels")

    def _read(self, key: str, what: str) -> bytes | None:
        from synthrec.storage import ObjectNotFound, StorageError

        try:
            return self.storage.read_bytes(key)
        except ObjectNotFound:
            return None
        except StorageError as exc:
            log.warning("cannot read the %s (%s); compiling", what, exc)
            return None

    def _write(self, key: str, data: bytes, what: str) -> bool:
        from synthrec.storage import StorageError

        try:
            self.storage.write_bytes(key, data)
        except StorageError as exc:  # an optimisation for later pods: never fail the shard over it
            log.warning("cannot store the %s: %s", what, exc)
            return False
        log.info("%s %s stored (%d bytes)", what, key, len(data))
        return True


def _compiled_anything_new() -> bool:
    from torch._dynamo.utils import counters

    return any(counters["inductor"].get(name, 0) for name in ("fxgraph_cache_miss", "fxgraph_cache_bypass"))


def _kernel_files(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    found = [
        f"{folder.name}/{path.name}"
        for folder in root.iterdir()
        if folder.is_dir() and len(folder.name) == 2
        for path in folder.iterdir()
        if path.is_file() and ".tmp" not in path.name  # another process's unfinished file
    ]
    return sorted(name for name in found if _KERNEL_PATH.fullmatch(name))


def _pack(root: Path, files: list[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name in files:
            tar.add(root / name, arcname=name, recursive=False)
    return buffer.getvalue()


def _extract_kernels(data: bytes, root: Path) -> tuple[set[str], int]:
    """Regular files at ``<2 characters>/<name>`` only; a file already in the local cache is kept (it may
    be in use), and each new one appears whole (written aside, then renamed). Returns the names the
    archive holds and how many files were placed."""
    names: set[str] = set()
    placed = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar:
            if not (member.isfile() and _KERNEL_PATH.fullmatch(member.name)):
                continue
            names.add(member.name)
            target = root / member.name
            if target.exists():
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.tmp{os.getpid()}")
            partial.write_bytes(source.read())
            partial.chmod(0o755 if target.suffix == ".so" else 0o644)
            os.replace(partial, target)
            placed += 1
    return names, placed
