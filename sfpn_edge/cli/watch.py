"""``sfpn-edge watch SOURCE --db DB``: faces in a camera, video, stream or folder of frames, identified."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from sfpn_edge.cli.common import add_detector_options, add_model_options, add_threshold_options, make_verifier
from sfpn_edge.cli.gallery import add_offline_cache_option, gallery_db, offline_cache, warn_offline


def register(subparsers) -> None:
    from sfpn_edge.quality import DEFAULT_GATE, GATES

    parser = subparsers.add_parser(
        "watch",
        help="track and identify the faces of a camera, video file, stream or folder of frames",
        description="Detect faces every N frames, track them in between, and identify each track against "
                    "the gallery once its quality passes the gate (the mean of its best crops, at the "
                    "threshold identify uses; below it a face stays unknown). Prints one event per track "
                    "change (enter, identify, leave) and a summary at the end or on SIGINT/SIGTERM. "
                    "Cameras and URLs run in real time (frames are dropped rather than lag); files and "
                    "folders are read frame by frame, deterministically. --fallback defaults to none here: "
                    "most frames hold no face, and each would run the fallback detectors.",
    )
    parser.add_argument("source", metavar="SOURCE",
                        help="camera index (0), video file, rtsp:// or http:// URL, or a folder of frames")
    parser.add_argument("--db", type=gallery_db, required=True,
                        help="gallery file or postgresql:// URL (made by `sfpn-edge enroll`)")
    add_offline_cache_option(parser)
    parser.add_argument("--json-lines", action="store_true",
                        help="print events (and the final summary) as JSON Lines on stdout")
    parser.add_argument("--every-frame", action="store_true", help="also print every frame's tracked boxes")
    parser.add_argument("--stats", action="store_true",
                        help="print frames/s, detector and embedding ms and dropped frames to stderr at the end")
    group = parser.add_argument_group("tracking")
    group.add_argument("--detect-every", type=int, default=5, metavar="N",
                       help="run the detector every N frames (and after a track is missed or leaves; default: 5)")
    group.add_argument("--min-crops", type=int, default=2, metavar="K",
                       help="good crops a track needs before it is identified (default: 2)")
    group.add_argument("--reid-after", type=float, default=10.0, metavar="S",
                       help="identify a track again after S seconds (default: 10)")
    group.add_argument("--min-quality", choices=sorted(GATES), default=DEFAULT_GATE, metavar="GATE",
                       help=f"quality gate a crop must pass to count ({', '.join(sorted(GATES))}; default: {DEFAULT_GATE})")
    source = parser.add_argument_group("source")
    source.add_argument("--fps", type=float, default=None,
                        help="frame rate for event times (default: the video's; folders: 25)")
    source.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                        help="read in a thread and drop frames rather than lag (default: for cameras and URLs only)")
    source.add_argument("--retries", type=int, default=3,
                        help="reconnection attempts for a camera or stream, with doubling backoff (default: 3)")
    source.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="seconds to wait when opening or reading a stream (default: 5)")
    add_detector_options(parser.add_argument_group("face pipeline"))
    add_threshold_options(parser)
    add_model_options(parser)
    # no fallback chain unless asked: most frames of a camera hold no face, and each would run it
    parser.set_defaults(func=run, margin=None, flip=None, face_policy="all", fallback=())


def run(args: argparse.Namespace) -> int:
    from sfpn_edge.gallery import FaceGallery
    from sfpn_edge.stream import FaceStream

    cache = offline_cache(args)  # refused before the model loads
    verifier = make_verifier(args)
    with FaceGallery(args.db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim,
                     readonly=True, offline_cache=cache) as gallery:
        stream = FaceStream(args.source, verifier, gallery, detect_every=args.detect_every,
                            min_crops=args.min_crops, best_crops=max(5, args.min_crops),
                            reid_after=args.reid_after, fps=args.fps, realtime=args.realtime,
                            retries=args.retries, timeout=args.timeout)
        offline = warn_offline(args, gallery)
        previous = {sig: signal.signal(sig, lambda *_: stream.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for result in stream:
                offline = warn_offline(args, gallery, offline)
                for event in result.events:
                    _print(event.to_dict(), args.json_lines)
                if args.every_frame:
                    _print({"event": "frame", **result.to_dict()}, args.json_lines)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            summary = stream.summary()
            _print({"event": "summary", **summary}, args.json_lines)
            if args.stats:
                print(_stats(summary), file=sys.stderr)
    return 0


def _print(record: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record), flush=True)
        return
    kind = record["event"]
    if kind == "summary":
        names = ", ".join(f"{n} ({k} track{'s' if k > 1 else ''})" for n, k in record["identities"].items())
        print(f"{record['frames']} frames, {record['tracks']} tracks: {names or 'nobody named'}; "
              f"{record['unknown_tracks']} unknown", flush=True)
    elif kind == "frame":
        boxes = "; ".join(f"#{t['track_id']} {t['identity'] or '?'} {t['box']}" for t in record["tracks"])
        print(f"frame {record['frame']}: {boxes or 'no face'}", flush=True)
    else:
        who = "" if kind == "enter" else f" {record['identity'] or 'unknown'}"
        score = "" if record["score"] is None else f" score {record['score']:.3f} (threshold {record['threshold']:.3f})"
        print(f"{record['time']:8.2f}s frame {record['frame']}: track {record['track_id']} {kind}{who}{score}",
              flush=True)


def _stats(s: dict) -> str:
    def ms(v):
        return "-" if v is None else f"{v:.1f} ms"
    return (f"watch: {s['frames']} frames in {s['seconds']:.1f} s ({s['fps'] or 0:.1f} frames/s), "
            f"detector {ms(s['detect_ms'])} x {s['detections']}, embedding {ms(s['embed_ms'])} per face "
            f"x {s['faces_embedded']}, {s['dropped']} dropped")
