"""One run of the quickstart on the trained toy world, shared by every learning test of the session: the
LE prompts -> text-to-image -> CLIP Filter dataset, CT at 0, 1 and 4 shots x 3 seeds, and a Real Guidance
dataset from one real shot per class. Tests read its outputs (top-1 per run, the generated images and
what the filter kept); the mutation runs (tests/learning/mutants.py) reuse its committed shards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from synthrec.toyworld import measure
from synthrec.toyworld.builder import ENV_TOY_WORLD, ToyWorld
from tests.learning.mutants import ENV_MUTATION

REPO = Path(__file__).resolve().parents[2]
MUTANT_WORKERS = "tests.learning.mutants"
QUICKSTART = REPO / "examples" / "quickstart.yaml"


@dataclass
class Runs:
    """The outputs of one pipeline run: top-1 per (variant, shots) and the generated images."""

    storage: Path
    top1: dict[tuple[str, int], list[float]]
    images: list[measure.Generated]

    def mean(self, variant: str, shots: int) -> float:
        return measure.mean(self.top1[(variant, shots)])


def run(
    world: ToyWorld,
    storage: Path,
    resources: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    mutation: str = "",
) -> None:
    """``resources`` through ``synthrec run``'s local runner; with ``mutation``, the workers are
    tests.learning.mutants with that bug planted."""
    with monkeypatch.context() as env:
        env.setenv(ENV_TOY_WORLD, str(world.root.parent))  # tiny://world/ -> the test session's build
        if mutation:
            env.setenv(ENV_MUTATION, mutation)
            env.syspath_prepend(str(REPO))
            env.setenv("PYTHONPATH", str(REPO))  # the worker processes import tests.learning.mutants
        measure.run_resources(
            resources, storage, worker_module=MUTANT_WORKERS if mutation else "synthrec.workers"
        )


def runs(storage: Path, dataset: str, experiment: str | None = None) -> Runs:
    top1 = measure.experiment_top1(storage, experiment) if experiment else {}
    return Runs(storage, top1, measure.generated_images(storage, dataset))
