"""Vulkan shaders at op level: dequantization and matvec of every weight format against
gguf's dequantization (the oracle), on whatever Vulkan device is present (lavapipe in CI).
Skipped, with the reason, where the vulkan binding, a Vulkan device or glslang is absent."""

import numpy as np
import pytest

from g4c import quants
from g4c.errors import DeviceUnavailableError
from g4c.tolerance import F32

from conformance.test_weight_types import TYPES, _case


@pytest.fixture(scope="module")
def dev():
    from runtimes.vulkan.device import Device

    try:
        return Device()
    except DeviceUnavailableError as e:
        pytest.skip(f"vulkan unavailable: {e}")


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize(dev, qtype):
    t = quants.TYPE_NAMES[qtype]
    raw, oracle, _ = _case(qtype)
    rows, cols = oracle.shape
    w, out = dev.buffer(raw.nbytes), dev.buffer(rows * cols * 4)
    w.write(raw)
    units = rows * cols // 32
    dev.run(dev.pipeline("dequant", {"TYPE": int(t)}, 2, 4), [w, out], [rows, cols, raw.shape[1], 0], (-(-units // 64), 1, 1))
    got = out.read(np.float32, rows * cols).reshape(rows, cols)
    bad = np.argwhere(got != oracle.astype(np.float32))
    assert not bad.size, f"{qtype}: first difference at row {bad[0][0]} col {bad[0][1]}: {got[tuple(bad[0])]} vs {oracle[tuple(bad[0])]}"


@pytest.mark.parametrize("n_seq", [1, 3])
@pytest.mark.parametrize("qtype", TYPES)
def test_matvec(dev, qtype, n_seq):
    t = quants.TYPE_NAMES[qtype]
    raw, oracle, _ = _case(qtype)
    rows, cols = oracle.shape
    x = np.random.default_rng(1).standard_normal((n_seq, cols)).astype(np.float32)
    w, bx, by = dev.buffer(raw.nbytes), dev.buffer(x.nbytes), dev.buffer(n_seq * rows * 4)
    w.write(raw)
    bx.write(x)
    dev.run(dev.pipeline("matvec", {"TYPE": int(t)}, 3, 7), [w, bx, by], [rows, cols, raw.shape[1], n_seq, 0, 0, rows],
            (-(-rows // 8), 1, 1))
    got = by.read(np.float32, n_seq * rows).reshape(n_seq, rows).astype(np.float64)
    want = x.astype(np.float64) @ oracle.T
    e = float(np.sum((got - want) ** 2) / np.sum(want ** 2))
    # f32 dot products of length K: NMSE about K u^2, far below op_nmse (1e-10, as llama.cpp's test-backend-ops 1e-7 scaled)
    assert e <= F32.op_nmse, f"matvec {qtype}: NMSE {e:.3g} > {F32.op_nmse:g}; worst row {int(np.abs(got - want).max(0).argmax())}"


def test_descriptor_sets_follow_new_buffers(dev):
    """Buffers made after others were collected get fresh descriptor sets (a cache keyed by
    Python id() bound a new buffer's dispatch to a freed one: wrong logits at long positions)."""
    p = dev.pipeline("elementwise", {}, 2, 5)
    for value in (1.0, 2.0, 3.0):
        a, b = dev.buffer(256), dev.buffer(256)
        b.write(np.full(64, value, np.float32))
        dev.run(p, [a, b], [64, 4, 0.0, 0, 0], (1, 1, 1))  # mode 4: copy b into a
        assert (a.read(np.float32, 64) == value).all(), f"copy of {value} read back {a.read(np.float32, 4)}"
        del a, b
