"""`targets.sagemaker`: model.tar.gz, a CloudFormation template, the serving image's Dockerfile, a deploy plan,
and (with SLOs) the CloudWatch alarms that the template, the plan and `deployc deploy` create.

The plan (`deploy-plan.json`) and the template come from the same dicts (`deployc.sagemaker_plan`), so a stack
made from the template and an endpoint made by `deployc deploy` are the same resources.
"""
from __future__ import annotations

import gzip
import io
import math
import re
import tarfile
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from deployc import __version__
from deployc import conventions as c
from deployc.errors import InputError
from deployc.manifest import sha256_bytes
from deployc.render import dump_json, render_template, render_yaml
from deployc.sagemaker_plan import PROVISIONING_S, build_plan, rollback_alarm_ids
from deployc.schema.base import Located, SpecModel, choice, located, show
from deployc.schema.capture import KMS_KEY as CAPTURE_KMS_KEY
from deployc.schema.capture import S3_URI as CAPTURE_S3_URI
from deployc.schema.envref import ENV_KEY, EnvRef, credential_ref_problem, is_env_ref, parameter_names
from deployc.targets.base import EmitContext, Target
from deployc.targets.bundle import local_config, serving_files
from deployc.targets.common import BASE_IMAGE, BASE_TAG, SERVING_UID, healthcheck, serving_requirement
from deployc.targets.requests import dump, instances_request
from deployc.targets.sagemaker_instance_types import INSTANCE_TYPES

# Config: `targets.sagemaker` in deploy.yaml.

ROLE_ARN = r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:iam::\d{12}:role/[A-Za-z0-9_+=,.@/-]{1,512}$"
S3_URI = CAPTURE_S3_URI
REGION = (r"^(us|eu|ap|sa|ca|me|af|il|mx|cn)(-gov|-iso|-isob)?-"
          r"(north|south|east|west|central|northeast|southeast|northwest|southwest)-\d{1,2}$")
KMS_KEY = CAPTURE_KMS_KEY
# registry/repository[:tag|@sha256:digest]; SageMaker pulls from ECR (or a private registry inside a VPC)
IMAGE_URI = r"^[a-z0-9][a-z0-9.-]*(:\d{1,5})?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|@sha256:[0-9a-f]{64})?$"
SUBNET = r"^subnet-([0-9a-f]{8}|[0-9a-f]{17})$"
SECURITY_GROUP = r"^sg-([0-9a-f]{8}|[0-9a-f]{17})$"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")
DEFAULT_INSTANCE_TYPE = "ml.c6i.large"
MAX_ROLLOUT_S = 28800  # BlueGreenUpdatePolicy.MaximumExecutionTimeoutInSeconds upper bound

# Tags (sagemaker:AddTags, the same on CloudWatch alarms): keys match ^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$ with 1-128
# characters, values the same set with 0-256; `aws:` starts AWS's own keys. Python's re has no \p{..}: the
# Unicode categories are checked by hand (letters L*, separators Z* such as a space, numbers N*).
TAG_KEY_MAX, TAG_VALUE_MAX = 128, 256
TAG_SPECIALS = frozenset("_.:/=+-@")
TAG_CHARSET = "letters, digits, spaces and _ . : / = + - @"


def tag_text_problem(text: str, what: str, low: int, high: int) -> str | None:
    """Why `text` is no SageMaker tag key or value (`what`), or None."""
    bad = sorted({ch for ch in text if ch not in TAG_SPECIALS and unicodedata.category(ch)[0] not in "LZN"})
    if bad:
        shown = ", ".join(repr(ch) for ch in bad[:5])
        return f"{what} {show(text)} holds {shown}: AWS allows only {TAG_CHARSET}"
    if not low <= len(text) <= high:
        return f"{what} {show(text)} has {len(text)} characters; AWS allows {low}-{high}"
    return None


# Credentials never belong in a spec: the deploy uses the standard AWS credential chain.
_ACCESS_KEY_ID = re.compile(r"(?<![A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")
_SECRET_KEY_NAME = re.compile(r"secret|private[_-]?key|credential", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")
_SECRET_INLINE = re.compile(r"secret[A-Za-z_]*[\"']?\s*[=:]\s*[\"']?[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])",
                            re.IGNORECASE)


def credential_problem(key: str, value: str) -> str | None:
    """Why `key: value` looks like an AWS credential, or None."""
    for text in (key, value):
        if _ACCESS_KEY_ID.search(text):
            return (f"{key!r} holds what looks like an AWS access key id; credentials never go in the spec "
                    "(deployc deploy uses the standard AWS credential chain: environment, profile, role)")
    if (_SECRET_KEY_NAME.search(key) and _SECRET_VALUE.search(value)) or _SECRET_INLINE.search(value):
        return (f"{key!r} holds what looks like an AWS secret access key; credentials never go in the spec "
                "(use an IAM role, or a secret store the container reads at start)")
    return None


class Serverless(SpecModel):
    memory_mb: Literal[1024, 2048, 3072, 4096, 5120, 6144] = Field(2048, description="Memory per concurrent "
                                                                    "invocation (ServerlessConfig.MemorySizeInMB).")
    max_concurrency: int = Field(10, ge=1, le=200, description="Concurrent invocations before throttling.")


class Autoscaling(SpecModel):
    min_instances: int = Field(1, ge=1, le=1000, description="Scale-in floor.")
    max_instances: int = Field(4, ge=1, le=1000, description="Scale-out ceiling.")
    target_invocations_per_instance: float = Field(..., gt=0, description="Target of the SageMakerVariant"
                                                   "InvocationsPerInstance tracking policy (per minute).")
    scale_in_cooldown_s: int = Field(300, ge=0, le=86400, description="Wait after a scale-in before another.")
    scale_out_cooldown_s: int = Field(60, ge=0, le=86400, description="Wait after a scale-out before another.")

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.max_instances < self.min_instances:
            raise ValueError("max_instances must be at least min_instances")
        return self


class Vpc(SpecModel):
    subnets: list[str] = Field(..., min_length=1, max_length=16, description="Subnet ids (subnet-...).")
    security_groups: list[str] = Field(..., min_length=1, max_length=5, description="Security group ids (sg-...).")

    @field_validator("subnets")
    @classmethod
    def _subnets(cls, v: list[str]) -> list[str]:
        return _all_match(v, SUBNET, "a subnet id (subnet- and 8 or 17 hex digits)")

    @field_validator("security_groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        return _all_match(v, SECURITY_GROUP, "a security group id (sg- and 8 or 17 hex digits)")


def _input_and_output() -> list[Literal["Input", "Output"]]:
    return ["Input", "Output"]


class DataCapture(SpecModel):
    sampling_percent: int = Field(..., ge=0, le=100, description="Share of requests captured.")
    destination: str = Field(..., pattern=S3_URI, description="s3:// URI the captured requests go to.")
    capture: list[Literal["Input", "Output"]] = Field(default_factory=_input_and_output,
                                                      min_length=1, description="What is captured.")


class Rollout(SpecModel):
    strategy: Literal["all-at-once", "canary", "linear"] = Field("all-at-once", description="Blue/green traffic "
                                                                 "shifting of an endpoint update.")
    canary_percent: int | None = Field(None, ge=1, le=99, description="canary: traffic share of the first step.")
    linear_step_percent: int | None = Field(None, ge=1, le=99, description="linear: traffic share per step.")
    wait_s: int = Field(300, ge=0, le=3600, description="Wait between traffic shifts.")
    termination_wait_s: int = Field(600, ge=0, le=3600, description="Keep the old fleet this long after the "
                                    "last shift (rollback stays instant meanwhile).")
    rollback_on_alarms: bool = Field(True, description="Roll back when a generated CloudWatch page alarm fires.")

    @model_validator(mode="after")
    def _strategy_fields(self) -> Rollout:
        if self.strategy == "canary" and self.canary_percent is None:
            raise ValueError("strategy canary needs canary_percent")
        if self.strategy == "linear" and self.linear_step_percent is None:
            raise ValueError("strategy linear needs linear_step_percent")
        if self.strategy != "canary" and self.canary_percent is not None:
            raise ValueError(f"canary_percent only applies to strategy canary, not {self.strategy}")
        if self.strategy != "linear" and self.linear_step_percent is not None:
            raise ValueError(f"linear_step_percent only applies to strategy linear, not {self.strategy}")
        if self.shift_wait_s() + self.termination_wait_s + PROVISIONING_S > MAX_ROLLOUT_S:
            raise ValueError(f"the rollout waits {self.shift_wait_s() + self.termination_wait_s}s, more than "
                             f"SageMaker's {MAX_ROLLOUT_S}s limit leaves ({PROVISIONING_S}s are kept for "
                             "provisioning): use larger steps or shorter waits")
        return self

    def shift_wait_s(self) -> int:
        """Seconds spent between traffic shifts (the baking periods before the last shift)."""
        if self.strategy == "canary":
            return self.wait_s
        if self.strategy == "linear" and self.linear_step_percent:
            return self.wait_s * (math.ceil(100 / self.linear_step_percent) - 1)
        return 0


class SageMakerConfig(SpecModel):
    region: str = Field(..., pattern=REGION, description="AWS region of the endpoint (us-east-1).")
    role_arn: str = Field(..., pattern=ROLE_ARN, description="Execution role SageMaker assumes.")
    image_uri: str = Field(..., max_length=255, pattern=IMAGE_URI,
                           description="The `deployc serve` image (the bundle ships its Dockerfile).")
    s3_prefix: str = Field(..., pattern=S3_URI, description="Where model.tar.gz is uploaded, keyed by its hash.")
    instance_type: Annotated[str, choice(INSTANCE_TYPES, "a SageMaker inference instance type",
                                         "docs/sagemaker.md")] | None = \
        Field(None, description=f"Instance type (default {DEFAULT_INSTANCE_TYPE}); not with serverless.")
    initial_instance_count: int | None = Field(None, ge=1, le=1000, description="Instances at creation "
                                               "(default 1, or autoscaling.min_instances); not with serverless.")
    serverless: Serverless | None = Field(None, description="Serverless endpoint instead of instances.")
    autoscaling: Autoscaling | None = Field(None, description="Target-tracking autoscaling of the instance count.")
    kms_key: str | None = Field(None, pattern=KMS_KEY, description="KMS key (id, ARN or alias) for the endpoint's "
                                "storage volume and the data capture files.")
    vpc: Vpc | None = Field(None, description="Run the model containers inside these subnets.")
    network_isolation: bool = Field(True, description="EnableNetworkIsolation: the container gets no network "
                                    "access (SageMaker still downloads model.tar.gz and the image for it; `deployc "
                                    "serve` needs nothing else). Set false only for a container that must call out, "
                                    "e.g. to read a secret store at start.")
    data_capture: DataCapture | None = Field(None, description="Capture requests/responses to S3, unmasked "
                                             "(monitoring.capture with its s3 place is the newer way; not both).")
    rollout: Rollout = Field(default_factory=Rollout, description="How an update shifts traffic.")
    tags: dict[str, str] = Field(default_factory=dict, max_length=50, description="Tags on every resource "
                                 "(and alarm): keys 1-128 and values 0-256 of letters, digits, spaces and "
                                 "_ . : / = + - @; keys may not start with aws:.")
    environment: dict[str, str | EnvRef] = Field(
        default_factory=dict, max_length=100,
        description="Container environment: each value a string, or an !ENV reference (`API_KEY: !ENV NAME`) that "
                    "deployc deploy reads from its own environment; never credentials in the spec.")

    @field_validator("serverless")
    @classmethod
    def _serverless_exclusive(cls, v: Serverless | None, info: ValidationInfo) -> Serverless | None:
        if v is not None:
            for other in ("instance_type", "initial_instance_count"):
                if info.data.get(other) is not None:
                    raise ValueError(f"serverless and {other} are exclusive: a serverless endpoint has no instances")
        return v

    @field_validator("autoscaling", "data_capture")
    @classmethod
    def _not_serverless(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None and info.data.get("serverless") is not None:
            raise ValueError(f"{info.field_name} needs instances; serverless endpoints do not support it")
        return v

    @field_validator("autoscaling")
    @classmethod
    def _initial_in_range(cls, v: Autoscaling | None, info: ValidationInfo) -> Autoscaling | None:
        n = info.data.get("initial_instance_count")
        if v is not None and n is not None and not v.min_instances <= n <= v.max_instances:
            raise ValueError(f"initial_instance_count {n} is outside min_instances..max_instances "
                             f"({v.min_instances}..{v.max_instances})")
        return v

    @field_validator("image_uri")
    @classmethod
    def _image_no_credentials(cls, v: str) -> str:
        problem = credential_problem("image_uri", v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("environment", mode="before")
    @classmethod
    def _string_or_reference(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for key, value in v.items():
                if not isinstance(value, (str, EnvRef)) and not is_env_ref(value):
                    kind = {bool: "a boolean", int: "a number", float: "a number", dict: "a mapping",
                            list: "a list"}.get(type(value), "empty" if value is None else type(value).__name__)
                    raise ValueError(f"{key!r}: a value is a string (quote numbers and booleans) or an !ENV "
                                     f"reference, not {kind}")
        return v

    @field_validator("environment", "tags")
    @classmethod
    def _no_credentials(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        for key, value in v.items():
            if isinstance(value, EnvRef):
                refused = credential_ref_problem(value.name)
                if refused:
                    raise ValueError(f"{key!r}: {refused}")
                value = ""  # the name is checked below; the value is not in the spec
            problem = credential_problem(key, value)
            if problem:
                raise ValueError(problem)
            if info.field_name == "environment" and not ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not an environment variable name (letters, digits, _)")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        problems: list[Located] = []
        for key, value in v.items():
            problem = tag_text_problem(key, "the tag key", 1, TAG_KEY_MAX)
            if problem is None and key.lower().startswith("aws:"):
                problem = f"the tag key {show(key)} starts with aws:, which AWS keeps for its own tags"
            if problem is None:
                problem = tag_text_problem(value, "the tag value", 0, TAG_VALUE_MAX)
            if problem:
                problems.append(((key,), problem))
        if problems:
            raise located(problems)
        return v

    def resolved_instance_type(self) -> str | None:
        return None if self.serverless else (self.instance_type or DEFAULT_INSTANCE_TYPE)

    def resolved_instance_count(self) -> int | None:
        if self.serverless:
            return None
        if self.initial_instance_count is not None:
            return self.initial_instance_count
        return self.autoscaling.min_instances if self.autoscaling else 1


def _all_match(values: list[str], pattern: str, what: str) -> list[str]:
    bad = [v for v in values if not re.match(pattern, v)]
    if bad:
        raise ValueError(f"{', '.join(map(repr, bad))}: not {what}")
    if len(set(values)) != len(values):
        raise ValueError("listed more than once")
    return values


# The target.

MODEL_DIR = "/opt/ml/model"  # where SageMaker unpacks ModelDataUrl
ALARMS_FILE = c.CLOUDWATCH_ALARMS
_LOGICAL_ID = re.compile(r"^[A-Za-z0-9]{1,255}$")
_RESERVED_IDS = {"Model", "EndpointConfig", "Endpoint", "ScalableTarget", "ScalingPolicy"}
_ALARM_KEYS_OWNED_HERE = {"ActionsEnabled", "Tags"}  # set by the template/plan, not by the alarms document


def model_tarball(files: dict[str, bytes]) -> bytes:
    """A byte-for-byte reproducible .tar.gz: sorted members, no times, owners or modes from this machine.

    S3 keys and resource names carry its sha256, so an unchanged build must give the same bytes.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def read_alarms(ctx: EmitContext) -> list[dict[str, Any]]:
    """The CloudWatch alarms of the build's SLOs (none without SLOs), from the monitoring model, checked."""
    if ctx.monitoring is None:
        return []
    return checked_alarms(ctx.monitoring.alarms(ctx.spec.name, c.SAGEMAKER_VARIANT_NAME))


def checked_alarms(alarms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each alarm with a unique logical id that is no resource of the template, and an AlarmName."""
    seen: set[str] = set()
    out = []
    for i, a in enumerate(alarms):
        lid = a.get("logical_id") if isinstance(a, dict) else None
        props = a.get("properties") if isinstance(a, dict) else None
        if not isinstance(lid, str) or not _LOGICAL_ID.match(lid) or lid in _RESERVED_IDS or lid in seen:
            raise InputError(f"{ALARMS_FILE}[{i}]: logical_id must be a unique alphanumeric name, not {lid!r}")
        if not isinstance(props, dict) or not isinstance(props.get("AlarmName"), str):
            raise InputError(f"{ALARMS_FILE}[{i}] ({lid}): properties need an AlarmName")
        seen.add(lid)
        out.append({"logical_id": lid,
                    "properties": {k: v for k, v in props.items() if k not in _ALARM_KEYS_OWNED_HERE}})
    return out


class SageMakerTarget(Target):
    model_formats = ("onnx", "openvino")  # its image runs `deployc serve`
    name = "sagemaker"
    config_model = SageMakerConfig
    description = "A SageMaker endpoint."
    serves = True

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        cfg: SageMakerConfig = self.config(ctx.spec)
        spec = ctx.spec
        local_cfg = local_config(spec)
        tarball = model_tarball(serving_files(ctx, local_cfg, host="0.0.0.0", port=c.SAGEMAKER_PORT))
        alarms = read_alarms(ctx)
        capture = spec.monitoring.capture if spec.monitoring is not None else None
        plan = build_plan(cfg, name=spec.name, version=spec.version, artifact_sha256=sha256_bytes(tarball),
                          artifact_size=len(tarball), alarms=alarms,
                          capture=capture if capture is not None and capture.enabled else None)
        header = c.GENERATED_HEADER.format(spec=ctx.spec_file)
        files = {} if ctx.monitoring is None else {
            ALARMS_FILE: ctx.monitoring.alarms_document(spec.name, c.SAGEMAKER_VARIANT_NAME)}
        return files | {
            f"{c.SAGEMAKER_DIR}/model.tar.gz": tarball,
            f"{c.SAGEMAKER_DIR}/deploy-plan.json": dump_json(plan),
            f"{c.SAGEMAKER_DIR}/request.json": dump(instances_request(ctx)),  # an /invocations body
            f"{c.SAGEMAKER_DIR}/cloudformation.yaml": cloudformation(plan, alarms, cfg, header=header,
                                                                      description=_description(spec)),
            f"{c.SAGEMAKER_DIR}/Dockerfile": dockerfile(spec.name, spec.version, header=header,
                                         requirement=serving_requirement(spec, ctx.model_format)).encode(),
        }


def cloudformation(plan: dict[str, Any], alarms: list[dict[str, Any]], cfg: SageMakerConfig, *, header: str,
                   description: str) -> bytes:
    calls = {call["operation"]: call["parameters"] for call in plan["calls"]}
    environment, env_parameters = template_environment(calls["create_model"]["PrimaryContainer"]["Environment"],
                                                       taken=[a["logical_id"] for a in alarms])
    model = {**calls["create_model"],
             "PrimaryContainer": {**calls["create_model"]["PrimaryContainer"], "Environment": environment}}
    text, parsed = render_yaml(
        "sagemaker", "cloudformation.yaml.j2",
        header=header,
        description=description,
        model=model,
        env_parameters=env_parameters,
        endpoint_config=calls["create_endpoint_config"],
        endpoint=calls["create_endpoint"],
        alarms=alarms,
        rollback_ids=rollback_alarm_ids(alarms) if cfg.rollout.rollback_on_alarms else [],
        autoscaling=calls.get("register_scalable_target"),
        policy=calls.get("put_scaling_policy"),
        variant_suffix=f"/variant/{c.SAGEMAKER_VARIANT_NAME}",
        tags=[{"Key": k, "Value": v} for k, v in sorted(cfg.tags.items())],
    )
    if not isinstance(parsed, dict) or "Model" not in parsed.get("Resources", {}):
        raise InputError("templates/sagemaker/cloudformation.yaml.j2 rendered no Resources")
    return text.encode()


def template_environment(environment: dict[str, Any], *, taken: list[str]) -> tuple[dict[str, Any],
                                                                                 list[dict[str, str]]]:
    """!ENV references -> `{"Ref": EnvNAME}` on a NoEcho String parameter each, so the value is given when the
    stack is created or updated and never sits in the template; returns (environment, parameters)."""
    names = parameter_names([v[ENV_KEY] for v in environment.values() if is_env_ref(v)], taken)
    out = {k: ({"Ref": names[v[ENV_KEY]]} if is_env_ref(v) else v) for k, v in environment.items()}
    params = []
    for var, pid in sorted(names.items(), key=lambda item: item[1]):
        keys = ", ".join(k for k, v in environment.items() if is_env_ref(v) and v[ENV_KEY] == var)
        text = f"Container environment {keys} (deploy.yaml: !ENV {var}; deployc deploy reads ${var})."
        params.append({"id": pid, "description": text if len(text) <= 4000 else text[:3997] + "..."})
    return out, params


def dockerfile(name: str, version: str, *, header: str,
               requirement: str = f"deployc[serve]=={__version__}") -> str:
    command = f"exec deployc serve {MODEL_DIR} --host 0.0.0.0 --port {c.SAGEMAKER_PORT}"
    return render_template("sagemaker", "Dockerfile.j2", header=header, bundle_name=name, version=version,
                           base_image=BASE_IMAGE, base_tag=BASE_TAG, requirement=requirement,
                           port=c.SAGEMAKER_PORT, uid=SERVING_UID, healthcheck=healthcheck(c.SAGEMAKER_PORT, "/ping"),
                           entrypoint=["/bin/sh", "-c", command])


def _description(spec: Any) -> str:
    text = f"deployc: SageMaker endpoint {spec.name} {spec.version}"
    return (f"{text} - {spec.description}" if spec.description else text)[:1024]
