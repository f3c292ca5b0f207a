"""What this machine is: architecture, CPU model and the instruction-set features that matter.

Pure stdlib: reads /proc/cpuinfo on Linux (x86 ``flags`` / ARM ``Features``); on ARM Linux, when
that shows no ARM features (QEMU user emulation shows the host's x86 cpuinfo), the kernel's
auxiliary vector (``getauxval(AT_HWCAP)``) is asked instead; ``platform`` elsewhere. Used by target selection, ``sfpn-edge info`` and cache keys.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

# Features worth reporting (the rest of /proc/cpuinfo flags are noise for inference).
X86_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
    "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
)
ARM_FEATURES = ("asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme")

# aarch64 Linux: feature -> (auxv entry, bit); AT_HWCAP = 16, AT_HWCAP2 = 26 (asm/hwcap.h).
ARM_HWCAP_BITS = {
    "asimd": (16, 1), "asimdhp": (16, 10), "asimddp": (16, 20), "sve": (16, 22),
    "sve2": (26, 1), "i8mm": (26, 13), "bf16": (26, 14), "sme": (26, 23),
}

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8l": "aarch64"}


@dataclass(frozen=True)
class PlatformInfo:
    system: str
    arch: str  # normalised: x86_64, aarch64, armv7l, ...
    cpu_model: str
    logical_cpus: int
    features: tuple = field(default_factory=tuple)  # subset of X86_FEATURES / ARM_FEATURES present

    @property
    def is_arm(self) -> bool:
        return self.arch.startswith(("aarch64", "arm"))

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "i686", "i386")

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def int8_dot(self) -> bool:
        """The CPU has an int8 dot-product instruction (VNNI / ARM dot product / AMX)."""
        return any(f in self.features for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"))

    def as_dict(self) -> dict:
        return {**asdict(self), "features": list(self.features), "int8_dot": self.int8_dot}


def normalise_arch(machine: str) -> str:
    machine = machine.lower()
    return _ARCH_ALIASES.get(machine, machine)


def parse_cpuinfo(text: str, arch: str) -> tuple:
    """(cpu model name, reported features) from the text of /proc/cpuinfo."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    wanted = ARM_FEATURES if normalise_arch(arch).startswith(("aarch64", "arm")) else X86_FEATURES
    return model, tuple(f for f in wanted if f in flags)


def arm_hwcap_features() -> tuple:
    """ARM features the Linux kernel reports in the auxiliary vector (empty where unavailable)."""
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return ()
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    words = {entry: getauxval(entry) for entry in (16, 26)}
    return tuple(f for f, (entry, bit) in ARM_HWCAP_BITS.items() if words[entry] >> bit & 1)


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def detect(cpuinfo: Optional[Path] = Path("/proc/cpuinfo")) -> PlatformInfo:
    """Describe the running machine (cached)."""
    arch = normalise_arch(platform.machine() or "unknown")
    model, features = "", ()
    if cpuinfo is not None and cpuinfo.exists():
        try:
            model, features = parse_cpuinfo(cpuinfo.read_text(errors="replace"), arch)
        except OSError:
            pass
    if arch == "aarch64" and platform.system() == "Linux" and not features:
        features = arm_hwcap_features()
    return PlatformInfo(
        system=platform.system(),
        arch=arch,
        cpu_model=model or platform.processor() or "unknown",
        logical_cpus=_cpu_count(),
        features=features,
    )
