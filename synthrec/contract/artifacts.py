"""What is done and what is missing, read from the artifacts alone.

The local runner asks this module which shards still need work (so a re-run continues from the committed
shards), ``synthrec status`` prints it, and the report reads results through it. Every answer comes from
commit markers in storage (``*.done.json`` with the stage's spec hash, ``manifest.json`` for the whole
dataset, ``runs/<run>/done.json`` for a run) and from ``spec.json`` at a resource root, which says what the
resource is. Nothing here starts work or writes anything but ``summary.json``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from synthrec import api, plan
from synthrec.contract.base import DocumentError
from synthrec.contract.layout import DatasetLayout, ExperimentLayout, StorageLayout
from synthrec.contract.manifest import DatasetManifest, parse_manifest
from synthrec.contract.metrics import RunMetrics, parse_metrics
from synthrec.plan.tasks import Run
from synthrec.storage import ObjectNotFound, Storage, StorageError, open_storage

_SHARD_MARKER = re.compile(r"^(shards|features)/gen-(\d+)\.done\.json$")


class ArtifactError(StorageError):
    """The location holds no synthrec resource, or its spec.json cannot be read."""


# ------------------------------------------------------------------------------------------ datasets


@dataclass
class StageState:
    """One dataset stage: which shards carry a commit marker of this stage's spec hash."""

    stage: str
    shards: int
    spec_hash: str
    enabled: bool = True
    committed: set[int] = field(default_factory=set)
    foreign: set[int] = field(default_factory=set)  # committed by ANOTHER spec hash: a conflict

    @property
    def missing(self) -> set[int]:
        return set(range(self.shards)) - self.committed if self.enabled else set()

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class DatasetState:
    name: str
    uri: str  # where the artifacts are (the resource root)
    spec: api.SyntheticDatasetSpec
    hashes: dict[str, str]
    stages: list[StageState]
    manifest: DatasetManifest | None = None  # only when committed by this spec
    manifest_digest: str | None = None  # sha256 of manifest.json: what experiments pin

    def stage(self, name: str) -> StageState:
        return next(s for s in self.stages if s.stage == name)

    @property
    def complete(self) -> bool:
        return self.manifest is not None


def _marker_hash(storage: Storage, key: str) -> str | None:
    try:
        marker = storage.read_json(key)
    except ObjectNotFound:
        return None
    except StorageError:
        raise
    except ValueError:  # not JSON: not a commit
        return ""
    if not isinstance(marker, dict) or not isinstance(marker.get("spec_hash"), str):
        return ""
    return str(marker["spec_hash"])


def dataset_state(
    storage: Storage,
    spec: api.SyntheticDatasetSpec,
    *,
    name: str = "",
    hashes: dict[str, str] | None = None,
) -> DatasetState:
    """Read the commit markers of a dataset rooted at ``storage``.

    ``hashes`` are the stage hashes to compare markers with (default: computed from ``spec``; ``status``
    passes those recorded in spec.json, which stay right when synthrec's hash version changes).
    """
    defs = plan.dataset_stages(spec)
    hashes = dict(hashes or plan.dataset_hashes(spec))
    stages = [StageState(d.stage, d.shards, hashes.get(d.stage, d.spec_hash), d.enabled) for d in defs]
    by_stage = {s.stage: s for s in stages}

    def record(state: StageState, shard: int, found: str | None) -> None:
        if found is None:
            return
        if found == state.spec_hash:
            state.committed.add(shard)
        else:
            state.foreign.add(shard)

    record(by_stage["prompts"], 0, _marker_hash(storage, DatasetLayout.prompts_marker))
    markers = [info.key for info in storage.list("shards/")] + [
        info.key for info in storage.list("features/")
    ]
    for key in markers:
        match = _SHARD_MARKER.match(key)
        if not match:
            continue
        shard = int(match.group(2))
        state = by_stage["generate" if match.group(1) == "shards" else "filter"]
        if shard < state.shards:
            record(state, shard, _marker_hash(storage, key))

    manifest, digest = None, None
    try:
        raw = storage.read_bytes(DatasetLayout.manifest)
    except ObjectNotFound:
        raw = None
    if raw is not None:  # the dataset's own commit marker
        try:
            parsed = parse_manifest(raw, storage.url(DatasetLayout.manifest))
        except DocumentError:
            parsed = None  # not a manifest of this synthrec version: not ours to build on
        found = parsed.spec_hash if parsed is not None else ""
        record(by_stage["reduce"], 0, found)
        if parsed is not None and found == by_stage["reduce"].spec_hash:
            manifest, digest = parsed, hashlib.sha256(raw).hexdigest()
    return DatasetState(name, storage.uri, spec, hashes, stages, manifest, digest)


def manifest_digest(storage: Storage) -> str | None:
    """sha256 of the dataset's manifest.json (the digest experiments pin), or None when there is none."""
    try:
        return storage.sha256(DatasetLayout.manifest)
    except ObjectNotFound:
        return None


# --------------------------------------------------------------------------------------- experiments


@dataclass
class RunState:
    """A run (the plan's record of it) and what its artifacts say about it."""

    run: Run
    done: bool = False
    stale: bool = False  # a done.json exists, but for other inputs (e.g. a regenerated dataset)
    metrics: RunMetrics | None = None

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def shots(self) -> int:
        return self.run.shots

    @property
    def seed(self) -> int:
        return self.run.seed

    @property
    def variant(self) -> str | None:
        return self.run.variant

    @property
    def method(self) -> str:
        return self.run.method

    @property
    def top1(self) -> float | None:
        return self.metrics.top1 if self.metrics else None

    @property
    def top1_last(self) -> float | None:
        return self.metrics.top1_last if self.metrics else None

    @property
    def top1_best_validation(self) -> float | None:
        return self.metrics.top1_best_validation if self.metrics else None

    @property
    def zero_shot_top1(self) -> float | None:
        return self.metrics.zero_shot_top1 if self.metrics else None


@dataclass
class ExperimentState:
    name: str
    uri: str
    spec: api.RecognitionExperimentSpec
    runs: list[RunState]

    @property
    def complete(self) -> bool:
        return all(r.done for r in self.runs)

    @property
    def missing(self) -> list[RunState]:
        return [r for r in self.runs if not r.done]


def experiment_state(
    storage: Storage,
    spec: api.RecognitionExperimentSpec,
    *,
    name: str = "",
    run_hashes: dict[str, str] | None = None,
) -> ExperimentState:
    """The runs of an experiment and which of them are done.

    With ``run_hashes`` (run name -> the run's spec hash, what the runner computes from the pinned dataset
    digests) a run counts as done only when its done.json carries that hash; without, any done.json does.
    """
    runs = []
    for r in plan.experiment_runs(spec):
        state = RunState(r)
        found = _marker_hash(storage, ExperimentLayout.run_marker(r.name))
        if found is not None:
            wanted = (run_hashes or {}).get(r.name)
            state.done = wanted is None or found == wanted
            state.stale = not state.done
        if state.done:
            key = ExperimentLayout.run_metrics(r.name)
            try:
                state.metrics = parse_metrics(storage.read_bytes(key), storage.url(key))
            except (ObjectNotFound, DocumentError):
                state.metrics = None
        runs.append(state)
    return ExperimentState(name, storage.uri, spec, runs)


def experiment_summary(state: ExperimentState) -> dict[str, Any]:
    """summary.json of an experiment: every run with its top-1 and the zero-shot baseline, and the best."""
    rows = []
    for r in state.runs:
        rows.append(
            {
                "name": r.name,
                "shots": r.shots,
                "seed": r.seed,
                "variant": r.variant,
                "method": r.method,
                "state": "Succeeded" if r.done else "Pending",
                "top1": r.top1,
                "top1_last": r.top1_last,
                "top1_best_validation": r.top1_best_validation,
                "zero_shot_top1": r.zero_shot_top1,
                "metrics": ExperimentLayout.run_metrics(r.name) if r.done else None,
            }
        )
    scored = [row for row in rows if row["top1"] is not None]
    best = max(scored, key=lambda row: row["top1"]) if scored else None
    return {
        "experiment": state.name,
        "runs": rows,
        "best": {"name": best["name"], "top1": best["top1"]} if best else None,
        "complete": state.complete,
    }


# ------------------------------------------------------------------------------- finding resources


@dataclass
class FoundResource:
    """A resource found in storage through its spec.json."""

    kind: str
    name: str
    uri: str  # its root, where the artifacts are
    storage: Storage
    spec: api.SyntheticDatasetSpec | api.RecognitionExperimentSpec
    document: dict[str, Any]

    @property
    def hashes(self) -> dict[str, str] | None:
        value = self.document.get("hashes")
        return dict(value) if isinstance(value, dict) else None

    def dataset_state(self) -> DatasetState:
        assert isinstance(self.spec, api.SyntheticDatasetSpec)
        return dataset_state(self.storage, self.spec, name=self.name, hashes=self.hashes)

    def experiment_state(self) -> ExperimentState:
        assert isinstance(self.spec, api.RecognitionExperimentSpec)
        return experiment_state(self.storage, self.spec, name=self.name)


def read_resource(storage: Storage) -> FoundResource | None:
    """The resource whose root is ``storage`` (from its spec.json), or None when there is no spec.json."""
    try:
        doc = storage.read_json(DatasetLayout.spec)
    except ObjectNotFound:
        return None
    except ValueError as exc:
        raise ArtifactError(f"{storage.url(DatasetLayout.spec)} is not JSON: {exc}") from None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind not in api.KIND_INFO:
        raise ArtifactError(
            f"{storage.url(DatasetLayout.spec)} does not describe a synthrec resource (kind {kind!r})"
        )
    from pydantic import ValidationError

    try:
        spec = api.KIND_INFO[kind].spec.model_validate(doc.get("spec") or {})
    except ValidationError as exc:
        raise ArtifactError(
            f"{storage.url(DatasetLayout.spec)}: the recorded spec is not valid for this synthrec version "
            f"({exc.error_count()} problems, first: {exc.errors()[0]['msg']})"
        ) from None
    name = str((doc.get("metadata") or {}).get("name") or storage.uri.rstrip("/").rsplit("/", 1)[-1])
    return FoundResource(kind, name, storage.uri, storage, spec, doc)  # type: ignore[arg-type]


def find_resources(
    uri: str, *, endpoint: str | None = None, region: str | None = None
) -> list[FoundResource]:
    """Resources at ``uri``: a single resource root (with spec.json), or a storage root with datasets/ and
    experiments/ below. Raises ArtifactError when there is none."""
    root = open_storage(uri, endpoint=endpoint, region=region)
    single = read_resource(root)
    if single is not None:
        return [single]
    layout = StorageLayout(root.uri)
    found = []
    for folder in (layout.datasets, layout.experiments):
        for name in _child_names(root, folder):
            res = read_resource(root.child(f"{folder}{name}/"))
            if res is not None:
                found.append(res)
    if not found:
        raise ArtifactError(
            f"no synthrec resource at {root.uri}: expected a spec.json there (a resource's output) or "
            f"datasets/<name>/spec.json and experiments/<name>/spec.json below it (a `synthrec run` storage)"
        )
    return found


def _child_names(storage: Storage, folder: str) -> list[str]:
    """Names of the resource folders directly below ``folder`` that hold a spec.json."""
    from synthrec.storage import FileStorage

    if isinstance(storage, FileStorage):  # no need to walk every shard on a local disk
        base = storage.root / folder
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / DatasetLayout.spec).is_file())
    names = set()
    for info in storage.list(folder):
        rest = info.key[len(folder) :]
        name, _, tail = rest.partition("/")
        if tail == DatasetLayout.spec:
            names.add(name)
    return sorted(names)


def describe_missing(indexes: Iterable[int]) -> str:
    """'0-3,7' or '-' when nothing is missing."""
    text = plan.format_ranges(list(indexes))
    return text or "-"
