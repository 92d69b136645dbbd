"""Every command has --help with examples; the top level lists them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from synthrec.cli import COMMANDS, build_parser


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synthrec.cli", *args], capture_output=True, text=True, check=False
    )


def test_top_level_help_lists_every_command() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name.replace("_", "-") in proc.stdout


@pytest.mark.parametrize("name", [c.replace("_", "-") for c in COMMANDS])
def test_each_command_has_help_with_examples(name: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[name]
    text = sub.format_help()
    assert "examples:" in text and f"synthrec {name}" in text


def test_no_command_prints_help_and_fails() -> None:
    proc = _run()
    assert proc.returncode == 2 and "COMMAND" in proc.stdout


def test_plan_shows_stages_and_runs() -> None:
    proc = _run("plan", "examples/quickstart.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "generate  shards=2" in proc.stdout
    assert "shots4-seed1-ct-syn" in proc.stdout


def test_plan_shows_a_pretraining_experiments_runs_with_their_stages_and_world() -> None:
    proc = _run("plan", "examples/pretraining/table8-cifar100-resnet50.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "8 runs of resnet50, global batch 1024 (2 node(s) x 8 process(es) on a cluster" in proc.stdout
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:] if line.startswith("  sup-")}
    assert "[transfer]" in lines["sup-0-tv-in1k"] and "data: none" in lines["sup-0-tv-in1k"]
    assert (
        "[pretrain + transfer]" in lines["sup-3.6m-scratch"] and "size=3,600,000" in lines["sup-3.6m-scratch"]
    )


def test_plan_shows_the_filter_prompts_the_generation_size_and_real_guidances_strength(
    tiny_models, tmp_path
) -> None:
    import yaml

    def dataset(name: str, model: str, **real_guidance: object) -> dict:
        return {
            "apiVersion": "synthrec.io/v1alpha1",
            "kind": "SyntheticDataset",
            "metadata": {"name": name},
            "spec": {
                "labels": {"preset": "eurosat"},
                "generator": {"model": model, "steps": 4, "resolution": 256},
                "realGuidance": {"source": {"uri": "s3://bkt/eurosat/train/"}, "shots": 2, **real_guidance},
                "output": {"uri": f"s3://bkt/{name}/"},
            },
        }

    file = tmp_path / "rg.yaml"
    file.write_text(
        yaml.safe_dump_all(
            [
                dataset("matched", tiny_models.sd.as_uri()),
                dataset("explicit", tiny_models.sd.as_uri(), strength=0.75),
                dataset("elsewhere", "hf://example-org/not-cached"),
            ]
        )
    )
    proc = _run("plan", str(file))
    assert proc.returncode == 0, proc.stderr
    matched, explicit, elsewhere = proc.stdout.split("SyntheticDataset/")[1:]
    # The tiny SD has Stable Diffusion's DDIM schedule: of its 4 steps, starting at t=251 (alpha-bar 0.672)
    # is closest to the paper's 2-shot level 0.655 (GLIDE's cosine schedule at t=394).
    assert (
        "realGuidance: 2 shots, target alpha-bar 0.655 (the paper's: GLIDE cosine t=394) -> strength 0.5 on "
        "DDIMScheduler: 2 of 4 steps from t=251, alpha-bar 0.672" in matched
    )
    assert "explicit strength 0.75 -> strength 0.75 on DDIMScheduler: 3 of 4 steps from t=501" in explicit
    assert "strength decided when generating (hf://example-org/not-cached is not in the local" in elsewhere
    assert "at the pipeline's native 64 px, stored at 256 px" in matched
    assert (
        "filter prompts: filter-template, 1 x 10 generation names (a centered satellite photo of a {c}.); "
        "e.g. 'a centered satellite photo of a Annual Crop Land.'" in matched
    )


def test_plan_describes_each_runs_method_settings_and_selection() -> None:
    from synthrec.api import RecognitionExperimentSpec
    from synthrec.cli.plan import describe_run
    from synthrec.plan import experiment_runs

    spec = RecognitionExperimentSpec.model_validate(
        {
            "labels": {"classes": [{"name": "cat"}, {"name": "dog"}]},
            "data": {
                "synthetic": [{"datasetRef": "cats-{shots}shot"}],
                "realTrain": {"uri": "s3://bkt/train/"},
                "validation": {"uri": "s3://bkt/val/"},
                "test": {"uri": "s3://bkt/test/"},
            },
            "method": {"coop": {"selection": "best-validation"}},
            "matrix": {
                "shots": [4],
                "seeds": [1],
                "variants": [
                    {"name": "zero-shot", "method": "zero-shot"},
                    {"name": "syn"},
                    {
                        "name": "hard",
                        "classifierTuning": {
                            "softTarget": {"pseudoLabels": "hard"},
                            "selection": "best-validation",
                        },
                        "synthetic": [],
                    },
                    {"name": "tip", "method": "tip-adapter"},
                    {"name": "tip-f", "method": "tip-adapter-f"},
                    {"name": "coop", "method": "coop"},
                ],
            },
            "output": {"uri": "s3://bkt/out/"},
        }
    )
    runs = experiment_runs(spec)
    assert {r.name: describe_run(r, validation=True) for r in runs} == {
        "shots0-seed1-zero-shot": "zero-shot CLIP (no training)",
        "shots4-seed1-syn": "classifier-tuning epochs=30 lr=0.001  synthetic: cats-4shot",
        "shots4-seed1-hard": (
            "classifier-tuning epochs=30 lr=0.001 pseudo-labels=hard selection=best-validation  synthetic: "
            "real only"
        ),
        "shots4-seed1-tip": "tip-adapter alpha=1 beta=1, then searched on the validation set",
        "shots4-seed1-tip-f": (
            "tip-adapter-f epochs=20 lr=0.001 alpha=1 beta=1, then searched on the validation set"
        ),
        "shots4-seed1-coop": "coop epochs=100 lr=0.002 context=16 selection=best-validation",
    }
    # without data.validation Tip-Adapter keeps its initial alpha and beta
    assert describe_run(runs[3], validation=False) == "tip-adapter alpha=1 beta=1"
