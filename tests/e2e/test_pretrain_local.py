"""`synthrec run examples/pretrain-tiny.yaml` end to end on CPU with the real workers: a tiny synthetic
dataset, a tiny timm backbone pre-trained on it at two data sizes (torchrun's one process on CPU), every
run transferred by fine-tuning and a linear probe; the transfer table in the summary, in `synthrec
status` and in the report (with its plot); a second run answers from the committed artifacts.

One run's first pre-training attempt is preempted (SIGTERM at a chosen step, as a node drain would): the
runner retries the stage and the retry continues from the checkpoint that SIGTERM saved."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthrec.tiny import TinyModels

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "pretrain-tiny.yaml"
RUNS = ("sup-0-scratch", "sup-32-scratch", "sup-64-scratch")
PREEMPTED, AT_STEP = "sup-64-scratch", 5  # of 8 (64 images / batch 16 x 2 epochs): mid second epoch

# Imported by every Python process of the run (sitecustomize on PYTHONPATH): in the worker of the preempted
# run's pretrain stage, rank 0's progress reporter sends its own process SIGTERM when the step is reached,
# once (the marker file says it happened). The event is the step count, not a time.
PREEMPT_HOOK = f"""
import os, signal, sys
from pathlib import Path

_marker = Path(os.environ["SYNTHREC_TEST_PREEMPTED"])
_task = sys.argv[-1] if sys.argv[1:3] == ["pretrain", "--task"] else ""
if Path(_task).name == "pretrain-{PREEMPTED}.json" and not _marker.exists():
    from synthrec.workers import runtime

    _advance = runtime.Progress.advance

    def advance(self, n=1):
        _advance(self, n)
        if self.path is not None and self.done == {AT_STEP} and not _marker.exists():
            _marker.write_text(str(self.done))
            os.kill(os.getpid(), signal.SIGTERM)

    runtime.Progress.advance = advance
"""


def synthrec(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synthrec.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


def test_the_tiny_pretraining_example_runs_on_cpu_and_reports_its_transfer_table(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PREEMPT_HOOK)
    preempted = tmp_path / "preempted"
    env = {
        **os.environ,
        "SYNTHREC_TINY_MODELS": str(tiny_models.root),
        "TMPDIR": str(tmp_path),
        "COLUMNS": "200",
        "PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "SYNTHREC_TEST_PREEMPTED": str(preempted),
    }
    store = tmp_path / "store"
    first = synthrec("run", str(EXAMPLE), "--storage", store.as_uri(), env=env)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert preempted.read_text() == str(AT_STEP)
    said = " ".join(first.stdout.split())  # the console wraps long lines
    retried = f"pretrain run {PREEMPTED} failed (exit code 1; try 1 of 2), retrying: stopped at step"
    assert f"{retried} {AT_STEP} " in said
    assert "pretrain: 0/2 committed" in first.stdout and "transfer: 0/3 committed" in first.stdout
    for run in RUNS:
        assert run in first.stdout  # the summary's transfer table
    assert "top-1 (fine-tune)" in first.stdout and "linear probe" in first.stdout

    runs = store / "experiments" / "tiny-pretrain" / "runs"
    assert not (runs / "sup-0-scratch" / "pretrain").exists()  # size 0: the init is transferred as it is
    for run, selected in (("sup-32-scratch", 32), ("sup-64-scratch", 64)):
        card = json.loads((runs / run / "pretrain" / "card.json").read_text())
        assert (card["backbone"], card["data"]["selected"], card["world_size"]) == (
            "test_resnet",
            selected,
            1,
        )
        assert (runs / run / "pretrain" / "backbone.safetensors").exists()
        metrics = json.loads((runs / run / "pretrain" / "metrics.json").read_text())
        # the retry continued from the checkpoint SIGTERM saved; the other run was never stopped
        assert metrics["resumed_at"] == ([AT_STEP] if run == PREEMPTED else [])
        curve = json.loads((runs / run / "pretrain" / "curve.json").read_text())["points"]
        assert [p["step"] for p in curve] == list(range(2, selected // 16 * 2 + 1, 2))  # logEvery: 2

    status = synthrec("status", "--json", str(store), env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    [experiment] = [d for d in json.loads(status.stdout)["resources"] if d["kind"] == "RecognitionExperiment"]
    table = {row["name"]: row for row in experiment["pretraining"]}
    assert set(table) == set(RUNS) and experiment["complete"]
    for run in RUNS:
        row = table[run]
        assert row["state"] == "Succeeded" and row["ap50"] is None
        assert 0 <= row["classification_top1"] <= 100 and 0 <= row["linear_probe_top1"] <= 100
        metrics = json.loads((runs / run / "transfer" / "classification" / "metrics.json").read_text())
        assert metrics["top1"] == row["classification_top1"]
    assert [table[r]["size"] for r in RUNS] == [0, 32, 64]

    page = (store / "report" / "index.html").read_text()
    assert "Fine-tuning top-1 (%) by synthetic data size" in page and "Linear probe top-1" in page
    assert (store / "report" / "plots" / "tiny-pretrain-transfer-vs-size.png").stat().st_size > 0
    with open(store / "report" / "transfer.csv", newline="") as f:  # the table, unrounded
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(RUNS) and "transfer.csv" in page and "results.csv" not in page
    for run in RUNS:
        assert float(rows[run]["classification_top1"]) == table[run]["classification_top1"]
    assert rows["sup-0-scratch"]["pretrain_steps"] == "" and rows[PREEMPTED]["pretrain_steps"] == "8"

    again = synthrec("run", str(EXAMPLE), "--storage", store.as_uri(), env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pretrain: 2/2 run(s) done or skipped" in again.stdout
    assert "transfer: 3/3 run(s) done or skipped" in again.stdout
