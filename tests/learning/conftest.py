"""The learning tests' shared fixtures: one run of the quickstart on the trained toy world for the whole
session (tests/learning/pipeline.py says what it holds)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from synthrec.toyworld import measure
from synthrec.toyworld.builder import ToyWorld
from tests.learning.pipeline import QUICKSTART, Runs, run, runs


@pytest.fixture(scope="session")
def monkeysession() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="session")
def quickstart() -> tuple[dict[str, Any], dict[str, Any]]:
    return measure.load_quickstart(QUICKSTART)


@pytest.fixture(scope="session")
def pipeline(
    toy_world: ToyWorld,
    tmp_path_factory: pytest.TempPathFactory,
    monkeysession: pytest.MonkeyPatch,
    quickstart: tuple[dict[str, Any], dict[str, Any]],
) -> Runs:
    """The quickstart (LE prompts -> text-to-image -> CLIP Filter -> CT at 0, 1, 4 shots x 3 seeds), and a
    Real Guidance dataset from one real shot per class (``measure.GUIDED``)."""
    storage = tmp_path_factory.mktemp("toy-pipeline")
    dataset, experiment = quickstart
    real_train = experiment["spec"]["data"]["realTrain"]["uri"]
    resources = [dataset, measure.guided_resource(dataset, real_train), experiment]
    run(toy_world, storage, resources, monkeysession)
    return runs(storage, measure.DATASET, measure.EXPERIMENT)
