"""`targets.triton`: a model repository for NVIDIA Triton Inference Server's onnxruntime backend (docs/triton.md).

The emitter writes `triton/model_repository/<model_name>/config.pbtxt` (Triton's `inference.ModelConfig` in
protobuf text format), `<model_name>/<version>/model.onnx` (the shipped ONNX artifact, the bytes the local target
ships), the class labels where the model has them, and `triton/README.md` with `triton/request.json` (how to run
and call it).

config.pbtxt is data: it is built as a protobuf message of the subset of model_config.proto it uses (same
message, field and enum names and numbers as Triton's, built at run time, so the build needs only protobuf) and
printed by protobuf's own text format, then parsed back and compared before it is returned.

`dynamic_batching` follows the `local:batch-invariance` measurement (deployc/targets/invariance.py) with the same
rule as `targets.local.batching.enabled`: unset means on exactly when the model is batch-invariant.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from deployc import conventions as c
from deployc.errors import DeploycError, InputError, SpecFieldError
from deployc.render import render_template
from deployc.schema.base import Located, SpecModel
from deployc.targets.base import EmitContext, Target, TensorInfo
from deployc.targets.invariance import (
    INVARIANCE,
    BatchingDecision,
    DecisionFields,
    batching_decision,
    invariance_step,
)
from deployc.targets.requests import dump, v2_request

if TYPE_CHECKING:
    from deployc.compiler.steps import Step
    from deployc.schema.spec import DeploySpec

TRITON_DIR = "triton"
REPOSITORY = f"{TRITON_DIR}/model_repository"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"  # the onnxruntime backend's default_model_filename
BACKEND = "onnxruntime"
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
MAX_VERSION = 2**63 - 1  # version folders are int64 in Triton
FIELDS = DecisionFields("targets.triton.dynamic_batching.enabled",
                        "targets.triton.dynamic_batching.allow_cross_request_variance", "docs/triton.md")
#: Open Inference Protocol datatype (EmitContext) -> Triton DataType
DATA_TYPES = {"BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
              "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
              "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
              "BYTES": "TYPE_STRING", "BF16": "TYPE_BF16"}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_AT = ("targets", "triton")

BatchSize = Annotated[int, Field(ge=1, le=65536)]
Version = Annotated[int, Field(ge=1, le=MAX_VERSION)]


class TritonDynamicBatching(SpecModel):
    enabled: bool | None = Field(
        None, description="Write `dynamic_batching` (Triton merges concurrent requests into one model run). "
        "Unset: on when the build measures the shipped model as batch-invariant (docs/triton.md); true on a "
        "model that is not is a build error unless allow_cross_request_variance is true; false: off.")
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000, description="Longest a request waits for "
                                      "companions (max_queue_delay_microseconds, rounded to whole microseconds).")
    preferred_batch_size: list[BatchSize] = Field(
        default_factory=list, max_length=32, description="Batch sizes the batcher tries to form (increasing, "
        "none above max_batch_size). Empty: the largest it can.")
    allow_cross_request_variance: bool = Field(
        False, description="With enabled: true, batch requests together even though the model is not "
        "batch-invariant (e.g. int8-dynamic): a client's outputs then depend on the other requests in its batch.")


class TritonInstanceGroup(SpecModel):
    kind: Literal["cpu", "gpu"] = Field("cpu", description="Where the model instances run (KIND_CPU, KIND_GPU; "
                                        "gpu needs the container started with GPUs).")
    count: int = Field(1, ge=1, le=64, description="Model instances (per GPU with kind gpu).")


class TritonVersionPolicy(SpecModel):
    policy: Literal["latest", "all", "specific"] = Field(
        "latest", description="latest: the highest num_versions version folders; all: every version folder; "
        "specific: the versions listed.")
    num_versions: int | None = Field(None, ge=1, le=1024, description="With policy latest: how many of the "
                                     "highest versions are served (default 1).")
    versions: list[Version] | None = Field(None, min_length=1, max_length=64, description="With policy "
                                           "specific: the versions served (default: [version]); it must "
                                           "include `version`, the folder this build writes.")


class TritonThreads(SpecModel):
    intra_op: int | None = Field(None, ge=0, le=256, description="onnxruntime intra-op threads "
                                 "(intra_op_thread_count; 0: the runtime's default). Unset: not written.")
    inter_op: int | None = Field(None, ge=0, le=256, description="onnxruntime inter-op threads "
                                 "(inter_op_thread_count; used by onnxruntime's parallel execution mode only). "
                                 "Unset: not written.")


class TritonConfig(SpecModel):
    model_name: str | None = Field(None, min_length=1, max_length=255, description="The model's folder in the "
                                   "repository and its name in /v2/models/<name>: letters, digits, '_', '.', "
                                   "'-', not '.' or '..' (default: the spec's name).")
    version: Version = Field(1, description="The version folder this build writes.")
    max_batch_size: int | None = Field(
        None, ge=0, le=65536, description="Largest batch Triton sends to the model (the first axis of every "
        f"input and output). Unset: {DEFAULT_MAX_BATCH_SIZE}, or 0 when the model has no free first axis on every "
        "input and output; a value above 0 for such a model is a build error. 0: no batch axis, dims list every "
        "axis.")
    dynamic_batching: TritonDynamicBatching = Field(default_factory=TritonDynamicBatching,
                                                    description="Triton's dynamic batcher (docs/triton.md).")
    instance_group: TritonInstanceGroup = Field(default_factory=TritonInstanceGroup,
                                                description="How many model instances run, and where.")
    version_policy: TritonVersionPolicy = Field(default_factory=TritonVersionPolicy,
                                                description="Which version folders Triton serves.")
    threads: TritonThreads = Field(default_factory=TritonThreads, description="onnxruntime backend thread "
                                   "counts (`parameters` of config.pbtxt).")
    image: str = Field(DEFAULT_IMAGE, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$", max_length=256,
                       description="The Triton server image the README runs (nvcr.io/nvidia/tritonserver:<YY.MM>-py3).")


def model_name(spec: DeploySpec, cfg: TritonConfig) -> str:
    return cfg.model_name if cfg.model_name is not None else spec.name


def _name_problem(name: str) -> str | None:
    if name in (".", ".."):
        return f"{name!r} is no folder name: Triton reads the model from <repository>/<model_name>"
    if not _MODEL_NAME.match(name):
        return (f"{name!r}: use letters, digits, '_', '.' and '-' only (the name is the model's folder and part of "
                "the /v2/models/<name> URL)")
    return None


def _batching_problems(cfg: TritonConfig) -> list[Located]:
    db, at = cfg.dynamic_batching, (*_AT, "dynamic_batching")
    limit = DEFAULT_MAX_BATCH_SIZE if cfg.max_batch_size is None else cfg.max_batch_size
    problems: list[Located] = []
    if limit == 0 and db.enabled:
        problems.append(((*at, "enabled"), "true needs a batch axis, but max_batch_size is 0"))
    for i, size in enumerate(db.preferred_batch_size):
        if size > limit:
            problems.append(((*at, "preferred_batch_size", i), f"{size} is above max_batch_size ({limit})"))
        elif i and size <= db.preferred_batch_size[i - 1]:
            problems.append(((*at, "preferred_batch_size", i), f"{size}: preferred_batch_size must increase"))
    return problems


def _policy_problems(cfg: TritonConfig) -> list[Located]:
    p, at = cfg.version_policy, (*_AT, "version_policy")
    problems: list[Located] = []
    if p.num_versions is not None and p.policy != "latest":
        problems.append(((*at, "num_versions"), f"num_versions applies to policy latest, not {p.policy}"))
    if p.versions is not None and p.policy != "specific":
        problems.append(((*at, "versions"), f"versions applies to policy specific, not {p.policy}"))
    elif p.versions is not None and cfg.version not in p.versions:
        problems.append(((*at, "versions"), f"{p.versions} leaves out version {cfg.version}, the only version "
                         "folder this build writes: Triton would serve nothing of it"))
    return problems


# --- the ModelConfig subset ------------------------------------------------------------------------------------

PACKAGE = "inference"


class ConfigError(DeploycError):
    """A config.pbtxt does not parse back as the message it was printed from (a bug)."""


_DATA_TYPE_NAMES = ("TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64",
                    "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64",
                    "TYPE_STRING", "TYPE_BF16")
_KIND_NAMES = ("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL")
# (name, number, type, message or enum type, repeated) of each message's fields, in printing order
_S, _I32, _I64, _U32, _U64, _ENUM, _MSG = "string", "int32", "int64", "uint32", "uint64", "enum", "message"
_MESSAGES: tuple[tuple[str, tuple[tuple[str, int, str, str, bool], ...]], ...] = (
    ("ModelTensorReshape", (("shape", 1, _I64, "", True),)),
    ("ModelInput", (("name", 1, _S, "", False), ("data_type", 2, _ENUM, "DataType", False),
                    ("dims", 4, _I64, "", True), ("reshape", 5, _MSG, "ModelTensorReshape", False))),
    ("ModelOutput", (("name", 1, _S, "", False), ("data_type", 2, _ENUM, "DataType", False),
                     ("dims", 3, _I64, "", True), ("reshape", 5, _MSG, "ModelTensorReshape", False),
                     ("label_filename", 4, _S, "", False))),
    ("ModelInstanceGroup", (("count", 2, _I32, "", False), ("kind", 4, _ENUM, "ModelInstanceGroup.Kind", False))),
    ("ModelVersionPolicy.Latest", (("num_versions", 1, _U32, "", False),)),
    ("ModelVersionPolicy.All", ()),
    ("ModelVersionPolicy.Specific", (("versions", 1, _I64, "", True),)),
    ("ModelDynamicBatching", (("preferred_batch_size", 1, _I32, "", True),
                              ("max_queue_delay_microseconds", 2, _U64, "", False))),
    ("ModelParameter", (("string_value", 1, _S, "", False),)),
    ("ModelConfig.ParametersEntry", (("key", 1, _S, "", False), ("value", 2, _MSG, "ModelParameter", False))),
    ("ModelConfig", (("name", 1, _S, "", False), ("backend", 17, _S, "", False),
                     ("max_batch_size", 4, _I32, "", False), ("input", 5, _MSG, "ModelInput", True),
                     ("output", 6, _MSG, "ModelOutput", True),
                     ("dynamic_batching", 11, _MSG, "ModelDynamicBatching", False),
                     ("instance_group", 7, _MSG, "ModelInstanceGroup", True),
                     ("version_policy", 3, _MSG, "ModelVersionPolicy", False),
                     ("parameters", 14, _MSG, "ModelConfig.ParametersEntry", True))),
)
_ONEOF = {"ModelVersionPolicy": ("policy_choice", (("latest", 1), ("all", 2), ("specific", 3)))}


@lru_cache(maxsize=1)
def model_config_class() -> Any:
    """`inference.ModelConfig`, limited to the fields deployc writes, declared in the order they are printed.

    proto2, so that a field set to its default (max_batch_size: 0) is still printed; the text format is the
    same for Triton's proto3 file."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    types = {_S: F.TYPE_STRING, _I32: F.TYPE_INT32, _I64: F.TYPE_INT64, _U32: F.TYPE_UINT32,
             _U64: F.TYPE_UINT64, _ENUM: F.TYPE_ENUM, _MSG: F.TYPE_MESSAGE}
    fdp = descriptor_pb2.FileDescriptorProto(name="deployc/triton_model_config.proto", package=PACKAGE,
                                             syntax="proto2")
    fdp.enum_type.add(name="DataType").value.extend(
        descriptor_pb2.EnumValueDescriptorProto(name=n, number=i) for i, n in enumerate(_DATA_TYPE_NAMES))
    protos: dict[str, Any] = {}

    def message(path: str) -> Any:  # a top-level or nested message, created on first use
        if path not in protos:
            parent, _, leaf = path.rpartition(".")
            protos[path] = (message(parent).nested_type if parent else fdp.message_type).add(name=leaf)
        return protos[path]

    message("ModelInstanceGroup").enum_type.add(name="Kind").value.extend(
        descriptor_pb2.EnumValueDescriptorProto(name=n, number=i) for i, n in enumerate(_KIND_NAMES))
    message("ModelConfig.ParametersEntry").options.map_entry = True
    for path, fields in _MESSAGES:
        m = message(path)
        for name, number, ftype, type_name, repeated in fields:
            f = m.field.add(name=name, number=number, type=types[ftype],
                            label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".{PACKAGE}.{type_name}"
    for path, (oneof, choices) in _ONEOF.items():
        m = message(path)
        m.oneof_decl.add(name=oneof)
        for name, number in choices:
            m.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, oneof_index=0,
                        type_name=f".{PACKAGE}.{path}.{name.capitalize()}")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.ModelConfig"))


# --- resolving what the built model allows ---------------------------------------------------------------------

@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    dynamic: bool
    reason: str  # one sentence for the README: why dynamic batching is on or off
    note: str | None = None  # why max_batch_size is 0 when the spec left it unset (the README says it)


def batchable(ctx: EmitContext) -> bool:
    """Whether every input and output has a free first axis (what max_batch_size > 0 needs in Triton) and the
    invariance measurement, where it ran, saw the outputs follow it."""
    figures = ctx.step_results.get(INVARIANCE) or {}
    tensors = (*ctx.inputs, *ctx.outputs)
    return bool(tensors) and all(t.shape[:1] == (-1,) for t in tensors) and figures.get("batchable") is not False


def resolve_batching(ctx: EmitContext, cfg: TritonConfig) -> Batching:
    """max_batch_size and dynamic_batching for the built model; refuses what the spec asks and the model
    cannot do, at the field that asks it."""
    db = cfg.dynamic_batching
    if not batchable(ctx):
        axis = "the model has no free first axis on every input and output"
        if cfg.max_batch_size:
            raise SpecFieldError((*_AT, "max_batch_size"), f"{cfg.max_batch_size}, but {axis}: set 0 or remove it")
        if db.enabled:
            raise SpecFieldError((*_AT, "dynamic_batching", "enabled"), f"true, but {axis}")
        return Batching(0, False, f"off: {axis}", None if cfg.max_batch_size == 0 else axis)
    size = DEFAULT_MAX_BATCH_SIZE if cfg.max_batch_size is None else cfg.max_batch_size
    if size == 0:
        return Batching(0, False, "off: max_batch_size is 0")
    decision = batching_decision(db, ctx.step_results.get(INVARIANCE), FIELDS)
    if decision.error:
        raise SpecFieldError((*_AT, "dynamic_batching", "enabled"), decision.error.removeprefix(
            f"{FIELDS.enabled}: "))
    return Batching(size, decision.enabled, decision.reason)


def decide(spec: DeploySpec, step_results: dict[str, dict[str, Any]]) -> BatchingDecision:
    """The dynamic-batching decision from the spec and the measurement alone, for a build's report (the emitter
    also applies the model's batch axis, `resolve_batching`)."""
    cfg: TritonConfig = TritonTarget().config_or_default(spec)
    if cfg.max_batch_size == 0:
        return BatchingDecision(False, "off: max_batch_size is 0", step_results.get(INVARIANCE))
    return batching_decision(cfg.dynamic_batching, step_results.get(INVARIANCE), FIELDS)


def _enum(msg: Any, field: str, value: str) -> None:
    setattr(msg, field, msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_name[value].number)


def _tensor(msg: Any, t: TensorInfo, batched: bool) -> None:
    if t.datatype not in DATA_TYPES:
        raise InputError(f"targets.triton: tensor {t.name!r} has datatype {t.datatype}, which Triton has no type for")
    msg.name = t.name
    _enum(msg, "data_type", DATA_TYPES[t.datatype])
    dims = list(t.shape[1:] if batched else t.shape)
    if dims:
        msg.dims.extend(dims)
    else:  # a scalar per batch row: Triton wants dims [1], reshaped to the model's shape []
        msg.dims.append(1)
        msg.reshape.SetInParent()


def build_config(ctx: EmitContext, cfg: TritonConfig, batching: Batching) -> Any:
    """The ModelConfig message of this build."""
    m = model_config_class()()
    m.name, m.backend, m.max_batch_size = model_name(ctx.spec, cfg), BACKEND, batching.max_batch_size
    batched = batching.max_batch_size > 0
    for t in ctx.inputs:
        _tensor(m.input.add(), t, batched)
    for i, t in enumerate(ctx.outputs):
        _tensor(out := m.output.add(), t, batched)
        if i == 0 and ctx.labels:  # the labels name the first output's classes (checked by the plan)
            out.label_filename = LABELS_FILE
    if batching.dynamic:
        db = cfg.dynamic_batching
        m.dynamic_batching.preferred_batch_size.extend(db.preferred_batch_size)
        m.dynamic_batching.max_queue_delay_microseconds = round(db.max_queue_delay_ms * 1000)
    group = m.instance_group.add()
    group.count = cfg.instance_group.count
    _enum(group, "kind", f"KIND_{cfg.instance_group.kind.upper()}")
    p = cfg.version_policy
    if p.policy == "latest":
        m.version_policy.latest.num_versions = p.num_versions or 1
    elif p.policy == "all":
        m.version_policy.all.SetInParent()
    else:
        m.version_policy.specific.versions.extend(p.versions or [cfg.version])
    for key, value in (("intra_op_thread_count", cfg.threads.intra_op),
                       ("inter_op_thread_count", cfg.threads.inter_op)):
        if value is not None:
            m.parameters[key].string_value = str(value)
    return m


def config_text(message: Any, header: str) -> str:
    """config.pbtxt: the header as comments, then the message in text format (non-ASCII bytes escaped), parsed
    back and compared with `message`."""
    from google.protobuf import text_format

    body = str(text_format.MessageToString(message, as_utf8=False, use_index_order=True,
                                           use_short_repeated_primitives=True))
    text = "".join(f"# {line}\n" for line in header.splitlines()) + body
    back = model_config_class()()
    try:
        text_format.Parse(text, back)
    except text_format.ParseError as exc:
        raise ConfigError(f"config.pbtxt does not parse as {PACKAGE}.ModelConfig: {exc}") from None
    if back != message:
        raise ConfigError(f"config.pbtxt parsed back as {back}, expected {message}")
    return text


# --- the README and its example request ------------------------------------------------------------------------


def example_request(ctx: EmitContext) -> dict[str, Any]:
    """An Open Inference Protocol request of data.eval's first rows (a row of zeros without it), for the
    README's curl."""
    return v2_request(ctx)


def readme(ctx: EmitContext, cfg: TritonConfig, batching: Batching, header: str) -> str:
    """The operator's README. Shell words enter as JSON strings (double-quoted in the shell); the names in them
    are limited by the schema to characters that are literal there, so only `$PWD` expands."""
    name, build = model_name(ctx.spec, cfg), f"build/{ctx.spec.name}"
    return render_template(
        TRITON_DIR, "README.md.j2", header=header, spec_name=ctx.spec.name, model_name=name,
        version=cfg.version, image=cfg.image, gpu=cfg.instance_group.kind == "gpu", labels=bool(ctx.labels),
        volume=f"$PWD/{build}/{REPOSITORY}:/models", request=f"{build}/{TRITON_DIR}/request.json",
        infer_url=f"localhost:{HTTP_PORT}/v2/models/{name}/infer",
        ready_url=f"localhost:{HTTP_PORT}/v2/health/ready", ports=[HTTP_PORT, GRPC_PORT, METRICS_PORT],
        max_batch_size=batching.max_batch_size, dynamic=batching.dynamic, reason=batching.reason,
        note=batching.note, first_output=ctx.outputs[0].name if ctx.outputs else None, sha256=ctx.onnx_sha256)


class TritonTarget(Target):
    name = "triton"
    config_model = TritonConfig
    description = "A model repository for NVIDIA Triton Inference Server (onnxruntime backend)."

    def check(self, spec: DeploySpec) -> list[Located]:
        cfg: TritonConfig = self.config(spec)
        problems = super().check(spec)
        if cfg.model_name is not None and (why := _name_problem(cfg.model_name)):
            problems.append(((*_AT, "model_name"), why))
        return problems + _batching_problems(cfg) + _policy_problems(cfg)

    def steps(self, spec: DeploySpec, spec_dir: Path, final_model_step: str, keras_model_step: str | None
              ) -> list[Step]:
        """The batch-invariance step, unless no measurement could turn dynamic batching on."""
        cfg: TritonConfig = self.config(spec)
        if cfg.dynamic_batching.enabled is False or cfg.max_batch_size == 0:
            return []
        return [invariance_step(spec, spec_dir, final_model_step)]

    def batching(self, spec: DeploySpec, step_results: dict[str, dict[str, Any]]) -> BatchingDecision | None:
        return decide(spec, step_results)

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        cfg: TritonConfig = self.config(ctx.spec)
        header = c.GENERATED_HEADER.format(spec=ctx.spec_file)
        batching = resolve_batching(ctx, cfg)
        folder = f"{REPOSITORY}/{model_name(ctx.spec, cfg)}"
        files = {
            f"{folder}/config.pbtxt": config_text(build_config(ctx, cfg, batching), header).encode(),
            f"{folder}/{cfg.version}/{MODEL_FILE}": ctx.onnx_model.read_bytes(),
            f"{TRITON_DIR}/README.md": readme(ctx, cfg, batching, header).encode(),
            f"{TRITON_DIR}/request.json": dump(example_request(ctx)),
        }
        if ctx.labels:
            files[f"{folder}/{LABELS_FILE}"] = ("\n".join(ctx.labels) + "\n").encode()
        return files
