"""Real Guidance noise levels: the paper's levels as signal level alpha-bar, and the img2img strength that
starts a diffusers pipeline at that level.

The paper's Real Guidance (official ``src/glide/glide_fsl.py`` and README) noises the real shot with
GLIDE's ``q_sample`` at index ``refer_img_iters - 1`` of the 100-step respacing of GLIDE's 1000-step cosine
schedule (``squaredcos_cap_v2``), then runs the last ``refer_img_iters`` steps: 15/20/35/40/50 for
16/8/4/2/1 shots. Respacing keeps base step ``round(k * 999 / 99)`` at index k (``respace.space_timesteps``)
and that step's alpha-bar, so the start is base step t = 141/192/343/394/494, i.e. the "t/1000" levels
0.141 ... 0.494. What the denoiser sees there is the signal level

    alpha_bar_t = prod_{i <= t} (1 - beta_i),  beta_i = min(1 - f((i+1)/T) / f(i/T), 0.999),
    f(u) = cos^2(((u + s) / (1 + s)) * pi / 2),  s = 0.008, T = 1000

(``gaussian_diffusion.betas_for_alpha_bar``), about 0.947/0.905/0.728/0.655/0.502. The same t on another
schedule is a different level (Stable Diffusion's scaled-linear schedule at t = 494 is about 0.28), so the
level, not t, is what carries over: ``strength`` is chosen so that img2img starts where alpha-bar is
closest to the paper's.

diffusers' img2img (``StableDiffusionImg2ImgPipeline.get_timesteps``, the convention SD 1/2 and SDXL
share) runs ``k = min(int(N * strength), N)`` of the scheduler's N timesteps and noises the image with
``scheduler.add_noise`` at ``timesteps[(N - k) * order]``. For a scheduler whose ``add_noise`` multiplies
by sigma (Euler, LMS, Heun) the level is ``1 / (1 + sigma^2)``; for the others it is ``alphas_cumprod[t]``;
both are the same quantity. ``ConfigSchedule`` reproduces that from a scheduler's config alone (beta
schedules linear, scaled_linear, squaredcos_cap_v2 and trained_betas; zero-terminal-SNR rescaling;
``timestep_spacing`` linspace/leading/trailing and ``steps_offset``; each class's own timestep grid and
order) so that ``synthrec plan`` can show the strength without torch; the generate stage measures the
loaded scheduler itself (``synthrec.workers.diffusion``) and both feed ``match_strength``.

Pure: math and numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# ------------------------------------------------------------------------------------- GLIDE (paper)

GLIDE_TRAIN_STEPS = 1000
GLIDE_RESPACED_STEPS = 100
GLIDE_COSINE_S = 0.008
# Official README: refer_img_iters per shot count (GLIDE steps run, of the 100 respaced ones).
PAPER_REFER_IMG_ITERS: dict[int, int] = {16: 15, 8: 20, 4: 35, 2: 40, 1: 50}


def _glide_f(u: float) -> float:
    return math.cos((u + GLIDE_COSINE_S) / (1 + GLIDE_COSINE_S) * math.pi / 2) ** 2


def glide_alpha_bar(t: int, steps: int = GLIDE_TRAIN_STEPS) -> float:
    """alpha-bar at 0-indexed step t of GLIDE's cosine schedule: the product of (1 - beta_i), i <= t, with
    GLIDE's clipped betas (equal to f((t+1)/T) / f(0) wherever no beta is clipped)."""
    if not 0 <= t < steps:
        raise ValueError(f"timestep {t} is outside 0..{steps - 1}")
    product = 1.0
    for i in range(t + 1):
        product *= 1.0 - min(1.0 - _glide_f((i + 1) / steps) / _glide_f(i / steps), 0.999)
    return product


def glide_start_timestep(refer_img_iters: int) -> int:
    """The base step that respaced index ``refer_img_iters - 1`` of GLIDE's '100' respacing keeps."""
    stride = (GLIDE_TRAIN_STEPS - 1) / (GLIDE_RESPACED_STEPS - 1)
    if not 1 <= refer_img_iters <= GLIDE_RESPACED_STEPS:
        raise ValueError(f"refer_img_iters {refer_img_iters} is outside 1..{GLIDE_RESPACED_STEPS}")
    # space_timesteps accumulates the stride in a float, as here, then rounds (half to even).
    position = 0.0
    for _ in range(refer_img_iters - 1):
        position += stride
    return round(position)


def paper_refer_img_iters(shots: int) -> int:
    """The README's refer_img_iters for ``shots``; between table entries, the next smaller shot count's."""
    eligible = [s for s in PAPER_REFER_IMG_ITERS if s <= shots]
    return PAPER_REFER_IMG_ITERS[max(eligible) if eligible else 1]


def paper_alpha_bar(shots: int) -> float:
    """The paper's Real Guidance start level for ``shots`` as alpha-bar on GLIDE's schedule."""
    return glide_alpha_bar(glide_start_timestep(paper_refer_img_iters(shots)))


# ------------------------------------------------------------------------------ the strength that matches


@dataclass(frozen=True)
class StartLevel:
    """Where img2img starts for a strength: the steps it runs, the timestep it noises to, the level there."""

    strength: float  # the value to pass: int(steps * strength) == steps_run
    steps_run: int
    timestep: float
    alpha_bar: float


def strength_for_steps(steps_run: int, steps: int) -> float:
    """The smallest float s = k/N, nudged up where float rounding would make int(N * s) one short
    (int(50 * 0.58) == 28)."""
    value = steps_run / steps
    while int(steps * value) < steps_run:
        value = math.nextafter(value, math.inf)
    return value


def match_strength(target: float, steps: int, start: Callable[[int], tuple[float, float]]) -> StartLevel:
    """The strength whose img2img start level is closest to ``target`` (ties: fewer steps).

    ``start(k)`` gives (timestep, alpha_bar) where img2img starts when it runs k of the ``steps`` steps."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    best: StartLevel | None = None
    for k in range(1, steps + 1):
        timestep, level = start(k)
        if best is None or abs(level - target) < abs(best.alpha_bar - target):
            best = StartLevel(strength_for_steps(k, steps), k, timestep, level)
    assert best is not None
    return best


def steps_run(strength: float, steps: int) -> int:
    """The denoising steps img2img runs for an explicit strength; ValueError when that is none at all."""
    k = min(int(steps * strength), steps)
    if k < 1:
        needed = math.ceil(1 / strength)
        while int(needed * strength) < 1:
            needed += 1
        raise ValueError(
            f"realGuidance.strength {strength} x generator.steps {steps} is less than one denoising step; "
            f"raise generator.steps to at least {needed}"
        )
    return k


def resolve_start(
    target: float | None, strength: float | None, steps: int, start: Callable[[int], tuple[float, float]]
) -> StartLevel:
    """The img2img start: the explicit strength when one is given, else the one matching ``target``."""
    if strength is not None:
        k = steps_run(strength, steps)
        timestep, level = start(k)
        return StartLevel(strength, k, timestep, level)
    if target is None:
        raise ValueError("either a target alpha-bar or an explicit strength is needed")
    return match_strength(target, steps, start)


# ----------------------------------------------------------------------- diffusers schedulers (pure)


class UnsupportedSchedule(ValueError):
    """A scheduler (or an option of one) whose img2img start this module cannot predict from its config."""


@dataclass(frozen=True)
class _Family:
    grid: str  # how set_timesteps spaces the N timesteps: 'n' | 'n+1' | 'n+1-linspace' | 'pndm'
    level: str  # 'alphas' (alphas_cumprod[t]) | 'sigmas' (1 / (1 + interpolated sigma^2))
    order: int = 1
    spacing: str = "linspace"  # the class's default timestep_spacing
    beta_start: float = 0.0001
    beta_end: float = 0.02


# Each class's timestep grid, how add_noise reads the level, its order and its defaults (diffusers 0.42;
# tests/unit/test_noise_levels.py checks every entry against diffusers' own schedulers).
SCHEDULERS: dict[str, _Family] = {
    "DDIMScheduler": _Family("n", "alphas", spacing="leading"),
    "DDPMScheduler": _Family("n", "alphas", spacing="leading"),
    "PNDMScheduler": _Family("pndm", "alphas", spacing="leading"),
    "DPMSolverMultistepScheduler": _Family("n+1", "alphas"),
    "UniPCMultistepScheduler": _Family("n+1", "alphas"),
    "DEISMultistepScheduler": _Family("n+1", "alphas"),
    "DPMSolverSinglestepScheduler": _Family("n+1-linspace", "alphas"),
    "EulerDiscreteScheduler": _Family("n", "sigmas"),
    "EulerAncestralDiscreteScheduler": _Family("n", "sigmas"),
    "LMSDiscreteScheduler": _Family("n", "sigmas"),
    "HeunDiscreteScheduler": _Family("n", "sigmas", order=2, beta_start=0.00085, beta_end=0.012),
}

# Options that change the timesteps or sigmas in ways only the scheduler itself computes.
_UNSUPPORTED_FLAGS = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_lu_lambdas",
    "use_flow_sigmas",
    "use_dynamic_shifting",
    "thresholding_for_img2img",
)


class ConfigSchedule:
    """The img2img start of a diffusers scheduler, computed from its class name and config alone."""

    def __init__(self, class_name: str, config: Mapping[str, Any]) -> None:
        import numpy as np

        family = SCHEDULERS.get(class_name)
        if family is None:
            raise UnsupportedSchedule(
                f"{class_name} is not one of the schedulers synthrec predicts from a config "
                f"({', '.join(sorted(SCHEDULERS))})"
            )
        for flag in _UNSUPPORTED_FLAGS:
            if config.get(flag):
                raise UnsupportedSchedule(f"{class_name} with {flag}=true")
        if config.get("interpolation_type", "linear") != "linear":
            raise UnsupportedSchedule(
                f"{class_name} with interpolation_type {config['interpolation_type']!r}"
            )
        if config.get("timestep_type", "discrete") != "discrete":
            raise UnsupportedSchedule(f"{class_name} with timestep_type {config['timestep_type']!r}")
        self.class_name = class_name
        self.family = family
        self.train_steps = int(config.get("num_train_timesteps") or 1000)
        self.spacing = (
            "linspace" if family.grid == "n+1-linspace" else config.get("timestep_spacing") or family.spacing
        )
        self.offset = int(config.get("steps_offset") or 0)
        self.skip_prk = bool(config.get("skip_prk_steps", False))
        betas = _betas(config, family, self.train_steps)
        if config.get("rescale_betas_zero_snr"):
            betas = _rescale_zero_terminal_snr(betas)
        cumprod = np.cumprod(1.0 - betas)
        if config.get("rescale_betas_zero_snr") and family.level == "sigmas":
            cumprod[-1] = 2.0**-24  # what the sigma schedulers do so that the last sigma stays finite
        self.alphas_cumprod = cumprod
        self.lambda_min_clipped = float(config.get("lambda_min_clipped", -math.inf))

    def timesteps(self, steps: int) -> Any:
        """The scheduler's timesteps for ``steps`` inference steps, as set_timesteps makes them."""
        import numpy as np

        T, n, grid = self.train_steps, steps, self.family.grid
        if n > T:
            raise ValueError(f"{n} inference steps is more than the scheduler's {T} training steps")
        if grid == "pndm":
            return self._pndm(n)
        if grid in ("n+1", "n+1-linspace"):
            last = T - self._clipped_index()
            if self.spacing == "linspace":
                return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
            if self.spacing == "leading":
                ratio = last // (n + 1)
                return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + self.offset
            if self.spacing == "trailing":
                return np.arange(last, 0, -T / n).round().astype(np.int64) - 1
            raise UnsupportedSchedule(f"timestep_spacing {self.spacing!r}")
        integer = self.family.level == "alphas"
        if self.spacing == "linspace":
            values = np.linspace(0, T - 1, n)
            return values.round()[::-1].astype(np.int64) if integer else values[::-1].astype(np.float32)
        if self.spacing == "leading":
            values = (np.arange(0, n) * (T // n)).round()[::-1]
            return (
                values.astype(np.int64) + self.offset if integer else values.astype(np.float32) + self.offset
            )
        if self.spacing == "trailing":
            values = np.round(np.arange(T, 0, -T / n))
            return values.astype(np.int64) - 1 if integer else values.astype(np.float32) - 1
        raise UnsupportedSchedule(f"timestep_spacing {self.spacing!r}")

    def _pndm(self, n: int) -> Any:
        import numpy as np

        T = self.train_steps
        if self.spacing == "linspace":
            base = np.linspace(0, T - 1, n).round().astype(np.int64)
        elif self.spacing == "leading":
            base = (np.arange(0, n) * (T // n)).round() + self.offset
        elif self.spacing == "trailing":
            base = np.round(np.arange(T, 0, -T / n))[::-1].astype(np.int64) - 1
        else:
            raise UnsupportedSchedule(f"timestep_spacing {self.spacing!r}")
        if self.skip_prk:
            return np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].astype(np.int64)
        order = 4  # PNDM's Runge-Kutta warm-up steps
        prk = np.array(base[-order:]).repeat(2) + np.tile(np.array([0, T // n // 2]), order)
        prk = prk[:-1].repeat(2)[1:-1][::-1]
        return np.concatenate([prk, base[:-3][::-1]]).astype(np.int64)

    def _clipped_index(self) -> int:
        import numpy as np

        if self.lambda_min_clipped == -math.inf:
            return 0
        ab = self.alphas_cumprod
        lambdas = np.log(np.sqrt(ab)) - np.log(np.sqrt(1 - ab))
        return int(np.searchsorted(lambdas[::-1], self.lambda_min_clipped))

    def level_at(self, timestep: float) -> float:
        """alpha-bar at a (possibly fractional) timestep, as the scheduler's add_noise applies it."""
        import numpy as np

        ab = self.alphas_cumprod
        if self.family.level == "alphas":
            return float(ab[int(timestep)])
        sigmas = np.sqrt((1 - ab) / ab)
        sigma = float(np.interp(timestep, np.arange(len(sigmas)), sigmas))
        return 1.0 / (1.0 + sigma * sigma)

    def start(self, steps: int) -> Callable[[int], tuple[float, float]]:
        """``start(k)``: (timestep, alpha-bar) where img2img starts when it runs k of ``steps`` steps."""
        timesteps = self.timesteps(steps)

        def at(k: int) -> tuple[float, float]:
            # img2img reads timesteps[(N - k) * order]; an order-2 scheduler repeats every timestep after
            # the first, so there that is base timestep N - k too.
            t = float(timesteps[steps - k])
            return t, self.level_at(t)

        return at


def _betas(config: Mapping[str, Any], family: _Family, T: int) -> Any:
    import numpy as np

    trained = config.get("trained_betas")
    if trained is not None:
        betas = np.asarray(trained, dtype=np.float64)
        if len(betas) != T:
            raise UnsupportedSchedule(f"trained_betas has {len(betas)} entries, num_train_timesteps is {T}")
        return betas
    schedule = config.get("beta_schedule") or "linear"
    start = float(config.get("beta_start", family.beta_start))
    end = float(config.get("beta_end", family.beta_end))
    if schedule == "linear":
        return np.linspace(start, end, T, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2
    if schedule == "squaredcos_cap_v2":
        return np.array([min(1 - _glide_f((i + 1) / T) / _glide_f(i / T), 0.999) for i in range(T)])
    raise UnsupportedSchedule(f"beta_schedule {schedule!r}")


def _rescale_zero_terminal_snr(betas: Any) -> Any:
    import numpy as np

    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    bar = root**2
    alphas = np.concatenate([bar[:1], bar[1:] / bar[:-1]])
    return 1.0 - alphas
