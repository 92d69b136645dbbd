"""`synthrec run` end to end through the command line, with the real workers and the tiny offline models:
the quickstart is interrupted after its first committed shard, resumed, and then produces the dataset card,
the metrics of every run, a report whose files exist, and a status that notices a lost shard."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from synthrec.tiny import TinyModels

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "tiny-mechanics.yaml"


def synthrec(*args: str, env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synthrec.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def env(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        **os.environ,
        "SYNTHREC_TINY_MODELS": str(tiny_models.root),
        "TMPDIR": str(tmp_path_factory.mktemp("tmp")),  # kept worker logs of failed runs land here
        "COLUMNS": "160",
    }


@dataclass
class Quickstart:
    storage: Path
    interrupted: subprocess.CompletedProcess[str]
    resumed: subprocess.CompletedProcess[str]
    first_shard: tuple[str, int, str]  # tar sha256, tar mtime, marker text at the interruption

    @property
    def dataset(self) -> Path:
        return self.storage / "datasets" / "tiny-shapes"

    @property
    def experiment(self) -> Path:
        return self.storage / "experiments" / "tiny-shapes-ct"


@pytest.fixture(scope="module")
def quickstart(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Quickstart:
    storage = tmp_path_factory.mktemp("quickstart") / "store"
    args = [sys.executable, "-m", "synthrec.cli", "run", str(QUICKSTART), "--storage", storage.as_uri()]
    log = storage.parent / "interrupted.log"
    with open(log, "w+") as out:
        proc = subprocess.Popen([*args, "--parallel", "1"], cwd=REPO, env=env, stdout=out, stderr=out)
        try:
            marker = storage / "datasets" / "tiny-shapes" / "shards" / "gen-00000.done.json"
            wait_for(marker, proc)
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        interrupted = subprocess.CompletedProcess(args, code, out.read(), "")
    tar = marker.with_name("gen-00000.tar")
    first = (sha256(tar), tar.stat().st_mtime_ns, marker.read_text())
    resumed = synthrec("run", str(QUICKSTART), "--storage", storage.as_uri(), env=env)
    return Quickstart(storage, interrupted, resumed, first)


def test_ctrl_c_stops_the_run_and_says_how_to_continue(quickstart: Quickstart) -> None:
    assert quickstart.interrupted.returncode == 130, quickstart.interrupted.stdout
    assert "Run the same command again to continue" in quickstart.interrupted.stdout


def test_the_resumed_run_completes_without_regenerating_committed_shards(quickstart: Quickstart) -> None:
    assert quickstart.resumed.returncode == 0, quickstart.resumed.stdout + quickstart.resumed.stderr
    tar = quickstart.dataset / "shards" / "gen-00000.tar"
    marker = quickstart.dataset / "shards" / "gen-00000.done.json"
    assert (sha256(tar), tar.stat().st_mtime_ns, marker.read_text()) == quickstart.first_shard
    for marker in (quickstart.dataset / "shards").glob("*.done.json"):  # every commit is whole
        data = marker.with_name(marker.name.replace(".done.json", ".tar"))
        assert json.loads(marker.read_text())["sha256"] == sha256(data)


def test_the_dataset_card_and_the_metrics_of_every_run_are_written(quickstart: Quickstart) -> None:
    manifest = json.loads((quickstart.dataset / "manifest.json").read_text())
    assert manifest["counts"]["generated"] == 96 and manifest["counts"]["kept"] == 4 * 12
    assert [c["kept"] for c in manifest["per_class"]] == [12, 12, 12, 12]
    # The card says how the images were made: the tiny SD's native 64 px, stored as asked, no RG; and which
    # prompts the CLIP Filter scored with (the official one per class).
    generation = manifest["generation"]
    assert (generation["generation_resolution"], generation["resolution"], generation["resize"]) == (
        64,
        64,
        None,
    )
    assert generation["generation_resolution_source"] == "pipeline native size"
    assert generation["real_guidance"] is None and generation["steps"] == 4
    assert manifest["filter"]["prompts"]["example"] == ["a photo of a red circle."]
    runs = sorted(p.parent.name for p in (quickstart.experiment / "runs").glob("*/metrics.json"))
    assert runs == sorted(f"shots{s}-seed1-{v}" for s in (0, 1, 4) for v in ("ct-init", "ct-syn"))
    for run in runs:
        metrics = json.loads((quickstart.experiment / "runs" / run / "metrics.json").read_text())
        assert 0 <= metrics["top1"] <= 100 and 0 <= metrics["zero_shot_top1"] <= 100
    summary = json.loads((quickstart.experiment / "summary.json").read_text())
    assert summary["complete"] and len(summary["runs"]) == 6


def test_the_output_has_a_summary_and_says_the_tiny_weights_are_random(quickstart: Quickstart) -> None:
    out = quickstart.resumed.stdout
    assert "RANDOM weights" in out and "accuracy is meaningless" in out
    assert "SyntheticDataset tiny-shapes" in out and "red circle" in out  # per-class table
    assert "shots4-seed1-ct-syn" in out and "zero-shot" in out  # per-run table
    assert "tiny-shapes prompts: 1/1 shard(s) already committed, skipped" in out
    assert re.search(r"tiny-shapes generate: (1/2 committed, running the rest|2/2 shard\(s\) already)", out)


def test_the_report_is_self_contained_and_every_file_it_references_exists(quickstart: Quickstart) -> None:
    out = quickstart.resumed.stdout
    where = re.search(r"report: (\S+index\.html)", out)
    assert where, out
    page = Path(where.group(1))
    assert page == quickstart.storage / "report" / "index.html"
    html = page.read_text()
    assert "RANDOM weights" in html and "meaningless" in html
    refs = re.findall(r"(?:src|href)='([^']+)'", html)
    assert not [r for r in refs if r.startswith(("http:", "https:", "//"))]  # nothing external
    files = [r for r in refs if not r.startswith("#")]
    assert any(r.startswith("img/tiny-shapes/") for r in files)
    assert {"plots/tiny-shapes-accept-rates.png", "plots/tiny-shapes-ct-top1-vs-shots.png"} <= set(files)
    assert "plots/tiny-shapes-ct-curves.png" in files and {"results.csv", "table.csv"} <= set(files)
    for ref in files:
        assert (page.parent / ref).is_file(), ref
    assert "<script" not in html.lower() and "stylesheet" not in html
    assert "a red circle" not in html.split("Prompt samples")[0]
    # the quickstart's filter keeps 12 of 24 per class: the rest are shown apart, by why they were not kept
    grids = html.split("Kept and not kept images")[1]
    assert "<div class='note'>kept</div>" in grids and "<div class='note'>below the threshold</div>" in grids
    assert "Top-1 over seeds" in html and "zero-shot CLIP" in html


def test_status_reads_completion_and_a_lost_shard_from_the_artifacts(
    quickstart: Quickstart, env: dict[str, str], tmp_path: Path
) -> None:
    copy = tmp_path / "store"
    shutil.copytree(quickstart.storage, copy)
    done = synthrec("status", str(copy), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "generate  2/2 committed" in done.stdout and "runs 6/6 done" in done.stdout

    (copy / "datasets" / "tiny-shapes" / "shards" / "gen-00001.done.json").unlink()
    (copy / "experiments" / "tiny-shapes-ct" / "runs" / "shots1-seed1-ct-syn" / "done.json").unlink()
    missing = synthrec("status", copy.as_uri(), env=env)
    assert missing.returncode == 1
    assert "generate  1/2 committed, missing shards 1" in missing.stdout
    assert "runs 5/6 done" in missing.stdout and "shots1-seed1-ct-syn" in missing.stdout
    as_json = json.loads(synthrec("status", str(copy), "--json", env=env).stdout)
    generate = next(s for s in as_json["resources"][0]["stages"] if s["stage"] == "generate")
    assert generate == {
        "stage": "generate",
        "enabled": True,
        "expected": 2,
        "committed": 1,
        "missing": "1",
        "conflicts": "",
    }


def test_report_command_renders_the_same_storage_elsewhere(
    quickstart: Quickstart, env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "elsewhere"
    proc = synthrec("report", str(quickstart.storage), "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert (out / "index.html").is_file() and (out / "plots" / "tiny-shapes-accept-rates.png").is_file()


# ------------------------------------------------------------------------------------------ bad input

SMALL_DATASET = """\
apiVersion: synthrec.io/v1alpha1
kind: SyntheticDataset
metadata: {name: tiny-full}
spec:
  labels: {preset: tiny}
  prompts: {strategy: basic}
  generator: {model: "tiny://sd", steps: 2, resolution: 64, imagesPerPrompt: 2}
  filter: {clip: {model: "tiny://clip"}, keepPerClass: 1}
  resources: {gpus: 0}
  output: {uri: "file:///unused/"}
"""


def test_a_file_without_resources_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n---\n")
    proc = synthrec("run", str(empty), "--storage", str(tmp_path / "s"), env=env)
    assert proc.returncode == 1
    assert "no resources found (expected SyntheticDataset and/or RecognitionExperiment)" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_unknown_kinds_and_invalid_specs_get_the_messages_of_validate(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        SMALL_DATASET.replace("steps: 2", "steps: 0")
        + "---\napiVersion: synthrec.io/v1alpha1\nkind: Widget\nmetadata: {name: w}\n"
    )
    run = synthrec("run", str(bad), "--storage", str(tmp_path / "s"), env=env)
    validate = synthrec("validate", str(bad), env=env)
    assert run.returncode == 1 and validate.returncode == 1
    problems = [line for line in validate.stderr.splitlines() if line.strip()]
    assert any("spec.generator.steps" in p for p in problems) and any(
        "unknown kind 'Widget'" in p for p in problems
    )
    for problem in problems:
        assert problem in run.stderr
    assert "nothing was run" in run.stderr
    assert not (tmp_path / "s").exists()


def test_an_experiment_whose_dataset_is_nowhere_is_refused_before_any_work(
    env: dict[str, str], tmp_path: Path
) -> None:
    text = (
        QUICKSTART.read_text().split("---\n", 1)[1].replace("datasetRef: tiny-shapes", "datasetRef: nowhere")
    )
    path = tmp_path / "orphan.yaml"
    path.write_text(text)
    storage = tmp_path / "s"
    proc = synthrec("run", str(path), "--storage", str(storage), env=env)
    assert proc.returncode == 1
    assert (
        "RecognitionExperiment tiny-shapes-ct: datasetRef 'nowhere' is neither a SyntheticDataset in "
        in proc.stderr
    )
    assert (storage / "datasets" / "nowhere" / "manifest.json").as_uri() in proc.stderr
    assert not (storage / "experiments" / "tiny-shapes-ct" / "runs").exists()


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /tmp && echo ok"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() == "ok"


@pytest.mark.skipif(
    not _unshare_works(), reason="needs unshare -rm (user + mount namespaces) for a small tmpfs"
)
def test_a_full_disk_is_a_clear_error_and_commits_nothing_half(env: dict[str, str], tmp_path: Path) -> None:
    storage = tmp_path / "full"
    storage.mkdir()
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL_DATASET)
    cmd = [
        sys.executable,
        "-m",
        "synthrec.cli",
        "run",
        str(spec),
        "--storage",
        storage.as_uri(),
        "--no-report",
    ]
    # A private mount namespace where the storage folder is an 8 KiB tmpfs; the files are listed before it
    # goes away with the namespace.
    script = (
        'dir="$1"; shift; mount -t tmpfs -o size=8k tmpfs "$dir" || exit 99; '
        '"$@"; code=$?; find "$dir" -type f | sort > "$dir.files"; exit $code'
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(storage), *cmd],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no space left on the device" in proc.stderr
    files = Path(f"{storage}.files").read_text().split()
    assert not [f for f in files if f.endswith(".synthrec-tmp")]  # no half-written object
    for marker in (f for f in files if f.endswith(".done.json")):  # nothing committed without its data
        stem = marker.removesuffix(".done.json")
        assert any(f.startswith(stem + ".") and f != marker for f in files), marker
