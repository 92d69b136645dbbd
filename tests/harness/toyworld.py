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

The build takes minutes of CPU, so when a session collects tests that use ``toy_world`` and no build is
there, it starts at once in a background process (``python -m synthrec.toyworld``, its log next to the
build) and those tests run last: the rest of the suite, which mostly waits on subprocesses and servers,
runs meanwhile. The fixture waits for the build on its lock file (an event, not a poll); a build that
failed leaves no manifest, and the fixture then builds in the foreground, so its error shows in the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from synthrec.toyworld.builder import ToyWorld, build_toy_world

_ROOT = pytest.StashKey[Path]()
_BACKGROUND = pytest.StashKey[subprocess.Popen]()  # type: ignore[type-arg]

RANDOM_WEIGHTS_MARK = (
    "random_weights: uses the random-weight tiny models (tests/harness/models.py): mechanics only, "
    "nothing about learning"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", RANDOM_WEIGHTS_MARK)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tiny_models" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.random_weights)
    learning = [item for item in items if _uses_toy_world(item)]
    if learning and len(learning) < len(items):
        items[:] = [item for item in items if not _uses_toy_world(item)] + learning  # stable: last
    if learning and not config.option.collectonly:
        _start_background_build(config)


def _uses_toy_world(item: pytest.Item) -> bool:
    return "toy_world" in getattr(item, "fixturenames", ())


def _world_root(config: pytest.Config) -> Path:
    """Where this session builds the toy world: pytest's cache folder, else a session temporary folder."""
    if _ROOT not in config.stash:
        cache = getattr(config, "cache", None)
        if cache is not None:
            config.stash[_ROOT] = Path(cache.mkdir("toy-world"))
        else:  # pytest's own session factory (set at configure): the folder the fixture would get
            config.stash[_ROOT] = config._tmp_path_factory.mktemp("toy-world")  # type: ignore[attr-defined]
    return config.stash[_ROOT]


def _start_background_build(config: pytest.Config) -> None:
    root = _world_root(config)
    if ToyWorld.at(root).is_built() or _BACKGROUND in config.stash:
        return
    log = open(root / "background-build.log", "w")  # noqa: SIM115  # the child process writes it
    config.stash[_BACKGROUND] = subprocess.Popen(
        [sys.executable, "-m", "synthrec.toyworld", str(root)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopping it stops its training processes too
    )
    log.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    build = config.stash.get(_BACKGROUND, None)
    if build is not None and build.poll() is None:  # the session ended first (-x, Ctrl-C): stop it
        os.killpg(build.pid, signal.SIGTERM)
        build.wait()


@pytest.fixture(scope="session")
def toy_world(request: pytest.FixtureRequest) -> ToyWorld:
    return build_toy_world(_world_root(request.config))
