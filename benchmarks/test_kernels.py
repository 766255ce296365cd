"""The cpu runtime's kernels (runtimes/cpu/kernels.py), per weight format, against the host's
measured read bandwidth in the same run.

test_matvec: a decode product (one activation row) over a matrix of MATRIX_BYTES, larger
than the caches, so the weights come from memory as in a 12B decode; extra_info has the GB/s
of weights read and their fraction of the bandwidth. Reaching it means the loops vectorized:
a scalar loop reads Q4_0 at a fifth of it (see kernels._compile).

test_product: the two ways runtime.py multiplies a 12B-sized matrix (15360 x 3840, Q4_0)
by m rows, the fused kernels and a chunked dequantization for BLAS, at m = 1 to 512:
MATVEC_ROWS, where the runtime changes from one to the other, comes from these figures.

Each benchmark checks what it timed against the numpy product (f32 bound, as in
tests/test_kernels.py), so a fast wrong kernel fails."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from g4c import bench, quants
from g4c.model import Weight
from g4c.runtimes.cpu import kernels as K
from g4c.runtimes.cpu.runtime import CHUNK_BYTES, MATVEC_ROWS, _Matrix

F32 = np.float32
EPS32 = float(np.finfo(F32).eps)
MATRIX_BYTES = 96 << 20
N_COLS = 4096
TILE_ROWS = 64  # rows quantized for real; the matrix repeats them (quantizing 96 MiB would take longer than timing it)


@pytest.fixture(scope="module")
def host_bandwidth():
    return bench.host_read_bandwidth()


@pytest.fixture(scope="module")
def kernels(request):
    chosen = request.config._g4c_bench_runtimes  # benchmarks/conftest.py: those asked for, else every default one
    if "cpu" not in chosen:
        pytest.skip(f"--bench-runtime asks for {', '.join(chosen)}, not cpu: these measure the cpu runtime's kernels")
    return K.Kernels()


def _matrix(qtype: QT, n_cols: int, nbytes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(raw rows of about nbytes, the float32 weights of its first TILE_ROWS rows)."""
    w = np.random.default_rng(seed).standard_normal((TILE_ROWS, n_cols)).astype(F32)
    tile = ((w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(TILE_ROWS, -1)
            if qtype == QT.BF16 else quants.quantize(w, qtype))
    reps = max(1, nbytes // tile.nbytes)
    return np.ascontiguousarray(np.tile(tile, (reps, 1))), quants.dequantize(tile, qtype, n_cols)


def _check(y: np.ndarray, x: np.ndarray, w: np.ndarray, what: str) -> None:
    """The first TILE_ROWS outputs of a timed product against float64, to the f32 sum bound."""
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    bound = w.shape[1] * EPS32 * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T)
    err = np.abs(y[:, : w.shape[0]] - exact)
    assert (err <= bound).all(), f"{what}: the timed product is wrong, error up to {err.max():.3g} (bound {bound.max():.3g})"


@pytest.mark.parametrize("qtype", list(K.CODE), ids=lambda t: t.name)
def test_matvec(request, benchmark, kernels, host_bandwidth, qtype):
    raw, w = _matrix(qtype, N_COLS, MATRIX_BYTES)
    x = np.random.default_rng(1).standard_normal((1, N_COLS)).astype(F32)
    y = benchmark.pedantic(kernels.matvec, args=(raw, qtype, x), rounds=5, warmup_rounds=1)
    _check(y, x, w, f"matvec {qtype.name}")
    if benchmark.stats is not None:
        bw = host_bandwidth["bytes_per_s"]
        gbs = raw.nbytes / benchmark.stats.stats.min
        benchmark.extra_info.update(kernel="matvec", format=qtype.name, rows=raw.shape[0], cols=N_COLS,
                                    weight_bytes=raw.nbytes, threads=kernels.threads, bytes_per_s=gbs,
                                    bandwidth_bytes_per_s=bw, bandwidth_method=host_bandwidth["method"],
                                    bandwidth_fraction=gbs / bw)
        request.config._g4c_kernel_rows.append(f"matvec {qtype.name:5s} {gbs / 1e9:6.2f} GB/s of weights, "
                                               f"{100 * gbs / bw:5.1f}% of the host's {bw / 1e9:.1f} GB/s")


@pytest.mark.parametrize("path", ["fused", "blas"])
@pytest.mark.parametrize("m", [1, 8, 16, 32, 64, 512])
def test_product(request, benchmark, kernels, host_bandwidth, m, path):
    if path == "fused" and m > 64:
        pytest.skip(f"the fused kernels at {m} rows would take minutes; runtime.py uses them up to {MATVEC_ROWS}")
    n_rows, n_cols = 15360, 3840  # the 12B preset's ffn_gate
    raw, w = _matrix(QT.Q4_0, n_cols, n_rows * quants.layout(QT.Q4_0).row_bytes(n_cols))
    mat = _Matrix(Weight("ffn_gate", QT.Q4_0, (n_cols, raw.shape[0]), raw), False, kernels,
                  np.empty(CHUNK_BYTES // 4, F32))
    x = np.random.default_rng(2).standard_normal((m, n_cols)).astype(F32)
    y = benchmark.pedantic(getattr(mat, path), args=(x,), rounds=3, warmup_rounds=1)
    _check(y, x, w, f"{path} product of {m} rows")
    if benchmark.stats is not None:
        t = benchmark.stats.stats.min
        benchmark.extra_info.update(kernel=path, format="Q4_0", rows=raw.shape[0], cols=n_cols, m=m,
                                    weight_bytes=raw.nbytes, bytes_per_s=raw.nbytes / t, rows_per_s=m / t,
                                    bandwidth_bytes_per_s=host_bandwidth["bytes_per_s"])
        request.config._g4c_kernel_rows.append(f"Q4_0 15360x3840 times {m:3d} rows, {path:5s}: {1e3 * t:8.1f} ms")
