"""Figure 1's baselines against their papers' equations: Tip-Adapter's affinity and cache logits (Zhang et
al. 2022, Eq. 1-2), its key cache, search grid and Tip-Adapter-F's training; CoOp's prompt (Zhou et al.
2022, Eq. 2-3: learned context plus the class name's token embeddings through the frozen text encoder,
read at the end-of-text token) and its schedule; the augmented views of the shots."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from synthrec.workers import coop, tip_adapter
from synthrec.workers.shot_training import batches_per_epoch

NAMES = ["red circle", "green square", "blue triangle", "yellow cross"]


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1
    )


# ------------------------------------------------------------------------------------------ Tip-Adapter


def test_tip_adapter_logits_are_the_papers_equation() -> None:
    f, keys, text = unit(5, 8, seed=1), unit(12, 8, seed=2), unit(3, 8, seed=3)
    labels = torch.arange(12) % 3
    values = torch.nn.functional.one_hot(labels, 3).float()
    alpha, beta, scale = 1.7, 5.5, 100.0
    logits = tip_adapter.tip_logits(f, text, keys, values, alpha, beta, scale)
    for i in range(5):  # written out per image and class, in float64
        for c in range(3):
            clip = scale * sum(float(f[i, d]) * float(text[c, d]) for d in range(8))
            cache = 0.0
            for j in range(12):
                cosine = sum(float(f[i, d]) * float(keys[j, d]) for d in range(8))
                cache += math.exp(-beta * (1.0 - cosine)) * (1.0 if labels[j] == c else 0.0)
            assert float(logits[i, c]) == pytest.approx(clip + alpha * cache, rel=1e-5)
    # the affinity is 1 for an identical key and falls with the distance; alpha 0 is zero-shot CLIP
    assert tip_adapter.affinity(keys[:1], keys, beta)[0, 0] == pytest.approx(1.0)
    assert torch.allclose(tip_adapter.tip_logits(f, text, keys, values, 0.0, beta, scale), scale * f @ text.T)


def test_cache_keys_average_the_views_before_normalising_and_values_are_one_hot() -> None:
    views = [torch.tensor([[3.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]])]
    keys, values = tip_adapter.build_cache(views, torch.tensor([1, 0]), 3)
    assert torch.allclose(keys, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert values.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    raw = [torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 1.0]])]  # not a mean of normalised views
    assert torch.allclose(
        tip_adapter.build_cache(raw, torch.tensor([0]), 1)[0], torch.tensor([[4.0, 1.0]]) / 17**0.5
    )


def test_search_grid_is_the_official_one_without_its_maximum() -> None:
    assert tip_adapter.search_grid(12, 4) == pytest.approx([0.1, 3.075, 6.05, 9.025])
    grid = tip_adapter.search_grid(10, 20)
    assert len(grid) == 20 and grid[0] == pytest.approx(0.1) and max(grid) < 10


@pytest.mark.parametrize("cells", [1 << 24, 7], ids=["one-block", "row-blocks"])
def test_search_finds_the_first_best_alpha_and_beta(monkeypatch: pytest.MonkeyPatch, cells: int) -> None:
    monkeypatch.setattr(tip_adapter, "SEARCH_CELLS", cells)
    keys, text = unit(16, 8, seed=4), unit(4, 8, seed=5)
    values = torch.nn.functional.one_hot(torch.arange(16) % 4, 4).float()
    f = unit(30, 8, seed=6)
    y = (f @ keys.T).argmax(-1) % 4  # labels the cache knows better than the text head
    found = tip_adapter.search(f, y, text, keys, values, 100.0, [12, 10], [9, 7])
    best, expected = -1, None
    for beta in tip_adapter.search_grid(12, 9):  # beta outer, alpha inner, strictly better replaces
        for alpha in tip_adapter.search_grid(10, 7):
            logits = tip_adapter.tip_logits(f, text, keys, values, alpha, beta, 100.0)
            correct = int((logits.argmax(-1) == y).sum())
            if correct > best:
                best, expected = correct, (alpha, beta)
    assert (found.alpha, found.beta) == pytest.approx(expected)
    assert found.top1 == pytest.approx(100.0 * best / 30)


def test_tip_adapter_f_trains_the_keys_with_the_official_schedule() -> None:
    keys = unit(16, 8, seed=7)
    values = torch.nn.functional.one_hot(torch.arange(16) % 4, 4).float()
    text = unit(4, 8, seed=8)
    labels = torch.arange(16) % 4
    views = [unit(16, 8, seed=10 + e) for e in range(3)]
    seen: list[int] = []

    def view(epoch: int) -> torch.Tensor:
        seen.append(epoch)
        return views[epoch]

    scores = iter([40.0, 70.0, 60.0])
    reported, other, result = tip_adapter.fine_tune(
        keys, values, text, 100.0, labels, view, alpha=2.0, beta=1.0, epochs=3, lr=1e-2,
        weight_decay=0.01, eps=1e-4, batch_size=4, seed=0, validate=lambda k: next(scores), keep_best=True,
    )  # fmt: skip
    assert seen == [0, 1, 2]  # a fresh view each epoch
    assert len(result.steps) == 3 * 4 and result.selected_epoch == result.best_validation_epoch == 2
    # torch's CosineAnnealingLR over every iteration, stepped after each batch
    param = torch.nn.Parameter(torch.zeros(1))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([param], lr=1e-2), 12)
    expected = []
    for _ in range(12):
        expected.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    assert [s["lr"] for s in result.steps] == pytest.approx(expected)
    assert not torch.equal(reported, keys) and other is not None and not torch.equal(reported, other)
    assert batches_per_epoch(160, 256) == 1 and batches_per_epoch(600, 256) == 2  # last partial batch dropped


# ------------------------------------------------------------------------------------------------- CoOp


@pytest.fixture(scope="module")
def clip(tiny_models):
    from synthrec.workers.clip import load_clip

    return load_clip(tiny_models.clip.as_uri(), None, "cpu")


def set_context_to_words(learner: coop.PromptLearner, clip, words: list[str]) -> None:
    """Context vectors equal to the token embeddings of ``words``: the prompt is then plain text."""
    tokens = clip.tokenizer([" ".join(words)])[0, 1 : 1 + len(words)]
    with torch.no_grad():
        learner.ctx.copy_(clip.model.token_embedding(tokens).expand_as(learner.ctx))


@pytest.mark.parametrize(
    ("position", "text"),
    [
        ("end", "a photo of a {name}."),
        ("middle", "a photo {name} of a."),
        ("front", "{name} a photo of a."),
    ],
)
def test_coop_prompt_is_context_plus_class_tokens_through_the_frozen_text_encoder(
    clip, position, text
) -> None:
    names = [*NAMES, "a rather long name of a class"]  # names of different token lengths
    for class_specific in (False, True):
        learner = coop.PromptLearner(
            clip.model,
            clip.tokenizer,
            names,
            context_tokens=4,
            position=position,
            class_specific=class_specific,
        )
        assert learner.ctx.shape == ((5, 4, 32) if class_specific else (4, 32))
        set_context_to_words(learner, clip, ["a", "photo", "of", "a"])
        with torch.no_grad():
            got = coop.encode_prompts(clip.model, learner(), learner.tokens)
            want = clip.model.encode_text(clip.tokenizer([text.format(name=n) for n in names]))
        assert torch.allclose(got, want, atol=1e-5)
    # pooled at the end-of-text token: [SOS] + 4 context + the name + "." -> EOT at 6 + name length
    eot = learner.tokens.argmax(-1).tolist()
    assert eot == [1 + 4 + n + 1 for n in learner.name_lengths]


def test_coop_context_init_words_and_random_init(clip) -> None:
    learner = coop.PromptLearner(clip.model, clip.tokenizer, NAMES, context_init="a photo of a")
    assert learner.context_tokens == 4  # M becomes the number of words
    with torch.no_grad():
        got = coop.class_embeddings(clip.model, learner)
        want = torch.nn.functional.normalize(
            clip.model.encode_text(clip.tokenizer([f"a photo of a {n}." for n in NAMES])), dim=-1
        )
    assert torch.allclose(got, want, atol=1e-5)
    random_init = coop.PromptLearner(
        clip.model, clip.tokenizer, NAMES, context_tokens=16, init_std=0.02, seed=3
    )
    assert random_init.ctx.shape == (16, 32) and 0.01 < float(random_init.ctx.detach().std()) < 0.03
    again = coop.PromptLearner(clip.model, clip.tokenizer, NAMES, context_tokens=16, seed=3)
    assert torch.equal(random_init.ctx, again.ctx)  # the run's seed decides it


def test_coop_learns_only_the_context_with_dassls_schedule(clip) -> None:
    from synthrec.api import CoOp

    frozen = {n: p.detach().clone() for n, p in clip.model.named_parameters()}
    learner = coop.PromptLearner(clip.model, clip.tokenizer, NAMES, context_tokens=4)
    start = learner.ctx.detach().clone()
    labels = torch.arange(8) % 4
    features = unit(8, 32, seed=9)
    settings = CoOp(epochs=4, lr=0.5, batch_size=4, context_tokens=4)
    reported, other, result = coop.train(
        clip.model, learner, 100.0, labels, lambda e: features, settings, 0, autocast=clip.autocast
    )
    assert other is None and reported.shape == (4, 32)
    assert not torch.equal(learner.ctx.detach(), start)
    assert all(torch.equal(p, frozen[n]) for n, p in clip.model.named_parameters())  # both encoders frozen
    # epoch 1 at the constant 1e-5, then cosine over all the epochs, recounted from the warmup's end
    assert [s["lr"] for s in result.steps] == pytest.approx(
        [1e-5] * 2 + [0.5 * (1 + math.cos(math.pi * e / 4)) * 0.5 for e in (0, 0, 1, 1, 2, 2)]
    )
    assert coop.epoch_lr(0, 0.002, 200, 1, 1e-5) == 1e-5 and coop.epoch_lr(1, 0.002, 200, 1, 1e-5) == 0.002


# ---------------------------------------------------------------------------------------- shot views


def test_views_of_the_shots_are_seeded_augmentations(clip, tiny_models) -> None:
    from PIL import Image

    from synthrec.workers.shot_views import COOP_SCALE, ShotViews

    images = [
        Image.open(p).convert("RGB") for p in sorted(Path(tiny_models.real, "train").rglob("*.png"))[:6]
    ]
    views = ShotViews(clip, images, COOP_SCALE, seed=1)
    torch.manual_seed(123)
    first = views.encode(0)
    assert torch.equal(first, views.encode(0))  # the same view again
    assert not torch.equal(first, views.encode(1))  # another view differs
    assert not torch.equal(first, ShotViews(clip, images, COOP_SCALE, seed=2).encode(0))  # another seed too
    assert torch.allclose(first.norm(dim=-1), torch.ones(6))
    assert not torch.allclose(views.encode(0, normalize=False).norm(dim=-1), torch.ones(6))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    views.encode(3)
    assert torch.equal(torch.rand(3), expected)  # encoding a view leaves torch's RNG as it was
