"""The `quantize` pass: ONNX in, one quantized artifact out: an ONNX model for onnxruntime (int8 dynamic, int8
static per-channel or per-tensor, float16) or an OpenVINO model (NNCF post-training int8), or the best of them.

`auto` builds every candidate, has each evaluated against the reference model (the spec's gates, the same
measurement for every runtime), and keeps the best that passes: by default the fastest batch-1 p50, near-ties
(within 5%) going to the smaller artifact; with `objective: throughput` the most rows a second; with
`objective: size` the smallest, near-ties going to the faster.
If none passes it fails the build with a table of candidates rather than silently shipping the unoptimized model.

An OpenVINO artifact is served by `deployc serve` (its own runtime beside onnxruntime); targets that load ONNX files
themselves (Triton's onnxruntime backend, KServe's onnx runtime) cannot take it: with such a target `auto`'s
default candidates leave the OpenVINO modes out, and naming one is an error `deployc validate` reports.
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
OPENVINO_DIR = "openvino"  # an OpenVINO artifact: this folder, holding model.xml and model.bin
OPENVINO = "openvino-int8"
OPENVINO_BATCH1 = "openvino-int8-batch1"  # the same, with the batch axis fixed to 1
OPENVINO_MODES = (OPENVINO, OPENVINO_BATCH1)
SIZE_TIE = 0.05  # within 5% of the smallest size counts as tied (int8 variants differ only by scales and
# the layers kept float); the faster p50 wins: on a CNN int8-dynamic is 3% smaller but 6x slower than int8-static
LATENCY_TIE = 0.05  # objective latency: within 5% of the fastest p50 counts as tied; the smaller artifact wins
FIGURES = ("size_bytes", "gzip_bytes", "latency_p50_ms", "latency_p99_ms", "throughput_rows_s", "agreement",
           "accuracy", "max_abs_error")
QuantizeMode = Literal["int8-dynamic", "int8-static", "int8-static-per-tensor", "float16", "openvino-int8",
                       "openvino-int8-batch1", "auto"]
QuantizeCandidate = Literal["int8-dynamic", "int8-static", "int8-static-per-tensor", "float16", "openvino-int8",
                            "openvino-int8-batch1"]
CANDIDATES: tuple[QuantizeCandidate, ...] = ("int8-dynamic", "int8-static", "int8-static-per-tensor", "float16",
                                             "openvino-int8", "openvino-int8-batch1")
RUNTIMES = {m: ("openvino" if m in OPENVINO_MODES else "onnxruntime") for m in CANDIDATES}


def _all_candidates() -> list[QuantizeCandidate]:
    return list(CANDIDATES)


class OpenVINOSettings(SpecModel):
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="NNCF's preset: performance (symmetric weights and activations) or mixed "
        "(asymmetric activations: for activations that are not centred on zero, such as after GELU).")
    model_type: Literal["auto", "transformer", "default"] = Field(
        "auto", description="NNCF's transformer model type keeps attention's sensitive parts in float; auto uses "
        "it where the model has attention (a Softmax over a MatMul of two activations).")
    subset_size: int = Field(300, ge=1, le=100_000, description="Calibration rows NNCF reads (of data.calibration).")
    fast_bias_correction: bool = Field(True, description="NNCF's fast bias correction (off: the slower, more "
                                       "accurate one).")
    shapes: dict[str, list[int]] | None = Field(
        None, description="Static input shapes by input name, baked into the artifact (e.g. a fixed sequence "
        "length); -1 keeps an axis free. The batch axis (the first) is 1 or -1.")
    compress_to_fp16: bool = Field(False, description="Store the weights NNCF leaves in float as float16 in "
                                   "model.bin (computed in float32): smaller, slightly different answers.")


class QuantizeConfig(SpecModel):
    mode: QuantizeMode = Field("int8-dynamic", description="int8-dynamic (MatMul-heavy models), int8-static "
                               "(CNNs; needs data.calibration), int8-static-per-tensor (int8-static with one scale "
                               "per weight tensor), float16, openvino-int8 (an OpenVINO model quantized by NNCF; "
                               "needs data.calibration), openvino-int8-batch1 (the same with a static batch of 1, "
                               "OpenVINO's latency set-up: requests run a row at a time), or auto (try candidates, "
                               "keep the best that passes the gates).")
    objective: Literal["latency", "throughput", "size"] = Field(
        "latency", description="What auto keeps among the passing candidates: the fastest batch-1 p50, the most "
        "rows a second at measure.batch_size, or the smallest artifact; near-ties (5%) go to the smaller artifact "
        "(size: to the faster p50).")
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
        description="Modes `auto` tries, in order of preference when two tie. The default is every mode; with a "
        "target that loads ONNX files itself (triton, kserve's onnx runtime) it leaves the openvino modes out.")
    openvino: OpenVINOSettings = Field(default_factory=OpenVINOSettings,
                                       description="Settings of openvino-int8 (OpenVINO conversion, NNCF).")


DATA_BY_MODE: dict[str, tuple[str, ...]] = {
    "int8-dynamic": (), "int8-static": ("calibration",), "int8-static-per-tensor": ("calibration",),
    "float16": (), OPENVINO: ("calibration",), OPENVINO_BATCH1: ("calibration",), "auto": ("eval",),
}


def modes(config: QuantizeConfig) -> list[str]:
    """The concrete modes a run with `config` may build."""
    return list(config.candidates) if config.mode == "auto" else [config.mode]


def data_needed_for(config: QuantizeConfig) -> tuple[str, ...]:
    """Data sets a run with `config` reads: calibration for static int8 and OpenVINO, eval for auto's comparisons."""
    needed = set(DATA_BY_MODE[config.mode])
    for mode in modes(config):
        needed.update(DATA_BY_MODE[mode])
    return tuple(sorted(needed))


def artifact_name(mode: str) -> str:
    """The file (ONNX) or folder (OpenVINO) a mode writes in the step's output folder."""
    return OPENVINO_DIR if mode in OPENVINO_MODES else MODEL_FILE


def quantize_once(mode: str, src: Path, dst: Path, config: QuantizeConfig, inp: PassInput) -> dict[str, Any]:
    """Write `src` quantized with one concrete mode to `dst`; details say exactly which recipe ran."""
    from deployc.ml import quantize as q

    if mode == "int8-dynamic":
        return q.quantize_dynamic_onnx(src, dst, reduce_range=config.reduce_range, exclude_ops=config.exclude_ops)
    if mode == "float16":
        return q.float16_onnx(src, dst, exclude_ops=config.exclude_ops)
    if mode in ("int8-static", "int8-static-per-tensor", *OPENVINO_MODES):
        try:
            x, _ = inp.data("calibration")
        except ValueError as exc:
            raise InputError(f"quantize {mode} needs data.calibration ({exc})") from None
    else:
        raise InputError(f"unknown quantize mode {mode!r}")
    if mode in OPENVINO_MODES:
        from deployc.ml import openvino

        ov = config.openvino
        with inp.progress.task(f"{mode}: converting, calibrating (NNCF)"):
            return openvino.convert_and_quantize(src, dst, x, preset=ov.preset, model_type=ov.model_type,
                                                 subset_size=ov.subset_size,
                                                 fast_bias_correction=ov.fast_bias_correction,
                                                 batch1=mode == OPENVINO_BATCH1, shapes=ov.shapes,
                                                 compress_to_fp16=ov.compress_to_fp16, log=inp.log)
    per_channel = config.per_channel and mode == "int8-static"
    return q.quantize_static_onnx(src, dst, x, method=config.calibration_method, per_channel=per_channel,
                                      reduce_range=config.reduce_range, exclude_ops=config.exclude_ops,
                                      keep_edges_float=config.keep_edges_float, percentile=config.percentile,
                                      keep_softmax_float=config.keep_softmax_float,
                                      activation_type=config.activation_type, log=inp.log,
                                      progress=inp.progress)


class QuantizePass(Pass):
    name: ClassVar[str] = "quantize"
    config_model: ClassVar[type[QuantizeConfig]] = QuantizeConfig
    input_format: ClassVar[Format] = "onnx"
    output_format: ClassVar[Format] = "onnx"
    libs: ClassVar[tuple[str, ...]] = ("onnx", "onnxruntime")  # and openvino, nncf: see libs_for(config)
    data_needed: ClassVar[tuple[str, ...]] = ("calibration", "eval")  # at most; see data_needed_for(config)

    def data_needed_for(self, config: QuantizeConfig) -> tuple[str, ...]:
        return data_needed_for(config)

    def libs_for(self, config: QuantizeConfig) -> tuple[str, ...]:
        return (*self.libs, "openvino", "nncf") if set(OPENVINO_MODES) & set(modes(config)) else self.libs

    def variant(self, config: QuantizeConfig) -> str:
        return config.mode

    def settle(self, spec: DeploySpec, index: int, config: QuantizeConfig) -> QuantizeConfig:
        """auto's default candidates without the OpenVINO modes where their model could not ship: a target
        loads ONNX files itself, or a later optimize item reads this pass's model."""
        if config.mode != "auto" or "candidates" in config.model_fields_set or not _openvino_blocked(spec, index):
            return config
        return config.model_copy(update={"candidates": [m for m in config.candidates if m not in OPENVINO_MODES]})

    def check(self, spec: DeploySpec, index: int) -> list[Located]:
        from deployc.targets import onnx_only_targets

        config: QuantizeConfig = self.config_in(spec, index)
        loc = ("optimize", index, self.name, "mode")
        needed = data_needed_for(config)
        problems: list[Located] = []
        if "calibration" in needed and spec.data.calibration is None:
            if config.mode == "auto":
                what = "auto's candidates " + ", ".join(m for m in config.candidates if DATA_BY_MODE[m])
                hint = " (or list candidates without it)"
            else:
                what, hint = config.mode, ""
            problems.append((loc, f"{what} needs calibration data: set data.calibration{hint}"))
        if "eval" in needed and spec.data.eval is None:
            problems.append((loc, "auto picks the best candidate on data.eval, which is not set"))
        named = [m for m in (config.candidates if config.mode == "auto" and "candidates" in config.model_fields_set
                             else [config.mode]) if m in OPENVINO_MODES]
        if named:
            at = loc if config.mode != "auto" else ("optimize", index, self.name, "candidates")
            what = " and ".join(named)
            if index != len(spec.optimize) - 1:
                problems.append((at, f"{what} makes an OpenVINO model, which no later optimize item can "
                                 "read: make this quantize the last item"))
            for target, why in onnx_only_targets(spec).items():
                problems.append((at, f"{what} makes an OpenVINO model, but targets.{target} {why}: "
                                 f"leave {what} out of this pass"))
        if config.mode == "auto" and not config.candidates:
            problems.append((("optimize", index, self.name, "candidates"), "auto needs at least one candidate"))
        shapes = config.openvino.shapes or {}
        for name, dims in shapes.items():
            if not dims or dims[0] not in (1, -1) or any(d == 0 or d < -1 for d in dims):
                problems.append((("optimize", index, self.name, "openvino", "shapes", name),
                                 f"{dims}: axes are positive or -1 (free), and the batch axis (the first) is 1 or -1"))
        return problems

    def apply(self, inp: PassInput) -> PassResult:
        config: QuantizeConfig = inp.config
        inp.out_dir.mkdir(parents=True, exist_ok=True)
        if config.mode == "auto":
            return self._auto(inp, config)
        dst = inp.out_dir / artifact_name(config.mode)
        details = quantize_once(config.mode, inp.model, dst, config, inp)
        return PassResult(model=dst, details={"mode": config.mode, "runtime": RUNTIMES[config.mode], **details},
                          format=_format(config.mode))

    def _auto(self, inp: PassInput, config: QuantizeConfig) -> PassResult:
        rows: list[dict[str, Any]] = []
        with (tempfile.TemporaryDirectory(prefix="deployc-auto-") as tmp,
              inp.progress.task("quantize auto", total=len(config.candidates), unit="candidate") as task):
            for i, mode in enumerate(config.candidates):
                path = Path(tmp) / (f"{i}-{mode}" + ("" if mode in OPENVINO_MODES else ".onnx"))
                row: dict[str, Any] = {"mode": mode, "runtime": RUNTIMES[mode]}
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
            chosen = choose(rows, config.candidates, config.objective)
            if chosen is None:
                table = candidate_table(rows)
                raise GateError(f"quantize auto: no candidate passes the gates (tried "
                                f"{', '.join(config.candidates)})", table=table)
            dst = inp.out_dir / artifact_name(chosen["mode"])
            if chosen["path"].is_dir():
                shutil.copytree(chosen["path"], dst)
            else:
                shutil.copyfile(chosen["path"], dst)
        for row in rows:
            row.pop("path", None)
        inp.log(f"quantize auto: kept {chosen['mode']} ({chosen['runtime']})")
        return PassResult(model=dst, details={"mode": "auto", "chosen": chosen["mode"], "runtime": chosen["runtime"],
                                              "objective": config.objective, "candidates": rows,
                                              **chosen.get("details", {})},
                          format=_format(chosen["mode"]))


def _openvino_blocked(spec: DeploySpec, index: int) -> bool:
    from deployc.targets import onnx_only_targets

    return index != len(spec.optimize) - 1 or bool(onnx_only_targets(spec))


def _format(mode: str) -> str:
    return "openvino" if mode in OPENVINO_MODES else "onnx"


def choose(rows: list[dict[str, Any]], order: Sequence[str], objective: str = "latency") -> dict[str, Any] | None:
    """Mark each built row kept or dropped (with why) and return the kept one, or None if none passes.

    objective latency: the fastest batch-1 p50; candidates within LATENCY_TIE of it tie, and the smallest of those
    wins. objective throughput: the most rows a second, with the same ties. objective size: the smallest;
    candidates within SIZE_TIE of it tie, and the fastest of those wins. Equal figures go to the earlier candidate
    in `order`."""
    built = [r for r in rows if "figures" in r]
    for r in built:
        if r["gate_failures"]:
            r.update(kept=False, why="gates failed: " + "; ".join(r["gate_failures"]))
    passing = [r for r in built if not r["gate_failures"]]
    if not passing:
        return None

    def p50(r: dict[str, Any]) -> float:
        return float(r["figures"].get("latency_p50_ms", 0.0))

    def size(r: dict[str, Any]) -> int:
        return int(r["figures"]["size_bytes"])

    def rows_s(r: dict[str, Any]) -> float:
        return float(r["figures"].get("throughput_rows_s", 0.0))

    if objective == "size":
        smallest = min(size(r) for r in passing)
        tied = [r for r in passing if size(r) <= smallest * (1 + SIZE_TIE)]
        best = min(tied, key=lambda r: (p50(r), order.index(r["mode"])))
        kept_why = "smallest passing candidate" + (" (size tie broken by faster p50)" if len(tied) > 1 else "")
    elif objective == "throughput":
        most = max(rows_s(r) for r in passing)
        tied = [r for r in passing if rows_s(r) >= most * (1 - LATENCY_TIE)]
        best = min(tied, key=lambda r: (size(r), order.index(r["mode"])))
        kept_why = "highest passing throughput" + (" (tie broken by smaller size)" if len(tied) > 1 else "")
    else:
        fastest = min(p50(r) for r in passing)
        tied = [r for r in passing if p50(r) <= fastest * (1 + LATENCY_TIE)]
        best = min(tied, key=lambda r: (size(r), order.index(r["mode"])))
        kept_why = "fastest passing candidate" + (" (p50 tie broken by smaller size)" if len(tied) > 1 else "")
    for r in passing:
        if r is best:
            r.update(kept=True, why=kept_why)
        elif r in tied and objective == "size":
            r.update(kept=False, why=f"size ties with {best['mode']}, slower p50 ({p50(r)} ms vs {p50(best)} ms)")
        elif r in tied:
            what = "throughput" if objective == "throughput" else "p50"
            r.update(kept=False, why=f"{what} ties with {best['mode']}, larger ({size(r)} vs {size(best)} bytes)")
        elif objective == "size":
            r.update(kept=False, why=f"passes, but larger than {best['mode']} ({size(r)} vs {size(best)} bytes)")
        elif objective == "throughput":
            r.update(kept=False, why=f"passes, but fewer rows a second than {best['mode']} ({rows_s(r)} vs "
                     f"{rows_s(best)})")
        else:
            r.update(kept=False, why=f"passes, but slower than {best['mode']} (p50 {p50(r)} ms vs {p50(best)} ms)")
    return best


def candidate_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of candidates and their failures, for the GateError a user sees."""
    head = ("candidate", "runtime", "size_bytes", "p50_ms", "agreement", "accuracy", "why dropped")
    lines = [head]
    for r in rows:
        f = r.get("figures", {})
        runtime = r.get("runtime", RUNTIMES.get(r["mode"], "-"))
        lines.append((r["mode"], runtime, str(f.get("size_bytes", "-")), str(f.get("latency_p50_ms", "-")),
                      str(f.get("agreement", "-")), str(f.get("accuracy", "-")), r.get("why", "")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
                     for line in lines)
