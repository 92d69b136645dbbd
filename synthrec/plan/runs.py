"""The runs of a RecognitionExperiment: the matrix expanded, their hashes and their train tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from synthrec.api import ClassifierTuning, RecognitionExperimentSpec, SyntheticSource, Variant
from synthrec.plan.stages import HASH_VERSION, digest, storage_target
from synthrec.plan.tasks import DatasetInput, ResourceRef, Run, TrainTask

ZERO_SHOT_LR = 2e-3  # paper README, zero-shot CT
FEW_SHOT_LR = 1e-3  # paper README, few-shot CT


def run_name(shots: int, seed: int, variant: str | None) -> str:
    base = f"shots{shots}-seed{seed}"
    return f"{base}-{variant}" if variant else base


def resolve_classifier_tuning(spec: RecognitionExperimentSpec, variant: Variant | None) -> ClassifierTuning:
    """method.classifierTuning with the variant's overrides, as written (the learning rate may be unset)."""
    ct = spec.method.classifier_tuning
    if variant is not None and variant.classifier_tuning is not None:
        overrides = variant.classifier_tuning.model_dump(exclude_none=True)
        ct = ClassifierTuning.model_validate({**ct.model_dump(), **overrides})
    return ct


def default_lr(shots: int) -> float:
    return ZERO_SHOT_LR if shots == 0 else FEW_SHOT_LR


def experiment_runs(spec: RecognitionExperimentSpec) -> list[Run]:
    """Expand the matrix (shots x seeds x variants) into runs, in a stable order, filling every default
    once: the task carries each hyper-parameter as the optimiser will use it."""
    variants: list[Variant | None] = list(spec.matrix.variants or [None])
    runs = []
    for shots in spec.matrix.shots:
        for seed in spec.matrix.seeds:
            for variant in variants:
                ct = resolve_classifier_tuning(spec, variant)
                if ct.lr is None:
                    ct = ct.model_copy(update={"lr": default_lr(shots)})
                synthetic = spec.data.synthetic
                if variant is not None and variant.synthetic is not None:
                    synthetic = variant.synthetic
                name = variant.name if variant else None
                runs.append(
                    Run(
                        index=len(runs),
                        name=run_name(shots, seed, name),
                        shots=shots,
                        seed=seed,
                        variant=name,
                        synthetic=list(synthetic),
                        classifier_tuning=ct,
                    )
                )
    return runs


def experiment_hash(spec: RecognitionExperimentSpec) -> str:
    w = spec.wire()
    keys = ("labels", "backbone", "data", "method", "matrix")
    return digest({"v": HASH_VERSION, **{k: w[k] for k in keys}})


def run_hash(spec: RecognitionExperimentSpec, run: Run, inputs: list[DatasetInput]) -> str:
    """What a run's result depends on. The tuning settings are hashed as the spec writes them and the
    learning rate as the optimiser uses it, as before the plan filled the default in, so no hash moved."""
    w = spec.wire()
    variant = next((v for v in spec.matrix.variants or [] if v.name == run.variant), None)
    return digest(
        {
            "v": HASH_VERSION,
            "labels": w["labels"],
            "backbone": w["backbone"],
            "data": {k: v for k, v in w["data"].items() if k != "synthetic"},
            "run": {
                "shots": run.shots,
                "seed": run.seed,
                "lr": run.classifier_tuning.lr,
                "ct": resolve_classifier_tuning(spec, variant).model_dump(),
            },
            "synthetic": [{"uri": i.uri, "digest": i.digest} for i in inputs],
        }
    )


def train_task(
    spec: RecognitionExperimentSpec,
    run: Run,
    inputs: list[DatasetInput],
    resource: ResourceRef,
    *,
    attempt: int = 1,
) -> TrainTask:
    """The task of one run; ``inputs`` are the run's synthetic datasets pinned (pin_datasets)."""
    return TrainTask(
        resource=resource,
        output=storage_target(spec.output),
        spec_hash=run_hash(spec, run, inputs),
        attempt=attempt,
        shards=1,
        experiment=spec,
        run=run,
        datasets=inputs,
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
    runs: Sequence[Run], resolve: Callable[[SyntheticSource], DatasetInput]
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
