"""Pruning of Keras 3 models, written here because tensorflow-model-optimization does not accept Keras 3.

Two kinds:
- unstructured: the lowest-magnitude weights of each Dense/Conv kernel become zero, following a cubic
  polynomial schedule (TF-MOT's PolynomialDecay) while the model fine-tunes; masks are re-applied after every
  optimizer step. The file compresses better; inference is not faster.
- structured: the lowest-norm Dense units / Conv filters are removed and a smaller model is rebuilt from the
  chain of layers (`layer_chain`, `rebuild`, also used to shrink a distillation student). Inference is faster.
keras / tensorflow are imported inside the functions.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from deployc.errors import InputError

KERNEL_LAYERS = ("Dense", "Conv1D", "Conv2D", "Conv3D")  # layers whose `kernel` unstructured pruning zeroes
WIDTH_LAYERS = ("Dense", "Conv1D", "Conv2D")  # layers whose units/filters structured pruning removes
CHANNELWISE = ("BatchNormalization",)  # one weight per channel: sliced with the channels kept
PASSTHROUGH = (
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D",
    "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "Rescaling", "ZeroPadding1D", "ZeroPadding2D", "Identity", "ActivityRegularization",
)
SUPPORTED = WIDTH_LAYERS + CHANNELWISE + PASSTHROUGH + ("Flatten",)


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


# ---------------------------------------------------------------- chains of layers and rebuilding

def layer_chain(model: Any, purpose: str) -> list[Any]:
    """The model's layers as a single chain input -> output, or InputError naming the first layer that is not."""
    import keras

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InputError(f"{purpose} supports single-input, single-output models; {model.name!r} has "
                         f"{len(model.inputs)} inputs and {len(model.outputs)} outputs")
    chain = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    sequential = isinstance(model, keras.Sequential)  # a chain by construction (it records several nodes)
    for layer in chain:  # first the layer kinds, so that a merge (Add, Concatenate) is the layer named
        where = f"layer {layer.name!r} ({type(layer).__name__})"
        if isinstance(layer, keras.Model):
            raise InputError(f"{purpose}: {where} is a nested model; flatten it into one Sequential or "
                             "functional chain")
        if type(layer).__name__ not in SUPPORTED:
            raise InputError(f"{purpose}: {where} is not supported; supported layers: {', '.join(SUPPORTED)}")
    prev = model.inputs[0]
    for layer in chain:
        kind = type(layer).__name__
        where = f"layer {layer.name!r} ({kind})"
        nodes = layer._inbound_nodes
        ins = nodes[0].input_tensors if nodes else []
        if not sequential and (len(nodes) != 1 or len(ins) != 1 or ins[0] is not prev):
            raise InputError(f"{purpose}: {where} is not part of a single chain of layers (branches, shared "
                             "layers and merges are not supported)")
        cfg = layer.get_config()
        rank = len(layer.input.shape)
        if cfg.get("data_format") == "channels_first" or (
                kind in CHANNELWISE and cfg.get("axis", -1) not in (-1, [-1], rank - 1, [rank - 1])):
            raise InputError(f"{purpose}: {where} works on channels_first data; only channels_last is supported")
        if kind in WIDTH_LAYERS and cfg.get("groups", 1) != 1:
            raise InputError(f"{purpose}: {where} is a grouped convolution, which is not supported")
        if kind == "Rescaling" and (np.ndim(cfg.get("scale", 1.0)) or np.ndim(cfg.get("offset", 0.0))):
            raise InputError(f"{purpose}: {where} rescales per channel, which is not supported")
        prev = layer.output
    if not sequential and prev is not model.outputs[0]:
        raise InputError(f"{purpose}: model {model.name!r} is not a single chain of layers")
    if not any(type(layer).__name__ in WIDTH_LAYERS for layer in chain):
        raise InputError(f"{purpose}: model {model.name!r} has no Dense or Conv layer")
    return chain


def output_width_layer(chain: list[Any]) -> Any:
    """The last Dense/Conv layer: its width is the model's output and is never changed."""
    return [layer for layer in chain if type(layer).__name__ in WIDTH_LAYERS][-1]


def rebuild(model: Any, chain: list[Any], keep: dict[str, np.ndarray], copy_weights: bool = True) -> Any:
    """A new model of the same chain where each layer named in `keep` retains only those output channels.

    With copy_weights, kept weights are copied and every following layer's input weights are sliced to match
    (through BatchNormalization, pooling and Flatten); without, the new layers keep their fresh initialization.
    """
    import keras

    kept: np.ndarray | None = None  # channels of the current tensor that survive (None: all of them)
    plans: list[tuple[Any, list[np.ndarray]]] = []
    for layer in chain:
        kind, cfg = type(layer).__name__, layer.get_config()
        weights = [np.asarray(w) for w in layer.get_weights()] if copy_weights else []
        if kind in WIDTH_LAYERS:
            out = keep.get(layer.name)
            if out is not None:
                cfg["units" if kind == "Dense" else "filters"] = int(len(out))
            if weights:
                if kept is not None:
                    weights[0] = np.take(weights[0], kept, axis=-2)
                if out is not None:
                    weights = [np.take(w, out, axis=-1) for w in weights]
            kept = out
        elif kind in CHANNELWISE:
            if weights and kept is not None:
                weights = [np.take(w, kept, axis=-1) for w in weights]
        elif kind == "Flatten" and kept is not None:
            shape = layer.input.shape
            spatial, channels = int(np.prod(shape[1:-1])), int(shape[-1])
            kept = (np.arange(spatial)[:, None] * channels + kept[None, :]).ravel()
        plans.append((type(layer).from_config(cfg), weights))
    src = model.inputs[0]
    inp = keras.Input(shape=tuple(src.shape[1:]), dtype=src.dtype, name=src.name)
    if isinstance(model, keras.Sequential):
        new = keras.Sequential([inp] + [p[0] for p in plans], name=model.name)
    else:
        x = inp
        for layer, _ in plans:
            x = layer(x)
        new = keras.Model(inp, x, name=model.name)
    for layer, weights in plans:
        if weights:
            layer.set_weights(weights)
    return new


def channel_scores(chain: list[Any]) -> dict[str, np.ndarray]:
    """L2 norm of each unit's/filter's weights, scaled by the following BatchNormalization's gain if any."""
    scores = {}
    for i, layer in enumerate(chain):
        if type(layer).__name__ not in WIDTH_LAYERS:
            continue
        k = np.asarray(layer.kernel.numpy())
        s = np.sqrt(np.sum(k.reshape(-1, k.shape[-1]) ** 2, axis=0))
        nxt = chain[i + 1] if i + 1 < len(chain) else None
        if nxt is not None and type(nxt).__name__ == "BatchNormalization" and nxt.scale:
            var = np.asarray(nxt.moving_variance.numpy())
            s = s * np.abs(np.asarray(nxt.gamma.numpy())) / np.sqrt(var + nxt.epsilon)
        scores[layer.name] = s
    return scores


def structured_keep(chain: list[Any], fraction: float) -> dict[str, np.ndarray]:
    """Indices of the channels to keep per layer (highest scores, in original order); the output layer is kept."""
    last = output_width_layer(chain).name
    keep = {}
    for name, s in channel_scores(chain).items():
        if name == last:
            continue
        n = max(1, int(round(len(s) * (1.0 - fraction))))
        keep[name] = np.sort(np.argsort(-s, kind="stable")[:n])
    return keep


def widths(model: Any) -> dict[str, int]:
    """Units / filters of each Dense/Conv layer, for reports."""
    return {layer.name: int(layer.kernel.shape[-1]) for layer in model._flatten_layers(include_self=False)
            if type(layer).__name__ in WIDTH_LAYERS and getattr(layer, "kernel", None) is not None}


# ---------------------------------------------------------------- the two prunings, end to end

def prune_unstructured(model: Any, x: np.ndarray, y: np.ndarray, sparsity: float, epochs: int, batch_size: int,
                       learning_rate: float, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Fine-tune while sparsity ramps to `sparsity` over the first 3/4 of the steps; the last quarter recovers
    with the masks fixed. With epochs=0 the kernels are pruned at once. Returns the training figures."""
    layers = kernel_layers(model)
    steps = epochs * -(-len(x) // batch_size)
    if steps == 0:
        apply_masks(layers, sparsity)
        return {}
    end = max(1, (3 * steps) // 4)
    cb = mask_callback(layers, sparsity, end, frequency=max(1, end // 16))
    return fit(model, x, y, epochs, batch_size, learning_rate, [cb] + list(callbacks or []))


def prune_structured(model: Any, x: np.ndarray, y: np.ndarray, fraction: float, epochs: int, batch_size: int,
                     learning_rate: float) -> tuple[Any, dict[str, Any]]:
    """Remove `fraction` of the units/filters of every Dense/Conv layer but the output one, then fine-tune."""
    chain = layer_chain(model, "structured pruning")
    small = rebuild(model, chain, structured_keep(chain, fraction))
    return small, fit(small, x, y, epochs, batch_size, learning_rate) if epochs else {}


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


def fit(model: Any, x: np.ndarray, y: Any, epochs: int, batch_size: int, learning_rate: float,
        callbacks: list[Any] | None = None, loss: Any = None) -> dict[str, Any]:
    """Adam on (x, y) with seeded shuffling; returns the last epoch's loss."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss or label_loss(model))
    hist = model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
                     callbacks=callbacks or [])
    losses = hist.history.get("loss", [])
    return {"epochs": epochs, "steps": epochs * -(-len(x) // batch_size),
            "final_train_loss": round(float(losses[-1]), 6) if losses else None}


def predict_classes(model: Any, x: np.ndarray) -> np.ndarray:
    out = np.asarray(model.predict(x, batch_size=256, verbose=0))
    return (out.reshape(-1) > (0.5 if outputs_probabilities(model) else 0.0)).astype(np.int64) \
        if out.shape[-1] == 1 else out.argmax(axis=-1)


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return round(float(np.mean(predict_classes(model, x) == y.reshape(-1))), 6)

