"""Options shared by the commands that run the model on photos (verify, embed, enroll, identify).

Model resolution: ``--model DIR``, else ``$SFPN_EDGE_MODEL``, else the cache's default model
(``sfpn_edge.models.default_model_dir()``, filled by ``sfpn-edge fetch-weights``).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from sfpn_edge.backends import registry
from sfpn_edge.errors import ModelError, SfpnError

MODEL_ENV = "SFPN_EDGE_MODEL"


def add_model_options(parser: argparse.ArgumentParser, auto: bool = True) -> None:
    """--model, --backend, --precision, --device, --target, --threads (one ``Runtime``); ``auto``:
    the defaults are ``--backend auto --precision auto`` (else onnxruntime fp32, for measurements)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", type=Path, metavar="DIR",
                       help=f"converted model directory (default: ${MODEL_ENV}, else the model "
                            "`sfpn-edge fetch-weights` put in the cache)")
    default = "auto: the fastest backend here, see `sfpn-edge info`" if auto else "onnxruntime"
    group.add_argument("--backend", default=None, choices=registry.names() + ("auto",),
                       help=f"inference backend (default: {default}; native runs the int8 plan on "
                            "sfpn-edge's own kernels)")
    group.add_argument("--precision", default=None,
                       help="model precision listed in the model's manifest, e.g. fp32, fp16, int8, or auto: int8 "
                            "where this CPU has int8 dot products and the model's int8 file passed its accuracy "
                            f"gate, else fp32 (default: {'auto' if auto else 'fp32'}, or the backend's only "
                            "precision: int8 for native)")
    group.add_argument("--device", default=None, metavar="D",
                       help="device of the backend, e.g. CPU, XNNPACK (onnxruntime), GPU, NPU (openvino); default CPU")
    group.add_argument("--target", default=None, metavar="T",
                       help="let the target policy pick backend and device: cpu, arm, vpu or auto "
                            "(see `sfpn-edge info`; not with --backend)")
    group.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="threads per inference (default: the usable CPUs, at most 4)")
    parser.set_defaults(auto_runtime=auto)


def runtime(args: argparse.Namespace, model):
    """The ``Runtime`` the parsed model options describe for ``model`` (a ``ModelDir``: its int8
    gate decides ``--precision auto``), or SfpnError for a bad combination."""
    from sfpn_edge.runtime import Runtime, make_runtime

    gate = model.int8_gate()
    try:
        auto = getattr(args, "auto_runtime", True)
        if auto and args.target is None:
            return make_runtime(None, args.backend, args.precision, args.device, args.threads, int8_gate=gate)
        return Runtime.resolve(args.backend, device=args.device, precision=args.precision or ("auto" if auto else None),
                               threads=args.threads, target=args.target, int8_gate=gate)
    except ValueError as exc:
        raise SfpnError(str(exc)) from None


def add_detector_options(group) -> None:
    """--detector NAME and --detector-weights PATH (on an argument group or parser)."""
    from sfpn_edge.detect import registry as detectors

    group.add_argument("--detector", default=detectors.DEFAULT, choices=detectors.names(),
                       help=f"face detector (default: {detectors.DEFAULT}): "
                            + "; ".join(f"{s.name}: {s.summary}" for s in detectors.specs()))
    group.add_argument("--detector-weights", type=Path, metavar="PATH",
                       help="the detector's weights (default: the cache, filled by "
                            "`sfpn-edge fetch-weights --detector NAME`; yunet: its .onnx file)")
    group.add_argument("--fallback", type=_fallbacks, metavar="NAME[,NAME]|none",
                       help="detectors tried in order on photos the detector finds no face in, with their "
                            "cached weights; skipped when not fetched (default: the detector's own chain, "
                            + "; ".join(f"{s.name}: {', '.join(s.fallbacks)}" for s in detectors.specs() if s.fallbacks)
                            + "; none for the others)")


ONE_FACE = ("largest", "error")
EVERY_FACE = ("largest", "all", "error")


def add_pipeline_options(parser: argparse.ArgumentParser, face_policies: tuple = ONE_FACE) -> None:
    """Detector weights, crop margin, flip averaging, the several-faces policy (``face_policies``:
    the choices this command supports) and the quality gate."""
    from sfpn_edge.quality import DEFAULT_GATE, GATES

    group = parser.add_argument_group("face pipeline")
    add_detector_options(group)
    group.add_argument("--margin", type=float, default=None,
                       help="crop margin around the detected box (default: the model's, 0.10)")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                       help="also embed the mirrored face and sum the descriptors (default: on, or the "
                            "calibration's setting); --no-flip halves the embedding time (CFP-FF/FP "
                            "-0.07/-0.23 pt at fp32, no measured change on int8)")
    every = ", all: every face, one result each" if "all" in face_policies else ""
    group.add_argument("--face-policy", choices=face_policies, default="largest",
                       help=f"several faces in a photo: largest: use the largest (default){every}, "
                            "error: refuse the photo")
    group.add_argument("--min-quality", choices=sorted(GATES), default=None, metavar="GATE",
                       help=f"refuse (exit 2) a photo whose face fails the quality gate GATE ({', '.join(sorted(GATES))}; "
                            f"{DEFAULT_GATE} does not limit yaw, so profiles pass; frontal does). Without it the "
                            f"quality is reported, judged by {DEFAULT_GATE}, and never refuses")


def add_threshold_options(parser: argparse.ArgumentParser) -> None:
    """--threshold T | --far F | --security LEVEL."""
    from sfpn_edge.thresholds import SECURITY

    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, default=None, metavar="T",
                       help="accept when the cosine score is at least T")
    group.add_argument("--far", type=float, default=None, metavar="F",
                       help="choose the threshold by false-accept rate (default: 1e-3, measured on CFP-FP)")
    group.add_argument("--security", choices=tuple(SECURITY), default=None,
                       help="the threshold at a named false-accept rate: "
                            + ", ".join(f"{name} {far:g}" for name, far in SECURITY.items())
                            + " (built-in: 1e-3 and 1e-2 on the CFP-FP protocol, 1e-4 on all 9.7 M CFP "
                              "frontal-profile impostor pairs; a calibration's own points when calibrated)")


def threshold_far(args: argparse.Namespace):
    """The FAR the threshold options ask for (None: the default or a raw threshold)."""
    from sfpn_edge.thresholds import SECURITY

    security = getattr(args, "security", None)
    return SECURITY[security] if security is not None else getattr(args, "far", None)


def describe_genuine_accept(r: dict) -> str:
    """One line on the measured genuine-accept rate at a result's threshold (or that there is none)."""
    rates = r.get("genuine_accept_rate")
    if not rates:
        return "  genuine-accept rate at this threshold: not measured"
    shares = ", ".join(f"{name} {100 * rate:.1f} %" for name, rate in rates.items())
    return f"  genuine pairs accepted at this threshold: {shares} (measured on {r['genuine_accept_measured_on']})"


def model_dir(args: argparse.Namespace) -> Path:
    """The model directory to use, or ModelError telling the user how to get one."""
    if args.model is not None:
        path, origin = Path(args.model), "--model"
    elif os.environ.get(MODEL_ENV):
        path, origin = Path(os.environ[MODEL_ENV]), f"${MODEL_ENV}"
    else:
        from sfpn_edge.models import default_model_dir

        path, origin = default_model_dir(), "the default location"
    if not path.is_dir():
        raise ModelError(f"no model at {path} ({origin}): run `sfpn-edge fetch-weights` "
                         "or pass --model DIR")
    return path


def make_verifier(args: argparse.Namespace):
    """A FaceVerifier configured from the parsed model / pipeline / threshold options."""
    from sfpn_edge.pipeline import FaceVerifier

    model, rt = _model_and_runtime(args)
    return FaceVerifier(model, runtime=rt, detector=args.detector,
                        detector_weights=args.detector_weights, fallbacks=args.fallback,
                        margin=args.margin, flip=args.flip, face_policy=args.face_policy,
                        min_quality=args.min_quality,
                        threshold=getattr(args, "threshold", None), far=threshold_far(args))


def make_embedder(args: argparse.Namespace):
    """A FaceEmbedder for the parsed model options."""
    from sfpn_edge.embed import FaceEmbedder

    model, rt = _model_and_runtime(args)
    return FaceEmbedder(model, runtime=rt)


def _model_and_runtime(args: argparse.Namespace) -> tuple:
    """(ModelDir, Runtime) for the parsed options; a bad --threads is reported before a bad model."""
    from sfpn_edge.model_dir import ModelDir
    from sfpn_edge.threads import check_threads

    try:
        check_threads(args.threads)
    except ValueError as exc:
        raise SfpnError(str(exc)) from None
    model = ModelDir(model_dir(args))
    return model, runtime(args, model)


def make_detector(args: argparse.Namespace, embedder):
    """The face detector (and its fallback chain) for the parsed pipeline options, on ``embedder``'s
    runtime, with fallback faces framed as ``embedder``'s model frames them."""
    from sfpn_edge.detect.registry import make_detector as make

    model = embedder.dir
    return make(args.detector, args.detector_weights, embedder.runtime, fallbacks=args.fallback,
                framing=lambda name: (model.margin(name), model.shift(name)))


def _fallbacks(text: str) -> tuple:
    from sfpn_edge.detect import registry as detectors

    names = () if text.strip().lower() == "none" else tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in detectors.names()]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown detector {unknown[0]!r}; choose from "
                                         f"{', '.join(detectors.names())} or none")
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
