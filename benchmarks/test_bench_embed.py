"""FaceEmbedder speed: backend x precision x threads x export form, batch size, spinning, cold vs warm start.

    pytest benchmarks/test_bench_embed.py --benchmark-columns=median,iqr,min,rounds

Backends: ONNX Runtime, OpenVINO and the native int8 engine (LiteRT in ``test_litert_speedup``), plus issue 5's baseline, a plain
``onnxruntime.InferenceSession`` with default options (``test_default_session_one_face``).
Every row's ``extra_info`` holds p50/p95 ms per face, faces/s, peak RSS and CPU ms per face
(process CPU time: on a shared box wall time includes waiting for a core, CPU time does not).
``test_int8_speedup`` times every int8 path, ONNX Runtime fp32 and the default session
interleaved in one loop, so the ratios are fair even when the machine is busy, and records the
issue-5 verdict; ``test_rewrite_speedup`` does the same for the two export forms of the grouped
convolutions. The int8 models (ORT, OpenVINO, native plan) are calibrated here on 200 CFP
fiducial crops (as ``python -m sfpn_edge.converters.quantize`` does); 32 with
``--benchmark-disable`` (smoke mode: every benchmark runs once, speed is not the point).
"""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from sfpn_edge import models


PRECISIONS = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
              ("openvino", "fp16"), ("openvino", "bf16"), ("openvino", "int8"), ("native", "int8")]
INT8 = [("onnxruntime", "int8"), ("openvino", "int8"), ("native", "int8")]
GRAPHS = ("gather", "replicate")   # export forms of the grouped expand3x3 convs (converters/onnx_export.py)


@pytest.fixture(scope="module")
def calibration(cfp_root, request) -> np.ndarray:  # noqa: F811
    from sfpn_edge.align import MEAN_RGB
    from sfpn_edge.converters.calibration_data import calibration_crops, cfp_calibration_samples

    count = 32 if request.config.getoption("benchmark_disable") else 200
    return calibration_crops(cfp_calibration_samples(cfp_root, count), 113, MEAN_RGB)


@pytest.fixture(scope="module")
def graph_dirs(model_dir, dwc_mat, calibration, tmp_path_factory) -> dict:  # noqa: F811
    """One int8-quantized model directory per export form, same weights and calibration crops."""
    from sfpn_edge.converters import quantize
    from sfpn_edge.converters.calibration_data import CalibrationSet
    from sfpn_edge.converters.layergraph import build_graph, read_mat
    from sfpn_edge.converters.onnx_export import export_onnx
    from sfpn_edge.converters.openvino_export import export_openvino

    graph = build_graph(read_mat(dwc_mat))
    dirs = {}
    for form in GRAPHS:
        out = tmp_path_factory.mktemp(f"bench-{form}") / "model"
        shutil.copytree(model_dir, out)
        export_onnx(graph, out / "model.onnx", rewrite=form)
        export_openvino(out / "model.onnx", out)
        models.write_manifest(out, models.load_manifest(out))  # the manifest vouches for the new graphs
        quantize.quantize_model_dir(out, CalibrationSet(calibration, {"scheme": "cfp", "source": f"CFP fiducial-box crops, {len(calibration)} images"}))
        dirs[form] = out
    return dirs


@pytest.fixture(scope="module")
def full_dir(graph_dirs):
    return graph_dirs["replicate"]   # the converter's default form


@pytest.fixture(scope="module")
def faces(calibration) -> np.ndarray:
    return calibration[:32]   # timing inputs: real face crops


def _record(benchmark, n_faces: int, cpu_seconds: float, calls: int) -> None:
    if benchmark.stats is None:  # --benchmark-disable: one call, no statistics
        return
    data = np.asarray(benchmark.stats.stats.data) * 1000 / n_faces
    p50, p95 = np.percentile(data, [50, 95])
    benchmark.extra_info.update(p50_ms_per_face=round(p50, 3), p95_ms_per_face=round(p95, 3),
                                faces_per_s=round(1000 / p50, 1),
                                cpu_ms_per_face=round(cpu_seconds * 1000 / calls / n_faces, 3))


def _timed(benchmark, fn, rounds: int):
    start = time.process_time()
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=5)
    return time.process_time() - start, rounds + 5


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend, precision", PRECISIONS)
def test_embed_one_face(benchmark, memory, graph_dirs, faces, backend, precision, threads, graph):
    from sfpn_edge.embed import FaceEmbedder

    embedder = FaceEmbedder(graph_dirs[graph], backend, precision, threads=threads)
    face = faces[:1]
    memory.trace(embedder.embed, face)
    benchmark.group = f"embed 1 face, {threads} thread(s)"
    benchmark.extra_info.update(backend=backend, precision=precision, threads=threads, graph=graph)
    cpu, calls = _timed(benchmark, lambda: embedder.embed(face), rounds=60)
    _record(benchmark, 1, cpu, calls)


def test_default_session_one_face(benchmark, memory, full_dir, faces):
    """Issue 5's baseline: InferenceSession(model.onnx) with default options (ORT picks threads, spins)."""
    from sfpn_edge.bench.baseline import DefaultSession

    session = DefaultSession(full_dir / "model.onnx")
    face = faces[:1]
    memory.trace(session.run, face)
    benchmark.group = "embed 1 face, ONNX Runtime default session (issue-5 baseline)"
    benchmark.extra_info.update(backend="onnxruntime", precision="fp32", threads="default", graph="replicate")
    cpu, calls = _timed(benchmark, lambda: session.run(face), rounds=60)
    _record(benchmark, 1, cpu, calls)


@pytest.mark.parametrize("batch", [1, 2, 4, 8, 32])
@pytest.mark.parametrize("backend, precision", [("onnxruntime", "fp32"), *INT8, ("openvino", "fp32")])
def test_batch_size(benchmark, full_dir, faces, backend, precision, batch):
    """ms per face for one call of ``batch`` faces (behind FaceEmbedder.BEST_BATCH)."""
    from sfpn_edge.embed import FaceEmbedder

    embedder = FaceEmbedder(full_dir, backend, precision, threads=1, batch_size=batch)
    chunk = faces[:batch]
    benchmark.group = f"batch size {backend} {precision} (1 thread)"
    benchmark.extra_info.update(backend=backend, precision=precision, batch=batch)
    cpu, calls = _timed(benchmark, lambda: embedder.embed(chunk), rounds=max(10, 60 // batch))
    _record(benchmark, batch, cpu, calls)


def _interleaved(benchmark, contenders: dict, face: np.ndarray, rounds: int = 40) -> tuple:
    """Median wall and CPU ms per call of each contender (an embedder, or anything with ``run``),
    timed in turns (5 calls each per round)."""
    wall = {k: [] for k in contenders}
    cpu = {k: [] for k in contenders}
    calls = {k: getattr(e, "embed", None) or e.run for k, e in contenders.items()}
    for call in calls.values():
        for _ in range(5):
            call(face)

    def one_round():
        for name, call in calls.items():
            t, c = time.perf_counter(), time.process_time()
            for _ in range(5):
                call(face)
            wall[name].append((time.perf_counter() - t) / 5 * 1000)
            cpu[name].append((time.process_time() - c) / 5 * 1000)

    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=1)
    med = {k: float(np.median(v)) for k, v in wall.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    benchmark.extra_info.update({f"{k}_ms": round(v, 3) for k, v in med.items()})
    benchmark.extra_info.update({f"{k}_cpu_ms": round(v, 3) for k, v in med_cpu.items()})
    return med, med_cpu


def test_int8_speedup(benchmark, full_dir, faces):
    """Every int8 path at 1 thread (and the native one at 2) vs ONNX Runtime fp32 (our session at 1
    thread and at the library's thread default, and issue 5's baseline: the plain default
    session), interleaved.

    ``extra_info``: each contender's median ms, the best int8 path at 1 thread and overall, their
    speed-ups, and issue 5's verdict (<= 1 ms/face at 1 thread; >= 2x the default session).
    """
    from sfpn_edge.bench.baseline import TARGET_MS_PER_FACE, TARGET_SPEEDUP, DefaultSession
    from sfpn_edge.embed import FaceEmbedder

    int8 = {f"{backend}_int8_1t": FaceEmbedder(full_dir, backend, "int8", threads=1) for backend, _ in INT8}
    int8["native_int8_2t"] = FaceEmbedder(full_dir, "native", "int8", threads=2)
    contenders = {
        **int8,
        "ort_fp32_1t": FaceEmbedder(full_dir, "onnxruntime", "fp32", threads=1),
        "ort_fp32_default_threads": FaceEmbedder(full_dir, "onnxruntime", "fp32"),
        "ort_default_session": DefaultSession(full_dir / "model.onnx"),
    }
    benchmark.group = "int8 speed-up (interleaved)"
    med, med_cpu = _interleaved(benchmark, contenders, faces[:1])
    best_1t = min((name for name in int8 if name.endswith("_1t")), key=med.get)
    best = min(int8, key=med.get)
    benchmark.extra_info.update(
        best_int8_1t=best_1t,
        best_int8=best,
        speedup_1t_vs_ort_fp32_1t=round(med["ort_fp32_1t"] / med[best_1t], 2),
        speedup_1t_vs_default_session=round(med["ort_default_session"] / med[best_1t], 2),
        speedup_vs_default_session=round(med["ort_default_session"] / med[best], 2),
        target_latency_met=med[best_1t] <= TARGET_MS_PER_FACE,
        target_speedup_met=med["ort_default_session"] / med[best] >= TARGET_SPEEDUP,
    )
    benchmark.extra_info["native_isa"] = int8["native_int8_1t"].model.describe()["isa"]
    if benchmark.disabled:  # smoke mode: one round of 5 calls is no measurement to judge speed by
        return
    # the int8 paths meant to be fast here must at least cost less CPU than fp32 at the same thread
    # count (ORT's QDQ int8 measured about level with fp32 here; the native portable loops need VNNI)
    fast = ["openvino_int8_1t"] + (["native_int8_1t"] if benchmark.extra_info["native_isa"] != "portable" else [])
    for name in fast:
        assert med_cpu[name] < med_cpu["ort_fp32_1t"], (name, med_cpu)


def test_litert_speedup(benchmark, full_dir, faces):
    """LiteRT (XNNPACK) fp32 / fp16 / int8 and ORT fp32 / int8, all at 1 thread, interleaved;
    ``extra_info`` has each median and its speed-up over ORT fp32 (``<name>_vs_ort_fp32``)."""
    pytest.importorskip("ai_edge_litert", reason="the litert extra is not installed")
    from sfpn_edge.embed import FaceEmbedder

    contenders = {f"{backend}_{precision}_1t": FaceEmbedder(full_dir, backend, precision, threads=1)
                  for backend, precision in [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("litert", "fp32"),
                                             ("litert", "fp16"), ("litert", "int8")]}
    benchmark.group = "LiteRT vs ONNX Runtime (interleaved, 1 thread)"
    med, _ = _interleaved(benchmark, contenders, faces[:1])
    benchmark.extra_info.update({f"{name}_vs_ort_fp32": round(med["onnxruntime_fp32_1t"] / med[name], 2)
                                 for name in contenders})
    benchmark.extra_info["xnnpack"] = contenders["litert_int8_1t"].model.describe()["xnnpack"]


@pytest.mark.parametrize("backend, precision", [("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                                ("openvino", "fp32"), ("openvino", "int8")])
def test_rewrite_speedup(benchmark, graph_dirs, faces, backend, precision):
    """Gather + depthwise vs Concat([x]*4) + depthwise (order folded downstream), 1 thread, interleaved."""
    from sfpn_edge.embed import FaceEmbedder

    contenders = {form: FaceEmbedder(graph_dirs[form], backend, precision, threads=1) for form in GRAPHS}
    benchmark.group = "export rewrite: gather vs replicate (interleaved, 1 thread)"
    benchmark.extra_info.update(backend=backend, precision=precision)
    med, med_cpu = _interleaved(benchmark, contenders, faces[:1])
    benchmark.extra_info["speedup"] = round(med["gather"] / med["replicate"], 3)
    benchmark.extra_info["cpu_speedup"] = round(med_cpu["gather"] / med_cpu["replicate"], 3)


@pytest.mark.parametrize("spinning", [False, True])
def test_onnxruntime_spinning(benchmark, full_dir, faces, spinning):
    """allow_spinning=0 (our default) vs ORT's default busy-waiting workers, 2 threads."""
    from sfpn_edge.backends import open_model

    model = open_model(full_dir / "model.onnx", threads=2, spinning=spinning)
    face = faces[:1]
    benchmark.group = "onnxruntime fp32, 2 threads: spinning"
    benchmark.extra_info.update(spinning=spinning)
    cpu, calls = _timed(benchmark, lambda: model.run(face), rounds=60)
    _record(benchmark, 1, cpu, calls)


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("backend, precision", [("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                                ("openvino", "fp32"), ("openvino", "int8")])
def test_start_time(benchmark, full_dir, tmp_path, backend, precision, warm):
    """Model load + compile, without (cold) and with (warm) the compiled-model cache."""
    from sfpn_edge.backends import open_model
    from sfpn_edge.model_dir import ModelDir

    path = ModelDir(full_dir).file(backend, precision)
    cache = tmp_path / "cache"

    def setup():
        if not warm:
            shutil.rmtree(cache, ignore_errors=True)
        return (), {}

    open_model(path, backend, precision=precision, threads=1, cache_dir=cache)
    benchmark.group = f"start {backend} {precision}"
    benchmark.extra_info.update(backend=backend, precision=precision, cache="warm" if warm else "cold")
    model = benchmark.pedantic(lambda: open_model(path, backend, precision=precision, threads=1, cache_dir=cache),
                               setup=setup, rounds=8)
    assert model.cache_hit is warm
