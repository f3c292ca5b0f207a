"""Target policy with injected machines, and the real one."""
from __future__ import annotations

import numpy as np
import pytest

from sfpn_edge import platform_info
from sfpn_edge.backends import open_model, select
from sfpn_edge.backends.select import Environment, available_targets, choose
from sfpn_edge.errors import SfpnError

X86 = platform_info.PlatformInfo("Linux", "x86_64", "test x86", 4, ("avx2", "avx512f", "avx512_vnni"))
ARM = platform_info.PlatformInfo("Linux", "aarch64", "test arm", 4, ("asimd", "asimddp"))
ORT_CPU = ("CPUExecutionProvider",)
ORT_XNN = ("XnnpackExecutionProvider", "CPUExecutionProvider")


def env(plat=X86, ov=("CPU",), ort=ORT_CPU) -> Environment:
    return Environment(plat, ov, ort)


@pytest.mark.parametrize(
    "machine, target, backend, device",
    [
        (env(), "cpu", "openvino", "CPU"),
        (env(), "auto", "openvino", "CPU"),
        (env(ov=None), "cpu", "onnxruntime", "CPU"),
        (env(ov=("CPU", "GPU")), "auto", "openvino", "CPU"),
        (env(ov=("CPU", "GPU", "NPU")), "auto", "openvino", "NPU"),
        (env(ov=("CPU", "NPU")), "vpu", "openvino", "NPU"),
        (env(ov=("CPU", "NPU")), "cpu", "openvino", "CPU"),
        (env(ARM, ov=("CPU",), ort=ORT_XNN), "arm", "onnxruntime", "XNNPACK"),
        (env(ARM, ov=("CPU",), ort=ORT_CPU), "arm", "onnxruntime", "CPU"),
        (env(ARM, ov=None, ort=ORT_XNN), "cpu", "onnxruntime", "XNNPACK"),
        (env(ARM, ov=None, ort=ORT_XNN), "AUTO", "onnxruntime", "XNNPACK"),
    ],
)
def test_policy(machine, target, backend, device):
    choice = choose(target, machine)
    assert (choice.backend, choice.device) == (backend, device)
    assert choice.target == target.lower() and choice.reason
    assert choice.as_dict()["reason"] == choice.reason


X86_AVX2 = platform_info.PlatformInfo("Linux", "x86_64", "old x86", 4, ("avx2", "fma"))


@pytest.mark.parametrize(
    "machine, target, backend, device",
    [
        (env(), "cpu", "native", "CPU"),                       # AVX-512 VNNI: our own int8 kernels
        (env(), "auto", "native", "CPU"),
        (env(ov=None), "cpu", "native", "CPU"),
        (env(X86_AVX2), "cpu", "openvino", "CPU"),             # no VNNI: OpenVINO's int8
        (env(X86_AVX2, ov=None), "auto", "onnxruntime", "CPU"),
        (env(ov=("CPU", "NPU")), "auto", "openvino", "NPU"),   # an NPU still wins for auto
        (Environment(ARM, None, ORT_XNN, native=False), "cpu", "onnxruntime", "XNNPACK"),   # ARM: the estimates
    ],
)
def test_int8_policy(machine, target, backend, device):
    choice = choose(target, machine, precision="int8")
    assert (choice.backend, choice.device) == (backend, device)
    if backend == "native":
        assert "VNNI" in choice.reason


PI4 = platform_info.PlatformInfo("Linux", "aarch64", "pi 4", 4, ("asimd",))


def fastest(core, precision, usable):
    return min(usable, key=lambda b: select.ARM_ESTIMATES[core].get((b, precision), float("inf")))


def test_arm_prefers_litert_when_installed_and_says_why():
    machine = Environment(ARM, None, ORT_CPU, {}, "2.3.0", native=False)
    for precision in ("fp32", "fp16", "int8"):
        choice = choose("arm", machine, precision=precision)
        assert choice.backend == fastest("dot", precision, ["litert", "onnxruntime"])
        assert "not measured on a Pi" in choice.reason
    assert "LiteRT 2.3.0" in choose("arm", machine, precision="fp16").reason   # no estimate: LiteRT first
    assert choose("auto", machine).backend == choose("arm", machine).backend
    assert choose("arm", machine, precision="bf16").backend == "onnxruntime"     # LiteRT has no bf16
    assert choose("arm", Environment(ARM, None, None, {}, "2.3.0")).backend == "litert"   # no ORT needed
    assert "sfpn-edge[litert]" in choose("arm", env(ARM, ort=ORT_CPU)).reason
    assert choose("cpu", Environment(X86, ("CPU",), ORT_CPU, {}, "2.3.0")).backend == "openvino"   # x86: as before


@pytest.mark.parametrize("platform, core", [(ARM, "dot"), (PI4, "armv8.0")])
def test_arm_int8_follows_the_estimates(platform, core):
    every = Environment(platform, None, ORT_CPU, {}, "1.4.0")
    choice = choose("arm", every, precision="int8")
    assert choice.backend == fastest(core, "int8", ["native", "litert", "onnxruntime"])
    assert select.ARM_BOARD[core] in choice.reason and "ms" in choice.reason
    if choice.backend == "native":
        assert ("SDOT" in choice.reason) == (core == "dot")
    without_native = Environment(platform, None, ORT_CPU, {}, "1.4.0", native=False)
    assert choose("arm", without_native, precision="int8").backend == fastest(core, "int8", ["litert", "onnxruntime"])
    assert choose("arm", Environment(platform, None, None, {}, "1.4.0", native=False),
                  precision="int8").backend == "litert"   # no ORT


def test_arm_choice_moves_with_the_numbers(monkeypatch):
    machine = Environment(PI4, None, ORT_CPU, {}, "1.4.0")
    for best in ("native", "litert", "onnxruntime"):
        table = {(b, "int8"): (1.0 if b == best else 9.0) for b in ("native", "litert", "onnxruntime")}
        monkeypatch.setitem(select.ARM_ESTIMATES, "armv8.0", table)
        assert choose("arm", machine, precision="int8").backend == best


def test_reason_names_the_deciding_facts():
    assert "avx512_vnni" in choose("cpu", env()).reason
    assert "no XNNPACK" in choose("arm", env(ARM, ort=ORT_CPU)).reason
    assert "static batch" in choose("vpu", env(ov=("CPU", "NPU"))).reason


@pytest.mark.parametrize(
    "machine, target, message",
    [
        (env(), "arm", r"needs an ARM CPU, this machine is x86_64; available targets: \['cpu', 'auto'\]"),
        (env(), "vpu", r"NPU device, not present here \(OpenVINO devices: \['CPU'\]; MYRIAD"),
        (env(ov=None), "vpu", "needs OpenVINO, which is not installed"),
        (env(), "myriad", "removed from OpenVINO after 2022.3"),
        (env(), "tpu", "unknown target 'tpu'"),
        (env(ov=None, ort=()), "cpu", "no CPU backend is available"),
        (env(ARM, ov=None, ort=()), "arm", "runs on LiteRT or ONNX Runtime, neither is installed"),
    ],
)
def test_unavailable_targets_are_clear_errors(machine, target, message):
    with pytest.raises(SfpnError, match=message):
        choose(target, machine)


def test_available_targets():
    assert available_targets(env()) == ["cpu", "auto"]
    assert available_targets(env(ov=("CPU", "NPU"))) == ["cpu", "vpu", "auto"]
    assert available_targets(env(ARM, ov=None, ort=ORT_XNN)) == ["cpu", "arm", "auto"]
    assert available_targets(env(ov=None, ort=())) == []


def test_cpuinfo_parsing():
    x86 = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse4_2 avx2 avx512f avx512_vnni junk\n"
    assert platform_info.parse_cpuinfo(x86, "x86_64") == ("Some CPU", ("sse4_2", "avx2", "avx512f", "avx512_vnni"))
    arm = "processor\t: 0\nFeatures\t: fp asimd asimdhp asimddp i8mm\nCPU part\t: 0xd0c\n"
    assert platform_info.parse_cpuinfo(arm, "arm64") == ("", ("asimd", "asimdhp", "asimddp", "i8mm"))
    assert platform_info.PlatformInfo("Linux", "aarch64", "", 1, ("asimddp",)).int8_dot
    assert not platform_info.PlatformInfo("Linux", "x86_64", "", 1, ("avx2",)).int8_dot


def test_real_machine_choice_runs(tmp_path):
    """The choice for this machine is one open_model can load and run."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "relu.onnx"))
    here = Environment.detect()
    assert here.platform.arch == platform_info.detect().arch
    for target in available_targets(here):
        choice = choose(target, here)
        runner = open_model(tmp_path / "relu.onnx", choice.backend, device=choice.device)
        x = np.array([[-1, 0, 2, -3]], np.float32)
        np.testing.assert_array_equal(runner.run(x)[0], np.maximum(x, 0))
    assert select.TARGETS == ("cpu", "arm", "vpu", "auto")


def test_info_command(capsys):
    import json

    from sfpn_edge.cli import main

    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    here = Environment.detect()
    assert report["platform"]["arch"] == here.platform.arch
    assert report["platform"]["features"] == list(here.platform.features)
    assert report["openvino_devices"] == list(here.openvino_devices)
    assert report["choice"] == choose("auto", here).as_dict()
    assert set(report["targets"]) == set(report["available_targets"]) == set(available_targets(here))
    assert {"onnxruntime", "openvino", "numpy"} <= set(report["versions"])
    assert main(["info", "--target", "cpu"]) == 0
    assert "cpu -> " in capsys.readouterr().out
    if "vpu" not in available_targets(here):
        assert main(["info", "--target", "vpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sfpn-edge info: error: target 'vpu'") and err.count("\n") == 1


PASSED = {"onnxruntime": "", "openvino": "", "native": "", "litert": ""}
PI4 = platform_info.PlatformInfo("Linux", "aarch64", "pi 4", 4, ("asimd",))


X86_AVX_VNNI = platform_info.PlatformInfo("Linux", "x86_64", "vnni, no avx-512", 4, ("avx2", "avx_vnni"))


@pytest.mark.parametrize(
    "machine, gate, backend, precision, words",
    [
        (env(), PASSED, "native", "int8", "native int8 file passed"),
        (env(ov=None), {**PASSED, "native": "the native int8 file failed its accuracy gate (x)"}, "onnxruntime",
         "int8", "failed its accuracy gate"),
        (env(), {"onnxruntime": ""}, "onnxruntime", "int8", "no int8 file for openvino"),
        (env(), {}, "onnxruntime", "fp32", "no int8 file for onnxruntime"),
        (env(X86_AVX2), PASSED, "onnxruntime", "fp32", "no int8 dot-product"),   # int8 saturates or is slower
        (env(X86_AVX2, ort=None), PASSED, "openvino", "fp32", "no int8 dot-product"),
        (Environment(X86, ("CPU",), ORT_CPU, {}, "1.4.0"), PASSED, "native", "int8", "VNNI"),
        (Environment(X86_AVX_VNNI, ("CPU",), ORT_CPU, {}, "1.4.0"), PASSED, "litert", "int8", "as accurate as fp32"),
        (Environment(X86_AVX_VNNI, ("CPU",), ORT_CPU, {}, "1.4.0"), {**PASSED, "litert": "the litert int8 file changed"},
         "openvino", "int8", "openvino int8 file passed"),
        (Environment(ARM, None, ORT_CPU, {}, "1.4.0"), PASSED, "native", "int8", "native int8 file passed"),
        (Environment(ARM, None, ORT_CPU, {}, "1.4.0"), {**PASSED, "native": "the native int8 file changed"},
         "litert", "int8", "litert int8 file passed"),
        (env(ov=("CPU", "NPU")), PASSED, "openvino", "int8", "openvino int8 file passed"),
    ],
)
def test_auto_precision_takes_int8_only_when_fast_here_and_gated(machine, gate, backend, precision, words):
    choice = choose("auto", machine, precision="auto", int8_gate=gate)
    assert (choice.backend, choice.precision) == (backend, precision)
    assert words in choice.reason and choice.as_dict()["precision"] == precision


def test_auto_precision_on_a_named_backend(monkeypatch):
    from sfpn_edge.runtime import Runtime

    monkeypatch.setattr(platform_info, "detect", lambda *a, **k: X86)
    assert Runtime.resolve("onnxruntime", precision="auto", int8_gate=PASSED).precision == "int8"
    stale = {"onnxruntime": "the onnxruntime int8 file changed after its accuracy gate was measured"}
    rt = Runtime.resolve("onnxruntime", precision="auto", int8_gate=stale)
    assert rt.precision == "fp32" and "changed after" in rt.reason
    assert Runtime.resolve("native", precision="auto", int8_gate={}).precision == "int8"   # its only precision
    monkeypatch.setattr(platform_info, "detect", lambda *a, **k: X86_AVX2)
    assert Runtime.resolve("onnxruntime", precision="auto", int8_gate=PASSED).precision == "fp32"


def test_auto_precision_passes_over_a_failed_int8_file_to_the_next_gated_one():
    gate = {**PASSED, "native": "the native int8 file failed its accuracy gate (x)"}
    choice = choose("auto", env(), precision="auto", int8_gate=gate)
    assert (choice.backend, choice.precision) == ("openvino", "int8") and "failed its accuracy gate" in choice.reason
    gate["openvino"] = "the openvino int8 file failed its accuracy gate (y)"
    assert choose("auto", env(), precision="auto", int8_gate=gate).backend == "onnxruntime"
    gate["onnxruntime"] = "gone"
    choice = choose("auto", env(), precision="auto", int8_gate=gate)
    assert (choice.backend, choice.precision) == ("onnxruntime", "fp32") and "gone" in choice.reason


def test_info_says_what_the_defaults_run_for_the_default_model(model_dir, example_crops, tmp_path, monkeypatch, capsys):
    import json
    import shutil

    from sfpn_edge import models
    from sfpn_edge.cli import main
    from sfpn_edge.converters import native_export
    from sfpn_edge.converters.calibration_data import example_calibration

    monkeypatch.setenv("SFPN_EDGE_MODEL", str(tmp_path / "absent"))
    assert main(["info", "--json"]) == 0
    defaults = json.loads(capsys.readouterr().out)["defaults"]
    assert defaults["backend"] is None and "fetch-weights" in defaults["reason"]

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    crops = example_calibration(example_crops[0].parent, 113, models.load_manifest(model)["mean"], per_image=4).crops
    native_export.export_native(model, crops, "twelve example crops")
    monkeypatch.setenv("SFPN_EDGE_MODEL", str(model))
    assert main(["info", "--json"]) == 0
    defaults = json.loads(capsys.readouterr().out)["defaults"]
    want = choose("auto", Environment.detect(), precision="auto", int8_gate={"native": ""})
    assert (defaults["backend"], defaults["precision"]) == (want.backend, want.precision)
    assert defaults["model_dir"] == str(model) and defaults["reason"] == want.reason
    assert main(["info"]) == 0 and "defaults (auto, model " in capsys.readouterr().out


def test_choosing_does_not_load_openvino():
    """Picking a backend lists OpenVINO's devices without importing it (~40 MB): only a pick loads it."""
    import subprocess
    import sys

    code = ("import sys; from sfpn_edge.runtime import Runtime; "
            "rt = Runtime.resolve('auto', precision='auto'); print(rt.backend, 'openvino' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    backend, loaded = out.split()
    assert loaded == str(backend == "openvino"), out


@pytest.mark.parametrize("int8_ms, precision", [(9.0, "int8"), (30.0, "fp32")])
def test_auto_precision_on_a_pi4_follows_the_estimates(monkeypatch, int8_ms, precision):
    # armv8.0: int8 runs on widening multiplies (nothing saturates); worth it only where estimated faster
    table = {("onnxruntime", "int8"): int8_ms, ("litert", "int8"): int8_ms + 1, ("native", "int8"): int8_ms + 2,
             ("litert", "fp32"): 20.0, ("onnxruntime", "fp32"): 25.0}
    monkeypatch.setitem(select.ARM_ESTIMATES, "armv8.0", table)
    choice = choose("auto", Environment(PI4, None, ORT_CPU, {}, "1.4.0"), precision="auto", int8_gate=PASSED)
    expected = ("onnxruntime", "int8") if precision == "int8" else ("litert", "fp32")
    assert (choice.backend, choice.precision) == expected
    words = "onnxruntime int8 file passed" if precision == "int8" else "int8 is not estimated faster than fp32 (20 ms"
    assert words in choice.reason
    gate = {**PASSED, "onnxruntime": "the onnxruntime int8 file failed its accuracy gate (x)"}
    choice = choose("auto", Environment(PI4, None, ORT_CPU, {}, "1.4.0"), precision="auto", int8_gate=gate)
    assert (choice.backend, choice.precision) == ("litert", precision)  # the next int8 backend, or fp32 as before


def test_auto_precision_on_a_pi4_with_the_shipped_estimates():
    table = select.ARM_ESTIMATES["armv8.0"]
    best_int8 = min(ms for (_, p), ms in table.items() if p == "int8")
    best_fp32 = min(ms for (_, p), ms in table.items() if p == "fp32")
    choice = choose("auto", Environment(PI4, None, ORT_CPU, {}, "1.4.0"), precision="auto", int8_gate=PASSED)
    assert choice.precision == ("int8" if best_int8 < best_fp32 else "fp32")
    assert choice.backend == fastest("armv8.0", choice.precision, ["native", "litert", "onnxruntime"])
