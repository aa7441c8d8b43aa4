"""checkov on what the examples build: every CloudFormation template, Kubernetes manifest (the InferenceService's
predictor also as a Pod, since checkov runs no checks on custom resources) and Dockerfile. A failure fails the
test unless tests/checkov_allowlist.yaml lists its check for that kind of file, with the reason it cannot apply.

checkov's own pins (boto3, packaging, networkx) conflict with the project's, so it runs from a tool venv:
$DEPLOYC_CHECKOV, a `checkov` beside this Python, or `.venv-tools/checkov/` (created on first use).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_deployc
from example_support import trained
from ruamel.yaml import YAML

pytestmark = pytest.mark.slow
ALLOWLIST = Path(__file__).with_name("checkov_allowlist.yaml")
TOOL_VENV = ROOT / ".venv-tools" / "checkov"
FRAMEWORKS = ("cloudformation", "kubernetes", "dockerfile")
SCANNED_TARGETS = {"sagemaker", "kserve", "azureml"}  # the targets that write a template, manifests or a Dockerfile
# InferenceService predictor fields that are KServe's, not the PodSpec's (dropped when it is scanned as a Pod)
KSERVE_ONLY = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "canaryTrafficPercent", "timeout",
               "containerConcurrency", "annotations", "labels", "logger", "batcher", "deploymentStrategy",
               "autoScaling"}


def _yaml() -> YAML:
    return YAML(typ="safe", pure=True)


def find_checkov() -> Path:
    """The checkov executable; creates the tool venv when none is found, skips when that is impossible."""
    for candidate in (os.environ.get("DEPLOYC_CHECKOV"), Path(sys.executable).with_name("checkov"),
                      TOOL_VENV / "bin" / "checkov"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(TOOL_VENV)], check=True, capture_output=True,
                       text=True, timeout=300)
        subprocess.run([str(TOOL_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "checkov"], check=True,
                       capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        pytest.skip(f"checkov is not installed and {TOOL_VENV} could not be created (pip install checkov "
                    f"failed: {detail.strip().splitlines()[-1] if detail.strip() else exc})")
    return TOOL_VENV / "bin" / "checkov"


def scanned_examples() -> list[Path]:
    out = []
    for spec in sorted((ROOT / "examples").glob("*/deploy.yaml")):
        targets = set((_yaml().load(spec.read_text()) or {}).get("targets") or {})
        if targets & SCANNED_TARGETS:
            out.append(spec)
    return out


def predictor_pod(isvc: dict[str, Any]) -> dict[str, Any]:
    """The pod KServe creates from the InferenceService's predictor (runtime deployc: its own containers)."""
    pred = isvc["spec"]["predictor"]
    assert "containers" in pred, "runtime onnx: the container is KServe's runtime, not in the manifest"
    meta = isvc["metadata"]
    labels = {**pred.get("labels", {}), "serving.kserve.io/inferenceservice": meta["name"]}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{meta['name']}-predictor", "namespace": meta.get("namespace", "default"),
                         "labels": labels, "annotations": pred.get("annotations", {})},
            "spec": {k: v for k, v in pred.items() if k not in KSERVE_ONLY}}


def collect(out: Path, name: str, into: Path) -> list[str]:
    """Copy one build's scannable files into <into>/<framework>/; the names of what was collected."""
    got = []
    for p in sorted(out.rglob("cloudformation.yaml")):
        shutil.copyfile(p, into / "cloudformation" / f"{name}-{p.parent.name}.yaml")
        got.append(f"{name}/{p.relative_to(out)}")
    for p in sorted(out.rglob("Dockerfile")):  # checkov's dockerfile runner wants the file named Dockerfile
        folder = into / "dockerfile" / f"{name}-{p.parent.name}"
        folder.mkdir()
        shutil.copyfile(p, folder / "Dockerfile")
        got.append(f"{name}/{p.relative_to(out)}")
    for p in sorted((out / "kserve").glob("*.yaml")):
        shutil.copyfile(p, into / "kubernetes" / f"{name}-{p.name}")
        got.append(f"{name}/{p.relative_to(out)}")
        doc = _yaml().load(p.read_text())
        if doc.get("kind") == "InferenceService":
            (into / "kubernetes" / f"{name}-predictor-pod.json").write_text(json.dumps(predictor_pod(doc)))
            got.append(f"{name}/kserve/{p.name}#predictor-pod")
    return got


def run_checkov(checkov: Path, folder: Path, framework: str) -> dict[str, Any]:
    proc = subprocess.run([str(checkov), "-d", str(folder), "--framework", framework, "-o", "json", "--compact",
                           "--skip-download"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: some check failed
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    (one,) = [r for r in reports if r.get("check_type") == framework]
    assert one["summary"]["parsing_errors"] == 0, one["summary"]
    return one


@pytest.fixture(scope="module")
def scan(trained_digits: Path, session_cache: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    checkov = find_checkov()
    base = tmp_path_factory.mktemp("checkov")
    into = base / "scan"
    for fw in FRAMEWORKS:
        (into / fw).mkdir(parents=True)
    collected: list[str] = []
    for spec in scanned_examples():
        name = spec.parent.name
        project = base / name
        # the application examples train their own model; the target examples build the digits model
        own = (spec.parent / "train.py").is_file() and name != "digits"
        shutil.copytree(trained(tmp_path_factory, name) if own else trained_digits, project)
        text = spec.read_text()
        (project / "deploy.yaml").write_text(text.replace("\ntargets:", "\nmeasure: {min_seconds: 0.1}\ntargets:", 1))
        out = base / "out" / name
        proc = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=session_cache)
        assert proc.returncode == 0, proc.stderr
        collected += collect(out, name, into)
    return {fw: run_checkov(checkov, into / fw, fw) for fw in FRAMEWORKS}, collected


def allowlist() -> dict[tuple[str, str], str]:
    entries = _yaml().load(ALLOWLIST.read_text())
    out = {}
    for e in entries:
        assert set(e) == {"check", "kind", "reason"} and e["kind"] in FRAMEWORKS and len(e["reason"]) > 40, e
        out[(e["check"], e["kind"])] = e["reason"]
    return out


def test_every_example_output_was_scanned(scan: tuple[dict[str, dict[str, Any]], list[str]]) -> None:
    reports, collected = scan
    assert {"digits/sagemaker/cloudformation.yaml", "digits/sagemaker/Dockerfile", "azureml/azureml/Dockerfile",
            "kserve/kserve/inferenceservice.yaml", "kserve/kserve/inferenceservice.yaml#predictor-pod"} <= set(
        collected)
    for fw, report in reports.items():
        assert report["summary"]["passed"] > 0, fw  # checkov really ran checks on these files
    pods = {r["resource"] for r in reports["kubernetes"]["results"]["passed_checks"]}
    assert "Pod.ml.digits-predictor" in pods
    models = {r["resource"] for r in reports["cloudformation"]["results"]["passed_checks"]
              if r["check_id"] == "CKV_AWS_370"}
    assert models == {"AWS::SageMaker::Model.Model"}  # network isolation, on by default


def test_no_checkov_failure_outside_the_allowlist(scan: tuple[dict[str, dict[str, Any]], list[str]]) -> None:
    reports, _ = scan
    allowed = allowlist()
    failures = [(f["check_id"], fw, f["file_path"], f["resource"], f["check_name"])
                for fw, report in reports.items() for f in report["results"]["failed_checks"]]
    counts = Counter((check, fw) for check, fw, *_ in failures)
    unexpected = [f for f in failures if (f[0], f[1]) not in allowed]
    assert not unexpected, "checkov failures not in tests/checkov_allowlist.yaml:\n" + "\n".join(
        f"  {check} ({fw}) {path} {resource}: {name}" for check, fw, path, resource, name in unexpected)
    stale = sorted(set(allowed) - set(counts))
    assert not stale, f"allow-list entries that no longer fail (remove them): {stale}"
