"""timm backbones: creation by name, initial weights from a reference, the backbone-only state that
transfer reads, and the multi-scale features the detector needs.

Weights references (``task.check_weights_ref``):

- ``scratch``: timm's random initialisation;
- ``timm`` / ``timm:<tag>``: timm's own pretrained weights of the backbone (``resnet50`` + ``tv_in1k`` =
  ``timm/resnet50.tv_in1k`` on the Hugging Face hub), loaded by timm;
- ``hf://org/name[@revision]``: a model repository (``model.safetensors`` or ``pytorch_model.bin``);
- ``s3://`` / ``file://``: a weights file (.safetensors, .pth, .pth.tar, .pt, .bin, .ckpt) or a folder
  holding one, including a synthrec pre-training output (``card.json`` + ``backbone.safetensors``).

A checkpoint's state dict is found under ``state_dict``/``model``/``module`` if it is wrapped, and the
prefixes ``module.``, ``encoder_q.`` (MoCo's query encoder, so the official MoCo checkpoints load),
``backbone.`` and ``model.`` are removed; MoCo's key encoder is dropped. The model's own timm
``checkpoint_filter_fn`` then adapts it (e.g. resamples a ViT's position embedding). Tensors that match
the backbone by name and shape are loaded (a classifier of another size is left at its init); when fewer
than half of the backbone's tensors match, the reference is refused: it is for another architecture.
"""

from __future__ import annotations

import difflib
import io
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

from synthrec.workers.runtime import ConfigError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin", ".ckpt")
FOLDER_CANDIDATES = (
    "backbone.safetensors",
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
)
_PREFIXES = ("module.", "encoder_q.", "backbone.", "model.")
MIN_MATCH = 0.5


def create_model(name: str, *, num_classes: int, img_size: int | None = None, drop_path: float = 0.0) -> Any:
    """A timm model with random weights; ConfigError naming close matches for an unknown name."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ConfigError(f"backbone {name!r} is not a timm model{hint}")
    kwargs: dict[str, Any] = {}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if img_size is not None and is_transformer(model):
        # position embeddings are sized for the training resolution
        model = timm.create_model(
            name, pretrained=False, num_classes=num_classes, img_size=img_size, **kwargs
        )
    return model


def is_transformer(model: Any) -> bool:
    """Patch-embedding models (ViT, DeiT, Swin, ...) get the DeiT recipe; the rest the ResNet recipe."""
    return hasattr(model, "patch_embed")


def classifier_prefixes(model: Any) -> tuple[str, ...]:
    """State-dict prefixes of the model's classifier(s) (timm's pretrained_cfg names them)."""
    names = model.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def backbone_state(model: Any) -> dict[str, Any]:
    """The model's state without its classifier, contiguous CPU tensors (what transfer loads)."""
    skip = classifier_prefixes(model)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(skip)}


# ------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class LoadedWeights:
    ref: str
    source: str  # what was read: a URI, a hub id
    revision: str | None
    matched: int
    total: int
    skipped: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "source": self.source,
            "revision": self.revision,
            "matched": self.matched,
            "total": self.total,
            "skipped": self.skipped[:20],
        }


def load_weights(
    model: Any, backbone: str, ref: str, *, field: str, storage_opts: dict[str, Any] | None = None
) -> LoadedWeights | None:
    """Initialise ``model`` (a ``backbone`` model) from ``ref``; None for scratch. ``field`` names the
    task field in errors."""
    if ref == "scratch":
        return None
    if ref == "timm" or ref.startswith("timm:"):
        return _load_timm(model, backbone, ref, field)
    state, source, revision = _read_state(ref, backbone, field, storage_opts or {})
    matched, total, skipped = apply_state(model, state, source=source, field=field)
    return LoadedWeights(ref, source, revision, matched, total, skipped)


def apply_state(model: Any, state: dict[str, Any], *, source: str, field: str) -> tuple[int, int, list[str]]:
    """Load the tensors of ``state`` that fit ``model`` by name and shape; returns (matched, total of the
    model's non-classifier tensors, skipped keys); ConfigError when less than half of it fits."""
    state = _normalise(state)
    state = _timm_filter(model, state)
    own = model.state_dict()
    head = classifier_prefixes(model)
    body = [k for k in own if not k.startswith(head)]
    fitting = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    skipped = sorted(set(state) - set(fitting))
    matched = sum(1 for k in body if k in fitting)
    if not body or matched < MIN_MATCH * len(body):
        examples = ", ".join(skipped[:3]) or "none"
        raise ConfigError(
            f"{field}: {source} fits only {matched} of the {len(body)} tensors of backbone "
            f"{model.pretrained_cfg.get('architecture', type(model).__name__)} (unmatched keys such as "
            f"{examples}); it holds weights of another architecture"
        )
    model.load_state_dict(fitting, strict=False)
    log.info("loaded %d/%d backbone tensors from %s (%d skipped)", matched, len(body), source, len(skipped))
    return matched, len(body), skipped


def _normalise(state: Any) -> dict[str, Any]:
    import torch

    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if "encoder_k." in key or key.startswith("queue"):  # MoCo's key encoder and queue
            continue
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def _timm_filter(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return filter_fn(state, model)
    except Exception as exc:  # a filter written for the official format may not apply to ours
        log.debug("timm checkpoint filter of %s not applied: %s", type(model).__name__, exc)
        return state


def _load_timm(model: Any, backbone: str, ref: str, field: str) -> LoadedWeights:
    import timm
    from timm.models import load_pretrained

    name = backbone if ref == "timm" else f"{backbone}.{ref.split(':', 1)[1]}"
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        cfg = None
    if cfg is None:
        tags = [m for m in timm.list_pretrained(f"{backbone}.*")][:8]
        raise ConfigError(
            f"{field} {ref!r}: timm has no pretrained weights {name!r}"
            + (f"; it has {', '.join(tags)}" if tags else "")
        )
    module = sys.modules.get(type(model).__module__)
    try:
        load_pretrained(
            model,
            pretrained_cfg=cfg.to_dict(),
            num_classes=model.num_classes,
            filter_fn=getattr(module, "checkpoint_filter_fn", None),
            strict=False,
        )
    except Exception as exc:
        raise ConfigError(
            f"{field} {ref!r}: cannot load timm's pretrained {name} ({type(exc).__name__}: {exc}); without "
            "access to the Hugging Face hub, put a copy on s3:// or file:// and reference that"
        ) from None
    body = [k for k in model.state_dict() if not k.startswith(classifier_prefixes(model))]
    return LoadedWeights(ref, cfg.hf_hub_id or cfg.url or name, None, len(body), len(body), [])


def _read_state(
    ref: str, backbone: str, field: str, storage_opts: dict[str, Any]
) -> tuple[Any, str, str | None]:
    """The raw state dict behind an hf://, s3:// or file:// reference, its source and revision."""
    from synthrec.storage import StorageError, open_storage

    if ref.startswith(("s3://", "file://")) and ref.rstrip("/").endswith(WEIGHT_SUFFIXES):
        folder, _, name = ref.rpartition("/")
        try:
            data = open_storage(folder + "/", **storage_opts).read_bytes(name)
        except StorageError as exc:
            raise ConfigError(f"{field}: {exc}") from None
        return _deserialise(data, name, ref, field), ref, None
    from synthrec.workers.models import resolve_model_folder

    path, revision = resolve_model_folder(ref, field, storage_opts)
    card = path / "card.json"
    if card.exists():
        card_backbone = json.loads(card.read_text()).get("backbone")
        if card_backbone != backbone:
            raise ConfigError(
                f"{field} {ref!r} is a synthrec pre-training of {card_backbone!r}, not of {backbone!r}"
            )
    for candidate in FOLDER_CANDIDATES:
        if (path / candidate).is_file():
            file = path / candidate
            break
    else:
        files = sorted(p.name for p in path.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
        if len(files) != 1:
            raise ConfigError(
                f"{field} {ref!r}: expected one weights file in the folder "
                f"({', '.join(FOLDER_CANDIDATES)} or a single *.pth/*.safetensors), found {files or 'none'}"
            )
        file = path / files[0]
    return _deserialise(file.read_bytes(), file.name, ref, field), f"{ref.rstrip('/')}/{file.name}", revision


def _deserialise(data: bytes, name: str, ref: str, field: str) -> Any:
    import torch

    try:
        if name.endswith(".safetensors"):
            from safetensors.torch import load

            return load(data)
        # weights_only: a checkpoint is data, never code
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"{field} {ref!r}: {name} is not a readable checkpoint ({type(exc).__name__}: {exc})"
        ) from None


# ----------------------------------------------------------------------------------- detection features


def detection_problem(model: Any) -> str | None:
    """Why the detector (an FPN over strides 4-32) cannot use this backbone, or None when it can."""
    info = getattr(model, "feature_info", None)
    name = model.pretrained_cfg.get("architecture", type(model).__name__)
    if not info:
        return f"backbone {name!r} does not expose feature maps (timm feature_info)"
    reductions = [f["reduction"] for f in info]
    if len(set(reductions)) < 3 or max(reductions) < 32:
        return (
            f"backbone {name!r} has a single-scale feature map (strides {sorted(set(reductions))}); "
            "torchvision's Faster R-CNN with FPN needs a hierarchical backbone with strides 4-32 such as "
            "resnet50 or convnext (a plain ViT/DeiT would need a ViTDet-style simple pyramid, not built in)"
        )
    return None


def pyramid_levels(model: Any) -> list[int]:
    """The feature_info indices at strides 4, 8, 16 and 32 (the last block of each), for the FPN."""
    picked: dict[int, int] = {}
    for i, f in enumerate(model.feature_info):
        if f["reduction"] in (4, 8, 16, 32):
            picked[f["reduction"]] = i
    return [picked[r] for r in sorted(picked)]
