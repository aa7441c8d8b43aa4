"""report.html and the SVG charts, from synthetic report.json documents: which charts exist, what they draw (read
back from the SVG: points, boxes, cells, heatmap pixels, bars), that every name from the user is escaped, that the
page fetches nothing, that the bytes are the same on every build and whatever the user's matplotlib settings, and
(with Chromium) that a real browser renders it without a request or an error."""
from __future__ import annotations

import base64
import copy
import hashlib
import html
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployc.compiler import charts
from deployc.compiler.report_html import chart_links, visual_report
from tests.browser import Chromium, chromium_binary

ROOT = Path(__file__).resolve().parents[1]
SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert('x')</script> & \"q\" $a$ {b}"
NAMESPACES = {'xmlns="http://www.w3.org/2000/svg"', 'xmlns:xlink="http://www.w3.org/1999/xlink"'}
PCT = ("1", "5", "10", "25", "50", "75", "90", "95", "99")


def _summary(rng: np.random.Generator, features: list[str], classes: int, noise: float) -> dict[str, Any]:
    """An explain.summary() document with a shared pattern per class plus per-model noise."""
    base = np.random.default_rng(7).normal(size=(classes, len(features)))
    per_class = base + noise * rng.normal(size=base.shape)
    glob = np.abs(per_class).mean(axis=0)
    order = np.argsort(-glob, kind="stable")[:10]
    return {"global": [round(float(v), 6) for v in glob], "per_class": per_class.round(6).tolist(),
            "examples": [{"row": 0, "target": 0, "attributions": per_class[0].round(6).tolist()}],
            "top": [{"feature": features[i], "importance": round(float(glob[i]), 6)} for i in order]}


def _evaluation(size: int, p50: float, metric: str, value: float, classes: int, **extra: Any) -> dict[str, Any]:
    classes = max(classes, 2)  # binary: one output column, two classes in the confusion matrix
    spread = (0.7, 0.8, 0.85, 0.93, 1.0, 1.1, 1.3, 1.6, 2.4)
    confusion = [[30 if i == j else (1 if j == (i + 1) % classes else 0) for j in range(classes)]
                 for i in range(classes)]
    return {metric: value, "agreement": 0.99, "size_bytes": size, "gzip_bytes": size // 2, "latency_p50_ms": p50,
            "latency_p99_ms": round(p50 * 2.4, 4), "throughput_rows_s": 1000 / p50, "rows": 360,
            "latency_percentiles_ms": {k: round(p50 * f, 4) for k, f in zip(PCT, spread, strict=True)},
            "confusion": confusion, **extra}


def _report(name: str, artifacts: list[tuple[str, int, float, bool]], features: list[str], classes: int,
            metric: str, images: dict[str, list[int]], class_names: list[str] | None) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    models = {"reference": _summary(rng, features, classes, 0.0)}
    arts = []
    for i, (art, size, p50, shipped) in enumerate(artifacts):
        models[art] = _summary(rng, features, classes, 0.05 * (i + 1))
        arts.append({"artifact": art, "step": f"evaluate:{art}", "shipped": shipped,
                     "evaluation": _evaluation(size, p50, metric, 0.97 - 0.01 * i, classes,
                                               attribution_agreement=0.95 - 0.05 * i)})
    gates = [{"artifact": a["artifact"], "gate": "min_agreement", "limit": 0.98, "value": 0.99, "passed": True}
             for a in arts if a["shipped"]]
    gates.append({"artifact": arts[-1]["artifact"], "gate": f"max_size_mb {HOSTILE}", "limit": 0.1, "value": 0.3,
                  "passed": False})
    return {"name": name, "version": "1.0.0", "spec_sha256": "ab" * 32, "reference": {metric: 0.97, "rows": 360},
            "artifacts": arts, "passes": [], "gates": gates,
            "steps": [{"id": "source", "description": f"read {HOSTILE}", "key": "c" * 64},
                      {"id": "convert", "description": "convert to ONNX (fp32)", "key": "d" * 64}],
            "targets": ["local"], "batching": {"enabled": False, "reason": "off (auto): not batch-invariant"},
            "target_batching": {},
            "explanation": {"method": "integrated-gradients", "sample": 64, "top_k": 5, "baseline": "zeros",
                            "features": features, "images": images, "classes": class_names,
                            "inputs": [], "models": dict(sorted(models.items()))}}  # report.json sorts keys


def digits_report() -> dict[str, Any]:
    """10 classes, an 8x8 image input, a hostile artifact name and class name."""
    classes = [f"digit-{i}" for i in range(9)] + ["<b>9</b>"]
    return _report(HOSTILE, [("onnx-fp32", 1_205_845, 0.044, False), ("quantize-int8-dynamic", 309_224, 0.041, True),
                             (HOSTILE, 331_464, 0.013, True)],
                   [f"pixels[{i}]" for i in range(64)], 10, "accuracy", {"pixels": [8, 8]}, classes)


def tabular_report() -> dict[str, Any]:
    """Binary classification (one output column, AUC) on 20 dense features, no images."""
    return _report("churn", [("onnx-fp32", 40_000, 0.02, False), ("quantize-int8-dynamic", 12_000, 0.015, True)],
                   [f"dense[{i}]" for i in range(20)], 1, "auc", {}, None)


def auto_report() -> dict[str, Any]:
    """A `quantize: auto` pass: one kept, one dropped on the gates, one passing but larger, one never built."""
    r = tabular_report()
    r["passes"] = [{"step": "optimize[0].quantize", "details": {"mode": "auto", "chosen": "int8-dynamic",
                    "candidates": [
                        {"mode": "int8-dynamic", "kept": True, "why": "smallest passing candidate",
                         "figures": {"size_bytes": 12_100, "latency_p50_ms": 0.016, "auc": 0.95, "agreement": 0.99},
                         "gate_failures": []},
                        {"mode": "int8-static", "kept": False, "why": "gates failed: min_agreement <script>",
                         "figures": {"size_bytes": 11_000, "latency_p50_ms": 0.012, "auc": 0.80, "agreement": 0.9},
                         "gate_failures": ["min_agreement"]},
                        {"mode": "float16", "kept": False, "why": "passes, but larger than int8-dynamic",
                         "figures": {"size_bytes": 21_000, "latency_p50_ms": 0.018, "auc": 0.96, "agreement": 1.0},
                         "gate_failures": []},
                        {"mode": "int4", "kept": False, "why": "not built: no kernel", "gate_failures": []}]}}]
    return r


def minimal_report() -> dict[str, Any]:
    """A build without artifacts to measure (a target that only copies the model) and no explain:."""
    return {"name": "bare", "version": "0.1", "spec_sha256": "0" * 64, "reference": None, "artifacts": [],
            "passes": [], "gates": [], "steps": [], "targets": [], "batching": None, "target_batching": {}}


def _svg(files: dict[str, bytes], name: str) -> ET.Element:
    return ET.fromstring(files[f"charts/{name}"])


def _ids(root: ET.Element, prefix: str) -> list[ET.Element]:
    return [e for e in root.iter() if (e.get("id") or "").startswith(prefix)]


def _texts(root: ET.Element) -> list[str]:
    return ["".join(e.itertext()) for e in root.iter(f"{SVG}text")]


def _png(element: ET.Element) -> np.ndarray:
    import matplotlib.image

    href = element.get("{http://www.w3.org/1999/xlink}href") or ""
    assert href.startswith("data:image/png;base64,")
    return np.asarray(matplotlib.image.imread(io.BytesIO(base64.b64decode(href.split(",", 1)[1])), format="png"))


@pytest.fixture(scope="module")
def digits() -> tuple[dict[str, Any], dict[str, bytes]]:
    r = digits_report()
    return r, visual_report(r, f"examples/{HOSTILE}/deploy.yaml")


@pytest.mark.parametrize(("make", "expected"), [
    (digits_report, {"pareto", "latency", "confusion", "attributions"}),
    (tabular_report, {"pareto", "latency", "confusion", "importance"}),
    (auto_report, {"pareto", "latency", "confusion", "importance"}),
    (minimal_report, set()),
])
def test_charts_drawn_when_the_data_exists(make: Any, expected: set[str]) -> None:
    files = visual_report(make(), "deploy.yaml")
    assert set(files) == {"report.html"} | {f"charts/{n}.svg" for n in expected}
    for rel, data in files.items():
        if rel.endswith(".svg"):
            ET.fromstring(data)  # well-formed XML
            assert b"<!DOCTYPE" not in data
    links = chart_links(files)
    assert [line for line in links if line.startswith("![")] == [
        f"![{charts.TITLES[n]}](charts/{n})" for n in charts.TITLES if f"charts/{n}" in files]
    assert all(f"**{charts.TITLES[n]}**" in links for n in charts.TITLES if f"charts/{n}" in files)


def test_pareto_points_and_front(digits: tuple[dict[str, Any], dict[str, bytes]]) -> None:
    report, files = digits
    root = _svg(files, "pareto.svg")
    assert len(_ids(root, "point-")) == 3  # one per artifact
    assert len(_ids(root, "front")) == 1
    texts = _texts(root)
    assert f"{HOSTILE} — shipped" in texts  # drawn literally: no TeX from `$a$`, XML-escaped by the writer
    assert "quantize-int8-dynamic — shipped" in texts and "onnx-fp32" in texts
    # the front: the smallest (int8) and the fastest (the hostile one); onnx-fp32 is beaten on both
    pts = charts._points(report)
    assert [p["name"] for p in charts.front(pts)] == ["quantize-int8-dynamic", HOSTILE]


def test_pareto_with_auto_candidates() -> None:
    files = visual_report(auto_report(), "deploy.yaml")
    root = _svg(files, "pareto.svg")
    points = _ids(root, "point-")
    assert len(points) == 2 + 3  # two artifacts, three candidates with figures (int4 was never built)
    hollow = [p for p in points if any("fill-opacity: 0;" in (e.get("style") or "") for e in p.iter(f"{SVG}use"))]
    assert len(hollow) == 2  # the dropped candidates: int8-static and float16
    assert "int8-static (candidate) (dropped)" in _texts(root)
    page = files["report.html"].decode()
    assert "gates failed: min_agreement &lt;script&gt;" in page and "Candidates of" in page


def test_latency_boxes(digits: tuple[dict[str, Any], dict[str, bytes]]) -> None:
    report, files = digits
    root = _svg(files, "latency.svg")
    assert len(_ids(root, "box-")) == 3 and len(_ids(root, "whisker-")) == 3
    assert [t for t in _texts(root) if t in {a["artifact"] for a in report["artifacts"]}] == [
        HOSTILE, "quantize-int8-dynamic", "onnx-fp32"]  # the y axis, bottom up: the report's order top down
    assert "0.02" in _texts(root)  # p5..p99 span 0.009..0.106 ms, about 10x: a linear axis
    slow = copy.deepcopy(report)
    q = slow["artifacts"][0]["evaluation"]["latency_percentiles_ms"]
    q.update({k: v * 100 for k, v in q.items()})
    texts = _texts(_svg(visual_report(slow, "deploy.yaml"), "latency.svg"))
    assert {"0.01", "0.1", "1", "10"} <= set(texts)  # 1000x: a log axis, labelled with plain numbers


def test_confusion_cells(digits: tuple[dict[str, Any], dict[str, bytes]]) -> None:
    report, files = digits
    root = _svg(files, "confusion.svg")
    cells = {e.get("id"): "".join(e.itertext()).strip() for e in _ids(root, "cell-")}
    shipped = next(a for a in report["artifacts"] if a["shipped"])["evaluation"]["confusion"]
    assert len(cells) == 100
    assert all(cells[f"cell-{i}-{j}"] == str(shipped[i][j]) for i in range(10) for j in range(10))
    assert "<b>9</b>" in _texts(root) and "digit-0" in _texts(root)


def test_attribution_maps(digits: tuple[dict[str, Any], dict[str, bytes]]) -> None:
    report, files = digits
    root = _svg(files, "attributions.svg")
    maps = _ids(root, "map-")
    assert [m.tag for m in maps] == [f"{SVG}image"] * 4  # reference and three artifacts, one image each
    texts = _texts(root)
    order = ["reference", "onnx-fp32", "quantize-int8-dynamic", HOSTILE[:31] + "…"]
    assert [t for t in texts if t in order] == order  # reference first, then the artifacts in report order
    assert sum(t.startswith("class ") for t in texts) == 10
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r"]
    ex = report["explanation"]
    pixels = [_png(m) for m in maps]
    for px in pixels:
        assert px.shape[:2] == (10 * 9 - 1, 8)  # ten 8x8 maps with a blank line between
        assert np.all(px[8::9, :, :3] == 1.0)  # the blank lines are white
    for c in range(10):
        values = [np.asarray(ex["models"][m]["per_class"][c]).reshape(8, 8)
                  for m in ("reference", "onnx-fp32", "quantize-int8-dynamic", HOSTILE)]
        lim = max(float(np.abs(v).max()) for v in values)  # one scale per row, symmetric around 0
        for v, px in zip(values, pixels, strict=True):
            want = np.asarray(cmap(np.clip(v / lim * 0.5 + 0.5, 0, 1)))[..., :3]
            assert np.abs(px[c * 9:c * 9 + 8, :, :3] - want).max() < 0.02


def test_importance_bars() -> None:
    r = tabular_report()
    files = visual_report(r, "deploy.yaml")
    root = _svg(files, "importance.svg")
    assert len(_ids(root, "bar-")) == 15 * 3  # the top 15 features, reference and two artifacts
    ref = r["explanation"]["models"]["reference"]["global"]
    top = sorted(range(20), key=lambda i: (-ref[i], i))[:15]
    labels = [t for t in _texts(root) if t.startswith("dense[")]
    assert labels == [f"dense[{i}]" for i in reversed(top)]  # the most important at the top
    assert len(_ids(_svg(files, "confusion.svg"), "cell-")) == 4  # binary: 2x2


def test_page_escapes_and_fetches_nothing(digits: tuple[dict[str, Any], dict[str, bytes]]) -> None:
    _, files = digits
    page = files["report.html"].decode()
    assert "<script" not in page.lower() and HOSTILE not in page
    assert page.count(html.escape(HOSTILE)) >= 5  # title, heading, tables, gate, step, spec file
    assert "&lt;b&gt;9&lt;/b&gt;" in page
    for doc in [page] + [v.decode() for k, v in files.items() if k.endswith(".svg")]:
        urls = re.findall(r'[\w:]+="?https?://[^"\s<>]*"?', doc)
        assert set(urls) <= NAMESPACES, set(urls) - NAMESPACES
        assert len(re.findall(r"https?://", doc)) == len(urls)
        assert not re.search(r"<(img|link|iframe|object|embed|video|audio|source|base)\b|@import|\bsrc=", doc, re.I)
        assert not re.search(r"url\((?!#)", doc)
        hrefs = re.findall(r'href="([^"]*)"', doc)
        assert all(h.startswith(("#", "data:image/png;base64,")) for h in hrefs)
    assert page.count("<svg") == 4
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # the inlined charts' ids are prefixed, unique in the page
    refs = set(re.findall(r'(?:href="#|url\(#)([^")]+)', page))
    assert refs <= set(ids)  # and every reference still points at its own chart's element
    assert '<span class="fail">FAIL</span>' in page and page.count('<span class="pass">pass</span>') == 2
    assert "1.15 MiB" in page and "302.0 KiB" in page and "0.9000" in page  # size, attribution agreement


def _digests(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())}


def test_byte_identical_whatever_the_matplotlib_settings(digits: tuple[dict[str, Any], dict[str, bytes]],
                                                         tmp_path: Path) -> None:
    import matplotlib

    report, files = digits
    before = copy.deepcopy(dict(matplotlib.rcParams))
    again = visual_report(copy.deepcopy(report), f"examples/{HOSTILE}/deploy.yaml")
    assert again == files
    with matplotlib.rc_context({"font.size": 31, "lines.linewidth": 9, "svg.fonttype": "path",
                                "svg.hashsalt": None, "axes.prop_cycle": matplotlib.cycler(color=["k"])}):
        assert visual_report(report, f"examples/{HOSTILE}/deploy.yaml") == files
    assert dict(matplotlib.rcParams) == before  # the caller's settings are left as they were
    # a fresh process, with a user matplotlibrc that changes the style
    (tmp_path / "mpl").mkdir()
    (tmp_path / "mpl" / "matplotlibrc").write_text("font.size: 30\nlines.linewidth: 7\nsvg.fonttype: path\n"
                                                   "axes.facecolor: black\nimage.cmap: jet\n")
    (tmp_path / "report.json").write_text(json.dumps(report))
    code = ("import hashlib, json, sys; from deployc.compiler.report_html import visual_report; "
            "files = visual_report(json.load(open(sys.argv[1])), sys.argv[2]); "
            "print(json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())}))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "report.json"),
                          f"examples/{HOSTILE}/deploy.yaml"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MPLCONFIGDIR": str(tmp_path / "mpl"),
                              "HOME": str(tmp_path)}, check=True)
    assert json.loads(out.stdout) == _digests(files)


@pytest.mark.skipif(chromium_binary() is None, reason="no chromium (`make system-deps` installs Debian's)")
def test_chromium_renders_without_requests_or_errors(digits: tuple[dict[str, Any], dict[str, bytes]],
                                                     tmp_path: Path) -> None:
    import matplotlib.image

    _, files = digits
    page = tmp_path / "report.html"
    page.write_bytes(files["report.html"])
    url = page.as_uri()
    with Chromium(tmp_path / "profile", timeout_s=60) as browser:
        visit = browser.visit(url, width=1200, evaluate={
            "svgs": "Array.from(document.querySelectorAll('svg'), s => s.getBoundingClientRect().width)",
            "scripts": "document.scripts.length",
            "title": "document.title"})
    assert [u for u in visit.requests if not u.startswith("data:image/png;base64,")] == [url]
    assert visit.problems == []
    assert visit.values["scripts"] == 0 and visit.values["title"] == f"deployc report: {HOSTILE} 1.0.0"
    assert len(visit.values["svgs"]) == 4 and all(w > 300 for w in visit.values["svgs"])
    shot = np.asarray(matplotlib.image.imread(io.BytesIO(visit.screenshot), format="png"))[..., :3]
    assert shot.shape[1] == 1200 and shot.shape[0] > 2500  # the whole page: tables, four charts, steps
    assert (shot.min(axis=2) < 0.9).mean() > 0.03  # a good share of the page is drawn, not blank
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    assert ((r > 0.55) & (g < 0.35) & (b < 0.35)).sum() > 500  # the heatmaps' reds and blues rendered
    assert ((b > 0.55) & (r < 0.35) & (g < 0.6)).sum() > 500
