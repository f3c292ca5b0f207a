"""Calibration crops for int8 quantization: CFP images chosen deterministically, framed as at
evaluation time, and the check that crops are usable."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np

from sfpn_edge import align
from sfpn_edge.errors import ModelError, SfpnError
from sfpn_edge.io import read_image
from sfpn_edge.model_dir import FIDUCIAL_MARGIN
from sfpn_edge.samples import Sample, read_cfp_landmarks


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
