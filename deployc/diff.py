"""`deployc diff OLD NEW`: what changed between two build folders, as Markdown for a pull-request comment."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deployc import conventions as c
from deployc.manifest import read_manifest
from deployc.render import md_code, md_text

FIGURES = (("accuracy", "{:.4f}"), ("auc", "{:.4f}"), ("r2", "{:.4f}"), ("agreement", "{:.4f}"),
           ("max_abs_error", "{:.2e}"), ("relative_error", "{:.2e}"), ("size_bytes", "{:,}"),
           ("gzip_bytes", "{:,}"), ("latency_p50_ms", "{:.3f}"), ("latency_p99_ms", "{:.3f}"))


def _report(build: Path) -> dict[str, Any]:
    try:
        return json.loads((build / c.REPORT_JSON).read_text())
    except (OSError, ValueError):
        return {"artifacts": [], "gates": []}


def diff_builds(old: Path, new: Path) -> dict[str, Any]:
    a, b = read_manifest(old), read_manifest(new)
    fa, fb = a["files"], b["files"]
    files = {
        "added": [{"path": p, "size": fb[p]["size"]} for p in sorted(set(fb) - set(fa))],
        "removed": [{"path": p, "size": fa[p]["size"]} for p in sorted(set(fa) - set(fb))],
        "changed": [{"path": p, "old_size": fa[p]["size"], "new_size": fb[p]["size"]}
                    for p in sorted(set(fa) & set(fb)) if fa[p]["sha256"] != fb[p]["sha256"] and p != c.MANIFEST],
    }
    ra, rb = _report(old), _report(new)
    arts_a = {x["artifact"]: x["evaluation"] for x in ra.get("artifacts", [])}
    arts_b = {x["artifact"]: x["evaluation"] for x in rb.get("artifacts", [])}
    figures = []
    for art in sorted(set(arts_a) | set(arts_b)):
        for key, _ in FIGURES:
            va, vb = arts_a.get(art, {}).get(key), arts_b.get(art, {}).get(key)
            if va != vb:
                figures.append({"artifact": art, "figure": key, "old": va, "new": vb})
    gates = [{"artifact": g["artifact"], "gate": g["gate"], "passed": g["passed"], "value": g["value"]}
             for g in rb.get("gates", []) if not g["passed"]]
    versions = {k: [a["versions"].get(k), b["versions"].get(k)] for k in sorted(set(a["versions"]) | set(b["versions"]))
                if a["versions"].get(k) != b["versions"].get(k)}
    return {"old": str(old), "new": str(new), "name": [a["name"], b["name"]], "version": [a["version"], b["version"]],
            "files": files, "figures": figures, "failed_gates": gates, "versions": versions,
            "identical": not (files["added"] or files["removed"] or files["changed"])}


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "–"
    return dict(FIGURES)[key].format(value) if _is_number(value) else md_text(value)


def _size(value: Any) -> str:
    return f"{value:,}" if _is_number(value) else md_text(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def render_markdown(d: dict[str, Any]) -> str:
    """Markdown for a pull-request comment. The build folders may come from the pull request itself, so every
    value read from them is escaped for where it stands (render.md_text / md_code), numbers included when
    they are not numbers."""
    lines = [f"### deployc: {md_code(d['name'][1])} {md_text(d['version'][0])} → {md_text(d['version'][1])}", ""]
    if d["identical"]:
        return "\n".join(lines + ["No changes: the two builds are byte-identical.", ""])
    f = d["files"]
    lines += [f"{len(f['added'])} added, {len(f['removed'])} removed, {len(f['changed'])} changed files.", ""]
    if any(f.values()):
        lines += ["| file | change | size |", "|---|---|---|"]
        lines += [f"| {md_code(x['path'], in_table=True)} | added | {_size(x['size'])} |" for x in f["added"]]
        lines += [f"| {md_code(x['path'], in_table=True)} | removed | {_size(x['size'])} |" for x in f["removed"]]
        lines += [f"| {md_code(x['path'], in_table=True)} | changed | {_size(x['old_size'])} → "
                  f"{_size(x['new_size'])} |" for x in f["changed"]]
        lines.append("")
    if d["figures"]:
        lines += ["| artifact | figure | old | new |", "|---|---|---|---|"]
        lines += [f"| {md_text(x['artifact'])} | {md_text(x['figure'])} | {_fmt(x['figure'], x['old'])} | "
                  f"{_fmt(x['figure'], x['new'])} |" for x in d["figures"]]
        lines.append("")
    if d["versions"]:
        lines += ["Library versions: " + ", ".join(f"{md_text(k)} {md_text(v[0])} → {md_text(v[1])}"
                                                   for k, v in d["versions"].items()), ""]
    return "\n".join(lines)
