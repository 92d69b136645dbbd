"""``python -m synthrec.workers STAGE --task TASK.json [--shard N]``: run one worker stage.

Stages are imported only when chosen, so ``--help`` needs neither torch nor a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from synthrec.workers.runtime import run_stage

# stage -> module with a ``run(ctx) -> Summary`` function (synthrec.contract.summaries)
STAGES = {
    "prompts": "synthrec.workers.prompts",
    "generate": "synthrec.workers.generate",
    "filter": "synthrec.workers.filter",
    "reduce": "synthrec.workers.reduce",
    "train": "synthrec.workers.train",
    # distributed stages: the module's main() launches torchrun (or is a rank under it)
    "pretrain": "synthrec.workers.pretrain.stage",
    "transfer": "synthrec.workers.pretrain.stage",
    "cleanup": "synthrec.workers.cleanup",
}
DISTRIBUTED = ("pretrain", "transfer")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m synthrec.workers",
        description="Run one synthrec worker stage from a task file (as a Kubernetes Job or locally).",
        epilog="examples:\n"
        "  python -m synthrec.workers generate --task /etc/synthrec/task/task.json   # in a pod\n"
        "  python -m synthrec.workers generate --task task.json --shard 3           # shard 3 locally\n"
        "  python -m synthrec.workers pretrain --task task.json      # torchrun when it needs more than\n"
        "                                                            # one process (docs/pretraining.md)\n"
        "exit codes: 0 ok, 1 retryable, 3 configuration error (fails the Job),\n"
        "            42 data error (fails the shard)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--task", required=True, help="task JSON written by the operator or the local runner")
    parser.add_argument("--shard", type=int, default=None, help="shard id (default: JOB_COMPLETION_INDEX)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    module = importlib.import_module(STAGES[args.stage])
    if args.stage in DISTRIBUTED:
        return module.main(args.stage, args.task)
    return run_stage(args.stage, module.run, args.task, args.shard)


if __name__ == "__main__":
    raise SystemExit(main())
