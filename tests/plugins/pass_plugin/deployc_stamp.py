"""A minimal third-party deployc pass (test data): it stamps the ONNX model with a metadata entry.

Installed only by being on PYTHONPATH next to its `deployc_stamp-1.2.3.dist-info` folder, whose entry_points.txt
registers `StampPass` in the `deployc.passes` group.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from deployc.passes.base import Format, Pass, PassInput, PassResult
from deployc.schema.base import Located, SpecModel

if TYPE_CHECKING:
    from deployc.schema.spec import DeploySpec

RESERVED_PREFIX = "deployc."


class StampConfig(SpecModel):
    key: str = Field("stamp", min_length=1, description="The metadata_props key written into the model.")
    value: str = Field(..., description="The text stored under `key`; also the model's doc_string.")


class StampPass(Pass):
    name: ClassVar[str] = "stamp"
    config_model: ClassVar[type[StampConfig]] = StampConfig
    input_format: ClassVar[Format] = "onnx"
    output_format: ClassVar[Format] = "onnx"
    libs: ClassVar[tuple[str, ...]] = ("onnx",)

    def variant(self, config: StampConfig) -> str:
        return config.key

    def check(self, spec: DeploySpec, index: int) -> list[Located]:
        config: StampConfig = self.config_in(spec, index)
        if config.key.startswith(RESERVED_PREFIX):
            return [(("optimize", index, self.name, "key"), f"{config.key!r}: keys starting with "
                     f"{RESERVED_PREFIX!r} are reserved")]
        return []

    def apply(self, inp: PassInput) -> PassResult:
        import onnx

        config: StampConfig = inp.config
        model = onnx.load(str(inp.model))
        props = {p.key: p.value for p in model.metadata_props}
        props[config.key] = config.value
        del model.metadata_props[:]
        for key in sorted(props):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, props[key]
        model.doc_string = config.value
        inp.out_dir.mkdir(parents=True, exist_ok=True)
        out = inp.out_dir / "model.onnx"
        onnx.save(model, str(out))
        return PassResult(model=out, details={"key": config.key, "value": config.value})
