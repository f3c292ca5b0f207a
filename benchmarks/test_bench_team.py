"""The native engine's thread team: 2 threads vs 1, on an idle machine and with one core busy.

    pytest benchmarks/test_bench_team.py --benchmark-columns=median,iqr,min,rounds

One process, the 1- and 2-thread engines timed in turns (5 faces each per round), so both see the
same machine. ``busy``: another process spins on the last CPU for the whole test (a helper
thread is then often late, or preempted in the middle of its share). ``extra_info``: each
median ms per face, ``ratio_2t_vs_1t`` and whether the issue-17 target holds (busy: <= 1.1,
idle: <= 0.65).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

TARGET = {"busy": 1.1, "idle": 0.65}


@pytest.fixture(scope="module")
def plan_dir(model_dir, cfp_root, tmp_path_factory):  # noqa: F811
    from sfpn_edge import models
    from sfpn_edge.converters import native_export
    from sfpn_edge.converters.calibration_data import calibration_crops, cfp_calibration_samples

    out = tmp_path_factory.mktemp("team") / "model"
    shutil.copytree(model_dir, out)
    crops = calibration_crops(cfp_calibration_samples(cfp_root, 32), 113, models.load_manifest(out)["mean"])
    native_export.export_native(out, crops, "CFP, 32 crops")
    return out, crops


@pytest.fixture
def load(request):
    """None, or a spinning process pinned to the last CPU (ended when the test ends)."""
    if request.param == "idle":
        yield None
        return
    cpu = max(os.sched_getaffinity(0))
    spin = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    time.sleep(0.5)   # it is spinning before the first timing
    yield spin
    spin.kill()
    spin.wait()


@pytest.mark.parametrize("load", ["idle", "busy"], indirect=True)
def test_two_threads_vs_one(benchmark, plan_dir, load):
    from sfpn_edge.embed import FaceEmbedder

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    path, crops = plan_dir
    engines = {t: FaceEmbedder(path, "native", "int8", threads=t) for t in (1, 2)}
    face = crops[:1]
    wall = {t: [] for t in engines}
    for embedder in engines.values():
        for _ in range(5):
            embedder.embed(face)

    def one_round():
        for t, embedder in engines.items():
            start = time.perf_counter()
            for _ in range(5):
                embedder.embed(face)
            wall[t].append((time.perf_counter() - start) / 5 * 1000)

    scenario = "idle" if load is None else "busy"
    benchmark.group = "native int8 thread team (interleaved)"
    benchmark.pedantic(one_round, rounds=60, warmup_rounds=1)
    med = {t: float(np.median(v)) for t, v in wall.items()}
    ratio = med[2] / med[1]
    benchmark.extra_info.update(load=scenario, isa=engines[1].model.describe()["isa"], ms_1t=round(med[1], 3),
                                ms_2t=round(med[2], 3), ratio_2t_vs_1t=round(ratio, 3),
                                target=TARGET[scenario], target_met=ratio <= TARGET[scenario])
    assert np.array_equal(engines[1].embed(face), engines[2].embed(face))
