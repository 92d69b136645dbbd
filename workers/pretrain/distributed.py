"""torch.distributed via torchrun: the launch command (pure, for the local runner, the operator and the
worker's own launcher) and what each rank needs (process group, device, agreement between ranks).

A distributed stage is started like every other stage, ``python -m synthrec.workers pretrain --task F``.
That process is the *launcher*: it builds the torchrun command with ``launch_command``, runs it, forwards
SIGTERM to it (torchrun passes it on to the ranks and waits ``shutdown_timeout`` seconds before
SIGKILL), and turns the ranks' result files into the stage's exit code and termination summary: torchrun
itself exits 1 for any failure, which would lose the difference between a configuration error (fail the
Job) and a transient one (retry). Under torchrun (``LOCAL_RANK`` is set) the same command is a *rank*.

Locally: one node, ``--standalone`` rendezvous, one process per visible GPU (one on CPU). On a cluster:
one pod per node of an Indexed Job, a c10d rendezvous on index 0's stable hostname
``<job>-0.<service>:<port>`` (the headless Service gives it DNS; the operator passes it in
``SYNTHREC_RDZV_ENDPOINT``), ``--nproc-per-node`` = GPUs per pod and ``--max-restarts`` for elastic
recovery; ``--shutdown-timeout`` is the time the ranks get for their checkpoint after SIGTERM, within the
pod's grace period.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthrec.contract.worker import ENV_COMPLETION_INDEX, ENV_RENDEZVOUS

ENV_RESULTS = "SYNTHREC_RANK_RESULTS"  # folder where each rank writes rank-<n>.json
DEFAULT_SHUTDOWN_TIMEOUT = 120  # seconds torchrun waits after SIGTERM: time for the final checkpoint


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]  # set on top of the launcher's environment

    @property
    def nproc_per_node(self) -> int:
        return int(next(a for a in self.argv if a.startswith("--nproc-per-node=")).split("=", 1)[1])


def launch_command(
    *,
    stage: str,
    task_path: str,
    python: str,
    nnodes: int,
    nproc_per_node: int,
    max_restarts: int,
    endpoint: str | None = None,
    node_index: int = 0,
    run_id: str | None = None,
    threads_per_process: int | None = None,
    results_dir: str | None = None,
    shutdown_timeout: int = DEFAULT_SHUTDOWN_TIMEOUT,
) -> Launch:
    """The torchrun command line and environment for one node of a distributed stage.

    Without ``endpoint`` (one node): a standalone rendezvous on this machine. Otherwise every pod of the
    Indexed Job runs the same command with a c10d rendezvous on ``endpoint`` (``<job>-0.<service>:<port>``,
    index 0's stable hostname); index 0 hosts the store (``is_host``: no guessing from DNS) and ``run_id``
    is the same on every pod of the group."""
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes {nnodes} and nproc_per_node {nproc_per_node} must be at least 1")
    argv = [
        python,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc_per_node}",
        f"--max-restarts={max_restarts}",
        f"--shutdown-timeout={shutdown_timeout}",
    ]
    if endpoint is None:
        if nnodes > 1:
            raise ValueError(f"a launch on {nnodes} nodes needs the rendezvous endpoint of index 0")
        argv.append("--standalone")
    else:
        if not run_id:
            raise ValueError("a multi-node launch needs a run id shared by every node")
        argv += [
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={run_id}",
            # pods of a gang start within minutes of each other (image pulls): wait for all of them
            f"--rdzv-conf=join_timeout=900,is_host={int(node_index == 0)}",
        ]
    argv += ["-m", "synthrec.workers", stage, "--task", task_path]
    env: dict[str, str] = {}
    if threads_per_process is not None:
        env["OMP_NUM_THREADS"] = str(max(1, threads_per_process))
    if results_dir is not None:
        env[ENV_RESULTS] = results_dir
    return Launch(argv, env)


def launch_for_task(
    task: Any,
    task_path: str,
    *,
    python: str,
    gpus: int,
    cpus: int,
    results_dir: str | None,
    environ: Mapping[str, str] = os.environ,
) -> Launch:
    """``launch_command`` for a task on a machine with ``gpus`` visible GPUs and ``cpus`` cores; on
    several nodes the rendezvous endpoint and this node's index come from the pod's environment
    (``SYNTHREC_RDZV_ENDPOINT``, set by the operator, and ``JOB_COMPLETION_INDEX``)."""
    from synthrec.workers.runtime import ConfigError

    d = task.distributed
    nproc = d.nproc_per_node or (gpus if gpus > 0 else 1)
    endpoint = environ.get(ENV_RENDEZVOUS) if d.nnodes > 1 else None
    if d.nnodes > 1 and not endpoint:
        raise ConfigError(
            f"this {task.stage} stage runs on {d.nnodes} nodes and needs {ENV_RENDEZVOUS} (index 0's "
            "<job>-0.<service>:<port>, which the operator sets on the Job's pods); run it through the "
            "operator, or with distributed nodes 1"
        )
    return launch_command(
        stage=task.stage,
        task_path=task_path,
        python=python,
        nnodes=d.nnodes,
        nproc_per_node=nproc,
        max_restarts=d.max_restarts if d.max_restarts is not None else (3 if d.nnodes > 1 else 0),
        endpoint=endpoint,
        node_index=int(environ.get(ENV_COMPLETION_INDEX) or 0),
        run_id=f"{task.resource.name}-{task.run}-a{task.attempt}",
        threads_per_process=max(1, cpus // nproc),
        results_dir=results_dir,
        shutdown_timeout=d.shutdown_timeout,
    )


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


# ------------------------------------------------------------------------------------------ in a rank


@dataclass
class Rank:
    rank: int
    world: int
    local_rank: int
    device: Any  # torch.device
    backend: str | None  # None: a single process without a process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def agree(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over all ranks (e.g. 'save now', 'stop now'), so every rank acts on the same
        step."""
        import torch
        import torch.distributed as dist

        if self.backend is None:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def gather_objects(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        if self.backend is None:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.backend is not None:
            dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if self.backend is not None and dist.is_initialized():
            dist.destroy_process_group()


def init_rank(backend: str = "auto", device: str | None = None) -> Rank:
    """Join the process group torchrun prepared (NCCL on GPU, gloo on CPU), or run as a single process
    when not started by torchrun. ``device`` forces one (SYNTHREC_DEVICE)."""
    import datetime

    import torch
    import torch.distributed as dist

    if not under_torchrun():
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return Rank(0, 1, 0, dev, None)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device(device or "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    chosen = backend if backend != "auto" else ("nccl" if use_cuda else "gloo")
    dist.init_process_group(chosen, timeout=datetime.timedelta(minutes=30))
    return Rank(rank, world, local_rank, dev, chosen)


def write_rank_result(rank: int, result: dict[str, Any]) -> None:
    """Tell the launcher how this rank ended (no-op when not started by our launcher)."""
    folder = os.environ.get(ENV_RESULTS)
    if not folder:
        return
    path = Path(folder) / f"rank-{rank:05d}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, path)


def read_rank_results(folder: str | Path) -> dict[int, dict[str, Any]]:
    out = {}
    for path in sorted(Path(folder).glob("rank-*.json")):
        try:
            out[int(path.stem.split("-")[1])] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


# ----------------------------------------------------------------------------------- loader workers

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def ignore_stop_signals(_: int = 0) -> None:
    """``worker_init_fn`` of every DataLoader of a rank. Stopping is the rank's decision: torchrun signals
    the rank's whole process group, and a loader worker killed by it (torch gives workers a C handler
    that dies on SIGTERM) would fail the rank before it saves its checkpoint. The DataLoader ends its
    workers with a message, and a worker whose rank died exits on its own."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def batches(loader: Iterable[Any]) -> Iterator[Any]:
    """``iter(loader)`` with the stop signals blocked while the workers start, so that a signal arriving
    before a worker has run ``ignore_stop_signals`` waits in it (and is then ignored) instead of killing it;
    the rank gets its own copy as soon as the workers are up."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
