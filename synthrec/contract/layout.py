"""The one place that knows where each artifact lives under a resource's output URI.

Keys are relative to the output root. A data object only counts once its ``.done.json`` marker exists
(written last, carrying the stage's spec hash); ``manifest.json`` is the dataset's own commit marker.

Dataset::

    spec.json                        resolved spec + stage hashes
    prompts.jsonl, prompts.done.json class index, class name, prompt, images wanted
    shards/gen-00012.tar             WebDataset: <key>.jpg + <key>.json
    shards/gen-00012.done.json       count, sha256, spec hash
    features/gen-00012.safetensors   CLIP image features + zero-shot probabilities of that shard
    features/gen-00012.done.json
    index/kept.jsonl                 kept samples (shard, key, class, score, soft target)
    index/shards/gen-00012.jsonl     every decodable sample of that shard: key, class, kept (tar order)
    models/mirror.json               the models pinned and mirrored once for the dataset's pods (its commit)
    models/<name>/...                a mirrored model folder (synthrec.workers.mirror)
    models/compile-cache/<key>.bin   torch.compile artifacts shared by the pods (synthrec.workers.diffusion)
    models/batch-size/<key>.json     the generation batch size measured by a first pod (workers/batching.py)
    manifest.json                    dataset card (written last by reduce)
    progress/<stage>-00012.json      small in-flight progress files (best effort, not a commit)
    report/index.html                dataset report
    .synthrec/written/<stage>-00012-<token>.json   the keys one worker process wrote (on a cluster)

Experiment::

    spec.json
    features/<cache key>/...         cached CLIP features, keyed by backbone + data digest
    runs/<run>/metrics.json, head.safetensors, curve.json, confusion.json, done.json
    runs/<run>/tensorboard/          TensorBoard event file of the run (synthrec.workers.tracking)
    runs/<run>/pretrain/card.json, backbone.safetensors, metrics.json, curve.json, done.json
    runs/<run>/pretrain/checkpoints/latest.json, step-00001234.pt, final.pt
    runs/<run>/transfer/<kind>/metrics.json, curve.json, done.json   (classification, linear-probe, detection)
    summary.json                     all runs, written by the reporter
    report/index.html
    .synthrec/written/...            as for datasets
"""

from __future__ import annotations

from dataclasses import dataclass

from synthrec.storage.uris import join

SHARD_DIGITS = 5
# Ledgers of written keys (synthrec.contract.written), for deleting exactly what a resource wrote.
WRITTEN_KEYS = ".synthrec/written/"


def shard_name(stage_prefix: str, shard: int) -> str:
    return f"{stage_prefix}-{shard:0{SHARD_DIGITS}d}"


def written_keys(stage: str, shard: int | None, token: str) -> str:
    """The ledger of one worker process (``token`` is unique to the process)."""
    return f"{WRITTEN_KEYS}{shard_name(stage, shard or 0)}-{token}.json"


@dataclass(frozen=True)
class DatasetLayout:
    root: str  # output URI of the dataset

    spec: str = "spec.json"
    prompts: str = "prompts.jsonl"
    prompts_marker: str = "prompts.done.json"
    index: str = "index/kept.jsonl"
    manifest: str = "manifest.json"
    report: str = "report/index.html"

    def url(self, key: str) -> str:
        return join(self.root, key)

    @staticmethod
    def shard(shard: int) -> str:
        return f"shards/{shard_name('gen', shard)}.tar"

    @staticmethod
    def shard_marker(shard: int) -> str:
        return f"shards/{shard_name('gen', shard)}.done.json"

    @staticmethod
    def features(shard: int) -> str:
        return f"features/{shard_name('gen', shard)}.safetensors"

    @staticmethod
    def shard_index(shard: int) -> str:
        """The kept flag of each sample of one shard, so a reader of the shard needs nothing else."""
        return f"index/shards/{shard_name('gen', shard)}.jsonl"

    @staticmethod
    def features_marker(shard: int) -> str:
        return f"features/{shard_name('gen', shard)}.done.json"

    @staticmethod
    def progress(stage: str, shard: int) -> str:
        return f"progress/{shard_name(stage, shard)}.json"

    models_mirror: str = "models/mirror.json"

    @staticmethod
    def model_folder(name: str) -> str:
        return f"models/{name}/"

    @staticmethod
    def compile_cache(key: str) -> str:
        return f"models/compile-cache/{key}.bin"

    @staticmethod
    def compile_kernels(key: str, host: str) -> str:
        """Native kernels built for one CPU model and instruction set (``host``)."""
        return f"models/compile-cache/{key}.kernels-{host}.tar.gz"

    @staticmethod
    def batch_choice(key: str) -> str:
        return f"models/batch-size/{key}.json"


@dataclass(frozen=True)
class ExperimentLayout:
    root: str  # output URI of the experiment

    spec: str = "spec.json"
    summary: str = "summary.json"
    report: str = "report/index.html"
    tensorboard: str = "runs/"  # the experiment's TensorBoard log dir: every run's tensorboard/ is below it

    def url(self, key: str) -> str:
        return join(self.root, key)

    @staticmethod
    def run(run: str, name: str) -> str:
        return f"runs/{run}/{name}"

    @staticmethod
    def run_metrics(run: str) -> str:
        return f"runs/{run}/metrics.json"

    @staticmethod
    def run_confusion(run: str) -> str:
        """Test-split confusion matrices of the trained and zero-shot heads (synthrec.contract.confusion)."""
        return f"runs/{run}/confusion.json"

    @staticmethod
    def run_tensorboard(run: str) -> str:
        """The run's TensorBoard log dir; ``runs/`` as a whole is the experiment's."""
        return f"runs/{run}/tensorboard/"

    @staticmethod
    def run_marker(run: str) -> str:
        return f"runs/{run}/done.json"

    @staticmethod
    def features(cache_key: str, name: str) -> str:
        return f"features/{cache_key}/{name}"

    @staticmethod
    def pretrain(run: str, name: str = "") -> str:
        """A pre-training run's folder (``name=''``) or a file in it."""
        return f"runs/{run}/pretrain/{name}"

    @staticmethod
    def transfer(run: str, kind: str = "", name: str = "") -> str:
        """A run's transfer folder, an evaluation's folder (``kind``) or a file in it."""
        return f"runs/{run}/transfer/" + (f"{kind}/" if kind else "") + name

    @staticmethod
    def progress(run: str) -> str:
        return f"progress/{run}.json"


@dataclass(frozen=True)
class StorageLayout:
    """A storage root shared by several resources (``synthrec run --storage URI``, ``synthrec status``).

    Each resource lives below it as ``datasets/<name>/`` or ``experiments/<name>/``; the combined report of
    everything in it is ``report/index.html``.
    """

    root: str

    datasets: str = "datasets/"
    experiments: str = "experiments/"
    report: str = "report/index.html"

    def url(self, key: str) -> str:
        return join(self.root, key)

    def dataset_root(self, name: str) -> str:
        return join(self.root, self.datasets, name) + "/"

    def experiment_root(self, name: str) -> str:
        return join(self.root, self.experiments, name) + "/"

    def resource_root(self, kind: str, name: str) -> str:
        return self.dataset_root(name) if kind == "SyntheticDataset" else self.experiment_root(name)
