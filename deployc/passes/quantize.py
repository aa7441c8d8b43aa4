"""The `quantize` pass: ONNX in, one smaller ONNX out (int8 dynamic, int8 static, float16, or the best of them).

`auto` builds every candidate, has each evaluated against the reference model (the spec's gates), and keeps the
smallest that passes; near-ties in size go to the faster batch-1 p50. If none passes it fails the build with a
table of candidates rather than silently shipping the unoptimized model.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from deployc.errors import GateError, InputError
from deployc.passes.base import Format, Pass, PassInput, PassResult
from deployc.schema.base import Located, SpecModel

if TYPE_CHECKING:
    from deployc.schema.spec import DeploySpec

MODEL_FILE = "model.onnx"
SIZE_TIE = 0.05  # within 5% of the smallest size counts as tied (int8 variants differ only by scales and
# the layers kept float); the faster p50 wins: on a CNN int8-dynamic is 3% smaller but 6x slower than int8-static
FIGURES = ("size_bytes", "gzip_bytes", "latency_p50_ms", "latency_p99_ms", "throughput_rows_s", "agreement",
           "accuracy", "max_abs_error")
QuantizeMode = Literal["int8-dynamic", "int8-static", "float16", "auto"]
QuantizeCandidate = Literal["int8-dynamic", "int8-static", "float16"]


def _all_candidates() -> list[QuantizeCandidate]:
    return ["int8-dynamic", "int8-static", "float16"]


class QuantizeConfig(SpecModel):
    mode: QuantizeMode = Field("int8-dynamic", description="int8-dynamic (MatMul-heavy models), int8-static "
                               "(CNNs; needs data.calibration), float16, or auto (try candidates, keep the best "
                               "that passes the gates).")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "percentile", description="How int8-static picks activation ranges from data.calibration.")
    per_channel: bool = Field(True, description="Per-channel weight scales for int8-static.")
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs with AVX2/AVX512 but no VNNI.")
    percentile: float = Field(99.999, gt=90.0, le=100.0, description="With calibration_method percentile: the "
                              "share of calibration values (in percent) each activation range covers.")
    keep_edges_float: bool = Field(True, description="int8-static: leave the first Conv and the output head "
                                   "(last MatMul/Gemm and what follows it) in float: the layers int8 hurts most.")
    keep_softmax_float: bool = Field(True, description="int8-static: leave every Softmax and the node that feeds it "
                                     "in float: attention scores hold masks of -1e38, whose range leaves no int8 "
                                     "step for the real scores.")
    activation_type: Literal["int8", "uint8"] = Field(
        "int8", description="int8-static activations: int8 (S8S8), or uint8 (U8S8), which onnxruntime's CPU "
        "kernels run faster on some CNNs (a tensor feeding two nodes, as residual branches do, keeps S8S8 in "
        "float).")
    exclude_ops: list[str] = Field(default_factory=list, description="ONNX op types left in float (e.g. Softmax).")
    candidates: list[QuantizeCandidate] = Field(
        default_factory=_all_candidates,
        description="Modes `auto` tries, in order of preference when two tie.")


DATA_BY_MODE: dict[str, tuple[str, ...]] = {
    "int8-dynamic": (), "int8-static": ("calibration",), "float16": (), "auto": ("eval",),
}


def data_needed_for(config: QuantizeConfig) -> tuple[str, ...]:
    """Data sets a run with `config` reads: calibration only for static int8, eval for auto's comparisons."""
    needed = set(DATA_BY_MODE[config.mode])
    if config.mode == "auto" and "int8-static" in config.candidates:
        needed.add("calibration")
    return tuple(sorted(needed))


def quantize_once(mode: str, src: Path, dst: Path, config: QuantizeConfig, inp: PassInput) -> dict[str, Any]:
    """Write `src` quantized with one concrete mode to `dst`; details say exactly which recipe ran."""
    from deployc.ml import quantize as q

    if mode == "int8-dynamic":
        return q.quantize_dynamic_onnx(src, dst, reduce_range=config.reduce_range, exclude_ops=config.exclude_ops)
    if mode == "float16":
        return q.float16_onnx(src, dst, exclude_ops=config.exclude_ops)
    if mode == "int8-static":
        try:
            x, _ = inp.data("calibration")
        except ValueError as exc:
            raise InputError(f"quantize int8-static needs data.calibration ({exc})") from None
        return q.quantize_static_onnx(src, dst, x, method=config.calibration_method, per_channel=config.per_channel,
                                      reduce_range=config.reduce_range, exclude_ops=config.exclude_ops,
                                      keep_edges_float=config.keep_edges_float, percentile=config.percentile,
                                      keep_softmax_float=config.keep_softmax_float,
                                      activation_type=config.activation_type, log=inp.log,
                                      progress=inp.progress)
    raise InputError(f"unknown quantize mode {mode!r}")


class QuantizePass(Pass):
    name: ClassVar[str] = "quantize"
    config_model: ClassVar[type[QuantizeConfig]] = QuantizeConfig
    input_format: ClassVar[Format] = "onnx"
    output_format: ClassVar[Format] = "onnx"
    libs: ClassVar[tuple[str, ...]] = ("onnx", "onnxruntime")
    data_needed: ClassVar[tuple[str, ...]] = ("calibration", "eval")  # at most; see data_needed_for(config)

    def data_needed_for(self, config: QuantizeConfig) -> tuple[str, ...]:
        return data_needed_for(config)

    def variant(self, config: QuantizeConfig) -> str:
        return config.mode

    def check(self, spec: DeploySpec, index: int) -> list[Located]:
        config: QuantizeConfig = self.config_in(spec, index)
        loc = ("optimize", index, self.name, "mode")
        needed = data_needed_for(config)
        problems: list[Located] = []
        if "calibration" in needed and spec.data.calibration is None:
            problems.append((loc, f"{config.mode} needs calibration data: set data.calibration"))
        if "eval" in needed and spec.data.eval is None:
            problems.append((loc, "auto picks the best candidate on data.eval, which is not set"))
        return problems

    def apply(self, inp: PassInput) -> PassResult:
        config: QuantizeConfig = inp.config
        inp.out_dir.mkdir(parents=True, exist_ok=True)
        dst = inp.out_dir / MODEL_FILE
        if config.mode == "auto":
            return self._auto(inp, config, dst)
        details = quantize_once(config.mode, inp.model, dst, config, inp)
        return PassResult(model=dst, details={"mode": config.mode, **details})

    def _auto(self, inp: PassInput, config: QuantizeConfig, dst: Path) -> PassResult:
        rows: list[dict[str, Any]] = []
        with (tempfile.TemporaryDirectory(prefix="deployc-auto-") as tmp,
              inp.progress.task("quantize auto", total=len(config.candidates), unit="candidate") as task):
            for i, mode in enumerate(config.candidates):
                path = Path(tmp) / f"{i}-{mode}.onnx"
                row: dict[str, Any] = {"mode": mode}
                task.status(mode)
                try:
                    row["details"] = quantize_once(mode, inp.model, path, config, inp)
                    figures = inp.evaluate(path)
                except InputError as exc:  # no calibration data, or a model the runtime cannot load
                    what = "not evaluated" if "details" in row else "not built"
                    rows.append({**row, "kept": False, "why": f"{what}: {exc}", "gate_failures": []})
                    inp.log(f"quantize auto: {mode} {what} ({exc})")
                    task.advance(status=f"{mode} {what}")
                    continue
                row["figures"] = {k: figures[k] for k in FIGURES if k in figures}
                row["gate_failures"] = list(figures.get("gate_failures", []))
                row["path"] = path
                rows.append(row)
                task.advance(status=f"{mode} evaluated")
            chosen = choose(rows, config.candidates)
            if chosen is None:
                table = candidate_table(rows)
                raise GateError(f"quantize auto: no candidate passes the gates (tried "
                                f"{', '.join(config.candidates)})", table=table)
            shutil.copyfile(chosen["path"], dst)
        for row in rows:
            row.pop("path", None)
        inp.log(f"quantize auto: kept {chosen['mode']}")
        return PassResult(model=dst, details={"mode": "auto", "chosen": chosen["mode"], "candidates": rows,
                                              **chosen.get("details", {})})


def choose(rows: list[dict[str, Any]], order: Sequence[str]) -> dict[str, Any] | None:
    """Mark each built row kept or dropped (with why) and return the kept one, or None if none passes."""
    built = [r for r in rows if "figures" in r]
    for r in built:
        if r["gate_failures"]:
            r.update(kept=False, why="gates failed: " + "; ".join(r["gate_failures"]))
    passing = [r for r in built if not r["gate_failures"]]
    if not passing:
        return None
    smallest = min(r["figures"]["size_bytes"] for r in passing)
    tied = [r for r in passing if r["figures"]["size_bytes"] <= smallest * (1 + SIZE_TIE)]
    best = min(tied, key=lambda r: (r["figures"].get("latency_p50_ms", 0.0), order.index(r["mode"])))
    for r in passing:
        if r is best:
            r.update(kept=True, why="smallest passing candidate" + (
                " (size tie broken by faster p50)" if len(tied) > 1 else ""))
        elif r in tied:
            r.update(kept=False, why=f"size ties with {best['mode']}, slower p50 "
                     f"({r['figures'].get('latency_p50_ms')} ms vs {best['figures'].get('latency_p50_ms')} ms)")
        else:
            r.update(kept=False, why=f"passes, but larger than {best['mode']} "
                     f"({r['figures']['size_bytes']} vs {best['figures']['size_bytes']} bytes)")
    return best


def candidate_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of candidates and their failures, for the GateError a user sees."""
    head = ("candidate", "size_bytes", "p50_ms", "agreement", "accuracy", "why dropped")
    lines = [head]
    for r in rows:
        f = r.get("figures", {})
        lines.append((r["mode"], str(f.get("size_bytes", "-")), str(f.get("latency_p50_ms", "-")),
                      str(f.get("agreement", "-")), str(f.get("accuracy", "-")), r.get("why", "")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
                     for line in lines)
