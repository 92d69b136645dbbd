"""Figure 1's methods through the train stage, with the tiny open_clip model: zero-shot CLIP, Tip-Adapter,
Tip-Adapter-F and CoOp as variants of one experiment, each run reporting its method and shots, the last
and the best-validation model, and a stored model that gives the reported top-1 again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from synthrec.api import RecognitionExperimentSpec
from synthrec.plan import experiment_runs
from synthrec.storage import open_storage
from tests.integration.test_train_stage import tensorboard_scalars, train


def figure1(out_uri: str, tiny_models: Any, *, validation: bool) -> RecognitionExperimentSpec:
    real = tiny_models.real
    data: dict[str, Any] = {
        "realTrain": {"uri": (real / "train").as_uri()},
        "test": {"uri": (real / "test").as_uri()},
    }
    if validation:  # the tiny data has no validation split: its test split stands in (a test double)
        data["validation"] = {"uri": (real / "test").as_uri()}
    return RecognitionExperimentSpec.model_validate(
        {
            "labels": {"preset": "tiny"},
            "backbone": {"model": tiny_models.clip.as_uri()},
            "data": data,
            "method": {
                # with a validation split: augmented views; without: the shots' cached features
                "tipAdapter": {
                    "epochs": 3,
                    "augmentViews": 2 if validation else 0,
                    "searchSteps": [4, 3],
                    "batchSize": 8,
                },
                "coop": {"epochs": 3, "contextTokens": 4, "batchSize": 4, "lr": 0.05, "augment": validation},
            },
            "matrix": {
                "shots": [4],
                "seeds": [1],
                "variants": [
                    {"name": "zero-shot", "method": "zero-shot"},
                    {
                        "name": "ct-init",
                        "synthetic": [],
                        "classifierTuning": {"epochs": 3, "batchSizeReal": 4, "selection": "best-validation"},
                    },
                    {
                        "name": "ct-last",
                        "synthetic": [],
                        "classifierTuning": {"epochs": 3, "batchSizeReal": 4},
                    },
                    {"name": "tip-adapter", "method": "tip-adapter"},
                    {"name": "tip-adapter-f", "method": "tip-adapter-f"},
                    {"name": "coop", "method": "coop"},
                ],
            },
            "output": {"uri": out_uri},
        }
    )


def stored_logits(head: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """What head.safetensors says the model is, evaluated by its own formula."""
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    if "keys" in head:  # Tip-Adapter: logit_scale f W^T + alpha exp(-beta (1 - f F^T)) L
        alpha, beta, scale = (float(head[k]) for k in ("alpha", "beta", "logit_scale"))
        cache = torch.exp(-beta * (1 - f @ head["keys"].T)) @ head["values"]
        return scale * f @ head["text"].T + alpha * cache
    return f @ head["weight"].T + head["bias"]


@pytest.mark.parametrize("validation", [True, False], ids=["validation-split", "no-validation"])
def test_figure1_baselines_run_as_variants(
    tiny_models, tmp_path: Path, monkeypatch, validation: bool
) -> None:
    from safetensors.torch import load

    spec = figure1((tmp_path / "exp").as_uri() + "/", tiny_models, validation=validation)
    runs = experiment_runs(spec)
    assert [(r.name, r.method) for r in runs] == [
        ("shots0-seed1-zero-shot", "zero-shot"),
        ("shots4-seed1-ct-init", "classifier-tuning"),
        ("shots4-seed1-ct-last", "classifier-tuning"),
        ("shots4-seed1-tip-adapter", "tip-adapter"),
        ("shots4-seed1-tip-adapter-f", "tip-adapter-f"),
        ("shots4-seed1-coop", "coop"),
    ]
    out = open_storage(spec.output.uri)
    metrics = {}
    for run in runs:
        code, summary = train(tmp_path, monkeypatch, spec, run, [])
        assert code == 0, summary
        metrics[run.variant] = m = out.read_json(f"runs/{run.name}/metrics.json")
        assert summary.method == m["method"] == run.method and m["shots"] == run.shots
        assert m["variant"] == run.name.split("-seed1-")[1] and m["top1"] is not None

    zero, ct = metrics["zero-shot"], metrics["ct-init"]
    assert zero["trained"] is False and zero["top1"] == zero["zero_shot_top1"] and zero["lr"] is None
    tip, tip_f, coop = metrics["tip-adapter"], metrics["tip-adapter-f"], metrics["coop"]
    # every method sees the same zero-shot head and the same 4 shots per class
    assert {m["zero_shot_top1"] for m in metrics.values()} == {zero["top1"]}
    assert {m["counts"]["real_train"] for m in (tip, tip_f, coop)} == {16}
    # the tiny label space has no official Tip-Adapter config: alpha 1 and the grid [10, 10]
    assert tip["settings"]["alpha"] == 1.0 and tip["settings"]["search_scale"] == [10.0, 10.0]
    views = 2 if validation else 0
    assert tip["steps"] == 0 and tip["details"]["cache"] == {"keys": 16, "augment_views": views}
    assert tip_f["steps"] == 3 * 2 and coop["steps"] == 3 * 4  # 16 shots: batches of 8 and of 4
    curve = out.read_json("runs/shots4-seed1-coop/curve.json")
    assert [s["lr"] for s in curve["steps"]][:5] == [1e-5] * 4 + [0.05]  # one epoch at 1e-5, then the cosine
    # CT with best-validation selection reports the best epoch and the last one
    assert ct["selection"] == "best-validation" and ct["top1"] == ct["top1_best_validation"]
    assert ct["top1_last"] is not None and ct["selected_epoch"] == ct["best_validation_epoch"]
    last = metrics["ct-last"]  # selection last (the default): the last epoch, and the best one next to it
    assert last["selection"] == "last" and last["top1"] == last["top1_last"]
    if validation:
        assert last["top1_best_validation"] is not None and last["best_validation_epoch"] in (1, 2, 3)
        scalars = tensorboard_scalars(last["tracking"]["tensorboard"])  # both, next to each other
        assert scalars["test/top1_best_validation"][-1][1] == pytest.approx(last["top1_best_validation"])
        assert scalars["test/top1_last"][-1][1] == pytest.approx(last["top1_last"])
        assert ct["validation"]["source"] == "data.validation" and ct["counts"]["real_train"] == 16
    else:  # no validation split: one of its 4 shots per class is held out, never the test set
        assert ct["validation"] == {"source": "held-out shots", "images": 4, "per_class": 1}
        assert (ct["counts"]["real_train"], ct["counts"]["validation"]) == (12, 4)
        assert last["top1_best_validation"] is None and last["counts"]["real_train"] == 16  # nothing held out
    if validation:
        assert tip["details"]["searched"] is True and len(tip["details"]["search"]) == 1
        for m in (tip_f, coop):  # both models evaluated, the last one reported
            assert m["selection"] == "last" and m["top1"] == m["top1_last"]
            assert m["top1_best_validation"] is not None and m["best_validation_epoch"] in (1, 2, 3)
            assert m["validation"] == {"source": "data.validation", "images": 80, "per_class": None}
    else:
        assert tip["details"]["searched"] is False and (tip["details"]["alpha"], tip["details"]["beta"]) == (
            1.0,
            1.0,
        )
        assert all(m["top1_best_validation"] is None and m["validation"] is None for m in (tip_f, coop))

    # head.safetensors is the reported model: its formula on the cached test features gives the top-1
    cached = load(out.read_bytes(f"features/{coop['feature_cache']['test']['key']}/features.safetensors"))
    for method in ("tip-adapter", "tip-adapter-f", "coop"):
        head = load(out.read_bytes(f"runs/shots4-seed1-{method}/head.safetensors"))
        predicted = stored_logits(head, cached["features"]).argmax(-1)
        top1 = 100.0 * float((predicted == cached["labels"]).float().mean())
        assert top1 == pytest.approx(metrics[method]["top1"]), method
