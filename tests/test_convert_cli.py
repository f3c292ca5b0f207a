"""``sfpn-edge convert``: success output, and every bad input -> exit 2, one line, nothing left behind."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import scipy.io

from sfpn_edge import models
from sfpn_edge.cli import main
from sfpn_edge.converters import convert as convert_module
from sfpn_edge.converters.synthetic import synthetic_layergraph


def run_cli(capsys, *argv):
    code = main(["convert", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(code, out, err, out_dir, message):
    assert code == 2
    assert err.startswith("sfpn-edge convert: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert not out_dir.exists()
    assert not [p for p in out_dir.parent.glob(f".{out_dir.name}.*")], "temporary directory left behind"


def test_convert_json_without_rewrite(capsys, tmp_path, dwc_mat, model_dir):
    out_dir = tmp_path / "plain"
    code, out, err = run_cli(capsys, dwc_mat, "--out", out_dir, "--no-rewrite", "--json")
    assert code == 0 and "Traceback" not in err  # stderr: NNCF's progress
    result = json.loads(out)
    assert result["depthwise_rewrite"] is False and result["variant"] == "dwc" and result["seconds"] > 0
    assert set(result["sizes"]) == {"model.onnx", "model.xml", "model_fp16.xml", "model_static.xml", "model.tflite",
                                    "model_fp16.tflite", "model_int8.onnx", "model_int8.xml", "model_native_int8.npz",
                                    "model_int8.tflite"}
    # int8 without a dataset: the authors' example crops beside SRC.mat, augmented
    assert result["int8"]["calibration"]["scheme"] == "example-augmented" == result["calibration"]["scheme"]
    assert 2.5e6 < result["sizes"]["model.onnx"] < 3.2e6 and result["sizes"]["model_fp16.xml"] < 1.8e6
    manifest = models.load_manifest(out_dir)
    assert manifest["source_sha256"] == models.WEIGHTS_SHA256 and manifest["source_file"] == dwc_mat.name
    batch = np.random.default_rng(0).normal(0, 50, (2, 3, 113, 113)).astype(np.float32)
    plain, rewritten = (ort.InferenceSession(str(models.model_file(d, "onnxruntime")), providers=["CPUExecutionProvider"])
                        .run(None, {"input": batch})[0] for d in (out_dir, model_dir))
    # the default depthwise rewrite folds a channel order into the next convs: summation order only
    np.testing.assert_allclose(rewritten, plain, rtol=0, atol=1e-6 * np.abs(plain).max())


def test_convert_human_output_and_replaces_model_dir(capsys, tmp_path, dwc_mat, model_dir, monkeypatch):
    out_dir = tmp_path / "m"
    shutil.copytree(model_dir, out_dir)
    monkeypatch.setattr(convert_module, "read_mat", lambda path: synthetic_layergraph("base", seed=1))
    code, out, err = run_cli(capsys, dwc_mat, "--out", out_dir, "--no-int8")  # an existing model dir is replaced
    assert code == 0 and err == ""
    assert out.startswith(f"converted {dwc_mat.name} (base, ") and "model.onnx" in out
    assert models.load_manifest(out_dir)["variant"] == "base"


def _not_mat(tmp_path, dwc_mat):
    path = tmp_path / "notes.mat"
    path.write_text("definitely not a MAT file\n")
    return path


def _truncated(tmp_path, dwc_mat):
    path = tmp_path / "cut.mat"
    path.write_bytes(dwc_mat.read_bytes()[:1_000_000])
    return path


def _no_layergraph(tmp_path, dwc_mat):
    path = tmp_path / "plain.mat"
    scipy.io.savemat(path, {"weights": np.ones((2, 2))})
    return path


@pytest.mark.parametrize("make_src, message", [
    (_not_mat, "notes.mat: not a MATLAB MAT file"),
    (_truncated, "cut.mat: not a readable MATLAB MAT file"),
    (_no_layergraph, "plain.mat: expected one nnet.cnn.LayerGraph variable, found weights"),
    (lambda tmp_path, dwc_mat: tmp_path / "absent.mat", "absent.mat: no such file"),
])
def test_bad_source_file(capsys, tmp_path, dwc_mat, make_src, message):
    out_dir = tmp_path / "out"
    assert_clean_failure(*run_cli(capsys, make_src(tmp_path, dwc_mat), "--out", out_dir), out_dir, message)


def _unsupported(spec):
    next(l for l in spec.layers if l.props["Name"] == "fire5-relu_expand1x1").class_name = "LeakyReLULayer"


def _dangling(spec):
    spec.connections.remove(("fire6-relu_expand1x1", "fire6-concat/in1"))


@pytest.mark.parametrize("breakage, message", [
    (_unsupported, "layer 'fire5-relu_expand1x1': unsupported layer class LeakyReLULayer"),
    (_dangling, "layer 'fire6-concat': missing input in1"),
])
def test_bad_layergraph(capsys, tmp_path, dwc_mat, monkeypatch, breakage, message):
    spec = synthetic_layergraph("dwc")
    breakage(spec)
    monkeypatch.setattr(convert_module, "read_mat", lambda path: spec)
    out_dir = tmp_path / "out"
    assert_clean_failure(*run_cli(capsys, dwc_mat, "--out", out_dir), out_dir, message)


def test_export_failure_leaves_no_model_dir(capsys, tmp_path, dwc_mat, monkeypatch):
    """A failure after some files were written (here: the OpenVINO step) removes the partial directory."""
    def fail(onnx_path, out_dir):
        (out_dir / "model.xml").write_text("partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(convert_module, "export_openvino", fail)
    out_dir = tmp_path / "out"
    assert_clean_failure(*run_cli(capsys, dwc_mat, "--out", out_dir), out_dir, "No space left on device")


def test_unwritable_out_dir(capsys, tmp_path, dwc_mat):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, so nothing can be created below it (works as root too)")
    out_dir = blocker / "model"
    code, out, err = run_cli(capsys, dwc_mat, "--out", out_dir)
    assert code == 2 and err.count("\n") == 1 and "cannot write" in err and "Traceback" not in err
    assert blocker.read_text().startswith("a regular file")


def test_refuses_to_replace_foreign_directory(capsys, tmp_path, dwc_mat):
    out_dir = tmp_path / "documents"
    out_dir.mkdir()
    (out_dir / "thesis.txt").write_text("precious")
    code, out, err = run_cli(capsys, dwc_mat, "--out", out_dir)
    assert code == 2 and "refusing to replace" in err and err.count("\n") == 1
    assert (out_dir / "thesis.txt").read_text() == "precious"


def test_real_process_prints_one_line(tmp_path):
    src = tmp_path / "bad.mat"
    src.write_bytes(b"\x00" * 300)
    proc = subprocess.run([sys.executable, "-m", "sfpn_edge", "convert", str(src), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "bad.mat: not a MATLAB MAT file" in proc.stderr


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["convert", "--help"])
    assert exc.value.code == 0 and "--no-rewrite" in capsys.readouterr().out
