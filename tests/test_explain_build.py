"""`explain:` in the build: the original model and every artifact explained on the same rows, the attribution
gate, what serving.json and the bundle carry, and what `validate` refuses (docs/explain.md)."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_deployc

SPEC = """\
apiVersion: deployc/v1
name: digits
version: 1.0.0
model: {path: model.keras, labels: labels.txt}
data:
  eval: {path: data/eval.npz, x: x, y: y}
optimize:
  - quantize: {mode: int8-dynamic}
explain:
  method: integrated-gradients
  sample: 32
  examples: [0, 5]
  images: {pixels: [8, 8]}
  serve: {max_rows: 4}
gates:
  max_accuracy_drop: 0.02
  min_attribution_agreement: LIMIT
measure: {min_seconds: 0.05}
targets:
  local: {batching: {enabled: false}}
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(trained_digits: Path, session_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    d = tmp_path_factory.mktemp("explained") / "digits"
    shutil.copytree(trained_digits, d)
    (d / "deploy.yaml").write_text(SPEC.replace("LIMIT", "0.5"))
    r = run_deployc("build", "deploy.yaml", "--out", str(d / "out"), "-q", cwd=d, cache_dir=session_cache)
    assert r.returncode == 0, r.stderr
    return d


def test_report_explains_reference_and_every_artifact(built: Path) -> None:
    report = json.loads((built / "out" / "report.json").read_text())
    ex = report["explanation"]
    assert ex["method"] == "integrated-gradients" and ex["sample"] == 32 and ex["images"] == {"pixels": [8, 8]}
    assert ex["features"] == [f"pixels[{i}]" for i in range(64)]
    assert ex["classes"] == [str(i) for i in range(10)]
    assert set(ex["models"]) == {"reference", "onnx-fp32", "quantize-int8-dynamic"}
    for summary in ex["models"].values():
        assert len(summary["global"]) == 64 and len(summary["per_class"]) == 10
        assert all(len(row) == 64 for row in summary["per_class"])
        assert [e["row"] for e in summary["examples"]] == [0, 5]
        assert len(summary["top"]) == 10 and summary["top"][0]["importance"] == max(summary["global"])
    # the corner pixels of the digits are always blank: no attribution there with a zero baseline
    assert ex["models"]["reference"]["global"][0] == 0
    figures = {a["artifact"]: a["evaluation"] for a in report["artifacts"]}
    fp32 = figures["onnx-fp32"]
    # the fp32 ONNX model is the same function: central differences on it agree with TensorFlow's gradients
    assert fp32["attribution_rank_correlation"] > 0.98 and fp32["attribution_example_correlation"] > 0.99
    assert fp32["attribution_agreement"] == min(fp32["attribution_rank_correlation"],
                                                fp32["attribution_top_k_overlap"],
                                                fp32["attribution_example_correlation"])
    q = figures["quantize-int8-dynamic"]
    assert 0 <= q["attribution_agreement"] <= 1
    gate = next(g for g in report["gates"] if g["gate"] == "min_attribution_agreement")
    assert gate["value"] == q["attribution_agreement"] and gate["passed"]


def test_report_files_and_markdown(built: Path) -> None:
    out = built / "out"
    md = (out / "report.md").read_text()
    assert "## Explanation" in md and "attribution agr." in md
    assert (out / "report.html").is_file()
    charts = sorted(p.name for p in (out / "charts").glob("*.svg"))
    assert "attributions.svg" in charts
    for name in charts:
        assert f"(charts/{name})" in md


def test_bundle_serves_explanations_and_input_monitoring(built: Path) -> None:
    bundle = built / "out" / "local"
    cfg = json.loads((bundle / "serving.json").read_text())
    assert cfg["explain"] == {"method": "integrated-gradients", "steps": 32, "samples": 256, "max_rows": 4,
                              "top_k": 5, "baseline": "explain.npz",
                              "features": [f"pixels[{i}]" for i in range(64)]}
    with np.load(io.BytesIO((bundle / "explain.npz").read_bytes()), allow_pickle=False) as z:
        assert z.files == ["pixels"]
        assert z["pixels"].shape == (1, 64) and not z["pixels"].any()
    mon = cfg["input_monitor"]
    x = np.load(built / "data" / "eval.npz")["x"]
    assert mon["inputs"] == {"pixels": {"min": float(x.min()), "max": float(x.max())}}
    report = json.loads((built / "out" / "report.json").read_text())
    top = [t["feature"] for t in report["explanation"]["models"]["reference"]["top"][:5]]
    assert [f["name"] for f in mon["features"]] == top  # the explanation's most important features
    for f in mon["features"]:
        col = x[:, f["index"]]
        assert f["input"] == "pixels" and f["name"] == f"pixels[{f['index']}]"
        counts = np.bincount(np.searchsorted(f["edges"], col, side="right"), minlength=len(f["edges"]) + 1)
        assert np.allclose(f["reference"], counts / len(col))


def test_rebuild_from_an_empty_cache_is_byte_identical(built: Path, tmp_path: Path) -> None:
    r = run_deployc("build", "deploy.yaml", "--out", str(tmp_path / "again"), "-q", cwd=built,
                    cache_dir=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    for rel in ("local/serving.json", "local/explain.npz"):
        assert (tmp_path / "again" / rel).read_bytes() == (built / "out" / rel).read_bytes(), rel
    first = json.loads((built / "out" / "report.json").read_text())["explanation"]
    again = json.loads((tmp_path / "again" / "report.json").read_text())["explanation"]
    assert first == again  # explanations are deterministic (latency figures are not, so report.html differs)


def test_attribution_gate_fails_the_build(built: Path, session_cache: Path, tmp_path: Path) -> None:
    (built / "strict.yaml").write_text(SPEC.replace("LIMIT", "1.0"))
    r = run_deployc("build", "strict.yaml", "--out", str(tmp_path / "strict"), cwd=built, cache_dir=session_cache)
    assert r.returncode == 3, r.stderr
    assert re.search(r"min_attribution_agreement", r.stderr)
    assert not (tmp_path / "strict").exists()


def test_validate_names_explain_problems(trained_digits: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "digits"
    shutil.copytree(trained_digits, d)
    cases = {
        "images: {pixels: [7, 8]}": "explain.images.pixels: 7x8 = 56 pixels, and one row of pixels holds 64",
        "images: {image: [8, 8]}": "explain.images.image: the model has no input named 'image'",
        "examples: [40]": "explain.examples[0]: row 40 is outside the sample of 32 rows",
    }
    for i, (line, message) in enumerate(cases.items()):
        text = SPEC.replace("LIMIT", "0.5")
        key = line.split(":")[0]
        text = re.sub(rf"  {key}: .*\n", f"  {line}\n", text)
        (d / f"s{i}.yaml").write_text(text)
        r = run_deployc("validate", f"s{i}.yaml", cwd=d)
        assert r.returncode == 1 and message in r.stderr, (line, r.stderr)
        assert "Traceback" not in r.stderr
    no_explain = re.sub(r"explain:\n(  .*\n)+", "", SPEC.replace("LIMIT", "0.5"))
    (d / "g.yaml").write_text(no_explain)
    r = run_deployc("validate", "g.yaml", cwd=d)
    assert r.returncode == 1 and "gates.min_attribution_agreement: compares explanations: set `explain:`" in r.stderr
