"""tools/arm64-cost's pieces that run on any host: the plugin's instruction classes (encodings from
GNU as for aarch64), the cost model, and the bench's emulated rows."""
from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sfpn_edge.bench import emulated
from sfpn_edge.errors import SfpnError

TOOLS = Path(__file__).resolve().parent.parent / "tools" / "arm64_cost"
# (encoding, class): `aarch64-linux-gnu-as -march=armv8.6-a+dotprod+i8mm+fp16` + objdump of each line.
ENCODINGS = [
    (0x4E829420, "dot"),         # sdot v0.4s, v1.16b, v2.16b
    (0x6FA5E083, "dot"),         # udot v3.4s, v4.16b, v5.4b[1]
    (0x4E829C20, "dot"),         # usdot v0.4s, v1.16b, v2.16b
    (0x0E228020, "int_mac"),     # smlal v0.8h, v1.8b, v2.8b
    (0x4E22C020, "int_mac"),     # smull2 v0.8h, v1.16b, v2.16b
    (0x4E206820, "int_acc"),     # sadalp v0.8h, v1.16b
    (0x4E606820, "int_acc"),     # sadalp v0.4s, v1.8h
    (0x6E206820, "int_acc"),     # uadalp v0.8h, v1.16b
    (0x4E227C20, "int_acc"),     # saba v0.16b, v1.16b, v2.16b
    (0x6E225020, "int_acc"),     # uabal2 v0.8h, v1.16b, v2.16b
    (0x6F3D1420, "int_acc"),     # usra v0.4s, v1.4s, #3
    (0x4F793420, "int_acc"),     # srsra v0.2d, v1.2d, #7
    (0x4E227420, "simd_other"),  # sabd v0.16b, v1.16b, v2.16b
    (0x4E602820, "simd_other"),  # saddlp v0.4s, v1.8h
    (0x4F3D0420, "simd_other"),  # sshr v0.4s, v1.4s, #3
    (0x4EA29420, "int_mac_q"),   # mla v0.4s, v1.4s, v2.4s
    (0x0EA29420, "int_mac"),     # mla v0.2s, v1.2s, v2.2s
    (0x4FA28020, "int_mac_q"),   # mul v0.4s, v1.4s, v2.s[1]
    (0x0FA28020, "int_mac"),     # mul v0.2s, v1.2s, v2.s[1]
    (0x6EA2B420, "int_mac_q"),   # sqrdmulh v0.4s, v1.4s, v2.4s
    (0x4FA2D020, "int_mac_q"),   # sqrdmulh v0.4s, v1.4s, v2.s[1]
    (0x4F722020, "int_mac"),     # smlal2 v0.4s, v1.8h, v2.h[3] (widening: one uop)
    (0x4E22CC20, "fp_mac_q"),    # fmla v0.4s, v1.4s, v2.4s
    (0x0E22CC20, "fp_mac"),      # fmla v0.2s, v1.2s, v2.2s
    (0x4FA21820, "fp_mac_q"),    # fmla v0.4s, v1.4s, v2.s[3]
    (0x0FA21820, "fp_mac"),      # fmla v0.2s, v1.2s, v2.s[3]
    (0x6E22DC20, "fp_mac_q"),    # fmul v0.4s, v1.4s, v2.4s
    (0x1F020C20, "fp_mac"),      # fmadd s0, s1, s2, s3
    (0x1E220820, "fp_mac"),      # fmul s0, s1, s2
    (0x4E22D420, "fp_q"),        # fadd v0.4s, v1.4s, v2.4s
    (0x4E22F420, "fp_q"),        # fmax v0.4s, v1.4s, v2.4s
    (0x4EA1B820, "fp_q"),        # fcvtzs v0.4s, v1.4s
    (0x4E21D820, "fp_q"),        # scvtf v0.4s, v1.4s
    (0x4F3DE420, "fp_q"),        # scvtf v0.4s, v1.4s, #3
    (0x4E217820, "fp_q"),        # fcvtl2 v0.4s, v1.8h
    (0x0E22D420, "simd_other"),  # fadd v0.2s, v1.2s, v2.2s
    (0x4EA28420, "simd_other"),  # add v0.4s, v1.4s, v2.4s
    (0x4EA0B820, "simd_other"),  # abs v0.4s, v1.4s
    (0x4E212820, "simd_other"),  # xtn2 v0.16b, v1.8h
    (0x4E202820, "simd_other"),  # saddlp v0.8h, v1.16b
    (0x3DC00000, "load"),        # ldr q0, [x0]
    (0x3D800000, "store"),       # str q0, [x0]
    (0x3D400000, "load"),        # ldr b0, [x0]
    (0x3D000000, "store"),       # str b0, [x0]
    (0x4C407000, "load"),        # ld1 {v0.16b}, [x0]
    (0x4C9FA000, "store"),       # st1 {v0.16b, v1.16b}, [x0], #32
    (0xA94007E0, "load"),        # ldp x0, x1, [sp]
    (0xAD0107E0, "store"),       # stp q0, q1, [sp, #32]
    (0x39400020, "load"),        # ldrb w0, [x1]
    (0x39000020, "store"),       # strb w0, [x1]
    (0x58000100, "load"),        # ldr x0, <literal>
    (0xC85F7C20, "load"),        # ldxr x0, [x1]
    (0xF8200041, "load"),        # ldadd x0, x1, [x2]
    (0x8B020020, "scalar"),      # add x0, x1, x2
    (0x9B020C20, "scalar"),      # madd x0, x1, x2, x3
    (0x54000001, "branch"),      # b.ne
    (0x94000000, "branch"),      # bl
    (0xD65F03C0, "branch"),      # ret
]
HARNESS = r"""
#include "insn_classes.c"
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb) {}
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb) {}
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *u) {}
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb) { return 0; }
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t i) { return 0; }
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn) { return 0; }
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *p,
                                              uint64_t imm) {}
int main(int argc, char **argv) {
    for (int k = 1; k < argc; k++) puts(NAMES[classify((uint32_t)strtoul(argv[k], NULL, 16))]);
    return 0;
}
"""


@functools.lru_cache(maxsize=1)
def load_model():
    """tools/arm64_cost/model.py (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("arm64_cost_model", TOOLS / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def classify(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build the plugin's classifier")
    work = tmp_path_factory.mktemp("plugin")
    (work / "harness.c").write_text(HARNESS)
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-Wno-unused-parameter", "-Wno-unused-function",
                    f"-I{TOOLS}", "-o", str(work / "harness"), str(work / "harness.c")], check=True)

    def run(words):
        out = subprocess.run([str(work / "harness"), *(f"{w:08x}" for w in words)], check=True,
                             capture_output=True, text=True).stdout
        return out.split()
    return run


def test_the_plugin_sorts_real_encodings_into_their_classes(classify):
    assert classify([w for w, _ in ENCODINGS]) == [c for _, c in ENCODINGS]


def test_plugin_and_model_name_the_same_classes():
    source = (TOOLS / "insn_classes.c").read_text()
    names = source.split("NAMES[NCLASS] = {", 1)[1].split("}", 1)[0]
    assert tuple(n.strip(' "\n') for n in names.split(",")) == load_model().CLASSES


def write_counts(root: Path, cpu: str, name: str, first: dict, second: dict, calls: int) -> None:
    model = load_model()
    folder = root / cpu
    folder.mkdir(exist_ok=True)
    lines = ["classes " + " ".join(model.CLASSES)]
    for tag, counts in ((1, first), (2, second)):
        lines.append(f"mark {tag} " + " ".join(str(counts.get(c, 0)) for c in model.CLASSES))
    lines.append("exit 0 " + " ".join(str(second.get(c, 0) + 5) for c in model.CLASSES))
    (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (folder / f"{name}.json").write_text(json.dumps({"name": name, "probe": "x", "calls": calls}))


def test_cost_model_charges_the_busiest_resource(tmp_path):
    model = load_model()
    # 3 calls of 1 M dot products each (plus 100 k loads) as an armv8.2 core: vector-bound on the
    # A76 (2 pipes). Counted as an A72 too, where the library would not run them: not runnable.
    write_counts(tmp_path, "neoverse-n1", "dot", {"dot": 10, "load": 7}, {"dot": 3_000_010, "load": 300_007}, 3)
    write_counts(tmp_path, "cortex-a72", "dot", {}, {"dot": 3}, 3)
    # 3 calls of 1.2 M integer multiply-accumulates: one pipe on both cores; counted as the A72 only.
    write_counts(tmp_path, "cortex-a72", "smlal", {}, {"int_mac": 3_600_000, "scalar": 600_000}, 3)
    report = model.report(tmp_path)
    dot, smlal = sorted(report["rows"], key=lambda r: r["name"])
    assert dot["instructions"]["dot"] == 1_000_000 and dot["instructions"]["load"] == 100_000
    a76 = dot["cortex-a76"]
    assert a76["bound_by"] == "vector" and a76["cycles"]["vector"] == 500_000
    assert a76["ms"] == pytest.approx(500_000 / 2.4e6, abs=1e-3)
    assert dot["cortex-a72"]["status"] == "not runnable"
    assert smlal["cortex-a76"]["status"] == "not counted" and smlal["total_instructions"] == 1_400_000
    assert smlal["cortex-a72"]["cycles"]["vector"] == 1_200_000
    assert smlal["cortex-a72"]["ms"] == pytest.approx(1_200_000 / 1.8e6, abs=1e-3)
    table = model.markdown(report)
    assert "| dot | 1.1 | 1.0 |" in table and "| 0.67 (vector) |" in table


def test_a_counts_file_without_its_second_marker_is_refused(tmp_path):
    model = load_model()
    write_counts(tmp_path, "neoverse-n1", "cut", {"dot": 1}, {"dot": 2}, 1)
    path = tmp_path / "neoverse-n1" / "cut.txt"
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("mark 2")))
    with pytest.raises(ValueError, match="markers 1 and 2"):
        model.per_call(path)


def test_bench_shows_emulated_rows_and_refuses_other_files(tmp_path):
    for cpu in ("neoverse-n1", "cortex-a72"):
        write_counts(tmp_path, cpu, "embed-native-int8", {}, {"int_mac": 900_000, "load": 300_000}, 3)
    report = load_model().report(tmp_path)
    path = tmp_path / "cost.json"
    path.write_text(json.dumps(report))
    rows = emulated.lines(emulated.load(path))
    assert rows[1].startswith("embed-native-int8") and "(vector)" in rows[1]
    assert rows[-1].startswith("estimates, not measurements: issue-rate model from Arm's Software Optimization")
    (tmp_path / "bad.json").write_text(json.dumps({"rows": [{"name": "x"}]}))
    with pytest.raises(SfpnError, match="not a tools/arm64-cost report"):
        emulated.load(tmp_path / "bad.json")
    with pytest.raises(SfpnError, match="not a tools/arm64-cost report"):
        emulated.load(tmp_path / "missing.json")


def test_reference_workloads_are_set_beside_their_published_figure_not_among_the_rows(tmp_path):
    model = load_model()
    # MobileNet v2 counted as the A72 only: 90 M FP multiply-accumulates per call -> 45 M cycles on
    # its two vector pipes = 25 ms at 1.8 GHz, 6.25 ms spread over the published figure's 4 threads.
    write_counts(tmp_path, "cortex-a72", "reference-mobilenet_v2", {}, {"fp_mac": 270_000_000}, 3)
    write_counts(tmp_path, "cortex-a72", "reference-unpublished", {}, {"fp_mac": 3}, 3)
    write_counts(tmp_path, "cortex-a72", "embed-litert-fp32", {}, {"fp_mac": 3}, 3)
    report = model.report(tmp_path)
    assert [r["name"] for r in report["rows"]] == ["embed-litert-fp32"]
    v2, other = sorted(report["reference"], key=lambda r: r["name"])
    assert v2["cortex-a72"]["ms"] == pytest.approx(25.0, abs=1e-3)
    assert v2["estimate_scaled_ms"] == pytest.approx(6.25)
    assert v2["published"]["ms"] == 44.0 and v2["published"]["threads"] == 4
    assert v2["published_over_estimate"] == pytest.approx(44.0 / 6.25, abs=0.01)
    assert other["published"] is None
    table = model.markdown(report)
    assert "| mobilenet_v2 | 90.0 | 25.00 (vector) | 6.25 (4 threads) | 44 | 7.04 |" in table


def test_multiplies_and_accumulates_issue_on_different_pipes(tmp_path):
    # SMULL/SMLAL2 + SADALP, as an armv8.0 int8 GEMM runs them: 1.2 M of each per call run side by side
    # on F0 and F1 (1.2 M cycles), where 2.4 M multiplies alone would need 2.4 M cycles on F0.
    write_counts(tmp_path, "cortex-a72", "mixed", {}, {"int_mac": 3_600_000, "int_acc": 3_600_000}, 3)
    write_counts(tmp_path, "cortex-a72", "muls", {}, {"int_mac": 7_200_000}, 3)
    mixed, muls = (r["cortex-a72"]["cycles"]["vector"] for r in sorted(load_model().report(tmp_path)["rows"],
                                                                        key=lambda r: r["name"]))
    assert mixed == 1_200_000 and muls == 2_400_000


def test_q_form_fp_and_integer_multiplies_take_two_slots_on_the_a72_one_on_the_a76(tmp_path):
    # 1.2 M 128-bit FMLA per call: both of the A72's 64-bit FP pipes each (1.2 M cycles, as 2.4 M
    # 64-bit FMLA would take), one of the A76's two 128-bit pipes (0.6 M cycles). 0.6 M Q-form MUL
    # per call: two uops on the A72's one multiplier pipe (1.2 M cycles).
    for cpu in ("neoverse-n1", "cortex-a72"):
        write_counts(tmp_path, cpu, "fmla", {}, {"fp_mac_q": 3_600_000}, 3)
        write_counts(tmp_path, cpu, "fmla-d", {}, {"fp_mac": 7_200_000}, 3)
        write_counts(tmp_path, cpu, "mul", {}, {"int_mac_q": 1_800_000}, 3)
    report = load_model().report(tmp_path)
    vector = {(r["name"], core): r[core]["cycles"]["vector"] for r in report["rows"]
              for core in ("cortex-a72", "cortex-a76")}
    assert vector["fmla", "cortex-a72"] == vector["fmla-d", "cortex-a72"] == 1_200_000
    assert vector["fmla", "cortex-a76"] == 600_000 and vector["fmla-d", "cortex-a76"] == 1_200_000
    assert vector["mul", "cortex-a72"] == 1_200_000 and vector["mul", "cortex-a76"] == 600_000
    row = "| fmla | 1.2 | 0.0 | 0.0 | 0.0 | 1.2 | 0.0 | 0.0 | 0.0 | 0.25 (vector) | 1.2 | 1.2 | 0.67 (vector) |"
    assert row in load_model().markdown(report)
