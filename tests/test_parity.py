"""Converted models vs the independent numpy reference (tests/reference_forward.py).

fp32 ONNX Runtime and OpenVINO (f32 pinned) within 1e-4 of max |output|; fp16 IR cosine >= 0.999.
"""
from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest

from reference_forward import reference_forward
from sfpn_edge import models
from sfpn_edge.converters.layergraph import LayerGraphSpec, LayerSpec, build_graph, read_mat
from sfpn_edge.converters.onnx_export import export_onnx
from sfpn_edge.converters.synthetic import synthetic_layergraph, write_synthetic_model

MEAN_RGB = np.array([131.0912, 103.8827, 91.4953], np.float32)
TOL = 1e-4


def preprocess(path) -> np.ndarray:
    """Whole image -> RGB 113x113 minus mean, NCHW [1, 3, 113, 113] (DESIGN.md §1)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    if bgr.shape[:2] != (113, 113):
        bgr = cv2.resize(bgr, (113, 113), interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) - MEAN_RGB
    return rgb.transpose(2, 0, 1)[None].copy()


def ort_run(path, batch: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["descriptor"], {"input": batch})[0]


def ov_run(path, batch: np.ndarray) -> np.ndarray:
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": 1})
    static = compiled.inputs[0].get_partial_shape().is_static
    rows = [compiled(batch[i:i + 1])[0] for i in range(len(batch))] if static else [compiled(batch)[0]]
    return np.concatenate(rows)


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def dwc_spec(dwc_mat) -> LayerGraphSpec:
    return read_mat(dwc_mat)


@pytest.fixture(scope="module")
def inputs(example_crops) -> np.ndarray:
    """Two random inputs (pixel-like range) and the authors' three example crops."""
    rng = np.random.default_rng(1)
    noise = (rng.uniform(0, 255, (2, 3, 113, 113)) - MEAN_RGB[:, None, None]).astype(np.float32)
    return np.concatenate([noise] + [preprocess(p) for p in example_crops])


@pytest.fixture(scope="module")
def reference(dwc_spec, inputs) -> np.ndarray:
    return reference_forward(dwc_spec, inputs)


def test_reference_descriptor_is_gap_output(reference):
    assert reference.shape == (5, 1000)
    assert reference.min() >= 0 and reference.max() > 0      # relu(conv10) averaged: non-negative


@pytest.mark.parametrize("backend, precision", [
    ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino_static", "fp32"),
])
def test_fp32_matches_reference(model_dir, inputs, reference, backend, precision):
    path = models.model_file(model_dir, backend, precision)
    out = ort_run(path, inputs) if backend == "onnxruntime" else ov_run(path, inputs)
    assert out.shape == reference.shape and out.dtype == np.float32
    assert rel_err(out, reference) <= TOL


def test_fp16_ir_cosine(model_dir, inputs, reference):
    out = ov_run(models.model_file(model_dir, "openvino", "fp16"), inputs).astype(np.float64)
    cosine = (out * reference).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosine.min() >= 0.999
    assert rel_err(out, reference) > 0          # the weights really are fp16


def test_static_ir_has_batch_one(model_dir):
    model = ov.Core().read_model(str(models.model_file(model_dir, "openvino_static", "fp32")))
    assert list(model.inputs[0].get_shape()) == [1, 3, 113, 113]


def test_cfp_same_identity_scores_higher(model_dir, cfp_root):
    frontal = cfp_root / "Data" / "Images"
    batch = np.concatenate([preprocess(frontal / "001" / "frontal" / "01.jpg"),
                            preprocess(frontal / "001" / "frontal" / "02.jpg"),
                            preprocess(frontal / "002" / "frontal" / "01.jpg")])
    desc = ort_run(models.model_file(model_dir, "onnxruntime"), batch)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    same, different = float(desc[0] @ desc[1]), float(desc[0] @ desc[2])
    assert same > different


@pytest.mark.parametrize("variant", ["base", "dwc"])
def test_synthetic_model_matches_reference(tmp_path, variant):
    """The base architecture (standard 3x3 convs; file not available) converts with the same code;
    synthetic DWC weights exercise the depthwise rewrite on other numbers than the real ones."""
    out = tmp_path / variant
    manifest = write_synthetic_model(out, variant, seed=3)
    assert manifest["variant"] == variant
    batch = np.random.default_rng(2).normal(0, 50, (2, 3, 113, 113)).astype(np.float32)
    ref = reference_forward(synthetic_layergraph(variant, seed=3), batch)
    assert rel_err(ort_run(models.model_file(out, "onnxruntime"), batch), ref) <= TOL
    assert rel_err(ov_run(models.model_file(out, "openvino"), batch), ref) <= TOL


def _layer(class_name: str, name: str, **props) -> LayerSpec:
    return LayerSpec(class_name, {"Name": name, **props})


def test_padding_modes_and_concat_order(tmp_path):
    """A small odd-sized graph: stride-2 'same' conv/pool (extra pixel bottom/right), padded average
    pool (padding counts in the mean), 3-way concat wired in reverse order."""
    rng = np.random.default_rng(4)

    def conv(name, k, c_in, c_out, stride, mode, pad=(0, 0, 0, 0)):
        return _layer("Convolution2DLayer", name, FilterSize=np.array([[k, k]], float), NumChannels=c_in,
                      NumFilters=c_out, Stride=np.array([[stride, stride]], float), PaddingMode=mode,
                      PaddingSize=np.array([pad], float),
                      Weights={"Value": rng.normal(0, 0.5, (k, k, c_in, c_out)).astype(np.float32)},
                      Bias={"Value": rng.normal(0, 0.5, (1, 1, c_out)).astype(np.float32)})

    pool = dict(PoolSize=np.array([[3, 2]], float), Stride=np.array([[2, 1]], float))
    spec = LayerGraphSpec([
        _layer("ImageInputLayer", "in", InputSize=np.array([[10, 9, 3]], float), Normalization="none"),
        conv("a", 2, 3, 4, 2, "same"),
        conv("b", 3, 3, 2, 1, "manual", (2, 0, 1, 1)),
        _layer("MaxPooling2DLayer", "m", PaddingMode="same", PaddingSize=np.zeros((1, 4)), **pool),
        _layer("AveragePooling2DLayer", "p", PaddingMode="manual", PaddingSize=np.array([[1, 0, 1, 0]], float),
               **pool),
        _layer("ReLULayer", "r"),
        _layer("DepthConcatenationLayer", "cat", NumInputs=3),
        _layer("AveragePooling2DLayer", "gap", PoolSize=np.array([[5, 9]], float), Stride=np.array([[1, 1]]),
               PaddingMode="manual", PaddingSize=np.zeros((1, 4))),
    ], [("in", "a"), ("in", "r"), ("r", "b"), ("b", "p"), ("in", "m"), ("m", "cat/in3"), ("p", "cat/in1"),
        ("a", "cat/in2"), ("cat", "gap")])
    spec.layers[1].props["Stride"] = np.array([[2, 1]], float)
    graph = build_graph(spec)
    shapes = {n.name: n.shape for n in graph.nodes}
    assert shapes == {"a": (4, 5, 9), "r": (3, 10, 9), "b": (2, 10, 9), "p": (2, 5, 9), "m": (3, 5, 9),
                      "cat": (9, 5, 9), "gap": (9, 1, 1)}
    batch = rng.normal(0, 1, (3, 3, 10, 9)).astype(np.float32)
    ref = reference_forward(spec, batch)
    path = export_onnx(graph, tmp_path / "tiny.onnx")
    assert rel_err(ort_run(path, batch), ref) <= TOL
    assert rel_err(ov_run(path, batch), ref) <= TOL
