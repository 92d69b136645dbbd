"""The CLIP Filter and Real Filtering rules on hand-worked examples, and the zero-shot head they use."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from synthrec import contract
from synthrec.api import SyntheticDatasetSpec
from synthrec.contract.layout import DatasetLayout
from synthrec.plan import dataset_task
from synthrec.plan.tasks import ResourceRef, dump_task
from synthrec.storage import open_storage, write_marker
from synthrec.workers import reduce as reduce_stage
from synthrec.workers.runtime import run_stage
from synthrec.workers.selection import clip_filter, real_filter_keep
from synthrec.workers.shards import write_features

# ---------------------------------------------------------------------------------------- CLIP Filter
# One class, K = 3, threshold 1/C = 0.25 (C = 4). Positions are in (shard, key) order.


def test_enough_pass_keeps_k_drawn_uniformly_from_the_passing_images_only() -> None:
    scores = [0.90, 0.10, 0.50, 0.30, 0.26, 0.20, 0.25]  # pass (> 0.25): positions 0, 2, 3, 4
    kept, passed = clip_filter(scores, 0.25, 3, "random", seed=0, class_index=0)
    assert passed == [True, False, True, True, True, False, False]  # 0.25 itself does not beat chance
    assert len(kept) == 3 and set(kept) <= {0, 2, 3, 4}
    # the draw is the official rule: uniform among the passing images, fixed by (seed, class)
    assert kept == sorted(random.Random("synthrec-cf:0:0").sample([0, 2, 3, 4], 3))
    assert clip_filter(scores, 0.25, 3, "random", seed=0, class_index=0)[0] == kept
    draws = {tuple(clip_filter(scores, 0.25, 3, "random", seed=s, class_index=0)[0]) for s in range(40)}
    assert len(draws) == 4  # all C(4,3) subsets of the passing images occur; failing images never do
    assert {i for d in draws for i in d} == {0, 2, 3, 4}


def test_exactly_k_pass_keeps_exactly_those() -> None:
    scores = [0.90, 0.10, 0.50, 0.30, 0.20]
    assert clip_filter(scores, 0.25, 3, "random", seed=5, class_index=1)[0] == [0, 2, 3]


def test_too_few_pass_keeps_the_top_k_by_score_even_below_the_threshold() -> None:
    scores = [0.90, 0.10, 0.50, 0.20, 0.24, 0.05]  # only 0 and 2 pass
    kept, passed = clip_filter(scores, 0.25, 3, "random", seed=0, class_index=0)
    assert sum(passed) == 2
    assert kept == [0, 2, 4]  # 0.90, 0.50 and then 0.24 (below the threshold)


def test_selection_top_always_keeps_the_top_k() -> None:
    scores = [0.90, 0.10, 0.50, 0.30, 0.26, 0.20]
    assert clip_filter(scores, 0.25, 3, "top", seed=0, class_index=0)[0] == [0, 2, 3]


def test_a_class_with_at_most_k_images_keeps_all() -> None:
    assert clip_filter([0.1, 0.05], 0.25, 3, "random", seed=0, class_index=0)[0] == [0, 1]


def test_reduce_stage_picks_the_hand_worked_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same two cases through the reduce stage, from features files with known scores."""
    spec = SyntheticDatasetSpec.model_validate(
        {
            "labels": {"classes": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}]},
            "generator": {"model": "tiny://sd"},
            "filter": {"keepPerClass": 3, "clip": {"model": "RN50"}},
            "sharding": {"shards": 2},
            "output": {"uri": tmp_path.as_uri() + "/ds/"},
        }
    )
    task = dataset_task(spec, "reduce", ResourceRef(kind="SyntheticDataset", name="x"))
    storage = open_storage(spec.output.uri)
    # class 0: enough pass (p(0) = .9 .1 .5 .3 .26 .2); class 1: too few pass (p(1) = .9 .1 .5 .2 .24 .05)
    per_shard = {
        0: [
            ("a0", 0, 0.90),
            ("a1", 0, 0.10),
            ("a2", 0, 0.50),
            ("b0", 1, 0.90),
            ("b1", 1, 0.10),
            ("b2", 1, 0.50),
        ],
        1: [
            ("a3", 0, 0.30),
            ("a4", 0, 0.26),
            ("a5", 0, 0.20),
            ("b3", 1, 0.20),
            ("b4", 1, 0.24),
            ("b5", 1, 0.05),
        ],
    }
    for shard, rows in per_shard.items():
        probs = np.full((len(rows), 4), 0.0, dtype=np.float32)
        for i, (_, cls, p) in enumerate(rows):
            probs[i, cls] = p
            probs[i, (cls + 1) % 4] = 1 - p
        local = tmp_path / f"{shard}.safetensors"
        write_features(
            local,
            {
                "features": np.zeros((len(rows), 2), dtype=np.float16),
                "logits": np.log(np.maximum(probs, 1e-9)) * 1.0,
                "probs": probs,
                "class_index": np.array([c for _, c, _ in rows], dtype=np.int64),
            },
            {
                "keys": [k for k, _, _ in rows],
                "corrupt": [],
                "classes": "4",
                "logit_scale": "100.0",
                "clip": {"model": "RN50", "revision": "r"},
                "generator": {"model": "m", "revision": "g"},
            },
        )
        from synthrec.storage import commit_file

        commit_file(
            storage,
            local,
            DatasetLayout.features(shard),
            DatasetLayout.features_marker(shard),
            spec_hash=task.hashes["filter"],
        )
        write_marker(
            storage, DatasetLayout.shard_marker(shard), spec_hash=task.hashes["generate"], sha256="x"
        )
    task_file = tmp_path / "task.json"
    task_file.write_text(dump_task(task))
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(tmp_path / "log"))
    assert run_stage("reduce", reduce_stage.run, str(task_file), 0) == 0
    kept = [json.loads(line) for line in storage.read_bytes("index/kept.jsonl").decode().splitlines()]
    by_class = {c: sorted(r["key"] for r in kept if r["class"] == c) for c in (0, 1)}
    order0 = ["a0", "a1", "a2", "a3", "a4", "a5"]  # (shard, key) order of class 0
    expected0 = sorted(order0[i] for i in random.Random("synthrec-cf:0:0").sample([0, 2, 3, 4], 3))
    assert by_class[0] == expected0
    assert by_class[1] == ["b0", "b2", "b4"]
    manifest = storage.read_json("manifest.json")
    assert [
        (c["generated"], c["passed"], c["kept"], c["kept_below_threshold"]) for c in manifest["per_class"]
    ] == [(6, 4, 3, 0), (6, 2, 3, 1), (0, 0, 0, 0), (0, 0, 0, 0)]
    assert json.loads((tmp_path / "log").read_text())["kept"] == 6


# -------------------------------------------------------------------------------------- Real Filtering
# 2-D features: class-0 shots near +x, class-1 shots near +y.
REAL = np.array([[1.0, 0.0], [0.96, 0.28], [0.0, 1.0], [0.28, 0.96]], dtype=np.float32)
REAL_CLASS = np.array([0, 0, 1, 1])


def _unit(deg: float) -> list[float]:
    return [float(np.cos(np.radians(deg))), float(np.sin(np.radians(deg)))]


def test_nearest_drops_images_whose_nearest_shot_is_of_another_class() -> None:
    syn = np.array([_unit(5), _unit(80), _unit(85), _unit(10)], dtype=np.float32)
    cls = np.array([0, 0, 1, 1])
    assert real_filter_keep(syn, cls, REAL, REAL_CLASS, 1, "nearest").tolist() == [True, False, True, False]


def test_nearest_with_k_votes_and_strict_also_requires_the_nearest_shot() -> None:
    # three class-0 shots around 0..20 degrees and one class-1 shot at 38 degrees
    real = np.array([_unit(0), _unit(10), _unit(20), _unit(38)], dtype=np.float32)
    real_class = np.array([0, 0, 0, 1])
    syn = np.array([_unit(36)], dtype=np.float32)  # nearest: the class-1 shot; 3 nearest: 1, 0, 0
    own = np.array([0])
    assert real_filter_keep(syn, own, real, real_class, 1, "nearest").tolist() == [False]
    assert real_filter_keep(syn, own, real, real_class, 3, "nearest").tolist() == [True]  # majority is 0
    assert real_filter_keep(syn, own, real, real_class, 3, "strict").tolist() == [False]  # nearest is 1
    # k larger than the number of shots is clamped; a tie that includes the own class keeps it
    assert real_filter_keep(syn, own, real[2:], real_class[2:], 9, "nearest").tolist() == [True]


# ------------------------------------------------------------------------------------ the zero-shot head


def test_text_head_is_the_renormalised_mean_of_normalised_template_embeddings(tiny_models) -> None:
    import torch

    from synthrec.workers.clip import load_clip

    clip = load_clip(tiny_models.clip.as_uri(), None, "cpu")
    templates = ["a photo of a {c}.", "a drawing of the {c}."]
    head = clip.text_head(["red circle", "blue triangle"], templates)
    assert head.shape == (2, 32)
    with torch.no_grad():
        emb = clip.model.encode_text(clip.tokenizer([t.replace("{c}", "blue triangle") for t in templates]))
    mean = torch.nn.functional.normalize(emb.float(), dim=-1).mean(0)
    assert torch.allclose(head[1], mean / mean.norm(), atol=1e-6)
    assert torch.allclose(head.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert abs(clip.logit_scale - 100.0) < 1e-3
    assert clip.revision.startswith("sha256:")  # a file:// folder's revision is its content digest


# ------------------------------------------------------------------------------- partial selection
# The rules above select with partitions (O(n)) instead of sorts; these pin them to the sort they replace,
# ties included.


def test_top_k_by_partition_is_the_stable_sort_it_replaces() -> None:
    from synthrec.workers.selection import top_positions

    rng = np.random.default_rng(0)
    for n in (1, 5, 50, 400):
        scores = rng.integers(0, 8, n) / 8.0  # few distinct values: many ties at the k-th score
        for k in (0, 1, 3, n - 1, n, n + 2):
            stable = sorted(sorted(range(n), key=lambda i: (-scores[i], i))[: max(k, 0)])
            assert top_positions(scores, k).tolist() == stable


def test_the_random_draw_over_positions_picks_what_the_official_sample_picks() -> None:
    from synthrec.workers.selection import select_class

    rng = np.random.default_rng(1)
    for n, keep in ((30, 5), (1000, 40), (5000, 4900)):  # both of random.sample's algorithms
        scores = rng.random(n)
        kept, _ = select_class(scores, 0.3, keep, "random", seed=7, class_index=2)
        passing = [i for i in range(n) if scores[i] > 0.3]
        if len(passing) >= keep:
            assert kept.tolist() == sorted(random.Random("synthrec-cf:7:2").sample(passing, keep))


def test_nearest_shots_by_partition_match_a_stable_argsort_with_ties() -> None:
    from synthrec.workers.selection import nearest_shots

    rng = np.random.default_rng(2)
    sim = (rng.integers(0, 5, (300, 12)) / 4.0).astype(np.float32)  # ties everywhere
    for k in range(1, 13):
        expected = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        assert np.array_equal(nearest_shots(sim, k), expected), k
