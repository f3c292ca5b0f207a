"""Graph IR -> ONNX (opset 17, dynamic batch, input "input", output "descriptor" [N, D]).

Depthwise rewrite (on by default). A grouped convolution with one input channel per group and M
filters per group (the DWC model's expand3x3 layers) runs on a slow generic path in ONNX Runtime
and OpenVINO; a true depthwise convolution (group = output channels) runs on fast kernels. Two
exact forms are offered:

* ``replicate`` (default): Concat([x] * M) on channels, then a depthwise conv whose output
  channels come out in the order of that concat (filter f of every group, then filter f + 1 ...).
  The resulting channel permutation is carried through every channel-wise op (Relu, pools,
  depth-concat) and folded into the input-channel weights of the next ordinary convolution, so it
  costs nothing at run time. Concat is a plain copy, cheaper than a Gather, and its uint8 form
  quantizes cleanly.
* ``gather``: a channel Gather (output channel o reads input channel o // M) feeding a depthwise
  conv with the original weights; bit-exact, no permutation anywhere.

Every intermediate tensor of either form is an exact channel permutation of the plain graph's;
only the next convolution's summation order differs (float rounding, ~1e-7 relative).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from sfpn_edge.converters.layergraph import Graph, Node

OPSET = 17
IR_VERSION = 8          # the newest IR that every supported ONNX Runtime / OpenVINO reads
INPUT_NAME = "input"
OUTPUT_NAME = "descriptor"
REWRITES = ("replicate", "gather")

# Channel order of a tensor as exported: ``order[j]`` is the IR (logical) channel held in physical
# channel j; None means the natural order.
Order = Optional[np.ndarray]


def depthwise_multiplier(node: Node) -> int:
    """M when ``node`` is a grouped conv with 1 input channel per group and M > 1 filters each, else 0."""
    if node.op != "conv" or node.attrs["group"] == 1:
        return 0
    out_channels, in_per_group = node.weights["W"].shape[:2]
    multiplier = out_channels // node.attrs["group"]
    return multiplier if in_per_group == 1 and multiplier > 1 else 0


def replicated_order(in_order: Order, in_channels: int, multiplier: int) -> np.ndarray:
    """Output channel order of Concat([x] * M) + depthwise conv: physical channel j reads input
    channel j % C (IR channel ``in_order[j % C]``) with filter j // C of that group."""
    j = np.arange(in_channels * multiplier)
    groups = (in_order if in_order is not None else np.arange(in_channels))[j % in_channels]
    return groups * multiplier + j // in_channels


def to_onnx(graph: Graph, *, depthwise_rewrite: bool = True, rewrite: str = "replicate", doc: str = ""):
    """Build and fully check the ONNX ModelProto for ``graph``.

    ``depthwise_rewrite`` False exports the grouped convolutions as they are; ``rewrite`` picks the
    form ("replicate" or "gather", see the module docstring).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if rewrite not in REWRITES:
        raise ValueError(f"rewrite must be one of {REWRITES}, got {rewrite!r}")
    nodes: List = []
    inits: List = []
    names = {graph.input_name: INPUT_NAME}
    orders: Dict[str, Order] = {graph.input_name: None}
    channels = {graph.input_name: graph.input_shape[0], **{n.name: n.shape[0] for n in graph.nodes}}

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    def gather(src: str, index: np.ndarray, name: str) -> str:
        nodes.append(helper.make_node("Gather", [src, const(f"{name}/channel_index", index.astype(np.int64))],
                                      [name], name=name, axis=1))
        return name

    def natural(node_name: str, src: str, order: Order) -> str:
        """``src`` in natural channel order (a Gather only where an order cannot be folded away)."""
        return src if order is None else gather(src, np.argsort(order), f"{node_name}/reorder")

    for node in graph.nodes:
        srcs = [names[s] for s in node.inputs]
        in_orders = [orders[s] for s in node.inputs]
        out, order = node.name, in_orders[0]
        if node.op == "conv":
            weight, bias, group = node.weights["W"], node.weights["B"], node.attrs["group"]
            multiplier = depthwise_multiplier(node) if depthwise_rewrite else 0
            if multiplier and rewrite == "replicate":
                order = replicated_order(order, weight.shape[0] // multiplier, multiplier)
                replicated = f"{node.name}/replicate"
                nodes.append(helper.make_node("Concat", srcs * multiplier, [replicated], name=replicated, axis=1))
                srcs, group, weight, bias = [replicated], weight.shape[0], weight[order], bias[order]
            elif multiplier:
                index = np.arange(weight.shape[0]) // multiplier
                if order is not None:
                    index = np.argsort(order)[index]
                srcs, group, order = [gather(srcs[0], index, f"{node.name}/gather")], weight.shape[0], None
            elif order is not None and group == 1:   # fold the input order into the weights
                weight, order = weight[:, order], None
            else:
                srcs, order = [natural(node.name, srcs[0], order)], None
            kh, kw = node.attrs["kernel"]
            t, b, l, r = node.attrs["pads"]
            nodes.append(helper.make_node(
                "Conv", srcs + [const(f"{node.name}/W", np.ascontiguousarray(weight)), const(f"{node.name}/B", bias)],
                [out], name=node.name, kernel_shape=[kh, kw], strides=list(node.attrs["stride"]),
                dilations=list(node.attrs["dilation"]), pads=[t, l, b, r], group=group))
        elif node.op == "relu":
            nodes.append(helper.make_node("Relu", srcs, [out], name=node.name))
        elif node.op in ("maxpool", "avgpool"):
            t, b, l, r = node.attrs["pads"]
            extra = {"count_include_pad": 1} if node.op == "avgpool" else {}
            nodes.append(helper.make_node(
                "MaxPool" if node.op == "maxpool" else "AveragePool", srcs, [out], name=node.name,
                kernel_shape=list(node.attrs["kernel"]), strides=list(node.attrs["stride"]),
                pads=[t, l, b, r], ceil_mode=0, **extra))
        elif node.op == "concat":
            nodes.append(helper.make_node("Concat", srcs, [out], name=node.name, axis=1))
            sizes = [channels[s] for s in node.inputs]
            offsets = np.cumsum([0] + sizes[:-1])
            order = np.concatenate([off + (o if o is not None else np.arange(n))
                                    for off, o, n in zip(offsets, in_orders, sizes)])
        else:
            raise ValueError(f"unknown IR op {node.op!r}")
        names[node.name] = out
        orders[node.name] = None if order is None or (order == np.arange(len(order))).all() else order

    last = natural("descriptor", names[graph.output], orders[graph.output])
    nodes.append(helper.make_node("Flatten", [last], [OUTPUT_NAME], name="flatten", axis=1))
    c, h, w = graph.input_shape
    dim = graph.descriptor_dim
    onnx_graph = helper.make_graph(
        nodes, "squeezefaceposenet",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", dim])],
        initializer=inits,
    )
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sfpn-edge", doc_string=doc)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(graph: Graph, path: Path, *, depthwise_rewrite: bool = True, rewrite: str = "replicate",
                doc: str = "") -> Path:
    """Write ``graph`` as ONNX to ``path`` (checked with ``full_check=True``)."""
    import onnx

    onnx.save_model(to_onnx(graph, depthwise_rewrite=depthwise_rewrite, rewrite=rewrite, doc=doc), str(path))
    return Path(path)
