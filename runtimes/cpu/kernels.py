"""Fused dequantize-and-dot kernels of the CPU runtime, compiled by numba.

What they compute is what ops.dequantize followed by ops.matmul computes (g4c/quants.py states
each format in numpy); the kernels only avoid the float32 copy of the matrix. Each row of the
memory-mapped file is read once: each block is decoded into a small buffer that stays in L1,
and multiplied into per-lane accumulators, so the loops are element-wise and LLVM vectorizes
them (benchmarks/test_kernels.py measures the GB/s per format). Activations and accumulators
are float32, as in the numpy path: the cpu runtime is the suite's f32 baseline.

A kernel runs on a range of rows with the GIL released; `Kernels` splits a matrix's rows over
a thread pool, so all cores read the file at once and every row's sum is computed by one
thread, in one order, whatever the thread count.

`matvec` suits a few activation rows (decode, small batches); for a long prompt `dequantize`
writes row chunks into a reused buffer for BLAS (runtime.py picks by MATVEC_MAX_ROWS).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from gguf import GGMLQuantizationType as QT

from g4c import quants
from g4c.paths import cache_dir

F32 = np.float32
# the format codes the kernels branch on (numba compiles one function for all of them)
CODE = {QT.F32: 0, QT.F16: 1, QT.BF16: 2, QT.Q8_0: 3, QT.Q4_0: 4, QT.Q5_0: 5, QT.Q4_K: 6, QT.Q5_K: 7, QT.Q6_K: 8}
# every float16 bit pattern as float32, by numpy's exact conversion: block scales and F16
# weights are looked up (numba has no float16)
F16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(F32)
# bytes read ahead of the row being decoded: streaming the 12B's matrices from memory, 3.5
# against 2.5 GB/s without (Q4_0, two threads)
AHEAD = 6144
# a thread's share of a matrix is at least this many bytes: below it, starting threads costs
# more than it saves
MIN_SHARE = 256 << 10

def _share_the_cache() -> None:
    """Keep this file's compiled kernels in the suite's cache directory ($G4C_CACHE/numba), not
    beside the source: numba keys entries by the file's content (sha256) and each function's
    name and line, so a source tree and an installed wheel of the same code share one compile
    (about a minute on 2 cores), as do every process and virtualenv of a machine. Left to numba
    where NUMBA_CACHE_DIR is set, or where its (private) locator list has moved."""
    from numba.core import caching

    base = getattr(caching, "UserProvidedCacheLocator", None)
    impl = getattr(caching, "CacheImpl", None)
    if base is None or impl is None or numba.config.CACHE_DIR:
        return
    this = os.path.abspath(__file__)

    class SharedLocator(base):
        def __init__(self, py_func, py_file):
            self._py_file, self._lineno = py_file, py_func.__code__.co_firstlineno
            self._cache_path = str(cache_dir() / "numba")

        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.abspath(py_file) != this:
                return None
            return super(base, cls).from_function(py_func, py_file)  # the source-file mixin's: checks the directory

    impl._locator_classes.insert(0, SharedLocator)


_share_the_cache()

# element-wise loops vectorize without these; the dot products' lane sums and the scale
# products may be reassociated and fused, as BLAS's are (f32 rounding either way)
_FAST = {"reassoc", "contract"}


@numba.njit(inline="always")
def _u16(row, i):
    return np.uint32(row[i]) | (np.uint32(row[i + 1]) << 8)


@numba.njit(inline="always")
def _i8(row, i):
    v = np.int32(row[i])
    return F32(v - ((v & 128) << 1))


@numba.njit(inline="always")
def _kquant_scale_min(row, o, k):
    """Sub-block k's 6-bit scale and min from the 12 bytes at row[o:] (Q4_K, Q5_K)."""
    if k < 4:
        return F32(row[o + k] & 63), F32(row[o + k + 4] & 63)
    sc = (row[o + k + 4] & 15) | ((row[o + k - 4] >> 6) << 4)
    mn = (row[o + k + 4] >> 4) | ((row[o + k] >> 6) << 4)
    return F32(sc), F32(mn)


@numba.njit(inline="always")
def _float_row(code, row, lut, out):
    """A row of F32 (code 0), F16 (1) or BF16 (2) weights into out, whole: the loop runs over
    the row, long enough for LLVM to vectorize."""
    if code == 0:
        src = row.view(np.float32)
        for j in range(out.size):
            out[j] = src[j]
    elif code == 1:
        h = row.view(np.uint16)
        for j in range(out.size):
            out[j] = lut[h[j]]
    else:  # the high half of a float32
        h, bits = row.view(np.uint16), out.view(np.uint32)
        for j in range(out.size):
            bits[j] = np.uint32(h[j]) << 16


# One function per quantized format: block b of a row (bs weights) into out[o:o + bs], as
# g4c/quants.py dequantizes it. n16 is 16, passed at run time: LLVM fully unrolls a loop whose trip count it
# sees and then leaves it scalar; a loop whose count it cannot see, it vectorizes.
@numba.njit(inline="always")
def _q8_0(row, b, bs, lut, out, o, n16):  # f16 d, int8 q[32]
    p = b * 34
    d = lut[_u16(row, p)]
    for j in range(2 * n16):
        out[o + j] = d * _i8(row, p + 2 + j)


@numba.njit(inline="always")
def _q4_0(row, b, bs, lut, out, o, n16):  # f16 d, qs[16]: low nibbles weights 0..15, high 16..31; minus 8
    p = b * 18
    d = lut[_u16(row, p)]
    for j in range(n16):
        q = row[p + 2 + j]
        out[o + j] = d * (F32(q & 15) - F32(8))
        out[o + n16 + j] = d * (F32(q >> 4) - F32(8))


@numba.njit(inline="always")
def _q5_0(row, b, bs, lut, out, o, n16):  # f16 d, u32 qh (bit i: 5th bit of weight i), qs[16]; minus 16
    p = b * 22
    d = lut[_u16(row, p)]
    qh = _u16(row, p + 2) | (_u16(row, p + 4) << 16)
    for j in range(n16):
        q = np.uint32(row[p + 6 + j])
        lo = (q & 15) | (((qh >> j) & 1) << 4)
        hi = (q >> 4) | (((qh >> (j + n16)) & 1) << 4)
        out[o + j] = d * (F32(lo) - F32(16))
        out[o + n16 + j] = d * (F32(hi) - F32(16))


@numba.njit(inline="always")
def _kquant(row, p, qs, qh, out, o, lut, n16):
    """Q4_K (qh < 0) and Q5_K: f16 d, dmin, 12 scale bytes, (Q5_K: qh[32]), qs[128]. Chunk c of
    qs holds sub-block 2c in its low nibbles and 2c + 1 in its high ones; bit k of qh[i] is
    the fifth bit of sub-block k's weight i."""
    d, dmin = lut[_u16(row, p)], lut[_u16(row, p + 2)]
    for c in range(4):
        sc, mn = _kquant_scale_min(row, p + 4, 2 * c)
        s0, m0 = d * sc, dmin * mn
        sc, mn = _kquant_scale_min(row, p + 4, 2 * c + 1)
        s1, m1 = d * sc, dmin * mn
        for i in range(2 * n16):
            v = np.uint32(row[qs + 32 * c + i])
            lo, hi = v & 15, v >> 4
            if qh >= 0:
                h = np.uint32(row[qh + i]) >> (2 * c)
                lo |= (h & 1) << 4
                hi |= ((h >> 1) & 1) << 4
            out[o + 64 * c + i] = s0 * F32(lo) - m0
            out[o + 64 * c + 32 + i] = s1 * F32(hi) - m1


@numba.njit(inline="always")
def _q4_k(row, b, bs, lut, out, o, n16):
    p = b * 144
    _kquant(row, p, p + 16, -1, out, o, lut, n16)


@numba.njit(inline="always")
def _q5_k(row, b, bs, lut, out, o, n16):
    p = b * 176
    _kquant(row, p, p + 48, p + 16, out, o, lut, n16)


@numba.njit(inline="always")
def _q6_k(row, b, bs, lut, out, o, n16):
    """ql[128], qh[64], int8 scales[16], f16 d; two halves of 128 weights. In half h, weight
    i < 32 of chunk c takes its low 4 bits from ql[64h + 32 (c % 2) + i] (low nibble for c < 2,
    high for c >= 2) and its high 2 from bits 2c of qh[32h + i]; a scale per 16 weights."""
    p = b * 210
    d = lut[_u16(row, p + 208)]
    for h in range(2):
        sc = p + 192 + 8 * h
        s0, s1, s2, s3 = d * _i8(row, sc), d * _i8(row, sc + 1), d * _i8(row, sc + 2), d * _i8(row, sc + 3)
        s4, s5, s6, s7 = d * _i8(row, sc + 4), d * _i8(row, sc + 5), d * _i8(row, sc + 6), d * _i8(row, sc + 7)
        ql, qh, w = p + 64 * h, p + 128 + 32 * h, o + 128 * h
        for i in range(2 * n16):
            first = i < n16
            a, c, q = np.uint32(row[ql + i]), np.uint32(row[ql + 32 + i]), np.uint32(row[qh + i])
            out[w + i] = F32(np.int32((a & 15) | ((q & 3) << 4)) - 32) * (s0 if first else s1)
            out[w + 32 + i] = F32(np.int32((c & 15) | (((q >> 2) & 3) << 4)) - 32) * (s2 if first else s3)
            out[w + 64 + i] = F32(np.int32((a >> 4) | (((q >> 4) & 3) << 4)) - 32) * (s4 if first else s5)
            out[w + 96 + i] = F32(np.int32((c >> 4) | (((q >> 6) & 3) << 4)) - 32) * (s6 if first else s7)


# The same formats fused with a dot product: block b of a row times x[xo:xo + bs], summed into
# the lanes of acc (2 n16 of them). One loop per block reads, decodes and multiplies: three
# times the GB/s of decoding into a buffer and then multiplying (Q4_0, one activation row).
@numba.njit(inline="always")
def _dot_q8_0(row, b, lut, x, xo, acc, n16):
    p = b * 34
    d = lut[_u16(row, p)]
    for j in range(2 * n16):
        acc[j] += d * (_i8(row, p + 2 + j) * x[xo + j])


@numba.njit(inline="always")
def _dot_q4_0(row, b, lut, x, xo, acc, n16):
    p = b * 18
    d = lut[_u16(row, p)]
    for j in range(n16):
        q = row[p + 2 + j]
        acc[j] += d * ((F32(q & 15) - F32(8)) * x[xo + j] + (F32(q >> 4) - F32(8)) * x[xo + n16 + j])


@numba.njit(inline="always")
def _dot_q5_0(row, b, lut, x, xo, acc, n16):
    p = b * 22
    d = lut[_u16(row, p)]
    qh = _u16(row, p + 2) | (_u16(row, p + 4) << 16)
    for j in range(n16):
        q = np.uint32(row[p + 6 + j])
        lo = (q & 15) | (((qh >> j) & 1) << 4)
        hi = (q >> 4) | (((qh >> (j + n16)) & 1) << 4)
        acc[j] += d * ((F32(lo) - F32(16)) * x[xo + j] + (F32(hi) - F32(16)) * x[xo + n16 + j])


@numba.njit(inline="always")
def _dot_kquant(row, p, qs, qh, lut, x, xo, acc, n16):
    d, dmin = lut[_u16(row, p)], lut[_u16(row, p + 2)]
    for c in range(4):
        sc, mn = _kquant_scale_min(row, p + 4, 2 * c)
        s0, m0 = d * sc, dmin * mn
        sc, mn = _kquant_scale_min(row, p + 4, 2 * c + 1)
        s1, m1 = d * sc, dmin * mn
        for i in range(2 * n16):
            v = np.uint32(row[qs + 32 * c + i])
            lo, hi = v & 15, v >> 4
            if qh >= 0:
                h = np.uint32(row[qh + i]) >> (2 * c)
                lo |= (h & 1) << 4
                hi |= ((h >> 1) & 1) << 4
            acc[i] += (s0 * F32(lo) - m0) * x[xo + 64 * c + i] + (s1 * F32(hi) - m1) * x[xo + 64 * c + 32 + i]


@numba.njit(inline="always")
def _dot_q6_k(row, b, lut, x, xo, acc, n16):
    p = b * 210
    d = lut[_u16(row, p + 208)]
    for h in range(2):
        sc = p + 192 + 8 * h
        s0, s1, s2, s3 = d * _i8(row, sc), d * _i8(row, sc + 1), d * _i8(row, sc + 2), d * _i8(row, sc + 3)
        s4, s5, s6, s7 = d * _i8(row, sc + 4), d * _i8(row, sc + 5), d * _i8(row, sc + 6), d * _i8(row, sc + 7)
        ql, qh, w = p + 64 * h, p + 128 + 32 * h, xo + 128 * h
        for i in range(2 * n16):
            first = i < n16
            a, c, q = np.uint32(row[ql + i]), np.uint32(row[ql + 32 + i]), np.uint32(row[qh + i])
            acc[i] += (F32(np.int32((a & 15) | ((q & 3) << 4)) - 32) * (s0 if first else s1) * x[w + i]
                       + F32(np.int32((c & 15) | (((q >> 2) & 3) << 4)) - 32) * (s2 if first else s3) * x[w + 32 + i]
                       + F32(np.int32((a >> 4) | (((q >> 4) & 3) << 4)) - 32) * (s4 if first else s5) * x[w + 64 + i]
                       + F32(np.int32((c >> 4) | (((q >> 6) & 3) << 4)) - 32) * (s6 if first else s7) * x[w + 96 + i])


@numba.njit(inline="always")
def _dot(code, bs, row, b, lut, x, acc, n16):
    """acc += block b of a row times its slice of x; code and bs are constants where inlined."""
    if code == 3:
        _dot_q8_0(row, b, lut, x, b * bs, acc, n16)
    elif code == 4:
        _dot_q4_0(row, b, lut, x, b * bs, acc, n16)
    elif code == 5:
        _dot_q5_0(row, b, lut, x, b * bs, acc, n16)
    elif code == 6:
        _dot_kquant(row, b * 144, b * 144 + 16, -1, lut, x, b * bs, acc, n16)
    elif code == 7:
        _dot_kquant(row, b * 176, b * 176 + 48, b * 176 + 16, lut, x, b * bs, acc, n16)
    else:
        _dot_q6_k(row, b, lut, x, b * bs, acc, n16)


@numba.njit(inline="always")
def _touch(raw, r, r1):
    """Read one byte per cache line of the bytes AHEAD past row r's start, within rows < r1:
    the loads run while row r is decoded, so its successors come from memory in time. Kernels
    return the sum, so the loads cannot be optimized away."""
    rb = raw.shape[1]
    flat = raw.reshape(raw.shape[0] * rb)
    t = np.uint32(0)
    for k in range(r * rb + AHEAD, min((r + 1) * rb + AHEAD, r1 * rb), 64):
        t += flat[k]
    return t


@numba.njit(inline="always")
def _block(code, bs, row, b, lut, out, o, n16):
    """Block b of a row into out[o:o + bs]; code and bs are constants where it is inlined."""
    if code == 3:
        _q8_0(row, b, bs, lut, out, o, n16)
    elif code == 4:
        _q4_0(row, b, bs, lut, out, o, n16)
    elif code == 5:
        _q5_0(row, b, bs, lut, out, o, n16)
    elif code == 6:
        _q4_k(row, b, bs, lut, out, o, n16)
    elif code == 7:
        _q5_k(row, b, bs, lut, out, o, n16)
    else:
        _q6_k(row, b, bs, lut, out, o, n16)


def _compile(code: int, bs: int):
    """The matvec and dequantize kernels of one format, compiled for it alone: code and bs are
    constants of the closure, so numba prunes the other formats' branches and LLVM sees fixed
    block offsets (a block size it cannot see kept the loops scalar: 0.8 against 3.7 GB/s).
    numba's cache keys a closure by its constants, so each format is compiled once per
    machine."""

    @numba.njit(nogil=True, cache=True, fastmath=_FAST)
    def matvec(raw, lut, x, out, r0, r1, n16):
        """out[:, r] = x @ dequantized(raw[r]) for rows r0..r1: x (m, n_cols) f32, out (m, rows)."""
        m, n = x.shape
        t = np.uint32(0)
        if code <= 2:  # float rows: decoded whole (F32: read in place), then one dot per x row
            buf = np.empty(n, F32)
            for r in range(r0, r1):
                t += _touch(raw, r, r1)
                w = raw[r].view(np.float32) if code == 0 else buf
                if code != 0:
                    _float_row(code, raw[r], lut, buf)
                for i in range(m):
                    s = F32(0)
                    for j in range(n):
                        s += w[j] * x[i, j]
                    out[i, r] = s
            return t
        nb = n // bs
        if m == 1:  # decode: the fused dots
            acc = np.empty(2 * n16, F32)
            xr = x[0]
            for r in range(r0, r1):
                t += _touch(raw, r, r1)
                row = raw[r]
                acc[:] = 0
                for b in range(nb):
                    _dot(code, bs, row, b, lut, xr, acc, n16)
                out[0, r] = acc.sum()
            return t
        buf = np.empty(n, F32)  # a few rows: each weight row decoded once, then one dot per x row
        for r in range(r0, r1):
            t += _touch(raw, r, r1)
            row = raw[r]
            for b in range(nb):
                _block(code, bs, row, b, lut, buf, b * bs, n16)
            for i in range(m):
                s = F32(0)
                for j in range(n):
                    s += buf[j] * x[i, j]
                out[i, r] = s
        return t

    @numba.njit(nogil=True, cache=True)
    def dequantize(raw, lut, out, r0, r1, n16):
        """out[r - r0] = dequantized(raw[r]) for rows r0..r1 (exactly g4c/quants.py's values)."""
        nb = out.shape[1] // bs
        t = np.uint32(0)
        for r in range(r0, r1):
            t += _touch(raw, r, r1)
            row = raw[r]
            dst = out[r - r0]
            if code <= 2:
                _float_row(code, row, lut, dst)
                continue
            for b in range(nb):
                _block(code, bs, row, b, lut, dst, b * bs, n16)
        return t

    return matvec, dequantize


_KERNELS = {qt: _compile(code, quants.LAYOUTS[qt].block_size) for qt, code in CODE.items()}


class Kernels:
    """The kernels over a thread pool of os.cpu_count() threads: each call splits a matrix's
    rows into one contiguous range per thread."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None

    @functools.lru_cache(maxsize=None)
    def _ranges(self, n_rows: int, row_bytes: int) -> tuple[tuple[int, int], ...]:
        parts = max(1, min(self.threads, n_rows * row_bytes // MIN_SHARE, n_rows))
        edges = [n_rows * k // parts for k in range(parts + 1)]
        return tuple(zip(edges[:-1], edges[1:]))

    def _run(self, fn, n_rows: int, row_bytes: int) -> None:
        ranges = self._ranges(n_rows, row_bytes)
        if len(ranges) == 1 or self.pool is None:
            fn(0, n_rows)
            return
        # the calling thread takes the first range: one handoff fewer per product
        others = [self.pool.submit(fn, a, b) for a, b in ranges[1:]]
        fn(*ranges[0])
        for f in others:
            f.result()

    def matvec(self, raw: np.ndarray, qtype: QT, x: np.ndarray) -> np.ndarray:
        """x (m, n_cols) f32 times the matrix raw (rows, row_bytes) holds, transposed: (m, rows)."""
        x = np.ascontiguousarray(x, dtype=F32)
        raw = np.ascontiguousarray(raw)
        out = np.empty((x.shape[0], raw.shape[0]), F32)
        kernel = _KERNELS[QT(qtype)][0]
        self._run(lambda a, b: kernel(raw, F16, x, out, a, b, 16), raw.shape[0], raw.shape[1])
        return out

    def dequantize(self, raw: np.ndarray, qtype: QT, n_cols: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows of raw into float32 (rows, n_cols), in `out` when given (a reused buffer)."""
        raw = np.ascontiguousarray(raw)
        out = np.empty((raw.shape[0], n_cols), F32) if out is None else out[: raw.shape[0]]
        kernel = _KERNELS[QT(qtype)][1]
        self._run(lambda a, b: kernel(raw, F16, out[a:b], a, b, 16), raw.shape[0], raw.shape[1])
        return out
