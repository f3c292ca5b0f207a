"""A base install (no OpenVINO): verify, info and target selection run on ONNX Runtime, and asking
for OpenVINO is one clear error naming the extra that installs it."""
from __future__ import annotations

import json

import pytest

from hidden_modules import hiding_env, run_cli, run_python

HINT = "pip install 'sfpn-edge[openvino]'"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return hiding_env(tmp_path_factory.mktemp("no-openvino"), ["openvino"])


def photos(cfp_root):
    return [cfp_root / "Data" / "Images" / "001" / "frontal" / f"{n:02d}.jpg" for n in (1, 3)]


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_the_shim_hides_openvino(env):
    proc = run_python(env, "-c", "import openvino")
    assert proc.returncode == 1 and "import of openvino halted" in proc.stderr
    assert run_python(env, "-c", "import onnxruntime, cv2, numpy").returncode == 0


def test_info_reports_openvino_missing_and_picks_onnxruntime(env):
    proc = run_cli(env, "info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["openvino_devices"] is None and "openvino" not in info["versions"]
    assert info["backends"]["openvino"]["available"] is False
    assert HINT in info["backends"]["openvino"]["missing"]
    assert (info["choice"]["backend"], info["choice"]["device"]) == ("onnxruntime", "CPU")
    assert HINT in info["choice"]["reason"]
    assert "vpu" not in info["available_targets"] and "cpu" in info["available_targets"]


def test_vpu_target_names_the_extra(env):
    assert_one_line_error(run_cli(env, "info", "--target", "vpu"), "needs OpenVINO", HINT)


@pytest.mark.parametrize("how", [[], ["--backend", "auto"], ["--target", "cpu"], ["--backend", "onnxruntime"]])
def test_verify_runs_on_onnxruntime(env, how, model_dir, mtcnn_dir, cfp_root):
    proc = run_cli(env, "verify", *photos(cfp_root), "--model", model_dir, "--detector", "mtcnn", "--detector-weights", mtcnn_dir,
                   "--threads", "1", "--json", *how)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["same"] is True


def test_backend_openvino_is_one_clear_error(env, model_dir, mtcnn_dir, cfp_root):
    proc = run_cli(env, "verify", *photos(cfp_root), "--model", model_dir, "--detector", "mtcnn", "--detector-weights", mtcnn_dir,
                   "--backend", "openvino")
    assert_one_line_error(proc, "openvino is not installed", HINT)
