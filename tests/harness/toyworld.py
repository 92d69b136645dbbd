"""The toy world (trained tiny models + drawn data, ``synthrec.toyworld``), built once per test session.

``toy_world`` builds into pytest's cache folder (``.pytest_cache/d/toy-world``), so a second local run
reuses it (the builder returns at once when the manifest matches its version, seed and library versions);
with ``-p no:cacheprovider`` (CI) it builds into a session temporary folder, once.

Which models a test uses:

- ``toy_world``: TRAINED models. Use it when a test is about learning: that images show their class,
  that the CLIP Filter keeps the right drawings, that tuning on synthetic data helps.
- ``tiny_models`` (tests/harness/models.py): RANDOM weights, built in seconds. Only for tests that need
  speed and check mechanics, never anything about learning. Every test that uses them is marked
  ``random_weights`` (``pytest -m random_weights --collect-only -q`` lists them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from synthrec.toyworld.builder import ToyWorld, build_toy_world

RANDOM_WEIGHTS_MARK = (
    "random_weights: uses the random-weight tiny models (tests/harness/models.py): mechanics only, "
    "nothing about learning"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", RANDOM_WEIGHTS_MARK)


# The first test that asks for the toy world builds it in its setup (about 8 minutes on 2 free cores), so
# those tests get a hang guard far above that instead of the suite's 600 s, which a slower or busier
# machine would otherwise turn into a failure that says nothing about the code.
TOY_WORLD_TIMEOUT_S = 3600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "tiny_models" in fixtures:
            item.add_marker(pytest.mark.random_weights)
        if "toy_world" in fixtures and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TOY_WORLD_TIMEOUT_S))


@pytest.fixture(scope="session")
def toy_world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ToyWorld:
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("toy-world")) if cache is not None else tmp_path_factory.mktemp("toy-world")
    return build_toy_world(root)
