"""Small JSON files of a diffusers model folder (scheduler and component configs), read for ``synthrec plan``
without downloading any weights: a file:// folder, the built tiny models, the local Hugging Face cache, and
with ``hub=True`` the Hugging Face hub itself (that one file, a few KB, into the cache).

Every read answers either the parsed JSON or a sentence saying why it is not available here; the plan then
says the value is decided when generating.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthrec.storage.uris import URIError, parse_model_ref


@dataclass(frozen=True)
class Found:
    value: dict[str, Any] | None
    why_not: str = ""


def read_model_json(ref: str, relative: str, *, hub: bool = False) -> Found:
    """``relative`` (e.g. ``scheduler/scheduler_config.json``) inside the model ``ref``, if it is here."""
    try:
        parsed = parse_model_ref(ref)
    except URIError as exc:
        return Found(None, str(exc))
    if parsed.kind == "file":
        return _read(Path(parsed.location) / relative)
    if parsed.kind == "tiny":
        from synthrec.tiny.layout import default_tiny_dir, references_toy_world, resolve_uri

        path = Path(parse_model_ref(resolve_uri(ref)).location) / relative
        if not path.is_file():
            if references_toy_world(ref):
                from synthrec.toyworld.builder import default_root

                return Found(
                    None, f"the toy world is not built yet at {default_root()} (python -m synthrec.toyworld)"
                )
            return Found(
                None, f"the tiny models are not built yet at {default_tiny_dir()} (synthrec tiny-models)"
            )
        return _read(path)
    if parsed.kind == "hf":
        return _from_hf(parsed.location, parsed.revision, relative, hub=hub)
    return Found(None, f"{parsed.kind}:// models are read when generating")


def _read(path: Path) -> Found:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Found(None, f"{path} does not exist")
    except (OSError, ValueError) as exc:
        return Found(None, f"{path} is not readable JSON ({exc})")
    return Found(
        value if isinstance(value, dict) else None, "" if isinstance(value, dict) else f"{path}: no object"
    )


def _from_hf(repo: str, revision: str | None, relative: str, *, hub: bool) -> Found:
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        return Found(None, "huggingface_hub is not installed here")
    hit = try_to_load_from_cache(repo, relative, revision=revision)
    if isinstance(hit, str):
        return _read(Path(hit))
    if not hub:
        return Found(None, f"hf://{repo} is not in the local Hugging Face cache; --hub reads its configs")
    try:
        return _read(Path(hf_hub_download(repo, relative, revision=revision)))
    except Exception as exc:  # any hub failure (network, auth, missing file) only makes the plan say less
        return Found(None, f"hf://{repo}/{relative} could not be read from the hub ({type(exc).__name__})")


def native_size(ref: str, *, hub: bool = False) -> Found:
    """The pipeline's native square size, as ``synthrec.workers.diffusion.generation_size`` computes it from
    the loaded pipeline: the denoiser's sample size x the VAE scale factor 2^(VAE blocks - 1)."""
    vae = read_model_json(ref, "vae/config.json", hub=hub)
    if vae.value is None:
        return vae
    for denoiser in ("unet", "transformer"):
        config = read_model_json(ref, f"{denoiser}/config.json", hub=hub)
        if config.value is not None:
            sample = config.value.get("sample_size")
            blocks = vae.value.get("block_out_channels")
            if isinstance(sample, list):
                sample = min(sample)
            if isinstance(sample, int) and isinstance(blocks, list) and blocks:
                return Found({"size": sample * 2 ** (len(blocks) - 1)})
    return Found(None, "its denoiser config has no sample size")
