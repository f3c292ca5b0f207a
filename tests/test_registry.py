"""The backend and detector registries: a backend added from outside shows up everywhere.

The toy backend (tests/toy_numpy_backend.py) is registered without any change to sfpn-edge: in
this process by importing it, in fresh processes through ``$SFPN_EDGE_PLUGINS``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sfpn_edge.backends import registry
from sfpn_edge.detect import registry as detectors
from sfpn_edge.errors import SfpnError
from sfpn_edge.runtime import Runtime

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def toy():
    import importlib

    import toy_numpy_backend

    importlib.reload(toy_numpy_backend)  # its import registers it (again, after an earlier test's unregister)
    yield registry.get("numpy")
    registry.unregister("numpy")


def plugin_env(home: Path) -> dict:
    env = dict(os.environ, SFPN_EDGE_PLUGINS="toy_numpy_backend", SFPN_EDGE_HOME=str(home))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


def run(args, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_builtin_backends_and_their_file_rules(model_dir):
    from sfpn_edge.model_dir import ModelDir

    assert registry.names()[:3] == ("onnxruntime", "openvino", "native")
    model = ModelDir(model_dir)
    assert model.file("onnxruntime").name == "model.onnx"
    assert model.file("openvino", "bf16").name == "model.xml"          # bf16: a hint on the fp32 IR
    assert model.file("openvino", "fp32", "NPU").name == model.manifest["files"]["openvino_static"]["fp32"]
    assert model.file("openvino", "fp16").name == model.manifest["files"]["openvino"]["fp16"]
    with pytest.raises(SfpnError, match="no int8 model for onnxruntime"):
        model.file("onnxruntime", "int8")
    with pytest.raises(SfpnError, match="unknown backend 'nope'"):
        model.file("nope")


def test_registered_backend_runs_the_model_and_is_offered(toy, model_dir, example_crops):
    from sfpn_edge.align import CropSpec
    from sfpn_edge.cli import build_parser
    from sfpn_edge.embed import FaceEmbedder
    from sfpn_edge.io import read_image

    images = [read_image(p) for p in example_crops]
    crops = CropSpec().crop(images, [np.array([[1.0, 0, 0], [0, 1.0, 0]])] * len(images))
    ours = FaceEmbedder(model_dir, "numpy", threads=1).embed(crops, normalize=True)
    ort = FaceEmbedder(model_dir, "onnxruntime", threads=1).embed(crops, normalize=True)
    assert np.min(np.sum(ours * ort, axis=1)) > 0.99999
    args = build_parser().parse_args(["verify", "a.jpg", "b.jpg", "--backend", "numpy"])
    assert Runtime.resolve(args.backend).backend == "numpy"
    with pytest.raises(SfpnError, match="runs fp32 models, not 'int8'"):
        Runtime.resolve("numpy", precision="int8")


def test_plugin_backend_in_info_cli_choices_and_bench(model_dir, tmp_path):
    env = plugin_env(tmp_path / "home")
    info = run(["-m", "sfpn_edge", "info", "--json"], env)
    assert info.returncode == 0, info.stderr
    toy = json.loads(info.stdout)["backends"]["numpy"]
    assert toy["available"] and toy["precisions"] == ["fp32"] and toy["devices"] == ["CPU"]
    help_text = run(["-m", "sfpn_edge", "verify", "--help"], env).stdout
    assert "numpy" in help_text.split("--backend", 1)[1].split("\n")[0]
    out = tmp_path / "bench.json"
    bench = run(["-m", "sfpn_edge.bench", "--quick", "--weights", str(model_dir), "--backends", "numpy",
                 "--precisions", "fp32", "--threads", "1", "--stages", "none", "--no-baseline",
                 "--no-progress", "--json", str(out)], env)
    assert bench.returncode == 0, bench.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["backend"], r["precision"], r["status"]) for r in rows] == [("numpy", "fp32", "ok")]
    assert rows[0]["p50_ms"] > 0
    # Without the plugin the same name is a usage error naming the real choices.
    plain = dict(env, SFPN_EDGE_PLUGINS="")
    proc = run(["-m", "sfpn_edge.bench", "--quick", "--backends", "numpy"], plain)
    assert proc.returncode == 2 and "unknown backend numpy" in proc.stderr


def test_broken_plugin_is_reported_not_fatal(tmp_path):
    env = dict(plugin_env(tmp_path), SFPN_EDGE_PLUGINS="no_such_plugin_module")
    proc = run(["-m", "sfpn_edge", "info", "--json"], env)
    assert proc.returncode == 0
    assert "no_such_plugin_module" in proc.stderr and "onnxruntime" in json.loads(proc.stdout)["backends"]


def test_registry_refuses_bad_specs():
    with pytest.raises(SfpnError):
        registry.register(registry.BackendSpec("auto", "x:y", ("fp32",)))
    with pytest.raises(SfpnError):
        registry.register(registry.BackendSpec("x", "x:y", ("fp8",)))
    missing = registry.BackendSpec("ghost", "no_such_module_anywhere:Ghost", ("fp32",), extra="ghost")
    assert "pip install 'sfpn-edge[ghost]'" in missing.missing() and missing.devices() == []


def test_runtime_resolution_and_the_one_thread_rule():
    from sfpn_edge import threads as runtime

    rt = Runtime.resolve()
    assert (rt.backend, rt.device, rt.precision) == ("onnxruntime", "CPU", "fp32")
    assert rt.threads == runtime.default_threads() == min(runtime.MAX_DEFAULT_THREADS, runtime.usable_cpus())
    auto = Runtime.resolve("auto", precision="int8")
    assert auto.target == "auto" and auto.reason and auto.backend in registry.names()
    native = Runtime.resolve("native", precision="int8", threads=1)
    graphs = native.for_graphs()
    assert (graphs.backend, graphs.precision, graphs.threads) == ("onnxruntime", "fp32", 1)
    assert Runtime.resolve("openvino", precision="bf16").for_graphs().precision == "fp32"
    for bad in (0, -1, True, 2.5, "2", 4 * runtime.usable_cpus() + 1):
        with pytest.raises(ValueError):
            runtime.check_threads(bad)
    with pytest.raises(SfpnError, match="not both"):
        Runtime.resolve("onnxruntime", target="cpu")
    with pytest.raises(SfpnError, match="unknown target"):
        Runtime.resolve(target="gpu-please")


def test_detector_registry_builds_every_caller_the_same_detector(mtcnn_dir):
    from sfpn_edge.detect.mtcnn import MTCNN

    assert {"mtcnn", "yunet"} <= set(detectors.names())
    rt = Runtime.resolve("native", precision="int8", threads=1)
    det = detectors.make_detector("mtcnn", mtcnn_dir, rt)
    assert isinstance(det, MTCNN) and det.name == "mtcnn"
    assert det.runtime == rt.for_graphs() and det.pnet.name == "onnxruntime"
    with pytest.raises(SfpnError, match="unknown detector"):
        detectors.make_detector("haar", None, rt)
    with pytest.raises(SfpnError, match="YuNet needs"):
        detectors.make_detector("yunet", None, rt)


def test_cli_threads_bound_is_a_usage_error(tmp_path):
    from sfpn_edge.threads import MAX_THREADS_PER_CPU, usable_cpus

    too_many = str(MAX_THREADS_PER_CPU * usable_cpus() + 1)
    proc = run(["-m", "sfpn_edge", "embed", "x.jpg", "--out", str(tmp_path / "e.npy"), "--threads", too_many,
                "--model", str(tmp_path)], dict(os.environ, SFPN_EDGE_HOME=str(tmp_path)))
    assert proc.returncode == 2 and "per usable CPU" in proc.stderr and "Traceback" not in proc.stderr
