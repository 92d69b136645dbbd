"""The runs of a RecognitionExperiment: the matrix expanded, their hashes and their train tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from synthrec.api import (
    ApiModel,
    ClassifierTuning,
    MethodName,
    RecognitionExperimentSpec,
    SyntheticSource,
    Variant,
)
from synthrec.plan.baselines import coop_defaults, tip_adapter_defaults
from synthrec.plan.stages import HASH_VERSION, digest, storage_target
from synthrec.plan.tasks import DatasetInput, PretrainRun, ResourceRef, Run, TrainTask

ZERO_SHOT_LR = 2e-3  # paper README, zero-shot CT
FEW_SHOT_LR = 1e-3  # paper README, few-shot CT


def run_name(shots: int, seed: int, variant: str | None) -> str:
    base = f"shots{shots}-seed{seed}"
    return f"{base}-{variant}" if variant else base


def _with_overrides(base: ApiModel, overrides: ApiModel | None) -> ApiModel:
    if overrides is None:
        return base
    return type(base).model_validate({**base.model_dump(), **overrides.model_dump(exclude_none=True)})


def resolve_classifier_tuning(spec: RecognitionExperimentSpec, variant: Variant | None) -> ClassifierTuning:
    """method.classifierTuning with the variant's overrides, as written (the learning rate may be unset)."""
    overrides = variant.classifier_tuning if variant is not None else None
    return _with_overrides(spec.method.classifier_tuning, overrides)  # type: ignore[return-value]


def run_method(spec: RecognitionExperimentSpec, variant: Variant | None) -> MethodName:
    return (variant.method if variant is not None else None) or spec.method.name


def default_lr(shots: int) -> float:
    return ZERO_SHOT_LR if shots == 0 else FEW_SHOT_LR


def experiment_runs(spec: RecognitionExperimentSpec) -> list[Run]:
    """Expand the matrix (shots x seeds x variants) into runs, in a stable order, filling every default
    once: the task carries each hyper-parameter as the optimiser will use it.

    A variant's ``shots`` and ``seeds`` pick cells of the matrix. Zero-shot CLIP has no training data, so a
    zero-shot variant is one run, at 0 shots and its first seed, where its first cell is. Only
    classifier-tuning trains on synthetic data; {shots} and {seed} in its sources become the run's."""
    variants: list[Variant | None] = list(spec.matrix.variants or [None])
    runs: list[Run] = []
    zero_shot_done: set[str | None] = set()
    for shots in spec.matrix.shots:
        for seed in spec.matrix.seeds:
            for variant in variants:
                if variant is not None and (
                    (variant.shots and shots not in variant.shots)
                    or (variant.seeds and seed not in variant.seeds)
                ):
                    continue
                name = variant.name if variant else None
                method = run_method(spec, variant)
                run_shots = shots
                if method == "zero-shot":
                    if name in zero_shot_done:
                        continue
                    zero_shot_done.add(name)
                    run_shots = 0
                ct = resolve_classifier_tuning(spec, variant)
                if ct.lr is None:
                    ct = ct.model_copy(update={"lr": default_lr(run_shots)})
                synthetic: list[SyntheticSource] = []
                if method == "classifier-tuning":
                    written = spec.data.synthetic
                    if variant is not None and variant.synthetic is not None:
                        written = variant.synthetic
                    synthetic = [source.for_run(run_shots, seed) for source in written]
                tip = coop = None
                if method in ("tip-adapter", "tip-adapter-f"):
                    written_tip = _with_overrides(spec.method.tip_adapter, variant and variant.tip_adapter)
                    tip = tip_adapter_defaults(written_tip, spec.labels)  # type: ignore[arg-type]
                elif method == "coop":
                    written_coop = _with_overrides(spec.method.coop, variant and variant.coop)
                    coop = coop_defaults(written_coop, run_shots, spec.labels)  # type: ignore[arg-type]
                runs.append(
                    Run(
                        index=len(runs),
                        name=run_name(run_shots, seed, name),
                        shots=run_shots,
                        seed=seed,
                        variant=name,
                        method=method,
                        synthetic=synthetic,
                        classifier_tuning=ct,
                        tip_adapter=tip,
                        coop=coop,
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
    if run.method == "classifier-tuning":
        what: dict[str, object] = {
            "shots": run.shots,
            "seed": run.seed,
            "lr": run.classifier_tuning.lr,
            "ct": _hashed_ct(resolve_classifier_tuning(spec, variant)),
        }
    else:  # the baselines: their own settings as resolved (none for zero-shot)
        what = {"shots": run.shots, "seed": run.seed, "method": run.method, "settings": run.settings()}
    return digest(
        {
            "v": HASH_VERSION,
            "labels": w["labels"],
            "backbone": w["backbone"],
            "data": {k: v for k, v in w["data"].items() if k != "synthetic"},
            "run": what,
            "synthetic": [{"uri": i.uri, "digest": i.digest} for i in inputs],
        }
    )


def _hashed_ct(ct: ClassifierTuning) -> dict[str, object]:
    """The tuning settings as hashed: a setting added later is left out at the value that behaves as
    before it existed, so the results of earlier versions stay valid."""
    dump = ct.model_dump()
    if dump["soft_target"]["pseudo_labels"] == "soft":
        del dump["soft_target"]["pseudo_labels"]
    return dump


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


def runs_of(spec: RecognitionExperimentSpec) -> list[Run] | list[PretrainRun]:
    """The runs of any experiment: pre-training runs with method.pretrain, classifier-tuning runs else."""
    from synthrec.plan.pretraining import pretrain_runs

    return pretrain_runs(spec) if spec.method.pretrain is not None else experiment_runs(spec)


def referenced_datasets(spec: RecognitionExperimentSpec) -> list[str]:
    """Every SyntheticDataset the experiment's runs reference (data.synthetic, variants, labelSpaces), in
    order."""
    refs: list[str] = []
    for run in runs_of(spec):
        for source in run.synthetic:
            if source.dataset_ref and source.dataset_ref not in refs:
                refs.append(source.dataset_ref)
    return refs


def pin_datasets(
    runs: Sequence[Run | PretrainRun], resolve: Callable[[SyntheticSource], DatasetInput]
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
