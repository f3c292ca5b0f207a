"""The detector registry: every face detector declared once, built by one factory.

    detector = make_detector("mtcnn", weights=None, runtime=rt)   # weights None: the cache

A detector is one module with a class taking ``(weights, runtime, **options)`` and implementing
the ``Detector`` protocol, plus one :func:`register` call. ``margin`` is the crop margin its boxes
want when a model directory has none measured for it (``ModelDir.margin``); thresholds are looked
up under the detector's name, so a new detector never inherits another's operating points.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from sfpn_edge import plugins
from sfpn_edge.registry import Registry, import_impl


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    impl: str  # "module:Class"
    margin: Optional[float] = None
    summary: str = ""

    def load(self) -> type:
        return import_impl(self.impl)


_REGISTRY: Registry[DetectorSpec] = Registry("detector")
names, specs, get, unregister = _REGISTRY.names, _REGISTRY.specs, _REGISTRY.get, _REGISTRY.remove


def register(spec: DetectorSpec) -> DetectorSpec:
    """Add (or replace) a detector; returns ``spec``."""
    return _REGISTRY.add(spec.name, spec)


def make_detector(name: str = "mtcnn", weights: Optional[Union[str, Path]] = None, runtime=None, **options):
    """The detector ``name`` with ``weights`` (None: its cached default) on ``runtime``
    (None: ``Runtime.resolve()``); ``options`` go to the detector's constructor."""
    from sfpn_edge.runtime import Runtime

    runtime = runtime if runtime is not None else Runtime.resolve()
    return get(name).load()(weights, runtime, **options)


register(DetectorSpec("mtcnn", "sfpn_edge.detect.mtcnn:MTCNN", margin=0.10,
                      summary="MTCNN (P/R/O-Net on our backends, 5 landmarks)"))
register(DetectorSpec("yunet", "sfpn_edge.detect.yunet:YuNet",
                      summary="OpenCV's YuNet (cv2.FaceDetectorYN); bring the .onnx file"))
plugins.load()
