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
from synthrec.contract.pretraining import (
    TRANSFER_KINDS,
    PretrainMetrics,
    TransferMetrics,
    parse_pretrain_metrics,
    parse_transfer_metrics,
)
from synthrec.contract.resource import parse_resource_document
from synthrec.limits import bounded
from synthrec.plan.tasks import PretrainRun, Run
from synthrec.storage import (
    MAX_JSON_BYTES,
    InvalidKey,
    ObjectNotFound,
    ObjectTooLarge,
    Storage,
    StorageError,
    open_storage,
)

MAX_MARKER_BYTES = 1024 * 1024  # commit markers are small JSON objects
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
    manifest_problem: str | None = None  # why a manifest.json that exists could not be read

    def stage(self, name: str) -> StageState:
        return next(s for s in self.stages if s.stage == name)

    @property
    def complete(self) -> bool:
        return self.manifest is not None


def _marker_hash(storage: Storage, key: str) -> str | None:
    try:
        marker = storage.read_json(key, max_bytes=MAX_MARKER_BYTES)
    except ObjectNotFound:
        return None
    except ObjectTooLarge:  # no marker is that large: not a commit
        return ""
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

    manifest, digest, problem = None, None, None
    try:
        raw = storage.read_bytes(DatasetLayout.manifest, max_bytes=MAX_JSON_BYTES)
    except ObjectNotFound:
        raw = None
    except ObjectTooLarge as exc:
        raw, problem = b"", bounded(str(exc))
    if raw is not None:  # the dataset's own commit marker
        try:
            parsed = parse_manifest(raw, storage.url(DatasetLayout.manifest))
        except DocumentError as exc:
            parsed = None  # not a manifest of this synthrec version: not ours to build on
            problem = problem or bounded(str(exc))
        found = parsed.spec_hash if parsed is not None else ""
        record(by_stage["reduce"], 0, found)
        if parsed is not None and found == by_stage["reduce"].spec_hash:
            manifest, digest = parsed, hashlib.sha256(raw).hexdigest()
    return DatasetState(name, storage.uri, spec, hashes, stages, manifest, digest, problem)


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
    problem: str | None = None  # why the metrics.json of a done run could not be read

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
class PretrainRunState:
    """A pre-training run (the plan's record of it) and its stages' artifacts: the pre-trained backbone's
    metrics and each transfer evaluation's metrics, counted only when committed by this spec."""

    run: PretrainRun
    stages: list[str]  # what the plan runs: pretrain (unless data size 0), transfer (when asked for)
    kinds: list[str]  # the transfer evaluations asked for (folders: classification, linear-probe, ...)
    pretrain_done: bool = False
    transfer_done: bool = False
    stale: bool = False  # a done.json exists, but for other inputs
    pretrain: PretrainMetrics | None = None
    transfer: dict[str, TransferMetrics] = field(default_factory=dict)  # folder -> metrics

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def done(self) -> bool:
        return ("pretrain" not in self.stages or self.pretrain_done) and (
            "transfer" not in self.stages or self.transfer_done
        )

    @property
    def stage(self) -> str:
        """The stage still to run ('done' when none)."""
        if "pretrain" in self.stages and not self.pretrain_done:
            return "pretrain"
        return "transfer" if "transfer" in self.stages and not self.transfer_done else "done"

    def result(self, kind: str) -> float | None:
        """The table's number of one evaluation: top-1, or the VOC07 AP50 of detection."""
        metrics = self.transfer.get(kind)
        return metrics.headline if metrics else None


@dataclass
class ExperimentState:
    name: str
    uri: str
    spec: api.RecognitionExperimentSpec
    runs: list[RunState]
    pretraining: list[PretrainRunState] = field(default_factory=list)  # method.pretrain: its runs

    @property
    def complete(self) -> bool:
        return all(r.done for r in self.runs) and all(r.done for r in self.pretraining)

    @property
    def missing(self) -> list[RunState]:
        return [r for r in self.runs if not r.done]

    @property
    def all_runs(self) -> list[RunState] | list[PretrainRunState]:
        return self.pretraining if self.spec.method.pretrain is not None else self.runs


def experiment_state(
    storage: Storage,
    spec: api.RecognitionExperimentSpec,
    *,
    name: str = "",
    run_hashes: dict[str, str] | None = None,
) -> ExperimentState:
    """The runs of an experiment and which of them are done.

    With ``run_hashes`` (run name -> the run's spec hash, what the runner computes from the pinned dataset
    digests; ``<run>/pretrain`` and ``<run>/transfer`` for a pre-training run's stages) a run counts as
    done only when its done.json carries that hash; without, any done.json does.
    """
    if spec.method.pretrain is not None:
        return ExperimentState(name, storage.uri, spec, [], pretrain_states(storage, spec, run_hashes))
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
                raw = storage.read_bytes(key, max_bytes=MAX_JSON_BYTES)
                state.metrics = parse_metrics(raw, storage.url(key))
            except ObjectNotFound:
                state.problem = f"{storage.url(key)} is missing although the run is done"
            except (DocumentError, ObjectTooLarge) as exc:
                state.problem = bounded(str(exc))
        runs.append(state)
    return ExperimentState(name, storage.uri, spec, runs)


def pretrain_states(
    storage: Storage, spec: api.RecognitionExperimentSpec, run_hashes: dict[str, str] | None = None
) -> list[PretrainRunState]:
    """The runs of a pre-training experiment and which of their stages are committed."""
    hashes = run_hashes or {}
    transfer = spec.method.pretrain.transfer if spec.method.pretrain else None
    kinds = [folder for field_, folder in TRANSFER_KINDS.items() if transfer and getattr(transfer, field_)]
    states = []
    for r in plan.pretrain_runs(spec):
        state = PretrainRunState(r, plan.run_stages(spec, r), kinds)
        marker = _marker_hash(storage, ExperimentLayout.pretrain(r.name, "done.json"))
        if marker is not None:
            wanted = hashes.get(f"{r.name}/pretrain")
            state.pretrain_done = wanted is None or marker == wanted
            state.stale |= not state.pretrain_done
        if state.pretrain_done:
            state.pretrain = _parsed(
                storage, ExperimentLayout.pretrain(r.name, "metrics.json"), parse_pretrain_metrics
            )
        for kind in kinds:
            folder = ExperimentLayout.transfer(r.name, kind)
            marker = _marker_hash(storage, folder + "done.json")
            wanted = hashes.get(f"{r.name}/transfer")
            if marker is not None and (wanted is None or marker == wanted):
                metrics = _parsed(storage, folder + "metrics.json", parse_transfer_metrics)
                if metrics is not None:
                    state.transfer[kind] = metrics
            elif marker is not None:
                state.stale = True
        state.transfer_done = bool(kinds) and len(state.transfer) == len(kinds)
        states.append(state)
    return states


def _parsed(storage: Storage, key: str, parse: Any) -> Any:
    """A stored document parsed, size-capped as every JSON the readers take; None when missing or bad."""
    try:
        return parse(storage.read_bytes(key, max_bytes=MAX_JSON_BYTES), storage.url(key))
    except (ObjectNotFound, ObjectTooLarge, DocumentError):
        return None


def pretrain_rows(state: ExperimentState) -> list[dict[str, Any]]:
    """The transfer table (the paper's Tables 8-11): one row per pre-training run, its numbers as
    percentages (detection: the VOC07 11-point AP50)."""
    rows = []
    for r in state.pretraining:
        rows.append(
            {
                "name": r.name,
                "objective": r.run.objective,
                "label_space": r.run.label_space,
                "size": r.run.size,
                "init": r.run.init,
                "seed": r.run.seed,
                "stage": r.stage,
                "state": "Succeeded" if r.done else "Pending",
                "pretrain_steps": r.pretrain.steps if r.pretrain else None,
                "pretrain_loss": r.pretrain.final_loss if r.pretrain else None,
                "classification_top1": r.result("classification"),
                "linear_probe_top1": r.result("linear-probe"),
                "ap50": r.result("detection"),
            }
        )
    return rows


def experiment_summary(state: ExperimentState) -> dict[str, Any]:
    """summary.json of an experiment: every run with its top-1 and the zero-shot baseline, and the best;
    a pre-training experiment: the transfer table."""
    if state.spec.method.pretrain is not None:
        rows = pretrain_rows(state)
        return {"experiment": state.name, "pretraining": rows, "complete": state.complete}
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


@dataclass
class Unreadable:
    """A resource root whose spec.json could not be read: where, and why (for a note, not a traceback)."""

    uri: str
    problem: str


@dataclass
class Scan:
    """What ``scan_resources`` found: the resources, and the roots it could not read."""

    found: list[FoundResource]
    unreadable: list[Unreadable]


def read_resource(storage: Storage) -> FoundResource | None:
    """The resource whose root is ``storage`` (from its spec.json), or None when there is no spec.json.
    ArtifactError says what is wrong with a spec.json that exists."""
    where = storage.url(DatasetLayout.spec)
    try:
        raw = storage.read_bytes(DatasetLayout.spec, max_bytes=MAX_JSON_BYTES)
    except ObjectNotFound:
        return None
    except ObjectTooLarge as exc:
        raise ArtifactError(str(exc)) from None
    try:
        doc = parse_resource_document(raw, where)
    except DocumentError as exc:
        raise ArtifactError(f"{bounded(str(exc))}; it does not describe a synthrec resource") from None
    from pydantic import ValidationError

    try:
        spec = api.KIND_INFO[doc.kind].spec.model_validate(doc.spec)
    except ValidationError as exc:
        raise ArtifactError(
            f"{where}: the recorded spec is not valid for this synthrec version "
            f"({exc.error_count()} problems, first: {bounded(exc.errors()[0]['msg'], 300)})"
        ) from None
    document = doc.model_dump(mode="json", by_alias=True, exclude_none=True)
    return FoundResource(doc.kind, doc.metadata.name, storage.uri, storage, spec, document)


def find_resources(
    uri: str, *, endpoint: str | None = None, region: str | None = None
) -> list[FoundResource]:
    """Resources at ``uri``: a single resource root (with spec.json), or a storage root with datasets/ and
    experiments/ below. Raises ArtifactError when there is none, or one cannot be read."""
    scan = scan_resources(uri, endpoint=endpoint, region=region)
    if scan.unreadable:
        raise ArtifactError(scan.unreadable[0].problem)
    return scan.found


def scan_resources(uri: str, *, endpoint: str | None = None, region: str | None = None) -> Scan:
    """``find_resources`` that goes on past a resource it cannot read (the report notes those).
    Raises ArtifactError when there is nothing at all."""
    root = open_storage(uri, endpoint=endpoint, region=region)
    try:
        single = read_resource(root)
    except ArtifactError as exc:
        return Scan([], [Unreadable(root.uri, str(exc))])
    if single is not None:
        return Scan([single], [])
    layout = StorageLayout(root.uri)
    scan = Scan([], [])
    for folder in (layout.datasets, layout.experiments):
        for name in _child_names(root, folder):
            try:
                res = read_resource(root.child(f"{folder}{name}/"))
            except (ArtifactError, InvalidKey) as exc:
                scan.unreadable.append(Unreadable(f"{root.uri}{folder}{bounded(name, 100)}/", str(exc)))
                continue
            if res is not None:
                scan.found.append(res)
    if not scan.found and not scan.unreadable:
        raise ArtifactError(
            f"no synthrec resource at {root.uri}: expected a spec.json there (a resource's output) or "
            f"datasets/<name>/spec.json and experiments/<name>/spec.json below it (a `synthrec run` storage)"
        )
    return scan


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
