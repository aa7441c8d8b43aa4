"""`targets.local`: the bundle `deployc serve` runs."""
from __future__ import annotations

from pydantic import Field

from deployc.schema.base import SpecModel


class Batching(SpecModel):
    enabled: bool = Field(True, description="Merge concurrent requests (only when the model has a batch axis).")
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_delay_ms: float = Field(2.0, ge=0, le=1000, description="Longest a request waits for companions.")


class Threads(SpecModel):
    intra_op: int = Field(1, ge=0, le=256, description="onnxruntime intra-op threads (0: runtime default).")
    inter_op: int = Field(1, ge=0, le=256)


class Auth(SpecModel):
    token_env: str = Field(..., pattern=r"^[A-Z_][A-Z0-9_]*$",
                           description="Environment variable holding the bearer token (never the token itself).")


class LocalTarget(SpecModel):
    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 only inside a container.")
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="Server processes.")
    threads: Threads = Field(default_factory=Threads)
    batching: Batching = Field(default_factory=Batching)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1024**3)
    auth: Auth | None = Field(None, description="Bearer-token auth; /v2/health/* and /ping stay open.")
