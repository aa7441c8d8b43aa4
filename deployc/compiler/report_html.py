"""report.html: the build report as one self-contained page that opens from disk (inline CSS, the SVG charts inline,
no script, no font, link or image that fetches anything), and the same charts as files under charts/ that
report.md embeds. Every string from the build (names, messages, features, classes) is escaped; the figures are
numbers formatted here. Deterministic: nothing in the page depends on the clock or the machine drawing it."""
from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping
from typing import Any

from deployc.compiler import charts as C

CHARTS_DIR = "charts"
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1b1f24;padding:0 1rem;background:#fff}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
.sub{color:#57606a;margin-top:0}.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.6rem 1rem;min-width:10rem}
.card b{display:block;font-size:1.25rem;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.5rem 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:right;vertical-align:top}
th{background:#f6f8fa}td.l,th.l{text-align:left}tr.shipped td{background:#fff8c5}
.pass{color:#1a7f37;font-weight:600}.fail{color:#fff;background:#cf222e;font-weight:700;padding:0 .35rem;
border-radius:3px}tr.failed td{background:#ffebe9}
figure{margin:1.5rem 0}figcaption{color:#57606a;font-size:13px}figure svg{max-width:100%;height:auto}
code{background:#f6f8fa;padding:0 .25rem;border-radius:3px;overflow-wrap:anywhere}ol li{margin:.15rem 0}
"""
# (figure key, column title, format)
COLUMNS = (("accuracy", "accuracy", "{:.4f}"), ("auc", "AUC", "{:.4f}"), ("r2", "R²", "{:.4f}"),
           ("agreement", "agreement", "{:.4f}"), ("attribution_agreement", "attribution agr.", "{:.4f}"),
           ("size_bytes", "size", "bytes"), ("latency_p50_ms", "p50 ms", "{:.3f}"),
           ("latency_p99_ms", "p99 ms", "{:.3f}"), ("throughput_rows_s", "rows/s", "{:,.0f}"))
CAPTIONS = {
    "pareto.svg": "Lower left is better. Colour: the task metric. The dashed line joins the points that no other "
                  "kept point beats on both size and latency.",
    "latency.svg": "Batch-1 calls on this machine: the spread, not only the p50, shows what a request waits.",
    "confusion.svg": "Counts of data.eval rows; the shade is the share of the true class's row (its recall).",
    "attributions.svg": "Where each model finds the evidence for a class: columns that look alike mean the "
                        "optimized artifact decides for the same reasons as the original.",
    "importance.svg": "Mean |attribution| of the original's most important features, for each model.",
}


def visual_report(report: dict[str, Any], spec_file: str) -> dict[str, bytes]:
    """{"report.html": ..., "charts/<name>.svg": ...} for a report.json document."""
    drawn = [(name, title, _safe_svg(svg)) for name, title, svg in C.charts(report)]
    files = {f"{CHARTS_DIR}/{name}": svg for name, _, svg in drawn}
    files["report.html"] = _page(report, spec_file, drawn).encode()
    return files


def chart_links(files: Mapping[str, bytes]) -> list[str]:
    """Markdown lines embedding the SVG charts (relative paths, a title line each), for report.md."""
    order = list(C.TITLES)
    found = sorted((rel for rel in files if rel.startswith(f"{CHARTS_DIR}/") and rel.endswith(".svg")),
                   key=lambda rel: (order.index(n) if (n := rel.split("/", 1)[1]) in order else len(order), rel))
    lines: list[str] = []
    for rel in found:
        title = C.TITLES.get(rel.split("/", 1)[1], "Chart")
        lines += [*([""] if lines else []), f"**{title}**", "", f"![{title}]({rel})"]
    return lines


_DOCTYPE = re.compile(rb"<!DOCTYPE[^>]*>\s*")
# an href that is neither a fragment of the same SVG nor an inline PNG: removed, attribute and all
_EXTERNAL_HREF = re.compile(rb'\s(?:xlink:)?href="(?!#|data:image/png;base64,)[^"]*"')


def _safe_svg(svg: bytes) -> bytes:
    """matplotlib's SVG without its doctype (a URL of the DTD, never needed) and without any href that could
    fetch something (matplotlib writes one only for artists given a URL; none here, but the page promises)."""
    return _EXTERNAL_HREF.sub(b"", _DOCTYPE.sub(b"", svg))


_XML_HEAD = re.compile(r"^\s*<\?xml[^>]*\?>\s*")
_IDS = re.compile(r'(\bid=")([^"]+)(")|(url\(#)([^)]+)(\))|(href="#)([^"]+)(")')


def _inline(name: str, svg: bytes) -> str:
    """The SVG as an element of the page: no XML declaration, every id (and every reference to one) prefixed
    with the chart's name, so the ids of several charts stay unique in one document."""
    prefix = name.removesuffix(".svg") + "-"

    def sub(m: re.Match[str]) -> str:
        g = [x for x in m.groups() if x is not None]
        return f"{g[0]}{prefix}{g[1]}{g[2]}"

    return _IDS.sub(sub, _XML_HEAD.sub("", svg.decode()))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, how: str) -> str:
    """A figure as text, or – when missing; anything that is not a finite number is shown escaped as it is."""
    if value is None:
        return "–"
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return _e(value)
    if how == "bytes":
        return f"{value / 1024:,.1f} KiB" if value < 1024 * 1024 else f"{value / 1048576:,.2f} MiB"
    return how.format(value)


def _page(report: dict[str, Any], spec_file: str, drawn: list[C.Chart]) -> str:
    name, version = _e(report.get("name")), _e(report.get("version"))
    gates = report.get("gates") or []
    failed = sum(1 for g in gates if not g.get("passed"))
    shipped = [str(a["artifact"]) for a in report.get("artifacts") or [] if a.get("shipped")]
    gate_text = (f"{len(gates) - failed} pass · {failed} fail" if gates else "none")
    parts = [
        "<!DOCTYPE html>", "<!-- generated by deployc from report.json: do not edit -->",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>deployc report: {name} {version}</title><style>{CSS}</style></head><body>",
        f"<h1>{name} {version}</h1>",
        f'<p class="sub">deployc build report · spec <code>{_e(spec_file)}</code> · sha256 '
        f'<code>{_e(str(report.get("spec_sha256", ""))[:16])}</code></p>',
        '<div class="cards">',
        f'<div class="card">shipped<b>{_e(", ".join(shipped) or "–")}</b></div>',
        f'<div class="card">gates<b class="{"fail" if failed else "pass"}">{_e(gate_text)}</b></div>',
        f'<div class="card">targets<b>{_e(", ".join(map(str, report.get("targets") or [])) or "–")}</b></div>',
        "</div>",
    ]
    parts += _verification(report) + _notes(report)
    if drawn:
        parts.append("<h2>Charts</h2>")
    for file, title, svg in drawn:
        parts.append(f'<figure id="{_e(file.removesuffix(".svg"))}">{_inline(file, svg)}<figcaption><b>{_e(title)}'
                     f"</b>. {_e(CAPTIONS.get(file, ''))} (<code>{CHARTS_DIR}/{_e(file)}</code>)</figcaption>"
                     "</figure>")
    parts += _gates(gates) + _explanation(report) + _candidates(report) + _steps(report)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _verification(report: dict[str, Any]) -> list[str]:
    rows = ([("reference (original)", report["reference"], False)] if report.get("reference") else []) + [
        (str(a["artifact"]), a["evaluation"], bool(a.get("shipped"))) for a in report.get("artifacts") or []]
    if not rows:
        return []
    cols = [c for c in COLUMNS if any(c[0] in ev for _, ev, _ in rows)]
    out = ['<h2>Verification (data.eval, this machine)</h2><table><tr><th class="l">artifact</th>'
           + "".join(f"<th>{_e(t)}</th>" for _, t, _ in cols) + "</tr>"]
    for label, ev, shipped in rows:
        out.append(f'<tr{" class=shipped" if shipped else ""}><td class="l">{_e(label)}'
                   f"{' <b>(shipped)</b>' if shipped else ''}</td>"
                   + "".join(f"<td>{_fmt(ev.get(k), f)}</td>" for k, _, f in cols) + "</tr>")
    out.append("</table>")
    return out


def _notes(report: dict[str, Any]) -> list[str]:
    """The batching decisions, one sentence each."""
    out = []
    if report.get("batching"):
        out.append(f"<p>Cross-request batching: {_e(report['batching'].get('reason'))}.</p>")
    for target, d in (report.get("target_batching") or {}).items():
        out.append(f"<p>Cross-request batching in <code>{_e(target)}</code>'s server: {_e(d.get('reason'))}.</p>")
    return out


def _gates(gates: list[dict[str, Any]]) -> list[str]:
    if not gates:
        return []
    out = ['<h2>Gates</h2><table><tr><th class="l">artifact</th><th class="l">gate</th><th>limit</th>'
           "<th>measured</th><th>result</th></tr>"]
    for g in gates:
        ok = bool(g.get("passed"))
        shown = "n/a" if g.get("value") is None else _fmt(g["value"], "{:g}")
        result = '<span class="pass">pass</span>' if ok else '<span class="fail">FAIL</span>'
        out.append(f'<tr{"" if ok else " class=failed"}><td class="l">{_e(g.get("artifact"))}</td>'
                   f'<td class="l">{_e(g.get("gate"))}</td><td>{_fmt(g.get("limit"), "{:g}")}</td>'
                   f"<td>{shown}</td><td>{result}</td></tr>")
    out.append("</table>")
    return out


def _explanation(report: dict[str, Any]) -> list[str]:
    ex = report.get("explanation")
    if not ex:
        return []
    top_k = int(ex.get("top_k") or 5)
    out = ["<h2>Explanation</h2>",
           f"<p>{_e(ex.get('method'))} on the first {_fmt(ex.get('sample'), '{:g}')} rows of data.eval, baseline "
           f"<code>{_e(ex.get('baseline'))}</code>. Global importance: mean |attribution| per feature; the "
           "verification table's attribution agreement is the smallest of rank correlation, top-k overlap and "
           "per-row correlation against the original.</p>",
           f'<table><tr><th class="l">model</th><th class="l">top {top_k} features (importance)</th></tr>']
    models = ex.get("models") or {}
    for name in C.model_order(report, models):
        summary = models[name]
        top = ", ".join(f"<code>{_e(t.get('feature'))}</code> {_fmt(t.get('importance'), '{:.3g}')}"
                        for t in (summary.get("top") or [])[:top_k])
        out.append(f'<tr><td class="l">{_e(name)}</td><td class="l">{top}</td></tr>')
    out.append("</table>")
    return out


def _candidates(report: dict[str, Any]) -> list[str]:
    """The `quantize: auto` candidates of each pass: what was tried, what was kept and why."""
    out = []
    for p in report.get("passes") or []:
        rows = (p.get("details") or {}).get("candidates") or []
        if not rows:
            continue
        out.append(f"<h3>Candidates of <code>{_e(p.get('step'))}</code></h3><table><tr><th class=\"l\">mode</th>"
                   '<th class="l">runtime</th><th>size</th><th>p50 ms</th><th>agreement</th><th>kept</th>'
                   '<th class="l">why</th></tr>')
        for r in rows:
            f = r.get("figures") or {}
            out.append(f'<tr><td class="l">{_e(r.get("mode"))}</td><td class="l">{_e(r.get("runtime", "–"))}</td>'
                       f'<td>{_fmt(f.get("size_bytes"), "bytes")}</td>'
                       f'<td>{_fmt(f.get("latency_p50_ms"), "{:.3f}")}</td>'
                       f'<td>{_fmt(f.get("agreement"), "{:.4f}")}</td><td>{"yes" if r.get("kept") else "no"}</td>'
                       f'<td class="l">{_e(r.get("why", ""))}</td></tr>')
        out.append("</table>")
    return (["<h2>Passes</h2>"] + out) if out else []


def _steps(report: dict[str, Any]) -> list[str]:
    steps = report.get("steps") or []
    if not steps:
        return []
    out = ["<h2>Steps</h2><ol>"]
    out += [f"<li><code>{_e(s.get('id'))}</code> {_e(s.get('description'))} <code>{_e(str(s.get('key', ''))[:12])}"
            "</code></li>" for s in steps]
    out.append("</ol>")
    return out
