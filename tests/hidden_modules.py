"""Run ``sfpn-edge`` in a subprocess where some installed modules cannot be imported.

A ``sitecustomize.py`` put first on PYTHONPATH sets ``sys.modules[name] = None`` for each name in
``$SFPN_TEST_HIDE``, so ``import name`` (and ``import name.sub``) raises ImportError as if the
package were not installed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

SITECUSTOMIZE = (
    "import os, sys\n"
    "for _name in os.environ.get('SFPN_TEST_HIDE', '').split(','):\n"
    "    if _name:\n"
    "        sys.modules[_name] = None\n"
)


def hiding_env(tmp_path: Path, hidden: Sequence[str], **extra: str) -> dict:
    """The environment of a Python process in which the modules ``hidden`` are unimportable."""
    shim = tmp_path / "hide-modules"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join([str(shim), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "SFPN_TEST_HIDE": ",".join(hidden), **extra}


def run_python(env: dict, *args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``env``, text output captured."""
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)


def run_cli(env: dict, *args) -> subprocess.CompletedProcess:
    """``python -m sfpn_edge ARGS`` in ``env``."""
    return run_python(env, "-m", "sfpn_edge", *map(str, args))
