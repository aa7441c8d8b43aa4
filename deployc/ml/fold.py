"""BatchNormalization folded into the convolution (or Dense layer) before it, for inference.

In inference mode BatchNormalization is an affine map per channel, y = (z - mean) * s + beta with
s = gamma / sqrt(moving_variance + epsilon), so when z is the output of a linear Conv/Dense layer the two are one
layer with kernel W * s (per output channel) and bias (b - mean) * s + beta. The folded model has no
BatchNormalization op and gives the same inference-mode outputs (to float32 rounding); it can no longer
recompute batch statistics, so folding is the last step before export. keras is imported inside functions.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from deployc.ml.channels import CHANNELWISE, SKIP, Graph, Plan, clone, layer_graph

FOLD_INTO = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
             "SeparableConv2D")


def _affine(bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of the BatchNormalization in inference mode, in float64."""
    mean = np.asarray(bn.moving_mean.numpy(), dtype=np.float64)
    var = np.asarray(bn.moving_variance.numpy(), dtype=np.float64)
    gamma = np.asarray(bn.gamma.numpy(), dtype=np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta.numpy(), dtype=np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def foldable(graph: Graph) -> dict[str, str]:
    """{BatchNormalization: the layer it folds into}: a channels-last BN whose input is the only use of a
    linear (no activation) Dense/Conv/Depthwise/SeparableConv output."""
    pairs = {}
    by_name = {op.name: op for op in graph.ops}
    for op in graph.ops:
        if op.kind not in CHANNELWISE or len(op.inputs) != 1:
            continue
        rank = len(graph.shapes[op.output])
        prev = by_name.get(op.inputs[0][0])
        if (prev is None or prev.kind not in FOLD_INTO or graph.only_consumer(prev.output) is not op
                or prev.layer.get_config().get("activation", "linear") != "linear"
                or op.layer.get_config().get("axis", -1) not in (-1, [-1], rank - 1, [rank - 1])):
            continue
        pairs[op.name] = prev.name
    return pairs


def _folded_weights(layer: Any, scale: np.ndarray, shift: np.ndarray) -> list[np.ndarray]:
    kind = type(layer).__name__
    weights = [np.asarray(w, dtype=np.float64) for w in layer.get_weights()]
    bias = weights.pop() if layer.use_bias else np.zeros_like(scale)
    if kind.startswith("Depthwise"):  # kernel (..., in, multiplier): output channel c * multiplier + m
        k = weights[0]
        weights[0] = k * scale.reshape(k.shape[-2], k.shape[-1])
    else:  # Dense/Conv kernel, or the pointwise kernel of a SeparableConv: output channels on the last axis
        weights[-1] = weights[-1] * scale
    return [w.astype(np.float32) for w in weights + [bias * scale + shift]]


def fold_batchnorm(model: Any) -> tuple[Any, list[str]]:
    """The model with every foldable BatchNormalization folded into the layer before it, and the names of the
    BatchNormalization layers folded. The model is returned unchanged when none is foldable."""
    graph = layer_graph(model, "batch-norm folding")
    pairs = foldable(graph)
    if not pairs:
        return model, []
    plans: dict[str, Plan] = {}
    for bn_name, into in pairs.items():
        target = graph.op(into).layer
        scale, shift = _affine(graph.op(bn_name).layer)
        plans[into] = ({**target.get_config(), "use_bias": True}, _folded_weights(target, scale, shift))
        plans[bn_name] = SKIP
    return clone(graph, plans), sorted(pairs)
