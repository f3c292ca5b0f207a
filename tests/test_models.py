"""Manifest schema, model file lookup and the default location (sfpn_edge.models)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from sfpn_edge import models
from sfpn_edge.errors import ModelError


@pytest.fixture()
def copy_dir(model_dir, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(model_dir, out)
    return out


def test_manifest_contents(model_dir):
    manifest = models.load_manifest(model_dir)
    assert manifest["format_version"] == models.FORMAT_VERSION == 1
    assert manifest["variant"] == "dwc" and manifest["input_size"] == [113, 113]
    assert manifest["mean"] == [131.0912, 103.8827, 91.4953] and manifest["colour_order"] == "RGB"
    assert manifest["descriptor_dim"] == 1000 and manifest["source_sha256"] == models.WEIGHTS_SHA256
    assert manifest["files"] == {"onnxruntime": {"fp32": "model.onnx"},
                                 "openvino": {"fp32": "model.xml", "fp16": "model_fp16.xml"},
                                 "openvino_static": {"fp32": "model_static.xml"},
                                 "litert": {"fp32": "model.tflite", "fp16": "model_fp16.tflite"}}
    assert manifest["source_file"].endswith(".mat") and manifest["created"].endswith("+00:00")


def test_model_file(model_dir):
    assert models.model_file(model_dir, "openvino", "fp16") == model_dir / "model_fp16.xml"
    with pytest.raises(ModelError, match="no model for backend 'tflite' \\(has: litert, onnxruntime, openvino"):
        models.model_file(model_dir, "tflite")
    with pytest.raises(ModelError, match="no int8 model for onnxruntime \\(has: fp32\\)"):
        models.model_file(model_dir, "onnxruntime", "int8")


def _edit(model_dir, **changes):
    path = model_dir / models.MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 2}, "format_version 2 is newer than this sfpn-edge understands"),
    ({"descriptor_dim": "1000"}, "'descriptor_dim' must be a positive integer"),
    ({"input_size": [113]}, "'input_size' must be [h, w]"),
    ({"colour_order": "YUV"}, "'colour_order' must be"),
    ({"files": {"onnxruntime": {"fp32": "../../etc/passwd"}}}, "must be a plain file name"),
    ({"files": {"onnxruntime": {"fp32": "gone.onnx"}}}, "manifest lists 'gone.onnx'"),
])
def test_bad_manifest(copy_dir, changes, message):
    _edit(copy_dir, **changes)
    with pytest.raises(ModelError) as err:
        models.model_file(copy_dir, "onnxruntime")
    assert message in str(err.value)


def test_missing_key_and_bad_json(copy_dir):
    manifest = json.loads((copy_dir / models.MANIFEST).read_text())
    del manifest["mean"]
    (copy_dir / models.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="missing key 'mean'"):
        models.load_manifest(copy_dir)
    (copy_dir / models.MANIFEST).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        models.load_manifest(copy_dir)
    with pytest.raises(ModelError, match="not a model directory"):
        models.load_manifest(copy_dir / "nowhere")


def test_write_manifest_validates(tmp_path, model_dir):
    manifest = models.load_manifest(model_dir)
    models.write_manifest(tmp_path, manifest)
    assert models.load_manifest(tmp_path) == manifest
    with pytest.raises(ModelError, match="missing key 'files'"):
        models.write_manifest(tmp_path, {k: v for k, v in manifest.items() if k != "files"})


def test_default_model_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SFPN_EDGE_HOME", str(tmp_path))
    assert models.default_model_dir() == tmp_path / "models" / "squeezefaceposenet-dwc"


def test_runtime_import_stays_light():
    code = ("import sys, sfpn_edge.models, sfpn_edge.cli; "
            "bad = [m for m in ('onnx', 'matio', 'scipy', 'pandas') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "[]"
