"""The runtime path imports only numpy, OpenCV, ONNX Runtime / OpenVINO, the kernels and stdlib."""
import json
import subprocess
import sys

RUNTIME_MODULES = [
    "sfpn_edge.io",
    "sfpn_edge.detect.mtcnn",
    "sfpn_edge.align",
    "sfpn_edge.embed",
    "sfpn_edge.score",
    "sfpn_edge.pipeline",
    "sfpn_edge.gallery",
    "sfpn_edge.stream",
    "sfpn_edge.calibration",
    "sfpn_edge.models",
    "sfpn_edge.samples",
    "sfpn_edge.backends.select",
    "sfpn_edge.bundle_install",
    "sfpn_edge.cli",
]
OPTIONAL = ["onnx", "matio", "matplotlib", "rich", "scipy", "nncf", "pandas", "pytest", "psycopg", "pgserver"]


def test_runtime_path_does_not_import_optional_dependencies():
    code = (
        "import importlib, json, sys\n"
        f"for name in {RUNTIME_MODULES!r}: importlib.import_module(name)\n"
        f"print(json.dumps([m for m in {OPTIONAL!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_cli_help_is_fast_and_imports_no_backend():
    code = (
        "import json, sys\n"
        "from sfpn_edge.cli import build_parser\n"
        "build_parser()\n"
        "print(json.dumps([m for m in ('onnxruntime', 'openvino', 'onnx') if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_closed_stdout_is_not_a_traceback():
    code = "from sfpn_edge.cli import main; raise SystemExit(main(['info']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `sfpn-edge info | head -0`
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err
    assert proc.returncode == 1
