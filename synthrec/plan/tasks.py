"""Task JSON: what one worker stage needs, rendered by the planner (operator or local) and read by workers.

A task is self-contained (resolved spec, hashes, shard map, output location) and carries no secrets:
credentials come from the environment (Secrets in the cluster, the user's env locally).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from synthrec.api import (
    ClassifierTuning,
    CoOp,
    MethodName,
    RecognitionExperimentSpec,
    SyntheticDatasetSpec,
    SyntheticSource,
    TipAdapter,
)

Stage = Literal["prompts", "generate", "filter", "reduce", "train"]
DATASET_STAGES: tuple[Stage, ...] = ("prompts", "generate", "filter", "reduce")
SHARDED_STAGES: tuple[Stage, ...] = ("generate", "filter")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourceRef(_Model):
    kind: Literal["SyntheticDataset", "RecognitionExperiment"]
    name: str
    namespace: str | None = None
    uid: str | None = None


class StorageTarget(_Model):
    """Where the stage reads and writes; credentials come from the environment."""

    uri: str
    endpoint: str | None = None
    region: str | None = None


class _TaskBase(_Model):
    resource: ResourceRef
    output: StorageTarget
    spec_hash: str = Field(description="Hash of everything this stage's output depends on.")
    attempt: int = 1
    shards: int = Field(default=1, description="Total shards of the stage (not of this attempt).")
    shard_ids: list[int] | None = Field(
        default=None,
        description="This attempt's completion index -> shard id (None: identity). Retry attempts list "
        "only the shards without a commit marker.",
    )

    def shard_for_index(self, index: int) -> int:
        """Map a Job completion index (or local shard index) to the shard id it must produce."""
        if self.shard_ids is None:
            if not 0 <= index < self.shards:
                raise IndexError(f"completion index {index} is outside 0..{self.shards - 1}")
            return index
        if not 0 <= index < len(self.shard_ids):
            raise IndexError(
                f"completion index {index} is outside this attempt's {len(self.shard_ids)} shards"
            )
        return self.shard_ids[index]

    def attempt_size(self) -> int:
        return self.shards if self.shard_ids is None else len(self.shard_ids)


class _DatasetTask(_TaskBase):
    dataset: SyntheticDatasetSpec
    hashes: dict[str, str] = Field(
        description="Hashes of every dataset stage (prompts, generate, filter, reduce)."
    )


class PromptsTask(_DatasetTask):
    stage: Literal["prompts"] = "prompts"


class GenerateTask(_DatasetTask):
    stage: Literal["generate"] = "generate"


class FilterTask(_DatasetTask):
    stage: Literal["filter"] = "filter"


class ReduceTask(_DatasetTask):
    stage: Literal["reduce"] = "reduce"


class DatasetInput(_Model):
    """A synthetic dataset a run trains on, pinned to the digest of its manifest."""

    name: str | None = None
    uri: str
    digest: str | None = None
    endpoint: str | None = None
    region: str | None = None


class Run(_Model):
    """One run of a RecognitionExperiment, the one record of it: a cell of the matrix with every
    hyper-parameter resolved where the plan is made (synthrec.plan.experiment_runs)."""

    index: int
    name: str
    shots: int
    seed: int
    variant: str | None = None
    method: MethodName = "classifier-tuning"
    synthetic: list[SyntheticSource] = Field(
        default_factory=list,
        description="data.synthetic, or the variant's own list, with {shots} and {seed} filled in; empty for "
        "every method but classifier-tuning.",
    )
    classifier_tuning: ClassifierTuning = Field(
        description="method.classifierTuning with the variant's overrides and every default filled in (lr: "
        "2e-3 zero-shot, 1e-3 few-shot): what the optimiser gets, as it is."
    )
    tip_adapter: TipAdapter | None = Field(
        default=None,
        description="tip-adapter(-f) runs: method.tipAdapter with the variant's overrides and the dataset's "
        "official alpha, search grid and epochs filled in.",
    )
    coop: CoOp | None = Field(
        default=None,
        description="coop runs: method.coop with the variant's overrides and the epochs for the shots.",
    )

    def selection(self) -> str:
        """Which epoch's model the run reports: its method's ``selection`` (``last`` for the methods
        without epochs)."""
        if self.method == "classifier-tuning":
            return self.classifier_tuning.selection
        if self.method == "tip-adapter-f" and self.tip_adapter is not None:
            return self.tip_adapter.selection
        if self.method == "coop" and self.coop is not None:
            return self.coop.selection
        return "last"

    def settings(self) -> dict[str, object] | None:
        """The resolved settings of the run's method other than classifier-tuning (None for it)."""
        block = {"tip-adapter": self.tip_adapter, "tip-adapter-f": self.tip_adapter, "coop": self.coop}
        model = block.get(self.method)
        return model.model_dump(mode="json") if model is not None else None


class TrainTask(_TaskBase):
    stage: Literal["train"] = "train"
    experiment: RecognitionExperimentSpec
    run: Run
    datasets: list[DatasetInput] = Field(
        default_factory=list,
        description="run.synthetic pinned: each source's URI and manifest digest, in the same order.",
    )


class CleanupTask(_TaskBase):
    """Delete what the resource wrote (``spec.output.onDelete: Delete``): the keys its ledgers list
    (synthrec.contract.written), run in the resource's namespace with that namespace's credentials."""

    stage: Literal["cleanup"] = "cleanup"
    spec_hash: str = Field(default="", description="Unused: a cleanup depends on no spec.")


def cleanup_task(resource: ResourceRef, output: StorageTarget) -> CleanupTask:
    return CleanupTask(resource=resource, output=output)


AnyTask = PromptsTask | GenerateTask | FilterTask | ReduceTask | TrainTask | CleanupTask
Task = Annotated[AnyTask, Field(discriminator="stage")]


class _TaskFile(_Model):
    task: Task


def dump_task(task: AnyTask) -> str:
    return json.dumps(task.model_dump(mode="json", by_alias=False), indent=1, sort_keys=True)


def load_task(source: str | Path) -> AnyTask:
    """Read a task file; raises ValueError with the path on anything unreadable or invalid."""
    path = Path(source)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read task file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"task file {path} is not JSON: {exc}") from None
    return _TaskFile.model_validate({"task": raw}).task
