"""A third-party deployc target, as a plugin distribution ships one: `targets.echo` writes a greeting and what
its own cached step measured of the shipped model. Registered by deployc_echo-0.3.0.dist-info/entry_points.txt.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from deployc.schema.base import Located, SpecModel
from deployc.targets.base import EmitContext, Target

if TYPE_CHECKING:  # the schema loads this module while it builds `targets:`: the spec model for annotations only
    from deployc.compiler.steps import Step, StepContext
    from deployc.schema.spec import DeploySpec

SIZE_STEP = "echo:size"


class EchoConfig(SpecModel):
    greeting: str = Field("hello", min_length=1, max_length=200, description="The text echo/greeting.txt holds.")
    repeat: int = Field(1, ge=1, le=10, description="How many times the greeting is written.")


def measure_size(ctx: StepContext, model_step: str) -> dict[str, Any]:
    out = ctx.deps[model_step]
    size = sum(p.stat().st_size for p in Path(out.dir).rglob("*.onnx"))
    (ctx.out_dir / "size.txt").write_text(f"{size}\n")
    return {"model_bytes": size}


class EchoTarget(Target):
    name = "echo"
    config_model = EchoConfig
    description = "Echo: a greeting and the shipped model's size (the plugin test's target)."

    def check(self, spec: DeploySpec) -> list[Located]:
        cfg: EchoConfig = self.config(spec)
        if cfg.greeting.startswith("!"):
            return [(("targets", "echo", "greeting"), "echo: a greeting may not start with '!'")]
        return []

    def steps(self, spec: DeploySpec, spec_dir: Path, final_model_step: str, keras_model_step: str | None
              ) -> list[Step]:
        from deployc.compiler.steps import Step

        run = partial(measure_size, model_step=final_model_step)
        return [Step(SIZE_STEP, "measure the shipped model for echo", run, deps=(final_model_step,))]

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        cfg: EchoConfig = self.config(ctx.spec)
        size = ctx.step_results[SIZE_STEP]["model_bytes"]
        return {
            "echo/greeting.txt": ("\n".join([cfg.greeting] * cfg.repeat) + "\n").encode(),
            "echo/model.json": json.dumps({"sha256": ctx.onnx_sha256, "bytes": size}, sort_keys=True).encode(),
        }
