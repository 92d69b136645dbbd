"""Real Guidance's noise level: the paper's levels as alpha-bar on GLIDE's cosine schedule, and the img2img
strength that starts a diffusers scheduler at that level, predicted from the scheduler's config alone and
checked against diffusers' own schedulers and img2img pipeline."""

from __future__ import annotations

import inspect
import itertools
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from synthrec import api
from synthrec.noise_levels import (
    PAPER_REFER_IMG_ITERS,
    SCHEDULERS,
    ConfigSchedule,
    UnsupportedSchedule,
    glide_alpha_bar,
    glide_start_timestep,
    match_strength,
    paper_alpha_bar,
    resolve_start,
    strength_for_steps,
)

# diffusers' schedulers call np.array on torch tensors in a way numpy 2 warns about, thousands of times here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

SD_V1 = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}

# ---------------------------------------------------------------------------------------------- GLIDE


def glide_cumprod() -> np.ndarray:
    """GLIDE's alphas_cumprod written from its formula: betas_for_alpha_bar with the cosine alpha_bar,
    s = 0.008, T = 1000, betas clipped at 0.999 (glide_text2im/gaussian_diffusion.py)."""
    T = 1000

    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    return np.cumprod(1 - betas)


def glide_respaced_100() -> list[int]:
    """The base steps GLIDE's space_timesteps(1000, '100') keeps, in order (glide_text2im/respace.py)."""
    stride, position, kept = 999 / 99, 0.0, []
    for _ in range(100):
        kept.append(round(position))
        position += stride
    return kept


@pytest.mark.parametrize("t", [0, 1, 141, 494, 900, 999])
def test_glide_alpha_bar_is_the_product_of_glides_cosine_betas(t: int) -> None:
    assert glide_alpha_bar(t) == pytest.approx(glide_cumprod()[t], rel=1e-12)


def test_the_papers_start_is_respaced_index_iters_minus_one_at_t_over_1000() -> None:
    kept = glide_respaced_100()
    for shots, iters in PAPER_REFER_IMG_ITERS.items():
        t = glide_start_timestep(iters)
        assert t == kept[iters - 1]  # q_sample at respaced index refer_img_iters - 1
        assert paper_alpha_bar(shots) == pytest.approx(glide_cumprod()[t], rel=1e-12)
    # The "t/1000" levels, and the signal levels the paper's denoiser started from.
    assert [glide_start_timestep(PAPER_REFER_IMG_ITERS[s]) for s in (16, 8, 4, 2, 1)] == [
        141,
        192,
        343,
        394,
        494,
    ]
    levels = [round(paper_alpha_bar(s), 3) for s in (16, 8, 4, 2, 1)]
    assert levels == [0.946, 0.905, 0.728, 0.655, 0.502]


def test_shot_counts_between_table_entries_use_the_next_smaller_one() -> None:
    assert paper_alpha_bar(12) == paper_alpha_bar(8)
    assert paper_alpha_bar(3) == paper_alpha_bar(2)
    assert paper_alpha_bar(64) == paper_alpha_bar(16)


# ------------------------------------------------------------------------------- strength arithmetic


def test_strength_for_k_steps_makes_diffusers_run_exactly_k_steps() -> None:
    for steps in range(1, 201):
        for k in range(1, steps + 1):
            strength = strength_for_steps(k, steps)
            assert min(int(steps * strength), steps) == k  # diffusers' get_timesteps
            assert strength == pytest.approx(k / steps, abs=1e-12)
    assert int(50 * 0.58) == 28 and int(50 * strength_for_steps(29, 50)) == 29


def test_the_match_is_the_closest_level_and_an_explicit_strength_is_kept() -> None:
    levels = {1: 0.99, 2: 0.8, 3: 0.62, 4: 0.3}

    def start(k: int) -> tuple[float, float]:
        return 250.0 * k, levels[k]

    chosen = match_strength(0.7, 4, start)
    assert (chosen.steps_run, chosen.strength, chosen.timestep, chosen.alpha_bar) == (3, 0.75, 750.0, 0.62)
    explicit = resolve_start(None, 0.5, 4, start)
    assert (explicit.strength, explicit.steps_run, explicit.alpha_bar) == (0.5, 2, 0.8)
    with pytest.raises(ValueError, match=r"raise generator\.steps to at least 4"):
        resolve_start(None, 0.3, 2, start)


# ------------------------------------------------------------------- diffusers schedulers (from config)


def _diffusers(name: str, config: dict[str, Any]) -> Any:
    diffusers = pytest.importorskip("diffusers")
    cls = getattr(diffusers, name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in config.items() if k in accepted})


def _diffusers_start(scheduler: Any, steps: int, k: int) -> tuple[float, float]:
    """Where img2img starts, read off diffusers: timesteps[(steps - k) * order] (get_timesteps), and the
    level add_noise applies there: alphas_cumprod[t], or 1 / (1 + sigma^2) for sigma-scaled schedulers."""
    scheduler.set_timesteps(steps)
    index = (steps - k) * scheduler.order
    t = float(scheduler.timesteps[index])
    if hasattr(scheduler, "sigmas") and SCHEDULERS[type(scheduler).__name__].level == "sigmas":
        sigma = float(scheduler.sigmas[index])
        return t, 1 / (1 + sigma * sigma)
    return t, float(scheduler.alphas_cumprod[int(t)])


BETAS = {
    "sd-scaled-linear": SD_V1,
    "linear": {"beta_schedule": "linear"},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
    "trained": {"trained_betas": list(np.linspace(1e-4, 0.03, 1000) ** 1.1)},
    "zero-snr": {**SD_V1, "rescale_betas_zero_snr": True},
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_the_start_predicted_from_the_config_is_diffusers_own(name: str) -> None:
    for (_, betas), spacing, offset, steps in itertools.product(
        BETAS.items(), ["linspace", "leading", "trailing"], [0, 1], [7, 50]
    ):
        config = {**betas, "timestep_spacing": spacing, "steps_offset": offset, "skip_prk_steps": steps == 7}
        scheduler = _diffusers(name, config)
        predicted = ConfigSchedule(name, dict(scheduler.config)).start(steps)
        for k in range(1, steps + 1):
            t, level = predicted(k)
            expected_t, expected_level = _diffusers_start(scheduler, steps, k)
            assert t == pytest.approx(expected_t, abs=1e-3), (config, steps, k)
            assert level == pytest.approx(expected_level, abs=2e-6), (config, steps, k)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_the_generate_stages_probe_of_the_live_scheduler_agrees(name: str) -> None:
    from synthrec.workers.diffusion import img2img_start

    scheduler = _diffusers(name, {**SD_V1, "timestep_spacing": "leading", "skip_prk_steps": True})
    live = img2img_start(scheduler, 25)
    predicted = ConfigSchedule(name, dict(scheduler.config)).start(25)
    for k in range(1, 26):
        assert live(k) == pytest.approx(predicted(k), abs=2e-6)


def test_a_schedulers_defaults_are_the_ones_diffusers_uses_for_a_missing_key() -> None:
    for name, family in SCHEDULERS.items():
        defaults = {
            k: p.default for k, p in inspect.signature(_diffusers(name, {}).__init__).parameters.items()
        }
        assert (defaults["beta_start"], defaults["beta_end"]) == (family.beta_start, family.beta_end)
        assert defaults.get("timestep_spacing", "linspace") == family.spacing, name
        assert type(_diffusers(name, {})).order == family.order


@pytest.mark.parametrize(
    ("name", "order"), [("DDIMScheduler", 1), ("EulerDiscreteScheduler", 1), ("HeunDiscreteScheduler", 2)]
)
def test_the_img2img_pipeline_starts_at_the_predicted_timestep(name: str, order: int) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    scheduler = _diffusers(name, {**SD_V1, "timestep_spacing": "leading"})
    assert scheduler.order == order
    predicted = ConfigSchedule(name, dict(scheduler.config)).start(30)
    for k in (1, 4, 17, 30):
        scheduler.set_timesteps(30)
        pipe = SimpleNamespace(scheduler=scheduler)
        timesteps, runs = StableDiffusionImg2ImgPipeline.get_timesteps(
            pipe, 30, strength_for_steps(k, 30), "cpu"
        )
        assert runs == k and float(timesteps[0]) == pytest.approx(predicted(k)[0])


def test_on_stable_diffusions_ddim_schedule_the_paper_levels_need_lower_strengths() -> None:
    start = ConfigSchedule("DDIMScheduler", {**SD_V1, "timestep_spacing": "leading"}).start(50)
    chosen = [match_strength(paper_alpha_bar(s), 50, start) for s in (16, 8, 4, 2, 1)]
    assert [c.strength for c in chosen] == [0.08, 0.1, 0.24, 0.28, 0.38]
    assert [c.timestep for c in chosen] == [61, 81, 221, 261, 361]
    for c, s in zip(chosen, (16, 8, 4, 2, 1), strict=True):
        assert abs(c.alpha_bar - paper_alpha_bar(s)) < 0.02
    # The old mapping strength = t/1000 started far noisier: at 1 shot alpha-bar 0.33 instead of 0.50.
    assert start(int(50 * 0.49))[1] == pytest.approx(0.331, abs=0.002)


def test_what_only_the_scheduler_itself_computes_is_reported_as_unsupported() -> None:
    with pytest.raises(UnsupportedSchedule, match="use_karras_sigmas"):
        ConfigSchedule("EulerDiscreteScheduler", {**SD_V1, "use_karras_sigmas": True})
    with pytest.raises(UnsupportedSchedule, match="FlowMatchEulerDiscreteScheduler is not one of"):
        ConfigSchedule("FlowMatchEulerDiscreteScheduler", {"shift": 3.0})
    with pytest.raises(UnsupportedSchedule, match="beta_schedule 'sigmoid'"):
        ConfigSchedule("DDPMScheduler", {"beta_schedule": "sigmoid"})


# ----------------------------------------------------------------------------------------------- API


def test_real_guidance_targets_the_papers_level_unless_told_otherwise() -> None:
    source = {"uri": "s3://bkt/r/"}
    assert api.RealGuidance.model_validate(
        {"source": source, "shots": 4}
    ).target_alpha_bar() == paper_alpha_bar(4)
    assert api.RealGuidance.model_validate({"source": source, "alphaBar": 0.8}).target_alpha_bar() == 0.8
    explicit = api.RealGuidance.model_validate({"source": source, "strength": 0.3})
    assert explicit.target_alpha_bar() is None and explicit.strength == 0.3
    with pytest.raises(ValueError, match=r"at most one of realGuidance\.strength and realGuidance\.alphaBar"):
        api.RealGuidance.model_validate({"source": source, "strength": 0.3, "alphaBar": 0.8})
