"""The TFLite files and the litert backend: parity with ONNX Runtime, fp16, batches, threads, bad files."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="the litert extra (ai-edge-litert) is not installed")

from sfpn_edge import models
from sfpn_edge.backends import open_model, registry
from sfpn_edge.converters import tflite_export, tflite_format
from sfpn_edge.converters.layergraph import build_graph
from sfpn_edge.converters.synthetic import synthetic_layergraph
from sfpn_edge.embed import FaceEmbedder
from sfpn_edge.errors import ModelError, SfpnError

MEAN_RGB = np.array([131.0912, 103.8827, 91.4953], np.float32)


def crop(path) -> np.ndarray:
    """An example crop as the runtime feeds it: RGB 113x113 minus the mean, [3, 113, 113]."""
    bgr = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (113, 113), interpolation=cv2.INTER_AREA)
    return (cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) - MEAN_RGB).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def faces(example_crops) -> np.ndarray:
    """The authors' three example crops and three random pixel-range inputs."""
    rng = np.random.default_rng(7)
    noise = (rng.uniform(0, 255, (3, 3, 113, 113)) - MEAN_RGB[:, None, None]).astype(np.float32)
    return np.concatenate([np.stack([crop(p) for p in example_crops]), noise])


@pytest.fixture(scope="module")
def reference(model_dir, faces) -> np.ndarray:
    return FaceEmbedder(model_dir, "onnxruntime", "fp32", threads=1).embed(faces)


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_manifest_lists_the_tflite_files(model_dir):
    files = models.load_manifest(model_dir)["files"]["litert"]
    assert files == {"fp32": "model.tflite", "fp16": "model_fp16.tflite"}
    for name in files.values():
        assert (model_dir / name).read_bytes()[4:8] == b"TFL3"
    assert (model_dir / "model_fp16.tflite").stat().st_size < 0.55 * (model_dir / "model.tflite").stat().st_size


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin-kernels"])
def test_fp32_matches_onnxruntime(model_dir, faces, reference, xnnpack):
    net = open_model(model_dir / "model.tflite", "litert", threads=1, xnnpack=xnnpack)
    (out,) = net.run(faces)
    for i in range(len(faces)):          # per face: each crop's own max, so no face hides behind another
        assert rel_err(out[i], reference[i]) <= 1e-4, i
    assert net.describe()["xnnpack"] == ("on (1 delegated partition)" if xnnpack else "off (builtin kernels)")


def test_fp16_cosine(model_dir, faces, reference):
    out = FaceEmbedder(model_dir, "litert", "fp16", threads=1).embed(faces)
    assert cosine(out, reference).min() >= 0.9999
    assert rel_err(out, reference) > 1e-6     # the fp16 file really has rounded weights


def test_batches_match_single_faces(model_dir, faces):
    net = open_model(model_dir / "model.tflite", "litert", threads=1)
    single = np.concatenate([net.run(faces[i:i + 1])[0] for i in range(len(faces))])
    for size in (2, 4, len(faces)):
        batched = np.concatenate([net.run(faces[i:i + size])[0] for i in range(0, len(faces), size)])
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6 * np.abs(single).max())
    assert net.inputs[0].shape == (None, 3, 113, 113)


def test_threads_share_one_embedder(model_dir, faces):
    embedder = FaceEmbedder(model_dir, "litert", "fp32", threads=1, batch_size=2)
    want = [embedder.embed(faces[: 1 + i % len(faces)]) for i in range(16)]
    got: dict = {}

    def work(k: int) -> None:
        got[k] = [embedder.embed(faces[: 1 + i % len(faces)]) for i in range(k, 16, 8)]

    workers = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for k in range(8):
        for j, i in enumerate(range(k, 16, 8)):
            assert np.array_equal(got[k][j], want[i]), (k, i)


def test_fp32_file_reads_back_to_the_same_layers(model_dir):
    lowered = tflite_export.read_layers(model_dir / "model.tflite")
    again = tflite_export.to_tflite(lowered, "fp32", tflite_format.decode((model_dir / "model.tflite").read_bytes())
                                    .description)
    assert again == (model_dir / "model.tflite").read_bytes()
    kinds = [layer.kind for layer in lowered.layers]
    assert kinds.count("dwconv") == 8 and kinds.count("maxpool") == 3 and kinds[-1] == "mean"
    assert all(layer.attrs["multiplier"] == 1 for layer in lowered.layers if layer.kind == "dwconv")
    replicas = [layer for layer in lowered.layers if layer.kind == "concat" and len(set(layer.inputs)) == 1]
    assert len(replicas) == 8 and all(len(layer.inputs) == 4 for layer in replicas)   # [x] * 4 before each
    assert all(layer.attrs["relu"] == 1 for layer in lowered.layers if layer.weight is not None)


@pytest.mark.parametrize("damage", ["truncated", "text", "identifier", "empty"])
def test_damaged_files_are_one_line_errors(model_dir, tmp_path, damage):
    data = (model_dir / "model.tflite").read_bytes()
    bad = {"truncated": data[: len(data) // 3], "text": b"not a model\n", "empty": b"",
           "identifier": data[:4] + b"XXXX" + data[8:]}[damage]
    path = tmp_path / "model.tflite"
    path.write_bytes(bad)
    with pytest.raises(ModelError, match="litert cannot load model.tflite") as err:
        open_model(path, "litert")
    assert "\n" not in str(err.value)


def test_flipped_bytes_never_crash(model_dir, tmp_path):
    """Random byte flips in the tables (the first 4 KB): an error or a model, never a crash (subprocess)."""
    data = bytearray((model_dir / "model.tflite").read_bytes())
    rng = np.random.default_rng(3)
    for i in range(12):
        copy = bytearray(data)
        for pos in rng.integers(8, 4096, 4):
            copy[pos] ^= int(rng.integers(1, 256))
        (tmp_path / f"f{i}.tflite").write_bytes(bytes(copy))
    script = (
        "import sys, numpy as np\n"
        "from sfpn_edge.backends import open_model\n"
        "from sfpn_edge.errors import SfpnError\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        net = open_model(path, 'litert')\n"
        "        net.run(np.zeros((1, 3, 113, 113), np.float32))\n"
        "    except (SfpnError, ValueError):\n"
        "        pass\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", script, *sorted(map(str, tmp_path.glob("f*.tflite")))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_wrong_input_shape_is_refused(model_dir, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(model_dir, out)
    small = tflite_export.lower(build_graph(synthetic_layergraph("dwc", input_size=97)))
    (out / "model.tflite").write_bytes(tflite_export.to_tflite(small))
    models.write_manifest(out, models.load_manifest(out))  # the file is the manifest's, the shape is not
    with pytest.raises(ModelError, match=r"model.tflite: input input is float32 \[\?, 3, 97, 97\], but the manifest"):
        FaceEmbedder(out, "litert", "fp32")


def test_wrong_crops_shape_is_a_value_error(model_dir):
    net = open_model(model_dir / "model.tflite", "litert")
    with pytest.raises(ValueError, match=r"expected shape \[\?, 3, 113, 113\]"):
        net.run(np.zeros((1, 113, 113, 3), np.float32))


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)          # import fails as if not installed
    monkeypatch.delitem(sys.modules, "sfpn_edge.backends.litert_backend", raising=False)
    reason = registry.get("litert").missing()
    assert reason == "litert is not installed (ai_edge_litert); install it with pip install 'sfpn-edge[litert]'"
    with pytest.raises(SfpnError, match=r"sfpn-edge\[litert\]"):
        open_model("model.tflite", "litert")


def test_other_backends_never_import_litert(model_dir):
    script = ("import sys, numpy as np\n"
              "from sfpn_edge.embed import FaceEmbedder\n"
              "from sfpn_edge.runtime import Runtime\n"
              f"FaceEmbedder({str(model_dir)!r}, 'onnxruntime', 'fp32').embed(np.zeros((1, 3, 113, 113), np.float32))\n"
              "Runtime.resolve('auto')\n"
              "print(json.dumps(sorted(m for m in sys.modules if 'litert' in m)))\n")
    proc = subprocess.run([sys.executable, "-c", "import json\n" + script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == []


def test_unsupported_graphs_are_refused():
    spec = synthetic_layergraph("dwc")
    conv1 = next(layer for layer in spec.layers if layer.name == "conv1")
    conv1.props.update(PaddingMode="manual", PaddingSize=np.array([2.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ModelError, match="layer 'conv1': padding .* neither TFLite SAME nor VALID"):
        tflite_export.lower(build_graph(spec))
