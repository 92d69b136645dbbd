"""Classifier Tuning pieces: SCE, the text-initialised head, learning on separable features, the LR
schedule, the mixing orders step by step, batch-norm freezing and the evaluation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from synthrec.api import ClassifierTuning
from synthrec.workers.tuning import (
    CachedFeatures,
    CycledBatches,
    EncoderFeatures,
    LinearHead,
    evaluate,
    lr_at,
    plan_epoch,
    plan_phases,
    sce_loss,
    trainable_encoder_parameters,
    tune,
)


def config(soft_weight: float | None = None, **kw: object) -> ClassifierTuning:
    """Small batches and a higher LR than the paper's defaults, so that a few steps show something."""
    ct = ClassifierTuning(batch_size_synthetic=8, batch_size_real=4, epochs=3, lr=1e-2)
    if soft_weight is not None:
        kw["soft_target"] = ct.soft_target.model_copy(update={"weight": soft_weight})
    return ct.model_copy(update=kw)


def test_sce_matches_the_formula_on_known_logits() -> None:
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    teacher = torch.tensor([[4.0, 2.0, 0.0], [0.0, 6.0, 2.0]])
    T = 2.0
    expected = 0.0
    for s, t in zip(student.tolist(), teacher.tolist(), strict=True):
        p = [math.exp(v / T) for v in t]
        p = [v / sum(p) for v in p]
        log_q = [v - math.log(sum(math.exp(x) for x in s)) for v in s]  # student NOT divided by T
        expected += -sum(pi * lq for pi, lq in zip(p, log_q, strict=True))
    expected /= 2
    assert sce_loss(student, teacher, T).item() == pytest.approx(expected, rel=1e-6)
    # with a one-hot-like teacher it is the cross-entropy with the teacher's class
    hard = torch.tensor([[1000.0, 0.0, 0.0]])
    ce = nn.functional.cross_entropy(student[:1], torch.tensor([0]))
    assert sce_loss(student[:1], hard, T).item() == pytest.approx(ce.item(), rel=1e-6)


def test_the_initial_head_reproduces_zero_shot_predictions_exactly(tiny_models) -> None:
    from PIL import Image

    from synthrec.workers.clip import load_clip, zero_shot_logits

    clip = load_clip(tiny_models.clip.as_uri(), None, "cpu")
    text = clip.text_head(
        ["red circle", "green square", "blue triangle", "yellow cross"], ["a photo of a {c}."]
    )
    images = sorted((tiny_models.real / "test").rglob("*.png"))[::7]
    feats = clip.encode(torch.stack([clip.preprocess(Image.open(p).convert("RGB")) for p in images]))
    zero_shot = zero_shot_logits(feats, text, clip.logit_scale)
    head = LinearHead.from_text(text, clip.logit_scale)
    with torch.no_grad():
        logits = head(feats)
    assert torch.equal(logits.argmax(-1), zero_shot.argmax(-1))
    assert torch.allclose(logits, zero_shot, atol=1e-4)
    assert torch.equal(head.bias.detach(), torch.zeros(4))


def separable(
    n_per_class: int, classes: int = 4, dim: int = 16, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(
        torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)), dim=-1
    )
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = means[y] + 0.15 * torch.randn(len(y), dim, generator=gen)
    return torch.nn.functional.normalize(x, dim=-1), y


def test_tuning_learns_separable_features_from_a_head_at_chance() -> None:
    x, y = separable(100)
    x_test, y_test = separable(50, seed=1)
    head = LinearHead.random(4, 16, seed=3)
    with torch.no_grad():
        before = evaluate(head(x_test), y_test, 4)["top1"]
    assert before < 50  # a random head is at chance (25 %), give or take
    teacher = LinearHead.random(4, 16, seed=4)  # an uninformative teacher: SCE off, CE must do the work
    cfg = config(epochs=20, batch_size_synthetic=32, lr=5e-2, soft_weight=0.0)
    result = tune(head, teacher, CachedFeatures(x, None), x, y, None, cfg, 0)
    with torch.no_grad():
        after = evaluate(head(x_test), y_test, 4)["top1"]
    assert after >= 95, (before, after)
    assert len(result.epochs) == 20 and result.epochs[-1]["loss"] < result.epochs[0]["loss"]


def test_cosine_schedule_is_sized_to_the_real_number_of_steps() -> None:
    total = 40
    lrs = [lr_at(s, 1.0, 0, total) for s in range(total)]
    assert lrs[0] == 1.0 and all(a > b for a, b in itertools.pairwise(lrs))  # strictly annealing
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    assert lr_at(total, 1.0, 0, total) == pytest.approx(0.0) and lr_at(
        2 * total, 1.0, 0, total
    ) == pytest.approx(0.0)
    warm = [lr_at(s, 1.0, 4, total) for s in range(6)]
    assert warm[:4] == [0.25, 0.5, 0.75, 1.0] and warm[4] == 1.0 and warm[5] < 1.0
    # the run's schedule follows it step by step
    x, y = separable(10)
    cfg = config(epochs=2, batch_size_synthetic=8, mixing="mixed")  # 40 images / 8 = 5 steps per epoch
    result = tune(
        LinearHead.random(4, 16, 0), LinearHead.random(4, 16, 1), CachedFeatures(x, None), x, y, None, cfg, 0
    )
    assert [s["lr"] for s in result.steps] == pytest.approx([lr_at(s, 1e-2, 0, 10) for s in range(10)])


def test_mixed_plan_takes_a_synthetic_and_a_cycled_real_batch_every_step() -> None:
    gen = torch.Generator().manual_seed(0)
    cycled = CycledBatches(6, 4, gen)
    epochs = [plan_epoch("mixed", 10, 6, 4, 4, gen, cycled) for _ in range(2)]
    for plan in epochs:
        assert [len(s) for s, _ in plan] == [4, 4, 2]  # one pass over the synthetic set, last batch partial
        assert sorted(torch.cat([s for s, _ in plan]).tolist()) == list(range(10))
        assert all(r is not None for _, r in plan)
    real = [r.tolist() for plan in epochs for _, r in plan]
    assert [len(r) for r in real] == [4, 2, 4, 2, 4, 2]  # the real loader restarts whenever it runs out...
    for a, b in zip(real[::2], real[1::2], strict=True):
        assert sorted(a + b) == list(range(6))  # ...each restart a new shuffled pass
    assert real[0] + real[1] != real[2] + real[3]  # carried across the epoch boundary, reshuffled


@pytest.mark.parametrize(
    ("mixing", "expected"),
    [
        ("mixed", ["mixed"]),
        ("synthetic-then-real", ["synthetic", "real"]),
        ("real-then-synthetic", ["real", "synthetic"]),
    ],
)
def test_mixing_orders_step_by_step(mixing: str, expected: list[str]) -> None:
    x_syn, y_syn = separable(4)  # 16 images, batch 8: 2 steps per epoch
    x_real, y_real = separable(3, seed=2)  # 12 images, batch 4: 3 steps per epoch
    cfg = config(epochs=2, mixing=mixing)
    result = tune(
        LinearHead.random(4, 16, 0),
        LinearHead.random(4, 16, 1),
        CachedFeatures(x_syn, x_real),
        x_syn,
        y_syn,
        y_real,
        cfg,
        0,
    )
    assert [p["name"] for p in result.phases] == expected
    kinds = ["both" if "syn" in s and "real" in s else "syn" if "syn" in s else "real" for s in result.steps]
    per_phase = {"mixed": ["both"] * 4, "synthetic": ["syn"] * 4, "real": ["real"] * 6}
    assert kinds == [k for name in expected for k in per_phase[name]]
    # each phase has its own schedule: the learning rate restarts at the base value
    starts = [0, *[sum(p["steps"] for p in result.phases[: i + 1]) for i in range(len(expected) - 1)]]
    assert all(result.steps[i]["lr"] == cfg.lr for i in starts)
    assert [e["phase"] for e in result.epochs] == [n for n in expected for _ in range(2)]


def test_only_one_source_trains_on_it_whatever_the_order() -> None:
    assert plan_phases("synthetic-then-real", 10, 0, 3) == plan_phases("mixed", 10, 0, 3)
    assert [p.kind for p in plan_phases("mixed", 0, 8, 3)] == ["real"]
    assert plan_phases("mixed", 0, 0, 3) == []


def tiny_resnet_clip() -> nn.Module:
    from open_clip.model import CLIP

    return CLIP(
        embed_dim=16,
        vision_cfg={"layers": [1, 1, 1, 1], "width": 8, "image_size": 64, "head_width": 8},
        text_cfg={"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    )


@pytest.mark.parametrize("freeze", [True, False])
def test_batch_norm_layers_stay_in_eval_mode_when_frozen(freeze: bool) -> None:
    torch.manual_seed(0)
    visual = tiny_resnet_clip().visual
    bns = [m for m in visual.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns  # a ModifiedResNet has batch norm
    stats = [bn.running_mean.clone() for bn in bns]
    layer1 = [p.detach().clone() for p in visual.layer1.parameters()]
    layer4 = [p.detach().clone() for p in visual.layer4.parameters()]
    modes = []

    def make_loader(split: str, batches: list[list[int]]):
        for b in batches:
            modes.append(([bn.training for bn in bns], visual.training))
            yield (
                torch.randn(len(b), 3, 64, 64) * 3 + 1,
                torch.tensor(b),
                torch.ones(len(b), dtype=torch.bool),
            )

    source = EncoderFeatures(visual, "last-block", make_loader, "cpu", freeze_bn=freeze)
    y = torch.arange(4).repeat(4)
    cached = torch.nn.functional.normalize(torch.randn(16, 16), dim=-1)
    tune(
        LinearHead.random(4, 16, 0), LinearHead.random(4, 16, 1), source, cached, y, None, config(epochs=2), 0
    )
    assert modes and all(tower for _, tower in modes)  # the tower itself runs in train mode
    if freeze:
        assert all(not any(flags) for flags, _ in modes)
        assert all(torch.equal(a, bn.running_mean) for a, bn in zip(stats, bns, strict=True))
    else:
        assert all(all(flags) for flags, _ in modes)
        assert any(not torch.equal(a, bn.running_mean) for a, bn in zip(stats, bns, strict=True))
    # last-block: layer4 and the attention pool learn, the earlier layers do not
    assert all(torch.equal(a, p) for a, p in zip(layer1, visual.layer1.parameters(), strict=True))
    assert any(not torch.equal(a, p) for a, p in zip(layer4, visual.layer4.parameters(), strict=True))


def test_last_block_of_a_vit_is_the_last_resblock_ln_post_and_proj(tiny_models) -> None:
    from synthrec.workers.clip import load_clip

    visual = load_clip(tiny_models.clip.as_uri(), None, "cpu").visual
    params = {id(p) for p in trainable_encoder_parameters(visual, "last-block")}
    expected = [*visual.transformer.resblocks[-1].parameters(), *visual.ln_post.parameters(), visual.proj]
    assert params == {id(p) for p in expected}
    assert id(visual.conv1.weight) not in params
    assert len(trainable_encoder_parameters(visual, "full")) == len(list(visual.parameters()))


def test_evaluate_reports_top1_per_class_and_the_confusion_matrix() -> None:
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]])
    labels = torch.tensor([0, 1, 1, 2])
    out = evaluate(logits, labels, 3)
    assert out["top1"] == 75.0 and out["count"] == 4
    assert out["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert [c["top1"] for c in out["per_class"]] == [100.0, 50.0, 100.0]


# ------------------------------------------------------------------------------- the step loop's cost


class _Reads:
    """Counts the reads of tensor values that the tuning loop's own code makes (each one waits for the
    device on a GPU; the optimiser's step counters live on the host and are not counted)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import sys

        self.count = 0
        for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
            original = getattr(torch.Tensor, name)

            def counted(tensor: torch.Tensor, *args: object, _original=original) -> object:
                if sys._getframe(1).f_code.co_filename.endswith("workers/tuning.py"):
                    self.count += 1
                return _original(tensor, *args)

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_the_step_loop_reads_the_device_once_per_epoch_not_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    x_syn, y_syn = separable(20)  # 80 images, batch 8: 10 steps per epoch
    x_real, y_real = separable(3, seed=2)
    cfg = config(epochs=3, mixing="mixed", grad_clip=1.0)
    head, teacher = LinearHead.random(4, 16, 0), LinearHead.random(4, 16, 1)
    reads = _Reads(monkeypatch)
    result = tune(head, teacher, CachedFeatures(x_syn, x_real), x_syn, y_syn, y_real, cfg, 0)
    assert len(result.steps) == 30 and all({"loss", "syn", "real", "lr"} <= set(s) for s in result.steps)
    assert reads.count <= 3  # one per epoch (the logging interval): 30 steps, at most 3 reads


def test_the_fixed_teacher_is_applied_once_per_synthetic_example() -> None:
    x, y = separable(10)  # 40 synthetic images
    cfg = config(epochs=4, soft_weight=0.8)

    class CountingTeacher(LinearHead):
        rows = 0

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            CountingTeacher.rows += len(features)
            return super().forward(features)

    teacher = CountingTeacher(LinearHead.random(4, 16, 1).weight, torch.zeros(4))
    result = tune(LinearHead.random(4, 16, 0), teacher, CachedFeatures(x, None), x, y, None, cfg, 0)
    assert len(result.epochs) == 4
    assert CountingTeacher.rows == len(x)  # not len(x) x epochs


@pytest.mark.parametrize("pseudo_labels", ["soft", "hard"])
def test_precomputed_teacher_targets_give_the_per_step_teacher_loss(pseudo_labels: str) -> None:
    from synthrec.api import SoftTarget
    from synthrec.workers.tuning import targets_loss, teacher_loss, teacher_targets

    x, _ = separable(5)
    teacher, student = LinearHead.random(4, 16, 1), LinearHead.random(4, 16, 2)
    soft = SoftTarget(temperature=2.0, pseudo_labels=pseudo_labels)
    targets = teacher_targets(teacher, x, soft, chunk=7)  # chunked: the same rows
    batch = torch.tensor([3, 0, 17, 9])
    with torch.no_grad():
        per_step = teacher_loss(student(x[batch]), teacher(x[batch]), soft)
        assert torch.allclose(targets_loss(student(x[batch]), targets[batch]), per_step, atol=1e-6)


@pytest.mark.parametrize("selection", ["last", "best-validation"])
def test_with_a_validation_set_both_models_are_kept(selection: str) -> None:
    x, y = separable(10)
    scores = iter([10.0, 90.0, 50.0])
    head = LinearHead.random(4, 16, 0)
    snapshots = []
    result = tune(
        head,
        LinearHead.random(4, 16, 1),
        CachedFeatures(x, None),
        x,
        y,
        None,
        config(epochs=3, selection=selection),
        0,
        validate=lambda: (snapshots.append(head.weight.detach().clone()), next(scores))[1],
    )
    assert [e["val_top1"] for e in result.epochs] == [10.0, 90.0, 50.0]
    assert result.best_validation_epoch == 2 and result.alternative is not None
    reported, other = (snapshots[2], snapshots[1]) if selection == "last" else (snapshots[1], snapshots[2])
    assert result.selected_epoch == (3 if selection == "last" else 2)
    assert torch.equal(head.weight.detach(), reported)  # the head is left as the reported model
    assert torch.equal(result.alternative["head"]["weight"], other)  # and the other one is there to evaluate


def test_hard_pseudo_labels_are_cross_entropy_with_the_teachers_class() -> None:
    from synthrec.api import SoftTarget
    from synthrec.workers.tuning import teacher_loss

    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    teacher = torch.tensor([[0.1, 0.3, 0.2], [4.0, 0.0, 1.0]])  # argmax: classes 1 and 0
    hard = teacher_loss(student, teacher, SoftTarget(pseudo_labels="hard", temperature=7.0))
    expected = nn.functional.cross_entropy(student, torch.tensor([1, 0]))
    assert hard.item() == pytest.approx(expected.item(), rel=1e-6)  # the temperature plays no part
    soft = teacher_loss(student, teacher, SoftTarget(temperature=2.0))
    assert soft.item() == pytest.approx(sce_loss(student, teacher, 2.0).item(), rel=1e-6)
    # and tuning with hard pseudo labels trains on them: a teacher that says class 0 for everything pulls
    # every prediction there when the labels carry no weight
    x, y = separable(10)
    teacher_head = LinearHead(torch.zeros(4, 16), torch.tensor([5.0, 0.0, 0.0, 0.0]))
    head = LinearHead.random(4, 16, 3)
    ct = config(epochs=30, lr=5e-2, soft_weight=1.0)
    ct = ct.model_copy(update={"soft_target": ct.soft_target.model_copy(update={"pseudo_labels": "hard"})})
    tune(head, teacher_head, CachedFeatures(x, None), x, y, None, ct, 0)
    with torch.no_grad():
        assert (head(x).argmax(-1) == 0).all()
