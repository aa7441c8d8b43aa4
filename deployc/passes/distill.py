"""The `distill` pass: the input model teaches a smaller student, which replaces it for the passes that follow."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from deployc.errors import InputError
from deployc.passes.base import PassInput, PassResult
from deployc.passes.prune import (
    MODEL_FILE,
    SEED,
    KerasPass,
    accuracies,
    file_sizes,
    save_keras,
    train_data,
    weight_sizes,
)
from deployc.schema.passes import DistillConfig


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
    config_model = DistillConfig

    def _apply(self, inp: PassInput) -> PassResult:
        from deployc.ml import distill, prune
        from deployc.ml.convert import load_keras

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
                                   cfg.learning_rate)
        out = inp.out_dir / MODEL_FILE
        save_keras(student, out)
        details: dict[str, Any] = {
            **origin, "seed": SEED, "temperature": cfg.temperature, "alpha": cfg.alpha, "training": training,
            "params_teacher": int(teacher.count_params()), "params_student": int(student.count_params()),
            "widths_teacher": prune.widths(teacher), "widths_student": prune.widths(student),
            "before": {**weight_sizes(teacher), **file_sizes(inp.model)},
            "after": {**weight_sizes(student), **file_sizes(out)},
        }
        details.update(accuracies(inp, teacher, student, x, y))
        return PassResult(model=out, details=details)
