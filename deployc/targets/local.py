"""`targets.local`: the `deployc serve` bundle in `local/` (docs/bundle.md; the bundle itself is
deployc/targets/bundle.py, shared by every target that runs `deployc serve`).

The local target plans the `local:batch-invariance` step (deployc/targets/invariance.py) for every spec that ships
a serving.json, set or not, so the bundles' `batching.enabled` follows the measured model.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from deployc import conventions as c
from deployc.schema.local import LocalTarget as LocalConfig
from deployc.targets.base import EmitContext, Target
from deployc.targets.bundle import serving_files, ships_serving_json
from deployc.targets.invariance import invariance_step

if TYPE_CHECKING:
    from deployc.compiler.steps import Step
    from deployc.schema.spec import DeploySpec


class LocalTarget(Target):
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
