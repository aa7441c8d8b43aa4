"""report.json and report.md: what each step did and measured, reference vs every artifact."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deployc.compiler import results
from deployc.compiler.content import read_labels
from deployc.compiler.gates import GateCheck
from deployc.compiler.plan import Plan
from deployc.compiler.results import ModelResult
from deployc.compiler.steps import EXPLAIN, StepOutput
from deployc.render import md_code, md_text
from deployc.targets import get_target
from deployc.targets.bundle import decide, ships_serving_json
from deployc.targets.invariance import INVARIANCE

# (figure key, column title, format); the latency and throughput figures come from deployc.ml.measure, one
# definition for every artifact kind, so the columns compare like with like
COLUMNS = (
    ("accuracy", "accuracy", "{:.4f}"),
    ("auc", "AUC", "{:.4f}"),
    ("r2", "R²", "{:.4f}"),
    ("agreement", "agreement", "{:.4f}"),
    ("attribution_agreement", "attribution agr.", "{:.4f}"),  # deployc.ml.explain.agreement (with `explain:`)
    ("max_abs_error", "max abs err", "{:.2e}"),
    ("relative_error", "rel err", "{:.2e}"),
    ("size_bytes", "size", "bytes"),
    ("gzip_bytes", "gzip", "bytes"),
    ("latency_p50_ms", "p50 ms", "{:.3f}"),
    ("latency_p99_ms", "p99 ms", "{:.3f}"),
    ("throughput_rows_s", "rows/s", "{:,.0f}"),
)


def make_report(plan: Plan, outputs: dict[str, StepOutput], checks: list[GateCheck]) -> dict[str, Any]:
    ref = results.reference(outputs)
    artifacts = []
    base: dict[str, Any] | None = None
    for sid, r in results.evaluations(plan, outputs):
        ev = dict(r.evaluation)
        if base is None:
            base = ev
        if base.get("size_bytes") and ev.get("size_bytes"):
            ev["size_ratio"] = round(ev["size_bytes"] / base["size_bytes"], 4)
        if base.get("latency_p50_ms") and ev.get("latency_p50_ms"):
            ev["speedup_p50"] = round(base["latency_p50_ms"] / ev["latency_p50_ms"], 3)
        artifacts.append({"artifact": r.artifact, "step": sid, "shipped": r.shipped, "evaluation": ev})
    passes = [{"step": u.step_id, "details": dict(ModelResult.from_json(outputs[u.step_id].result).details or {})}
              for u in plan.resolved.passes]
    return {
        "name": plan.resolved.name,
        "version": plan.resolved.version,
        "spec_sha256": plan.spec_sha256,
        "reference": dict(ref.evaluation) if ref else None,
        "artifacts": artifacts,
        "passes": passes,
        "gates": [{"artifact": c.artifact, "gate": c.gate, "limit": c.limit, "value": c.value, "passed": c.passed}
                  for c in checks],
        "steps": [{"id": s.id, "description": s.description, "key": plan.keys[s.id]} for s in plan.steps],
        "targets": list(plan.targets),
        "runtime": _runtime(plan, outputs),
        "batching": _batching(plan, outputs),
        "target_batching": _target_batching(plan, outputs),
        **_explanation(plan, outputs, [(str(a["step"]), str(a["artifact"])) for a in artifacts]),
    }


def _runtime(plan: Plan, outputs: dict[str, StepOutput]) -> str:
    """What runs the shipped artifact in `deployc serve`: onnxruntime, or openvino (quantize openvino-int8)."""
    return "openvino" if outputs[plan.final_step].result.get("format") == "openvino" else "onnxruntime"


def _explanation(plan: Plan, outputs: dict[str, StepOutput], artifacts: list[tuple[str, str]]) -> dict[str, Any]:
    """{"explanation": ...}: the method, the features, and each model's attribution summary (docs/explain.md)."""
    ex = plan.resolved.explain
    if ex is None or EXPLAIN not in outputs:
        return {}
    ref = outputs[EXPLAIN].result
    models = {"reference": ref["summary"]}
    for sid, name in artifacts:
        found = outputs[sid].result.get("explanation")
        if found is not None:
            models[name] = found
    labels = read_labels(plan.resolved.labels) if plan.resolved.labels else None
    classes = list(labels) if labels and len(labels) == ref["classes"] else None
    return {"explanation": {"method": ex.method, "sample": ref["rows"],
                            "top_k": ex.top_k, "baseline": ex.baseline, "features": ref["features"],
                            "inputs": ref["inputs"], "images": dict(ex.images), "classes": classes,
                            "models": models}}


def _batching(plan: Plan, outputs: dict[str, StepOutput]) -> dict[str, Any] | None:
    """Whether the serving.json bundles batch requests together, and the batch-invariance figures behind it."""
    if INVARIANCE not in outputs or not ships_serving_json(plan.spec):
        return None
    d = decide(plan.spec, {INVARIANCE: outputs[INVARIANCE].result})
    return {"enabled": d.enabled, "reason": d.reason, "batch_invariant": d.figures}


def _target_batching(plan: Plan, outputs: dict[str, StepOutput]) -> dict[str, Any]:
    """The same, for targets that ship a model server of their own (Triton's dynamic batcher)."""
    results = {sid: out.result for sid, out in outputs.items()}
    found: dict[str, Any] = {}
    for name in plan.targets:
        d = get_target(name).batching(plan.spec, results)
        if d is not None:
            found[name] = {"enabled": d.enabled, "reason": d.reason}
    return found


def _fmt(value: Any, how: str) -> str:
    if value is None:
        return "–"
    if how == "bytes":
        return f"{value / 1024:,.1f} KiB" if value < 1024 * 1024 else f"{value / 1048576:,.2f} MiB"
    return how.format(value)


def render_markdown(report: dict[str, Any], spec_file: str, charts: Sequence[str] = ()) -> str:
    """report.md. Every name, path and message is escaped for where it stands (render.md_text / md_code); the
    figures are numbers deployc formats itself. `charts`: the lines that embed report.html's SVG charts."""
    lines = [f"# deployc build report: {md_text(report['name'])} {md_text(report['version'])}", "",
             f"Spec {md_code(spec_file)} (sha256 {md_code(report['spec_sha256'][:16])}).", ""]
    if report["artifacts"] or report["reference"]:
        lines += ["## Verification (data.eval, this machine)", ""]
        cols = [c for c in COLUMNS if any(c[0] in a["evaluation"] for a in report["artifacts"])
                or (report["reference"] and c[0] in report["reference"])]
        head = ["artifact"] + [t for _, t, _ in cols] + ["size ×", "speed-up"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        if report["reference"]:
            ref = report["reference"]
            lines.append("| reference (original) | " + " | ".join(_fmt(ref.get(k), f) for k, _, f in cols)
                         + " | – | – |")
        for a in report["artifacts"]:
            ev = a["evaluation"]
            name = md_text(a["artifact"]) + (" **(shipped)**" if a["shipped"] else "")
            ratio = f"{ev['size_ratio']:.3f}" if "size_ratio" in ev else "–"
            speed = f"{ev['speedup_p50']:.2f}x" if "speedup_p50" in ev else "–"
            lines.append(f"| {name} | " + " | ".join(_fmt(ev.get(k), f) for k, _, f in cols)
                         + f" | {ratio} | {speed} |")
        lines.append("")
    if report.get("runtime"):
        files = "`model.xml` + `model.bin`" if report["runtime"] == "openvino" else "`model.onnx`"
        engine = md_text(RUNTIME_NAMES.get(report["runtime"], report["runtime"]))
        lines += [f"The shipped artifact ({files}) runs on {engine} in `deployc serve`.", ""]
    if report.get("batching"):
        lines += [f"Cross-request batching: {md_text(report['batching']['reason'])}.", ""]
    for name, d in report.get("target_batching", {}).items():
        lines += [f"Cross-request batching in {md_code(name)}'s server: {md_text(d['reason'])}.", ""]
    if report["gates"]:
        lines += ["## Gates", "", "| artifact | gate | limit | measured | result |", "|---|---|---|---|---|"]
        for g in report["gates"]:
            shown = "n/a" if g["value"] is None else f"{g['value']:g}"
            lines.append(f"| {md_text(g['artifact'])} | {md_text(g['gate'])} | {g['limit']:g} | {shown} | "
                         f"{'pass' if g['passed'] else '**FAIL**'} |")
        lines.append("")
    lines += _explanation_lines(report.get("explanation"))
    if charts:
        lines += ["## Charts", "", "The same charts, with the tables, are in `report.html` (one file, no network).", "",
                  *charts, ""]
    if report["passes"]:
        lines += ["## Passes", ""]
        for p in report["passes"]:
            lines.append(f"- {md_code(p['step'])}: " + ", ".join(f"{md_text(k)}={_short(v)}"
                                                              for k, v in sorted(p["details"].items())
                                                              if k != "candidates"))
        lines.append("")
        for p in report["passes"]:
            lines += _candidate_lines(p)
    lines += ["## Steps", "", "| step | what | key |", "|---|---|---|"]
    lines += [f"| {md_code(s['id'], in_table=True)} | {md_text(s['description'])} | {md_code(s['key'][:12])} |"
              for s in report["steps"]]
    return "\n".join(lines) + "\n"


RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def _candidate_lines(p: dict[str, Any]) -> list[str]:
    """quantize auto's candidates: each one's runtime, figures, and why it was kept or dropped."""
    rows = p["details"].get("candidates")
    if not isinstance(rows, list) or not rows:
        return []
    objective = p["details"].get("objective", "size")
    lines = [f"### {md_code(p['step'])}: auto's candidates (objective {md_text(objective)})", "",
             "| candidate | runtime | size | p50 ms | agreement | kept | why |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r.get("figures") or {}
        lines.append(f"| {md_text(r.get('mode', '?'))} | {md_text(RUNTIME_NAMES.get(r.get('runtime', ''), '–'))} | "
                     f"{_fmt(f.get('size_bytes'), 'bytes')} | {_fmt(f.get('latency_p50_ms'), '{:.4f}')} | "
                     f"{_fmt(f.get('agreement'), '{:.4f}')} | {'**yes**' if r.get('kept') else 'no'} | "
                     f"{_short(r.get('why', ''))} |")
    return [*lines, ""]


def _explanation_lines(ex: dict[str, Any] | None) -> list[str]:
    """The explanation section: method, and each model's most important features with their agreement."""
    if not ex:
        return []
    lines = ["## Explanation", "", f"{md_text(ex['method'])} on the first {ex['sample']} rows of data.eval, baseline "
             f"{md_code(str(ex['baseline']))}; global importance = mean |attribution| per feature.", "",
             f"| model | top {ex['top_k']} features (importance) |", "|---|---|"]
    for name, summary in ex["models"].items():
        top = ", ".join(f"{md_code(t['feature'], in_table=True)} ({t['importance']:.3g})"
                        for t in summary["top"][:ex["top_k"]])
        lines.append(f"| {md_text(name)} | {top} |")
    return [*lines, ""]


def _short(value: Any) -> str:
    text = str(value)
    return md_text(text if len(text) <= 120 else text[:117] + "...")
