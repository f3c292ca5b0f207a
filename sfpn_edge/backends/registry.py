"""The backend registry: every inference backend declared once, by name.

A backend is one module with a class taking ``(path, *, device, precision, threads, cache_dir,
**options)`` and an ``available_devices()`` function, plus one :func:`register` call naming them.
The CLI choices, ``sfpn-edge info``, the bench rows, the model-file choice of a model directory
and ``open_model`` all read this table; the module is imported only when the backend is used,
so listing backends never loads ONNX Runtime or OpenVINO.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Tuple, Union

from sfpn_edge.errors import SfpnError
from sfpn_edge.registry import Registry, import_impl
from sfpn_edge.threads import check_threads

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
"""Every precision sfpn-edge knows; a backend declares the ones it runs."""


@dataclass(frozen=True)
class BackendSpec:
    """What the rest of sfpn-edge knows about one backend.

    ``files``: the manifest's file family this backend opens (``manifest["files"][files][precision]``);
    ``precision_files``: precisions run from another precision's file (OpenVINO bf16 = a hint on the
    fp32 IR); ``static_files``: the family tried first on devices that need a static batch (NPU);
    ``graph_backend``: None if the backend runs any ONNX graph (the detector nets), else the backend
    that runs them instead; ``extra``: the pip extra that installs it.
    """

    name: str
    impl: str  # "module:Class"
    precisions: Tuple[str, ...]
    files: str = ""
    precision_files: Mapping[str, str] = field(default_factory=dict)
    static_files: Optional[str] = None
    static_devices: Tuple[str, ...] = ()
    graph_backend: Optional[str] = None
    extra: Optional[str] = None
    summary: str = ""

    @property
    def module(self) -> str:
        return self.impl.partition(":")[0]

    def load(self) -> type:
        """The backend class (ImportError when its library is not installed)."""
        return import_impl(self.impl)

    def missing(self) -> Optional[str]:
        """Why the backend cannot be used here (its library is not importable), or None."""
        try:
            importlib.import_module(self.module)
        except ImportError as exc:
            hint = f"; install it with {pip_hint(self.extra)}" if self.extra else ""
            return f"{self.name} is not installed ({exc.name or exc}){hint}"
        return None

    def devices(self) -> List[str]:
        """Devices this backend can use on this machine ([] when it is not installed)."""
        if self.missing():
            return []
        return list(importlib.import_module(self.module).available_devices())

    def check_precision(self, precision: str, why: str = "") -> None:
        """SfpnError unless this backend runs ``precision`` (``why`` explains a refusal)."""
        if precision not in self.precisions:
            raise SfpnError(f"{self.name} runs {' / '.join(self.precisions)} models, not {precision!r}{why}")

    def file_keys(self, precision: str, device: str = "CPU") -> List[Tuple[str, str]]:
        """(family, precision) manifest entries to try, best first, for ``precision`` on ``device``."""
        family = self.files or self.name
        keys = []
        if self.static_files and device.upper().split(".")[0] in self.static_devices:
            keys.append((self.static_files, precision))
        keys.append((family, precision))
        if precision in self.precision_files:
            keys.append((family, self.precision_files[precision]))
        return keys


def pip_hint(extra: str) -> str:
    """The command that installs the pip extra ``extra``."""
    return f"pip install 'sfpn-edge[{extra}]'"


_REGISTRY: Registry[BackendSpec] = Registry("backend")
names, specs, get, unregister = _REGISTRY.names, _REGISTRY.specs, _REGISTRY.get, _REGISTRY.remove


def register(spec: BackendSpec) -> BackendSpec:
    """Add (or replace) a backend; returns ``spec``."""
    if spec.name == "auto":
        raise SfpnError("'auto' is not a backend name: it asks the target policy for one")
    unknown = set(spec.precisions) - set(PRECISIONS)
    if unknown or not spec.precisions:
        raise SfpnError(f"backend {spec.name!r}: precisions must be some of {PRECISIONS}, got {spec.precisions}")
    return _REGISTRY.add(spec.name, spec)


def open_model(path: Union[str, Path], backend: str = "onnxruntime", *, device: str = "CPU",
               precision: str = "fp32", threads: Optional[int] = None,
               cache_dir: Optional[Union[str, Path]] = None, **options):
    """Load ``path`` with ``backend`` on ``device`` (see ``sfpn_edge.backends``)."""
    spec = get(backend)
    if precision not in PRECISIONS:
        raise SfpnError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    threads = check_threads(threads)
    reason = spec.missing()
    if reason:
        raise SfpnError(reason)
    cache = Path(cache_dir) if cache_dir is not None else None
    return spec.load()(path, device=device, precision=precision, threads=threads, cache_dir=cache, **options)

