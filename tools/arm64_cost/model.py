"""Per-call instruction classes -> estimated time on a Raspberry Pi's core (tools/arm64-cost).

    python model.py report COUNTS_DIR OUT.json [--markdown OUT.md]   # COUNTS_DIR/QEMU_CPU/NAME.txt

An issue-rate (throughput) model: every class is charged to the pipelines that can execute it,
at the rate the core's Software Optimization Guide gives, and a call takes as many cycles as its
busiest resource (decode width, vector pipes, load/store pipes, integer pipes, branch pipe):
  Cortex-A76 (Raspberry Pi 5, 2.4 GHz): Arm Cortex-A76 Software Optimization Guide
    (PJDOC-466751330-7215), section 2 (4-wide decode; two ASIMD/FP pipes V0/V1; two load/store
    address pipes; three integer pipes and one branch pipe) and section 3 (dot product and FP
    multiply-accumulate on V0 and V1, integer multiply and multiply-accumulate on V0 only, integer
    accumulate -- pairwise add-accumulate long, absolute-difference accumulate, shift accumulate --
    on V1 only).
  Cortex-A72 (Raspberry Pi 4, 1.8 GHz): Arm Cortex-A72 Software Optimization Guide (UAN 0016A),
    same sections (3-wide decode; ASIMD/FP pipes F0/F1 with integer multiplies on F0 only and the
    integer accumulates on F1 only; one load and one store pipe; two integer pipes and one branch
    pipe; no dot-product instructions). Its ASIMD/FP pipes are 64 bits wide: a 128-bit (Q-form)
    FP operation -- multiply, multiply-accumulate, add, max/min, convert -- issues as two uops
    taking both F0 and F1, and a Q-form non-widening integer multiply (MUL/MLA/SQDMULH) two uops
    on F0 (widening SMULL/SMLAL are one); so those classes cost two vector slots there
    (``q_slots``), one on the A76's 128-bit pipes.
  LLVM's scheduling models for these cores (AArch64SchedA57.td, which the A72 uses, and
  AArch64SchedNeoverseN1.td, the A76's server twin) put the same instructions on the same pipes.
What it ignores: latencies and dependency chains (a loop bound by one accumulator runs slower),
caches, memory bandwidth and TLB misses, branch mispredictions, frequency throttling, the other
threads of a runtime, and the A72's double-pumped 128-bit loads and stores (LDP of q registers,
ST1 of 16 bytes: two uops on its load or store pipe). So the numbers are lower bounds on a warm
core, labelled estimates.

Checked once against a published Raspberry Pi 4 latency (``PUBLISHED``): XNNPACK's README gives
MobileNet v1 / v2 (1.0, 224) on a Pi 4 (BCM2711) with its end-to-end benchmark, multi-threaded (4
cores), random weights; the same models run here on LiteRT + XNNPACK at one thread as cortex-a72,
and the one-thread estimate divided by 4 (perfect scaling, so also a lower bound) is set beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

# name -> (published ms, threads, source) for the reference workloads (``reference-NAME``).
PUBLISHED = {
    "mobilenet_v1": (75.0, 4, "XNNPACK README, Raspberry Pi table, RPi 4 (BCM2711), Feb 12 2020"),
    "mobilenet_v2": (44.0, 4, "XNNPACK README, Raspberry Pi table, RPi 4 (BCM2711), Feb 12 2020"),
}
REFERENCE_PREFIX = "reference-"
MODEL = ("issue-rate model from Arm's Software Optimization Guides (tools/arm64_cost/model.py): "
         "the busiest resource per call, 128-bit FP and multiplies as two halves on the A72; "
         "caches, memory and latencies ignored")
CLASSES = ("dot", "int_mac", "int_mac_q", "int_acc", "fp_mac", "fp_mac_q", "fp_q", "simd_other",
           "load", "store", "branch", "scalar")
Q_FORMS = ("int_mac_q", "fp_mac_q", "fp_q")  # 128-bit forms a 64-bit pipe runs as two halves


@dataclass(frozen=True)
class Core:
    name: str
    board: str
    qemu_cpu: str          # the CPU model the counts for this core come from (what the libraries see)
    ghz: float
    decode: int
    vector_pipes: int      # ASIMD/FP pipes for dot, FP MAC and other SIMD
    int_mac_pipes: int     # of them, the ones with integer multipliers
    int_acc_pipes: int     # of them, the ones that run the integer accumulates (SADALP, SABA, SRA)
    load_store: Dict[str, float]   # per-cycle rates: "load", "store", or "shared" for both
    integer: int
    has_dot: bool
    q_slots: int           # vector slots a Q_FORMS instruction takes (2 on 64-bit pipes)

    def cycles(self, n: Dict[str, float]) -> Dict[str, float]:
        """Cycles each resource needs for the per-call counts ``n``; "bound" is the largest."""
        if n["dot"] and not self.has_dot:
            raise ValueError(f"{self.name} has no dot-product instructions; this code would not run there")
        q = self.q_slots
        vector = (n["dot"] + n["int_mac"] + n["int_acc"] + n["fp_mac"] + n["simd_other"]
                  + q * sum(n[c] for c in Q_FORMS))
        int_mac = n["int_mac"] + q * n["int_mac_q"]
        if "shared" in self.load_store:
            memory = (n["load"] + n["store"]) / self.load_store["shared"]
        else:
            memory = max(n["load"] / self.load_store["load"], n["store"] / self.load_store["store"])
        out = {
            "decode": sum(n[c] for c in CLASSES) / self.decode,
            "vector": max(vector / self.vector_pipes, int_mac / self.int_mac_pipes,
                          n["int_acc"] / self.int_acc_pipes),
            "load_store": memory,
            "integer": n["scalar"] / self.integer,
            "branch": n["branch"],
        }
        out["bound"] = max(out.values())
        return out


CORES = (
    Core("cortex-a76", "Raspberry Pi 5", "neoverse-n1", 2.4, 4, 2, 1, 1, {"shared": 2.0}, 3, True, 1),
    Core("cortex-a72", "Raspberry Pi 4", "cortex-a72", 1.8, 3, 2, 1, 1, {"load": 1.0, "store": 1.0}, 2, False, 2),
)


def per_call(path: Path) -> Dict[str, float]:
    """Counts between marker 1 and marker 2 of one plugin output, divided by the calls in between."""
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    header = lines[0][1:]
    if tuple(header) != CLASSES:
        raise ValueError(f"{path}: classes {header}, expected {CLASSES} (plugin and model out of step)")
    marks = {int(words[1]): [int(v) for v in words[2:]] for words in lines[1:] if words[0] == "mark"}
    if 1 not in marks or 2 not in marks:
        raise ValueError(f"{path}: markers 1 and 2 missing (the probe failed before its second marker?)")
    calls = int(json.loads(path.with_suffix(".json").read_text())["calls"])
    return {c: (marks[2][k] - marks[1][k]) / calls for k, c in enumerate(CLASSES)}


def estimate(core: Core, n: Dict[str, float]) -> Dict[str, object]:
    """One core's estimate from the per-call counts ``n`` measured under its ``qemu_cpu``."""
    out: Dict[str, object] = {"qemu_cpu": core.qemu_cpu, "instructions": {c: round(n[c]) for c in CLASSES},
                              "total_instructions": round(sum(n.values()))}
    try:
        cyc = core.cycles(n)
    except ValueError as exc:
        return {**out, "status": "not runnable", "reason": str(exc)}
    limit = max((k for k in cyc if k != "bound"), key=cyc.get)
    return {**out, "ms": round(cyc["bound"] / (core.ghz * 1e6), 3), "bound_by": limit,
            "cycles": {k: round(v) for k, v in cyc.items()}}


def report(counts_root: Path) -> dict:
    """Every workload counted under ``counts_root/QEMU_CPU/NAME.txt``, estimated on each core from
    the counts of its own CPU model (a library that dispatches on CPU features runs another path
    on an armv8.0 core); the top-level instruction counts are the first core's."""
    names = sorted({p.stem for core in CORES for p in (counts_root / core.qemu_cpu).glob("*.txt")})
    rows = []
    for name in names:
        row: Dict[str, object] = {"name": name, "status": "emulated"}
        for core in CORES:
            path = counts_root / core.qemu_cpu / f"{name}.txt"
            if not path.is_file():
                row[core.name] = {"qemu_cpu": core.qemu_cpu, "status": "not counted"}
                continue
            row.setdefault("probe", json.loads(path.with_suffix(".json").read_text())["probe"])
            row[core.name] = estimate(core, per_call(path))
        first = next(row[c.name] for c in CORES if "instructions" in row[c.name])
        row["instructions"], row["total_instructions"] = first["instructions"], first["total_instructions"]
        rows.append(row)
    return {"model": MODEL, "cores": [c.__dict__ for c in CORES],
            "rows": [r for r in rows if not r["name"].startswith(REFERENCE_PREFIX)],
            "reference": [checked(r) for r in rows if r["name"].startswith(REFERENCE_PREFIX)]}


def checked(row: dict) -> dict:
    """A reference row beside its published figure: the 1-thread A72 estimate scaled to the published
    thread count, and published / estimate (> 1: the model is optimistic by that factor)."""
    name = row["name"][len(REFERENCE_PREFIX):]
    est = row["cortex-a72"].get("ms")
    if name not in PUBLISHED or est is None:
        return {**row, "published": None}
    ms, threads, source = PUBLISHED[name]
    scaled = est / threads
    return {**row, "published": {"ms": ms, "threads": threads, "source": source},
            "estimate_scaled_ms": round(scaled, 2), "published_over_estimate": round(ms / scaled, 2)}


# markdown columns: classes summed (the 128-bit forms with their kind)
COLUMNS = {"dot": ("dot",), "int MAC": ("int_mac", "int_mac_q"), "int acc": ("int_acc",),
           "FP MAC": ("fp_mac", "fp_mac_q"), "other SIMD": ("fp_q", "simd_other"), "loads": ("load",),
           "stores": ("store",)}


def markdown(result: dict) -> str:
    """The report as a table: classes as counted for the Pi 5 estimate (neoverse-n1), in millions;
    for the Pi 4, the armv8.0 count and how many of its instructions are Q forms (two slots there)."""
    out = ["| workload | M instructions | " + " | ".join(COLUMNS) + " | Pi 5 (A76) est. ms | "
           "M instructions as armv8.0 | of them Q-form FP / int multiply | Pi 4 (A72) est. ms |", "|" + "---|" * 13]
    for r in result["rows"]:
        i = r["instructions"]
        cells = [f"{sum(i[c] for c in group) / 1e6:.1f}" for group in COLUMNS.values()]
        a76, a72 = r["cortex-a76"], r["cortex-a72"]
        cells.append(f"{a76['ms']:.2f} ({a76['bound_by']})" if "ms" in a76 else a76["status"])
        counted = "total_instructions" in a72
        cells.append(f"{a72['total_instructions'] / 1e6:.1f}" if counted else "–")
        cells.append(f"{sum(a72['instructions'][c] for c in Q_FORMS) / 1e6:.1f}" if counted else "–")
        cells.append(f"{a72['ms']:.2f} ({a72['bound_by']})" if "ms" in a72 else a72["status"])
        out.append(f"| {r['name']} | {r['total_instructions'] / 1e6:.1f} | " + " | ".join(cells) + " |")
    checks = [r for r in result.get("reference", []) if r.get("published")]
    if checks:
        out += ["", "| reference (LiteRT + XNNPACK fp32) | M instructions as armv8.0 | Pi 4 est. ms, 1 thread | "
                "est. ms at the published threads | published ms | published / estimate |", "|" + "---|" * 6]
        for r in checks:
            a72, pub = r["cortex-a72"], r["published"]
            out.append(f"| {r['name'][len(REFERENCE_PREFIX):]} | {a72['total_instructions'] / 1e6:.1f} | "
                       f"{a72['ms']:.2f} ({a72['bound_by']}) | {r['estimate_scaled_ms']:.2f} ({pub['threads']} threads) | "
                       f"{pub['ms']:.0f} | {r['published_over_estimate']:.2f} |")
    return "\n".join(out) + "\n"


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rep = sub.add_parser("report")
    rep.add_argument("counts", type=Path)
    rep.add_argument("out", type=Path)
    rep.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    result = report(args.counts)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    if args.markdown:
        args.markdown.write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
