"""The `optimize:` list: each item is a one-key mapping naming the pass (`- quantize: {mode: int8-dynamic}`).

The item models are built from the pass registry (`deployc.passes`): one `<Name>Step` model per registered pass,
built-ins and plugins alike, whose single field is the pass's own config model. The JSON Schema documents each
pass through them, and the spec's cross-field check runs each configured pass's `check`.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Discriminator, Field, Tag, create_model, model_validator

from deployc.passes import pass_class, pass_entries
from deployc.passes.base import FORMAT_LABELS
from deployc.passes.distill import DistillConfig
from deployc.passes.prune import PruneConfig
from deployc.passes.quantize import QuantizeConfig
from deployc.schema.base import Located, SpecModel

if TYPE_CHECKING:
    from deployc.schema.spec import DeploySpec


class _PassStep(SpecModel):
    @model_validator(mode="before")
    @classmethod
    def _none_means_defaults(cls, value: Any) -> Any:
        # `- quantize:` (no mapping) means "the defaults".
        if isinstance(value, dict) and len(value) == 1:
            key, inner = next(iter(value.items()))
            if inner is None:
                return {key: {}}
        return value


def _step_model(name: str) -> type[SpecModel]:
    """`QuantizeStep`: the one-key mapping `quantize: <QuantizeConfig>` (defaults when the value is empty)."""
    config = pass_class(name).config_model
    title = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name) if part) + "Step"
    model: type[SpecModel] = create_model(title, __base__=_PassStep, __module__=__name__,
                                          **{name: (config, Field(default_factory=config))})  # type: ignore[call-overload]
    return model


PASS_STEP_MODELS: dict[str, type[SpecModel]] = {name: _step_model(name) for name in pass_entries()}


def _pass_tag(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return key if key in PASS_STEP_MODELS else None
    if isinstance(value, SpecModel):
        return next(iter(type(value).model_fields))
    return None


def _item_type() -> Any:
    """The tagged union of every step model; an unknown key gets one message that lists the passes."""
    names = ", ".join(f"`{name}:`" for name in PASS_STEP_MODELS)
    tagged = tuple(Annotated[model, Tag(name)] for name, model in PASS_STEP_MODELS.items())
    return Annotated[Union[tagged],  # noqa: UP007 (a union built from a tuple)
                     Discriminator(_pass_tag, custom_error_type="pass", custom_error_context={},
                                   custom_error_message=f"each optimize item is one of {names} with its settings")]


if TYPE_CHECKING:
    PassItem = SpecModel
else:
    PassItem = _item_type()


def pass_name(item: SpecModel) -> str:
    return next(iter(type(item).model_fields))


def pass_config(item: SpecModel) -> SpecModel:
    cfg = getattr(item, pass_name(item))
    assert isinstance(cfg, SpecModel)
    return cfg


def optimize_problems(spec: DeploySpec, model_format: str) -> list[Located]:
    """The rules every configured pass follows, then each pass's own `check`: a Keras-format pass needs a Keras
    model file and comes before every ONNX-format pass (it runs before the conversion to ONNX)."""
    problems: list[Located] = []
    first_onnx: str | None = None
    for i, item in enumerate(spec.optimize):
        name = pass_name(item)
        p = pass_class(name)()
        loc = ("optimize", i, name)
        if p.input_format == "keras":
            if model_format == "onnx":
                problems.append((loc, f"{name} needs a Keras model (.keras or .h5); {spec.model.path} is ONNX"))
            elif model_format == "savedmodel":  # Keras 3 loads a SavedModel for inference only (TFSMLayer)
                problems.append((loc, f"{name} needs a Keras model (.keras or .h5); {spec.model.path} is a "
                                 "SavedModel, which Keras 3 cannot train: save the model with "
                                 "model.save('model.keras') and point model.path at that file"))
            if first_onnx is not None:
                problems.append((loc, f"{name} runs on the {FORMAT_LABELS['keras']} model, so it must come before "
                                 f"{first_onnx}"))
        elif first_onnx is None:
            first_onnx = name
        problems.extend(p.check(spec, i))
    return problems


__all__ = ["PASS_STEP_MODELS", "DistillConfig", "PassItem", "PruneConfig", "QuantizeConfig", "optimize_problems",
           "pass_config", "pass_name"]
