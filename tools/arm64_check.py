"""Helper for tools/arm64-check: the steps that are easier in Python than in bash.

Runs both on the x86 host and inside the arm64 chroot, so every sub-command but ``topk`` /
``embed`` / ``info`` is stdlib only:

  mirror               the host's Debian mirror, read from the apt sources (one line)
  pins NAME...         NAME==<host version> per package (+ the deps of --deps-of packages)
  hwcap                the aarch64 CPU features that matter for the kernels' build flags
  topk OUT.npz         int8 top-k on fixed seeded inputs (kernel and Gallery)
  embed OUT.npz ...    descriptors of the example crops on one backend
  compare HOST ARM     x86 vs aarch64 results: top-k equality and descriptor max-abs-diff
  check-info INFO.json ``sfpn-edge info --json`` from the chroot reports ARM and auto picks it
"""
from __future__ import annotations

import argparse
import glob
import json
import platform
import sys
from pathlib import Path

TOPK_SEED, TOPK_PROBES, TOPK_ROWS, TOPK_DIM, TOPK_K = 20240, 16, 3000, 1000, 10
# fp32 descriptors on two ISAs: same tolerance as tests/test_parity.py (relative to max |output|).
EMBED_REL_TOL = 1e-4


# ------------------------------------------------------------------ host / chroot facts (stdlib)

def _sources_entries(paths):
    """(types, uris, suites) of every apt source, one-line (.list) and deb822 (.sources) formats."""
    for path in paths:
        text = Path(path).read_text(errors="replace")
        if path.endswith(".sources"):
            for stanza in text.split("\n\n"):
                fields, key = {}, None
                for line in stanza.splitlines():
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    if line[0].isspace() and key:
                        fields[key] += " " + line.strip()
                        continue
                    key, _, value = line.partition(":")
                    key = key.strip().lower()
                    fields[key] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                yield fields.get("types", "").split(), fields.get("uris", "").split(), \
                    fields.get("suites", "").split()
        else:
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if words and words[1:2] and words[1].startswith("["):  # [arch=... signed-by=...]
                    while words[1:] and not words[1].endswith("]"):
                        del words[1]
                    del words[1]
                if len(words) >= 3:
                    yield [words[0]], [words[1]], [words[2]]


def apt_mirror(root: str = "/etc/apt") -> str:
    """The first binary Debian archive (not security) configured on this machine."""
    paths = [f"{root}/sources.list"] if Path(f"{root}/sources.list").exists() else []
    paths += sorted(glob.glob(f"{root}/sources.list.d/*.list") + glob.glob(f"{root}/sources.list.d/*.sources"))
    for types, uris, suites in _sources_entries(paths):
        release_suites = [s for s in suites if "-" not in s and "/" not in s]
        for uri in uris:
            if "deb" in types and release_suites and uri.startswith(("http://", "https://", "file:/")) \
                    and "security" not in uri:
                return uri.rstrip("/")
    raise SystemExit(f"no Debian archive found in {paths or root}: configure an apt mirror first")


# Not pinned to the host's versions: ai-edge-litert 2.x ships aarch64 wheels for cp312+ only, so a Pi
# (Python 3.11, Pi OS bookworm) gets 1.4.0, and so does the arm64 root; setuptools builds mat-io
# inside, which needs a newer one than a fresh host venv's 65.5 ("invalid pyproject.toml config:
# project.license"), so the root takes the newest.
UNPINNED = {"ai-edge-litert", "setuptools"}


def pins(names: list, deps_of: list) -> list:
    """``name==version`` as installed on this (host) interpreter, plain ``name`` when absent or
    in ``UNPINNED``.

    ``deps_of`` packages (those built from source inside) contribute their runtime requirements,
    so their dependencies still come as wheels."""
    import importlib.metadata as md
    import re

    wanted = list(names)
    for name in deps_of:
        for req in md.requires(name) or []:
            if "extra ==" not in req:
                wanted.append(re.split(r"[ ;<>=!~\[]", req, 1)[0])
    out = []
    for name in dict.fromkeys(wanted):
        if name in UNPINNED:
            out.append(name)
            continue
        try:
            out.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            out.append(name)
    return out


def arm_features() -> list:
    """aarch64 features from the ELF auxiliary vector (what the kernel/QEMU grant this process).

    /proc/cpuinfo cannot be trusted under qemu-user (it may show the x86 host's CPU)."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    hwcap, hwcap2 = libc.getauxval(16), libc.getauxval(26)  # AT_HWCAP, AT_HWCAP2
    bits = {"asimd": (hwcap, 1), "asimdhp": (hwcap, 10), "asimddp": (hwcap, 20), "sve": (hwcap, 22),
            "i8mm": (hwcap2, 13), "bf16": (hwcap2, 14), "sve2": (hwcap2, 1)}
    return [name for name, (word, bit) in bits.items() if word >> bit & 1]


# ------------------------------------------------------------------ measurements (need sfpn_edge)

def run_topk(out: str) -> None:
    """int8 top-k of fixed inputs: the raw kernel on identical codes, and the int8 Gallery."""
    import numpy as np

    from sfpn_edge.kernels import scoring
    from sfpn_edge.score import Gallery

    rng = np.random.default_rng(TOPK_SEED)
    # Descriptor-like data: non-negative, a shared component, so near-ties are common.
    base = rng.random(TOPK_DIM, dtype=np.float32)
    gallery = (base + rng.random((TOPK_ROWS, TOPK_DIM), dtype=np.float32)) ** 2
    probes = gallery[rng.choice(TOPK_ROWS, TOPK_PROBES, replace=False)] \
        + 0.3 * rng.random((TOPK_PROBES, TOPK_DIM), dtype=np.float32)
    gq, gs, gr = scoring.quantize_int8(gallery)
    pq, ps, _ = scoring.quantize_int8(np.ascontiguousarray(probes, np.float32))
    kidx, kscore = scoring.topk_int8(pq, ps, gq, gs, gr, TOPK_K)
    gidx, gscore = Gallery(gallery, storage="int8").topk(probes, TOPK_K)
    np.savez(out, gallery_q=gq, probes_q=pq, kernel_idx=kidx, kernel_score=kscore,
             gallery_idx=gidx, gallery_score=gscore, variant=scoring.variants()["int8"],
             arch=platform.machine())
    print(f"top-k int8 on {platform.machine()} ({scoring.variants()['int8']} path): written {out}")


def run_embed(out: str, model_dir: str, crops: list, backend: str) -> None:
    """Descriptors of ``crops`` (113x113 images, copied through the warp kernel): fp32, int8 for
    the native engine (whose code paths must agree bit for bit across ISAs)."""
    import numpy as np

    from sfpn_edge.align import crop_batch
    from sfpn_edge.embed import FaceEmbedder
    from sfpn_edge.io import read_image

    precision = "int8" if backend == "native" else "fp32"
    embedder = FaceEmbedder(model_dir, backend=backend, precision=precision, threads=1)
    size = embedder.input_size[0]
    images = [read_image(path) for path in crops]
    bad = [str(p) for p, im in zip(crops, images) if im.shape[:2] != (size, size)]
    if bad:
        raise SystemExit(f"example crops must be {size}x{size}: {bad}")
    identity = np.repeat(np.eye(2, 3)[None], len(images), axis=0)
    batch = crop_batch(images, identity, size=size, mean=tuple(embedder.mean))
    isa = embedder.model.describe().get("isa", "")
    np.savez(out, inputs=batch, descriptors=embedder.embed(batch), backend=backend, arch=platform.machine(), isa=isa)
    print(f"{backend} {precision} descriptors on {platform.machine()} {isa}: written {out}")


def compare(host: str, arm: str) -> int:
    """Print and check x86 vs aarch64: top-k identical, descriptors within EMBED_REL_TOL, the
    native int8 engine's identical (embed_native-CPU.npz on aarch64 vs embed_native.npz on x86)."""
    import numpy as np

    failures, report = [], {}
    h, a = np.load(Path(host) / "topk.npz"), np.load(Path(arm) / "topk.npz")
    if not (np.array_equal(h["gallery_q"], a["gallery_q"]) and np.array_equal(h["probes_q"], a["probes_q"])):
        failures.append("int8 quantisation differs")
    for kind in ("kernel", "gallery"):
        same_idx = bool(np.array_equal(h[f"{kind}_idx"], a[f"{kind}_idx"]))
        diff = float(np.abs(h[f"{kind}_score"] - a[f"{kind}_score"]).max())
        report[f"topk_{kind}"] = {"identical_idx": same_idx, "score_max_abs_diff": diff,
                                  "x86_path": str(h["variant"]), "arm_path": str(a["variant"])}
        if not same_idx:
            failures.append(f"int8 top-k ({kind}) indices differ")
    if float(np.abs(h["kernel_score"] - a["kernel_score"]).max()) > 1e-6:
        failures.append("int8 kernel scores differ by more than 1e-6")
    for path in sorted(Path(arm).glob("embed_*.npz")):
        a = np.load(path)
        h = np.load(Path(host) / (path.stem.split("-")[0] + ".npz"))
        hd, ad = h["descriptors"].astype(np.float64), a["descriptors"].astype(np.float64)
        diff = float(np.abs(hd - ad).max())
        rel = diff / float(np.abs(hd).max())
        cos = float(((hd * ad).sum(1) / np.linalg.norm(hd, axis=1) / np.linalg.norm(ad, axis=1)).min())
        report[path.stem] = {"inputs_max_abs_diff": float(np.abs(h["inputs"] - a["inputs"]).max()),
                             "descriptor_max_abs_diff": diff, "relative": rel, "min_cosine": cos}
        if "isa" in a.files:
            report[path.stem].update(x86_isa=str(h["isa"]), arm_isa=str(a["isa"]))
        if path.stem.startswith("embed_native") and diff != 0.0:
            failures.append(f"{path.stem}: the native int8 engine differs from x86 (max-abs-diff {diff:.2e})")
        elif rel > EMBED_REL_TOL:
            failures.append(f"{path.stem}: relative max-abs-diff {rel:.2e} > {EMBED_REL_TOL:g}")
    if not list(Path(arm).glob("embed_*.npz")):
        failures.append("no aarch64 descriptors to compare")
    print(json.dumps(report, indent=2))
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


def check_info(path: str) -> int:
    """``sfpn-edge info --json`` (run with --target auto) says aarch64 and resolves auto to ARM."""
    info = json.loads(Path(path).read_text())
    arch, choice = info["platform"]["arch"], info["choice"]
    problems = []
    if arch != "aarch64":
        problems.append(f"arch is {arch!r}, not aarch64")
    if "arm" not in info["available_targets"]:
        problems.append(f"'arm' is not among the available targets {info['available_targets']}")
    arm = info["targets"].get("arm", {})
    if choice["target"] != "auto" or (choice["backend"], choice["device"]) != (arm.get("backend"), arm.get("device")):
        problems.append(f"--target auto picked {choice}, not the ARM target {arm}")
    print(f"info: {arch}, features {info['platform']['features']}, targets {info['available_targets']}; "
          f"auto -> {choice['backend']} on {choice['device']}: {choice['reason']}")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("mirror")
    sub.add_parser("hwcap")
    p = sub.add_parser("pins")
    p.add_argument("names", nargs="+")
    p.add_argument("--deps-of", nargs="*", default=[])
    p = sub.add_parser("topk")
    p.add_argument("out")
    p = sub.add_parser("embed")
    p.add_argument("out")
    p.add_argument("--model", required=True)
    p.add_argument("--backend", required=True, choices=["onnxruntime", "openvino", "litert", "native"])
    p.add_argument("crops", nargs="+")
    p = sub.add_parser("compare")
    p.add_argument("host")
    p.add_argument("arm")
    p = sub.add_parser("check-info")
    p.add_argument("info")
    args = parser.parse_args(argv)
    if args.cmd == "mirror":
        print(apt_mirror())
    elif args.cmd == "pins":
        print("\n".join(pins(args.names, args.deps_of)))
    elif args.cmd == "hwcap":
        print(" ".join(arm_features()))
    elif args.cmd == "topk":
        run_topk(args.out)
    elif args.cmd == "embed":
        run_embed(args.out, args.model, args.crops, args.backend)
    elif args.cmd == "compare":
        return compare(args.host, args.arm)
    elif args.cmd == "check-info":
        return check_info(args.info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
