"""``python -m sfpn_edge.bench``: which backend, precision and thread count is best on this machine?

With no arguments it measures every available backend x precision x {1, 2} threads on the
default model (trained weights when found, else synthetic ones), each in a fresh process, next to
a baseline (ONNX Runtime's default session on the fp32 model) that every row's speed-up is
computed against, adds CFP accuracy when the CFP set is found, times the pipeline stages, and
prints one table with the best value of each column highlighted plus issue 5's speed-target verdict.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

from sfpn_edge.bench import baseline, configs, emulated, model_source, report
from sfpn_edge.bench.measure import min_cosine_rows, run_child
from sfpn_edge.bench.progress import Progress
from sfpn_edge.bench.stages import STAGES
from sfpn_edge.errors import SfpnError

SCHEMA = "sfpn-edge-bench/1"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sfpn_edge.bench",
        description="Compare backends x precisions x thread counts for SqueezeFacePoseNet on this machine: "
                    "latency, throughput, cold start, peak memory, model size and (with CFP) accuracy.",
    )
    p.add_argument("--quick", action="store_true", help="short measurements, no accuracy (< 1 minute)")
    p.add_argument("--weights", metavar="PATH",
                   help=f"model directory or the authors' .mat (default: ${model_source.ENV}, then the cache, "
                        "then synthetic weights)")
    p.add_argument("--cfp-root", metavar="DIR",
                   help="CFP dataset root for accuracy (default: $SFPN_SHARED/data/cfp or ../shared/data/cfp)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the CFP accuracy columns")
    p.add_argument("--backends", metavar="LIST", help=f"comma list from {','.join(configs.backends())}")
    p.add_argument("--precisions", metavar="LIST", help=f"comma list from {','.join(configs.PRECISIONS)}")
    p.add_argument("--threads", metavar="LIST", help="comma list of thread counts (default 1,2)")
    p.add_argument("--no-baseline", action="store_true",
                   help=f"skip the '{configs.BASELINE_LABEL}' row (plain InferenceSession on the fp32 model, "
                        "default options) that the speed-up column and the speed target are computed against")
    p.add_argument("--peer-tflite", metavar="FILE", action="append", default=[],
                   help="also time this face .tflite (e.g. MobileFaceNet) on the litert backend, labelled as a "
                        "peer: latency and memory only (repeatable)")
    p.add_argument("--stages", metavar="LIST", default=",".join(STAGES),
                   help=f"pipeline stages to time, comma list from {','.join(STAGES)}, or 'none'")
    p.add_argument("--json", metavar="FILE", help="write the full result as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress on stderr (a bar on a terminal, else one line per step)")
    p.add_argument("--wide", action="store_true",
                   help="every column in the table (default: the columns that fit the terminal, 80 at least)")
    p.add_argument("--emulate-arm", metavar="FILE",
                   help="add the Raspberry Pi estimates (rows marked emulated) from a tools/arm64-cost report")
    return p


def shared_path(*parts: str) -> Optional[Path]:
    """``$SFPN_SHARED/...`` or ``../shared/...`` relative to the working directory, if it exists."""
    base = Path(os.environ.get("SFPN_SHARED") or Path.cwd().parent / "shared")
    path = base.joinpath(*parts)
    return path if path.exists() else None


def cfp_root(arg: Optional[str]) -> Optional[Path]:
    if arg is None:
        return shared_path("data", "cfp")
    root = Path(arg).expanduser()
    if not (root / "Protocol").is_dir() or not (root / "Data").is_dir():
        raise SfpnError(f"--cfp-root {root}: not a CFP dataset (expected Data/ and Protocol/ inside)")
    return root


def file_size_mb(path: Path) -> float:
    """Size on disk of a model file, with its OpenVINO weights (.bin) when it is an IR."""
    size = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        size += path.with_suffix(".bin").stat().st_size
    return size / 1e6


def model_rows(candidates: Sequence[configs.Candidate], source: model_source.ModelSource,
               settings: configs.Settings, progress: Progress, workdir: Path) -> List[dict]:
    import numpy as np

    manifest_size = source.as_dict()["input_size"]
    rows = []
    for i, cand in enumerate(candidates):
        row = {"backend": cand.backend, "precision": cand.precision, "threads": cand.threads}
        if cand.baseline or cand.peer:
            row.update(label=cand.label, **({"baseline": True} if cand.baseline else {"peer": True}))
        if not cand.available:
            rows.append({**row, "status": "not available", "reason": cand.reason})
            continue
        out = workdir / f"probe-{i}.npy"
        spec = {"kind": "model", "backend": cand.backend, "precision": cand.precision, "threads": cand.threads,
                "baseline": cand.baseline, "model": str(cand.model), "input_size": manifest_size,
                "settings": settings.as_dict(), "output": str(out)}
        if cand.peer:   # another model: its own input, no descriptors compared with ours
            spec.update(peer=True, precision="fp32", input_size=None, output=None)
        result = progress.step(f"{cand.label}", lambda: run_child(spec))
        row.update(result, model=cand.model.name, model_size_mb=file_size_mb(cand.model))
        described = result.get("describe", {})
        if cand.baseline:
            row["note"] = "reference for the speed-up column: default SessionOptions, threads chosen by ORT"
        elif cand.peer:
            row["note"] = f"peer model (not SqueezeFacePoseNet): latency and memory only; XNNPACK " \
                          f"{described.get('xnnpack', '?')}"
        elif described.get("xnnpack"):
            row["note"] = f"XNNPACK {described['xnnpack']}"
        elif described.get("isa"):  # the native engine: which kernels, how many threads per face
            per_face = f", {described['engine_threads']} thread(s) per face" if "engine_threads" in described else ""
            row["note"] = f"{described['isa']} kernels{per_face}"
        if out.is_file():
            row["probe"] = out
        rows.append(row)
    reference = next((r["probe"] for r in rows if r.get("probe") and r["precision"] == "fp32"), None)
    for row in rows:
        probe = row.pop("probe", None)
        if probe is not None and reference is not None:
            row["cosine_vs_fp32"] = min_cosine_rows(np.load(probe), np.load(reference))
    return rows


def add_accuracy(rows: List[dict], source: model_source.ModelSource, root: Path, progress: Progress) -> List[str]:
    """CFP-FF/FP accuracy of every measured backend x precision, in one child (one decode pass).

    Threads do not change the arithmetic, so each backend x precision is evaluated once (at the
    largest thread count) and its numbers go to all its rows. Returns report notes.
    """
    measured = [r for r in rows if r.get("status") == "ok" and not r.get("baseline")  # baseline: same file as ORT fp32
                and not r.get("peer")]
    configs_ok = list(dict.fromkeys((r["backend"], r["precision"]) for r in measured))
    if not configs_ok:
        return []
    spec = {"kind": "accuracy", "model_dir": str(source.model_dir), "configs": configs_ok,
            "threads": max(r["threads"] for r in measured), "cfp_root": str(root)}
    acc = progress.step(f"CFP accuracy ({len(configs_ok)} configurations)", lambda: run_child(spec, timeout=3600))
    if acc.get("status") != "ok":
        return [f"accuracy {acc.get('status')}: {acc.get('reason', '')}"]
    for row in rows:
        result = acc["results"].get(f"{row['backend']}/{row['precision']}")
        if result is None or row.get("baseline"):
            continue
        if result["status"] == "ok":
            row.update({k: v for k, v in result.items() if k.startswith("cfp_")})
        else:
            row["note"] = f"accuracy {result['status']}: {result['reason']}"
    return [f"accuracy: CFP 10-fold, fiducial crop (landmark box + 30 %), {acc['images']:,} images "
            f"({acc['unusable_images']} unusable), once per backend x precision"]


def stage_rows(names: Sequence[str], source: model_source.ModelSource, root: Optional[Path],
               settings: configs.Settings, progress: Progress) -> List[dict]:
    rows = []
    examples = shared_path("models", "squeezefaceposenet")
    for name in names:
        spec = {"kind": "stage", "name": name, "threads": 1, "settings": settings.as_dict(),
                "model_dir": str(source.model_dir), "cfp_root": str(root) if root else None,
                "examples_dir": str(examples) if examples else None}
        result = progress.step(f"stage {name}", lambda: run_child(spec))
        if result.get("status") != "ok":
            rows.append({"stage": name, "status": result.get("status"), "reason": result.get("reason", "")})
            continue
        stage = result["results"]
        rows += [{"stage": name, "status": "ok", "workload": stage["workload"], "unit": stage["unit"], **r,
                  "peak_rss_mb": result["peak_rss_mb"]} for r in stage["rows"]]
    _speedups(rows)
    return rows


def _speedups(rows: List[dict]) -> None:
    """Each of our rows gets reference p50 / our p50 from the reference row that follows it."""
    for ours, ref in zip(rows, rows[1:]):
        if ref.get("reference") and not ours.get("reference") and ours.get("status") == "ok":
            ours["speedup"] = ref["p50_ms"] / ours["p50_ms"]
            ref["note"] = f"reference for {ours['impl']}"
    for row in rows:
        if "max_abs_diff" in row:
            row["note"] = f"max |diff| vs reference {row['max_abs_diff']:.2g}"
        if "faces_found" in row:
            row["note"] = f"faces found {row['faces_found']}"


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    settings = configs.QUICK if args.quick else configs.FULL
    backends = configs.parse_list(args.backends, configs.backends(), "backend")
    precisions = configs.parse_list(args.precisions, configs.PRECISIONS, "precision")
    threads = configs.parse_threads(args.threads)
    stages = () if args.stages.strip() == "none" else configs.parse_list(args.stages, STAGES, "stage")
    root = cfp_root(args.cfp_root)
    peers = [c for peer in args.peer_tflite for c in configs.peer_candidates(Path(peer), threads)]  # checked first
    source = model_source.resolve(args.weights, root, progress=not args.no_progress)
    candidates = configs.model_candidates(source.model_dir, backends, precisions, threads) + peers
    if not args.no_baseline:
        candidates.insert(0, configs.baseline_candidate(source.model_dir))

    notes = list(source.notes)
    measure_accuracy = not args.no_accuracy and not args.quick and source.trained and root is not None
    if source.kind == "synthetic":
        notes.append(f"{model_source.SYNTHETIC_LABEL}: accuracy is not measured; run `sfpn-edge fetch-weights` "
                     "or pass --weights for trained weights")
    elif args.no_accuracy or args.quick:
        notes.append("accuracy skipped (" + ("--quick" if args.quick else "--no-accuracy") + ")")
    elif root is None:
        notes.append("accuracy skipped: CFP not found (give --cfp-root DIR or set SFPN_SHARED)")
    n_models = sum(c.available for c in candidates)
    progress = Progress(n_models + int(measure_accuracy) + len(stages), enabled=not args.no_progress)
    try:
        with tempfile.TemporaryDirectory(prefix="sfpn-bench-") as tmp:
            rows = model_rows(candidates, source, settings, progress, Path(tmp))
        baseline.add_speedups(rows)
        if measure_accuracy:
            notes += add_accuracy(rows, source, root, progress)
        stage_results = stage_rows(stages, source, root, settings, progress)
    finally:
        progress.close()
    notes += [
        "latency: batch 1 after warm-up, median (p50) and 95th percentile per face; faces/s at the best batch size",
        "cold start: import + load + first inference in a fresh process (no compiled-model cache); "
        "peak RSS: whole process after load + batch-1 inference, one process per row",
        "cos vs fp32: lowest cosine between this row's descriptors and the first fp32 row's on a fixed probe batch",
    ]
    if not args.no_baseline:
        notes.append(f"vs ORT default: batch-1 p50 of the '{configs.BASELINE_LABEL}' row (InferenceSession("
                     "model.onnx), default SessionOptions, CPUExecutionProvider) / this row's p50; rows run one "
                     "after another, so load on a shared machine moves the ratios")
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": ["python", "-m", "sfpn_edge.bench", *sys.argv[1:]],
        "machine": machine_facts(),
        "model": source.as_dict(),
        "settings": {"quick": args.quick, "threads": list(threads), **settings.as_dict(),
                     "cfp_root": str(root) if measure_accuracy else None},
        "rows": rows,
        "stages": stage_results,
        "winners": report.winners(rows, report.MODEL_COLUMNS + report.ACCURACY_COLUMNS),
        "speed_target": baseline.speed_target(rows),
        "notes": notes,
        "emulated_arm": emulated.load(Path(args.emulate_arm)) if args.emulate_arm else None,
        "elapsed_s": time.perf_counter() - started,
    }


def machine_facts() -> dict:
    from sfpn_edge.bench.machine import facts

    return facts()


def write_outputs(result: dict, args: argparse.Namespace) -> None:
    from sfpn_edge.cache import atomic_write_bytes

    if args.json:
        atomic_write_bytes(Path(args.json), (json.dumps(result, indent=2) + "\n").encode())
    if args.markdown:
        atomic_write_bytes(Path(args.markdown), report.render_markdown(result).encode())
    if args.plots:
        from sfpn_edge.bench import plots

        for path in plots.write_all(result, Path(args.plots)):
            print(f"plot: {path}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
        report.render(result, wide=args.wide)
        if result["emulated_arm"]:
            print("\n" + "\n".join(emulated.lines(result["emulated_arm"])))
        write_outputs(result, args)
    except SfpnError as exc:
        print(f"sfpn_edge.bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sfpn_edge.bench: interrupted", file=sys.stderr)
        return 130
    failed = [r for r in result["rows"] + result["stages"] if r.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
