"""The cpu runtime's fused kernels (runtimes/cpu/kernels.py) against what they fuse: the numpy
dequantizer (g4c/quants.py, the runtime's readable reference), gguf.quants.dequantize (the
oracle) and a float64 product.

Dequantization must match bit for bit: the kernels decode the same bytes with the same f32
operations. Products are held to the f32 accumulation bound: |error| <= n * eps32 * sum|x_j w_j|
over a row (a sum of n f32 terms in any order; what BLAS guarantees too)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants as gguf_quants

from g4c import quants
from g4c.runtimes.cpu import kernels
from g4c.runtimes.cpu.kernels import Kernels

F32 = np.float32
EPS32 = float(np.finfo(F32).eps)
TYPES = list(kernels.CODE)


def _raw(qtype: QT, n_rows: int, n_cols: int, seed: int = 0) -> np.ndarray:
    """Weights of a normal distribution in qtype's bytes (rows, row_bytes)."""
    w = np.random.default_rng(seed).standard_normal((n_rows, n_cols)).astype(F32)
    if qtype == QT.BF16:
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_rows, -1)
    return quants.quantize(w, qtype)


def _check_product(y, x, w):
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    bound = w.shape[1] * EPS32 * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T)
    err = np.abs(y - exact)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), (f"row {worst[0]}, output {worst[1]}: {y[worst]} against {exact[worst]}, "
                                  f"error {err[worst]:.3g} over the f32 bound {bound[worst]:.3g}")


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_rows,n_cols", [(1, 256), (37, 512), (300, 768), (3, 2816)])
def test_dequantize_matches_numpy_and_gguf(qtype, n_rows, n_cols):
    raw = _raw(qtype, n_rows, n_cols)
    got = Kernels(threads=2).dequantize(raw, qtype, n_cols)
    ours = quants.dequantize(raw, qtype, n_cols)
    np.testing.assert_array_equal(got, ours, err_msg=f"{qtype.name}: kernel against g4c.quants")
    oracle = gguf_quants.dequantize(raw, qtype).reshape(n_rows, n_cols).astype(F32)
    np.testing.assert_array_equal(got, oracle, err_msg=f"{qtype.name}: kernel against gguf.quants.dequantize")


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [1, 3, 8])
def test_matvec_matches_the_numpy_product(qtype, m):
    n_rows, n_cols = 300, 768
    raw = _raw(qtype, n_rows, n_cols, seed=m)
    x = np.random.default_rng(10 + m).standard_normal((m, n_cols)).astype(F32)
    y = Kernels(threads=2).matvec(raw, qtype, x)
    assert y.shape == (m, n_rows) and y.dtype == F32
    _check_product(y, x, quants.dequantize(raw, qtype, n_cols))


def test_rows_split_over_threads_give_the_same_sums():
    """Each row is summed by one thread in one order: 1 and 3 threads agree bit for bit, and
    every row range is covered (a range lost at a thread boundary leaves garbage there)."""
    raw = _raw(QT.Q4_0, 1001, 4096)
    x = np.random.default_rng(1).standard_normal((2, 4096)).astype(F32)
    one, three = Kernels(threads=1), Kernels(threads=3)
    assert len(three._ranges(*raw.shape)) == 3
    np.testing.assert_array_equal(one.matvec(raw, QT.Q4_0, x), three.matvec(raw, QT.Q4_0, x))
    np.testing.assert_array_equal(one.dequantize(raw, QT.Q4_0, 4096), three.dequantize(raw, QT.Q4_0, 4096))


@pytest.mark.parametrize("qtype", [QT.F16, QT.F32, QT.BF16], ids=lambda t: t.name)
def test_float_specials_pass_through(qtype):
    """Infinities, NaN, signed zeros and subnormals of float weights come out as numpy reads
    them: no flush to zero, no NaN dropped by a fast-math rewrite."""
    special = np.array([np.inf, -np.inf, np.nan, -0.0, 0.0, 6e-8, -6e-8, 1e-40, 65504, 1.5], F32)
    w = np.tile(special, 16 * 4)[None, :]
    n = w.shape[1]
    if qtype == QT.BF16:
        raw = (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(1, -1)
    else:
        raw = quants.quantize(w, qtype)
    got = Kernels(threads=1).dequantize(raw, qtype, n)
    np.testing.assert_array_equal(got.view(np.uint32), quants.dequantize(raw, qtype, n).view(np.uint32))
    y = Kernels(threads=1).matvec(raw, qtype, np.ones((1, n), F32))
    assert np.isnan(y).all(), f"{qtype.name}: a row holding inf, -inf and NaN summed to {y}"


def test_reused_buffer_is_written_in_place():
    raw = _raw(QT.Q6_K, 10, 512)
    buf = np.full((16, 512), np.nan, F32)
    got = Kernels(threads=2).dequantize(raw, QT.Q6_K, 512, out=buf)
    assert np.shares_memory(got, buf) and got.shape == (10, 512)
    np.testing.assert_array_equal(buf[:10], quants.dequantize(raw, QT.Q6_K, 512))
