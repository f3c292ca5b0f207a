"""Target policy: ``cpu`` / ``arm`` / ``vpu`` / ``auto`` (+ precision) -> backend + device, with the reason.

The decision is a pure function of an ``Environment`` (architecture, CPU features, OpenVINO
devices, ONNX Runtime providers), so it is unit-tested with injected device lists;
``Environment.detect()`` fills one in from the running machine.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Optional

from sfpn_edge import platform_info
from sfpn_edge.backends.base import MYRIAD_GONE
from sfpn_edge.backends.registry import pip_hint
from sfpn_edge.errors import SfpnError

TARGETS = ("cpu", "arm", "vpu", "auto")


@dataclass(frozen=True)
class Environment:
    """What the policy looks at. ``None`` for a library that is not importable (``litert``: the
    LiteRT version when the litert extra is installed; ``native``: the int8 engine kernel imports)."""

    platform: platform_info.PlatformInfo
    openvino_devices: Optional[tuple] = None
    ort_providers: Optional[tuple] = None
    versions: dict = field(default_factory=dict)
    litert: Optional[str] = None
    native: bool = True

    @classmethod
    def detect(cls, openvino: bool = True) -> "Environment":
        """This machine. ``openvino=False`` does not load OpenVINO (~40 MB) just to list its devices:
        installed means a CPU device, and an NPU when the kernel exposes an accelerator node
        (``/dev/accel/accel*``, the Intel NPU driver's) — what the policy asks of OpenVINO."""
        versions = {}
        ov_devices = ort_providers = None
        try:
            import onnxruntime as ort

            ort_providers = tuple(ort.get_available_providers())
            versions["onnxruntime"] = ort.__version__
        except ImportError:
            pass
        if not openvino:
            ov_devices = _openvino_devices_unloaded()
        else:
            try:
                from sfpn_edge.backends import openvino_backend

                ov_devices = tuple(openvino_backend.available_devices())
                versions["openvino"] = openvino_backend.ov.get_version()
            except (ImportError, RuntimeError):
                pass
        litert = litert_version()
        if litert is not None:
            versions["litert"] = litert
        try:
            import sfpn_edge.kernels.engine  # noqa: F401  (built with the package; absent in a broken build)

            native = True
        except ImportError:
            native = False
        return cls(platform_info.detect(), ov_devices, ort_providers, versions, litert, native)

    def has_ov(self, family: str) -> bool:
        return any(d.split(".")[0] == family for d in self.openvino_devices or ())

    def has_ort(self, provider: str) -> bool:
        return provider in (self.ort_providers or ())

    def summary(self) -> str:
        return (f"arch {self.platform.arch}, OpenVINO devices {list(self.openvino_devices or [])}, "
                f"ONNX Runtime providers {list(self.ort_providers or [])}, LiteRT {self.litert or 'not installed'}")


def _openvino_devices_unloaded() -> Optional[tuple]:
    import glob
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return None
    return ("CPU",) + (("NPU",) if glob.glob("/dev/accel/accel*") else ())


def litert_version() -> Optional[str]:
    """The installed ai-edge-litert version, found without importing it (None: not installed)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("ai_edge_litert") is None:
        return None
    try:
        return importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Choice:
    target: str
    backend: str
    device: str
    reason: str
    precision: Optional[str] = None  # set when the policy chose it (precision "auto")

    def as_dict(self) -> dict:
        out = {"target": self.target, "backend": self.backend, "device": self.device, "reason": self.reason}
        return out if self.precision is None else {**out, "precision": self.precision}


# ms per face on one core of each Pi, by backend and precision: emulated estimates from instruction
# counts under QEMU and a cost model (tools/arm64-cost; README "ARM speed"), not measured on a Pi.
# "dot": Raspberry Pi 5 (Cortex-A76, armv8.2 dot product); "armv8.0": Raspberry Pi 4 (Cortex-A72).
ARM_ESTIMATES = {
    "dot": {("native", "int8"): 5.18, ("litert", "int8"): 5.28, ("onnxruntime", "int8"): 5.86,
            ("litert", "fp32"): 13.79, ("onnxruntime", "fp32"): 14.54},
    "armv8.0": {("onnxruntime", "int8"): 18.55, ("native", "int8"): 19.23, ("litert", "int8"): 19.68,
                ("litert", "fp32"): 36.42, ("onnxruntime", "fp32"): 37.80},
}
ARM_BOARD = {"dot": "Pi 5 (dot product)", "armv8.0": "Pi 4 (armv8.0, no dot product)"}
ARM_NAMES = {"native": "native", "litert": "LiteRT", "onnxruntime": "ONNX Runtime"}
LITERT_PRECISIONS = ("fp32", "fp16", "int8")


def _arm_order(core: str, precision: str, usable: list) -> str:
    """The estimates behind an ARM choice, fastest first."""
    table = ARM_ESTIMATES[core]
    rows = sorted((table[(b, precision)], b) for b in usable if (b, precision) in table)
    figures = ", ".join(f"{ARM_NAMES[b]} {ms:g} ms" for ms, b in rows) or "none for this precision"
    return (f"Estimated {precision} ms per face on a {ARM_BOARD[core]} (tools/arm64-cost: emulated "
            f"estimates, not measured on a Pi): {figures}")


def _arm(env: Environment, target: str, precision: str) -> Choice:
    """The usable backend with the lowest estimate for this core and precision (LiteRT, then ONNX
    Runtime, where no estimate exists)."""
    if not env.platform.is_arm:
        raise SfpnError(f"target 'arm' needs an ARM CPU, this machine is {env.platform.arch}; "
                        f"available targets: {available_targets(env)}")
    if env.litert is None and not env.has_ort("CPUExecutionProvider"):
        raise SfpnError(f"target 'arm' runs on LiteRT or ONNX Runtime, neither is installed ({env.summary()})")
    core = "dot" if env.platform.has("asimddp") else "armv8.0"
    usable = ((["native"] if env.native and precision == "int8" else [])
              + (["litert"] if env.litert is not None and precision in LITERT_PRECISIONS else [])
              + (["onnxruntime"] if env.has_ort("CPUExecutionProvider") else []))
    table = ARM_ESTIMATES[core]
    best = min(usable, key=lambda b: table.get((b, precision), float("inf")))   # ties: the order above
    order = _arm_order(core, precision, usable)
    if best == "native":
        kernels = "SDOT dot-product" if core == "dot" else "armv8.0 widening multiply-accumulate"
        return Choice(target, "native", "CPU", f"ARM CPU: the int8 plan on sfpn-edge's own NEON kernels "
                                               f"({kernels}, picked from HWCAP). {order}")
    if best == "litert":
        return Choice(target, "litert", "CPU", f"ARM CPU: LiteRT {env.litert} with the XNNPACK delegate. {order}")
    litert = "" if env.litert is not None else f"; LiteRT is not installed ({pip_hint('litert')})"
    if env.has_ort("XnnpackExecutionProvider"):
        return Choice(target, "onnxruntime", "XNNPACK",
                      f"ARM CPU: ONNX Runtime with the XNNPACK provider (NEON kernels), CPU provider fallback"
                      f"{litert}. {order}")
    return Choice(target, "onnxruntime", "CPU",
                  f"ARM CPU: ONNX Runtime CPU provider (MLAS NEON kernels); this build has no XNNPACK provider"
                  f"{litert}. {order}")


def _cpu(env: Environment, target: str, precision: str) -> Choice:
    if env.platform.is_arm:
        return _arm(env, target, precision)
    features = ", ".join(env.platform.features) or "no SIMD features reported"
    if precision == "int8" and env.native and env.platform.has("avx512_vnni"):
        return Choice(target, "native", "CPU",
                      f"{env.platform.arch} CPU with AVX-512 VNNI: the int8 plan runs on sfpn-edge's own "
                      "kernels (uint8 NHWC, vpdpbusd), the fastest int8 path measured for this model")
    if env.has_ov("CPU"):
        int8 = "; int8 models run on its VNNI/AMX kernels" if env.platform.int8_dot else ""
        return Choice(target, "openvino", "CPU",
                      f"{env.platform.arch} CPU ({features}): OpenVINO's CPU plugin (oneDNN, JIT-compiled "
                      f"for this ISA){int8}")
    if env.has_ort("CPUExecutionProvider"):
        why = (f"OpenVINO is not installed ({pip_hint('openvino')})" if env.openvino_devices is None
               else "OpenVINO CPU device unavailable")
        return Choice(target, "onnxruntime", "CPU",
                      f"{env.platform.arch} CPU ({features}): {why}, using ONNX Runtime's CPU provider")
    raise SfpnError(f"no CPU backend is available ({env.summary()})")


def _vpu(env: Environment, target: str, precision: str) -> Choice:
    if env.has_ov("NPU"):
        return Choice(target, "openvino", "NPU",
                      "OpenVINO NPU device (Intel VPU line) found; the model is compiled with a static batch")
    if env.openvino_devices is None:
        raise SfpnError(f"target 'vpu' needs OpenVINO, which is not installed ({pip_hint('openvino')}); "
                        f"available targets: {available_targets(env)}")
    raise SfpnError(f"target 'vpu' needs the OpenVINO NPU device, not present here (OpenVINO devices: "
                    f"{list(env.openvino_devices)}; {MYRIAD_GONE}); available targets: {available_targets(env)}")


def _auto(env: Environment, target: str, precision: str) -> Choice:
    if env.has_ov("NPU"):
        choice = _vpu(env, target, precision)
        return Choice(target, choice.backend, choice.device,
                      choice.reason + "; preferred so the CPU stays free for detection and alignment")
    return _cpu(env, target, precision)


_POLICY = {"cpu": _cpu, "arm": _arm, "vpu": _vpu, "auto": _auto}


def choose(target: str = "auto", env: Optional[Environment] = None, precision: str = "fp32",
           int8_gate: Optional[Mapping[str, str]] = None) -> Choice:
    """The backend and device for ``target`` and ``precision`` on ``env`` (default: this machine),
    or SfpnError. ``precision="auto"`` also picks the precision: int8 where the CPU has int8
    dot-product instructions, or is an armv8.0 ARM core (Raspberry Pi 4: widening multiplies) where
    the backend's int8 estimate beats every fp32 one, and the backend's int8 file passed its accuracy gate
    (``int8_gate``: backend -> "" when it passed, else why not; ``ModelDir.int8_gate``), else fp32."""
    env = env or Environment.detect(openvino=False)  # OpenVINO is loaded when it is picked, not to pick
    key = target.lower()
    if key == "myriad":
        raise SfpnError(MYRIAD_GONE)
    if key not in _POLICY:
        raise SfpnError(f"unknown target {target!r}; choose from {TARGETS}")
    if precision == "auto":
        return _auto_precision(env, key, int8_gate or {})
    return _POLICY[key](env, key, precision)


def int8_rejection(platform: platform_info.PlatformInfo, backend: str, int8_gate: Mapping[str, str]) -> str:
    """Why ``backend`` should not run int8 on ``platform`` ("" when it should)."""
    if platform.is_arm and not platform.int8_dot:
        table = ARM_ESTIMATES["armv8.0"]
        fp32 = min(ms for (_, precision), ms in table.items() if precision == "fp32")
        if table.get((backend, "int8"), float("inf")) >= fp32:
            return (f"on an armv8.0 core (no dot product) {ARM_NAMES.get(backend, backend)} int8 is not "
                    f"estimated faster than fp32 ({fp32:g} ms per face)")
    elif not platform.int8_dot:
        return ("this CPU has no int8 dot-product instructions (VNNI, AMX), where int8 runs slower than fp32 "
                "or saturates")
    if backend not in int8_gate:
        return f"the model has no int8 file for {backend}"
    return int8_gate[backend]


def int8_accepted(backend: str) -> str:
    return f"int8: the {backend} int8 file passed its accuracy gate (manifest: int8_gate)"


X86_LITERT_INT8 = ("x86 CPU: LiteRT int8, as accurate as fp32 on CFP through the default detector (FF 96.29 / "
                   "FP 87.57 vs 96.37 / 87.61) and the engine that detector "
                   "already runs on: a photo costs the same CPU time as with OpenVINO int8 (4.39 vs 4.44 ms, "
                   "BlazeFace + crop + embedding, 1 thread) at about half the memory (a verify peaks at 73 vs "
                   "130 MB); --backend openvino asks for OpenVINO")


X86_ORT_FP32 = ("x86 CPU, fp32: ONNX Runtime, the cheapest fp32 photo here (6.49 CPU ms per photo vs OpenVINO's "
                "7.36, BlazeFace + crop + embedding, 1 thread; a verify peaks at 109 vs 130 MB); --backend openvino "
                "asks for OpenVINO")


def _auto_precision(env: Environment, key: str, int8_gate: Mapping[str, str]) -> Choice:
    """The policy's int8 choice if it may run int8 here (on x86 LiteRT before OpenVINO and ONNX
    Runtime on the CPU: ``X86_LITERT_INT8``); else its next choice with that backend left out, and
    so on; else the fp32 choice (on x86 ONNX Runtime rather than OpenVINO on the CPU: ``X86_ORT_FP32``),
    saying why not int8."""
    why_not, left = [], env
    while True:
        try:
            int8 = _POLICY[key](left, key, "int8")
        except SfpnError:
            break
        if (left.platform.is_x86 and left.litert is not None and int8.device == "CPU"
                and int8.backend in ("openvino", "onnxruntime")):
            int8 = Choice(key, "litert", "CPU", X86_LITERT_INT8)
        rejection = int8_rejection(env.platform, int8.backend, int8_gate)
        if not rejection:
            return replace(int8, precision="int8", reason=f"{int8.reason}; {int8_accepted(int8.backend)}"
                           + "".join(f" ({w}, so not used)" for w in why_not))
        why_not.append(rejection)
        if not env.platform.int8_dot and not env.platform.is_arm:
            break
        left = _without(left, int8.backend)
    fp32 = _POLICY[key](env, key, "fp32")
    if env.platform.is_x86 and fp32.backend == "openvino" and fp32.device == "CPU" and env.has_ort("CPUExecutionProvider"):
        fp32 = Choice(key, "onnxruntime", "CPU", X86_ORT_FP32)
    return replace(fp32, precision="fp32", reason=f"{fp32.reason}; fp32: {'; '.join(why_not)}")


def _without(env: Environment, backend: str) -> Environment:
    """``env`` as if ``backend`` were not installed."""
    gone = {"native": {"native": False}, "openvino": {"openvino_devices": None},
            "litert": {"litert": None}, "onnxruntime": {"ort_providers": None}}
    return replace(env, **gone[backend])


def available_targets(env: Environment) -> list:
    """Targets that ``choose`` accepts on ``env``."""
    found = []
    if env.has_ov("CPU") or env.has_ort("CPUExecutionProvider"):
        found.append("cpu")
    if env.platform.is_arm and (env.has_ort("CPUExecutionProvider") or env.litert is not None):
        found.append("arm")
    if env.has_ov("NPU"):
        found.append("vpu")
    if found:
        found.append("auto")
    return found
