"""Knowledge distillation of a Keras classifier into a smaller student (Hinton et al., 2015).

loss = alpha * KL(softmax(t / T) || softmax(s / T)) * T^2 + (1 - alpha) * CE(labels, softmax(s))

where t and s are the teacher's and student's logits. Models usually end in softmax and give probabilities:
their logits are recovered as log(p), which equals the true logits up to a per-row constant that softmax
ignores, so temperature scaling works on them unchanged. A binary classifier (one sigmoid unit or logit z) is
the two-class softmax of logits (0, z), so the same loss applies to it (z = log(p) - log(1 - p) for sigmoid
outputs). The teacher's logits are computed once (inference mode, no augmentation), packed beside the labels,
and the student trains with an ordinary `fit`. Inputs are one array or {input name: array} (`feeds`).
keras / tensorflow are imported inside the functions.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from deployc.errors import InputError
from deployc.ml import feeds, prune
from deployc.ml.channels import channel_graph

if TYPE_CHECKING:
    from deployc.progress import Progress

EPS = 1e-7


def shrink(teacher: Any, width: float) -> Any:
    """The teacher's graph of layers with the channels of each prunable group (see `prune.structured_keep`)
    times `width`, freshly initialized (from the global seed). Tied groups shrink as one."""
    graph = channel_graph(teacher, "distillation")
    keep = {owner: np.arange(max(1, int(round(g.size * width)))) for g in graph.groups() if not g.fixed
            for owner in g.owners}
    return prune.rebuild(graph, keep, copy_weights=False)


def _inputs(model: Any) -> dict[str, tuple[Any, ...]]:
    return {str(t.name): tuple(t.shape[1:]) for t in model.inputs}


def check_student(teacher: Any, student: Any, source: str) -> None:
    """The student must read the teacher's inputs (by name, when there are several) and predict the same
    classes."""
    t_out, s_out = teacher.outputs[0].shape[-1], student.outputs[0].shape[-1]
    if len(student.outputs) != 1:
        raise InputError(f"{source}: the student must have one output")
    if len(student.inputs) != len(teacher.inputs):
        raise InputError(f"{source}: the student has {len(student.inputs)} inputs, the teacher "
                         f"{len(teacher.inputs)}")
    t_in, s_in = _inputs(teacher), _inputs(student)
    if len(t_in) == 1:
        t_in, s_in = {"": next(iter(t_in.values()))}, {"": next(iter(s_in.values()))}
    elif set(t_in) != set(s_in):
        raise InputError(f"{source}: the student's inputs {sorted(s_in)} are not the teacher's {sorted(t_in)}")
    for name, shape in t_in.items():
        if s_in[name] != shape:
            which = f" {name!r}" if name else ""
            raise InputError(f"{source}: the student's input{which} shape {s_in[name]} differs from the "
                             f"teacher's {shape}")
    if t_out != s_out:
        raise InputError(f"{source}: the student predicts {s_out} classes, the teacher {t_out}")


def logits(model: Any, x: feeds.Inputs) -> np.ndarray:
    """Logits of a classifier (log of its probabilities when it ends in softmax); a binary one's as the two
    columns (0, z)."""
    out = np.asarray(model.predict(x, batch_size=256, verbose=0), dtype=np.float32)
    if out.shape[-1] != 1:
        return np.log(np.clip(out, EPS, 1.0)) if prune.outputs_probabilities(model) else out
    if prune.outputs_probabilities(model):
        p = np.clip(out, EPS, 1.0 - EPS)
        out = np.log(p) - np.log1p(-p)
    return np.concatenate([np.zeros_like(out), out], axis=-1)


def distill_loss(student_probs: bool, temperature: float, alpha: float, binary: bool = False) -> Any:
    """A Keras loss on y = [label, teacher logits...] (one row per sample) and the student's outputs (one
    column, a sigmoid probability or a logit, when `binary`)."""
    from keras import ops

    t2 = temperature * temperature

    def student_logits(out: Any) -> Any:
        if not binary:
            return ops.log(ops.clip(out, EPS, 1.0)) if student_probs else out
        if student_probs:
            p = ops.clip(out, EPS, 1.0 - EPS)
            out = ops.log(p) - ops.log(1.0 - p)
        return ops.concatenate([ops.zeros_like(out), out], axis=-1)

    def loss(y: Any, out: Any) -> Any:
        labels = ops.cast(y[:, 0], "int32")
        t_logits = y[:, 1:]
        s_logits = student_logits(out)
        t_log = ops.log_softmax(t_logits / temperature, axis=-1)
        s_log = ops.log_softmax(s_logits / temperature, axis=-1)
        kl = ops.sum(ops.exp(t_log) * (t_log - s_log), axis=-1) * t2
        ce = -ops.take_along_axis(ops.log_softmax(s_logits, axis=-1), labels[:, None], axis=-1)[:, 0]
        return alpha * kl + (1.0 - alpha) * ce

    return loss


def distill(teacher: Any, student: Any, x: feeds.Inputs, y: np.ndarray, temperature: float, alpha: float,
            epochs: int, batch_size: int, learning_rate: float, progress: Progress | None = None) -> dict[str, Any]:
    """Train `student` in place against the teacher's soft targets and the labels; returns training figures.
    Each epoch is reported to `progress` (default: the running step's)."""
    if teacher.outputs[0].shape[-1] is None:
        raise InputError("distillation needs a classifier with a known number of outputs (one per class, or "
                         "one sigmoid unit / logit)")
    packed = np.concatenate([y.reshape(-1, 1).astype(np.float32), logits(teacher, x)], axis=1)
    loss = distill_loss(prune.outputs_probabilities(student), temperature, alpha,
                        binary=student.outputs[0].shape[-1] == 1)
    return prune.fit(student, x, packed, epochs, batch_size, learning_rate, loss=loss, progress=progress,
                     label="training the student")
