"""Build script: compiles the Cython kernels in kernels/ into sfpn_edge.kernels.

Flags are portable on purpose (-O3, no -march): wheels built here must run on
edge x86 boxes without AVX2 and on ARM boards. Hot loops pick faster code paths
at load time through GCC ``target_clones`` (see kernels/simd.h).
"""
import sys
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent


def _compile_args() -> list:
    if sys.platform == "win32":
        return ["/O2"]
    return ["-O3", "-pthread", "-fno-math-errno", "-Wno-unreachable-code"]


extensions = [
    Extension(
        f"sfpn_edge.kernels.{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        include_dirs=[np.get_include(), "kernels"],
        depends=[str(h.relative_to(HERE)) for h in sorted((HERE / "kernels").glob("*.h"))],   # rebuild on any header
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=_compile_args(),
        extra_link_args=[] if sys.platform == "win32" else ["-pthread"],
    )
    for pyx in sorted((HERE / "kernels").glob("*.pyx"))
]

setup(
    packages=[
        "sfpn_edge",
        "sfpn_edge.cli",
        "sfpn_edge.backends",
        "sfpn_edge.detect",
        "sfpn_edge.bench",
        "sfpn_edge.evaluate",
        "sfpn_edge.kernels",
        "sfpn_edge.converters",
    ],
    package_data={"sfpn_edge": ["py.typed"]},  # PEP 561: the package ships its type hints
    package_dir={
        "sfpn_edge": "sfpn_edge",
        "sfpn_edge.kernels": "kernels",
        "sfpn_edge.converters": "converters",
    },
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    include_package_data=False,
    zip_safe=False,
)
