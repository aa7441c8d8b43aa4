"""The `distill` pass: the input model teaches a smaller student, which replaces it for the passes that follow."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from deployc.errors import InputError
from deployc.passes.base import PassInput, PassResult
from deployc.passes.keras import (
    SEED,
    KerasPass,
    finish,
    train_data,
)
from deployc.schema.base import RelPath, SpecModel


class DistillConfig(SpecModel):
    student: RelPath | None = Field(None, description="A Keras model file for the student (same input shape and "
                                    "number of classes as the teacher), trained from the weights it holds; default: "
                                    "the teacher's architecture shrunk by `width`, freshly initialized.")
    width: float = Field(0.5, gt=0.0, le=1.0, description="Width factor for the generated student: Dense units and "
                         "Conv filters are multiplied by it, except the output layer's.")
    temperature: float = Field(4.0, gt=0.0, description="Softmax temperature of the distillation term.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the distillation loss (KL at the temperature, "
                         "times T^2) vs the label cross-entropy (1 - alpha).")
    epochs: int = Field(10, ge=1, le=1000, description="Student training epochs on data.train.")
    batch_size: int = Field(64, ge=1, le=65536, description="Student training batch size.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate for the student.")


def student_path(inp: PassInput, rel: str) -> Path:
    """The student file, relative to the spec's folder and inside it."""
    base = (inp.spec_dir or Path.cwd()).resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise InputError(f"distill.student: {rel!r} leaves the folder of deploy.yaml")
    if not path.is_file():
        raise InputError(f"distill.student: {rel!r} is not a file")
    return path


class DistillPass(KerasPass):
    name: ClassVar[str] = "distill"
    config_model: ClassVar[type[DistillConfig]] = DistillConfig

    def input_files(self, config: DistillConfig) -> tuple[str, ...]:
        return (config.student,) if config.student else ()

    def _apply(self, inp: PassInput) -> PassResult:
        from deployc.ml import distill, prune
        from deployc.ml.convert import load_keras
        from deployc.ml.fold import fold_batchnorm

        cfg: DistillConfig = inp.config
        teacher = load_keras(inp.model)
        x, y = train_data(inp, teacher, "distill")
        if cfg.student:
            src = student_path(inp, cfg.student)
            student = load_keras(src)
            distill.check_student(teacher, student, cfg.student)
            origin: dict[str, Any] = {"student": cfg.student}
        else:
            student = distill.shrink(teacher, cfg.width)
            origin = {"student": None, "width": cfg.width}
        inp.log(f"distill: student with {student.count_params()} parameters (teacher {teacher.count_params()}), "
                f"{cfg.epochs} epochs at T={cfg.temperature}, alpha={cfg.alpha}")
        training = distill.distill(teacher, student, x, y, cfg.temperature, cfg.alpha, cfg.epochs, cfg.batch_size,
                                   cfg.learning_rate, progress=inp.progress)
        try:
            student, folded = fold_batchnorm(student)
        except InputError:  # a student file this graph reader cannot rebuild (nested, shared layers): kept as is
            folded = []
        details: dict[str, Any] = {
            **origin, "seed": SEED, "temperature": cfg.temperature, "alpha": cfg.alpha, "training": training,
            "batchnorm_folded": folded,
            "params_teacher": int(teacher.count_params()), "params_student": int(student.count_params()),
            "widths_teacher": prune.widths(teacher), "widths_student": prune.widths(student),
        }
        return finish(inp, teacher, student, x, y, details)
