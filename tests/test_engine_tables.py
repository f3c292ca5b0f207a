"""Every engine code path against the portable one, bit for bit, from C (tests/engine_tables_check.c).

Natively, and on an x86 host with an aarch64 cross compiler and qemu-aarch64-static also as a
Pi 4 (cortex-a72: the armv8.0 NEON table) and a Pi 5-class core (neoverse-n1: the dot-product
table too), so both NEON tables run here without ARM hardware.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "engine_tables_check.c"
CROSS = shutil.which("aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-aarch64-static")


def build(compiler, out, *flags):
    subprocess.run([compiler, "-O2", "-pthread", *flags, f"-I{ROOT / 'kernels'}", str(SOURCE), "-lm", "-o", str(out)],
                   check=True, capture_output=True, text=True)
    return out


def check(cmd, env=None):
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines and not any("MISMATCH" in line for line in lines)
    return lines


def ran(lines, table):
    return [line for line in lines if line.split()[1] == table and "identical" in line]


def test_native_tables_match_the_portable_loops(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    lines = check([str(build(compiler, tmp_path / "check"))])
    assert len(ran(lines, "portable")) == 8          # 4 plans x 1 and 2 threads
    if platform.machine() in ("aarch64", "arm64"):
        assert len(ran(lines, "neon")) == 8


@pytest.mark.parametrize("cpu, tables", [("cortex-a72", ["neon"]), ("neoverse-n1", ["neon-dotprod", "neon"])])
def test_neon_tables_under_qemu(tmp_path, cpu, tables):
    if platform.machine() != "x86_64" or CROSS is None or QEMU is None:
        pytest.skip("needs an x86-64 host with aarch64-linux-gnu-gcc and qemu-aarch64-static")
    exe = build(CROSS, tmp_path / "check", "-static")
    lines = check([QEMU, str(exe)], env={**os.environ, "QEMU_CPU": cpu})
    for table in tables:
        assert len(ran(lines, table)) == 8, (table, lines)
    if cpu == "cortex-a72":
        assert any("neon-dotprod" in line and "skipped" in line for line in lines)
