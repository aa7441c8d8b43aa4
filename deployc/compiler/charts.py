"""The report's charts, as SVG, drawn with matplotlib from report.json alone (a pure function of it).

Byte-identical on every build: matplotlib's built-in default style whatever the user's matplotlibrc says (inside an
rc_context, so the caller's settings are untouched), a fixed hash salt per chart (the ids of clip paths, markers
and images; one salt per chart so that ids never clash when report.html inlines several charts), no metadata
block (no date, no creator URL), figures of fixed sizes and fixed layouts. Figures are made without pyplot: no
global figure registry, no GUI backend. Text stays text (`svg.fonttype: none`) with a generic family: a quarter
of the size of glyph paths, selectable in the page, and nothing to fetch (the browser uses its own sans-serif).
Every string from the build is drawn literally (`text.parse_math: False`: a `$` in a name is not TeX).
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard

Chart = tuple[str, str, bytes]  # (file name, title, SVG)
# file name -> title, in report order (report.md's links and report.html's captions)
TITLES = {
    "pareto.svg": "Size vs latency vs task metric, with the Pareto front",
    "latency.svg": "Batch-1 latency distribution per artifact",
    "confusion.svg": "Confusion matrix of the shipped artifact",
    "attributions.svg": "Mean attribution maps per class, original vs each artifact",
    "importance.svg": "Global feature importance, original vs each artifact",
}
METRICS = (("accuracy", "accuracy"), ("auc", "ROC AUC"), ("r2", "R²"), ("agreement", "agreement"))
STYLE: dict[str, Any] = {
    "svg.fonttype": "none", "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "font.size": 9.0,
    "axes.titlesize": 10.0, "text.parse_math": False, "svg.image_inline": True, "image.interpolation": "nearest"}
MAX_CLASSES = 20  # attribution rows drawn at most (the first classes), so a 1000-class model stays readable


def _render(name: str, draw: Callable[[Any], None], size: tuple[float, float]) -> bytes:
    import matplotlib
    import matplotlib.style
    from matplotlib.figure import Figure

    with matplotlib.rc_context():
        matplotlib.style.use("default")  # rcParamsDefault without the backend-level keys
        rc: Any = matplotlib.rcParams  # its keys are typed as literals; these are checked by matplotlib itself
        rc.update({**STYLE, "svg.hashsalt": f"deployc-{name}"})
        fig = Figure(figsize=size, dpi=72)
        draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return buf.getvalue()


def _axes(fig: Any, left: float, bottom: float, right: float, top: float) -> Any:
    """An axes with margins in inches: a fixed layout (no layout engine) is fast and the same on every build."""
    w, h = fig.get_size_inches()
    return fig.add_axes((left / w, bottom / h, 1 - (left + right) / w, 1 - (bottom + top) / h))


def _text_width(labels: Sequence[str], size: float) -> float:
    """About how many inches the longest label takes at `size` points (DejaVu Sans averages 0.6 em a glyph)."""
    return 0.6 * size / 72 * max((len(t) for t in labels), default=0)


def _log_axis(ax: Any, which: str) -> None:
    """A log axis labelled with plain numbers (0.01, 0.1, 1): the default labels are TeX, which is off here."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if which == "x":
        ax.set_xscale("log")
    else:
        ax.set_yscale("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _num(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metric_key(evaluations: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    """The task metric the charts colour by: accuracy, else AUC, else R², else agreement."""
    return next(((k, t) for k, t in METRICS if any(_num(ev.get(k)) for ev in evaluations)), None)


def _points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every artifact, and every `quantize: auto` candidate that was measured, with size (KiB) and p50 (ms)."""
    pts = []
    for a in report.get("artifacts") or []:
        ev = a["evaluation"]
        if _num(ev.get("size_bytes")) and _num(ev.get("latency_p50_ms")):
            pts.append({"name": str(a["artifact"]), "ev": ev, "shipped": bool(a.get("shipped")), "kept": True,
                        "candidate": False})
    for p in report.get("passes") or []:
        for c in (p.get("details") or {}).get("candidates") or []:
            fig = c.get("figures") or {}
            if _num(fig.get("size_bytes")) and _num(fig.get("latency_p50_ms")):
                pts.append({"name": f"{c.get('mode')} (candidate)", "ev": fig, "shipped": False,
                            "kept": bool(c.get("kept")), "candidate": True})
    for p in pts:
        p["x"], p["y"] = p["ev"]["size_bytes"] / 1024, float(p["ev"]["latency_p50_ms"])
    return pts


def front(pts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The kept points that no other kept point beats on both size and latency, by size."""
    kept = [p for p in pts if p["kept"]]
    best = [p for p in kept if not any(q["x"] <= p["x"] and q["y"] <= p["y"] and (q["x"], q["y"]) != (p["x"], p["y"])
                                       for q in kept)]
    return sorted(best, key=lambda p: (p["x"], p["y"]))


def _log_scale(values: Sequence[float]) -> bool:
    """A log axis when the values span more than 20x (a quantized model next to a float one)."""
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and bool(pos) and max(pos) / min(pos) > 20


def pareto(report: dict[str, Any]) -> Chart | None:
    pts = _points(report)
    if not pts:
        return None
    metric = _metric_key([p["ev"] for p in pts])
    title = TITLES["pareto.svg"]

    def draw(fig: Any) -> None:
        import matplotlib

        ax = _axes(fig, 0.75, 0.55, 1.35 if metric else 0.25, 0.35)
        values = [float(p["ev"][metric[0]]) for p in pts if metric and _num(p["ev"].get(metric[0]))]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        pad = 0.0 if hi - lo > 1e-6 else max(1e-3, abs(lo) * 0.01)  # one value: a scale around it
        norm = matplotlib.colors.Normalize(vmin=lo - pad, vmax=hi + pad)
        cmap = matplotlib.colormaps["viridis"]
        best = front(pts)
        ax.step([p["x"] for p in best], [p["y"] for p in best], where="post", color="0.55", linestyle="--",
                linewidth=1, label="Pareto front (kept points)", gid="front")
        for i, p in enumerate(sorted(pts, key=lambda p: (p["x"], p["y"], p["name"]))):
            value = p["ev"].get(metric[0]) if metric else None
            colour = cmap(norm(float(value))) if _num(value) else (0.6, 0.6, 0.6, 1.0)
            ax.scatter([p["x"]], [p["y"]], s=150 if p["shipped"] else 55, marker="D" if p["candidate"] else "o",
                       facecolors=[colour if p["kept"] else "none"], edgecolors=["black" if p["shipped"] else colour],
                       linewidths=2.2 if p["shipped"] else 1.4, zorder=3, gid=f"point-{i}")
            ax.annotate(p["name"] + (" — shipped" if p["shipped"] else "") + ("" if p["kept"] else " (dropped)"),
                        (p["x"], p["y"]), textcoords="offset points", xytext=(8, 7 if i % 2 == 0 else -12),
                        fontsize=8, fontweight="bold" if p["shipped"] else "normal")
        if metric and values:
            w, h = fig.get_size_inches()
            cax = fig.add_axes((1 - 1.2 / w, 0.55 / h, 0.15 / w, 1 - 0.9 / h))
            fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, label=metric[1])
        if _log_scale([p["x"] for p in pts]):
            _log_axis(ax, "x")
        if _log_scale([p["y"] for p in pts]):
            _log_axis(ax, "y")
        ax.set_xlabel("size (KiB)")
        ax.set_ylabel("batch-1 p50 latency (ms)")
        ax.set_title("Artifacts (●) and auto candidates (◆); hollow: dropped, ringed: shipped")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        ax.margins(0.25)

    return "pareto.svg", title, _render("pareto", draw, (7.5, 4.4))


def latency(report: dict[str, Any]) -> Chart | None:
    """p5–p95 whiskers, p25–p75 box, p50 line and p99 marker of each artifact's batch-1 calls."""
    keys = ("5", "25", "50", "75", "95", "99")
    rows = [(str(a["artifact"]), q) for a in report.get("artifacts") or []
            if isinstance(q := a["evaluation"].get("latency_percentiles_ms"), dict)
            and all(_num(q.get(k)) for k in keys)]
    if not rows:
        return None
    title = TITLES["latency.svg"]

    def draw(fig: Any) -> None:
        from matplotlib.patches import Rectangle

        ax = _axes(fig, left, 0.5, 1.7, 0.3)  # the right margin holds each row's p50 and p99
        for i, (_, q) in enumerate(rows):
            y = len(rows) - 1 - i
            ax.plot([q["5"], q["95"]], [y, y], color="0.3", linewidth=1, gid=f"whisker-{i}")
            ax.add_patch(Rectangle((q["25"], y - 0.25), q["75"] - q["25"], 0.5, facecolor="#9ecae1",
                                   edgecolor="#3182bd", gid=f"box-{i}"))
            ax.plot([q["50"], q["50"]], [y - 0.25, y + 0.25], color="black", linewidth=2)
            ax.plot([q["99"]], [y], marker="x", color="crimson", markersize=7)
            ax.annotate(f"p50 {q['50']:.3g} · p99 {q['99']:.3g} ms", (1.0, y), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(8, -3), fontsize=8, annotation_clip=False)
        if _log_scale([q["5"] for _, q in rows] + [q["99"] for _, q in rows]):
            _log_axis(ax, "x")
        ax.set_yticks(range(len(rows)), [n for n, _ in reversed(rows)])
        ax.set_xlabel("batch-1 latency (ms): p5–p95 line, p25–p75 box, p50 bar, p99 ×")
        ax.set_title("Latency per call, one row at a time (this machine)")
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_ylim(-0.7, len(rows) - 0.3)

    left = 0.2 + _text_width([n for n, _ in rows], 9)
    return "latency.svg", title, _render("latency", draw, (max(7.5, left + 5.5), 1.1 + 0.5 * len(rows)))


def confusion(report: dict[str, Any]) -> Chart | None:
    """The shipped artifact's counts, rows = true class; shaded by the share of the row (recall per class)."""
    shipped = next((a for a in report.get("artifacts") or [] if a.get("shipped")
                    and a["evaluation"].get("confusion")), None)
    if shipped is None:
        return None
    m = [[int(v) for v in row] for row in shipped["evaluation"]["confusion"]]
    n = len(m)
    classes = [str(c) for c in ((report.get("explanation") or {}).get("classes") or [])]
    if len(classes) != n:
        classes = [str(i) for i in range(n)]
    title = TITLES["confusion.svg"]
    name = str(shipped["artifact"])
    heading = f"{name if len(name) <= 60 else name[:59] + '…'} on data.eval ({sum(map(sum, m))} rows)"

    def draw(fig: Any) -> None:
        ax = _axes(fig, 0.45 + _text_width(classes, 7), 0.4 + (_text_width(classes, 7) if n > 10 else 0.15), 0.15,
                   0.3)
        share = [[v / (sum(row) or 1) for v in row] for row in m]
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="none", aspect="auto")
        if n <= 30:
            for i, row in enumerate(m):
                for j, v in enumerate(row):
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8 if n <= 12 else 6,
                            color="white" if share[i][j] > 0.5 else "black", gid=f"cell-{i}-{j}")
        ticks = range(n) if n <= 30 else range(0, n, math.ceil(n / 30))
        ax.set_xticks(ticks, [classes[i] for i in ticks], fontsize=7, rotation=90 if n > 10 else 0)
        ax.set_yticks(ticks, [classes[i] for i in ticks], fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(heading)

    side = min(7.5, 2.0 + 0.38 * n)
    label = _text_width(classes, 7)
    width = max(side + label + 0.6, _text_width([heading], 10) + 0.3)  # the heading fits
    return "confusion.svg", title, _render("confusion", draw, (width, side + (label if n > 10 else 0.15) + 0.7))


def model_order(report: dict[str, Any], models: dict[str, Any]) -> list[str]:
    """reference first, then the artifacts in report order, then any other summary."""
    arts = [str(a["artifact"]) for a in report.get("artifacts") or []]
    order = ["reference"] + [a for a in arts if a != "reference"]
    return [m for m in order if m in models] + sorted(m for m in models if m not in order)


def _image_rows(ex: dict[str, Any]) -> list[tuple[str, int, int, list[int]]]:
    """(input, H, W, feature indices) for each `images` input whose features are all in the explanation."""
    found = []
    where = {f: i for i, f in enumerate(ex.get("features") or [])}
    for name, shape in (ex.get("images") or {}).items():
        if len(shape) != 2:
            continue
        h, w = int(shape[0]), int(shape[1])
        idx = [where.get(f"{name}[{k}]", -1) for k in range(h * w)]
        if h * w and -1 not in idx:
            found.append((str(name), h, w, idx))
    return found


def attributions(report: dict[str, Any]) -> Chart | None:
    """Rows = classes (per input), columns = reference then each artifact; one colour scale per row, symmetric
    around 0, so a row shows where the models put the evidence for that class, and whether they agree.

    Each column is one image (the row maps stacked, each divided by its row's largest |value|, blank lines
    between): one <image> per model instead of one axes per cell keeps the drawing fast."""
    ex = report.get("explanation")
    images = _image_rows(ex) if ex else []
    if not ex or not images:
        return None
    import numpy as np

    models = model_order(report, ex["models"])
    per_class = {m: np.asarray(ex["models"][m]["per_class"], dtype=float) for m in models}
    n_classes = min(len(v) for v in per_class.values())
    classes = [str(c) for c in ex.get("classes") or []]
    if len(classes) != n_classes:
        classes = [str(c) for c in range(n_classes)] if n_classes > 1 else ["output"]
    rows = [(name, h, w, idx, c) for name, h, w, idx in images for c in range(min(n_classes, MAX_CLASSES))]
    if not rows:
        return None
    width = max(w for _, _, w, _, _ in rows)
    blocks, labels, centres, y = [], [], [], 0
    for name, h, w, idx, c in rows:
        maps = [per_class[m][c][idx].reshape(h, w) for m in models]
        lim = max(float(np.abs(a).max()) for a in maps)
        pad = np.full((h, width - w), np.nan)
        blocks.append([np.hstack([a / (lim or 1.0), pad]) for a in maps])
        scale = f"±{lim:.2g}" if lim else "(no rows)"  # no explained row was predicted as this class
        labels.append(f"{name}: {classes[c]}\n{scale}" if len(images) > 1 else f"class {classes[c]}\n{scale}")
        centres.append(y + (h - 1) / 2)
        y += h + 1
    gap = np.full((1, width), np.nan)
    columns = [np.vstack([part for b in blocks for part in (b[j], gap)][:-1]) for j in range(len(models))]
    title = TITLES["attributions.svg"]
    cell = 1.0 / max(8, max(h for _, h, _, _, _ in rows), width)  # inches per pixel: an 8x8 map is 1 in
    img_w, img_h = cell * width, cell * columns[0].shape[0]
    heads = [m if len(m) <= 32 else m[:31] + "…" for m in models]
    col_w = max(img_w + 0.2, _text_width(heads, 8) + 0.1)  # room for the longest column title
    left = 0.2 + _text_width([part for t in labels for part in t.split("\n")], 8)
    size = (max(left + len(models) * col_w, 5.0), 1.0 + img_h)

    def draw(fig: Any) -> None:
        import matplotlib

        cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
        for j, col in enumerate(columns):
            x0 = (left + j * col_w + (col_w - img_w) / 2) / size[0]
            ax = fig.add_axes((x0, 0.15 / size[1], img_w / size[0], img_h / size[1]))
            im = ax.imshow(col, cmap=cmap, vmin=-1, vmax=1, interpolation="none", aspect="auto")
            im.set_gid(f"map-{j}")
            ax.set_xticks([])
            ax.set_yticks(centres if j == 0 else [], labels if j == 0 else [], fontsize=8)
            ax.tick_params(length=0)
            for side in ax.spines.values():
                side.set_visible(False)
            ax.set_title(heads[j], fontsize=8)
        more = f", first {MAX_CLASSES} of {n_classes} classes" if n_classes > MAX_CLASSES else ""
        fig.suptitle(f"Mean {ex['method']} attribution per predicted class\nred: for, blue: against; "
                     f"one scale (±) per row{more}", fontsize=9, x=0.02, ha="left", y=1 - 0.08 / size[1], va="top")

    return "attributions.svg", title, _render("attributions", draw, size)


def importance(report: dict[str, Any], top_n: int = 15) -> Chart | None:
    """Global importance (mean |attribution|) of the reference's most important features outside `images`
    inputs: grouped bars, the original vs each artifact."""
    ex = report.get("explanation")
    if not ex or "reference" not in ex["models"]:
        return None
    images = {name for name, *_ in _image_rows(ex)}
    features = [str(f) for f in ex.get("features") or []]
    feats = [i for i, f in enumerate(features) if f.split("[")[0] not in images]
    ref = ex["models"]["reference"]["global"]
    if not feats or len(ref) != len(features):
        return None
    top = sorted(feats, key=lambda i: (-ref[i], i))[:top_n]
    models = [m for m in model_order(report, ex["models"]) if len(ex["models"][m]["global"]) == len(features)]
    title = TITLES["importance.svg"]

    def draw(fig: Any) -> None:
        ax = _axes(fig, 0.2 + _text_width([features[i] for i in top], 8), 0.5, 0.2, 0.3)
        height = 0.8 / len(models)
        for j, m in enumerate(models):
            g = ex["models"][m]["global"]
            ys = [len(top) - 1 - k + (len(models) / 2 - j - 0.5) * height for k in range(len(top))]
            bars = ax.barh(ys, [g[i] for i in top], height=height, label=m, color=f"C{j % 10}")
            for k, bar in enumerate(bars):
                bar.set_gid(f"bar-{j}-{k}")
        ax.set_yticks(range(len(top)), [features[i] for i in reversed(top)], fontsize=8)
        ax.set_xlabel("mean |attribution| over the explained rows")
        ax.set_title(f"{ex['method']}: top {len(top)} features of the original")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_ylim(-0.6, len(top) - 0.4)

    height = 1.3 + len(top) * max(0.3, 0.14 * len(models))
    return "importance.svg", title, _render("importance", draw, (7.5, height))


ALL = (pareto, latency, confusion, attributions, importance)


def charts(report: dict[str, Any]) -> list[Chart]:
    """Every chart the report's data allows, in report order."""
    return [c for make in ALL if (c := make(report)) is not None]
