"""The train stage's feature cache gives a run the same numbers on a miss as on a hit, and a run without a
validation split validates on held-out real shots, never on its test set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from synthrec.contract.layout import ExperimentLayout
from synthrec.storage import open_storage
from synthrec.workers.features import FeatureSet, RunFeatures, held_out_per_class, held_out_shots


class _Clip:
    def describe(self) -> dict[str, Any]:
        return {"model": "test", "pretrained": None, "revision": "r1"}


def cache(tmp_path: Path) -> RunFeatures:
    features = RunFeatures()
    features.storage = open_storage(tmp_path.as_uri() + "/")
    features.layout = ExperimentLayout(features.storage.uri)
    features.clip = _Clip()
    return features


def test_features_are_the_same_on_a_cache_miss_and_a_hit(tmp_path: Path) -> None:
    runs = cache(tmp_path)
    feats = torch.nn.functional.normalize(
        torch.randn(6, 16, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ids = [f"img{i}" for i in range(6)]
    miss = runs._store("k", feats, labels, ids, {})
    hit, hit_labels, kept, _ = runs._cached("k", ids)
    assert miss.dtype == hit.dtype == torch.float32
    assert torch.equal(miss, hit) and torch.equal(hit_labels, labels) and kept == ids
    assert not torch.equal(miss, feats)  # stored at float16 precision, and used at it on the miss too


def shots(per_class: int, classes: int = 3) -> FeatureSet:
    labels = torch.arange(classes).repeat_interleave(per_class)
    ids = [f"c{c}-shot{i}" for c in range(classes) for i in range(per_class)]
    return FeatureSet(
        "real-train", torch.randn(len(ids), 4), labels, ids, list(ids), None, "key", True, 1, {}
    )


def test_held_out_shots_are_the_last_of_each_class_and_never_trained_on() -> None:
    assert [held_out_per_class(n) for n in (2, 4, 8, 16, 64)] == [1, 1, 2, 4, 4]  # CoOp: min(shots, 4)
    real = shots(8)
    train, val = held_out_shots(real, 2)
    assert val.ids == ["c0-shot6", "c0-shot7", "c1-shot6", "c1-shot7", "c2-shot6", "c2-shot7"]
    assert set(train.ids).isdisjoint(val.ids) and len(train) == 18 and train.labels.tolist().count(0) == 6
    assert torch.equal(val.features, real.features[[6, 7, 14, 15, 22, 23]])
    assert val.info["validation"] == {"source": "held-out shots", "images": 6, "per_class": 2}
    assert train.skipped == 1 and train.items == train.ids  # what the train split keeps of the shots
    with pytest.raises(Exception, match="leaves a class without shots"):
        held_out_shots(shots(1), 1)
