"""``sfpn-edge embed IMG... --out file.npy``: face descriptors of photos."""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from sfpn_edge.cli.common import EVERY_FACE, add_model_options, add_pipeline_options, make_verifier
from sfpn_edge.cli.output import emit
from sfpn_edge.cli.verify import describe_face, format_timings

CHUNK = 32  # photos decoded and embedded at a time (bounds memory for long lists)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="write the face descriptors of photos to a .npy file",
        description="Detect the face in each photo (the largest if there are several), embed it and write "
                    "an [N, D] float32 array of L2-normalised descriptors, in argument order, to --out. "
                    "With --face-policy all every face is embedded: one row per face, photo by photo, "
                    "largest face first, and the JSON lists each photo's faces with their row. "
                    "Any unusable photo stops the command before anything is written.",
    )
    parser.add_argument("images", type=Path, nargs="+", metavar="IMG", help="photos")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.npy", help="output array (.npy)")
    add_pipeline_options(parser, EVERY_FACE)
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
    photos = []
    for start in range(0, len(args.images), CHUNK):
        chunk = args.images[start:start + CHUNK]
        photos += verifier.embed_photos(chunk, [str(p) for p in chunk], timings=timings)
    embeddings = np.concatenate([desc for desc, _ in photos])
    buffer = io.BytesIO()
    np.save(buffer, embeddings)
    try:
        atomic_write_bytes(args.out, buffer.getvalue())
    except OSError as exc:
        raise SfpnError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    result = {
        "out": str(args.out),
        "shape": list(embeddings.shape),
        "face_policy": args.face_policy,
        "images": _images(args.images, [faces for _, faces in photos], args.face_policy == "all"),
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
    }
    emit(result, args.json, _human)
    return 0


def _images(paths, faces, every: bool) -> list:
    """One record per photo: its face's fields, or (every face) its faces, each with its row."""
    if not every:
        return [{"image": str(p), **f[0].to_dict()} for p, f in zip(paths, faces)]
    out, row = [], 0
    for path, found in zip(paths, faces):
        out.append({"image": str(path), "faces": [{"row": row + i, **f.to_dict()} for i, f in enumerate(found)]})
        row += len(found)
    return out


def _human(r: dict) -> str:
    lines = []
    for item in r["images"]:
        if "faces" not in item:
            lines.append(f"{item['image']}: {describe_face(item)}")
            continue
        lines.append(f"{item['image']}: {len(item['faces'])} face(s)")
        lines += [f"  row {face['row']}: {describe_face(face, True)}" for face in item["faces"]]
    n, d = r["shape"]
    lines.append(f"wrote {n} x {d} embeddings to {r['out']} ({format_timings(r['timings_ms'])})")
    return "\n".join(lines)
