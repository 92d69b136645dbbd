"""crds/ is generated from synthrec/api/: structural, valid for Kubernetes, and never edited by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from synthrec.api import cel, crdgen

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33.0"


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _rules(schema: dict[str, Any]) -> list[str]:
    out = [r["rule"] for r in schema.get("x-kubernetes-validations", [])]
    for sub in schema.get("properties", {}).values():
        out += _rules(sub)
    if isinstance(schema.get("items"), dict):
        out += _rules(schema["items"])
    return out


def test_committed_crds_match_the_models() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "synthrec.cli", "crds", "--check", "--out", str(ROOT / "crds")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, (
        "crds/ drifted from synthrec/api/; run `synthrec crds --out crds/`\n" + proc.stderr
    )


def test_drift_is_detected(tmp_path: Path) -> None:
    crdgen.write_crds(tmp_path)
    victim = next(tmp_path.glob("*.yaml"))
    victim.write_text(victim.read_text().replace("maxItems: 4096", "maxItems: 4097", 1))
    proc = subprocess.run(
        [sys.executable, "-m", "synthrec.cli", "crds", "--check", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and victim.name in proc.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_crd_is_valid_kubernetes_and_structural(path: Path) -> None:
    crd = yaml.safe_load(path.read_text())
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    assert crdgen.structural_problems(_schema(crd)) == []
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["scope"] == "Namespaced"
    assert "synthrec" in crd["spec"]["names"]["categories"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[0] == "Phase" and "Age" in columns


def test_two_crds_with_short_names_and_printer_columns() -> None:
    crds = {c["spec"]["names"]["kind"]: c for c in crdgen.all_crds().values()}
    assert set(crds) == {"SyntheticDataset", "RecognitionExperiment"}
    assert crds["SyntheticDataset"]["spec"]["names"]["shortNames"] == ["sds"]
    assert crds["RecognitionExperiment"]["spec"]["names"]["shortNames"] == ["rexp"]
    sds_cols = {
        c["name"]: c["jsonPath"]
        for c in crds["SyntheticDataset"]["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert sds_cols["Progress"] == ".status.progress.summary"
    assert sds_cols["Images"] == ".status.images.generated"
    rexp_cols = {
        c["name"]: c["jsonPath"]
        for c in crds["RecognitionExperiment"]["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert rexp_cols["Top-1"] == ".status.best.top1"


def test_crds_carry_cel_rules_for_ranges_cross_fields_and_immutability() -> None:
    rules = {
        k: _rules(_schema(c))
        for k, c in ((c["spec"]["names"]["kind"], c) for c in crdgen.all_crds().values())
    }
    sds = rules["SyntheticDataset"]
    assert "!has(self.parallelism) || self.parallelism <= self.shards" in sds
    assert any("oldSelf.generator" in r for r in sds)
    assert any("oldSelf.sharding.shards" in r for r in sds)
    assert any("threshold >= 0.0" in r for r in sds)
    rexp = rules["RecognitionExperiment"]
    assert any("has(self.data.realTrain)" in r for r in rexp)
    assert any("oldSelf.matrix" in r for r in rexp)


def test_every_cel_rule_compiles() -> None:
    for crd in crdgen.all_crds().values():
        for rule in _rules(_schema(crd)):
            cel._program(rule)  # raises on a syntax error


def test_defaults_are_the_papers() -> None:
    spec = _schema(crdgen.crd("SyntheticDataset"))["properties"]["spec"]["properties"]
    assert spec["generator"]["properties"]["guidanceScale"]["default"] == 3.0
    assert spec["generator"]["properties"]["imagesPerPrompt"]["default"] == 10
    assert spec["filter"]["properties"]["keepPerClass"]["default"] == 800
    assert "softTargetTemperature" not in spec["filter"]["properties"]
    assert spec["prompts"]["properties"]["sentencesPerClass"]["default"] == 200
    assert spec["prompts"]["default"] == {}  # so the API server fills the nested defaults
    assert "default" not in spec["filter"]["properties"]["threshold"]  # absent means the paper's 1/C
    ct = _schema(crdgen.crd("RecognitionExperiment"))["properties"]["spec"]["properties"]["method"][
        "properties"
    ]["classifierTuning"]["properties"]
    assert ct["epochs"]["default"] == 30
    assert ct["weightDecay"]["default"] == 0.1
    assert ct["batchSizeReal"]["default"] == 32 and ct["batchSizeSynthetic"]["default"] == 512
    assert ct["softTarget"]["properties"]["weight"]["default"] == 0.5


def test_status_has_no_unbounded_lists() -> None:
    def lists(schema: dict[str, Any], path: str) -> list[tuple[str, Any]]:
        out = []
        if schema.get("type") == "array":
            out.append((path, schema.get("maxItems")))
        for k, sub in schema.get("properties", {}).items():
            out += lists(sub, f"{path}.{k}")
        if isinstance(schema.get("items"), dict):
            out += lists(schema["items"], f"{path}[]")
        return out

    for crd in crdgen.all_crds().values():
        for path, max_items in lists(_schema(crd)["properties"]["status"], "status"):
            assert max_items is not None, f"{path} may grow without bound"
