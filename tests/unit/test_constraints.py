"""constraints.txt pins every package to the versions the tests passed with: it covers each dependency of
pyproject.toml with a version its specifier allows, agrees with the torch pins of the Makefile, and is what
the environment running these tests has installed (so the image, built with it, ships what was tested)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def read_pins(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"constraints.txt:{number}: {line!r} is not an exact 'name==version' pin"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt:{number}: {name} is pinned twice"
        pins[name] = match.group(2)
    return pins


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    return read_pins((ROOT / "constraints.txt").read_text())


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    listed = project["dependencies"] + [dep for group in extras.values() for dep in group]
    requirements = [Requirement(dep) for dep in listed]
    return [r for r in requirements if canonicalize_name(r.name) != "synthrec"]


def test_every_dependency_is_pinned_to_a_version_its_specifier_allows(pins: dict[str, str]) -> None:
    requirements = project_requirements()
    assert len(requirements) > 20
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not in constraints.txt: run make constraints"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, which pyproject.toml's {req} excludes"
        )


def test_the_makefile_installs_the_same_torch_with_the_constraints(pins: dict[str, str]) -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"^\t\$\(BIN\)/python -m pip install .*$", makefile, flags=re.M)
    assert installs and all("-c constraints.txt" in i for i in installs if "--upgrade pip" not in i)
    for package in ("torch", "torchvision"):
        assert f"{package}=={pins[package]}" in makefile


def test_this_environment_runs_the_pinned_versions(pins: dict[str, str]) -> None:
    """The suite tests what the image ships: `make env` installed every dependency at its pin."""
    drift = {}
    for req in project_requirements():
        name = canonicalize_name(req.name)
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment does not have
        if installed != pins.get(name):
            drift[req.name] = (installed, pins.get(name))
    assert not drift, f"installed vs pinned: {drift}; run make env (or make constraints to re-pin)"


def test_a_loose_or_duplicate_line_is_rejected() -> None:
    with pytest.raises(AssertionError, match="exact"):
        read_pins("torch>=2\n")
    with pytest.raises(AssertionError, match="twice"):
        read_pins("Pillow==10.0\npillow==10.1\n")
    assert read_pins("# header\n\nhuggingface_hub==2.4.0\n") == {"huggingface-hub": "2.4.0"}
