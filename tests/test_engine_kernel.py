"""The native int8 engine kernel (sfpn_edge.kernels.engine) on synthetic plans.

Random SqueezeNet-shaped plans (3x3 conv on the input, max pool, fire modules with 1x1 and
depthwise expands written into one concat buffer, conv + global average pool) are checked
against the numpy oracle, across code paths (VNNI / portable) and thread counts, and every
malformed plan or input must raise ValueError before any C code runs.
"""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from native_reference import native_reference
from sfpn_edge.kernels.engine import MAX_THREADS, Int8Engine, cpu_has_vnni, isas

MEAN = [131.0912, 103.8827, 91.4953]


def fire_plan(rng, h=23, w=19, s=16, e=32, d=40, m=4, cin=64, low=-127):
    """A small plan: conv3x3 -> maxpool -> squeeze -> [expand1x1 | depthwise] -> conv_gap."""
    ph, pw = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    buffers = [dict(h=h, w=w, c=4), dict(h=h, w=w, c=cin), dict(h=ph, w=pw, c=cin),
               dict(h=ph, w=pw, c=s), dict(h=ph, w=pw, c=e + m * s)]
    ops = [dict(op="conv", kernel=3, src=0, src_c0=0, cin=4, dst=1, dst_c0=0, cout=cin),
           dict(op="maxpool", src=1, dst=2, kernel=3, stride=2),
           dict(op="conv", kernel=1, src=2, src_c0=0, cin=cin, dst=3, dst_c0=0, cout=s),
           dict(op="conv", kernel=1, src=3, src_c0=0, cin=s, dst=4, dst_c0=0, cout=e),
           dict(op="dwconv", src=3, src_c0=0, channels=s, multiplier=m, dst=4, dst_c0=e),
           dict(op="conv_gap", src=4, src_c0=0, cin=e + m * s, cout=d)]
    arrays = {}
    for i, op in enumerate(ops):
        if op["op"] == "maxpool":
            continue
        if op["op"] == "dwconv":
            shape, n = (m, 9, s), m * s
        else:
            k = op.get("kernel", 1)
            shape, n = (op["cout"], k * k, op["cin"]), op["cout"]
        w8 = rng.integers(low, 128, shape).astype(np.int8)
        arrays[f"op{i}.w"] = w8
        # scales that keep requantized bytes spread over 0..255 (neither all 0 nor all 255)
        arrays[f"op{i}.scale"] = (rng.uniform(0.5, 2.0, n) / (w8[0].size * 40)).astype(np.float32)
        arrays[f"op{i}.bias"] = rng.uniform(-20, 60, n).astype(np.float32)
    arrays["op0.w"][:, :, 3] = 0          # the input's fourth channel is always zero
    plan = {"format": "sfpn-native-int8", "version": 1,
            "input": {"offset": MEAN, "pad": [round(v) for v in MEAN] + [0]},
            "buffers": buffers, "ops": ops}
    return plan, arrays


def crops(rng, plan, n=3):
    b = plan["buffers"][0]
    return rng.normal(0, 60, (n, 3, b["h"], b["w"])).astype(np.float32)


def save(tmp_path, plan, arrays):
    path = tmp_path / "plan.npz"
    np.savez(path, plan=np.frombuffer(json.dumps(plan).encode(), np.uint8), **arrays)
    return path


SHAPES = [dict(), dict(h=13, w=13, s=32, e=64, d=1000), dict(h=30, w=7, s=48, e=16, d=17, m=3),
          dict(h=9, w=9, m=1, d=5), dict(h=4, w=5, s=64, e=128, m=2, cin=128)]


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_numpy_oracle(tmp_path, shape):
    rng = np.random.default_rng(len(str(shape)))
    plan, arrays = fire_plan(rng, **shape)
    x = crops(rng, plan)
    got = Int8Engine(plan, arrays).run(x)
    want = native_reference(save(tmp_path, plan, arrays), x)
    assert got.shape == want.shape and got.dtype == np.float32
    assert 0.5 < float(want.mean()) < 200     # a live network, not one saturated to 0 or 255
    # the oracle rounds scale * acc + bias twice, the engine once (fma): rare bytes differ by 1
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * float(np.abs(want).max()))


@pytest.mark.parametrize("shape", SHAPES)
def test_code_paths_and_thread_counts_agree_bit_for_bit(shape):
    rng = np.random.default_rng(7)
    plan, arrays = fire_plan(rng, **shape)
    x = crops(rng, plan)
    want = Int8Engine(plan, arrays, portable=True).run(x)
    for isa in isas():
        for threads in (1, 2, 3):
            got = Int8Engine(plan, arrays, isa=isa, threads=threads).run(x)
            assert np.array_equal(got, want), (isa, threads)


@pytest.mark.parametrize("isa", isas())
def test_code_paths_agree_over_the_whole_int8_range(isa):
    # -128 weights times 0 activations: the products the NEON tables' sign flip makes extreme
    rng = np.random.default_rng(11)
    plan, arrays = fire_plan(rng, h=17, w=15, low=-128)
    x = crops(rng, plan)
    x[:, :, 3:9] = -200.0    # a dark patch: zero input bytes
    want = Int8Engine(plan, arrays, portable=True).run(x)
    assert np.array_equal(Int8Engine(plan, arrays, isa=isa).run(x), want)


def test_an_oversubscribed_team_gives_the_same_bytes():
    # 8 threads on a small machine: members are late or preempted mid-image, chunks move between them
    rng = np.random.default_rng(5)
    plan, arrays = fire_plan(rng, h=31, w=29)
    x = crops(rng, plan, n=6)
    want = Int8Engine(plan, arrays, threads=1).run(x)
    team = Int8Engine(plan, arrays, threads=8)
    for _ in range(5):
        assert np.array_equal(team.run(x), want)


def test_reports_its_code_path():
    plan, arrays = fire_plan(np.random.default_rng(0))
    assert Int8Engine(plan, arrays, portable=True).isa == "portable"
    assert Int8Engine(plan, arrays).isa == isas()[0]
    assert isas()[-1] == "portable" and (cpu_has_vnni() == ("avx512vnni" in isas()))
    with pytest.raises(ValueError, match="does not run on this CPU"):
        Int8Engine(plan, arrays, isa="no-such-isa")


def test_batch_rows_are_independent_and_repeatable():
    rng = np.random.default_rng(1)
    plan, arrays = fire_plan(rng)
    engine = Int8Engine(plan, arrays, threads=2)
    x = crops(rng, plan, 5)
    batch = engine.run(x)
    for i in range(len(x)):
        assert np.array_equal(engine.run(x[i:i + 1])[0], batch[i])
    assert np.array_equal(engine.run(x), batch)


def test_concurrent_callers_get_their_own_results():
    rng = np.random.default_rng(2)
    plan, arrays = fire_plan(rng)
    engine = Int8Engine(plan, arrays, threads=2)
    inputs = [crops(rng, plan, 2) for _ in range(6)]
    want = [engine.run(x) for x in inputs]
    got = [None] * len(inputs)

    def work(i):
        for _ in range(5):
            got[i] = engine.run(inputs[i])

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


def _bad(mutate):
    plan, arrays = fire_plan(np.random.default_rng(3))
    mutate(plan, arrays)
    return plan, arrays


BAD_PLANS = {
    "unknown op": (lambda p, a: p["ops"][1].update(op="avgpool"), "unknown op"),
    "src out of range": (lambda p, a: p["ops"][2].update(src=99), "'src'"),
    "read before write": (lambda p, a: p["ops"][2].update(src=3), "before any op wrote it"),
    "writes the input": (lambda p, a: p["ops"][0].update(dst=0), "'dst'"),
    "src is dst": (lambda p, a: p["ops"][3].update(dst=3), "same buffer"),
    "input channels overflow": (lambda p, a: p["ops"][3].update(src_c0=8), "exceed buffer"),
    "output channels overflow": (lambda p, a: p["ops"][4].update(dst_c0=64), "exceed buffer"),
    "kernel 2": (lambda p, a: p["ops"][2].update(kernel=2), "kernel 1 or 3"),
    "cin not a multiple of 4": (lambda p, a: p["ops"][2].update(cin=62), "multiple of 4"),
    "cout not a multiple of 16": (lambda p, a: p["ops"][2].update(cout=24), "multiple of 16"),
    "depthwise channels": (lambda p, a: p["ops"][4].update(channels=8), "'channels'"),
    "multiplier too large": (lambda p, a: p["ops"][4].update(multiplier=5), "'multiplier'"),
    "maxpool size": (lambda p, a: p["buffers"][2].update(h=5), "maxpool"),
    "size mismatch": (lambda p, a: p["buffers"][3].update(h=3), "differ in size"),
    "weights shape": (lambda p, a: a.update({"op2.w": a["op2.w"][:, :, :32]}), "op2.w"),
    "weights dtype": (lambda p, a: a.update({"op2.w": a["op2.w"].astype(np.int16)}), "op2.w"),
    "missing weights": (lambda p, a: a.pop("op3.w"), "op3.w"),
    "NaN scale": (lambda p, a: a["op3.scale"].__setitem__(0, np.nan), "NaN"),
    "no final pool": (lambda p, a: p["ops"].pop(), "conv_gap"),
    "pool not last": (lambda p, a: p["ops"].insert(2, dict(p["ops"][-1])), "conv_gap"),
    "input buffer channels": (lambda p, a: p["buffers"][0].update(c=16), "4 channels"),
    "odd buffer channels": (lambda p, a: p["buffers"][3].update(c=20), "multiple of 16"),
    "huge buffer": (lambda p, a: p["buffers"][1].update(h=4096, w=4096, c=4096), "bytes"),
    "float size": (lambda p, a: p["buffers"][1].update(h=113.0), "'h'"),
    "bool size": (lambda p, a: p["buffers"][1].update(w=True), "'w'"),
    "bad offset": (lambda p, a: p["input"].update(offset=[1.0, float("nan"), 2.0]), "offset"),
    "bad pad": (lambda p, a: p["input"].update(pad=[300, 0, 0, 0]), "pad"),
    "no buffers": (lambda p, a: p.update(buffers=[]), "buffers"),
}


@pytest.mark.parametrize("name", sorted(BAD_PLANS))
def test_malformed_plans_are_refused(name):
    mutate, message = BAD_PLANS[name]
    plan, arrays = _bad(mutate)
    with pytest.raises(ValueError, match=message):
        Int8Engine(plan, arrays)


def test_a_built_engine_refuses_a_second_init():
    rng = np.random.default_rng(5)
    plan, arrays = fire_plan(rng)
    engine = Int8Engine(plan, arrays, threads=2)
    x = crops(rng, plan)
    want = engine.run(x)
    bad_plan, bad_arrays = _bad(BAD_PLANS["weights shape"][0])
    for p, a in [(bad_plan, bad_arrays), (plan, arrays)]:
        with pytest.raises(RuntimeError, match="already built"):
            engine.__init__(p, a)
    assert np.array_equal(engine.run(x), want)


@pytest.mark.parametrize("threads", [0, MAX_THREADS + 1])
def test_thread_count_is_checked(threads):
    plan, arrays = fire_plan(np.random.default_rng(0))
    with pytest.raises(ValueError, match="threads"):
        Int8Engine(plan, arrays, threads=threads)


def test_bad_inputs_are_refused():
    rng = np.random.default_rng(4)
    plan, arrays = fire_plan(rng)
    engine = Int8Engine(plan, arrays)
    x = crops(rng, plan)
    nan = x.copy()
    nan[0, 1, 2, 3] = np.nan
    for bad, message in [(x.astype(np.float64), "float32"), (x[:, :2], "shape"), (x[:0], "shape"),
                         (x[0], "shape"), (x[:, :, ::-1], "C-contiguous"), (nan, "NaN"),
                         (list(x), "float32")]:
        with pytest.raises(ValueError, match=message):
            engine.run(bad)


def test_activations_expose_each_op_output():
    rng = np.random.default_rng(8)
    plan, arrays = fire_plan(rng)
    engine = Int8Engine(plan, arrays)
    x = crops(rng, plan, 2)
    conv1, pool, squeeze = (engine.activations(x, op) for op in range(3))
    assert conv1.dtype == np.uint8 and conv1.shape == (2, 23, 19, 64)
    assert 0 < conv1.mean() < 255
    windows = np.lib.stride_tricks.sliding_window_view(conv1, (3, 3), axis=(1, 2))[:, ::2, ::2]
    assert np.array_equal(pool, windows.max(axis=(-1, -2)))
    w, scale, bias = arrays["op2.w"][:, 0, :].astype(np.float64), arrays["op2.scale"], arrays["op2.bias"]
    want = np.rint(np.clip(scale * (pool.astype(np.float64) @ w.T) + bias, 0, 255))
    assert np.abs(squeeze.astype(np.int64) - want).max() <= 1
    expand = engine.activations(x, 3)   # the concat buffer after its first producer only
    assert expand.shape[-1] == 32 + 4 * 16 and not expand[..., 32:].any()
    with pytest.raises(ValueError, match="op must be"):
        engine.activations(x, len(plan["ops"]) - 1)
