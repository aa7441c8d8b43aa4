"""report.html: the build report as one self-contained page (inline CSS and SVG charts, no script, nothing
fetched), and the same charts as files under charts/ that report.md embeds. Every string from the build (names,
messages, features) is escaped; the figures are numbers formatted here."""
from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

from deployc.compiler import charts as C

CHARTS_DIR = "charts"
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;color:#1b1f24;
padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
.sub{color:#57606a}.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.6rem 1rem;min-width:10rem}
.card b{display:block;font-size:1.3rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:13px}th,td{border:1px solid #d0d7de;padding:.25rem .6rem;
text-align:right}th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:700}
figure{margin:1rem 0}figcaption{color:#57606a;font-size:13px}svg{max-width:100%;height:auto}
code{background:#f6f8fa;padding:0 .25rem;border-radius:3px}
"""
COLUMNS = (("accuracy", "accuracy", "{:.4f}"), ("auc", "AUC", "{:.4f}"), ("r2", "R²", "{:.4f}"),
           ("agreement", "agreement", "{:.4f}"), ("attribution_agreement", "attribution agr.", "{:.4f}"),
           ("size_bytes", "size KiB", "kib"), ("latency_p50_ms", "p50 ms", "{:.3f}"),
           ("latency_p99_ms", "p99 ms", "{:.3f}"), ("throughput_rows_s", "rows/s", "{:,.0f}"))


def visual_report(report: dict[str, Any], spec_file: str) -> dict[str, bytes]:
    """{"report.html": ..., "charts/<name>.svg": ...} for a report.json document."""
    drawn = C.charts(report)
    files = {f"{CHARTS_DIR}/{name}": svg for name, _, svg in drawn}
    files["report.html"] = _page(report, spec_file, drawn).encode()
    return files


def chart_links(files: Mapping[str, bytes]) -> list[str]:
    """Markdown lines embedding the SVG charts, for report.md."""
    titles = {name: title for name, title, _ in _known()}
    lines = []
    for rel in sorted(files, key=_order):
        if rel.startswith(f"{CHARTS_DIR}/") and rel.endswith(".svg"):
            name = rel.split("/", 1)[1]
            lines.append(f"![{titles.get(name, name)}]({rel})")
    return lines


def _known() -> list[tuple[str, str, None]]:
    return [("pareto.svg", "Size vs latency vs metric", None), ("latency.svg", "Latency distribution", None),
            ("confusion.svg", "Confusion matrix", None), ("attributions.svg", "Attribution maps per class", None),
            ("importance.svg", "Feature importance", None)]


def _order(rel: str) -> int:
    names = [n for n, _, _ in _known()]
    name = rel.split("/", 1)[-1]
    return names.index(name) if name in names else len(names)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, how: str) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    if how == "kib":
        return f"{value / 1024:,.1f}"
    return how.format(value)


_XML_HEAD = re.compile(r"^\s*<\?xml[^>]*\?>\s*(<!DOCTYPE[^>]*>\s*)?", re.S)


def _inline(svg: bytes) -> str:
    """The SVG as an element of the page: no XML declaration or doctype."""
    return _XML_HEAD.sub("", svg.decode())


def _page(report: dict[str, Any], spec_file: str, drawn: list[C.Chart]) -> str:
    name, version = _e(report["name"]), _e(report["version"])
    gates = report.get("gates", [])
    failed = sum(1 for g in gates if not g["passed"])
    shipped = [a["artifact"] for a in report.get("artifacts", []) if a.get("shipped")]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>deployc report: {name} {version}</title><style>{CSS}</style></head><body>",
        f"<h1>{name} {version}</h1>",
        f'<p class="sub">deployc build report · spec <code>{_e(spec_file)}</code> · sha256 '
        f'<code>{_e(report["spec_sha256"][:16])}</code></p>',
        '<div class="cards">',
        f'<div class="card">shipped<b>{_e(", ".join(shipped) or "–")}</b></div>',
        f'<div class="card">gates<b class="{"fail" if failed else "pass"}">'
        f'{len(gates) - failed} / {len(gates)} pass</b></div>',
        f'<div class="card">targets<b>{_e(", ".join(report.get("targets", [])) or "–")}</b></div>',
        "</div>",
    ]
    parts += _verification(report)
    for file, title, svg in drawn:
        parts.append(f'<figure id="{_e(file.removesuffix(".svg"))}">{_inline(svg)}<figcaption>{_e(title)} '
                     f'(<code>{CHARTS_DIR}/{_e(file)}</code>)</figcaption></figure>')
    parts += _gates(gates) + _explanation(report.get("explanation")) + _steps(report)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _verification(report: dict[str, Any]) -> list[str]:
    rows = ([("reference (original)", report["reference"], False)] if report.get("reference") else []) + [
        (a["artifact"], a["evaluation"], a.get("shipped", False)) for a in report.get("artifacts", [])]
    if not rows:
        return []
    cols = [c for c in COLUMNS if any(c[0] in ev for _, ev, _ in rows)]
    out = ["<h2>Verification (data.eval, this machine)</h2><table><tr><th>artifact</th>"
           + "".join(f"<th>{_e(t)}</th>" for _, t, _ in cols) + "</tr>"]
    for label, ev, shipped in rows:
        out.append(f"<tr><td>{_e(label)}{' <b>(shipped)</b>' if shipped else ''}</td>"
                   + "".join(f"<td>{_fmt(ev.get(k), f)}</td>" for k, _, f in cols) + "</tr>")
    out.append("</table>")
    return out


def _gates(gates: list[dict[str, Any]]) -> list[str]:
    if not gates:
        return []
    out = ["<h2>Gates</h2><table><tr><th>artifact</th><th>gate</th><th>limit</th><th>measured</th>"
           "<th>result</th></tr>"]
    for g in gates:
        shown = "n/a" if g["value"] is None else f"{g['value']:g}"
        result = '<span class="pass">pass</span>' if g["passed"] else '<span class="fail">FAIL</span>'
        out.append(f"<tr><td>{_e(g['artifact'])}</td><td>{_e(g['gate'])}</td><td>{g['limit']:g}</td>"
                   f"<td>{_e(shown)}</td><td>{result}</td></tr>")
    out.append("</table>")
    return out


def _explanation(ex: dict[str, Any] | None) -> list[str]:
    if not ex:
        return []
    out = ["<h2>Explanation</h2>",
           f"<p>{_e(ex['method'])} on the first {int(ex['sample'])} rows of data.eval, baseline "
           f"<code>{_e(ex['baseline'])}</code>. Global importance: mean |attribution| per feature.</p>",
           f"<table><tr><th>model</th><th>top {int(ex['top_k'])} features (importance)</th></tr>"]
    for name, summary in ex["models"].items():
        top = ", ".join(f"<code>{_e(t['feature'])}</code> {t['importance']:.3g}" for t in summary["top"][:ex["top_k"]])
        out.append(f"<tr><td>{_e(name)}</td><td style='text-align:left'>{top}</td></tr>")
    out.append("</table>")
    return out


def _steps(report: dict[str, Any]) -> list[str]:
    out = ["<h2>Steps</h2><table><tr><th>step</th><th>what</th><th>key</th></tr>"]
    out += [f"<tr><td><code>{_e(s['id'])}</code></td><td style='text-align:left'>{_e(s['description'])}</td>"
            f"<td><code>{_e(s['key'][:12])}</code></td></tr>" for s in report.get("steps", [])]
    out.append("</table>")
    return out
