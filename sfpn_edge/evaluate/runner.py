"""Run protocols through the model: embed every unique image once, score the pairs, measure.

Images are decoded and cropped by a few worker threads (OpenCV and the warp kernel release the
GIL) a bounded number of chunks ahead of the embedder, so decoding overlaps inference and
memory stays flat. An image that cannot be used (unreadable, corrupt, missing landmarks) is
recorded with its reason; the pairs that need it are skipped and counted, and more than
``max_skipped`` of a protocol's pairs skipped is an error rather than a quietly different metric.
"""
from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sfpn_edge import align
from sfpn_edge.detect.policy import RETRY_PAD, find_face
from sfpn_edge.errors import SfpnError
from sfpn_edge.evaluate import metrics
from sfpn_edge.evaluate.protocols import PairProtocol, Sample, merge_samples
from sfpn_edge.io import read_image
from sfpn_edge.kernels.scoring import l2_normalize
from sfpn_edge.threads import default_threads
from sfpn_edge.samples import read_cfp_landmarks
from sfpn_edge.score import cosine_pairs

CROPS = ("fiducials", "full", "detect")
CHUNK = 32  # images per decode/crop task and per embedder call

Progress = Callable[[int, int], None]  # (images done, images total)


@dataclass
class Embeddings:
    """L2-normalised descriptors of ``samples`` (zero rows where ``failures`` has the index)."""

    samples: List[Sample]
    vectors: np.ndarray
    failures: Dict[int, str]
    face_sources: Dict[str, int]  # detect mode: how each face was found (see detect.policy)
    seconds: float
    found_by: Dict[str, int] = field(default_factory=dict)  # detect mode: which detector of a chain

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(len(self.samples), bool)
        mask[list(self.failures)] = False
        return mask


def crop_spec(crop: str, embedder, margin: Optional[float] = None, detector=None) -> align.CropSpec:
    """The framing for ``crop``: the model's margin for fiducials or for the detector (``margin``
    overrides it); ``full`` resizes the whole image and uses no margin."""
    if crop not in CROPS:
        raise SfpnError(f"unknown crop mode {crop!r}; choose one of {', '.join(CROPS)}")
    name = "fiducials" if crop != "detect" else getattr(detector, "name", type(detector).__name__.lower())
    try:
        return embedder.dir.crop_spec(name, 0.0 if crop == "full" else margin)
    except ValueError as exc:
        raise SfpnError(str(exc)) from None


class _Cropper:
    """Decodes one sample and gives the image plus its image -> crop matrix for one crop mode.

    CFP's fiducials are read as continuous image coordinates, like detector boxes in ``align``:
    reading them as pixel centres (+0.5) or rounding the crop to 8 bits moves CFP-FP accuracy by
    ~0.25 points and its EER by ~0.3 (see README).
    """

    def __init__(self, crop: str, spec: align.CropSpec, detector=None, no_face: str = "whole-image"):
        self.crop, self.spec, self.detector, self.no_face = crop, spec, detector, no_face

    def __call__(self, sample: Sample) -> Tuple[np.ndarray, np.ndarray, Optional[Tuple[str, str]]]:
        image = read_image(sample.path)
        if self.crop == "full":
            return image, align.full_image_matrix(image.shape[1], image.shape[0], self.spec.size), None
        if self.crop == "fiducials":
            if sample.landmarks is None:
                raise SfpnError(f"{sample.path}: no landmarks for --crop fiducials (use full or detect)")
            return image, self.spec.matrix(align.points_box(read_cfp_landmarks(sample.landmarks))), None
        det = find_face(self.detector, image, retry_pad=RETRY_PAD, fallback=self.no_face, pick="largest")
        return image, self.spec.matrix(det.face.box), (det.source, det.face.found_by)


def crop_samples(samples: Sequence[Sample], spec: align.CropSpec, crop: str, detector=None) -> np.ndarray:
    """Model input crops of ``samples`` framed as ``embed_samples`` frames them (a face that cannot
    be found is an error)."""
    cropper = _Cropper(crop, spec, detector, no_face="error")
    images, matrices = zip(*(cropper(s)[:2] for s in samples))
    return spec.crop(images, matrices)


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

    ``margin`` defaults to the model's for the crop (``crop_spec``).
    ``no_face`` (detect): use the whole image ("whole-image") or record the image as a failure ("error").
    """
    if crop == "detect" and detector is None:
        raise SfpnError("--crop detect needs a face detector")
    spec = crop_spec(crop, embedder, margin, detector)
    cropper = _Cropper(crop, spec, detector, no_face)
    n = len(samples)
    vectors = np.zeros((n, embedder.descriptor_dim), np.float32)
    failures: Dict[int, str] = {}
    sources: Counter = Counter()
    found_by: Counter = Counter()

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
            crops = spec.crop(images, matrices, flip=flip, threads=1)
        return crops, index, failed, found

    workers = threads or default_threads()
    begin, done = time.perf_counter(), 0
    starts = iter(range(0, n, CHUNK))
    with ThreadPoolExecutor(workers, thread_name_prefix="sfpn-eval") as pool:
        pending = deque(pool.submit(prepare, s) for s in itertools.islice(starts, workers + 1))
        while pending:
            crops, index, failed, found = pending.popleft().result()
            failures.update(failed)
            sources.update(s[0] for s in found if s)
            found_by.update(s[1] for s in found if s and s[1])
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
                      time.perf_counter() - begin, dict(found_by))


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
