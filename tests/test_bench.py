"""``python -m sfpn_edge.bench``: end to end on a fresh cache, plus its parts and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sfpn_edge.bench import baseline, configs, report
from sfpn_edge.bench.measure import child_env, min_cosine_rows, probe_batch
from sfpn_edge.bench.timing import time_calls
from sfpn_edge.errors import SfpnError

REPO = Path(__file__).resolve().parents[1]
MODEL_KEYS = {"backend", "precision", "threads", "status"}
MEASURED = ("p50_ms", "p95_ms", "throughput_fps", "cold_start_s", "peak_rss_mb", "model_size_mb", "cosine_vs_fp32",
            "speedup_vs_baseline")


def bench(args, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SFPN_EDGE_HOME": str(home), "COLUMNS": "200"}
    env.pop("SFPN_EDGE_WEIGHTS", None)
    return subprocess.run([sys.executable, "-m", "sfpn_edge.bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=home)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``--quick`` run as on a fresh install: empty cache, so synthetic weights."""
    home = tmp_path_factory.mktemp("bench-home")
    out = home / "result.json"
    proc = bench(["--quick", "--json", str(out), "--markdown", str(home / "result.md"),
                  "--plots", str(home / "plots"), "--no-progress"], home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text()), home


def test_quick_json_schema(quick_run):
    _, result, _ = quick_run
    assert result["schema"] == "sfpn-edge-bench/1"
    assert {"cpu_model", "logical_cpus", "features", "libraries", "python"} <= set(result["machine"])
    assert result["model"]["kind"] == "synthetic"
    assert "latency and memory only" in result["model"]["label"]
    assert result["settings"]["quick"] is True and result["settings"]["cfp_root"] is None
    rows = result["rows"]
    assert all(MODEL_KEYS <= set(r) for r in rows)
    # the baseline first, then every backend x precision, measured or with a reason
    base, *rows = rows
    assert base["baseline"] is True and base["label"] == "ONNX Runtime, default session"
    assert (base["backend"], base["precision"], base["threads"], base["status"]) == ("onnxruntime", "fp32", None, "ok")
    assert base["describe"]["session"] == "default SessionOptions" and base["describe"]["intra_op_num_threads"] == 0
    assert not any(r.get("baseline") for r in rows)
    assert {(r["backend"], r["precision"]) for r in rows} == {
        (b, p) for b in configs.backends() for p in configs.PRECISIONS}
    assert "native" in configs.backends()
    assert {r["reason"] for r in rows if r["backend"] == "native" and r["precision"] != "int8"} == {
        "native offers int8 only"}
    for r in rows:
        assert r["status"] in ("ok", "not available", "failed")
        if r["status"] != "ok":
            assert r["reason"] and r["threads"] is None or r["status"] == "failed"
    assert not [r for r in rows if r["status"] == "failed"], rows


def test_quick_values_are_measurements(quick_run):
    _, result, _ = quick_run
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    assert {(r["backend"], r["precision"], r["threads"]) for r in ok} >= {
        ("onnxruntime", "fp32", 1), ("openvino", "fp32", 1), ("openvino", "fp16", 1),
        ("native", "int8", 1), ("native", "int8", 2)}  # the bench builds the native plan with the int8 models
    for r in ok:
        for key in MEASURED:
            assert isinstance(r[key], float) and r[key] > 0, (key, r)
        assert r["p95_ms"] >= r["p50_ms"]
        assert r["throughput_fps"] >= 1e3 / r["p50_ms"] * 0.999  # best batch is at least batch 1
        assert 20 < r["peak_rss_mb"] < 4000  # the native engine needs no runtime library: ~45 MB
        assert 0.5 < r["model_size_mb"] < 10  # 694k parameters: ~2.8 MB fp32, ~1.4 MB fp16
        assert r["cold_start_s"] < 60
        assert "cfp_fp_accuracy" not in r  # synthetic weights: no accuracy
    fp32 = [r for r in ok if r["precision"] == "fp32"]
    assert all(r["cosine_vs_fp32"] > 0.9999 for r in fp32)  # same arithmetic, other backend / threads
    fp16 = [r for r in ok if r["precision"] == "fp16"]
    assert fp16 and all(r["model_size_mb"] < 0.6 * fp32[0]["model_size_mb"] for r in fp16)
    native = [r for r in ok if r["backend"] == "native"]
    assert all(r["model"] == "model_native_int8.npz" and r["model_size_mb"] < 0.4 * fp32[0]["model_size_mb"]
               and r["cosine_vs_fp32"] > 0.99 and r["describe"]["isa"] in r["note"] for r in native)
    # every row's speed-up is the baseline's p50 over its own
    (base,) = [r for r in ok if r.get("baseline")]
    assert base["speedup_vs_baseline"] == 1.0
    for r in ok:
        assert r["speedup_vs_baseline"] == pytest.approx(base["p50_ms"] / r["p50_ms"])
    # winners point at real values of measured rows
    for key, value in result["winners"].items():
        assert value in [r.get(key) for r in ok]
    assert result["winners"]["p50_ms"] == min(r["p50_ms"] for r in ok)
    assert result["winners"]["speedup_vs_baseline"] == max(r["speedup_vs_baseline"] for r in ok)


def test_quick_speed_target_is_computed_from_the_rows(quick_run):
    _, result, _ = quick_run
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    target = result["speed_target"]
    int8 = [r for r in ok if r["precision"] == "int8"]
    best = min((r for r in int8 if r["threads"] == 1), key=lambda r: r["p50_ms"])
    assert target["best_int8_1_thread"] == {k: best[k] for k in ("backend", "threads", "p50_ms", "speedup_vs_baseline")}
    assert target["baseline_p50_ms"] == next(r["p50_ms"] for r in ok if r.get("baseline"))
    assert target["latency_met"] is (best["p50_ms"] <= 1.0)
    assert target["speedup_met"] is (max(r["speedup_vs_baseline"] for r in int8) >= 2.0)
    assert target["met"] is (target["latency_met"] and target["speedup_met"])
    assert target["text"].endswith(" MET") and (" NOT MET" in target["text"]) is (not target["met"])
    assert f"{best['backend']} int8 x1 {best['p50_ms']:.2f} ms/face" in target["text"]


def test_quick_stages_rows(quick_run):
    _, result, _ = quick_run
    names = {s["stage"] for s in result["stages"]}
    assert names == {"align", "score", "detect", "verify", "watch"}
    for s in result["stages"]:
        assert s["status"] in ("ok", "not available"), s
        if s["status"] == "ok":
            assert s["p50_ms"] > 0 and s["p95_ms"] >= s["p50_ms"] and s["unit"].startswith("per ")
        else:
            assert s["reason"]


def test_quick_outputs(quick_run):
    proc, result, home = quick_run
    assert "synthetic weights: latency and memory only" in proc.stdout
    assert "AMD" in proc.stdout or result["machine"]["cpu_model"] in proc.stdout
    for r in result["rows"]:
        assert r["backend"] in proc.stdout
    markdown = (home / "result.md").read_text()
    assert markdown.count("| onnxruntime |") >= 1 and "**" in markdown
    assert "| ONNX Runtime, default session | fp32 | default |" in markdown and "| native | int8 | 1 |" in markdown
    assert "vs ORT default" in markdown and "| 1.00x |" in markdown
    for text in (" ".join(markdown.split()), " ".join(proc.stdout.split())):  # the plain table wraps at 80
        assert f"Speed target (issue 5), measured on this machine ({result['machine']['cpu_model']}" in text
        assert f"other machines differ): {result['speed_target']['text']}" in text
    for name in ("latency.png", "latency_vs_accuracy.png"):
        data = (home / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_authors_mat_converted_on_the_fly(dwc_mat, tmp_path):
    proc = bench(["--quick", "--weights", str(dwc_mat), "--backends", "onnxruntime", "--precisions", "fp32",
                  "--threads", "1", "--stages", "none", "--no-progress", "--json", str(tmp_path / "r.json")],
                 tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["model"]["kind"] == "authors" and "authors' trained weights" in result["model"]["label"]
    assert (tmp_path / "bench").is_dir()  # converted into the cache, reused next time
    base, row = result["rows"]
    assert base["baseline"] and row["status"] == base["status"] == "ok" and row["p50_ms"] > 0
    assert row["speedup_vs_baseline"] == pytest.approx(base["p50_ms"] / row["p50_ms"])


@pytest.mark.parametrize("args, message", [
    (["--weights", "/nonexistent/model"], "expected a converted model directory or a MATLAB .mat"),
    (["--backends", "tensorflow"], "unknown backend tensorflow"),
    (["--precisions", "fp8"], "unknown precision fp8"),
    (["--threads", "0"], "--threads takes positive integers"),
    (["--stages", "everything"], "unknown stage everything"),
    (["--cfp-root", "/nonexistent"], "not a CFP dataset"),
])
def test_bad_input_is_one_line_exit_2(args, message, tmp_path):
    proc = bench(args, tmp_path, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_parse_helpers():
    assert configs.parse_list("int8,fp32,int8", configs.PRECISIONS, "precision") == ("int8", "fp32")
    assert configs.parse_list(None, configs.backends(), "backend") == configs.backends()
    assert configs.parse_threads("2,1") == (2, 1)
    with pytest.raises(SfpnError):
        configs.parse_threads("two")
    assert configs.unsupported_reason("onnxruntime", "fp16").startswith("onnxruntime offers")
    assert configs.unsupported_reason("native", "fp32") == "native offers int8 only"


def test_candidates_without_a_native_plan(model_dir):
    """A converted but not quantized directory: the native row is skipped with the reason."""
    (row,) = configs.model_candidates(model_dir, ["native"], ["int8"], [1, 2])
    assert not row.available and row.threads is None and "no model for backend 'native'" in row.reason
    base = configs.baseline_candidate(model_dir)
    assert base.available and base.baseline and base.model.name == "model.onnx"
    assert base.label == "ONNX Runtime, default session"


def test_no_baseline_flag_and_missing_native_plan(model_dir, tmp_path):
    proc = bench(["--quick", "--weights", str(model_dir), "--backends", "native", "--precisions", "int8",
                  "--stages", "none", "--no-baseline", "--no-progress", "--json", str(tmp_path / "r.json")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    (row,) = result["rows"]
    assert row["status"] == "not available" and "no model for backend 'native'" in row["reason"]
    assert result["speed_target"]["met"] is None
    assert result["speed_target"]["text"] == "speed target not evaluated: no measured baseline row in this run"


def test_litert_rows_and_a_peer_tflite(model_dir, tmp_path):
    """litert rows beside the others, and --peer-tflite: another face .tflite timed on the same harness."""
    pytest.importorskip("ai_edge_litert", reason="the litert extra is not installed")
    from sfpn_edge.converters import tflite_export
    from sfpn_edge.converters.layergraph import build_graph
    from sfpn_edge.converters.synthetic import synthetic_layergraph

    peer = tmp_path / "peerface.tflite"
    peer.write_bytes(tflite_export.to_tflite(tflite_export.lower(build_graph(synthetic_layergraph("base",
                                                                                                   input_size=97)))))
    proc = bench(["--quick", "--weights", str(model_dir), "--backends", "onnxruntime,litert", "--precisions",
                  "fp32,fp16", "--threads", "1", "--stages", "none", "--peer-tflite", str(peer), "--no-progress",
                  "--json", str(tmp_path / "r.json")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    litert = {r["precision"]: r for r in rows if r["backend"] == "litert" and not r.get("peer")}
    assert litert["fp32"]["status"] == litert["fp16"]["status"] == "ok"
    assert litert["fp32"]["cosine_vs_fp32"] > 0.9999 and litert["fp16"]["cosine_vs_fp32"] > 0.9999
    assert litert["fp32"]["note"] == "XNNPACK on (1 delegated partition)"
    (row,) = [r for r in rows if r.get("peer")]
    assert row["status"] == "ok" and row["label"] == "peer peerface.tflite (litert)" and row["precision"] == "peer"
    assert row["p50_ms"] > 0 and row["peak_rss_mb"] > 0 and "latency and memory only" in row["note"]
    assert "cosine_vs_fp32" not in row and row["describe"]["model"] == str(peer)
    (base,) = [r for r in rows if r.get("baseline")]                # timed against the same ORT default session
    assert row["speedup_vs_baseline"] == pytest.approx(base["p50_ms"] / row["p50_ms"])

    bad = bench(["--quick", "--peer-tflite", str(tmp_path / "missing.tflite"), "--no-progress"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("missing.tflite: not a .tflite file")
    assert bad.stderr.count("\n") == 1


def test_child_env_pins_threads_only(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "1048576")
    env = child_env(3)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["OPENBLAS_L2_SIZE"] == "1048576"


def test_time_calls_and_probe_batch():
    calls = []
    times = time_calls(lambda: calls.append(1), min_seconds=0.0, min_calls=7)
    assert len(times) == len(calls) == 7 and all(t >= 0 for t in times)
    a, b = probe_batch(4, (113, 113)), probe_batch(4, (113, 113))
    assert a.shape == (4, 3, 113, 113) and a.dtype.name == "float32" and (a == b).all()
    assert abs(float(a.mean())) < 15 and 30 < float(a.std()) < 90


def test_min_cosine_rows():
    import numpy as np

    x = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert min_cosine_rows(x, x * 3) == pytest.approx(1.0)
    assert min_cosine_rows(x, np.array([[1.0, 0.0], [2.0, 0.0]])) == pytest.approx(0.0)


def _result(rows, stages=()):
    return {
        "machine": {"cpu_model": "Test CPU", "logical_cpus": 2, "arch": "x86_64", "system": "Linux",
                    "features": ["avx2"], "python": "3.11", "libraries": {"numpy": "2"}},
        "model": {"label": "synthetic weights: latency and memory only", "origin": "test"},
        "settings": {"quick": True, "threads": [1, 2], "batches": []},
        "rows": list(rows), "stages": list(stages), "notes": ["a note"], "elapsed_s": 1.0,
    }


ROWS = [
    {"backend": "onnxruntime", "precision": "fp32", "threads": 1, "status": "ok", "p50_ms": 3.0, "p95_ms": 4.0,
     "throughput_fps": 333.0, "best_batch": 1, "cold_start_s": 0.5, "peak_rss_mb": 200.0, "model_size_mb": 2.8,
     "cosine_vs_fp32": 1.0},
    {"backend": "openvino", "precision": "int8", "threads": 1, "status": "ok", "p50_ms": 1.5, "p95_ms": 2.5,
     "throughput_fps": 600.0, "best_batch": 4, "cold_start_s": 0.9, "peak_rss_mb": 180.0, "model_size_mb": 0.9,
     "cosine_vs_fp32": 0.99},
    {"backend": "onnxruntime", "precision": "fp16", "threads": None, "status": "not available",
     "reason": "onnxruntime offers fp32/int8 only"},
]


def test_winners_per_column():
    best = report.winners(ROWS, report.MODEL_COLUMNS)
    assert best["p50_ms"] == 1.5 and best["throughput_fps"] == 600.0 and best["cold_start_s"] == 0.5
    assert best["peak_rss_mb"] == 180.0 and best["cosine_vs_fp32"] == 1.0
    assert "backend" not in best


def test_plain_and_markdown_rendering():
    text = report.render_text(_result(ROWS))
    assert "Test CPU" in text and "1.50*" in text and "3.00*" not in text
    assert "not available: onnxruntime offers fp32/int8 only" in text
    md = report.render_markdown(_result(ROWS))
    assert "| **1.50** |" in md.replace("  ", " ") and "CFP-FP" not in md
    with_acc = [dict(ROWS[0], cfp_ff_accuracy=95.9, cfp_fp_accuracy=86.7, cfp_fp_eer=13.1),
                dict(ROWS[1], cfp_ff_accuracy=95.8, cfp_fp_accuracy=86.9, cfp_fp_eer=13.0)]
    md = report.render_markdown(_result(with_acc))
    assert "CFP-FP %" in md and "**86.90**" in md and "**95.90**" in md


BASE = {"backend": "onnxruntime", "precision": "fp32", "threads": None, "baseline": True, "status": "ok",
        "label": "ONNX Runtime, default session", "p50_ms": 3.3, "p95_ms": 4.0}


def _int8(backend: str, threads: int, p50: float) -> dict:
    return {"backend": backend, "precision": "int8", "threads": threads, "status": "ok", "p50_ms": p50, "p95_ms": p50}


@pytest.mark.parametrize("rows, met, verdict", [
    ([BASE, _int8("native", 1, 0.9), _int8("native", 2, 0.5), _int8("openvino", 1, 2.0)], True,
     "best int8: native int8 x2 0.50 ms/face, 6.60x vs default ORT (3.30 ms/face); at 1 thread: native int8 x1 "
     "0.90 ms/face, 3.67x; target (<= 1 ms/face at 1 thread: met; >= 2x: met) MET"),
    ([BASE, _int8("native", 1, 1.2)], False, "(<= 1 ms/face at 1 thread: NOT met; >= 2x: met) NOT MET"),
    ([BASE, _int8("openvino", 1, 1.8), _int8("openvino", 2, 0.9)], False,
     "at 1 thread: openvino int8 x1 1.80 ms/face, 1.83x; target (<= 1 ms/face at 1 thread: NOT met; >= 2x: met)"),
    ([BASE, _int8("openvino", 1, 1.8), _int8("openvino", 2, 1.7)], False,
     "target (<= 1 ms/face at 1 thread: NOT met; >= 2x: NOT met) NOT MET"),
    ([dict(BASE, p50_ms=1.5), _int8("native", 1, 0.95)], False, "(<= 1 ms/face at 1 thread: met; >= 2x: NOT met)"),
    ([BASE, _int8("native", 2, 0.5)], None, "speed target not evaluated: no int8 row at 1 thread"),
    ([dict(BASE, status="failed"), _int8("native", 1, 0.5)], None, "no measured baseline row"),
    ([BASE, dict(_int8("native", 1, 0.5), status="not available")], None, "no measured int8 row"),
])
def test_speed_target_verdict(rows, met, verdict):
    rows = [dict(r) for r in rows]
    baseline.add_speedups(rows)
    target = baseline.speed_target(rows)
    assert target["met"] is met and verdict in target["text"]
    if met is not None:
        assert target["latency_met"] is (target["best_int8_1_thread"]["p50_ms"] <= 1.0)


def test_baseline_row_rendering():
    rows = [dict(r) for r in [BASE, _int8("native", 1, 1.65)]]
    baseline.add_speedups(rows)
    result = dict(_result(rows), speed_target=baseline.speed_target(rows))
    md = report.render_markdown(result)
    assert "| ONNX Runtime, default session | fp32 | default | 3.30 | 1.00x |" in md
    assert "| native | int8 | 1 | **1.65** | **2.00x** |" in md
    assert ("**Speed target (issue 5), measured on this machine (Test CPU, 2 logical CPUs; other machines "
            "differ): best int8: native int8 x1 1.65 ms/face, 2.00x") in md
    text = report.render_text(result)
    assert "ONNX Runtime, default session" in text and "2.00x*" in text and "NOT MET" in text


def _wide_result() -> dict:
    """A full run's shape: baseline, measured rows with accuracy, an unavailable row, stages."""
    rows = [dict(r, cfp_ff_accuracy=96.57, cfp_fp_accuracy=87.43, cfp_fp_eer=12.9) for r in [BASE, *ROWS[:2]]]
    rows += [dict(ROWS[2], reason="onnxruntime offers fp32/int8 only; " * 4), _int8("native", 1, 0.97)]
    baseline.add_speedups(rows)
    stages = [{"stage": "warp", "impl": "sfpn_edge.kernels.warp", "status": "ok", "p50_ms": 0.0412, "p95_ms": 0.05,
               "unit": "face", "speedup": 3.1, "workload": "113x113 crops from a 640x480 image, batch 8"}]
    return dict(_result(rows, stages), speed_target=baseline.speed_target(rows))


@pytest.mark.parametrize("width", [80, 120])
def test_compact_table_fits_the_width_and_wide_has_every_column(width):
    from rich.console import Console
    import io

    result = _wide_result()
    text = report.render_text(result, width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "ms/face" in text and "vs ORT" in text and "not available: onnxruntime offers" in text
    assert "measured on this machine (Test CPU, 2 logical CPUs" in " ".join(text.split())
    buf = io.StringIO()
    report.render_rich(result, Console(file=buf, width=width))
    assert max(len(line) for line in buf.getvalue().splitlines()) <= width and "ms/face" in buf.getvalue()
    wide = report.render_text(result, wide=True)
    assert all(c.header in wide for c in report.MODEL_COLUMNS + report.ACCURACY_COLUMNS + report.STAGE_COLUMNS)
    assert max(len(line) for line in wide.splitlines()) > 120  # --wide: every column, lines not folded
    if width == 120:  # more room, more columns
        assert len(text.splitlines()[7]) > len(report.render_text(result, width=80).splitlines()[7])


def test_progress_lines_when_stderr_is_not_a_terminal(capsys):
    from sfpn_edge.bench.progress import Progress

    progress = Progress(2, enabled=True)  # rich is installed, but stderr is captured: lines, not a bar
    assert progress.step("first", lambda: {"ok": 1}) == {"ok": 1}
    progress.step("second", dict)
    progress.close()
    assert capsys.readouterr().err == "[1/2] first\n[2/2] second\n"


def test_rich_missing_falls_back_to_plain(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_rich(name, *args, **kwargs):
        if name == "rich" or name.startswith("rich."):
            raise ImportError("No module named 'rich'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rich)
    report.render(_result(ROWS))
    out = capsys.readouterr().out
    assert "1.50*" in out and "(* best in column)" in out


@pytest.fixture(scope="module")
def mini_cfp(cfp_root, tmp_path_factory) -> Path:
    """A CFP-layout tree of 12 subjects (symlinks to the real images), 10 folds of 4+4 pairs."""
    root = tmp_path_factory.mktemp("mini-cfp")
    subjects, n_front, n_prof = 12, 3, 2
    lists = {"F": [], "P": []}
    for s in range(1, subjects + 1):
        for pose, n, key in (("frontal", n_front, "F"), ("profile", n_prof, "P")):
            for i in range(1, n + 1):
                rel = Path("Data", "Images", f"{s:03d}", pose, f"{i:02d}.jpg")
                for kind, ext in ((rel, ".jpg"), (Path("Data", "Fiducials", f"{s:03d}", pose, f"{i:02d}.txt"), ".txt")):
                    (root / kind).parent.mkdir(parents=True, exist_ok=True)
                    (root / kind).symlink_to(cfp_root / kind)
                lists[key].append(f"../{rel.as_posix()}")
    (root / "Protocol").mkdir()
    for key, items in lists.items():
        (root / "Protocol" / f"Pair_list_{key}.txt").write_text(
            "".join(f"{i} {p}\n" for i, p in enumerate(items, 1)))
    for proto, n_second in (("FF", n_front), ("FP", n_prof)):
        for fold in range(1, 11):
            d = root / "Protocol" / "Split" / proto / f"{fold:02d}"
            d.mkdir(parents=True)
            s = (fold - 1) % subjects
            same = [(s * n_front + 1, s * n_second + (2 if proto == "FF" else 1)),
                    (s * n_front + 2, s * n_second + (3 if proto == "FF" else 2))]
            t = (s + 5) % subjects
            diff = [(s * n_front + 1, t * n_second + 1), (s * n_front + 3, t * n_second + 2)]
            d.joinpath("same.txt").write_text("".join(f"{a},{b}\n" for a, b in same))
            d.joinpath("diff.txt").write_text("".join(f"{a},{b}\n" for a, b in diff))
    return root


def test_accuracy_fanout_matches_each_backend(model_dir, mini_cfp):
    from sfpn_edge.bench.accuracy import cfp

    result = cfp({"model_dir": str(model_dir), "threads": 1, "cfp_root": str(mini_cfp),
                  "configs": [["onnxruntime", "fp32"], ["openvino", "fp32"], ["onnxruntime", "fp16"]]})
    assert 20 < result["images"] <= 12 * 5 and result["unusable_images"] == 0  # images used by pairs
    rows = result["results"]
    assert rows["onnxruntime/fp16"]["status"] == "not available"
    ort, ov = rows["onnxruntime/fp32"], rows["openvino/fp32"]
    for key in ("cfp_ff_accuracy", "cfp_fp_accuracy", "cfp_ff_eer", "cfp_fp_eer"):
        assert 0 <= ort[key] <= 100 and ort[key] == pytest.approx(ov[key], abs=1e-6)  # same arithmetic
    assert ort["cfp_ff_accuracy"] >= 75  # trained weights on real frontal pairs


def test_full_run_adds_accuracy_columns(model_dir, mini_cfp, tmp_path):
    proc = bench(["--weights", str(model_dir), "--cfp-root", str(mini_cfp), "--backends", "onnxruntime",
                  "--precisions", "fp32,fp16", "--threads", "1", "--stages", "none", "--no-progress",
                  "--json", str(tmp_path / "r.json")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["settings"]["cfp_root"] == str(mini_cfp) and result["settings"]["quick"] is False
    ok = [r for r in result["rows"] if r["status"] == "ok" and not r.get("baseline")]
    assert len(ok) == 1 and 0 < ok[0]["cfp_fp_accuracy"] <= 100 and 0 <= ok[0]["cfp_fp_eer"] <= 100
    base = next(r for r in result["rows"] if r.get("baseline"))
    assert "cfp_fp_accuracy" not in base  # the same model.onnx as the ORT fp32 row: evaluated once, there
    assert "FP %" in proc.stdout and any("accuracy: CFP 10-fold" in n for n in result["notes"])  # compact header
