# ruff: noqa: F811 - the k8s_op fixture is imported from the harness and named as a parameter
"""The README's cluster path, walked with kubectl: against the test API server (as strict as
kube-apiserver for synthrec's resources), the fake kubelet running the Jobs' pods with the real workers,
the real operator, and S3 on moto.

``kubectl apply --server-side -f crds/`` -> ``kubectl wait --for condition=established`` -> the offline
mechanics example (docs/cluster.md's smoke test) applied with its storage on the bucket ->
``kubectl get sds,rexp`` (printer columns) ->
``kubectl wait --for=condition=Ready`` -> ``kubectl describe`` (conditions, events) -> invalid edits
rejected with the field named -> ``kubectl delete`` cleaning up the children.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.k8s import wait_for
from tests.harness.operator import (
    DATASETS,
    FAST,
    NS,
    k8s_op,  # noqa: F401 - fixture
    running_reconciler,
)
from tests.k8s.kubelet import FakeKubelet
from tests.k8s.runners import SubprocessRunner

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed: this test walks the README's cluster path with the real kubectl "
    "(install kubectl 1.29+ to run it)",
)
SECRET = "s3-creds"


class Kubectl:
    """kubectl as a subprocess of the test's loop (the API server emulator serves in the same loop)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    async def __call__(self, *args: str, ok: bool = True, timeout: float = 120) -> tuple[int, str, str]:
        assert KUBECTL is not None
        proc = await asyncio.create_subprocess_exec(
            KUBECTL,
            "--namespace",
            NS,
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"kubectl {' '.join(args)} did not finish within {timeout} s") from None
        result = (int(proc.returncode or 0), out.decode(), err.decode())
        if ok:
            assert result[0] == 0, f"kubectl {' '.join(args)} failed:\n{result[2]}{result[1]}"
        return result


def quickstart_on(bucket_uri: str, endpoint: str, tiny: Any, path: Path) -> Path:
    """examples/tiny-mechanics.yaml with its output on the bucket (what docs/cluster.md's sed does) and the
    tiny models from the test session's build (pods would otherwise build them themselves)."""
    text = (ROOT / "examples" / "tiny-mechanics.yaml").read_text()
    text = text.replace("file:///tmp/synthrec-tiny-mechanics/", bucket_uri + "tiny-mechanics/")
    for name in ("sd", "clip", "t5"):
        text = text.replace(f"tiny://{name}", getattr(tiny, name).as_uri())
    text = text.replace("tiny://real", tiny.real.as_uri())
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        doc["spec"]["output"].update(endpoint=endpoint, credentialsSecret=SECRET)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def columns(table: str) -> list[list[str]]:
    return [line.split() for line in table.strip().splitlines() if line.strip()]


async def test_the_readme_cluster_path_with_kubectl(k8s_op, tiny_models, s3_bucket, tmp_path: Path) -> None:
    kubectl = Kubectl(tmp_path / "kubeconfig")

    # 1. CRDs, server-side, and wait until they are served
    _, out, _ = await kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    assert out.count("serverside-applied") == 2, out
    await kubectl(
        "wait",
        "--for",
        "condition=established",
        "--timeout=60s",
        "crd/syntheticdatasets.synthrec.io",
        "crd/recognitionexperiments.synthrec.io",
    )
    crd = k8s_op.get_object(
        "apiextensions.k8s.io/v1/customresourcedefinitions", "syntheticdatasets.synthrec.io"
    )
    assert {e["manager"] for e in crd["metadata"]["managedFields"]} == {"kubectl"}

    # 2. credentials for the bucket, the operator and a kubelet
    # (applied, not `kubectl create secret`: typed kubectl commands send protobuf, which the test server
    # does not decode; see tests/k8s/DIFFERENCES.md)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    }
    (tmp_path / "secret.yaml").write_text(yaml.safe_dump(secret))
    await kubectl("apply", "-f", str(tmp_path / "secret.yaml"))
    runner = SubprocessRunner(extra_env={"SYNTHREC_DEVICE": "cpu", "OMP_NUM_THREADS": "1"})
    config = FAST.with_overrides(status_interval=0.2, resync_interval=1.0)
    async with (
        FakeKubelet(k8s_op.url, runner, workdir=tmp_path / "kubelet", grace_period=5.0) as kubelet,
        running_reconciler(config),
    ):
        # 3. the offline smoke test, as a user applies it
        manifest = quickstart_on(s3_bucket.uri, s3_bucket.endpoint, tiny_models, tmp_path / "quickstart.yaml")
        _, out, _ = await kubectl("apply", "-f", str(manifest))
        assert "syntheticdataset.synthrec.io/tiny-shapes created" in out, out
        assert "recognitionexperiment.synthrec.io/tiny-shapes-ct created" in out, out

        _, out, _ = await kubectl("get", "sds,rexp")
        header_sds, *_ = columns(out.split("\n\n")[0])
        assert header_sds == ["NAME", "PHASE", "STAGE", "PROGRESS", "IMAGES", "KEPT", "AGE"], out
        assert ["NAME", "PHASE", "RUNS", "TOP-1", "AGE"] in columns(out), out

        # 4. wait for both to be Ready, as GitOps tools and scripts do
        await kubectl(
            "wait",
            "--for=condition=Ready",
            "--timeout=600s",
            "sds/tiny-shapes",
            "rexp/tiny-shapes-ct",
            timeout=660,
        )
        _, out, _ = await kubectl("get", "sds,rexp", "-o", "wide")
        rows = {row[0]: row for row in columns(out) if row[0] != "NAME"}
        sds = rows["syntheticdataset.synthrec.io/tiny-shapes"]
        assert sds[1] == "Succeeded" and sds[-1].startswith(s3_bucket.uri), sds  # Output (wide; no Queue)
        rexp = rows["recognitionexperiment.synthrec.io/tiny-shapes-ct"]
        assert rexp[1] == "Succeeded" and float(rexp[3]) >= 0.0, rexp

        _, out, _ = await kubectl("describe", "sds", "tiny-shapes")
        assert "Type:    Ready" in out or "Ready" in out.split("Conditions:")[1], out
        events = out.split("Events:")[1]
        assert "JobCreated" in events, out

        # 5. invalid edits are rejected by the API server, naming the field
        code, _, err = await kubectl(
            "patch",
            "sds",
            "tiny-shapes",
            "--type=merge",
            "-p",
            '{"spec":{"generator":{"steps":10}}}',
            ok=False,
        )
        assert code != 0 and 'spec.generator: Invalid value: "object": spec.generator is immutable' in err, (
            err
        )
        edited = yaml.safe_load_all(manifest.read_text())
        broken = next(d for d in edited if d["kind"] == "SyntheticDataset")
        broken["spec"]["sharding"]["parallelism"] = 5
        (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
        code, _, err = await kubectl("apply", "-f", str(tmp_path / "broken.yaml"), ok=False)
        assert code != 0 and "spec.sharding.parallelism" in err and "must not exceed" in err, err
        # a misspelt field: kubectl apply validates strictly and is refused; kubectl patch is only warned
        typo = next(d for d in yaml.safe_load_all(manifest.read_text()) if d["kind"] == "SyntheticDataset")
        typo["spec"]["sharding"]["shard"] = 3
        (tmp_path / "typo.yaml").write_text(yaml.safe_dump(typo))
        code, _, err = await kubectl("apply", "-f", str(tmp_path / "typo.yaml"), ok=False)
        assert code != 0 and 'strict decoding error: unknown field "spec.sharding.shard"' in err, err
        _, _, err = await kubectl(
            "patch", "sds", "tiny-shapes", "--type=merge", "-p", '{"spec":{"sharding":{"shard":3}}}'
        )
        assert 'Warning: unknown field "spec.sharding.shard"' in err, err
        assert "shard" not in k8s_op.get_object(DATASETS, "tiny-shapes", NS)["spec"]["sharding"]

        # 6. delete: the resources go, and with them every child
        labelled = "app.kubernetes.io/managed-by=synthrec"
        _, out, _ = await kubectl("get", "jobs,configmaps", "-l", labelled, "-o", "name")
        assert out.strip(), "the operator created children"
        await kubectl("delete", "-f", str(manifest), "--timeout=60s")
        await wait_for(
            lambda: (
                not k8s_op.list_objects("batch/v1/jobs", NS, labelled)
                and not k8s_op.list_objects("v1/configmaps", NS, labelled)
            ),
            10,
            message="children deleted with their owner",
        )
        _, out, _ = await kubectl("get", "sds,rexp,jobs,configmaps", "-l", labelled, "-o", "name")
        assert out.strip() == "", out
        kubelet.check()
