"""One steady-state workload between two markers, for the instruction-class plugin (tools/arm64-cost).

    python probe.py embed BACKEND PRECISION --model DIR --calls N CROP...
    python probe.py detect DETECTOR --calls N IMAGE
    python probe.py tflite --calls N MODEL.tflite     # a reference model on LiteRT + XNNPACK, 1 thread

Everything (imports, model load, a warm-up call) happens before marker 1; marker 2 follows
``--calls`` identical calls, so (counts at 2 - counts at 1) / calls is one batch-1 face or one image.
A marker is a syscall with a number Linux does not have (the plugin's MARK_SYSCALL); natively it
just fails with ENOSYS, so the probe also runs outside the emulator.
"""
from __future__ import annotations

import argparse
import ctypes
import sys

MARK_SYSCALL = 0x5F3E


def mark(tag: int) -> None:
    ctypes.CDLL(None).syscall(MARK_SYSCALL, ctypes.c_long(tag))


def embed_workload(args):
    import numpy as np

    from sfpn_edge.align import crop_batch
    from sfpn_edge.embed import FaceEmbedder
    from sfpn_edge.io import read_image

    embedder = FaceEmbedder(args.model, backend=args.backend, precision=args.precision, threads=1)
    size = embedder.input_size[0]
    image = read_image(args.inputs[0])
    batch = crop_batch([image], np.eye(2, 3)[None], size=size, mean=tuple(embedder.mean))
    return lambda: embedder.embed(batch)


def detect_workload(args):
    from sfpn_edge.detect.registry import make_detector
    from sfpn_edge.io import read_image
    from sfpn_edge.runtime import Runtime

    detector = make_detector(args.detector, None, Runtime.resolve("onnxruntime", threads=1), fallbacks=())
    image = read_image(args.inputs[0])
    return lambda: detector.detect(image)


def tflite_workload(args):
    """A float32 .tflite on LiteRT's default (XNNPACK) resolver at one thread, random input."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=args.inputs[0], num_threads=1)
    interp.allocate_tensors()
    spec = interp.get_input_details()[0]
    interp.set_tensor(spec["index"], np.random.default_rng(0).random(spec["shape"], np.float32))
    return interp.invoke


WORKLOADS = {"embed": embed_workload, "detect": detect_workload, "tflite": tflite_workload}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    e = sub.add_parser("embed")
    e.add_argument("backend")
    e.add_argument("precision")
    e.add_argument("--model", required=True)
    d = sub.add_parser("detect")
    d.add_argument("detector")
    t = sub.add_parser("tflite")
    for p in (e, d, t):
        p.add_argument("--calls", type=int, default=5)
        p.add_argument("inputs", nargs=1)
    args = parser.parse_args(argv)
    call = WORKLOADS[args.what](args)
    call()  # warm-up: lazy allocations, first-run paths
    mark(1)
    for _ in range(args.calls):
        call()
    mark(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
