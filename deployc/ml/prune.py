"""Pruning of Keras 3 models, written here because tensorflow-model-optimization does not accept Keras 3.

Two kinds:
- unstructured: the lowest-magnitude weights of each Dense/Conv kernel become zero, following a cubic
  polynomial schedule (TF-MOT's PolynomialDecay) while the model fine-tunes; masks are re-applied after every
  optimizer step. The file compresses better; inference is not faster.
- structured: the lowest-norm Dense units / Conv filters are removed and a smaller model is rebuilt from the
  model's channel graph (`deployc.ml.channels`; `rebuild` also shrinks a distillation student); channels tied
  by a residual Add are chosen jointly; BatchNormalization is folded into the convolution before it once the
  model is fine-tuned (`deployc.ml.fold`). Inference is faster.
keras / tensorflow are imported inside the functions. Inputs (`x`) are one array, or {input name: array} for a
model of several inputs (`deployc.ml.feeds`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from deployc.errors import InputError
from deployc.ml import feeds
from deployc.ml.channels import CHANNELWISE, DEPTHWISE, WIDTH_LAYERS, Graph, Op, Plan, channel_graph, clone
from deployc.ml.fold import fold_batchnorm

if TYPE_CHECKING:
    from deployc.progress import Progress, Task

KERNEL_LAYERS = ("Dense", "Conv1D", "Conv2D", "Conv3D")  # layers whose `kernel` unstructured pruning zeroes


# ---------------------------------------------------------------- unstructured (magnitude) pruning

def kernel_layers(model: Any) -> list[Any]:
    """Dense/Conv layers anywhere in the model (nested models included), in a stable order."""
    found = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if type(layer).__name__ in KERNEL_LAYERS and getattr(layer, "kernel", None) is not None]
    if not found:
        raise InputError(f"model {model.name!r} has no Dense or Conv layer to prune")
    return found


def polynomial_sparsity(step: int, end_step: int, target: float, power: int = 3) -> float:
    """Sparsity at `step`: 0 at step 0, `target` from `end_step` on, cubic in between (fast first, then slow)."""
    if end_step <= 0 or step >= end_step:
        return target
    return target * (1.0 - (1.0 - step / end_step) ** power)


def magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """A 0/1 mask zeroing exactly round(sparsity * size) of the smallest |weights| (ties: first index first)."""
    flat = np.abs(weights).ravel()
    k = int(round(sparsity * flat.size))
    mask = np.ones(flat.size, dtype=np.float32)
    mask[np.argsort(flat, kind="stable")[:k]] = 0.0
    return mask.reshape(weights.shape)


def apply_masks(layers: list[Any], sparsity: float) -> list[np.ndarray]:
    """Zero the smallest weights of each kernel in place; returns the masks in the order of `layers`."""
    masks = []
    for layer in layers:
        w = np.asarray(layer.kernel.numpy())
        masks.append(magnitude_mask(w, sparsity))
        layer.kernel.assign(w * masks[-1])
    return masks


def mask_callback(layers: list[Any], target: float, end_step: int, frequency: int) -> Any:
    """A Keras callback that keeps the kernels masked during fit and raises sparsity along the schedule."""
    import keras

    class MaskCallback(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.step = 0
            self.masks: list[Any] = []  # none before the first update: the schedule starts at 0

        def _update(self, sparsity: float) -> None:
            self.masks = [keras.ops.convert_to_tensor(m) for m in apply_masks(layers, sparsity)]

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.step += 1
            if self.step % frequency == 0 or self.step == end_step:
                self._update(polynomial_sparsity(self.step, end_step, target))
            else:
                for layer, mask in zip(layers, self.masks, strict=False):  # no masks before the first update
                    layer.kernel.assign(layer.kernel * mask)

        def on_train_end(self, logs: Any = None) -> None:
            self._update(target)

    return MaskCallback()


def sparsity_report(layers: list[Any]) -> dict[str, Any]:
    """Share of exact zeros per kernel and overall (biases excluded)."""
    per, zeros, total = {}, 0, 0
    for layer in layers:
        w = np.asarray(layer.kernel.numpy())
        z = int(np.count_nonzero(w == 0))
        per[layer.name] = round(z / w.size, 6)
        zeros, total = zeros + z, total + w.size
    return {"per_layer": per, "overall": round(zeros / max(1, total), 6), "zero_weights": zeros,
            "kernel_weights": total}


# ---------------------------------------------------------------- structured: channels kept, narrower rebuild

def _take(w: np.ndarray, index: np.ndarray | None, axis: int) -> np.ndarray:
    return w if index is None else np.take(w, index, axis=axis)


def layer_plan(graph: Graph, op: Op, keep: dict[str, np.ndarray], copy_weights: bool) -> Plan:
    """`op`'s layer with the channels kept: the config with its new width, and (with copy_weights) its weights
    sliced on the output side (a Dense/Conv layer of a pruned group) and on the input side (what the layers
    before it kept). A depthwise kernel follows its input; a SeparableConv's depthwise part follows its input
    and its pointwise part is sliced on both sides."""
    cfg = op.layer.get_config()
    weights = [np.asarray(w) for w in op.layer.get_weights()] if copy_weights else []
    inp = graph.kept(graph.maps[op.inputs[0]], keep) if op.inputs else None
    out = graph.kept(graph.maps[op.output], keep)
    if op.kind in WIDTH_LAYERS:
        if out is not None:
            cfg["units" if op.kind == "Dense" else "filters"] = int(len(out))
        if weights and op.kind.startswith("Separable"):  # depthwise (..., in, m), pointwise (..., in*m, out)
            times = int(cfg.get("depth_multiplier", 1))
            rows = None if inp is None else (inp[:, None] * times + np.arange(times)[None, :]).ravel()
            weights = [_take(weights[0], inp, -2), _take(_take(weights[1], rows, -2), out, -1)] + [
                _take(w, out, -1) for w in weights[2:]]
        elif weights:
            weights = [_take(_take(weights[0], inp, -2), out, -1)] + [_take(w, out, -1) for w in weights[1:]]
    elif op.kind in DEPTHWISE and weights:  # kernel (..., in, multiplier), bias (in * multiplier)
        weights = [_take(weights[0], inp, -2)] + [_take(w, out, -1) for w in weights[1:]]
    elif op.kind in CHANNELWISE and weights:
        weights = [_take(w, inp, -1) for w in weights]
    return cfg, weights


def rebuild(graph: Graph, keep: dict[str, np.ndarray], copy_weights: bool = True) -> Any:
    """A new model of the same graph where each group of tied channels keeps `keep[any of its owners]`.

    With copy_weights, kept weights are copied and every later layer's input weights are sliced to match
    (through BatchNormalization, activations, depthwise convolutions, merges, pooling and Flatten); without,
    the new layers keep their fresh initialization (a distillation student)."""
    return clone(graph, {op.name: layer_plan(graph, op, keep, copy_weights)
                         for op in graph.ops if op.kind != "InputLayer"})


def channel_scores(graph: Graph) -> dict[str, np.ndarray]:
    """L2 norm of each unit's/filter's weights (a SeparableConv's pointwise ones), scaled by
    |gamma| / sqrt(moving_variance + eps) of a BatchNormalization that alone reads the layer's output."""
    scores = {}
    for op in graph.ops:
        if op.kind not in WIDTH_LAYERS:
            continue
        kernel = op.layer.pointwise_kernel if op.kind.startswith("Separable") else op.layer.kernel
        k = np.asarray(kernel.numpy())
        s = np.sqrt(np.sum(k.reshape(-1, k.shape[-1]).astype(np.float64) ** 2, axis=0))
        nxt = graph.only_consumer(op.output)
        if nxt is not None and nxt.kind == "BatchNormalization" and nxt.layer.scale:
            var = np.asarray(nxt.layer.moving_variance.numpy(), dtype=np.float64)
            s = s * np.abs(np.asarray(nxt.layer.gamma.numpy(), dtype=np.float64)) / np.sqrt(var + nxt.layer.epsilon)
        scores[op.name] = s
    return scores


def group_scores(graph: Graph) -> dict[str, np.ndarray]:
    """One score per channel of each prunable group: the sum over its owners of their scores, each divided by
    its mean (so that a layer with larger weights does not decide for the others)."""
    scores = channel_scores(graph)
    return {g.name: np.sum([scores[o] / max(float(np.mean(scores[o])), 1e-12) for o in g.owners], axis=0)
            for g in graph.groups() if not g.fixed}


def structured_keep(graph: Graph, fraction: float) -> dict[str, np.ndarray]:
    """Indices of the channels to keep, per Dense/Conv layer of a prunable group (highest group scores, in
    original order; the owners of one group get the same array). Fixed groups are absent: they keep all."""
    owners = {g.name: g.owners for g in graph.groups()}
    keep = {}
    for name, s in group_scores(graph).items():
        n = max(1, int(round(len(s) * (1.0 - fraction))))
        kept = np.sort(np.argsort(-s, kind="stable")[:n])
        keep.update({owner: kept for owner in owners[name]})
    return keep


def groups_report(graph: Graph) -> dict[str, Any]:
    """For the report: the groups of layers whose channels are tied (by Add and the like) and pruned as one,
    and the layers that keep all their channels (their channels reach a model input, an Embedding or the
    output)."""
    groups = graph.groups()
    return {"tied": [g.owners for g in groups if len(g.owners) > 1 and not g.fixed],
            "unpruned": [o for g in groups if g.fixed for o in g.owners]}


def widths(model: Any) -> dict[str, int]:
    """Output channels of each Dense/Conv/SeparableConv/DepthwiseConv layer, for reports."""
    out = {}
    for layer in model._flatten_layers(include_self=False):
        kind = type(layer).__name__
        kernel = getattr(layer, "pointwise_kernel" if kind.startswith("Separable") else "kernel", None)
        if kernel is None or (kind not in WIDTH_LAYERS and kind not in DEPTHWISE):
            continue
        out[layer.name] = int(kernel.shape[-2] * kernel.shape[-1]) if kind in DEPTHWISE else int(kernel.shape[-1])
    return out


# ---------------------------------------------------------------- the two prunings, end to end

def prune_unstructured(model: Any, x: feeds.Inputs, y: np.ndarray, sparsity: float, epochs: int, batch_size: int,
                       learning_rate: float, callbacks: list[Any] | None = None, progress: Progress | None = None
                       ) -> dict[str, Any]:
    """Fine-tune while sparsity ramps to `sparsity` over the first 3/4 of the steps; the last quarter recovers
    with the masks fixed. With epochs=0 the kernels are pruned at once. Returns the training figures."""
    layers = kernel_layers(model)
    steps = epochs * -(-feeds.rows(x) // batch_size)
    if steps == 0:
        apply_masks(layers, sparsity)
        return {}
    end = max(1, (3 * steps) // 4)
    cb = mask_callback(layers, sparsity, end, frequency=max(1, end // 16))
    return fit(model, x, y, epochs, batch_size, learning_rate, [cb] + list(callbacks or []), progress=progress)


def prune_structured(model: Any, x: feeds.Inputs, y: np.ndarray, fraction: float, epochs: int, batch_size: int,
                     learning_rate: float, progress: Progress | None = None) -> tuple[Any, dict[str, Any]]:
    """Remove `fraction` of the channels of every prunable group (the output's and those tied to an input or
    an Embedding keep theirs), fine-tune with BatchNormalization in place, then fold it. Returns the model and
    what was done: training figures, the tied groups, the layers left whole, the BatchNormalizations folded."""
    graph = channel_graph(model, "structured pruning")
    small = rebuild(graph, structured_keep(graph, fraction))
    training = fit(small, x, y, epochs, batch_size, learning_rate, progress=progress) if epochs else {}
    small, folded = fold_batchnorm(small)
    return small, {"training": training, "channel_groups": groups_report(graph), "batchnorm_folded": folded}


# ---------------------------------------------------------------- training helpers shared with distillation

def output_layer(model: Any) -> Any:
    return model.outputs[0]._keras_history.operation


def outputs_probabilities(model: Any) -> bool:
    """True when the model ends in softmax/sigmoid (its outputs are probabilities, not logits)."""
    layer = output_layer(model)
    if type(layer).__name__ == "Softmax":
        return True
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "") in ("softmax", "sigmoid")


def label_loss(model: Any) -> Any:
    """Cross-entropy on integer labels that matches the model's output (probabilities or logits, 1 or n units)."""
    import keras

    probs = outputs_probabilities(model)
    if model.outputs[0].shape[-1] == 1:
        return keras.losses.BinaryCrossentropy(from_logits=not probs)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not probs)


def fit(model: Any, x: feeds.Inputs, y: Any, epochs: int, batch_size: int, learning_rate: float,
        callbacks: list[Any] | None = None, loss: Any = None, progress: Progress | None = None,
        label: str = "fine-tuning") -> dict[str, Any]:
    """Adam on (x, y) with seeded shuffling; returns the last epoch's loss. Each epoch is reported to
    `progress` (default: the running step's) with its loss."""
    from deployc.ml.quiet import quiet_tensorflow
    from deployc.progress import current

    quiet_tensorflow()
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss or label_loss(model))
    struct = getattr(model, "_outputs_struct", None)
    if isinstance(struct, dict) and len(struct) == 1:  # a model returning {"probs": ...} takes its labels so
        y = {next(iter(struct)): y}
    with (progress or current()).task(label, total=epochs, unit="epoch") as task:
        hist = model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
                         callbacks=[*(callbacks or []), epoch_reporter(task)])
    losses = hist.history.get("loss", [])
    return {"epochs": epochs, "steps": epochs * -(-feeds.rows(x) // batch_size),
            "final_train_loss": round(float(losses[-1]), 6) if losses else None}


def epoch_reporter(task: Task) -> Any:
    """A Keras callback that advances `task` at the end of each epoch, with the epoch's loss. It reads the logs
    only, so the training (and the model it gives) is the same with or without it."""
    import keras

    class EpochReporter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            loss = (logs or {}).get("loss")
            task.advance(status=f"loss {float(loss):.4g}" if loss is not None else "")

    return EpochReporter()


def predict_classes(model: Any, x: feeds.Inputs) -> np.ndarray:
    from deployc.ml.evaluate import keras_output

    out = keras_output(model, model.predict(x, batch_size=256, verbose=0), None)  # one array, a list or a dict
    return (out.reshape(-1) > (0.5 if outputs_probabilities(model) else 0.0)).astype(np.int64) \
        if out.shape[-1] == 1 else out.argmax(axis=-1)


def accuracy(model: Any, x: feeds.Inputs, y: np.ndarray) -> float:
    return round(float(np.mean(predict_classes(model, x) == y.reshape(-1))), 6)

