"""MATLAB ``LayerGraph`` -> a small graph IR, read generically from ``Layers`` + ``Connections``.

Two stages:

1. :func:`read_mat` decodes the .mat (``matio``, imported lazily: the ``convert`` extra) into a
   :class:`LayerGraphSpec`: plain ``LayerSpec(class_name, props)`` records holding MATLAB-shaped
   values (weights H x W x Cin x Cout, biases 1 x 1 x C) plus ``(source, destination)`` pairs.
2. :func:`build_graph` turns any ``LayerGraphSpec`` (decoded, or built in code such as
   ``converters.synthetic``) into a :class:`Graph` of NCHW :class:`Node` records in topological
   order, with shapes inferred and every layer checked.

Supported layers: image input, convolution (incl. grouped), ReLU, max/average pooling,
depth concatenation; dropout, softmax and classification output are dropped (the descriptor is
the output of the last remaining layer, the global average pool).
"""
from __future__ import annotations

import contextlib
import math
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from sfpn_edge.errors import ModelError

PREFIX = "nnet.cnn.layer."
INPUT, CONV, GROUPED_CONV, RELU = "ImageInputLayer", "Convolution2DLayer", "GroupedConvolution2DLayer", "ReLULayer"
MAXPOOL, AVGPOOL, CONCAT = "MaxPooling2DLayer", "AveragePooling2DLayer", "DepthConcatenationLayer"
DROPOUT, SOFTMAX, CLASSIFY = "DropoutLayer", "SoftmaxLayer", "ClassificationOutputLayer"
PASS_THROUGH = {DROPOUT}          # inference no-ops: consumers read the layer's input instead
HEAD = {SOFTMAX, CLASSIFY}        # training head after the descriptor: dropped
SUPPORTED = {INPUT, CONV, GROUPED_CONV, RELU, MAXPOOL, AVGPOOL, CONCAT} | PASS_THROUGH | HEAD


@dataclass
class LayerSpec:
    """One MATLAB layer: its class (short name, e.g. ``Convolution2DLayer``) and saved properties."""

    class_name: str
    props: Dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.props["Name"])


@dataclass
class LayerGraphSpec:
    """A MATLAB LayerGraph in plain Python: layers and (source, destination) connections."""

    layers: List[LayerSpec]
    connections: List[Tuple[str, str]]


@dataclass
class Node:
    """One NCHW operation. ``op`` is conv | relu | maxpool | avgpool | concat."""

    name: str
    op: str
    inputs: List[str]
    attrs: Dict[str, Any] = field(default_factory=dict)
    weights: Dict[str, np.ndarray] = field(default_factory=dict)
    shape: Tuple[int, int, int] = (0, 0, 0)   # output (C, H, W)


@dataclass
class Graph:
    """Topologically ordered nodes from ``input_name`` (C, H, W) to ``output`` (C, 1, 1)."""

    input_name: str
    input_shape: Tuple[int, int, int]
    nodes: List[Node]
    output: str

    @property
    def variant(self) -> str:
        """"dwc" when the 3x3 convolutions are grouped (depthwise), else "base"."""
        grouped = any(n.op == "conv" and n.attrs["group"] > 1 for n in self.nodes)
        return "dwc" if grouped else "base"

    @property
    def descriptor_dim(self) -> int:
        return next(n.shape[0] for n in self.nodes if n.name == self.output)

    @property
    def num_parameters(self) -> int:
        return int(sum(w.size for n in self.nodes for w in n.weights.values()))


# --------------------------------------------------------------------------- stage 1: .mat


def read_mat(path: Path) -> LayerGraphSpec:
    """Decode the single ``nnet.cnn.LayerGraph`` variable of a MAT file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():   # matio sets a deprecated pandas option on import
            warnings.simplefilter("ignore")
            import matio
    except ImportError:
        raise ModelError("reading .mat files needs the 'convert' extra: pip install 'sfpn-edge[convert]'") from None
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    with open(path, "rb") as fh:
        if not fh.read(128).startswith(b"MATLAB "):   # v5 and v7.3 files start with a text header
            raise ModelError(f"{path.name}: not a MATLAB MAT file (no v5/v7.3 header)")
    try:
        with _per_object_class_names(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            contents = matio.load_from_mat(str(path))
    except Exception as exc:  # matio raises many types for corrupt input
        raise ModelError(f"{path.name}: not a readable MATLAB MAT file ({_first_line(exc)})") from None
    graphs = [v for v in contents.values() if getattr(v, "classname", None) == "nnet.cnn.LayerGraph"]
    if len(graphs) != 1:
        found = ", ".join(sorted(contents)) or "nothing"
        raise ModelError(f"{path.name}: expected one nnet.cnn.LayerGraph variable, found {found}")
    try:
        saved = graphs[0].properties["any"]
        layer_objs = list(np.asarray(saved["Layers"][0, 0]).flat)
        table = saved["Connections"][0, 0]
        connections = [(_text(s), _text(d)) for s, d in zip(table["Source"], table["Destination"])]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelError(f"{path.name}: LayerGraph has no readable Layers/Connections ({_first_line(exc)})") from None
    return LayerGraphSpec([_layer_spec(obj, i) for i, obj in enumerate(layer_objs)], connections)


_patch_lock = threading.Lock()


@contextlib.contextmanager
def _per_object_class_names() -> Iterator[None]:
    """Make matio label each element of a heterogeneous object array with its own class.

    mat-io 1.0 tags every element of ``Layers`` with the array's class (``nnet.cnn.layer.Layer``)
    although the file records each object's class (``Convolution2DLayer``, ``ReLULayer``, ...).
    While active, elements are relabelled from the per-object metadata.
    """
    from matio.subsystem.subsys import MatSubsystem

    original = MatSubsystem.load_mcos_object

    def load_mcos_object(self, metadata, *args, **kwargs):
        result = original(self, metadata, *args, **kwargs)
        meta = np.atleast_2d(metadata)
        ndims = int(meta[1, 0])
        count = int(np.prod(meta[2:2 + ndims, 0]))
        ids = meta[2 + ndims:2 + ndims + count, 0]
        elements = list(np.asarray(result).flat) if count > 1 else [result]
        for obj, object_id in zip(elements, ids):
            if hasattr(obj, "classname") and int(object_id) != 0:
                obj.classname = self.get_classname(self.get_object_metadata(int(object_id))[0])
        return result

    with _patch_lock:
        MatSubsystem.load_mcos_object = load_mcos_object
        try:
            yield
        finally:
            MatSubsystem.load_mcos_object = original


def _layer_spec(obj: Any, index: int) -> LayerSpec:
    classname = str(getattr(obj, "classname", "") or "")
    try:
        saved = obj.properties["any"]
        props = {k: _plain(saved[k][0, 0] if saved.ndim == 2 else saved[k]) for k in saved.dtype.names}
    except (AttributeError, KeyError, TypeError, IndexError):
        raise ModelError(f"layer #{index + 1} ({classname or 'unknown class'}) has no readable properties") from None
    if "Name" not in props:
        raise ModelError(f"layer #{index + 1} ({classname}) has no Name")
    return LayerSpec(classname.rpartition(".")[2], props)


def _plain(value: Any) -> Any:
    """MATLAB saved value -> str / numpy array / dict (for Weights/Bias learnable structs)."""
    if isinstance(value, np.ndarray) and value.dtype.names:
        return {k: _plain(value[k].flat[0]) for k in value.dtype.names}
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        return "".join(value.ravel().tolist())
    return value


def _text(cell: Any) -> str:
    return "".join(np.asarray(cell).ravel().astype(str).tolist())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- stage 2: IR


def build_graph(spec: LayerGraphSpec) -> Graph:
    """Check and translate a LayerGraphSpec into a :class:`Graph` (raises ModelError naming the layer)."""
    layers: Dict[str, LayerSpec] = {}
    for layer in spec.layers:
        if layer.class_name not in SUPPORTED:
            raise ModelError(f"layer '{layer.name}': unsupported layer class {layer.class_name or 'unknown'}")
        if layer.name in layers:
            raise ModelError(f"layer '{layer.name}': duplicate layer name")
        layers[layer.name] = layer
    inputs = _wire(layers, spec.connections)
    order = _topological_order(layers, inputs)

    # Pass-through and head layers become aliases of their input.
    alias: Dict[str, str] = {}
    input_layers = [n for n in order if layers[n].class_name == INPUT]
    if len(input_layers) != 1:
        raise ModelError(f"expected one image input layer, found {len(input_layers)}")
    graph_input = input_layers[0]
    shapes: Dict[str, Tuple[int, int, int]] = {graph_input: _input_shape(layers[graph_input])}
    nodes: List[Node] = []
    for name in order:
        layer = layers[name]
        if layer.class_name == INPUT:
            continue
        srcs = [alias.get(s, s) for s in inputs[name]]
        if layer.class_name in PASS_THROUGH | HEAD:
            alias[name] = srcs[0]
            continue
        in_shapes = [shapes[s] for s in srcs]
        node = _NODE_BUILDERS[layer.class_name](layer, srcs, in_shapes)
        shapes[name] = node.shape
        nodes.append(node)

    consumers = {s for n in order for s in inputs[n]}
    sinks = [n for n in order if n not in consumers]
    if len(sinks) != 1:
        raise ModelError(f"graph must end in one output, found: {', '.join(sinks)}")
    output = alias.get(sinks[0], sinks[0])
    for name in order:
        if layers[name].class_name in HEAD and alias[name] != output:
            raise ModelError(f"layer '{name}': softmax/classification may only follow the descriptor layer")
    if output == graph_input:
        raise ModelError("graph has no computing layers")
    c, h, w = shapes[output]
    if (h, w) != (1, 1):
        raise ModelError(f"layer '{output}': descriptor must be 1x1 spatially (global average pool), got {h}x{w}")
    return Graph(graph_input, shapes[graph_input], nodes, output)


def _wire(layers: Dict[str, LayerSpec], connections: Sequence[Tuple[str, str]]) -> Dict[str, List[str]]:
    """Inputs of every layer, in port order (``in1``, ``in2``, ...) for concatenations."""
    ports: Dict[str, Dict[int, str]] = {name: {} for name in layers}
    for src, dst in connections:
        dst_layer, _, port = dst.partition("/")
        if src not in layers:
            raise ModelError(f"connection {src} -> {dst}: unknown source layer '{src}'")
        if dst_layer not in layers:
            raise ModelError(f"connection {src} -> {dst}: unknown destination layer '{dst_layer}'")
        if port and not (port.startswith("in") and port[2:].isdigit()):
            raise ModelError(f"connection {src} -> {dst}: unknown input port '{port}'")
        index = int(port[2:]) if port else 1
        if index in ports[dst_layer]:
            raise ModelError(f"layer '{dst_layer}': input {index} connected twice")
        ports[dst_layer][index] = src
    inputs: Dict[str, List[str]] = {}
    for name, layer in layers.items():
        expected = 0 if layer.class_name == INPUT else _num_inputs(layer)
        got = ports[name]
        if sorted(got) != list(range(1, expected + 1)):
            missing = [f"in{i}" for i in range(1, expected + 1) if i not in got]
            extra = [f"in{i}" for i in sorted(got) if i > expected or i < 1]
            what = f"missing input {', '.join(missing)}" if missing else f"unexpected input {', '.join(extra)}"
            raise ModelError(f"layer '{name}': {what}")
        inputs[name] = [got[i] for i in sorted(got)]
    return inputs


def _num_inputs(layer: LayerSpec) -> int:
    if layer.class_name != CONCAT:
        return 1
    count = _ints(layer, "NumInputs", 1)[0]
    if count < 1:
        raise ModelError(f"layer '{layer.name}': NumInputs must be >= 1")
    return count


def _topological_order(layers: Dict[str, LayerSpec], inputs: Dict[str, List[str]]) -> List[str]:
    """Kahn's algorithm, stable in file order; a cycle is an error naming its layers."""
    pending = {name: len(set(srcs)) for name, srcs in inputs.items()}
    consumers: Dict[str, List[str]] = {name: [] for name in layers}
    for name, srcs in inputs.items():
        for src in set(srcs):
            consumers[src].append(name)
    ready = [name for name in layers if pending[name] == 0]
    order: List[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for nxt in consumers[name]:
            pending[nxt] -= 1
            if pending[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(layers):
        stuck = [name for name in layers if pending[name] > 0]
        raise ModelError(f"layer '{stuck[0]}': connections form a cycle (through {', '.join(stuck)})")
    return order


# --------------------------------------------------------------------------- per-layer builders


def _input_shape(layer: LayerSpec) -> Tuple[int, int, int]:
    size = _ints(layer, "InputSize")
    if len(size) != 3:
        raise ModelError(f"layer '{layer.name}': InputSize must be [H W C], got {size}")
    norm = layer.props.get("Normalization", "none")
    if not (isinstance(norm, str) and norm.lower() == "none") and np.size(norm) != 0:
        raise ModelError(f"layer '{layer.name}': built-in input normalization {norm!r} is not supported")
    h, w, c = size
    return c, h, w


def _conv(layer: LayerSpec, srcs: List[str], in_shapes: List[Tuple[int, int, int]]) -> Node:
    c_in, h, w = in_shapes[0]
    kh, kw = _pair(layer, "FilterSize")
    if layer.class_name == GROUPED_CONV:
        groups = _ints(layer, "NumGroups")[0]
        c_out = groups * _ints(layer, "NumFiltersPerGroup")[0]
    else:
        groups, c_out = 1, _ints(layer, "NumFilters")[0]
    if groups < 1 or c_in % groups:
        raise ModelError(f"layer '{layer.name}': {c_in} input channels cannot form {groups} groups")
    per_group = c_in // groups
    weights = _learnable(layer, "Weights")
    bias = _learnable(layer, "Bias").reshape(-1, order="F")
    if weights.size != kh * kw * per_group * c_out:
        raise ModelError(f"layer '{layer.name}': weights {weights.shape} do not fit {kh}x{kw}x{per_group}x{c_out} "
                         f"({c_in} input channels, {groups} groups)")
    if bias.size != c_out:
        raise ModelError(f"layer '{layer.name}': {bias.size} biases for {c_out} filters")
    # MATLAB stores kh x kw x Cin/G x F (x G), column-major, so filter f of group g is output g * F + f.
    w4 = weights.reshape(kh, kw, per_group, c_out, order="F")
    stride = _pair(layer, "Stride")
    dilation = _pair(layer, "DilationFactor", (1, 1))
    pads = _pads(layer, (h, w), (kh, kw), stride, dilation)
    return Node(
        layer.name, "conv", srcs,
        attrs={"kernel": (kh, kw), "stride": stride, "dilation": dilation, "pads": pads, "group": groups},
        weights={"W": np.ascontiguousarray(w4.transpose(3, 2, 0, 1), dtype=np.float32),
                 "B": np.ascontiguousarray(bias, dtype=np.float32)},
        shape=(c_out, *_out_size(layer, (h, w), (kh, kw), stride, dilation, pads)),
    )


def _relu(layer: LayerSpec, srcs: List[str], in_shapes: List[Tuple[int, int, int]]) -> Node:
    return Node(layer.name, "relu", srcs, shape=in_shapes[0])


def _pool(layer: LayerSpec, srcs: List[str], in_shapes: List[Tuple[int, int, int]]) -> Node:
    c, h, w = in_shapes[0]
    kernel = _pair(layer, "PoolSize")
    stride = _pair(layer, "Stride")
    pads = _pads(layer, (h, w), kernel, stride, (1, 1))
    if any(p >= k for p, k in zip(pads, (kernel[0], kernel[0], kernel[1], kernel[1]))):
        raise ModelError(f"layer '{layer.name}': padding {pads} must be smaller than the pool size {kernel}")
    op = "maxpool" if layer.class_name == MAXPOOL else "avgpool"
    return Node(layer.name, op, srcs, attrs={"kernel": kernel, "stride": stride, "pads": pads},
                shape=(c, *_out_size(layer, (h, w), kernel, stride, (1, 1), pads)))


def _concat(layer: LayerSpec, srcs: List[str], in_shapes: List[Tuple[int, int, int]]) -> Node:
    spatial = {s[1:] for s in in_shapes}
    if len(spatial) != 1:
        raise ModelError(f"layer '{layer.name}': inputs differ in height/width {sorted(spatial)}")
    return Node(layer.name, "concat", srcs, shape=(sum(s[0] for s in in_shapes), *in_shapes[0][1:]))


_NODE_BUILDERS = {CONV: _conv, GROUPED_CONV: _conv, RELU: _relu, MAXPOOL: _pool, AVGPOOL: _pool, CONCAT: _concat}


def _pads(layer: LayerSpec, hw: Tuple[int, int], kernel: Tuple[int, int], stride: Tuple[int, int],
          dilation: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right); 'same' is computed as MATLAB does (extra pixel bottom/right)."""
    mode = str(layer.props.get("PaddingMode", "manual")).lower()
    if mode == "same":
        pads = []
        for size, k, s, d in zip(hw, kernel, stride, dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return pads[0], pads[1], pads[2], pads[3]
    if mode != "manual":
        raise ModelError(f"layer '{layer.name}': unsupported PaddingMode {mode!r}")
    values = _ints(layer, "PaddingSize", 0)
    if len(values) == 1:
        values = values * 4
    elif len(values) == 2:
        values = [values[0], values[0], values[1], values[1]]
    if len(values) != 4 or min(values) < 0:
        raise ModelError(f"layer '{layer.name}': bad PaddingSize {values}")
    return values[0], values[1], values[2], values[3]


def _out_size(layer: LayerSpec, hw, kernel, stride, dilation, pads) -> Tuple[int, int]:
    """Output height/width, rounding down (MATLAB and ONNX floor mode)."""
    out = []
    for size, k, s, d, (p0, p1) in zip(hw, kernel, stride, dilation, (pads[:2], pads[2:])):
        span = (k - 1) * d + 1
        if size + p0 + p1 < span:
            raise ModelError(f"layer '{layer.name}': window {k} does not fit input size {size}")
        out.append((size + p0 + p1 - span) // s + 1)
    return out[0], out[1]


def _ints(layer: LayerSpec, key: str, default: Optional[int] = None) -> List[int]:
    if key not in layer.props:
        if default is None:
            raise ModelError(f"layer '{layer.name}': missing property {key}")
        return [default]
    try:
        values = np.asarray(layer.props[key], dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ModelError(f"layer '{layer.name}': property {key} is not numeric") from None
    if values.size and (not np.all(np.isfinite(values)) or np.any(values != np.round(values))):
        raise ModelError(f"layer '{layer.name}': property {key} must hold integers, got {values.tolist()}")
    return [int(v) for v in values]


def _pair(layer: LayerSpec, key: str, default: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    if default is not None and key not in layer.props:
        return default
    values = _ints(layer, key)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise ModelError(f"layer '{layer.name}': {key} must be two positive integers, got {values}")
    return values[0], values[1]


def _learnable(layer: LayerSpec, key: str) -> np.ndarray:
    value = layer.props.get(key)
    if isinstance(value, dict):
        value = value.get("Value")
    if not isinstance(value, np.ndarray) or value.size == 0 or value.dtype.kind != "f":
        raise ModelError(f"layer '{layer.name}': missing or non-numeric {key}")
    if not np.all(np.isfinite(value)):
        raise ModelError(f"layer '{layer.name}': {key} contains NaN or Inf")
    return value
