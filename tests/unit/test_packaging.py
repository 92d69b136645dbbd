"""The package layout: operator/ and workers/ are synthrec.operator and synthrec.workers, while
`import operator` stays the standard library everywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


@pytest.mark.parametrize("flags", [[], ["-S"]], ids=["site", "no-site"])
def test_import_operator_is_the_standard_library_from_the_repo_root(flags: list[str]) -> None:
    code = "import operator, pathlib; print(pathlib.Path(operator.__file__).resolve()); operator.itemgetter"
    proc = subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    path = Path(proc.stdout.splitlines()[0])
    assert path.parent == STDLIB, path


def test_operator_folder_is_not_a_regular_package() -> None:
    # A regular package named `operator` in the repo root would shadow the standard library under -S.
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_subpackages_map_to_the_top_level_folders() -> None:
    code = (
        "import synthrec.operator, synthrec.workers, pathlib;"
        "print(pathlib.Path(list(synthrec.operator.__path__)[0]).resolve());"
        "print(pathlib.Path(synthrec.workers.__file__).resolve().parent)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    operator_dir, workers_dir = (Path(p) for p in proc.stdout.split())
    assert operator_dir == (ROOT / "operator").resolve()
    assert workers_dir == (ROOT / "workers").resolve()


def test_core_imports_neither_torch_nor_kopf() -> None:
    code = (
        "import sys, synthrec.api, synthrec.plan, synthrec.api.validation, synthrec.cli, synthrec.api.crdgen;"
        "synthrec.cli.build_parser();"
        "print(sorted(m for m in ('torch', 'kopf', 'diffusers', 'open_clip') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "synthrec"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "validate" in proc.stdout


def test_wheel_has_the_mapped_packages(tmp_path: Path) -> None:
    # Build from a copy of the tracked tree: setuptools writes build/ and *.egg-info into the source folder.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    src = tmp_path / "src"
    for rel in tracked.split():
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_symlink():
            target.symlink_to(os.readlink(ROOT / rel))
        elif (ROOT / rel).is_file():
            shutil.copy2(ROOT / rel, target)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import zipfile

    wheel = next((tmp_path / "dist").glob("synthrec-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    packages = sorted(p.parent.name for p in (ROOT / "synthrec").glob("*/__init__.py"))
    assert packages and all(f"synthrec/{pkg}/__init__.py" in names for pkg in packages), packages
    assert any(n.startswith("synthrec/operator/") for n in names)
    assert "synthrec/workers/__init__.py" in names
    assert "synthrec/workers/pretrain/stage.py" in names  # subpackages of the mapped folders too
    assert any(n.startswith("synthrec/presets/") and n.endswith(".txt") for n in names)
    assert not any(n.startswith(("operator/", "workers/", "tests/")) for n in names)
