"""Verification protocols on disk: CFP (official layout) and LFW-style ``pairs.txt`` files.

Both readers return a :class:`PairProtocol`: the unique images it needs and, per pair,
two indices into that image list, a genuine/impostor label and a fold id. Layout
problems raise :class:`~sfpn_edge.errors.SfpnError` naming the offending file;
missing image files are *not* checked here (the runner counts them as skipped).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from sfpn_edge.errors import SfpnError
from sfpn_edge.samples import Sample, text_lines

CFP_PROTOCOLS = ("FF", "FP")
CFP_FOLDS = tuple(range(1, 11))


@dataclass(frozen=True)
class PairProtocol:
    name: str
    samples: List[Sample]
    pairs: np.ndarray  # int64 [P, 2], indices into samples
    labels: np.ndarray  # bool [P], True = same person
    folds: np.ndarray  # int64 [P], fold id of each pair

    def __post_init__(self) -> None:
        n = len(self.pairs)
        if self.labels.shape != (n,) or self.folds.shape != (n,):
            raise ValueError("pairs, labels and folds must have matching lengths")


def _require_dir(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise SfpnError(f"{what} not found or not a directory: {path}")
    return path


# ---------------------------------------------------------------------------- CFP


def _cfp_image_list(root: Path, name: str) -> List[Sample]:
    listing = root / "Protocol" / name
    samples: List[Sample] = []
    for no, line in text_lines(listing):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SfpnError(f"{listing} line {no}: expected 'index path', got {line!r}")
        if int(parts[0]) != len(samples) + 1:
            raise SfpnError(f"{listing} line {no}: index {parts[0]} out of sequence")
        image = Path(os.path.normpath(listing.parent / parts[1]))
        fiducials = image.parent.as_posix().replace("/Data/Images/", "/Data/Fiducials/")
        samples.append(Sample(image, Path(fiducials) / (image.stem + ".txt")))
    if not samples:
        raise SfpnError(f"{listing} lists no images")
    return samples


def _cfp_split(path: Path, n_first: int, n_second: int) -> np.ndarray:
    rows = []
    for no, line in text_lines(path):
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise SfpnError(f"{path} line {no}: expected 'i,j', got {line!r}")
        i, j = int(parts[0]), int(parts[1])
        if not (1 <= i <= n_first and 1 <= j <= n_second):
            raise SfpnError(f"{path} line {no}: index out of range ({i},{j})")
        rows.append((i - 1, j - 1))
    if not rows:
        raise SfpnError(f"{path} holds no pairs")
    return np.array(rows, dtype=np.int64)


def load_cfp(root: Path, protocol: str, folds: Optional[Iterable[int]] = None) -> PairProtocol:
    """CFP ``FF`` (frontal-frontal) or ``FP`` (frontal-profile) pairs from the official layout.

    ``root`` holds ``Data/`` and ``Protocol/``; ``folds`` picks a subset of 1..10.
    """
    root = _require_dir(root, "CFP root")
    protocol = protocol.upper()
    if protocol not in CFP_PROTOCOLS:
        raise SfpnError(f"unknown CFP protocol {protocol!r}; choose FF or FP")
    if not (root / "Protocol").is_dir():
        raise SfpnError(
            f"{root} is not a CFP root: missing {root / 'Protocol'} "
            "(expected Data/Images/..., Protocol/Pair_list_F.txt, Protocol/Split/FF|FP/01..10)"
        )
    chosen = tuple(CFP_FOLDS if folds is None else sorted(set(folds)))
    bad = [f for f in chosen if f not in CFP_FOLDS]
    if bad or not chosen:
        raise SfpnError(f"CFP folds must be within 1..10, got {list(folds or [])}")

    frontal = _cfp_image_list(root, "Pair_list_F.txt")
    second = frontal if protocol == "FF" else _cfp_image_list(root, "Pair_list_P.txt")
    offset = 0 if protocol == "FF" else len(frontal)
    samples = frontal if protocol == "FF" else frontal + second

    pairs, labels, fold_ids = [], [], []
    for fold in chosen:
        split = root / "Protocol" / "Split" / protocol / f"{fold:02d}"
        for kind, same in (("same.txt", True), ("diff.txt", False)):
            idx = _cfp_split(split / kind, len(frontal), len(second))
            idx[:, 1] += offset
            pairs.append(idx)
            labels.append(np.full(len(idx), same))
            fold_ids.append(np.full(len(idx), fold, dtype=np.int64))
    return _compact(
        f"CFP-{protocol}", samples, np.concatenate(pairs), np.concatenate(labels), np.concatenate(fold_ids)
    )


def cfp_images(root: Path) -> List[Sample]:
    """Every CFP image with its fiducials: the frontal list, then the profile list."""
    root = _require_dir(root, "CFP root")
    return _cfp_image_list(root, "Pair_list_F.txt") + _cfp_image_list(root, "Pair_list_P.txt")


def _compact(name, samples, pairs, labels, folds) -> PairProtocol:
    """Keep only the samples some pair uses, renumbering the pair indices."""
    used, inverse = np.unique(pairs, return_inverse=True)
    return PairProtocol(
        name=name,
        samples=[samples[i] for i in used],
        pairs=inverse.reshape(pairs.shape).astype(np.int64),
        labels=labels.astype(bool),
        folds=folds.astype(np.int64),
    )


# ---------------------------------------------------------------------------- pairs.txt


def _lfw_image(root: Path, name: str, number: str, ext: str) -> Path:
    return root / name / f"{name}_{int(number):04d}{ext}"


def load_pairs(root: Path, pairs_file: Path, ext: str = ".jpg") -> PairProtocol:
    """An LFW-style ``pairs.txt``: header ``folds n`` (or just ``n`` for one fold), then per
    fold ``n`` lines ``name i j`` (same) and ``n`` lines ``name1 i name2 j`` (different);
    images live at ``root/name/name_XXXX.jpg``.
    """
    root = _require_dir(root, "image root")
    pairs_file = Path(pairs_file).expanduser()
    lines = text_lines(pairs_file)
    if not lines:
        raise SfpnError(f"{pairs_file} is empty (expected a 'folds n' header and pair lines)")
    header = lines[0][1].split()
    if not (1 <= len(header) <= 2 and all(h.isdigit() and int(h) > 0 for h in header)):
        raise SfpnError(f"{pairs_file} line {lines[0][0]}: expected header 'folds n', got {lines[0][1]!r}")
    n_folds, per_class = (1, int(header[0])) if len(header) == 1 else (int(header[0]), int(header[1]))
    body = lines[1:]
    if len(body) != n_folds * 2 * per_class:
        raise SfpnError(
            f"{pairs_file}: header promises {n_folds} folds x {2 * per_class} pairs "
            f"= {n_folds * 2 * per_class} lines, found {len(body)}"
        )
    index: Dict[Path, int] = {}
    samples: List[Sample] = []

    def sample_id(name: str, number: str) -> int:
        path = _lfw_image(root, name, number, ext)
        if path not in index:
            index[path] = len(samples)
            samples.append(Sample(path))
        return index[path]

    pairs, labels, folds = [], [], []
    for k, (no, line) in enumerate(body):
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            a, b, same = sample_id(parts[0], parts[1]), sample_id(parts[0], parts[2]), True
        elif len(parts) == 4 and parts[1].isdigit() and parts[3].isdigit():
            a, b, same = sample_id(parts[0], parts[1]), sample_id(parts[2], parts[3]), False
        else:
            raise SfpnError(
                f"{pairs_file} line {no}: expected 'name i j' or 'name1 i name2 j', got {line!r}"
            )
        pairs.append((a, b))
        labels.append(same)
        folds.append(k // (2 * per_class) + 1)
    labels_arr, folds_arr = np.array(labels), np.array(folds, dtype=np.int64)
    for fold in range(1, n_folds + 1):
        n_same = int(labels_arr[folds_arr == fold].sum())
        if n_same != per_class:
            raise SfpnError(
                f"{pairs_file}: fold {fold} has {n_same} same-person pairs, header says {per_class}"
            )
    return PairProtocol(
        name=pairs_file.name,
        samples=samples,
        pairs=np.array(pairs, dtype=np.int64),
        labels=labels_arr,
        folds=folds_arr,
    )


def merge_samples(protocols: Sequence[PairProtocol]) -> Tuple[List[Sample], List[np.ndarray]]:
    """Union of the protocols' samples (by path) and, per protocol, its pairs re-indexed into it."""
    index: Dict[Path, int] = {}
    merged: List[Sample] = []
    remapped = []
    for proto in protocols:
        local = np.empty(len(proto.samples), dtype=np.int64)
        for i, sample in enumerate(proto.samples):
            if sample.path not in index:
                index[sample.path] = len(merged)
                merged.append(sample)
            local[i] = index[sample.path]
        remapped.append(local[proto.pairs])
    return merged, remapped
