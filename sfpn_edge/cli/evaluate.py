"""``sfpn-edge eval cfp|pairs``: verification accuracy on CFP or an LFW-style pairs file."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from sfpn_edge.cli.common import add_detector_options, add_model_options, make_detector, make_embedder
from sfpn_edge.errors import SfpnError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="measure verification accuracy on CFP or an LFW-style pairs file",
        description="Embed every image of a verification protocol once, score its pairs by cosine "
                    "and report 10-fold accuracy (threshold chosen on the other folds), EER, AUC and "
                    "TAR at FAR 1e-2 / 1e-3, optionally with ROC/DET/histogram plots.",
    )
    sub = parser.add_subparsers(dest="protocol_kind", metavar="PROTOCOL")
    sub.required = True

    cfp = sub.add_parser(
        "cfp", help="Celebrities in Frontal-Profile (official layout)",
        description="CFP frontal-frontal (FF) and frontal-profile (FP) verification, 10 folds of "
                    "350 same + 350 different pairs, read from the official layout "
                    "(ROOT/Data/Images, ROOT/Data/Fiducials, ROOT/Protocol).")
    cfp.add_argument("--root", type=Path, required=True, metavar="DIR", help="CFP folder holding Data/ and Protocol/")
    cfp.add_argument("--protocol", type=str.upper, choices=("FF", "FP", "BOTH"), default="BOTH",
                     help="FF, FP or both (default: both; shared images are embedded once)")
    cfp.add_argument("--folds", type=_fold_list, default=None, metavar="LIST",
                     help="comma-separated subset of folds 1..10 (default: all; at least 2 for accuracy)")
    per_fold = cfp.add_argument_group("per-fold calibration (the honest protocol)")
    per_fold.add_argument("--calibrate-per-fold", choices=("center", "pca", "wccn", "lda"), metavar="METHOD",
                          help="for each test fold, fit a calibration (center, pca, wccn, lda) on all CFP "
                               "images of the other folds' identities only, then threshold as usual")
    per_fold.add_argument("--cal-dim", type=int, default=None, metavar="D",
                          help="calibrated dimensions (default: pca 256, lda 128)")
    per_fold.add_argument("--pca-dim", type=int, default=None, metavar="D",
                          help="PCA dimensions before wccn/lda (default: 256)")
    per_fold.add_argument("--shrinkage", type=float, default=None, metavar="S",
                          help="within-identity covariance shrinkage 0..1 (default: lda 0.5, wccn 0.1)")
    _add_common(cfp, default_crop="fiducials")

    pairs = sub.add_parser(
        "pairs", help="an LFW-style pairs.txt",
        description="Pairs file in the LFW format: a 'folds n' header, then per fold n lines "
                    "'name i j' (same person) and n lines 'name1 i name2 j' (different people); "
                    "images at ROOT/name/name_XXXX.jpg.")
    pairs.add_argument("--root", type=Path, required=True, metavar="DIR", help="image root (one folder per person)")
    pairs.add_argument("--pairs", type=Path, required=True, metavar="FILE", help="the pairs file")
    pairs.add_argument("--ext", default=".jpg", help="image file extension (default: .jpg)")
    _add_common(pairs, default_crop="detect")


def _add_common(parser: argparse.ArgumentParser, default_crop: str) -> None:
    group = parser.add_argument_group("cropping")
    group.add_argument("--crop", choices=("fiducials", "full", "detect"), default=default_crop,
                       help="face box from the dataset's landmarks, the whole image resized, or the "
                            f"--detector (default: {default_crop})")
    group.add_argument("--margin", type=float, default=None,
                       help="box enlargement: square of side max(w, h) * (1 + margin) (default: 0.3 for "
                            "fiducials, the model's crop_margin for detect)")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                       help="also embed the mirrored crop and sum the descriptors (flip test-time augmentation; "
                            "off unless asked here, so each measurement says which; verify flips by default)")
    add_detector_options(group)
    group.add_argument("--calibration", type=Path, metavar="DIR",
                       help="apply the calibration stored in DIR (a calibrated model directory or a "
                            "`calibrate --out` directory); default: none, raw descriptors")
    add_model_options(parser, auto=False)
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, metavar="FILE",
                     help="write all metrics, the configuration and the model sha256 as JSON ('-' for stdout)")
    out.add_argument("--plots", type=Path, metavar="DIR",
                     help="write roc.png, det.png and per-protocol score histograms (needs matplotlib)")
    out.add_argument("--max-skipped", type=float, default=0.01, metavar="FRACTION",
                     help="fail when more than this fraction of a protocol's pairs has an unusable image "
                          "(default: 0.01); skipped pairs are always reported")
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=run)


def _fold_list(text: str) -> List[int]:
    try:
        folds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fold numbers, got {text!r}") from None
    if not folds:
        raise argparse.ArgumentTypeError("expected at least one fold number")
    return folds


def run(args: argparse.Namespace) -> int:
    from sfpn_edge import __version__
    from sfpn_edge.cache import sha256_file
    from sfpn_edge.detect.chain import DetectorChain
    from sfpn_edge.evaluate import protocols as P
    from sfpn_edge.evaluate.metrics import histogram
    from sfpn_edge.evaluate.runner import crop_spec, evaluate

    if not 0.0 <= args.max_skipped <= 1.0:
        raise SfpnError(f"--max-skipped must be a fraction in [0, 1], got {args.max_skipped}")
    if args.protocol_kind == "cfp":
        names = ("FF", "FP") if args.protocol == "BOTH" else (args.protocol,)
        protos = [P.load_cfp(args.root, name, args.folds) for name in names]
        source = {"root": str(args.root), "protocols": list(names), "folds": args.folds or list(P.CFP_FOLDS)}
    else:
        protos = [P.load_pairs(args.root, args.pairs, args.ext)]
        source = {"root": str(args.root), "pairs": str(args.pairs)}
        if args.crop == "fiducials":
            raise SfpnError("pairs files carry no landmarks: use --crop detect or --crop full")

    embedder = make_embedder(args)
    detector = make_detector(args, embedder) if args.crop == "detect" else None
    margin = None if args.crop == "full" else crop_spec(args.crop, embedder, args.margin, detector).margin
    show = not args.no_progress and sys.stderr.isatty()
    cpu_start = time.process_time()
    options = dict(crop=args.crop, margin=margin, flip=args.flip, detector=detector, threads=args.threads,
                   max_skipped=args.max_skipped, progress=_ProgressBar(sys.stderr) if show else None)
    calibration, calibration_report = _calibration(args, embedder.manifest)
    if getattr(args, "calibrate_per_fold", None):
        from sfpn_edge.evaluate.calibrate_fit import evaluate_cfp_per_fold

        emb, results = evaluate_cfp_per_fold(args.root, protos, embedder, method=args.calibrate_per_fold,
                                             dim=args.cal_dim, pca_dim=args.pca_dim, shrinkage=args.shrinkage,
                                             **options)
        calibration_report = {"protocol": "per-fold (fitted on the other folds' identities)",
                              "method": args.calibrate_per_fold,
                              **{k: v for r in results for k, v in r.metrics.pop("calibration_fits").items()}}
    else:
        emb, results = evaluate(protos, embedder, transform=calibration.apply if calibration else None, **options)

    weights = embedder.model.path
    report = {
        "command": f"eval {args.protocol_kind}",
        "sfpn_edge_version": __version__,
        "config": {
            **source,
            "crop": args.crop,
            "detector": getattr(detector, "name", None),
            "fallbacks": detector.describe()["fallbacks"] if isinstance(detector, DetectorChain) else {},
            "margin": margin,
            "flip": args.flip,
            "backend": embedder.backend,
            "precision": embedder.runtime.precision,
            "threads": args.threads,
            "model_dir": str(embedder.model_dir),
            "model_file": weights.name,
            "model_sha256": sha256_file(weights),
            "weights_sha256": embedder.manifest.get("source_sha256"),
            "calibration": calibration_report,
        },
        "images": {
            "total": len(emb.samples),
            "embedded": len(emb.samples) - len(emb.failures),
            "unusable": len(emb.failures),
            "seconds": round(emb.seconds, 3),
            "cpu_seconds": round(time.process_time() - cpu_start, 3),
            "face_sources": emb.face_sources,
            "found_by": emb.found_by,
        },
        "skipped": {
            "images": [{"path": str(emb.samples[i].path), "reason": why} for i, why in emb.failures.items()],
            "pairs": {r.name: r.skipped_pairs for r in results},
        },
        "results": {
            r.name: {**r.metrics, "skipped_pairs": r.skipped_pairs,
                     "histogram": histogram(r.scores, r.labels, bins=50)}
            for r in results
        },
    }
    if args.plots is not None:
        from sfpn_edge.evaluate.plots import save_plots

        report["plots"] = [str(p) for p in save_plots(
            {r.name: {"scores": r.scores, "labels": r.labels} for r in results}, args.plots)]
    _write_json(report, args.json)
    if args.json is None or str(args.json) != "-":
        print(format_report(report))
    return 0


def _calibration(args: argparse.Namespace, manifest: dict):
    """(Calibration or None, what the report records about it) from --calibration."""
    if args.calibration is None:
        return None, None
    if getattr(args, "calibrate_per_fold", None):
        raise SfpnError("give --calibration or --calibrate-per-fold, not both")
    from sfpn_edge.calibration import load_calibration

    cal = load_calibration(args.calibration, manifest)
    if cal is None:
        raise SfpnError(f"--calibration {args.calibration}: holds no calibration (run `sfpn-edge calibrate`)")
    return cal, {"protocol": "stored", "path": str(args.calibration), **cal.summary()}


def _write_json(report: dict, dest: Optional[Path]) -> None:
    from sfpn_edge.cache import atomic_write_bytes
    from sfpn_edge.cli.output import emit, to_jsonable

    if dest is None:
        return
    if str(dest) == "-":
        emit(report, True, format_report)
        return
    text = json.dumps(report, indent=2, default=to_jsonable) + "\n"
    try:
        atomic_write_bytes(dest, text.encode())
    except OSError as exc:
        raise SfpnError(f"cannot write {dest}: {exc.strerror or exc}") from None


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def format_report(report: dict) -> str:
    """The terminal table: one row per protocol, then skipped images and plot files."""
    cfg, img = report["config"], report["images"]
    margin = "" if cfg["margin"] is None else f" margin {cfg['margin']:g}"
    lines = [
        f"{report['command']}: crop {cfg['crop']}{margin}, flip {'on' if cfg['flip'] else 'off'}, "
        f"{cfg['backend']} {cfg['precision']}, model {cfg['model_file']} sha256 {cfg['model_sha256'][:12]}",
        f"{img['embedded']}/{img['total']} images embedded in {img['seconds']:.1f} s "
        f"({img['embedded'] / max(img['seconds'], 1e-9):.0f} images/s, {img['cpu_seconds']:.1f} s CPU)",
    ]
    cal = cfg.get("calibration")
    if cal:
        dims = f" -> {cal['dim_out']} dims" if "dim_out" in cal else ""
        lines.append(f"calibration: {cal['method']}{dims}, {cal['protocol']}")
    if img["face_sources"]:
        lines.append("faces: " + ", ".join(f"{k} {v}" for k, v in sorted(img["face_sources"].items())))
    if len(img["found_by"]) > 1:
        lines.append("found by: " + ", ".join(f"{k} {v}" for k, v in sorted(img["found_by"].items())))
    header = ("protocol", "pairs", "skipped", "accuracy %", "EER %", "AUC", "TAR@1e-2 %", "TAR@1e-3 %")
    rows = []
    for name, m in report["results"].items():
        acc = m["accuracy"]
        rows.append((
            name, str(m["pairs"]), str(m["skipped_pairs"]),
            "n/a (1 fold)" if acc is None else f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}",
            _pct(m["eer"]), f"{m['auc']:.4f}",
            _pct(m["tar_at_far"]["0.01"]["tar"]), _pct(m["tar_at_far"]["0.001"]["tar"]),
        ))
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines.append("")
    for row in [header] + rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    skipped = report["skipped"]["images"]
    if skipped:
        lines.append("")
        lines.append(f"{len(skipped)} unusable image(s); their pairs were left out:")
        lines += [f"  {s['reason']}" for s in skipped[:10]]
        if len(skipped) > 10:
            lines.append(f"  ... and {len(skipped) - 10} more (all listed in --json)")
    if report.get("plots"):
        lines.append("")
        lines.append("plots: " + ", ".join(report["plots"]))
    return "\n".join(lines)


class _ProgressBar:
    """``progress(done, total)`` callback drawing one self-overwriting line on a terminal."""

    def __init__(self, stream, width: int = 30):
        self.stream, self.width = stream, width
        self.start = time.perf_counter()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < 0.2:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        filled = self.width * done // max(total, 1)
        eta = (total - done) / rate if rate > 0 else 0.0
        self.stream.write(f"\rembedding [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} images, "
                          f"{rate:.0f}/s, {eta:.0f} s left ")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
