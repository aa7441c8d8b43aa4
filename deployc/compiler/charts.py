"""The report's charts, as SVG, drawn with matplotlib from report.json alone.

Byte-identical on every build: matplotlib's default style whatever the user's matplotlibrc says, a fixed hash
salt per chart (the ids of clip paths and images), no date or creator metadata, text kept as text with a generic
font family (nothing to fetch), figures of fixed sizes. Figures are made without pyplot (no global state).
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

Chart = tuple[str, str, bytes]  # (file name, title, SVG)
METRICS = (("accuracy", "accuracy"), ("auc", "ROC AUC"), ("r2", "R²"), ("agreement", "agreement"))


def _render(name: str, draw: Callable[[Any], None], size: tuple[float, float]) -> bytes:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context():
        matplotlib.rcParams.update(matplotlib.rcParamsDefault)
        matplotlib.rcParams.update({"svg.hashsalt": f"deployc-{name}", "svg.fonttype": "none",
                                    "font.family": "sans-serif", "font.size": 9, "axes.titlesize": 10})
        fig = Figure(figsize=size, dpi=100, layout="constrained")
        draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return buf.getvalue()


def _metric(ev: dict[str, Any]) -> tuple[str, float] | None:
    for key, title in METRICS:
        if isinstance(ev.get(key), (int, float)):
            return title, float(ev[key])
    return None


def _points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every artifact, and every `auto` candidate, with size, p50 latency and metric."""
    pts = []
    for a in report.get("artifacts", []):
        ev = a["evaluation"]
        if ev.get("size_bytes") and ev.get("latency_p50_ms"):
            pts.append({"name": a["artifact"], "size": ev["size_bytes"] / 1024, "p50": ev["latency_p50_ms"],
                        "metric": _metric(ev), "shipped": a.get("shipped", False), "kept": True})
    for p in report.get("passes", []):
        for c in (p.get("details") or {}).get("candidates") or []:
            fig = c.get("figures") or {}
            if fig.get("size_bytes") and fig.get("latency_p50_ms"):
                pts.append({"name": f"candidate {c.get('mode')}", "size": fig["size_bytes"] / 1024,
                            "p50": fig["latency_p50_ms"], "metric": _metric(fig), "shipped": False,
                            "kept": bool(c.get("kept"))})
    return pts


def pareto(report: dict[str, Any]) -> Chart | None:
    pts = _points(report)
    if not pts:
        return None

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        metric = next((p["metric"][0] for p in pts if p["metric"]), None)
        values = [p["metric"][1] for p in pts if p["metric"]]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        import matplotlib

        cmap = matplotlib.colormaps["viridis"]
        norm = matplotlib.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
        front = _front(pts)
        fx = [p["size"] for p in front]
        fy = [p["p50"] for p in front]
        ax.step(fx, fy, where="post", color="0.6", linestyle="--", linewidth=1, label="Pareto front")
        for p in pts:
            colour = cmap(norm(p["metric"][1])) if p["metric"] else "0.5"
            face = colour if p["kept"] else "none"
            ax.scatter([p["size"]], [p["p50"]], s=90 if p["shipped"] else 45, facecolors=[face],
                       edgecolors=["black" if p["shipped"] else colour], linewidths=2 if p["shipped"] else 1.2,
                       zorder=3)
            ax.annotate(p["name"] + (" (shipped)" if p["shipped"] else ""), (p["size"], p["p50"]),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
        if metric:
            sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
            fig.colorbar(sm, ax=ax, label=metric)
        ax.set_xlabel("size (KiB)")
        ax.set_ylabel("batch-1 p50 latency (ms)")
        ax.set_title("Artifacts and candidates: size, latency, metric (hollow: dropped)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        ax.margins(0.2)

    return "pareto.svg", "Size vs latency vs metric (Pareto front)", _render("pareto", draw, (7.5, 4.2))


def _front(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both size and latency, by size."""
    kept = [p for p in pts if p["kept"]]
    return sorted((p for p in kept if not any(q["size"] <= p["size"] and q["p50"] <= p["p50"] and
                                              (q["size"], q["p50"]) != (p["size"], p["p50"]) for q in kept)),
                  key=lambda p: p["size"])


def latency(report: dict[str, Any]) -> Chart | None:
    rows = [(a["artifact"], a["evaluation"]["latency_percentiles_ms"]) for a in report.get("artifacts", [])
            if a["evaluation"].get("latency_percentiles_ms")]
    if not rows:
        return None

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for i, (_, q) in enumerate(rows):
            y = len(rows) - 1 - i
            ax.plot([q["5"], q["95"]], [y, y], color="0.3", linewidth=1)
            ax.add_patch(_rect(q["25"], y - 0.25, q["75"] - q["25"], 0.5))
            ax.plot([q["50"], q["50"]], [y - 0.25, y + 0.25], color="black", linewidth=2)
            ax.plot([q["99"]], [y], marker="x", color="crimson")
            ax.annotate(f"p50 {q['50']:.3f} · p99 {q['99']:.3f} ms", (q["95"], y), textcoords="offset points",
                        xytext=(6, -3), fontsize=8)
        ax.set_yticks(range(len(rows)), [n for n, _ in reversed(rows)])
        ax.set_xlabel("batch-1 latency (ms): p5–p95 line, p25–p75 box, p50 bar, p99 ×")
        ax.set_title("Latency distribution per artifact (this machine)")
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.margins(x=0.35)

    return "latency.svg", "Latency distribution", _render("latency", draw, (7.5, 0.8 + 0.55 * len(rows)))


def _rect(x: float, y: float, w: float, h: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor="#9ecae1", edgecolor="#3182bd")


def confusion(report: dict[str, Any]) -> Chart | None:
    shipped = next((a for a in report.get("artifacts", []) if a.get("shipped") and a["evaluation"].get("confusion")),
                   None)
    if shipped is None:
        return None
    m = shipped["evaluation"]["confusion"]
    classes = (report.get("explanation") or {}).get("classes") or [str(i) for i in range(len(m))]
    if len(classes) != len(m):
        classes = [str(i) for i in range(len(m))]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        ax.imshow(m, cmap="Blues", interpolation="nearest")
        top = max(max(r) for r in m) or 1
        for i, row in enumerate(m):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > top / 2 else "black")
        ax.set_xticks(range(len(m)), classes, fontsize=7)
        ax.set_yticks(range(len(m)), classes, fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"Confusion matrix: {shipped['artifact']} on data.eval")

    side = min(7.0, 2.5 + 0.35 * len(m))
    return "confusion.svg", "Confusion matrix (shipped artifact)", _render("confusion", draw, (side, side))


def attributions(report: dict[str, Any]) -> Chart | None:
    """Per-class attribution maps of the image-shaped inputs: rows = classes, columns = the models."""
    ex = report.get("explanation")
    if not ex or not ex.get("images"):
        return None
    name, (h, w) = next(iter(ex["images"].items()))
    idx = [i for i, f in enumerate(ex["features"]) if f.startswith(f"{name}[")]
    if len(idx) != h * w:
        return None
    models = list(ex["models"])
    classes = ex.get("classes") or [str(c) for c in range(len(ex["models"]["reference"]["per_class"]))]

    def draw(fig: Any) -> None:
        import numpy as np

        n_rows, n_cols = len(classes), len(models)
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        for c in range(n_rows):
            maps = [np.asarray(ex["models"][m]["per_class"][c])[idx].reshape(h, w) for m in models]
            lim = max(float(np.abs(a).max()) for a in maps) or 1.0
            for j, a in enumerate(maps):
                ax = axes[c][j]
                ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_title(models[j], fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"class {classes[c]}", fontsize=8)
        fig.suptitle(f"Mean attribution per predicted class, {name} ({ex['method']}; red: for, blue: against)",
                     fontsize=9)

    size = (1.3 * len(models) + 0.6, 1.15 * len(classes) + 0.5)
    return "attributions.svg", "Attribution maps per class, original vs each artifact", _render(
        "attributions", draw, size)


def importance(report: dict[str, Any]) -> Chart | None:
    """Global importance of the most important features (tabular inputs): the original vs each artifact."""
    ex = report.get("explanation")
    if not ex:
        return None
    images = set(ex.get("images") or {})
    feats = [i for i, f in enumerate(ex["features"]) if f.split("[")[0] not in images]
    if not feats:
        return None
    ref = ex["models"]["reference"]["global"]
    top = sorted(feats, key=lambda i: (-ref[i], i))[:15]
    models = list(ex["models"])

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        height = 0.8 / len(models)
        for j, m in enumerate(models):
            g = ex["models"][m]["global"]
            ys = [len(top) - 1 - k + (len(models) / 2 - j - 0.5) * height for k in range(len(top))]
            ax.barh(ys, [g[i] for i in top], height=height, label=m)
        ax.set_yticks(range(len(top)), [ex["features"][i] for i in reversed(top)], fontsize=8)
        ax.set_xlabel("mean |attribution|")
        ax.set_title(f"Feature importance ({ex['method']}), top {len(top)}")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, axis="x", alpha=0.3)

    return "importance.svg", "Feature importance, original vs each artifact", _render(
        "importance", draw, (7.5, 1.0 + 0.3 * len(top) * max(1, math.ceil(len(models) / 2))))


ALL = (pareto, latency, confusion, attributions, importance)


def charts(report: dict[str, Any]) -> list[Chart]:
    """Every chart the report's data allows, in report order."""
    return [c for make in ALL if (c := make(report)) is not None]
