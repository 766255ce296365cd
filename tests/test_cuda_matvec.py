"""Every CUDA matvec kernel variant on the emulator against the float64 oracle: the direct
kernels (mvd_*, CUDA cores, weights straight into registers) in every format and batch
width and launch shape, the tensor-core kernels (mvt_*, Q4_0 and Q6_K, x as f16 hi + lo) in
every shape, and the staged kernels (matvec.cu); the prefill's products (f16x3: weights and
x split into f16 hi + lo for three GEMMs; f32); the repacking of Q4_0 and Q6_K checked bit
for bit through dequantize. Inputs: every nibble and high-bit pattern (random quant bytes
under sane scales), row counts that leave partial blocks and tiles, outputs pre-filled with
NaN (a row the kernel skips shows), and x with outliers of 1e4 beside values of 1e-6, a vector
up to 1e7 and one below 1e-5 (the f16 paths' prescale and lo half)."""

import re

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from g4c import quants
from g4c.runtimes.cuda import emu
from g4c.runtimes.cuda.runtime import (DIRECT_CONFIG, DIRECT_NV, DIRECT_SWEEP, KERNEL_DIR, MMA_CONFIG, MMA_SHAPES,
                                       PACKED, TYPE_NAMES)

FORMATS = list(TYPE_NAMES)


@pytest.fixture(scope="module")
def k():
    return emu.EmulatedCudaRuntime().kernels()


def weights(qtype: QT, rows: int, cols: int, seed: int) -> np.ndarray:
    """Raw rows of qtype: quantized from random weights, then for Q4_0, Q4_K and Q6_K every
    quant byte (and the K-quants' sub-scales and mins) replaced by random bytes, so that every 4-bit and 2-bit
    pattern and negative sub-scales occur; the f16 scales stay those of the quantizer."""
    rng = np.random.default_rng(seed)
    raw = quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype).copy()
    if qtype == QT.Q4_0:
        b = raw.reshape(rows, -1, 18)
        b[:, :, 2:] = rng.integers(0, 256, b[:, :, 2:].shape)
    elif qtype == QT.Q6_K:
        b = raw.reshape(rows, -1, 210)
        b[:, :, :208] = rng.integers(0, 256, b[:, :, :208].shape)
    elif qtype == QT.Q4_K:  # sub-scales, mins and quants random; d and dmin the quantizer's
        b = raw.reshape(rows, -1, 144)
        b[:, :, 4:] = rng.integers(0, 256, b[:, :, 4:].shape)
    return raw


def vectors(n: int, cols: int, seed: int, outliers: bool) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, cols)).astype(np.float32)
    if outliers:
        x[:, 5] *= 1e4
        x[:, 7::11] *= 1e-6
        x[-1] *= 1e3  # up to 1e7: past f16's 65504 unless prescaled
        if n > 1:
            x[0] *= 1e-9  # at most 1e-5, most below f16's normal range unless prescaled
    return x


def check(y, raw, qtype, cols, x, what, mma=False, split=False):
    """y against the float64 product of the dequantized rows. The bound per output: f32
    accumulation over cols products, 2^-24 per addition, taken as cols * 2^-24 * sum|w x|
    (a worst case); the tensor-core path adds its representation of x, hi + lo in f16 after
    a prescale that puts max|x| below 2^14: each x off by at most half an f16 ulp of lo,
    2^-22 of max|x| (f16's 11 bits, twice), through sum|w|."""
    w = quants.dequantize(raw, qtype, cols).astype(np.float64)
    x64 = x.astype(np.float64)
    ref = x64 @ w.T
    bound = cols * 2.0 ** -24 * (np.abs(x64) @ np.abs(w).T)
    if mma:
        bound += 2.0 ** -22 * np.abs(x64).max(1, keepdims=True) * np.abs(w).sum(1)[None, :]
    if split:  # the prefill's f16x3: w and x each hi + lo to 2^-22 of their row's largest value, lo x lo dropped
        bound += 2.0 ** -21 * (np.abs(x64).max(1, keepdims=True) * np.abs(w).sum(1)[None, :]
                               + np.abs(x64).sum(1, keepdims=True) * np.abs(w).max(1)[None, :])
    assert not np.isnan(y).any(), f"{what}: rows left unwritten (NaN) at {np.argwhere(np.isnan(y))[:5].tolist()}"
    err = np.abs(y - ref)
    bad = np.argwhere(err > bound)
    assert not len(bad), (f"{what}: first wrong output (vector, row) {bad[0].tolist()}: {y[tuple(bad[0])]} against "
                          f"{ref[tuple(bad[0])]}, bound {bound[tuple(bad[0])]:.3g}; {len(bad)} wrong")


SHAPES = [(37, 256), (70, 512)]  # rows past a whole block or tile; cols of 8 or 16 units (Q6_K: 1 or 2 super-blocks)


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: q.name)
@pytest.mark.parametrize("nv", DIRECT_NV)
def test_direct_every_format(k, qtype, nv):
    rows, cols = SHAPES[nv % 2]
    raw = weights(qtype, rows, cols, nv)
    m = k.upload(raw, qtype, cols, path="direct")
    x = vectors(nv, cols, 10 + nv, outliers=nv == 2)
    y = np.full((nv, rows), np.nan, np.float32)
    k.matvec_direct(m, x, y, nv, *DIRECT_CONFIG.get(nv, (2, 4)))
    check(y, raw, qtype, cols, x, f"mvd {m.fmt} nv{nv}")


@pytest.mark.parametrize("qtype", list(PACKED), ids=lambda q: q.name)
@pytest.mark.parametrize("shape", DIRECT_SWEEP, ids=lambda s: f"r{s[0]}w{s[1]}")
def test_direct_launch_shapes(k, qtype, shape):
    rows, cols = 45, 1024  # 32 units: more than one pass of a 4-warp block's 128 lanes only with 8 warps
    raw = weights(qtype, rows, cols, 3)
    m = k.upload(raw, qtype, cols, path="direct")
    x = vectors(1, cols, 4, outliers=True)
    y = np.full((1, rows), np.nan, np.float32)
    k.matvec_direct(m, x, y, 1, *shape)
    check(y, raw, qtype, cols, x, f"mvd {m.fmt} r{shape[0]} w{shape[1]}")


# each shape with the batch widths its vector tiles serve (one tile of 8, two of 16; two tiles
# also with 5 vectors: the second tile all zero)
MMA_CASES = [(s, nv) for s in MMA_SHAPES for nv in ((2, 5, 8) if s[2] == 1 else (5, 9, 16))]


@pytest.mark.parametrize("qtype", list(PACKED), ids=lambda q: q.name)
@pytest.mark.parametrize("shape,nv", MMA_CASES, ids=lambda c: f"m{c[0]}w{c[1]}nt{c[2]}" if isinstance(c, tuple) else f"nv{c}")
def test_tensor_cores(k, qtype, shape, nv):
    tiles, warps, nt = shape
    rows, cols = 53, 512
    raw = weights(qtype, rows, cols, 7 + nv)
    m = k.upload(raw, qtype, cols, path="direct")
    x = vectors(nv, cols, 20 + nv, outliers=True)
    y = np.full((nv, rows), np.nan, np.float32)
    k.matvec_mma(m, x, y, tiles, warps, nt=nt)
    check(y, raw, qtype, cols, x, f"mvt {m.fmt} m{tiles} w{warps} nt{nt} nv{nv}", mma=True)


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: q.name)
@pytest.mark.parametrize("n", [1, 3, 16])
@pytest.mark.parametrize("path", ["direct", "cores", "staged"])
def test_runtime_choice(k, qtype, n, path):
    """Kernels.matvec as the forward calls it, on each path."""
    rows, cols = 19, 256
    raw = weights(qtype, rows, cols, n)
    m = k.upload(raw, qtype, cols, path=path)
    x = vectors(n, cols, 30 + n, outliers=False)
    check(k.matvec(m, x), raw, qtype, cols, x, f"{path} {m.fmt} n{n}", mma=path == "direct" and n > 1)


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: q.name)
@pytest.mark.parametrize("prefill", ["f16x3", "f32"])
@pytest.mark.parametrize("path", ["direct", "staged"])
def test_prefill_products(k, qtype, prefill, path, monkeypatch):
    """Kernels.matmul, the prefill's product of more than 16 rows, on both prefill paths,
    over the weights as each matvec path stores them."""
    monkeypatch.setattr(k, "prefill", prefill)
    rows, cols, n = 21, 512, 19
    raw = weights(qtype, rows, cols, 5)
    m = k.upload(raw, qtype, cols, path=path)
    x = vectors(n, cols, 6, outliers=True)
    check(k.matmul(m, x), raw, qtype, cols, x, f"matmul {prefill} {m.fmt}", split=prefill == "f16x3")


@pytest.mark.parametrize("qtype", list(PACKED), ids=lambda q: q.name)
@pytest.mark.parametrize("cols", [96, 768])
def test_repack_keeps_every_weight(k, qtype, cols):
    """Dequantized from the packed rows (padded to 16 bytes) and from the stored rows: the
    same floats, bit for bit, and the embedding lookup's row selection reads the packed rows."""
    if qtype in (QT.Q6_K, QT.Q4_K) and cols % 256:  # K-quants: whole super-blocks
        cols = 512
    raw = weights(qtype, 23, cols, 1)
    packed, stored = k.upload(raw, qtype, cols, path="direct"), k.upload(raw, qtype, cols, path="staged")
    assert packed.row_bytes % 16 == 0 and packed.fmt.endswith("p")
    a, b = k.dequant(packed), k.dequant(stored)
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    np.testing.assert_array_equal(a, quants.dequantize(raw, qtype, cols))
    ids = np.array([22, 0, 5, 5], np.int64)
    np.testing.assert_array_equal(k.dequant(packed, rows=ids), b[ids])


def test_variants_match_the_source():
    """The launch shapes runtime.py names are the ones matvec_direct.cu instantiates."""
    src = (KERNEL_DIR / "matvec_direct.cu").read_text()
    mvd = set(re.findall(r"^\s*MVD\(NAME, T, (\d+), (\d+), (\d+)\)", src, re.M))
    assert {(str(r), str(w), str(nv)) for nv in DIRECT_NV for r, w in [DIRECT_CONFIG.get(nv, (2, 4))]} == mvd
    sweep = re.search(r"#define MVD_SWEEP\(NAME, T\)(.*)", src).group(1)
    assert set(re.findall(r"MVD\(NAME, T, (\d+), (\d+), 1\)", sweep)) == {(str(r), str(w)) for r, w in DIRECT_SWEEP}
    mvt = set(re.findall(r"^\s*MVT\(NAME, T, (\d+), (\d+), (\d+)\)", src, re.M))
    assert mvt == {tuple(map(str, s)) for s in MMA_SHAPES}
    assert MMA_CONFIG + (1,) in MMA_SHAPES and MMA_CONFIG + (2,) in MMA_SHAPES
