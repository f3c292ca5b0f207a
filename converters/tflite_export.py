"""Graph IR -> TFLite (NHWC): ``model.tflite`` (fp32) and ``model_fp16.tflite`` (fp16 weights).

The IR is first lowered to :class:`Layer` records, one per TFLite compute op: ReLU fused into the
conv it follows, the global average pool as MEAN over H and W, and grouped convs with one input
channel per group and M filters each (the fire expands, M = 4) as CONCATENATION([x] * M) +
DEPTHWISE_CONV_2D with multiplier 1: XNNPACK's int8 depthwise kernel with multiplier 4 took 2.0 ms
where the copy + multiplier-1 form takes ~0.35 (fp32: 0.29 vs 0.24). As in the ONNX export's
"replicate" form, the depthwise output comes out filter-major; that channel order is carried
through pools and concats and folded into the next ordinary conv's input weights, so it costs
nothing. The input is float32 [N, 113, 113, 3] (batch dynamic: shape_signature -1), RGB minus
the mean as for every backend; the output "descriptor" is float32 [N, D].

fp16 stores every weight and bias as FLOAT16 with a DEQUANTIZE op in front of its consumer (the
form XNNPACK folds at load time). The fp32 file can be read back into layers
(:func:`read_layers`): the int8 writer (``converters.tflite_quantize``) starts from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from sfpn_edge import cache
from sfpn_edge.converters import tflite_format as tf
from sfpn_edge.converters.layergraph import Graph, Node
from sfpn_edge.converters.onnx_export import depthwise_multiplier, replicated_order
from sfpn_edge.errors import ModelError

FILES = {"fp32": "model.tflite", "fp16": "model_fp16.tflite"}
INPUT_NAME = "input"
OUTPUT_NAME = "descriptor"


@dataclass
class Layer:
    """One TFLite compute op in NHWC. ``kind``: conv | dwconv | maxpool | avgpool | mean | concat | relu.

    conv weights are [Cout, kh, kw, Cin], dwconv weights [1, kh, kw, Cin * multiplier].
    """

    kind: str
    name: str
    inputs: List[str]
    shape: Tuple[int, int, int]                 # output (H, W, C)
    weight: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None
    attrs: Dict[str, int] = field(default_factory=dict)


@dataclass
class Lowered:
    input_shape: Tuple[int, int, int]           # (H, W, C)
    layers: List[Layer]

    @property
    def output(self) -> Layer:
        return self.layers[-1]


# --------------------------------------------------------------------------- IR -> layers


def lower(graph: Graph) -> Lowered:
    """The IR as TFLite layers (ModelError naming the layer for what TFLite cannot express)."""
    consumers: Dict[str, List[Node]] = {}
    for node in graph.nodes:
        for src in node.inputs:
            consumers.setdefault(src, []).append(node)
    shapes = {graph.input_name: _hwc(graph.input_shape), **{n.name: _hwc(n.shape) for n in graph.nodes}}
    names = {graph.input_name: INPUT_NAME}
    orders: Dict[str, Optional[np.ndarray]] = {graph.input_name: None}   # IR channel of each physical one
    fused: Dict[str, str] = {}                  # relu name -> its conv's name
    layers: List[Layer] = []
    for node in graph.nodes:
        srcs = [names[s] for s in node.inputs]
        in_shape = shapes[node.inputs[0]]
        order = orders[node.inputs[0]]
        if node.name in fused:                  # already the conv's fused activation
            names[node.name], orders[node.name] = names[node.inputs[0]], order
            continue
        if node.op == "conv":
            layer, order, replicate = _conv(node, srcs, in_shape, order)
            if replicate is not None:
                layers.append(replicate)
            after = consumers.get(node.name, [])
            if len(after) == 1 and after[0].op == "relu" and node.name != graph.output:
                fused[after[0].name] = node.name
                layer.attrs["relu"] = 1
                layer.name = after[0].name
        elif node.op == "relu":
            layer = Layer("relu", node.name, srcs, shapes[node.name])
        elif node.op in ("maxpool", "avgpool"):
            layer = _pool(node, srcs, in_shape, is_output=node.name == graph.output)
        elif node.op == "concat":
            layer = Layer("concat", node.name, srcs, shapes[node.name])
            sizes = [shapes[s][2] for s in node.inputs]
            offsets = np.cumsum([0] + sizes[:-1])
            order = np.concatenate([off + (orders[s] if orders[s] is not None else np.arange(n))
                                    for off, s, n in zip(offsets, node.inputs, sizes)])
        else:
            raise ModelError(f"layer '{node.name}': IR op {node.op!r} has no TFLite form here")
        names[node.name] = layer.name
        orders[node.name] = None if order is None or (order == np.arange(len(order))).all() else order
        layers.append(layer)
    if layers[-1].name != names[graph.output]:
        raise ModelError(f"layer '{graph.output}': the descriptor must be the last layer")
    if orders[graph.output] is not None:
        raise ModelError(f"layer '{graph.output}': the descriptor's channels would be permuted")
    return Lowered(_hwc(graph.input_shape), layers)


def _hwc(chw: Tuple[int, int, int]) -> Tuple[int, int, int]:
    c, h, w = chw
    return h, w, c


def _padding(node: Node, in_hw: Tuple[int, int], kernel: Tuple[int, int], stride: Tuple[int, int],
             dilation: Tuple[int, int] = (1, 1)) -> int:
    """SAME when the IR's pads are TensorFlow's SAME pads (extra pixel bottom/right), VALID when zero."""
    t, b, l, r = node.attrs["pads"]
    if (t, b, l, r) == (0, 0, 0, 0):
        return tf.VALID
    same = []
    for size, k, s, d in zip(in_hw, kernel, stride, dilation):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        same += [total // 2, total - total // 2]
    if [t, b, l, r] == same:
        return tf.SAME
    raise ModelError(f"layer '{node.name}': padding {node.attrs['pads']} is neither TFLite SAME nor VALID")


def _conv(node: Node, srcs: List[str], in_shape: Tuple[int, int, int], order: Optional[np.ndarray]
          ) -> Tuple[Layer, Optional[np.ndarray], Optional[Layer]]:
    """(conv layer, its output channel order, the replicating concat before it or None); ``order``
    is the input's channel order (None: natural)."""
    weight, bias, group = node.weights["W"], node.weights["B"], node.attrs["group"]
    kernel, stride, dilation = node.attrs["kernel"], node.attrs["stride"], node.attrs["dilation"]
    c_out, per_group = weight.shape[:2]
    attrs = {"padding": _padding(node, in_shape[:2], kernel, stride, dilation), "stride_h": stride[0],
             "stride_w": stride[1], "dilation_h": dilation[0], "dilation_w": dilation[1], "relu": 0}
    out_shape = _out_hw(node)
    if group == 1:
        weight = weight if order is None else weight[:, order]     # fold the input's channel order
        return (Layer("conv", node.name, srcs, out_shape, np.ascontiguousarray(weight.transpose(0, 2, 3, 1)),
                      bias.copy(), attrs), None, None)
    if per_group != 1 or group != in_shape[2]:
        raise ModelError(f"layer '{node.name}': grouped convolution with {per_group} input channels per group "
                         "has no TFLite builtin")
    multiplier = depthwise_multiplier(node)
    replicate = None
    if multiplier:
        order = replicated_order(order, group, multiplier)
        replicate = Layer("concat", f"{node.name}/replicate", srcs * multiplier, (*in_shape[:2], c_out))
        srcs = [replicate.name]
    elif order is None:
        order = np.arange(c_out)
    attrs["multiplier"] = 1
    layer = Layer("dwconv", node.name, srcs, out_shape, np.ascontiguousarray(weight[order].transpose(1, 2, 3, 0)),
                  bias[order].copy(), attrs)
    return layer, order, replicate


def _out_hw(node: Node) -> Tuple[int, int, int]:
    c, h, w = node.shape
    return h, w, c


def _pool(node: Node, srcs: List[str], in_shape: Tuple[int, int, int], is_output: bool) -> Layer:
    kernel, stride = node.attrs["kernel"], node.attrs["stride"]
    padding = _padding(node, in_shape[:2], kernel, stride)
    if node.op == "avgpool" and tuple(kernel) == in_shape[:2] and padding == tf.VALID:
        return Layer("mean", node.name, srcs, _out_hw(node), attrs={"keep_dims": int(not is_output)})
    if node.op == "avgpool" and padding != tf.VALID:
        raise ModelError(f"layer '{node.name}': padded average pooling counts padding differently in TFLite")
    return Layer(node.op, node.name, srcs, _out_hw(node),
                 attrs={"padding": padding, "stride_h": stride[0], "stride_w": stride[1],
                        "filter_h": kernel[0], "filter_w": kernel[1]})


# --------------------------------------------------------------------------- layers -> flatbuffer


class Writer:
    """Collects tensors and ops of one TFLite model."""

    def __init__(self, description: str):
        self.model = tf.Model([], [], [], [], description)
        self.index: Dict[str, int] = {}

    def tensor(self, name: str, shape, dtype: int = tf.FLOAT32, data: Optional[np.ndarray] = None,
               quant: Optional[tf.Quant] = None, signature=None) -> int:
        if name in self.index:
            raise ValueError(f"tensor {name!r} written twice")
        self.model.tensors.append(tf.Tensor(name, tuple(int(d) for d in shape), dtype, data, quant, signature))
        self.index[name] = len(self.model.tensors) - 1
        return self.index[name]

    def op(self, kind: str, inputs: List[int], outputs: List[int], **options: int) -> None:
        self.model.ops.append(tf.Op(kind, inputs, outputs, options))


def float_constant(writer: Writer, name: str, array: np.ndarray) -> int:
    return writer.tensor(name, array.shape, tf.FLOAT32, array.astype(np.float32))


def fp16_constant(writer: Writer, name: str, array: np.ndarray) -> int:
    """A FLOAT16 constant and the DEQUANTIZE op that gives its float32 value."""
    half = writer.tensor(f"{name}/fp16", array.shape, tf.FLOAT16, array.astype(np.float16))
    full = writer.tensor(name, array.shape)
    writer.op("DEQUANTIZE", [half], [full])
    return full


def op_options(layer: Layer) -> Dict[str, int]:
    """The TFLite builtin options of a compute layer."""
    a = layer.attrs
    if layer.kind in ("conv", "dwconv"):
        options = {"padding": a["padding"], "stride_w": a["stride_w"], "stride_h": a["stride_h"],
                   "activation": tf.RELU if a["relu"] else tf.NONE,
                   "dilation_w": a["dilation_w"], "dilation_h": a["dilation_h"]}
        return {**options, "depth_multiplier": a["multiplier"]} if layer.kind == "dwconv" else options
    if layer.kind in ("maxpool", "avgpool"):
        return {**{key: a[key] for key in ("padding", "stride_w", "stride_h", "filter_w", "filter_h")}, "activation": 0}
    if layer.kind == "concat":
        return {"axis": 3, "activation": 0}
    if layer.kind == "mean":
        return {"keep_dims": a["keep_dims"]}
    return {}


OP_KINDS = {"conv": "CONV_2D", "dwconv": "DEPTHWISE_CONV_2D", "maxpool": "MAX_POOL_2D",
            "avgpool": "AVERAGE_POOL_2D", "concat": "CONCATENATION", "mean": "MEAN", "relu": "RELU"}


def to_tflite(lowered: Lowered, precision: str = "fp32", description: str = "") -> bytes:
    """The fp32 or fp16 .tflite bytes of ``lowered``."""
    constant = {"fp32": float_constant, "fp16": fp16_constant}.get(precision)
    if constant is None:
        raise ValueError(f"precision must be fp32 or fp16 here (int8: converters.tflite_quantize), got {precision!r}")
    w = Writer(description)
    h, wd, c = lowered.input_shape
    w.model.inputs = [w.tensor(INPUT_NAME, (1, h, wd, c), signature=(-1, h, wd, c))]
    for layer in lowered.layers:
        inputs = [w.index[s] for s in layer.inputs]
        if layer.weight is not None:
            inputs += [constant(w, f"{layer.name}/weight", layer.weight), constant(w, f"{layer.name}/bias", layer.bias)]
        if layer.kind == "mean":
            inputs.append(w.tensor(f"{layer.name}/axes", (2,), tf.INT32, np.array([1, 2], np.int32)))
        is_output = layer is lowered.output
        out_name = OUTPUT_NAME if is_output else layer.name
        shape = (1, layer.shape[2]) if layer.kind == "mean" and not layer.attrs["keep_dims"] else (1, *layer.shape)
        out = w.tensor(out_name, shape)
        w.op(OP_KINDS[layer.kind], inputs, [out], **op_options(layer))
        w.index[layer.name] = out
    w.model.outputs = [w.index[lowered.output.name]]
    return tf.encode(w.model)


def export_tflite(graph: Graph, out_dir: Path, description: str = "") -> Dict[str, str]:
    """Write ``model.tflite`` and ``model_fp16.tflite`` into ``out_dir``; returns {precision: file name}."""
    lowered = lower(graph)
    for precision, name in FILES.items():
        cache.atomic_write_bytes(Path(out_dir) / name, to_tflite(lowered, precision, description))
        (Path(out_dir) / name).chmod(0o644)
    return dict(FILES)


# --------------------------------------------------------------------------- fp32 file -> layers


def read_layers(path: Path) -> Lowered:
    """The layers of an fp32 ``model.tflite`` written by :func:`to_tflite` (ModelError otherwise)."""
    try:
        model = tf.decode(Path(path).read_bytes())
    except (OSError, ValueError, IndexError, TypeError) as exc:
        raise ModelError(f"{Path(path).name}: not a TFLite model sfpn-edge wrote ({exc})") from None
    kinds = {v: k for k, v in OP_KINDS.items()}
    t = model.tensors
    if len(model.inputs) != 1 or len(model.outputs) != 1 or t[model.inputs[0]].name != INPUT_NAME:
        raise ModelError(f"{Path(path).name}: expected one input {INPUT_NAME!r} and one output")
    layers = []
    for op in model.ops:
        if op.kind not in kinds or any(t[i].dtype != tf.FLOAT32 for i in op.inputs + op.outputs
                                       if t[i].data is None):
            raise ModelError(f"{Path(path).name}: op {op.kind} is not in an fp32 sfpn-edge model")
        kind, o = kinds[op.kind], op.options
        out = t[op.outputs[0]]
        name = out.name
        if name == OUTPUT_NAME and len(op.inputs) > 1:    # the layer's own name survives in its constants
            name = t[op.inputs[1]].name.rpartition("/")[0] or name
        weight = bias = None
        attrs: Dict[str, int] = {}
        inputs = op.inputs
        if kind in ("conv", "dwconv"):
            weight, bias, inputs = t[op.inputs[1]].data, t[op.inputs[2]].data, op.inputs[:1]
            attrs = {"padding": o["padding"], "stride_h": o["stride_h"], "stride_w": o["stride_w"],
                     "dilation_h": o["dilation_h"], "dilation_w": o["dilation_w"],
                     "relu": int(o["activation"] == tf.RELU)}
            if kind == "dwconv":
                attrs["multiplier"] = o["depth_multiplier"]
        elif kind in ("maxpool", "avgpool"):
            attrs = {k: o[k] for k in ("padding", "stride_h", "stride_w", "filter_h", "filter_w")}
        elif kind == "mean":
            attrs, inputs = {"keep_dims": o["keep_dims"]}, op.inputs[:1]
        shape = tuple(out.shape[1:]) if len(out.shape) == 4 else (1, 1, out.shape[-1])
        layers.append(Layer(kind, name, [t[i].name for i in inputs], shape, weight, bias, attrs))
    h, w, c = t[model.inputs[0]].shape[1:]
    return Lowered((h, w, c), layers)
