"""sfpn-edge: pose-robust face verification at the edge with SqueezeFacePoseNet.

    from sfpn_edge import FaceVerifier, FaceEmbedder, FaceGallery

The three are imported on first use, so ``import sfpn_edge`` (the CLI's ``--help``) stays light.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["FaceEmbedder", "FaceGallery", "FaceVerifier", "__version__"]
_LAZY = {"FaceVerifier": "sfpn_edge.pipeline", "FaceEmbedder": "sfpn_edge.embed", "FaceGallery": "sfpn_edge.gallery"}

if TYPE_CHECKING:
    from sfpn_edge.embed import FaceEmbedder
    from sfpn_edge.gallery import FaceGallery
    from sfpn_edge.pipeline import FaceVerifier


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sfpn_edge' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
