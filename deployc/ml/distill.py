"""Knowledge distillation of a Keras classifier into a smaller student (Hinton et al., 2015).

loss = alpha * KL(softmax(t / T) || softmax(s / T)) * T^2 + (1 - alpha) * CE(labels, softmax(s))

where t and s are the teacher's and student's logits. Models usually end in softmax and give probabilities:
their logits are recovered as log(p), which equals the true logits up to a per-row constant that softmax
ignores, so temperature scaling works on them unchanged. The teacher's logits are computed once (inference
mode, no augmentation), packed beside the labels, and the student trains with an ordinary `fit`.
keras / tensorflow are imported inside the functions.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from deployc.errors import InputError
from deployc.ml import prune

EPS = 1e-7


def shrink(teacher: Any, width: float) -> Any:
    """The teacher's chain of layers with each Dense/Conv width (but the output's) times `width`, freshly
    initialized (from the global seed)."""
    chain = prune.layer_chain(teacher, "distillation")
    last = prune.output_width_layer(chain).name
    keep = {name: np.arange(max(1, int(round(n * width)))) for name, n in prune.widths(teacher).items()
            if name != last}
    return prune.rebuild(teacher, chain, keep, copy_weights=False)


def check_student(teacher: Any, student: Any, source: str) -> None:
    """The student must read the teacher's inputs and predict the same classes."""
    t_in, s_in = tuple(teacher.inputs[0].shape[1:]), tuple(student.inputs[0].shape[1:])
    t_out, s_out = teacher.outputs[0].shape[-1], student.outputs[0].shape[-1]
    if len(student.inputs) != 1 or len(student.outputs) != 1:
        raise InputError(f"{source}: the student must have one input and one output")
    if t_in != s_in:
        raise InputError(f"{source}: the student's input shape {s_in} differs from the teacher's {t_in}")
    if t_out != s_out:
        raise InputError(f"{source}: the student predicts {s_out} classes, the teacher {t_out}")


def logits(model: Any, x: np.ndarray) -> np.ndarray:
    """Logits of a classifier (log of its probabilities when it ends in softmax)."""
    out = np.asarray(model.predict(x, batch_size=256, verbose=0), dtype=np.float32)
    return np.log(np.clip(out, EPS, 1.0)) if prune.outputs_probabilities(model) else out


def distill_loss(student_probs: bool, temperature: float, alpha: float) -> Any:
    """A Keras loss on y = [label, teacher logits...] (one row per sample) and the student's outputs."""
    from keras import ops

    t2 = temperature * temperature

    def loss(y: Any, out: Any) -> Any:
        labels = ops.cast(y[:, 0], "int32")
        t_logits = y[:, 1:]
        s_logits = ops.log(ops.clip(out, EPS, 1.0)) if student_probs else out
        t_log = ops.log_softmax(t_logits / temperature, axis=-1)
        s_log = ops.log_softmax(s_logits / temperature, axis=-1)
        kl = ops.sum(ops.exp(t_log) * (t_log - s_log), axis=-1) * t2
        ce = -ops.take_along_axis(ops.log_softmax(s_logits, axis=-1), labels[:, None], axis=-1)[:, 0]
        return alpha * kl + (1.0 - alpha) * ce

    return loss


def distill(teacher: Any, student: Any, x: np.ndarray, y: np.ndarray, temperature: float, alpha: float,
            epochs: int, batch_size: int, learning_rate: float) -> dict[str, Any]:
    """Train `student` in place against the teacher's soft targets and the labels; returns training figures."""
    if teacher.outputs[0].shape[-1] in (None, 1):
        raise InputError("distillation needs a classifier with one output per class (softmax or logits)")
    packed = np.concatenate([y.reshape(-1, 1).astype(np.float32), logits(teacher, x)], axis=1)
    loss = distill_loss(prune.outputs_probabilities(student), temperature, alpha)
    return prune.fit(student, x, packed, epochs, batch_size, learning_rate, loss=loss)
