"""The per-dataset and per-shot defaults of Figure 1's baselines, filled into a run once by the plan.

Tip-Adapter (gaopengcuhk/Tip-Adapter, ``configs/<dataset>.yaml`` at d0e2d6f): ``init_alpha`` and
``search_scale`` ([beta max, alpha max]) per dataset; ``init_beta`` is 1 and ``train_epoch`` 20 in every
config except EuroSAT's (100). A label space the official configs do not cover gets alpha 1 and the
grid [10, 10] (our choice, within the range the configs use).

CoOp (KaiyangZhou/CoOp, ``COOP.md`` and ``configs/trainers/CoOp/rn50*.yaml``): 50 epochs at 1 shot
(``rn50_ep50``), 100 at 2 and 4 (``rn50_ep100``), 200 at 8 and 16 (``rn50``); ImageNet uses 50 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

from synthrec.api import CoOp, LabelSpace, TipAdapter


@dataclass(frozen=True)
class TipConfig:
    alpha: float
    search_scale: tuple[float, float]  # beta max, alpha max
    epochs: int = 20


# preset name -> the official config of the same dataset
TIP_ADAPTER_CONFIGS: dict[str, TipConfig] = {
    "caltech101": TipConfig(3.0, (12.0, 5.0)),
    "dtd": TipConfig(2.0, (13.0, 13.0)),
    "eurosat": TipConfig(2.0, (12.0, 10.0), epochs=100),
    "fgvc_aircraft": TipConfig(5.0, (30.0, 30.0)),
    "food101": TipConfig(1.17, (10.0, 10.0)),
    "imagenet1k": TipConfig(1.17, (7.0, 3.0)),
    "flowers102": TipConfig(10.0, (50.0, 50.0)),
    "oxford_pets": TipConfig(1.17, (7.0, 3.0)),
    "stanford_cars": TipConfig(3.0, (20.0, 10.0)),
    "sun397": TipConfig(1.17, (12.0, 10.0)),
}
TIP_ADAPTER_FALLBACK = TipConfig(1.0, (10.0, 10.0))


def preset_of(labels: LabelSpace) -> str | None:
    """The canonical preset name of a label space (None for explicit classes)."""
    if labels.preset is None:
        return None
    from synthrec.presets import canonical_preset_name

    return canonical_preset_name(labels.preset)


def tip_adapter_defaults(tip: TipAdapter, labels: LabelSpace) -> TipAdapter:
    """``tip`` with alpha, the search grid and Tip-Adapter-F's epochs filled from the dataset's config."""
    config = TIP_ADAPTER_CONFIGS.get(preset_of(labels) or "", TIP_ADAPTER_FALLBACK)
    return tip.model_copy(
        update={
            "alpha": tip.alpha if tip.alpha is not None else config.alpha,
            "search_scale": tip.search_scale or list(config.search_scale),
            "epochs": tip.epochs if tip.epochs is not None else config.epochs,
        }
    )


def coop_epochs(shots: int, labels: LabelSpace) -> int:
    if preset_of(labels) == "imagenet1k" or shots <= 1:
        return 50
    return 100 if shots < 8 else 200


def coop_defaults(coop: CoOp, shots: int, labels: LabelSpace) -> CoOp:
    """``coop`` with its epochs filled from the official schedule for ``shots``."""
    if coop.epochs is not None:
        return coop
    return coop.model_copy(update={"epochs": coop_epochs(shots, labels)})
