"""The LayerGraph reader, graph checks and the ONNX export (structure; numbers are in test_parity)."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import scipy.io

from sfpn_edge.converters.layergraph import Graph, LayerSpec, Node, build_graph, read_mat
from sfpn_edge.converters.onnx_export import OPSET, depthwise_multiplier, replicated_order, to_onnx
from sfpn_edge.converters.synthetic import synthetic_layergraph
from sfpn_edge.errors import ModelError


@pytest.fixture(scope="module")
def dwc_spec(dwc_mat):
    return read_mat(dwc_mat)


@pytest.fixture()
def spec():
    """A fresh synthetic DWC LayerGraph to break in each test."""
    return synthetic_layergraph("dwc", seed=0)


def test_reads_authors_layergraph(dwc_spec):
    classes = [layer.class_name for layer in dwc_spec.layers]
    assert len(classes) == 68 and len(dwc_spec.connections) == 75
    assert classes.count("GroupedConvolution2DLayer") == 8 and classes.count("DepthConcatenationLayer") == 8
    assert classes[0] == "ImageInputLayer" and classes[-2:] == ["SoftmaxLayer", "ClassificationOutputLayer"]
    graph = build_graph(dwc_spec)
    assert graph.variant == "dwc" and graph.num_parameters == 694_056
    assert graph.input_shape == (3, 113, 113) and graph.output == "avgpool2d" and graph.descriptor_dim == 1000
    assert {n.op for n in graph.nodes} == {"conv", "relu", "maxpool", "avgpool", "concat"}   # dropout, head gone
    grouped = next(n for n in graph.nodes if n.name == "fire2-expand3x3-groupedconv")
    assert grouped.attrs["group"] == 16 and grouped.weights["W"].shape == (64, 1, 3, 3)
    assert grouped.attrs["pads"] == (1, 1, 1, 1) and depthwise_multiplier(grouped) == 4


def test_grouped_weights_keep_matlab_channel_order(dwc_spec):
    """Output channel g*F + f is MATLAB's column-major filter f of group g (DESIGN.md §1)."""
    layer = next(l for l in dwc_spec.layers if l.props["Name"] == "fire3-expand3x3-groupedconv")
    node = next(n for n in build_graph(dwc_spec).nodes if n.name == "fire3-expand3x3-groupedconv")
    matlab = layer.props["Weights"]["Value"]                 # 3 x 3 x 1 x 64
    for g, f in [(0, 0), (0, 3), (5, 1), (15, 3)]:
        np.testing.assert_array_equal(node.weights["W"][g * 4 + f, 0], matlab[:, :, 0, g * 4 + f])


def test_synthetic_dwc_has_the_authors_structure(dwc_spec, spec):
    real, synthetic = build_graph(dwc_spec), build_graph(spec)
    structure = lambda graph: sorted((n.name, n.op, n.inputs, n.shape, sorted(n.attrs.items())) for n in graph.nodes)
    assert structure(real) == structure(synthetic)
    assert synthetic.num_parameters == real.num_parameters


def test_synthetic_base_uses_standard_convs():
    graph = build_graph(synthetic_layergraph("base"))
    assert graph.variant == "base" and all(n.attrs["group"] == 1 for n in graph.nodes if n.op == "conv")
    assert next(n for n in graph.nodes if n.name == "fire9-expand3x3").weights["W"].shape == (256, 64, 3, 3)


def test_layer_order_does_not_matter(spec):
    shuffled = copy.deepcopy(spec)
    np.random.default_rng(0).shuffle(shuffled.layers)
    a, b = build_graph(spec), build_graph(shuffled)
    assert a.output == b.output and sorted(n.name for n in a.nodes) == sorted(n.name for n in b.nodes)
    assert set(n.name for n in b.nodes[:3]) == {"conv1", "relu_conv1", "pool1"}


def _ops(model) -> list:
    return [n.op_type for n in model.graph.node]


def _groups(model) -> list:
    return sorted({a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"})


def _run(model, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": batch})[0]


def test_gather_rewrite_is_bit_exact(dwc_spec):
    graph = build_graph(dwc_spec)
    rewritten, plain = to_onnx(graph, rewrite="gather"), to_onnx(graph, depthwise_rewrite=False)
    assert _ops(rewritten).count("Gather") == 8 and "Gather" not in _ops(plain)
    assert _groups(plain) == [1, 16, 32, 48, 64] and _groups(rewritten) == [1, 64, 128, 192, 256]
    batch = np.random.default_rng(0).normal(0, 60, (3, 3, 113, 113)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, batch), _run(plain, batch))


def test_replicate_rewrite_folds_the_order_away(dwc_spec):
    """Concat([x]*4) + depthwise conv per fire; the channel order costs no extra op, and the
    weights of every consumer are a permutation of the original ones."""
    graph = build_graph(dwc_spec)
    rewritten, plain = to_onnx(graph), to_onnx(graph, depthwise_rewrite=False)
    assert "Gather" not in _ops(rewritten) and _ops(rewritten).count("Concat") == 16
    assert len(_ops(rewritten)) == len(_ops(plain)) + 8
    assert _groups(rewritten) == [1, 64, 128, 192, 256]
    weights = lambda model: {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    new, old = weights(rewritten), weights(plain)
    assert new.keys() == old.keys()
    for name in ("fire2-expand3x3-groupedconv/W", "fire3-squeeze1x1/W", "conv10/W"):
        changed = not np.array_equal(new[name], old[name])
        assert changed and np.array_equal(np.sort(new[name], axis=None), np.sort(old[name], axis=None)), name
    np.testing.assert_array_equal(new["fire2-expand1x1/W"], old["fire2-expand1x1/W"])  # input order untouched
    batch = np.random.default_rng(0).normal(0, 60, (3, 3, 113, 113)).astype(np.float32)
    out, ref = _run(rewritten, batch), _run(plain, batch)
    assert np.abs(out - ref).max() <= 1e-6 * np.abs(ref).max()   # summation order only


@pytest.mark.parametrize("rewrite", ["replicate", "gather"])
def test_rewrites_are_exact_on_integer_weights(spec, rewrite):
    """With small-integer weights and inputs every float sum is exact in any order, so any
    misplaced channel (in the depthwise weights, through relu / pool / concat, or in a folded
    consumer) shows up as a difference."""
    graph = build_graph(spec)
    rng = np.random.default_rng(5)
    for node in graph.nodes:
        if node.op == "conv":
            w = node.weights["W"]
            q = min(1.0, 3.0 / w[0].size)   # ~3 non-zero taps per output: values stay far below 2**24
            node.weights["W"] = rng.choice(np.array([-1, 0, 1], np.float32), w.shape, p=[q / 2, 1 - q, q / 2])
            node.weights["B"] = rng.integers(-1, 3, node.weights["B"].shape).astype(np.float32)
    batch = rng.integers(-3, 4, (2, 3, 113, 113)).astype(np.float32)
    out = _run(to_onnx(graph, rewrite=rewrite), batch)
    ref = _run(to_onnx(graph, depthwise_rewrite=False), batch)
    assert (ref > 0).mean() > 0.3                # a live network, not all zeros after the relus
    np.testing.assert_array_equal(out, ref)


def test_replicate_unfoldable_orders_are_restored():
    """Where no ordinary conv follows (a dense grouped conv, or the graph output), the exporter
    puts the channels back in order with a Gather, so the result stays exact."""
    rng = np.random.default_rng(6)

    def conv(name, src, c_in, c_out, group):
        w = rng.integers(-2, 3, (c_out, c_in // group, 3, 3)).astype(np.float32)
        return Node(name, "conv", [src], dict(kernel=(3, 3), pads=(1, 1, 1, 1), stride=(1, 1), dilation=(1, 1),
                                              group=group), dict(W=w, B=np.ones(c_out, np.float32)), (c_out, 5, 5))

    nodes = [conv("dw", "in", 3, 6, 3), Node("relu", "relu", ["dw"], shape=(6, 5, 5)),
             conv("dense_grouped", "relu", 6, 4, 2), Node("cat", "concat", ["relu", "dense_grouped"], shape=(10, 5, 5)),
             Node("gap", "avgpool", ["cat"], dict(kernel=(5, 5), stride=(1, 1), pads=(0, 0, 0, 0)), shape=(10, 1, 1))]
    graph = Graph("in", (3, 5, 5), nodes, "gap")
    model = to_onnx(graph)
    assert _ops(model).count("Gather") == 2     # before the dense grouped conv, before the output
    batch = rng.integers(-3, 4, (2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, batch), _run(to_onnx(graph, depthwise_rewrite=False), batch))


def test_replicated_order():
    """Concat([x]*M) channel j is input channel j % C with filter j // C of its group."""
    np.testing.assert_array_equal(replicated_order(None, 3, 2), [0, 2, 4, 1, 3, 5])
    np.testing.assert_array_equal(replicated_order(np.array([2, 0, 1]), 3, 2), [4, 0, 2, 5, 1, 3])


def test_unknown_rewrite(dwc_spec):
    with pytest.raises(ValueError, match="rewrite must be one of"):
        to_onnx(build_graph(dwc_spec), rewrite="shuffle")


def test_onnx_interface(model_dir):
    model = onnx.load(str(model_dir / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= OPSET >= 17
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, dims(inp), inp.type.tensor_type.elem_type) == ("input", ["N", 3, 113, 113], onnx.TensorProto.FLOAT)
    assert (out.name, dims(out)) == ("descriptor", ["N", 1000])
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 4):
        assert session.run(None, {"input": np.zeros((n, 3, 113, 113), np.float32)})[0].shape == (n, 1000)


# ---------------------------------------------------------------- bad models: clear errors naming the layer


def _layer(spec, name):
    return next(l for l in spec.layers if l.props["Name"] == name)


def _layer_after_softmax(spec):
    spec.layers.remove(_layer(spec, "classoutput"))
    _drop_connection(spec, "prob", "classoutput")
    spec.layers.append(LayerSpec("ReLULayer", {"Name": "after_prob"}))
    spec.connections.append(("prob", "after_prob"))


def _drop_connection(spec, src, dst):
    spec.connections.remove((src, dst))


@pytest.mark.parametrize("breakage, message", [
    (lambda s: setattr(_layer(s, "relu_conv1"), "class_name", "TanhLayer"),
     "layer 'relu_conv1': unsupported layer class TanhLayer"),
    (lambda s: _drop_connection(s, "fire2-relu_expand3x3", "fire2-concat/in2"),
     "layer 'fire2-concat': missing input in2"),
    (lambda s: s.connections.append(("ghost", "conv10")), "unknown source layer 'ghost'"),
    (lambda s: s.connections.append(("pool1", "nowhere")), "unknown destination layer 'nowhere'"),
    (lambda s: s.connections.append(("fire3-concat", "fire2-concat/in3")), "layer 'fire2-concat': unexpected input in3"),
    (lambda s: s.connections.append(("relu_conv1", "conv1/in2")), "layer 'conv1': unexpected input in2"),
    (lambda s: (_drop_connection(s, "pool1", "fire2-squeeze1x1"), s.connections.append(("fire3-concat", "fire2-squeeze1x1"))),
     "connections form a cycle"),
    (lambda s: _layer(s, "fire4-expand1x1").props.update(Weights={"Value": np.zeros((1, 1, 31, 128), np.float32)}),
     "layer 'fire4-expand1x1': weights (1, 1, 31, 128) do not fit"),
    (lambda s: _layer(s, "conv10").props["Bias"]["Value"].__setitem__((0, 0, 7), np.nan),
     "layer 'conv10': Bias contains NaN or Inf"),
    (lambda s: _layer(s, "conv1").props.update(PaddingMode="causal"), "layer 'conv1': unsupported PaddingMode"),
    (lambda s: _layer(s, "avgpool2d").props.update(PoolSize=np.array([[12.0, 12.0]])),
     "layer 'avgpool2d': descriptor must be 1x1"),
    (lambda s: _layer(s, "imageinput").props.update(Normalization="zerocenter"),
     "layer 'imageinput': built-in input normalization"),
    (lambda s: _layer(s, "drop9").props.update(Name="fire9-concat"), "layer 'fire9-concat': duplicate layer name"),
    (_layer_after_softmax, "layer 'prob': softmax/classification may only follow the descriptor layer"),
])
def test_broken_graph_is_a_clear_error(spec, breakage, message):
    breakage(spec)
    with pytest.raises(ModelError) as err:
        build_graph(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- bad files


def test_not_a_mat_file(tmp_path):
    path = tmp_path / "model.mat"
    path.write_text("this is not a MATLAB file, just text\n" * 10)
    with pytest.raises(ModelError, match=r"model.mat: not a MATLAB MAT file \(no v5/v7.3 header\)"):
        read_mat(path)


@pytest.mark.parametrize("keep", [0, 200, 0.5])
def test_truncated_mat_file(tmp_path, dwc_mat, keep):
    data = dwc_mat.read_bytes()
    path = tmp_path / "cut.mat"
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(ModelError, match="cut.mat: not a (readable )?MATLAB MAT file"):
        read_mat(path)


def test_mat_without_layergraph(tmp_path):
    path = tmp_path / "plain.mat"
    scipy.io.savemat(path, {"weights": np.ones((3, 3)), "name": "conv1"})
    with pytest.raises(ModelError, match=r"plain.mat: expected one nnet.cnn.LayerGraph variable, found name, weights"):
        read_mat(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        read_mat(tmp_path / "absent.mat")
