"""``sfpn-edge calibrate``: fit a descriptor calibration (and thresholds) on your own faces."""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

from sfpn_edge.cli.common import add_detector_options, add_model_options, make_detector, make_embedder
from sfpn_edge.cli.output import emit
from sfpn_edge.errors import SfpnError
from sfpn_edge.io import IMAGE_SUFFIXES

INT8_IMAGES = 200


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="adapt descriptors and thresholds to your own kind of faces",
        description="Embed a set of face images from the deployment (photos through the detector, or "
                    "ready crops with --crop full), fit a calibration and store it beside the model "
                    "(manifest entry + .npy arrays), so verify, enroll, identify and eval use it. "
                    "Unlabelled images allow 'center' and 'pca'; with identities (one folder per person, "
                    "or --labels) 'wccn' and 'lda' (the default, best on CFP) become possible, and "
                    "--thresholds measures operating points at FAR 1e-2/1e-3/1e-4.",
    )
    parser.add_argument("--images", type=Path, required=True, metavar="DIR_OR_LIST",
                        help="folder of images (subfolders = identities, e.g. PERSON/x.jpg or "
                             "PERSON/pose/x.jpg), or a text file with one image path per line")
    parser.add_argument("--labels", type=Path, metavar="FILE",
                        help="identity of each image: lines 'path,identity' (or tab-separated), paths as "
                             "in the list file or relative to the --images folder")
    parser.add_argument("--method", choices=("center", "pca", "wccn", "lda"), default=None,
                        help="default: lda with identities, center without")
    parser.add_argument("--dim", type=int, default=None, metavar="D",
                        help="output dimensions (default: pca 256, lda 128; wccn keeps --pca-dim)")
    parser.add_argument("--pca-dim", type=int, default=None, metavar="D",
                        help="PCA dimensions before wccn/lda (default: 256)")
    parser.add_argument("--shrinkage", type=float, default=None, metavar="S",
                        help="within-identity covariance shrinkage towards identity, 0..1 (default: lda 0.5, wccn 0.1)")
    parser.add_argument("--thresholds", action="store_true",
                        help="also measure operating thresholds at FAR 1e-2/1e-3/1e-4 (needs identities; "
                             "cross-fitted over 5 identity groups so they are not optimistic)")
    parser.add_argument("--crop", choices=("detect", "full"), default="detect",
                        help="find the face with the detector (default), or use whole images as crops")
    parser.add_argument("--margin", type=float, default=None,
                        help="detector crop margin (default: the model's crop_margin)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="calibrate flip-averaged descriptors (default; verify then flips too, "
                             "--no-flip for a calibration used without)")
    add_detector_options(parser)
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write a standalone calibration directory instead of into the model directory")
    parser.add_argument("--bake", action="store_true",
                        help="also write model_cal.onnx / model_cal.xml with the calibration folded in")
    parser.add_argument("--int8", action="store_true",
                        help=f"also quantize the model to int8 (model_int8.onnx / .xml), calibrated on up to "
                             f"{INT8_IMAGES} of these images")
    add_model_options(parser, auto=False)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def collect_images(images: Path, labels: Optional[Path]) -> Tuple[List[Path], Optional[List[str]], str]:
    """Image paths, their identities (None when unlabelled) and where the identities came from."""
    if images.is_dir():
        paths = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        base = images
    elif images.is_file():
        base = images.parent
        paths = []
        for line in images.read_text(encoding="utf-8-sig").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line).expanduser()
                paths.append(path if path.is_absolute() else base / path)
    else:
        raise SfpnError(f"--images {images}: no such folder or list file")
    if not paths:
        raise SfpnError(f"--images {images}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if labels is not None:
        table = _read_labels(labels, base)
        missing = [p for p in paths if p.resolve() not in table]
        if missing:
            raise SfpnError(f"--labels {labels}: no identity for {len(missing)} image(s), e.g. {missing[0]}")
        return paths, [table[p.resolve()] for p in paths], f"labels file {labels}"
    if images.is_dir():
        parts = [p.relative_to(images).parts for p in paths]
        if all(len(pt) >= 2 for pt in parts):
            return paths, [pt[0] for pt in parts], "one folder per identity"
        if any(len(pt) >= 2 for pt in parts):
            raise SfpnError(f"--images {images}: mixes images in the folder itself and in subfolders; "
                            "put each identity in its own subfolder, or give --labels")
    return paths, None, "none (unlabelled)"


def _read_labels(path: Path, base: Path) -> dict:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SfpnError(f"cannot read --labels {path}: {exc}") from None
    table = {}
    for no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        sep = "\t" if "\t" in line else ","
        name, _, identity = line.rpartition(sep)
        if not name.strip() or not identity.strip():
            raise SfpnError(f"{path} line {no}: expected 'path,identity', got {line!r}")
        image = Path(name.strip()).expanduser()
        table[(image if image.is_absolute() else base / image).resolve()] = identity.strip()
    return table


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from sfpn_edge.calibration import save_calibration
    from sfpn_edge.evaluate import calibrate_fit as cf
    from sfpn_edge.evaluate.protocols import Sample
    from sfpn_edge.evaluate.runner import crop_samples, crop_spec, embed_samples

    paths, labels, label_source = collect_images(args.images, args.labels)
    method = args.method or ("lda" if labels is not None else "center")
    embedder = make_embedder(args)
    mdir = embedder.model_dir
    plan = cf.plan(method, args.dim, args.pca_dim, args.shrinkage, embedder.descriptor_dim)
    y = None if labels is None else np.array(labels)
    cf.check_data(plan, len(paths), y)  # refuse before the slow part
    if args.thresholds and y is None:
        raise SfpnError("--thresholds needs identities (one folder per identity, or --labels)")
    if (args.bake or args.int8) and args.out is not None:
        raise SfpnError("--bake and --int8 write into the model directory; leave out --out")
    detector = make_detector(args, embedder) if args.crop == "detect" else None
    margin = crop_spec(args.crop, embedder, args.margin, detector).margin if args.crop == "detect" else None
    start = time.perf_counter()
    emb = embed_samples([Sample(p) for p in paths], embedder, crop=args.crop, margin=margin, flip=args.flip,
                        detector=detector, threads=embedder.runtime.threads, no_face="error")
    ok = emb.ok
    if y is not None:
        y = y[ok]
    cf.check_data(plan, int(ok.sum()), y)  # again, without the images that had no face
    info = {"source": str(args.images), "labels": label_source, "model_sha256": embedder.manifest["source_sha256"],
            "crop": args.crop, "margin": margin, "flip": args.flip, "backend": embedder.backend,
            "precision": embedder.runtime.precision, "skipped_images": len(emb.failures)}
    cal = cf.fit(emb.vectors[ok], y, plan.method, plan.dim, pca_dim=plan.pca_dim, shrinkage=plan.shrinkage,
                 info=info)
    pair_counts = None
    if args.thresholds:
        points, pair_counts = cf.operating_points(emb.vectors[ok], y, method=plan.method, dim=plan.dim,
                                                  pca_dim=plan.pca_dim, shrinkage=plan.shrinkage)
        protocol = f"calibration pairs, cross-fitted ({pair_counts['impostor_pairs']} impostor pairs)"
        made_by = {"detector": detector.name} if detector is not None else {}
        cal.operating_points.extend({**p, "flip": args.flip, "crop": args.crop, **made_by, "protocol": protocol}
                                    for p in points)
    dest = args.out or mdir
    baked = None
    if args.bake:
        from sfpn_edge.converters.bake import bake

        baked = bake(mdir, cal)
    stored = save_calibration(cal, dest, baked=baked)
    int8 = None
    if args.int8:
        from sfpn_edge.converters.calibration_data import CalibrationSet
        from sfpn_edge.converters.quantize import quantize_model_dir

        used = np.flatnonzero(ok)
        chosen = [paths[i] for i in used[np.linspace(0, len(used) - 1, min(INT8_IMAGES, len(used))).astype(int)]]
        crops = crop_samples([Sample(p) for p in chosen], crop_spec(args.crop, embedder, margin, detector),
                             args.crop, detector)
        with contextlib.redirect_stdout(sys.stderr):  # NNCF draws progress bars on stdout
            source = f"sfpn-edge calibrate: {len(crops)} {args.crop} crops from {args.images}"
            int8 = quantize_model_dir(mdir, CalibrationSet(crops, {"scheme": "user-photos", "source": source}))["files"]
    result = {
        "stored": str(stored),
        "calibration": {**cal.summary(), "model_sha256": cal.model_sha256, "labels": label_source},
        "images": {"total": len(paths), "used": int(ok.sum()), "skipped": len(emb.failures),
                   "face_sources": emb.face_sources, "found_by": emb.found_by},
        "skipped": [{"path": str(paths[i]), "reason": why} for i, why in emb.failures.items()],
        "operating_points": cal.operating_points,
        "pairs": pair_counts,
        "baked": baked,
        "int8_files": int8,
        "seconds": round(time.perf_counter() - start, 2),
    }
    emit(result, args.json, _human)
    return 0


def _human(r: dict) -> str:
    c, im = r["calibration"], r["images"]
    ids = f", {c['identities']} identities" if c.get("identities") else ""
    lines = [f"calibration {c['method']} {c['dim_in']} -> {c['dim_out']} dims from {im['used']} images{ids} "
             f"({c['labels']}); stored in {r['stored']}"]
    if im["skipped"]:
        lines.append(f"{im['skipped']} image(s) skipped (no face found), e.g. {r['skipped'][0]['path']}")
    for p in r["operating_points"]:
        lines.append(f"  FAR {p['far']:g}: threshold {p['threshold']:.4f} (TAR {100 * p['tar']:.2f} %)")
    if r["baked"]:
        lines.append("baked: " + ", ".join(f"{k} {v}" for k, v in r["baked"].items()))
    if r["int8_files"]:
        lines.append("int8: " + ", ".join(f"{k} {v['int8']}" for k, v in r["int8_files"].items() if "int8" in v))
    lines.append(f"{r['seconds']:.1f} s")
    return "\n".join(lines)
