"""``sfpn-edge info [--json] [--target T]``: this machine, its backends, and what a target picks."""
from __future__ import annotations

import argparse

from sfpn_edge.cli.output import emit


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show the platform, CPU features, inference devices and the backend a target picks",
        description="Report the architecture, CPU model and features (SIMD, int8 dot product, bf16), "
                    "OpenVINO devices, ONNX Runtime providers, library versions, the registered backends "
                    "(precisions, devices), the targets usable "
                    "here, and which backend + device --target (default auto) chooses and why, for fp32 and for int8. "
                    "With no backend importable it still exits 0 and says what to install.",
    )
    parser.add_argument("--target", default="auto", metavar="T",
                        help="target to resolve: cpu, arm, vpu or auto (default auto); an unavailable "
                             "target is an error listing what is available")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import platform

    import numpy

    from sfpn_edge import __version__
    from sfpn_edge.backends import registry, select

    env = select.Environment.detect()
    result = {
        "sfpn_edge": __version__,
        "python": platform.python_version(),
        "platform": env.platform.as_dict(),
        "openvino_devices": list(env.openvino_devices) if env.openvino_devices is not None else None,
        "onnxruntime_providers": list(env.ort_providers) if env.ort_providers is not None else None,
        "versions": {"numpy": numpy.__version__, **env.versions},
        "backends": {spec.name: _backend(spec) for spec in registry.specs()},
        "available_targets": select.available_targets(env),
        "choice": _choose(args.target, env, "fp32"),
        "choice_int8": _choose(args.target, env, "int8"),
        "targets": {t: select.choose(t, env).as_dict() for t in select.available_targets(env)},
        "defaults": _defaults(args.target, env),
    }
    emit(result, args.json, _human)
    return 0


def _choose(target: str, env, precision: str, int8_gate=None) -> dict:
    """What ``target`` picks for ``precision``; for ``auto`` on a machine with no usable backend, a
    choice of nothing that says why (an explicitly named target that is unavailable stays an error)."""
    from sfpn_edge.backends import select
    from sfpn_edge.errors import SfpnError

    try:
        return select.choose(target, env, precision=precision, int8_gate=int8_gate).as_dict()
    except SfpnError as exc:
        if target.lower() != "auto":
            raise
        return {"target": target, "backend": None, "device": None,
                "reason": f"nothing can run here: {exc}; install a backend, e.g. pip install onnxruntime"}


def _defaults(target: str, env) -> dict:
    """What the photo commands' defaults (``--backend auto --precision auto``) run for the default
    model (``$SFPN_EDGE_MODEL``, else the cache's): its int8 gate decides the precision."""
    import os

    from sfpn_edge.errors import SfpnError
    from sfpn_edge.model_dir import ModelDir
    from sfpn_edge.models import default_model_dir

    path = os.environ.get("SFPN_EDGE_MODEL") or default_model_dir()
    try:
        gate = ModelDir(path).int8_gate()
    except SfpnError as exc:
        return {"model_dir": str(path), "backend": None, "precision": None,
                "reason": f"no model ({exc}); run `sfpn-edge fetch-weights`"}
    return {"model_dir": str(path), "precision": None, **_choose(target, env, "auto", gate)}


def _backend(spec) -> dict:
    """What ``info`` reports about one registered backend."""
    missing = spec.missing()
    return {"precisions": list(spec.precisions), "devices": [] if missing else spec.devices(),
            "available": missing is None, "missing": missing, "summary": spec.summary}


def _human(r: dict) -> str:
    p, c, i8 = r["platform"], r["choice"], r["choice_int8"]
    versions = ", ".join(f"{k} {v.split('-')[0]}" for k, v in r["versions"].items())
    return "\n".join([
        f"sfpn-edge {r['sfpn_edge']} (Python {r['python']}; {versions})",
        f"platform:   {p['system']} {p['arch']}, {p['cpu_model']}, {p['logical_cpus']} logical CPUs",
        f"features:   {' '.join(p['features']) or '(none reported)'}"
        f"{'  [int8 dot product]' if p['int8_dot'] else ''}",
        f"openvino:   {_list(r['openvino_devices'])}",
        f"onnxruntime: {_list(r['onnxruntime_providers'])}",
        *(f"backend {name}: {', '.join(b['precisions'])} on {', '.join(b['devices']) or '(no device)'}"
          if b["available"] else f"backend {name}: {b['missing']}" for name, b in r["backends"].items()),
        f"targets:    {', '.join(r['available_targets']) or '(none)'}",
        _describe_choice(c["target"], c),
        _describe_choice(f"{c['target']}, int8", i8),
        _describe_default(r["defaults"]),
    ])


def _describe_default(d: dict) -> str:
    if d["backend"] is None:
        return f"defaults -> nothing: {d['reason']}"
    return f"defaults (auto, model {d['model_dir']}) -> {d['backend']} {d['precision']} on {d['device']}: {d['reason']}"


def _describe_choice(label: str, c: dict) -> str:
    if c["backend"] is None:
        return f"{label} -> no backend: {c['reason']}"
    return f"{label} -> {c['backend']} on {c['device']}: {c['reason']}"


def _list(items) -> str:
    return "not installed" if items is None else (", ".join(items) or "(none)")
