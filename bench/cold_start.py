"""Cold start per pod: the first generate pod of a dataset vs. the later ones (CPU, tiny model).

Every pod is a fresh process with empty caches of its own (/cache, Inductor's, the hub's), as on a cluster
where each pod's /cache is an emptyDir. The model's origin (the "hub") is a prefix of a local S3 server
(moto, a subprocess) and the output another; the prompts pod mirrors the model into the output once
(spec.modelMirror, synthrec.workers.mirror) and, with ``--compile``, the first generate pod compiles
and stores its artifacts and the C++ kernels it built (models/compile-cache/), which later pods on the
same CPU model load instead of compiling and building.

    python bench/cold_start.py                 # 4 generate pods, torch.compile on, 1 thread each
    python bench/cold_start.py --pods 6 --no-compile

Reported per pod: seconds from process start to the first batch's images (the worker's seconds_startup
plus interpreter start), and its parts (model fetch, load). The headline is the median over the later
pods of later / first, with its spread. It answers what a later pod waits before its GPU works, next to
the first; not how long the hub takes (a local S3 server is faster than a rate-limited hub, so the real
first pod is slower and the real ratio smaller).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_cpu import _storage
from rounds import Ratio


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=4, help="generate pods (shards), run one after another")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each pod")
    args = p.parse_args(argv)
    if args.pods < 4:
        raise SystemExit("--pods: at least 4 (the first and 3 later ones)")

    from synthrec.api import SyntheticDatasetSpec
    from synthrec.contract import ENV_TERMINATION_LOG, parse_summary
    from synthrec.plan import dataset_task
    from synthrec.plan.tasks import ResourceRef, dump_task
    from synthrec.storage import open_storage, upload_tree
    from synthrec.tiny import ensure_tiny_models

    tiny = ensure_tiny_models()
    args.moto, args.storage = True, None
    with tempfile.TemporaryDirectory(prefix="synthrec-cold-start-") as tmp, _storage(args, Path(tmp)) as base:
        origin = open_storage(base + "hub/")
        upload_tree(origin, tiny.sd, "sd")
        spec = SyntheticDatasetSpec.model_validate(
            {
                "labels": {"preset": "tiny"},
                "generator": {
                    "model": origin.uri + "sd/",
                    "steps": 2,
                    "resolution": 64,
                    "imagesPerPrompt": 1,
                    "batchSize": 4,
                    "compile": args.compile,
                },
                "filter": {"clip": {"model": "tiny://clip", "pretrained": None}},
                "sharding": {"shards": args.pods},
                "output": {"uri": base + "ds/"},
                "modelMirror": {"target": "output"},
            }
        )

        def pod(stage: str, shard: int | None) -> dict[str, Any]:
            home = Path(tmp, f"pod-{stage}-{shard}")
            home.mkdir()
            task = home / "task.json"
            task.write_text(
                dump_task(dataset_task(spec, stage, ResourceRef(kind="SyntheticDataset", name="c")))
            )
            env = {
                **os.environ,
                ENV_TERMINATION_LOG: str(home / "termination-log"),
                "SYNTHREC_CACHE": str(home / "cache"),  # an emptyDir per pod
                "HF_HOME": str(home / "hf"),
                "TORCHINDUCTOR_CACHE_DIR": str(home / "inductor"),
                "TRITON_CACHE_DIR": str(home / "triton"),
                "OMP_NUM_THREADS": str(args.threads),
            }
            cmd = [sys.executable, "-m", "synthrec.workers", stage, "--task", str(task)]
            cmd += ["--shard", str(shard)] if shard is not None else []
            t = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if done.returncode:
                raise SystemExit(f"{stage} pod {shard} failed:\n{done.stderr[-3000:]}")
            summary = parse_summary((home / "termination-log").read_text())
            assert summary is not None
            return {"wall_s": wall, **summary.model_dump()}

        mirror = pod("prompts", None)
        pods = []
        for shard in range(args.pods):
            t = time.perf_counter()
            summary = pod("generate", shard)
            # interpreter and imports before the worker's clock starts, plus the worker's own startup
            imports = summary["wall_s"] - (summary["seconds_total"] or 0.0)
            pods.append(
                {
                    "shard": shard,
                    "startup_s": round(imports + summary["seconds_startup"], 2),
                    "worker_startup_s": summary["seconds_startup"],
                    "fetch_s": summary["seconds_fetch"],
                    "load_s": summary["seconds_load"],
                    "compile_cache": summary["compile_cache"],
                    "wall_s": round(time.perf_counter() - t, 2),
                }
            )
            print(f"pod {shard}: {pods[-1]}", file=sys.stderr)

    first = pods[0]["startup_s"]
    later = Ratio("later pods' startup / the first pod's", [p["startup_s"] / first for p in pods[1:]])
    result = {
        "bench": "cold_start",
        "compile": args.compile,
        "threads": args.threads,
        "models_mirrored": mirror["models_mirrored"],
        "seconds_mirror": mirror["seconds_mirror"],
        "pods": pods,
        "later_over_first": later.as_json(),
        "median_later_startup_s": statistics.median(p["startup_s"] for p in pods[1:]),
    }
    print(f"first pod starts in {first:.1f} s; {later.text()}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
