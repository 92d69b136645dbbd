"""The runs of a RecognitionExperiment: the matrix expanded, their hashes and their train tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from synthrec.api import ClassifierTuning, RecognitionExperimentSpec, SyntheticSource
from synthrec.plan.stages import HASH_VERSION, digest, storage_target
from synthrec.plan.tasks import DatasetInput, ResourceRef, RunPlan, TrainTask

ZERO_SHOT_LR = 2e-3  # paper README, zero-shot CT
FEW_SHOT_LR = 1e-3  # paper README, few-shot CT


def run_name(shots: int, seed: int, variant: str | None) -> str:
    base = f"shots{shots}-seed{seed}"
    return f"{base}-{variant}" if variant else base


def resolve_classifier_tuning(spec: RecognitionExperimentSpec, variant: Any | None) -> ClassifierTuning:
    ct = spec.method.classifier_tuning
    if variant is not None and variant.classifier_tuning is not None:
        overrides = variant.classifier_tuning.model_dump(exclude_none=True)
        ct = ClassifierTuning.model_validate({**ct.model_dump(), **overrides})
    return ct


@dataclass(frozen=True)
class RunDef:
    index: int
    name: str
    shots: int
    seed: int
    variant: str | None
    synthetic: tuple[SyntheticSource, ...]
    classifier_tuning: ClassifierTuning
    lr: float


def experiment_runs(spec: RecognitionExperimentSpec) -> list[RunDef]:
    """Expand the matrix (shots x seeds x variants) into runs, in a stable order."""
    variants = spec.matrix.variants or [None]
    runs = []
    for shots in spec.matrix.shots:
        for seed in spec.matrix.seeds:
            for variant in variants:
                ct = resolve_classifier_tuning(spec, variant)
                synthetic = spec.data.synthetic
                if variant is not None and variant.synthetic is not None:
                    synthetic = variant.synthetic
                lr = ct.lr if ct.lr is not None else (ZERO_SHOT_LR if shots == 0 else FEW_SHOT_LR)
                name = run_name(shots, seed, variant.name if variant else None)
                runs.append(
                    RunDef(
                        len(runs),
                        name,
                        shots,
                        seed,
                        variant.name if variant else None,
                        tuple(synthetic),
                        ct,
                        lr,
                    )
                )
    return runs


def experiment_hash(spec: RecognitionExperimentSpec) -> str:
    w = spec.wire()
    keys = ("labels", "backbone", "data", "method", "matrix")
    return digest({"v": HASH_VERSION, **{k: w[k] for k in keys}})


def run_hash(spec: RecognitionExperimentSpec, run: RunDef, inputs: list[DatasetInput]) -> str:
    w = spec.wire()
    return digest(
        {
            "v": HASH_VERSION,
            "labels": w["labels"],
            "backbone": w["backbone"],
            "data": {k: v for k, v in w["data"].items() if k != "synthetic"},
            "run": {
                "shots": run.shots,
                "seed": run.seed,
                "lr": run.lr,
                "ct": run.classifier_tuning.model_dump(),
            },
            "synthetic": [{"uri": i.uri, "digest": i.digest} for i in inputs],
        }
    )


def train_task(
    spec: RecognitionExperimentSpec,
    run: RunDef,
    inputs: list[DatasetInput],
    resource: ResourceRef,
    *,
    attempt: int = 1,
) -> TrainTask:
    """The task of one run; ``inputs`` are the run's synthetic datasets resolved to URIs and digests."""
    return TrainTask(
        resource=resource,
        output=storage_target(spec.output),
        spec_hash=run_hash(spec, run, inputs),
        attempt=attempt,
        shards=1,
        experiment=spec,
        labels=spec.labels,
        run=RunPlan(
            name=run.name,
            index=run.index,
            shots=run.shots,
            seed=run.seed,
            variant=run.variant,
            synthetic=inputs,
            classifier_tuning=run.classifier_tuning,
            lr=run.lr,
        ),
    )


# ------------------------------------------------------------------------------- referenced datasets


def referenced_datasets(spec: RecognitionExperimentSpec) -> list[str]:
    """Every SyntheticDataset the experiment's runs reference (data.synthetic and variants), in order."""
    refs: list[str] = []
    for run in experiment_runs(spec):
        for source in run.synthetic:
            if source.dataset_ref and source.dataset_ref not in refs:
                refs.append(source.dataset_ref)
    return refs


def pin_datasets(
    runs: Sequence[RunDef], resolve: Callable[[SyntheticSource], DatasetInput]
) -> dict[str, list[DatasetInput]]:
    """Each run's synthetic inputs (run name -> inputs, in the run's order), every distinct source pinned
    once by ``resolve``: the operator pins from the datasets' status, the local runner from storage."""
    pinned: dict[str, DatasetInput] = {}
    inputs: dict[str, list[DatasetInput]] = {}
    for run in runs:
        for source in run.synthetic:
            key = source.dataset_ref or str(source.uri)
            if key not in pinned:
                pinned[key] = resolve(source)
        inputs[run.name] = [pinned[source.dataset_ref or str(source.uri)] for source in run.synthetic]
    return inputs
