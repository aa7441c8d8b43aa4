"""The `prune` pass: magnitude (unstructured) or structured pruning of a Keras model, fine-tuned on data.train."""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from deployc.passes.base import PassInput, PassResult
from deployc.passes.keras import (
    SEED,
    KerasPass,
    file_sizes,
    finish,
    train_data,
    weight_sizes,
)
from deployc.schema.base import SpecModel


class PruneConfig(SpecModel):
    sparsity: float = Field(0.5, gt=0.0, lt=1.0, description="Unstructured: share of the weights of each Dense/Conv "
                            "kernel set to zero (biases kept). Structured: share of the units/filters removed from "
                            "each Dense/Conv layer but the output one.")
    structured: bool = Field(False, description="Remove whole Dense units / Conv2D filters and rebuild a smaller "
                             "model (faster on CPU) instead of zeroing single weights (smaller when compressed).")
    epochs: int = Field(2, ge=0, le=1000, description="Fine-tuning epochs on data.train; unstructured sparsity "
                        "ramps up over the first 3/4 of the steps. 0 prunes at once without fine-tuning.")
    batch_size: int = Field(32, ge=1, le=65536, description="Fine-tuning batch size.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate for fine-tuning.")


class PrunePass(KerasPass):
    name: ClassVar[str] = "prune"
    config_model: ClassVar[type[PruneConfig]] = PruneConfig

    def _apply(self, inp: PassInput) -> PassResult:
        from deployc.ml import prune
        from deployc.ml.convert import load_keras

        cfg: PruneConfig = inp.config
        original = load_keras(inp.model)
        model = load_keras(inp.model)
        x, y = train_data(inp, model, "prune")
        details: dict[str, Any] = {"structured": cfg.structured, "target_sparsity": cfg.sparsity,
                                   "seed": SEED, "before": {**weight_sizes(original), **file_sizes(inp.model)}}
        if cfg.structured:
            inp.log(f"prune: removing {cfg.sparsity:.0%} of the units/filters, fine-tuning {cfg.epochs} epochs")
            model, done = prune.prune_structured(model, x, y, cfg.sparsity, cfg.epochs, cfg.batch_size,
                                                 cfg.learning_rate, progress=inp.progress)
            details.update(done)
            details["widths_before"] = prune.widths(original)
            details["widths_after"] = prune.widths(model)
            details["params_before"] = int(original.count_params())
            details["params_after"] = int(model.count_params())
        else:
            inp.log(f"prune: {cfg.sparsity:.0%} magnitude sparsity, fine-tuning {cfg.epochs} epochs")
            details["training"] = prune.prune_unstructured(model, x, y, cfg.sparsity, cfg.epochs, cfg.batch_size,
                                                           cfg.learning_rate, progress=inp.progress)
            details["sparsity"] = prune.sparsity_report(prune.kernel_layers(model))
        return finish(inp, original, model, x, y, details)
