"""CFP 1:N through the detector pipeline and a real gallery file: raw vs the gallery's own calibration.

    python benchmarks/measure_gallery_calibration.py --cfp ../shared/data/cfp [--model DIR] \
        [--detector blazeface] [--backend onnxruntime --precision fp32] \
        [--cache /tmp/cfp_gallery_blazeface.npz] [--identities 500] [--json OUT]

Each identity is enrolled (``FaceGallery.enroll``) with its 10 frontal photos, embedded by
``FaceVerifier.embed_images`` (detector, crop, ORT fp32); photos where no face is found are left
out, as ``enroll`` leaves them out. The gallery refits its calibration from those enrolment photos
only; the 4 profiles per identity are the probes (a probe without a face counts as a miss). Top-1
and top-5 with ``calibration=False`` and with the gallery's own calibration. Descriptors are cached
in ``--cache`` (outside the repository: CFP is research-only).

Open set, the decision at the threshold identify uses (``FaceVerifier.gallery_operating_point``):
the first half of the identities enrolled, the profiles of the others as strangers; the share of
enrolled probes named correctly (top-1 at or above the threshold) and of strangers named at all.

    python benchmarks/measure_gallery_calibration.py --refit-cost 10000 [--photos-per-identity 3]

times enrolment, ``recalibrate`` and a search on a synthetic gallery of that many identities
(1000-d clustered vectors: the cost depends on the counts and the dimension, not on the faces).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def embed_cfp(verifier, root: Path, cache, identities: int):
    """(people, frontal [I, 10, D] with NaN rows for no face, profile [I, 4, D] likewise); the
    cache is keyed by the identities, the detector and the runtime."""
    key = f"{verifier.detector_name} {verifier.runtime.backend} {verifier.runtime.precision}"
    from sfpn_edge.errors import ImageError

    people = sorted(p.name for p in (root / "Data" / "Images").iterdir() if p.is_dir())[:identities]
    if cache and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if list(data["people"]) == people and str(data.get("key", "")) == key:
            return people, data["frontal"], data["profile"]
    dim = verifier.descriptor_dim
    out = {"frontal": np.full((len(people), 10, dim), np.nan, np.float32),
           "profile": np.full((len(people), 4, dim), np.nan, np.float32)}
    start = time.perf_counter()
    for i, person in enumerate(people):
        for pose, count in (("frontal", 10), ("profile", 4)):
            for n in range(count):
                try:
                    path = root / "Data" / "Images" / person / pose / f"{n + 1:02d}.jpg"
                    out[pose][i, n] = verifier.embed_image(path)[0]
                except ImageError:
                    pass
        if i % 50 == 49:
            print(f"  embedded {i + 1}/{len(people)} identities ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if cache:
        np.savez(cache, people=np.array(people), key=key, **out)
    return people, out["frontal"], out["profile"]


def identification(gallery, probes: np.ndarray, truth: np.ndarray) -> dict:
    """Top-1 / top-5 (%) of ``probes`` (NaN rows: no face, a miss) against ``gallery``."""
    ok = np.isfinite(probes).all(axis=1)
    found = gallery.identify_batch(probes[ok], 5)
    names = np.array([[m.name for m in row] + [""] * (5 - len(row)) for row in found])
    hit1 = np.zeros(len(probes), bool)
    hit5 = np.zeros(len(probes), bool)
    hit1[ok] = names[:, 0] == truth[ok]
    hit5[ok] = (names == truth[ok][:, None]).any(axis=1)
    return {"top1": round(100 * hit1.mean(), 2), "top5": round(100 * hit5.mean(), 2)}


def refit_cost(identities: int, per: int, dim: int = 1000) -> dict:
    """Seconds to enrol, refit and search a synthetic gallery of ``identities`` x ``per`` photos."""
    from sfpn_edge.gallery import FaceGallery

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((identities, dim)).astype(np.float32) + 3
    report = {"identities": identities, "photos": identities * per, "dim": dim}
    with tempfile.TemporaryDirectory() as tmp, FaceGallery(Path(tmp) / "g.db", model_sha256="0" * 64, dim=dim) as g:
        start = time.perf_counter()
        for first in range(0, identities, 1000):
            g.enroll_many([(f"id{i:06d}", centres[i] + rng.standard_normal((per, dim)).astype(np.float32))
                           for i in range(first, min(first + 1000, identities))], calibrate=False)
        report["enrol_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        cal = g.recalibrate()
        report["refit_s"] = round(time.perf_counter() - start, 2)
        report["fit_s"] = cal.info["fit_seconds"]  # inside the refit: the fitting alone
        report["calibration"] = {k: cal.info.get(k) for k in ("images", "identities", "pca_dim", "thresholds")}
        report["calibration"]["method"], report["calibration"]["dim_out"] = cal.method, cal.dim_out
        start = time.perf_counter()
        g.identify(centres[0], k=5)
        report["first_search_s"] = round(time.perf_counter() - start, 2)  # builds the calibrated index
        start = time.perf_counter()
        g.identify(centres[1], k=5)
        report["search_ms"] = round(1e3 * (time.perf_counter() - start), 2)
    return report


def open_set(model, detector: str, runtime, people, frontal, probes, truth, fars=(1e-2, 1e-3)) -> dict:
    """{FAR: {raw|calibrated: threshold, its source, correct accepts %, strangers named %}}."""
    from sfpn_edge.gallery import FaceGallery
    from sfpn_edge.pipeline import FaceVerifier

    enrolled = people[:len(people) // 2]
    ok = np.isfinite(probes).all(axis=1)
    known, strangers = ok & np.isin(truth, enrolled), ok & ~np.isin(truth, enrolled)
    out: dict = {"enrolled": len(enrolled), "strangers": len(people) - len(enrolled)}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "half.db"
        for far in fars:
            verifier = FaceVerifier(model, runtime=runtime, detector=detector, far=far, calibration=False)
            if not db.exists():
                with FaceGallery(db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim) as g:
                    g.enroll_many([(p, rows[np.isfinite(rows).all(axis=1)]) for p, rows in zip(enrolled, frontal)],
                                  calibrate=False)
                    g.recalibrate()
            out[far] = {}
            for name, use in (("raw", False), ("calibrated", True)):
                with FaceGallery(db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim,
                                 readonly=True, calibration=use) as g:
                    op, calibrated = verifier.gallery_operating_point(g)
                    hits = g.identify_batch(probes[known], 1, calibrated=calibrated)
                    named = g.identify_batch(probes[strangers], 1, calibrated=calibrated)
                correct = np.mean([m[0].name == t and m[0].score >= op.threshold for m, t in zip(hits, truth[known])])
                out[far][name] = {"threshold": round(op.threshold, 4), "source": op.source,
                                  "correct_accepted": round(100 * float(correct), 2),
                                  "strangers_named": round(100 * float(np.mean([m[0].score >= op.threshold
                                                                                for m in named])), 2)}
    return out


def main(argv=None) -> int:
    from sfpn_edge.gallery import FaceGallery
    from sfpn_edge.pipeline import FaceVerifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfp", type=Path)
    parser.add_argument("--refit-cost", type=int, metavar="IDENTITIES", help="time a synthetic gallery instead")
    parser.add_argument("--photos-per-identity", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--detector", default="blazeface")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--cache", type=Path, default=None, help="npz of descriptors (outside the repo)")
    parser.add_argument("--identities", type=int, default=500)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.refit_cost:
        print(json.dumps(refit_cost(args.refit_cost, args.photos_per_identity), indent=2))
        return 0
    if args.cfp is None:
        parser.error("--cfp or --refit-cost is required")

    verifier = FaceVerifier(args.model, args.backend, args.precision, detector=args.detector, threshold=0.5,
                            calibration=False)
    people, frontal, profile = embed_cfp(verifier, args.cfp, args.cache, args.identities)
    probes = profile.reshape(-1, profile.shape[-1])
    truth = np.repeat(np.array(people), profile.shape[1])
    report = {"identities": len(people), "detector": verifier.detector_name,
              "runtime": f"{verifier.runtime.backend} {verifier.runtime.precision}",
              "enrolment_photos_without_face": int((~np.isfinite(frontal).all(-1)).sum()),
              "probes_without_face": int((~np.isfinite(probes).all(-1)).sum()), "probes": len(probes)}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "cfp.db"
        with FaceGallery(db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim) as gallery:
            start = time.perf_counter()
            gallery.enroll_many([(person, rows[np.isfinite(rows).all(axis=1)]) for person, rows in zip(people, frontal)
                                 if np.isfinite(rows).all(axis=1).any()], calibrate=False)
            enrolled = time.perf_counter() - start
            start = time.perf_counter()
            gallery.recalibrate()
            report["refit_s"] = round(time.perf_counter() - start, 2)
            report["enrol_s"] = round(enrolled, 2)
            report["calibration"] = gallery.calibration_summary()
        for name, use in (("raw", False), ("calibrated", True)):
            with FaceGallery(db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim,
                             readonly=True, calibration=use) as gallery:
                report[name] = identification(gallery, probes, truth)
    report["gain_top1"] = round(report["calibrated"]["top1"] - report["raw"]["top1"], 2)
    report["open_set"] = open_set(args.model, args.detector, verifier.runtime, people, frontal, probes, truth)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
