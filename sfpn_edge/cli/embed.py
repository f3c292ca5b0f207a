"""``sfpn-edge embed IMG... --out file.npy``: face descriptors of photos."""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from sfpn_edge.cli.common import add_model_options, add_pipeline_options, make_verifier
from sfpn_edge.cli.output import emit
from sfpn_edge.cli.verify import describe_face, format_timings

CHUNK = 32  # photos decoded and embedded at a time (bounds memory for long lists)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="write the face descriptors of photos to a .npy file",
        description="Detect the face in each photo (the largest if there are several), embed it and write "
                    "an [N, D] float32 array of L2-normalised descriptors, in argument order, to --out. "
                    "Any unusable photo stops the command before anything is written.",
    )
    parser.add_argument("images", type=Path, nargs="+", metavar="IMG", help="photos")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.npy", help="output array (.npy)")
    add_pipeline_options(parser)
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON summary (faces used, timings)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from sfpn_edge.cache import atomic_write_bytes
    from sfpn_edge.errors import SfpnError

    if args.out.is_dir():
        raise SfpnError(f"{args.out}: is a directory; give a file name for --out")
    verifier = make_verifier(args)
    timings: dict = {}
    parts, faces = [], []
    for start in range(0, len(args.images), CHUNK):
        chunk = args.images[start:start + CHUNK]
        desc, found = verifier.embed_images(chunk, [str(p) for p in chunk], timings=timings)
        parts.append(desc)
        faces += found
    embeddings = np.concatenate(parts)
    buffer = io.BytesIO()
    np.save(buffer, embeddings)
    try:
        atomic_write_bytes(args.out, buffer.getvalue())
    except OSError as exc:
        raise SfpnError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    result = {
        "out": str(args.out),
        "shape": list(embeddings.shape),
        "images": [{"image": str(p), **f.to_dict()} for p, f in zip(args.images, faces)],
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
    }
    emit(result, args.json, _human)
    return 0


def _human(r: dict) -> str:
    lines = [f"{item['image']}: {describe_face(item)}" for item in r["images"]]
    n, d = r["shape"]
    lines.append(f"wrote {n} x {d} embeddings to {r['out']} ({format_timings(r['timings_ms'])})")
    return "\n".join(lines)
