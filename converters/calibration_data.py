"""Calibration crops for int8 quantization, from one of three sources, and the check that crops
are usable. Every int8 format quantizes from the same :class:`CalibrationSet`:

* :func:`example_calibration`: the authors' three example crops plus deterministic augmentations
  (flips, shifted crops, scale, small rotations, brightness/contrast): no dataset needed;
* :func:`photo_calibration`: the user's own photos through the detector and the run-time crop;
* :func:`cfp_calibration_samples` + :func:`calibration_crops`: CFP images (research only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from sfpn_edge import align
from sfpn_edge.errors import ModelError, SfpnError
from sfpn_edge.io import ImageError, read_image
from sfpn_edge.model_dir import FIDUCIAL_MARGIN
from sfpn_edge.samples import Sample, read_cfp_landmarks


# The authors' example crops (their repository, beside the weights), sha256-pinned.
EXAMPLE_CROPS: Dict[str, str] = {
    "image_example1.png": "c9aac7f6f929c0b0f57917fe108e4aaa4613475a7faa972924535830250fb90a",
    "image_example2.png": "b44a8efe10bdebd88b1771095233de65b061603120d8502308088518413a8524",
    "image_example3.png": "1a0d25aeb546fa18af5f0f31e7129420b1051a9bb99578a2f2ad4d3c79f149bb",
}
AUGMENTED_PER_IMAGE = 64
# augmentation ranges (uniform): log zoom, shift (fraction of the crop), rotation (degrees), contrast gain, brightness offset
# (stronger photometry, contrast 0.7-1.3 and brightness +-30, cost 0.3 point of CFP-FF on detector crops)
ZOOM_LOG, SHIFT, ROTATION, GAIN, OFFSET = 0.22, 0.08, 12.0, (0.85, 1.15), 15.0
MIN_PHOTO_FACES = 8
MAX_PHOTOS = 200


@dataclass
class CalibrationSet:
    """Calibration crops float32 [N, 3, h, w] (RGB minus mean) and how they were made (for the manifest)."""

    crops: np.ndarray
    record: dict


def augment(image: np.ndarray, size: int, mean: Sequence[float], count: int, seed: int = 0) -> np.ndarray:
    """``count`` deterministic augmentations of one face crop (BGR uint8): the first is the crop
    itself; the others draw a mirror flip, scale 0.8-1.25, shift up to 8 %, rotation up to 12
    degrees, contrast 0.85-1.15 and brightness +-15 from a seeded generator (module constants).
    Framed by the run-time crop kernel."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    base = np.vstack([align.full_image_matrix(w, h, size), [0.0, 0.0, 1.0]])
    spec = align.CropSpec(size, tuple(mean))
    matrices, gains = [], []
    for i in range(count):
        flip, scale = (False, 1.0) if i == 0 else (bool(rng.integers(2)), math.exp(rng.uniform(-ZOOM_LOG, ZOOM_LOG)))
        angle = 0.0 if i == 0 else rng.uniform(-ROTATION, ROTATION)
        shift = np.zeros(2) if i == 0 else rng.uniform(-SHIFT, SHIFT, 2) * size
        gain, offset = (1.0, 0.0) if i == 0 else (rng.uniform(*GAIN), rng.uniform(-OFFSET, OFFSET))
        c = (size - 1) / 2.0
        m = np.vstack([np.array(_rotation((c, c), angle, scale)), [0.0, 0.0, 1.0]])
        m[:2, 2] += shift
        m = (m @ base)[:2]
        matrices.append(align.hflip_matrix(m, size) if flip else m)
        gains.append((gain, offset))
    crops = spec.crop([image], matrices)
    mean_ = np.asarray(mean, np.float32)[None, :, None, None]
    pixels = crops + mean_
    for k, (gain, offset) in enumerate(gains):
        pixels[k] = np.clip((pixels[k] - 128.0) * gain + 128.0 + offset, 0.0, 255.0)
    return (pixels - mean_).astype(np.float32)


def _rotation(centre, degrees: float, scale: float) -> np.ndarray:
    """2x3 rotation by ``degrees`` and zoom ``scale`` about ``centre`` (cv2.getRotationMatrix2D's form)."""
    a, b = scale * math.cos(math.radians(degrees)), scale * math.sin(math.radians(degrees))
    x, y = centre
    return np.array([[a, b, (1 - a) * x - b * y], [-b, a, b * x + (1 - a) * y]])


def example_calibration(folder: Path, size: int, mean: Sequence[float],
                        per_image: int = AUGMENTED_PER_IMAGE) -> CalibrationSet:
    """The authors' example crops in ``folder`` (sha256-checked), each with ``per_image``
    augmentations (:func:`augment`): a calibration set that needs no dataset."""
    from sfpn_edge import cache

    crops = []
    for i, (name, digest) in enumerate(EXAMPLE_CROPS.items()):
        path = Path(folder) / name
        if not path.is_file():
            raise SfpnError(f"{path}: the authors' example crop is missing")
        if cache.sha256_file(path) != digest:
            raise SfpnError(f"{path}: sha256 mismatch (not the authors' example crop)")
        crops.append(augment(read_image(path), size, mean, per_image, seed=i))
    crops = np.concatenate(crops)
    return CalibrationSet(crops, {"scheme": "example-augmented", "count": int(len(crops)),
                                  "source": f"the authors' {len(EXAMPLE_CROPS)} example crops x {per_image} "
                                            "deterministic augmentations (flip, scale, shift, rotation, "
                                            "brightness/contrast); no dataset"})


def photo_calibration(folder: Path, spec: align.CropSpec, detector, limit: int = MAX_PHOTOS) -> CalibrationSet:
    """Crops of the user's photos in ``folder`` (the largest face of each, through ``detector`` and
    the run-time framing ``spec``); photos without a face are skipped. At most ``limit`` photos,
    spread over the sorted list."""
    from sfpn_edge.detect.policy import find_face
    from sfpn_edge.io import IMAGE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise SfpnError(f"--calibration-images {folder}: not a directory")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SfpnError(f"--calibration-images {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).astype(int)]
    faces, skipped = [], 0  # cropped one photo at a time: only the crops are kept in memory
    for path in paths:
        try:
            image = read_image(path)
            det = find_face(detector, image, fallback="error")
        except (ImageError, SfpnError):
            skipped += 1
            continue
        faces.append(spec.crop([image], [spec.matrix(det.face.box)], flip=True))
    if len(faces) < MIN_PHOTO_FACES:
        raise SfpnError(f"--calibration-images {folder}: faces found in {len(faces)} of {len(paths)} images; "
                        f"int8 calibration needs at least {MIN_PHOTO_FACES}")
    crops = np.concatenate(faces)
    return CalibrationSet(crops, {"scheme": "user-photos", "count": int(len(crops)),
                                  "source": f"{len(faces)} photos from {folder} ({skipped} without a face "
                                            f"skipped), {getattr(detector, 'name', 'detector')} crop "
                                            f"+{spec.margin:.0%}, with mirrored copies"})


def calibration_crops(samples: Sequence[Sample], size: int, mean: Sequence[float],
                      margin: float = FIDUCIAL_MARGIN) -> np.ndarray:
    """Crops float32 [N, 3, size, size] (RGB minus mean) framed as at evaluation time: the
    fiducial box enlarged by ``margin`` when a sample has landmarks, else the whole image."""
    if not samples:
        raise SfpnError("no calibration images given")
    spec = align.CropSpec(size, tuple(mean)).with_margin(margin)
    images, matrices = [], []
    for sample in samples:
        image = read_image(sample.path)
        if sample.landmarks is not None:
            matrices.append(spec.matrix(align.points_box(read_cfp_landmarks(sample.landmarks))))
        else:
            matrices.append(align.full_image_matrix(image.shape[1], image.shape[0], size))
        images.append(image)
    return spec.crop(images, matrices)


def cfp_calibration_samples(cfp_root: Path, count: int = 200) -> List[Sample]:
    """``count`` CFP images (with their fiducials) spread over all subjects, frontal and profile in
    CFP-FP proportion (5 : 2), chosen deterministically."""
    data = Path(cfp_root) / "Data"
    subjects = sorted(p.name for p in (data / "Images").glob("[0-9]*") if p.is_dir())
    if not subjects:
        raise SfpnError(f"no CFP images under {data / 'Images'}")
    picks = []
    for i in range(count):
        subject = subjects[(i * 7919) % len(subjects)]  # a prime stride visits every subject
        pose = "profile" if i % 7 in (3, 6) else "frontal"
        files = sorted((data / "Images" / subject / pose).glob("*.jpg"))
        if files:
            image = files[(i // len(subjects)) % len(files)]
            landmarks = data / "Fiducials" / subject / pose / f"{image.stem}.txt"
            picks.append(Sample(image, landmarks if landmarks.is_file() else None))
    return picks


def check_crops(crops: np.ndarray) -> None:
    """ValueError / ModelError unless ``crops`` are usable calibration crops (float32 NCHW, finite, varied)."""
    if not isinstance(crops, np.ndarray) or crops.dtype != np.float32 or crops.ndim != 4 or not len(crops):
        raise ValueError("calibration crops must be a non-empty float32 [N, 3, h, w] array")
    if not np.isfinite(crops).all():
        raise ValueError("calibration crops contain NaN or infinity")
    if float(crops.std()) < 1e-3:
        raise ModelError("calibration crops are constant: calibrate on real face crops")
