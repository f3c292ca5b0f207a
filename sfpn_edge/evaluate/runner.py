"""Run protocols through the model: embed every unique image once, score the pairs, measure.

Images are decoded and cropped by a few worker threads (OpenCV and the warp kernel release the
GIL) a bounded number of chunks ahead of the embedder, so decoding overlaps inference and
memory stays flat. An image that cannot be used (unreadable, corrupt, missing landmarks) is
recorded with its reason; the pairs that need it are skipped and counted, and more than
``max_skipped`` of a protocol's pairs skipped is an error rather than a quietly different metric.
"""
from __future__ import annotations

import itertools
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sfpn_edge import align
from sfpn_edge.detect.policy import find_face
from sfpn_edge.errors import SfpnError
from sfpn_edge.evaluate import metrics
from sfpn_edge.evaluate.protocols import PairProtocol, Sample, merge_samples
from sfpn_edge.io import read_image
from sfpn_edge.kernels.scoring import l2_normalize
from sfpn_edge.pipeline import RETRY_PAD
from sfpn_edge.samples import read_cfp_landmarks
from sfpn_edge.score import cosine_pairs

CROPS = ("fiducials", "full", "detect")
FIDUCIAL_MARGIN = 0.3  # the authors' framing: tight face box enlarged by 30 % (DESIGN.md §1)
CHUNK = 32  # images per decode/crop task and per embedder call

Progress = Callable[[int, int], None]  # (images done, images total)


def fiducial_matrix(points: np.ndarray, margin: float, size: int) -> np.ndarray:
    """Image -> crop map for dataset landmarks (CFP's 30 fiducials): ``align.box_matrix`` of
    their tight box, so a square of side max(w, h) * (1 + margin), centred.

    Points are read as continuous image coordinates, like detector boxes in ``align``. CFP is
    sensitive to sub-pixel framing: reading them as pixel centres (+0.5) or rounding the crop
    to 8 bits moves CFP-FP accuracy by ~0.25 points and its EER by ~0.3 (see README).
    """
    return align.box_matrix(align.points_box(points), margin, size)


@dataclass
class Embeddings:
    """L2-normalised descriptors of ``samples`` (zero rows where ``failures`` has the index)."""

    samples: List[Sample]
    vectors: np.ndarray
    failures: Dict[int, str]
    face_sources: Dict[str, int]  # detect mode: how each face was found (see detect.policy)
    seconds: float

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(len(self.samples), bool)
        mask[list(self.failures)] = False
        return mask


class _Cropper:
    """Decodes one sample and gives the image plus its image -> crop matrix for one crop mode."""

    def __init__(self, crop: str, margin: float, size: int, detector=None, no_face: str = "whole-image"):
        self.crop, self.margin, self.size, self.detector = crop, margin, size, detector
        self.no_face = no_face

    def __call__(self, sample: Sample) -> Tuple[np.ndarray, np.ndarray, Optional[str]]:
        image = read_image(sample.path)
        if self.crop == "full":
            return image, align.full_image_matrix(image.shape[1], image.shape[0], self.size), None
        if self.crop == "fiducials":
            if sample.landmarks is None:
                raise SfpnError(f"{sample.path}: no landmarks for --crop fiducials (use full or detect)")
            return image, fiducial_matrix(read_cfp_landmarks(sample.landmarks), self.margin, self.size), None
        det = find_face(self.detector, image, retry_pad=RETRY_PAD, fallback=self.no_face, pick="largest")
        return image, align.box_matrix(det.face.box, self.margin, self.size), det.source


def embed_samples(
    samples: Sequence[Sample],
    embedder,
    *,
    crop: str = "fiducials",
    margin: Optional[float] = None,
    flip: bool = False,
    detector=None,
    threads: Optional[int] = None,
    progress: Optional[Progress] = None,
    no_face: str = "whole-image",
) -> Embeddings:
    """Descriptors for every sample with a ``FaceEmbedder``; flip TTA sums the mirrored crop's.

    ``margin`` defaults to 0.3 for fiducials and to the manifest's ``crop_margin`` for detect.
    ``no_face`` (detect): use the whole image ("whole-image") or record the image as a failure ("error").
    """
    if crop not in CROPS:
        raise SfpnError(f"unknown crop mode {crop!r}; choose one of {', '.join(CROPS)}")
    if crop == "detect" and detector is None:
        raise SfpnError("--crop detect needs a face detector")
    margin = resolve_margin(crop, margin, embedder.manifest)
    size = embedder.input_size[0]
    cropper = _Cropper(crop, margin, size, detector, no_face)
    n = len(samples)
    vectors = np.zeros((n, embedder.descriptor_dim), np.float32)
    failures: Dict[int, str] = {}
    sources: Counter = Counter()

    def prepare(start: int):
        """Crops of one chunk (runs in a worker thread; shares nothing mutable)."""
        images, matrices, index, failed, found = [], [], [], {}, []
        for i in range(start, min(start + CHUNK, n)):
            try:
                image, matrix, source = cropper(samples[i])
            except SfpnError as exc:
                path = str(samples[i].path)
                failed[i] = str(exc) if path in str(exc) else f"{path}: {exc}"
                continue
            images.append(image)
            matrices.append(matrix)
            index.append(i)
            found.append(source)
        crops = None
        if index:
            if flip:
                matrices += [align.hflip_matrix(m, size) for m in matrices]
            crops = align.crop_batch(images, np.stack(matrices), image_index=np.arange(len(matrices)) % len(images),
                                     size=size, mean=embedder.mean, channel_order="BGR", threads=1)
        return crops, index, failed, found

    workers = max(1, threads or os.cpu_count() or 1)
    begin, done = time.perf_counter(), 0
    starts = iter(range(0, n, CHUNK))
    with ThreadPoolExecutor(workers, thread_name_prefix="sfpn-eval") as pool:
        pending = deque(pool.submit(prepare, s) for s in itertools.islice(starts, workers + 1))
        while pending:
            crops, index, failed, found = pending.popleft().result()
            failures.update(failed)
            sources.update(s for s in found if s)
            nxt = next(starts, None)
            if nxt is not None:
                pending.append(pool.submit(prepare, nxt))
            if index:
                desc = embedder.embed(crops)
                if flip:
                    desc = desc[: len(index)] + desc[len(index):]
                vectors[index] = l2_normalize(np.ascontiguousarray(desc))
            done = min(done + CHUNK, n)
            if progress:
                progress(done, n)
    if len(failures) == n and n:
        first = failures[min(failures)]
        raise SfpnError(f"none of the {n} images could be used; first: {first}")
    return Embeddings(list(samples), vectors, dict(sorted(failures.items())), dict(sources),
                      time.perf_counter() - begin)


def resolve_margin(crop: str, margin: Optional[float], manifest: dict) -> float:
    """The box margin for ``crop``: as given, else 0.3 (fiducials) or the manifest's (detect)."""
    if margin is None:
        margin = FIDUCIAL_MARGIN if crop == "fiducials" else float(manifest.get("crop_margin", 0.0))
    if not 0.0 <= margin <= 2.0:
        raise SfpnError(f"margin must be in [0, 2], got {margin!r}")
    return float(margin)


@dataclass
class ProtocolResult:
    """Scores and metrics of one protocol; pairs with an unusable image are left out and counted."""

    name: str
    scores: np.ndarray
    labels: np.ndarray
    folds: np.ndarray
    skipped_pairs: int
    metrics: dict = field(default_factory=dict)


def score_protocol(proto: PairProtocol, pairs: np.ndarray, emb: Embeddings,
                   max_skipped: float = 0.01) -> ProtocolResult:
    """Cosine scores of ``pairs`` (indices into ``emb``) and the metrics of ``proto``."""
    ok = emb.ok
    usable = ok[pairs[:, 0]] & ok[pairs[:, 1]]
    skipped = int((~usable).sum())
    if skipped > max_skipped * len(pairs):
        bad = sorted({int(i) for i in pairs[~usable].ravel() if not ok[i]})
        shown = "; ".join(emb.failures[i] for i in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise SfpnError(
            f"{proto.name}: {skipped} of {len(pairs)} pairs ({100 * skipped / len(pairs):.1f} %) have an "
            f"unusable image (limit {100 * max_skipped:g} %, see --max-skipped): {shown}"
        )
    p, labels, folds = pairs[usable], proto.labels[usable], proto.folds[usable]
    if labels.all() or not labels.any():
        raise SfpnError(f"{proto.name}: after skipping unusable images no {'impostor' if labels.all() else 'genuine'} "
                        "pairs are left")
    scores = cosine_pairs(emb.vectors[p[:, 0]], emb.vectors[p[:, 1]]).astype(np.float64)
    result = ProtocolResult(proto.name, scores, labels, folds, skipped)
    result.metrics = metrics.verification_metrics(scores, labels, folds)
    return result


def evaluate(protocols: Sequence[PairProtocol], embedder, *, max_skipped: float = 0.01,
             transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
             **embed_options) -> Tuple[Embeddings, List[ProtocolResult]]:
    """Embed the union of the protocols' images once, then score and measure each protocol.

    ``transform`` (e.g. ``Calibration.apply``) maps the descriptors before scoring.
    """
    samples, pairs = merge_samples(protocols)
    emb = embed_samples(samples, embedder, **embed_options)
    if transform is not None:
        emb.vectors = transform(emb.vectors)
    return emb, [score_protocol(proto, p, emb, max_skipped) for proto, p in zip(protocols, pairs)]
