"""Machine facts printed at the top of every bench report."""
from __future__ import annotations

import importlib
import platform

from sfpn_edge import __version__, platform_info

LIBRARIES = {"numpy": "numpy", "onnxruntime": "onnxruntime", "openvino": "openvino", "opencv": "cv2"}


def library_versions() -> dict:
    versions = {"sfpn-edge": __version__}
    for name, module in LIBRARIES.items():
        try:
            versions[name] = importlib.import_module(module).__version__
        except ImportError:
            versions[name] = "not installed"
    return versions


def facts() -> dict:
    """CPU, cores, instruction-set features, Python and library versions."""
    return {**platform_info.detect().as_dict(), "python": platform.python_version(),
            "libraries": library_versions()}
