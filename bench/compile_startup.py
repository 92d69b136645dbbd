"""Where a later generate pod's compile startup goes (CPU, tiny Stable Diffusion): Dynamo's tracing or
Inductor's kernel builds, and what ``torch.compiler.precompile`` (no tracing at all) would save.

Every variant is a fresh process with an Inductor cache directory of its own, calling the UNet (the
generate stage's call, classifier-free guidance batch) and the VAE decode once:

- ``first``: torch.compile with empty caches (the first pod); stores the torch.compile artifacts
  (``torch.compiler.save_cache_artifacts``, what ``CompileCache`` keeps in the output store).
- ``later``: torch.compile after loading those artifacts, empty local cache (a later pod today).
- ``later+kernels``: the same with the first pod's built C++ kernels (``*.so``) copied into its local cache
  directory (Inductor's graph and AOTAutograd caches left out; the vector-ISA probe's builds go along,
  which is only safe between identical CPUs).
- ``precompile-first``: ``torch.compiler.precompile`` capture, then load and call (a first pod under it).
- ``precompile-later``: ``torch.compiler.precompile.load`` of that artifact, empty local cache.
- ``precompile-later+kernels``: the same with the capture's built kernels copied in.

Reported per variant: seconds from the first compile step to the first outputs of both calls (Inductor's
vector-ISA probe, built once per process, reported apart), the process's seconds, and whether Dynamo
traced (frames it captured). Headline: each variant's seconds / ``first``'s. One run of each, in order; it
answers where a later pod's startup goes on a CPU, not what a GPU pays (there Triton kernels travel inside
the torch.compile artifacts and the first pod also autotunes).

    python bench/compile_startup.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = (
    "first",
    "later",
    "later+kernels",
    "precompile-first",
    "precompile-later",
    "precompile-later+kernels",
)
BATCH = 2  # images per batch: the UNet sees 2 x BATCH (guidance), the VAE BATCH


def child(variant: str, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    import pickle

    import torch
    from diffusers import StableDiffusionPipeline
    from torch._dynamo.utils import counters
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    from synthrec.tiny import ensure_tiny_models

    pipe = StableDiffusionPipeline.from_pretrained(
        str(ensure_tiny_models().sd), safety_checker=None, requires_safety_checker=False
    )
    unet, vae = pipe.unet, pipe.vae
    size = unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2 * BATCH, unet.config.in_channels, size, size, generator=g)
    emb = torch.randn(2 * BATCH, 77, unet.config.cross_attention_dim, generator=g)
    latents = torch.randn(BATCH, unet.config.in_channels, size, size, generator=g)
    t = torch.tensor(981)

    def unet_call(unet: Any, sample: Any, t: Any, emb: Any) -> Any:
        return unet(sample, t, encoder_hidden_states=emb, return_dict=False)[0]

    def decode_call(vae: Any, z: Any) -> Any:
        return vae.decode(z, return_dict=False)[0]

    isa_started = time.perf_counter()
    pick_vec_isa()
    isa = time.perf_counter() - isa_started
    compile_started = time.perf_counter()
    with torch.no_grad():
        if variant in ("first", "later", "later+kernels"):
            if variant != "first":
                torch.compiler.load_cache_artifacts((work / "compile-cache.bin").read_bytes())
            compiled_unet, compiled_decode = torch.compile(unet), torch.compile(vae.decode)
            out = compiled_unet(sample, t, encoder_hidden_states=emb, return_dict=False)[0]
            image = compiled_decode(latents, return_dict=False)[0]
            seconds = time.perf_counter() - compile_started
            if variant == "first":
                (work / "compile-cache.bin").write_bytes(torch.compiler.save_cache_artifacts()[0])
        else:
            if variant == "precompile-first":
                artifacts = (
                    torch.compiler.precompile(unet_call, unet, sample, t, emb),
                    torch.compiler.precompile(decode_call, vae, latents),
                )
            else:
                artifacts = pickle.loads((work / "precompiled.bin").read_bytes())
            run_unet = torch.compiler.precompile.load(*artifacts[0])
            run_decode = torch.compiler.precompile.load(*artifacts[1])
            out, image = run_unet(unet, sample, t, emb), run_decode(vae, latents)
            seconds = time.perf_counter() - compile_started
            if variant == "precompile-first":
                (work / "precompiled.bin").write_bytes(pickle.dumps(artifacts))
        eager = unet_call(unet, sample, t, emb), decode_call(vae, latents)
    diff = max(float((a - b).abs().max()) for a, b in zip((out, image), eager, strict=True))
    return {
        "seconds": round(seconds, 2),
        "isa_probe": round(isa, 2),
        "process": round(time.perf_counter() - started, 2),
        "dynamo_frames": int(counters["stats"].get("unique_graphs", 0)),
        "max_abs_diff_vs_eager": diff,
    }


def _copy_kernels(source: Path, target: Path) -> None:
    """The built kernels only: Inductor's graph cache, AOTAutograd's and the locks stay behind."""
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_file() and relative.parts[0] not in ("fxgraph", "aotautograd", "locks"):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.work)))
        return 0

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="synthrec-compile-startup-") as tmp:
        work = Path(tmp)
        for variant in VARIANTS:
            cache = work / f"inductor-{variant}"
            cache.mkdir()
            if variant.endswith("+kernels"):
                builder = "precompile-first" if variant.startswith("precompile") else "first"
                _copy_kernels(work / f"inductor-{builder}", cache)
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
            done = subprocess.run(
                [sys.executable, __file__, "--child", variant, "--work", str(work)],
                env=env,
                capture_output=True,
                text=True,
            )
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not line:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"variant {variant} failed (exit {done.returncode})")
            results[variant] = json.loads(line[0].removeprefix("RESULT "))
            print(f"{variant:26s} {json.dumps(results[variant])}", flush=True)
    first = results["first"]
    print("\nseconds to the first outputs (ISA probe apart) / first's; the process's / first's:")
    for variant, r in results.items():
        print(
            f"  {variant:26s} {r['seconds'] / first['seconds']:.3f}x   {r['process'] / first['process']:.3f}x"
            f"   dynamo frames traced: {r['dynamo_frames']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
