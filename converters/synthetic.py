"""SqueezeFacePoseNet LayerGraphs with deterministic random weights (no trained file needed).

``synthetic_layergraph("base")`` is the authors' base model architecture (standard 3x3 expand
convs, the 4.4 MB model we do not have), ``"dwc"`` the grouped-conv variant. Both come in the
same MATLAB-shaped form that ``layergraph.read_mat`` produces, so they go through the same
converter path. Good for tests and for latency/memory benchmarks -- the descriptors are
meaningless.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np

from sfpn_edge.converters.layergraph import LayerGraphSpec, LayerSpec, build_graph

VARIANTS = ("dwc", "base")
FIRES = [(2, 16, 64), (3, 16, 64), (4, 32, 128), (5, 32, 128), (6, 48, 192), (7, 48, 192), (8, 64, 256),
         (9, 64, 256)]
POOL_AFTER = {"conv1": "pool1", "fire4": "pool4", "fire8": "pool8"}
DWC_MULTIPLIER = 4


def synthetic_layergraph(variant: str = "dwc", seed: int = 0, input_size: int = 113,
                         descriptor_dim: int = 1000) -> LayerGraphSpec:
    """The SqueezeFacePoseNet LayerGraph of ``variant`` with He-initialised random weights."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    rng = np.random.default_rng(seed)
    layers: List[LayerSpec] = []
    connections: List[Tuple[str, str]] = []

    def add(class_name: str, name: str, after: str = "", **props: Any) -> str:
        layers.append(LayerSpec(class_name, {"Name": name, **props}))
        if after:
            connections.append((after, name))
        return name

    def conv(name: str, after: str, k: int, c_in: int, c_out: int, groups: int = 0) -> str:
        per_group = 1 if groups else c_in
        weights = rng.normal(0.0, np.sqrt(2.0 / (k * k * per_group)), (k, k, per_group, c_out)).astype(np.float32)
        props: Dict[str, Any] = {
            "FilterSize": np.array([[k, k]], float), "Stride": np.array([[1.0, 1.0]]),
            "DilationFactor": np.array([[1.0, 1.0]]),
            "PaddingMode": "same" if k > 1 else "manual", "PaddingSize": np.full((1, 4), (k - 1) // 2, float),
            "Weights": {"Value": weights},
            "Bias": {"Value": rng.normal(0.0, 0.05, (1, 1, c_out)).astype(np.float32)},
        }
        if groups:
            props.update(NumGroups=np.array([[groups]], float), NumChannelsPerGroup=np.array([[1.0]]),
                         NumFiltersPerGroup=np.array([[c_out // groups]], float))
            return add("GroupedConvolution2DLayer", name, after, **props)
        props.update(NumChannels=np.array([[c_in]], float), NumFilters=np.array([[c_out]], float))
        return add("Convolution2DLayer", name, after, **props)

    def pool(class_name: str, name: str, after: str, k: int, stride: int) -> str:
        return add(class_name, name, after, PoolSize=np.array([[k, k]], float),
                   Stride=np.array([[stride, stride]], float), PaddingMode="manual", PaddingSize=np.zeros((1, 4)))

    top = add("ImageInputLayer", "imageinput", InputSize=np.array([[input_size, input_size, 3]], float),
              Normalization="none")
    top = add("ReLULayer", "relu_conv1", conv("conv1", top, 3, 3, 64))
    top = pool("MaxPooling2DLayer", POOL_AFTER["conv1"], top, 3, 2)
    channels = 64
    for index, squeeze, expand in FIRES:
        fire = f"fire{index}"
        s = add("ReLULayer", f"{fire}-relu_squeeze1x1", conv(f"{fire}-squeeze1x1", top, 1, channels, squeeze))
        e1 = add("ReLULayer", f"{fire}-relu_expand1x1", conv(f"{fire}-expand1x1", s, 1, squeeze, expand))
        if variant == "dwc":
            e3 = conv(f"{fire}-expand3x3-groupedconv", s, 3, squeeze, squeeze * DWC_MULTIPLIER, groups=squeeze)
        else:
            e3 = conv(f"{fire}-expand3x3", s, 3, squeeze, expand)
        e3 = add("ReLULayer", f"{fire}-relu_expand3x3", e3)
        top = add("DepthConcatenationLayer", f"{fire}-concat", NumInputs=np.array([[2.0]]))
        connections += [(e1, f"{top}/in1"), (e3, f"{top}/in2")]
        channels = expand + (squeeze * DWC_MULTIPLIER if variant == "dwc" else expand)
        if fire in POOL_AFTER:
            top = pool("MaxPooling2DLayer", POOL_AFTER[fire], top, 3, 2)
    top = add("DropoutLayer", "drop9", top, Probability=np.array([[0.5]]))
    top = add("ReLULayer", "relu_conv10", conv("conv10", top, 1, channels, descriptor_dim))
    final = ((((input_size - 3) // 2 + 1 - 3) // 2 + 1) - 3) // 2 + 1
    top = pool("AveragePooling2DLayer", "avgpool2d", top, final, 1)
    top = add("SoftmaxLayer", "prob", top)
    add("ClassificationOutputLayer", "classoutput", top)
    return LayerGraphSpec(layers, connections)


def write_synthetic_model(out_dir: Union[str, Path], variant: str = "dwc", seed: int = 0, *,
                          depthwise_rewrite: bool = True) -> Dict[str, Any]:
    """Convert a synthetic LayerGraph into a model directory (for latency/memory benchmarks)."""
    from sfpn_edge.converters.convert import write_model_dir

    graph = build_graph(synthetic_layergraph(variant, seed))
    digest = hashlib.sha256()
    for node in graph.nodes:
        for array in node.weights.values():
            digest.update(array.tobytes())
    return write_model_dir(graph, out_dir, source_sha256=digest.hexdigest(),
                           source_name=f"synthetic-{variant}-seed{seed}", depthwise_rewrite=depthwise_rewrite)
