"""The layer graph of a Keras model and the channel sets flowing through it, for structured pruning, width
distillation and BatchNormalization folding.

`layer_graph` reads a Sequential or functional model (several inputs, branches and merges included) as its
layers in topological order with the tensors each reads. `channel_graph` then follows every tensor's last
axis: each Dense/Conv/SeparableConv layer starts a channel *space* of its own; BatchNormalization, activations,
pooling and depthwise convolutions carry their input's space on; Flatten, Concatenate and depthwise multipliers
map it; Add and the other element-wise merges tie the spaces of their inputs into one group, which is pruned
as a whole. A group that reaches a model input, an Embedding or a model output is fixed: it keeps every
channel. `clone` rebuilds the model from per-layer (config, weights) plans. keras is imported inside functions.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployc.errors import InputError

WIDTH_LAYERS = ("Dense", "Conv1D", "Conv2D", "SeparableConv1D", "SeparableConv2D")  # choose their output channels
DEPTHWISE = ("DepthwiseConv1D", "DepthwiseConv2D")  # output channels follow the input (x depth_multiplier)
CHANNELWISE = ("BatchNormalization",)  # one weight per channel: sliced with the channels kept
PASSTHROUGH = (
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D",
    "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "Rescaling", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D",
    "UpSampling1D", "UpSampling2D", "Identity", "ActivityRegularization",
)
ELEMENTWISE = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")  # tie their inputs' channels
FIXED_SOURCES = ("Embedding",)  # their output width is never changed
SUPPORTED = WIDTH_LAYERS + DEPTHWISE + CHANNELWISE + PASSTHROUGH + ELEMENTWISE + FIXED_SOURCES + (
    "Flatten", "Concatenate")

Key = tuple[str, int]  # a tensor: (the layer that makes it, its output index)


# ---------------------------------------------------------------- channel maps: a tensor's channels


@dataclass(frozen=True)
class Base:
    space: int  # the channels of one space, in order


@dataclass(frozen=True)
class Repeat:
    inner: ChannelMap
    times: int  # a depthwise multiplier: input channel c gives channels c * times + m


@dataclass(frozen=True)
class Flat:
    inner: ChannelMap
    positions: int  # Flatten of (positions..., channels): position p, channel c -> p * channels + c
    channels: int


@dataclass(frozen=True)
class Concat:
    parts: tuple[ChannelMap, ...]
    sizes: tuple[int, ...]


ChannelMap = Base | Repeat | Flat | Concat


def bases(m: ChannelMap) -> Iterator[int]:
    if isinstance(m, Base):
        yield m.space
    elif isinstance(m, Concat):
        for part in m.parts:
            yield from bases(part)
    else:
        yield from bases(m.inner)


# ---------------------------------------------------------------- the layer graph


@dataclass
class Op:
    layer: Any
    kind: str
    inputs: list[Key]
    output: Key
    args: Any  # the call's arguments, with KerasTensors in place (for `clone`)
    kwargs: Any

    @property
    def name(self) -> str:
        return str(self.layer.name)


@dataclass
class Group:
    """Channel spaces tied together (by Add and friends): one kept set for all of them."""
    name: str  # its first owner
    size: int
    owners: list[str]  # the Dense/Conv layers whose output channels it is
    fixed: bool


@dataclass
class Graph:
    model: Any
    ops: list[Op]
    outputs: list[Key]
    consumers: dict[Key, list[Op]] = field(default_factory=dict)
    shapes: dict[Key, tuple[int | None, ...]] = field(default_factory=dict)
    maps: dict[Key, ChannelMap] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)  # per space
    owner: list[str | None] = field(default_factory=list)  # per space: the layer making it (None: a source)
    parent: list[int] = field(default_factory=list)  # union-find over spaces
    fixed: list[bool] = field(default_factory=list)

    def op(self, name: str) -> Op:
        return next(op for op in self.ops if op.name == name)

    def only_consumer(self, key: Key) -> Op | None:
        users = self.consumers.get(key, [])
        return users[0] if len(users) == 1 and key not in self.outputs else None

    # spaces
    def new_space(self, size: int, owner: str | None, fixed: bool) -> Base:
        self.sizes.append(size)
        self.owner.append(owner)
        self.parent.append(len(self.parent))
        self.fixed.append(fixed)
        return Base(len(self.sizes) - 1)

    def root(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def tie(self, maps: list[ChannelMap]) -> None:
        """Make these tensors' channels one set: plain spaces are joined; anything mapped is fixed."""
        if all(isinstance(m, Base) for m in maps):
            first = self.root(next(bases(maps[0])))
            for m in maps[1:]:
                other = self.root(next(bases(m)))
                if other != first:
                    self.parent[other] = first
                    self.fixed[first] = self.fixed[first] or self.fixed[other]
        else:
            for m in maps:
                self.fix(m)

    def fix(self, m: ChannelMap) -> None:
        for s in bases(m):
            self.fixed[self.root(s)] = True

    def groups(self) -> list[Group]:
        """Every group that some Dense/Conv layer owns, in the order of those layers."""
        found: dict[int, Group] = {}
        for space, owner in enumerate(self.owner):
            root = self.root(space)
            if owner is None:
                continue
            if root not in found:
                found[root] = Group(owner, self.sizes[space], [], self.fixed[root])
            found[root].owners.append(owner)
        return list(found.values())

    def kept(self, m: ChannelMap, keep: dict[str, np.ndarray]) -> np.ndarray | None:
        """The channels of `m` that survive when each group keeps `keep[any of its owners]` (None: all)."""
        if isinstance(m, Base):
            root = self.root(m.space)
            if self.fixed[root]:
                return None
            for space, owner in enumerate(self.owner):
                if owner in keep and self.root(space) == root:
                    return np.asarray(keep[owner])
            return None
        if isinstance(m, Repeat):
            k = self.kept(m.inner, keep)
            return None if k is None else (k[:, None] * m.times + np.arange(m.times)[None, :]).ravel()
        if isinstance(m, Flat):
            k = self.kept(m.inner, keep)
            return None if k is None else (np.arange(m.positions)[:, None] * m.channels + k[None, :]).ravel()
        parts = [self.kept(p, keep) for p in m.parts]
        if all(k is None for k in parts):
            return None
        offsets = np.cumsum((0,) + m.sizes[:-1])
        return np.concatenate([(np.arange(n) if k is None else k) + off
                               for k, n, off in zip(parts, m.sizes, offsets, strict=True)])


def _key(tensor: Any) -> Key:
    op, _, index = tensor._keras_history
    return (str(op.name), int(index))


def _tensors(structure: Any) -> list[Any]:
    import keras

    return [t for t in keras.tree.flatten(structure) if isinstance(t, keras.KerasTensor)]


def layer_graph(model: Any, purpose: str) -> Graph:
    """The model's layers in topological order, or InputError naming the first layer that cannot be rebuilt."""
    import keras

    if len(model.outputs) != 1:
        raise InputError(f"{purpose} supports models with one output; {model.name!r} has {len(model.outputs)}")
    graph_model = model._functional if isinstance(model, keras.Sequential) else model
    nodes: dict[str, list[Any]] = {}
    for depth_nodes in graph_model._nodes_by_depth.values():
        for node in depth_nodes:
            nodes.setdefault(str(node.operation.name), []).append(node)
    ops = []
    for layer in graph_model.operations:
        where = f"layer {layer.name!r} ({type(layer).__name__})"
        if isinstance(layer, keras.Model):
            raise InputError(f"{purpose}: {where} is a nested model; flatten it into one functional model")
        mine = nodes.get(str(layer.name), [])
        if len(mine) != 1:
            raise InputError(f"{purpose}: {where} is called {len(mine)} times (shared layers are not supported)")
        node = mine[0]
        args, kwargs = (node.arguments.args, node.arguments.kwargs) if node.arguments else ((), {})
        ops.append(Op(layer, type(layer).__name__, [_key(t) for t in _tensors((args, kwargs))],
                      _key(node.output_tensors[0]), args, kwargs))
    graph = Graph(model, ops, [_key(t) for t in model.outputs])
    for op, layer in zip(ops, graph_model.operations, strict=True):
        graph.shapes[op.output] = tuple(nodes[str(layer.name)][0].output_tensors[0].shape)
        for k in op.inputs:
            graph.consumers.setdefault(k, []).append(op)
    return graph


def channel_graph(model: Any, purpose: str) -> Graph:
    """`layer_graph` with every tensor's channel map and the groups of tied channels."""
    graph = layer_graph(model, purpose)
    for op in graph.ops:  # first the layer kinds, so that an unsupported layer is the one named
        if op.kind != "InputLayer" and op.kind not in SUPPORTED:
            raise InputError(f"{purpose}: layer {op.name!r} ({op.kind}) is not supported; supported layers: "
                             f"{', '.join(SUPPORTED)}")
    for op in graph.ops:
        graph.maps[op.output] = _output_map(graph, op, purpose)
    for k in graph.outputs:
        graph.fix(graph.maps[k])
    if not any(op.kind in WIDTH_LAYERS for op in graph.ops):
        raise InputError(f"{purpose}: model {model.name!r} has no Dense or Conv layer")
    return graph


def _channels(tensor_shape: Any, where: str, purpose: str) -> int:
    if len(tensor_shape) < 2 or tensor_shape[-1] is None:
        raise InputError(f"{purpose}: {where} has no fixed channel axis")
    return int(tensor_shape[-1])


def _output_map(graph: Graph, op: Op, purpose: str) -> ChannelMap:
    """The channel map of `op`'s output, from its inputs' maps (ties merge groups on the way)."""
    kind, cfg = op.kind, op.layer.get_config()
    where = f"layer {op.name!r} ({kind})"
    out_shape = graph.shapes[op.output]
    if kind == "InputLayer":
        return graph.new_space(int(out_shape[-1] or 1) if len(out_shape) > 1 else 1, None, fixed=True)
    if kind in FIXED_SOURCES:
        return graph.new_space(_channels(out_shape, where, purpose), None, fixed=True)
    ins = [graph.maps[k] for k in op.inputs]
    if cfg.get("data_format") == "channels_first" or (
            kind in CHANNELWISE and cfg.get("axis", -1) not in (-1, [-1], len(out_shape) - 1, [len(out_shape) - 1])):
        raise InputError(f"{purpose}: {where} works on channels_first data; only channels_last is supported")
    if kind in WIDTH_LAYERS:
        if cfg.get("groups", 1) != 1:
            raise InputError(f"{purpose}: {where} is a grouped convolution, which is not supported")
        return graph.new_space(_channels(out_shape, where, purpose), op.name, fixed=False)
    if kind in DEPTHWISE:
        times = int(cfg.get("depth_multiplier", 1))
        return ins[0] if times == 1 else Repeat(ins[0], times)
    if kind == "Rescaling" and (np.ndim(cfg.get("scale", 1.0)) or np.ndim(cfg.get("offset", 0.0))):
        raise InputError(f"{purpose}: {where} rescales per channel, which is not supported")
    if kind == "Flatten":
        shape = graph.shapes[op.inputs[0]]
        if len(shape) <= 2:
            return ins[0]
        dims = [int(d) for d in shape[1:] if d is not None]
        if len(dims) != len(shape) - 1:
            raise InputError(f"{purpose}: {where} flattens a tensor of unknown shape {tuple(shape)}")
        return Flat(ins[0], int(np.prod(dims[:-1])), dims[-1])
    if kind in ELEMENTWISE or kind == "Concatenate":
        widths = [_channels(graph.shapes[k], where, purpose) for k in op.inputs]
        rank = len(out_shape)
        if kind == "Concatenate" and cfg.get("axis", -1) in (-1, rank - 1):
            return Concat(tuple(ins), tuple(widths))
        if len(set(widths)) != 1:
            raise InputError(f"{purpose}: {where} broadcasts over channels ({widths}), which is not supported")
        graph.tie(ins)
        return ins[0]
    return ins[0]  # PASSTHROUGH and CHANNELWISE


# ---------------------------------------------------------------- rebuilding

SKIP = None  # a plan for a layer that is dropped: its output is its input (a folded BatchNormalization)
Plan = tuple[dict[str, Any], list[np.ndarray]] | None


def clone(graph: Graph, plans: dict[str, Plan]) -> Any:
    """A new model of the same graph, each layer made from its plan's config and given its weights (an empty
    list: a fresh initialization); a layer whose plan is SKIP is left out (its output is its input). Layers
    without a plan are copied as they are."""
    import keras

    model = graph.model
    tensors: dict[Key, Any] = {}
    made: list[tuple[Any, list[np.ndarray]]] = []
    seq: list[Any] = []

    def swap(structure: Any) -> Any:
        return keras.tree.map_structure(
            lambda t: tensors[_key(t)] if isinstance(t, keras.KerasTensor) else t, structure)

    for op in graph.ops:
        if op.kind == "InputLayer":
            src = op.layer.output
            tensors[op.output] = keras.Input(shape=graph.shapes[op.output][1:], dtype=src.dtype, name=op.name)
            seq.append(tensors[op.output])
            continue
        plan = plans.get(op.name, (op.layer.get_config(), [np.asarray(w) for w in op.layer.get_weights()]))
        if plan is SKIP:
            tensors[op.output] = tensors[op.inputs[0]]
            continue
        cfg, weights = plan
        layer = type(op.layer).from_config(cfg)
        tensors[op.output] = layer(*swap(op.args), **swap(op.kwargs))
        made.append((layer, weights))
        seq.append(layer)
    if isinstance(model, keras.Sequential):
        new = keras.Sequential(seq, name=model.name)
    else:
        new = keras.Model(swap(model.input), swap(model.output), name=model.name)
    for layer, weights in made:
        if weights:
            layer.set_weights(weights)
    return new
