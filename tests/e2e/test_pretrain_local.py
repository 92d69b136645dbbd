"""`synthrec run examples/pretrain-tiny.yaml` end to end on CPU with the real workers: a tiny synthetic
dataset, a tiny timm backbone pre-trained on it at two data sizes (torchrun's one process on CPU), every
run transferred by fine-tuning and a linear probe; the transfer table in the summary, in `synthrec
status` and in the report (with its plot); a second run answers from the committed artifacts."""

from __future__ import annotations

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
    env = {
        **os.environ,
        "SYNTHREC_TINY_MODELS": str(tiny_models.root),
        "TMPDIR": str(tmp_path),
        "COLUMNS": "200",
    }
    store = tmp_path / "store"
    first = synthrec("run", str(EXAMPLE), "--storage", store.as_uri(), env=env)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
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

    again = synthrec("run", str(EXAMPLE), "--storage", store.as_uri(), env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pretrain: 2/2 run(s) done or skipped" in again.stdout
    assert "transfer: 3/3 run(s) done or skipped" in again.stdout
