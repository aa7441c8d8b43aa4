"""`targets.local`: the `deployc serve` bundle in `local/` (docs/bundle.md; the bundle itself is
deployc/targets/bundle.py, shared by every target that runs `deployc serve`).

The local target plans the `local:batch-invariance` step (deployc/targets/invariance.py) for every spec that ships
a serving.json, set or not, so the bundles' `batching.enabled` follows the measured model.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from deployc import conventions as c
from deployc.schema.base import SpecModel
from deployc.serve.limits import Limits as _ServeLimits
from deployc.targets.base import EmitContext, Target
from deployc.targets.bundle import serving_files, ships_serving_json
from deployc.targets.invariance import invariance_step

if TYPE_CHECKING:
    from deployc.compiler.steps import Step
    from deployc.schema.spec import DeploySpec


# Config: `targets.local` in deploy.yaml.

_D = _ServeLimits()  # the defaults, defined once (deployc/serve/limits.py)


class Batching(SpecModel):
    enabled: bool | None = Field(
        None, description="Merge concurrent requests into one model run (only when the model has a batch axis). "
        "Unset: on when the build measures the shipped model as batch-invariant (docs/serving.md); true on a "
        "model that is not is a build error unless allow_cross_request_variance is true.")
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_delay_ms: float = Field(2.0, ge=0, le=1000, description="Longest a request waits for companions.")
    allow_cross_request_variance: bool = Field(
        False, description="With enabled: true, batch requests together even though the model is not "
        "batch-invariant (e.g. int8-dynamic): a client's outputs then depend on the other requests in its batch.")


class Limits(SpecModel):
    """Bounds on slow and hostile clients (docs/serving.md, "Limits")."""
    header_timeout_s: float = Field(_D.header_timeout_s, gt=0, le=3600, description="A request head (line and "
                                    "headers) not complete this long after its first byte: 408, connection closed.")
    body_timeout_s: float = Field(_D.body_timeout_s, gt=0, le=3600, description="A request body that sends "
                                  "nothing for this long: 408, connection closed.")
    body_deadline_s: float = Field(_D.body_deadline_s, gt=0, le=3600, description="A request body not complete "
                                   "this long after its head (a trickle that defeats body_timeout_s): 408.")
    keep_alive_s: float = Field(_D.keep_alive_s, gt=0, le=3600, description="An idle keep-alive connection is "
                                "closed after this long; keep it above a load balancer's idle timeout (ALB: 60 s).")
    max_connections: int = Field(_D.max_connections, ge=1, le=1_000_000, description="Open connections per "
                                 "server process; a request on one more gets 503 with Retry-After.")
    max_inflight_body_bytes: int = Field(_D.max_inflight_body_bytes, ge=1024, le=1 << 40, description="Bytes of "
                                         "request bodies being received at once per process (a declared "
                                         "Content-Length counts whole); a body that does not fit: 503, Retry-After.")


class Threads(SpecModel):
    intra_op: int = Field(1, ge=0, le=256, description="onnxruntime intra-op threads (0: runtime default).")
    inter_op: int = Field(1, ge=0, le=256)


class Auth(SpecModel):
    token_env: str = Field(..., pattern=r"^[A-Z_][A-Z0-9_]*$",
                           description="Environment variable holding the bearer token (never the token itself).")


class LocalConfig(SpecModel):
    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 only inside a container.")
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="Server processes.")
    threads: Threads = Field(default_factory=Threads)
    batching: Batching = Field(default_factory=Batching)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1024**3)
    auth: Auth | None = Field(None, description="Bearer-token auth; /v2/health/* and /ping stay open.")
    limits: Limits = Field(default_factory=Limits, description="Timeouts, open connections and in-flight body "
                           "bytes (docs/serving.md, Limits).")
    grpc_port: int | None = Field(None, ge=1, le=65535, description="Also serve the Open Inference Protocol over "
                                  "gRPC (inference.GRPCInferenceService) on this port: same model, batcher, metrics "
                                  "and auth as the HTTP port. Unset: no gRPC (docs/serving.md).")

    @model_validator(mode="after")
    def _distinct_ports(self) -> LocalConfig:
        if self.grpc_port == self.port:
            raise ValueError(f"grpc_port must differ from port ({self.port})")
        return self

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> LocalConfig:
        if self.limits.max_inflight_body_bytes < self.max_body_bytes:
            raise ValueError(f"limits.max_inflight_body_bytes ({self.limits.max_inflight_body_bytes}) must be "
                             f"at least max_body_bytes ({self.max_body_bytes})")
        return self


# The target.

class LocalTarget(Target):
    model_formats = ("onnx", "openvino")  # `deployc serve` runs both
    name = "local"
    config_model = LocalConfig
    description = "A bundle `deployc serve` runs."
    serves = True

    def steps(self, spec: DeploySpec, spec_dir: Path, final_model_step: str, keras_model_step: str | None
              ) -> list[Step]:
        """Planned for every spec that ships a serving.json (also without targets.local), once."""
        return [invariance_step(spec, spec_dir, final_model_step)] if ships_serving_json(spec) else []

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        files = serving_files(ctx, self.config(ctx.spec))
        return {f"{c.LOCAL_DIR}/{k}": v for k, v in files.items()}
