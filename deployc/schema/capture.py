"""`monitoring.capture`: which requests `deployc serve` (or SageMaker) records, and how each field is masked.

The model mirrors deploy.yaml; `capture_problems` holds the rules that need the rest of the spec (the targets),
and `deployc.compiler.validate` the ones that need the model's inputs and outputs.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from deployc.schema.base import Located, SpecModel, located, show

ENV_NAME = r"^[A-Z_][A-Z0-9_]{0,199}$"
S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9_!\-.*'()/=+]*)?$"
KMS_KEY = (r"^(arn:aws(-cn|-us-gov|-iso|-iso-b)?:kms:[a-z0-9-]+:\d{12}:(key|alias)/[A-Za-z0-9_/-]+"
           r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|alias/[A-Za-z0-9_/-]+)$")
Mask = Literal["keep", "drop", "hash", "round", "bucket", "redact"]
MASKS: tuple[str, ...] = ("keep", "drop", "hash", "round", "bucket", "redact")
NUMERIC_MASKS = ("round", "bucket")  # numbers only: tensors, never request ids or parameters
STRING_MASKS = ("redact",)  # strings only: request ids and parameter values (the server takes no BYTES tensors)
# each mask's own settings: (required, optional)
_SETTINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "keep": ((), ()), "drop": ((), ()), "hash": (("salt_env",), ()), "round": (("decimals",), ()),
    "bucket": (("edges",), ()), "redact": (("patterns",), ("replacement",))}
MAX_PATTERN = 512


def _shorthand(value: Any) -> Any:
    """`pixels: drop` is `pixels: {mask: drop}`."""
    return {"mask": value} if isinstance(value, str) else value


class FieldRule(SpecModel):
    """How one captured field is masked before it is written anywhere."""

    mask: Mask = Field("keep", description="keep (in clear), drop (never captured), hash (HMAC-SHA256 of each "
                       "value with a secret salt), round (to `decimals`), bucket (the index of the bucket `edges` "
                       "put the value in), redact (replace what `patterns` match; strings only).")
    sensitive: bool = Field(False, description="The field holds personal or secret data: it must be masked (not "
                            "keep), and a target whose platform captures without masking (SageMaker) refuses it.")
    salt_env: str | None = Field(None, pattern=ENV_NAME, description="hash: the environment variable holding the "
                                 "salt (never the salt itself); `deployc serve` refuses to start without it.")
    decimals: int | None = Field(None, ge=-9, le=12, description="round: digits after the point (negative: "
                                 "round to tens, hundreds, ...).")
    edges: list[float] | None = Field(None, min_length=1, max_length=64, description="bucket: increasing "
                                      "boundaries; a value v goes to bucket i when edges[i-1] <= v < edges[i] "
                                      "(bucket 0 below edges[0], bucket len(edges) from the last edge up).")
    patterns: list[Annotated[str, Field(min_length=1, max_length=MAX_PATTERN)]] | None = Field(
        None, min_length=1, max_length=32, description="redact: Python regular expressions; every match is "
        "replaced (checked when the spec is validated).")
    replacement: str = Field("[REDACTED]", max_length=64, description="redact: what each match becomes.")

    @field_validator("edges")
    @classmethod
    def _increasing(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            if not all(math.isfinite(e) for e in v):
                raise ValueError("bucket edges must be finite numbers")
            if any(b <= a for a, b in zip(v, v[1:], strict=False)):
                raise ValueError("bucket edges must be strictly increasing")
        return v

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, v: list[str] | None) -> list[str] | None:
        problems: list[Located] = []
        for i, p in enumerate(v or ()):
            try:
                compiled = re.compile(p)
            except re.error as e:
                problems.append(((i,), f"{show(p)} is not a regular expression: {e}"))
                continue
            if compiled.match(""):
                problems.append(((i,), f"{show(p)} matches the empty string, so it would redact between every "
                                 "character"))
        if problems:
            raise located(problems)
        return v

    @model_validator(mode="after")
    def _settings(self) -> FieldRule:
        required, optional = _SETTINGS[self.mask]
        missing = [k for k in required if getattr(self, k) is None]
        if missing:
            raise ValueError(f"mask {self.mask} needs {', '.join(missing)}")
        stray = [k for k in ("salt_env", "decimals", "edges", "patterns") if k not in required + optional
                 and getattr(self, k) is not None]
        if self.mask != "redact" and self.replacement != "[REDACTED]":
            stray.append("replacement")
        if stray:
            raise ValueError(f"{', '.join(stray)} do{'es' if len(stray) == 1 else ''} not apply to mask {self.mask}")
        if self.sensitive and self.mask == "keep":
            raise ValueError("a sensitive field must be masked: drop, hash, round, bucket or redact")
        return self

    def to_json(self) -> dict[str, Any]:
        """The rule as serving.json carries it: the mask and its own settings (the salt's variable, never a salt)."""
        required, optional = _SETTINGS[self.mask]
        return {"mask": self.mask, **{k: getattr(self, k) for k in required + optional}}


Rule = Annotated[FieldRule, BeforeValidator(_shorthand)]


class CaptureFiles(SpecModel):
    """Where `deployc serve` writes the captured records and how much it keeps."""

    folder: str = Field("deployc-capture", min_length=1, max_length=1024, description="Folder of the JSON-lines "
                        "files: absolute, or relative to the working directory of `deployc serve` "
                        "($DEPLOYC_CAPTURE_DIR overrides it). Created 0700; files 0600.")
    max_file_mb: float = Field(16, gt=0, le=4096, description="A file is closed and a new one started before it "
                               "would pass this size.")
    max_total_mb: float = Field(256, gt=0, le=1 << 20, description="The folder never holds more: the oldest "
                                "finished files are removed first (a file being written counts at max_file_mb).")
    max_files: int = Field(64, ge=2, le=100_000, description="The folder never holds more files than this.")
    queue_size: int = Field(1024, ge=1, le=1_000_000, description="Records waiting for the writer thread, per "
                            "server process; when full, a sampled record is dropped (and counted), never waited for.")

    @model_validator(mode="after")
    def _room(self) -> CaptureFiles:
        if self.max_total_mb < 2 * self.max_file_mb:
            raise ValueError(f"max_total_mb ({self.max_total_mb:g}) must hold at least two files of max_file_mb "
                             f"({self.max_file_mb:g}): one being written and one kept")
        return self


class CaptureS3(SpecModel):
    """Where a platform that captures by itself (SageMaker's DataCaptureConfig) puts the records."""

    destination: str = Field(..., pattern=S3_URI, description="s3:// URI the captured requests go to.")
    kms_key: str | None = Field(None, pattern=KMS_KEY, description="KMS key (id, ARN or alias) encrypting the "
                                "capture files; default targets.sagemaker.kms_key. One of the two is required.")


def _names(v: list[str] | None) -> list[str] | None:
    if v is not None and len(set(v)) != len(v):
        raise ValueError("a name is listed more than once")
    return v


TensorName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")]


class Capture(SpecModel):
    enabled: bool = Field(True, description="false keeps the rules and captures nothing.")
    sampling_percent: float = Field(..., gt=0, le=100, description="Share of inference requests captured "
                                    "(each request drawn independently).")
    inputs: list[TensorName] | None = Field(None, max_length=64, description="Model inputs captured (default: "
                                            "all; [] for none).")
    outputs: list[TensorName] | None = Field(None, max_length=64, description="Model outputs captured (default: "
                                             "all; [] for none).")
    fields: dict[TensorName, Rule] = Field(default_factory=dict, max_length=128, description="Masking of captured "
                                           "inputs and outputs, by name (keep when not listed).")
    request_id: Rule = Field(default_factory=FieldRule, description="The request's `id` (a string the client "
                             "chooses): keep, drop, hash or redact.")
    parameters: Rule = Field(default_factory=FieldRule, description="The request's `parameters` (client-chosen "
                             "values): keep, drop, hash or redact (each string value).")
    files: CaptureFiles = Field(default_factory=CaptureFiles, description="`deployc serve`'s capture files.")
    s3: CaptureS3 | None = Field(None, description="targets.sagemaker: SageMaker's own capture to S3 "
                                 "(DataCaptureConfig), which cannot mask.")

    @field_validator("inputs", "outputs")
    @classmethod
    def _once(cls, v: list[str] | None) -> list[str] | None:
        return _names(v)

    @model_validator(mode="after")
    def _kinds(self) -> Capture:
        problems: list[Located] = []
        for name, rule in self.fields.items():
            if rule.mask in STRING_MASKS:
                problems.append((("fields", name, "mask"), f"{name} is a tensor of numbers: redact applies to "
                                 "strings (request_id, parameters); use drop, hash, round or bucket"))
        for key in ("request_id", "parameters"):
            rule = getattr(self, key)
            if rule.mask in NUMERIC_MASKS:
                problems.append(((key, "mask"), f"{key} holds strings: {rule.mask} applies to tensors of numbers; "
                                 "use drop, hash or redact"))
        if problems:
            raise located(problems)
        return self

    def salt_envs(self) -> list[str]:
        """Every environment variable a hash rule reads its salt from, once each, in order."""
        rules = [*self.fields.values(), self.request_id, self.parameters]
        return list(dict.fromkeys(r.salt_env for r in rules if r.salt_env))

    def masked(self) -> list[tuple[tuple[str, ...], FieldRule]]:
        """(location below `capture`, rule) of every rule that masks or is marked sensitive."""
        found: list[tuple[tuple[str, ...], FieldRule]] = [
            (("fields", n), r) for n, r in self.fields.items() if r.mask != "keep" or r.sensitive]
        found += [((k,), getattr(self, k)) for k in ("request_id", "parameters")
                  if getattr(self, k).mask != "keep" or getattr(self, k).sensitive]
        return found


class Monitoring(SpecModel):
    capture: Capture | None = Field(None, description="Record a sample of inference requests and responses, "
                                    "masked field by field (docs/security.md, Privacy). Off when unset.")


CAPTURING_TARGETS = ("local", "sagemaker")


def capture_problems(spec: Any) -> list[Located]:
    """What the rest of the spec rules out for `monitoring.capture`: a target that captures, one capture setting
    for SageMaker, and nothing SageMaker's unmasked capture would write in clear."""
    cap = spec.monitoring.capture if spec.monitoring is not None else None
    at: tuple[str, ...] = ("monitoring", "capture")
    sm = getattr(spec.targets, "sagemaker", None)
    found: list[Located] = []
    if cap is None:
        return found
    if sm is not None and sm.data_capture is not None:
        found.append((("targets", "sagemaker", "data_capture"), "capture is set twice: monitoring.capture also "
                      "sets it; keep monitoring.capture and put the destination in monitoring.capture.s3"))
    if not cap.enabled:
        return found
    local = getattr(spec.targets, "local", None)
    if local is None and sm is None:
        found.append((at, f"no target captures: set targets.local (deployc serve writes the files) or "
                      f"targets.sagemaker (with monitoring.capture.s3); capturing targets: "
                      f"{', '.join(CAPTURING_TARGETS)}"))
    if local is not None:
        files = cap.files
        if files.max_total_mb < (local.workers + 1) * files.max_file_mb or files.max_files < local.workers + 1:
            found.append((at + ("files",), f"targets.local.workers is {local.workers}: each worker writes its own "
                          f"file, so max_total_mb must be at least (workers + 1) x max_file_mb "
                          f"({(local.workers + 1) * files.max_file_mb:g}) and max_files at least {local.workers + 1}"))
    if sm is not None:
        found += _sagemaker_problems(cap, sm, at)
    elif cap.s3 is not None:
        found.append((at + ("s3",), "s3 is where SageMaker's own capture goes: it needs targets.sagemaker"))
    return found


def _sagemaker_problems(cap: Capture, sm: Any, at: tuple[str, ...]) -> list[Located]:
    why = ("SageMaker's DataCaptureConfig writes whole requests and responses to S3 and cannot mask: "
           "capture masked fields with deployc serve (targets.local), or leave them out of this spec")
    found: list[Located] = []
    if cap.s3 is None:
        found.append((at, "targets.sagemaker captures through DataCaptureConfig: set monitoring.capture.s3 "
                      "(destination, kms_key)"))
    elif cap.s3.kms_key is None and sm.kms_key is None:
        found.append((at + ("s3",), "captured requests are encrypted at rest: set monitoring.capture.s3.kms_key "
                      "or targets.sagemaker.kms_key"))
    if sm.serverless is not None:
        found.append((at, "capture needs instances; serverless SageMaker endpoints do not support it"))
    if cap.sampling_percent != int(cap.sampling_percent):
        found.append((at + ("sampling_percent",), f"SageMaker samples whole percents: {cap.sampling_percent:g} "
                      "is not a whole number"))
    for loc, rule in cap.masked():
        what = "marked sensitive" if rule.sensitive else f"masked ({rule.mask})"
        found.append((at + loc, f"{'.'.join(loc)} is {what}, and {why}"))
    for which in ("inputs", "outputs"):
        names = getattr(cap, which)
        if names:
            found.append((at + (which,), f"SageMaker captures all {which} or none: it cannot choose "
                          f"{', '.join(names)} (remove the list, or [] for none)"))
    if cap.inputs == [] and cap.outputs == []:
        found.append((at, "inputs and outputs are both []: nothing would be captured"))
    return found
