"""The CUDA emulator (runtimes/cuda/emu) that lets the CUDA runtime's kernels run in CI:
its barrier and shuffle semantics, and the launch errors it turns into messages.

The runtime's own kernels run through it in conformance (`pytest conformance --runtime
cuda-emu`, a subset of which the test session runs); these cases check the emulator
itself, each with a kernel whose right answer is known without it."""

import numpy as np
import pytest

from g4c.runtimes.cuda import emu

KERNELS = r"""
// out[i] = sum over the block of x, through shared memory and a tree of __syncthreads
extern "C" __global__ void block_sum(const float* x, float* out, int n) {
    __shared__ float s[256];
    int t = threadIdx.x;
    s[t] = t < n ? x[blockIdx.x * n + t] : 0.f;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (t < o) s[t] += s[t + o];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// each thread reads its neighbour's value: right only with the barrier between
extern "C" __global__ void neighbour(const int* x, int* out, int sync) {
    __shared__ int s[64];
    int t = threadIdx.x;
    s[t] = x[t] * 10;
    if (sync) __syncthreads();
    out[t] = s[(t + 1) % blockDim.x];
}

// butterfly sum within each warp, then one value per warp of each kind of shuffle
extern "C" __global__ void shuffles(const int* x, int* out) {
    int t = threadIdx.x;
    int v = x[t], s = v;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    out[4 * t] = s;
    out[4 * t + 1] = __shfl_sync(0xffffffff, v, 3);
    out[4 * t + 2] = __shfl_down_sync(0xffffffff, v, 5);
    out[4 * t + 3] = (int)__shfl_xor_sync(0xffffffff, (double)v, 1);
}

// lanes of one warp at different barriers: a deadlock on a GPU
extern "C" __global__ void divergent(int* out) {
    if (threadIdx.x < 16) __syncwarp();
    else __syncthreads();
    out[threadIdx.x] = 1;
}

// one m16n8k16 tile: A (16 x 16) and B (16 x 8, k x n) f16 bits row-major in memory, loaded
// into fragments as the PTX ISA lays them out, D = A B + C into d (16 x 8, row-major)
extern "C" __global__ void mma_tile(const unsigned short* A, const unsigned short* B, const float* C, float* D) {
    int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    uint32_t a[4], b[2];
    for (int r = 0; r < 4; r++) {
        int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
        a[r] = A[row * 16 + col] | ((uint32_t)A[row * 16 + col + 1] << 16);
    }
    for (int r = 0; r < 2; r++) {
        int k = 2 * t + 8 * r;
        b[r] = B[k * 8 + g] | ((uint32_t)B[(k + 1) * 8 + g] << 16);
    }
    float d[4];
    for (int i = 0; i < 4; i++) d[i] = C[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
    g4c_emu_mma_m16n8k16(d, a, b);
    for (int i = 0; i < 4; i++) D[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = d[i];
}

extern "C" __global__ void grid_index(int* out) {
    int b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    int t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    out[b * blockDim.x * blockDim.y * blockDim.z + t] = b * 1000 + t;
}
"""


@pytest.fixture(scope="module")
def mod():
    return emu.RawModule(KERNELS)


def test_block_reduction(mod):
    x = np.random.default_rng(0).standard_normal((5, 200)).astype(np.float32)
    out = np.zeros(5, np.float32)
    mod.get_function("block_sum")((5,), (256,), (x, out, np.int32(200)))
    # float32 tree sum of 200 terms: error of order 8 * 2^-24 * sum|x|
    np.testing.assert_allclose(out, x.astype(np.float64).sum(1), atol=1e-4)


def test_missing_barrier_reads_stale_data(mod):
    """Without __syncthreads a thread reads its neighbour's slot before the neighbour has
    written it, in one of the two fiber orders; with it, every value is right."""
    x = np.arange(64, dtype=np.int32)
    want = (np.roll(x, -1) * 10).astype(np.int32)
    out = np.zeros(64, np.int32)
    mod.get_function("neighbour")((1,), (64,), (x, out, np.int32(1)))
    np.testing.assert_array_equal(out, want)
    x2 = x + 100  # different from what the first launch left in shared memory
    mod.get_function("neighbour")((1,), (64,), (x2, out, np.int32(0)))
    assert (out != (np.roll(x2, -1) * 10)).any()


def test_shuffles(mod):
    x = np.random.default_rng(1).integers(-1000, 1000, 64).astype(np.int32)
    out = np.zeros(4 * 64, np.int32).reshape(64, 4)
    mod.get_function("shuffles")((1,), (64,), (x, out))
    w = x.reshape(2, 32)
    np.testing.assert_array_equal(out[:, 0], np.repeat(w.sum(1), 32))
    np.testing.assert_array_equal(out[:, 1], np.repeat(w[:, 3], 32))
    lanes = np.arange(32)
    down = np.where(lanes + 5 < 32, lanes + 5, lanes)
    np.testing.assert_array_equal(out[:, 2], np.concatenate([w[0, down], w[1, down]]))
    np.testing.assert_array_equal(out[:, 3], np.concatenate([w[0, lanes ^ 1], w[1, lanes ^ 1]]))


def test_grid_and_block_indices(mod):
    out = np.full(3 * 2 * 2 * 4 * 2 * 3, -1, np.int32)
    mod.get_function("grid_index")((3, 2, 2), (4, 2, 3), (out,))
    b, t = np.divmod(np.arange(out.size), 24)
    np.testing.assert_array_equal(out, b * 1000 + t)


def test_mma_tile(mod):
    """The emulator's mma.m16n8k16 (what the tensor-core matvec runs on in CI): a tile of f16
    values with a C term against numpy; f16 products are exact in f32 and the 16 terms here
    are small integers and halves, so the sum is exact too."""
    rng = np.random.default_rng(3)
    a = rng.integers(-8, 8, (16, 16)).astype(np.float16)
    b = (rng.integers(-64, 64, (16, 8)) / 2).astype(np.float16)
    c = rng.integers(-100, 100, (16, 8)).astype(np.float32)
    d = np.zeros((16, 8), np.float32)
    mod.get_function("mma_tile")((1,), (32,), (a.view(np.uint16).copy(), b.view(np.uint16).copy(), c, d))
    np.testing.assert_array_equal(d, a.astype(np.float32) @ b.astype(np.float32) + c)


def test_divergent_barriers_are_an_error(mod):
    with pytest.raises(emu.EmulatorError, match=r"divergent block \(0, 0, 0\): warp 0 .* thread 16 waits at __syncthreads"):
        mod.get_function("divergent")((1,), (32,), (np.zeros(32, np.int32),))


def test_launch_argument_errors(mod):
    f = mod.get_function("block_sum")
    x = np.zeros((4, 8), np.float32)
    with pytest.raises(emu.EmulatorError, match="argument 0 is a non-contiguous array"):
        f((1,), (32,), (x[:, ::2], np.zeros(1, np.float32), np.int32(4)))
    with pytest.raises(emu.EmulatorError, match="argument 2 is a int"):
        f((1,), (32,), (x, np.zeros(1, np.float32), 4))
    with pytest.raises(emu.EmulatorError, match="2048 threads per block"):
        f((1,), (2048,), (x, np.zeros(1, np.float32), np.int32(4)))


def test_build_error_names_the_source():
    with pytest.raises(emu.G4CError, match="g\\+\\+ could not build"):
        emu.RawModule('extern "C" __global__ void broken(int* x) { x[0] = undeclared; }')


def test_runtime_kernels_run_without_graphs():
    """The CUDA runtime on the emulator: decode falls back from graph capture and says why."""
    from g4c import fixtures
    from g4c.model import Model

    rt = emu.EmulatedCudaRuntime()
    s = rt.load(Model(fixtures.ensure("micro")), 32)
    s.prefill([1, 2, 3])
    s.decode([4])
    assert s.graph_error == "NotImplementedError: CUDA graphs are not emulated"


def test_emulator_runs_only_when_named():
    """A default run (every registered runtime) leaves the emulator out; naming it selects it."""
    from g4c import runtime as registry

    assert "cuda-emu" in registry.discover()
    assert "cuda-emu" not in registry.select([])
    assert list(registry.select(["cuda-emu"])) == ["cuda-emu"]


def test_ring_and_window_on_emulated_cuda():
    """The CUDA runtime's ring and window bounds through the emulator, in seconds (CI's
    conformance subset leaves out the 1026-position window test): a 70-token prefill (the
    tiled attention of prefills) on the tiny preset, whose window of 32 makes the ring keep only the prefill's last 32 keys, then
    decode steps that wrap the ring, against the float64 reference."""
    from g4c.conformance.harness import load_model, prompt, reference_logits
    from g4c import tolerance
    from g4c.compare import assert_logits_close

    rt = emu.EmulatedCudaRuntime()
    tol = tolerance.for_runtime(rt)
    model = load_model("tiny", "Q4_0")
    assert model.config.window == 32
    toks = prompt(74, model.n_vocab, seed=5)
    ref = reference_logits(model, toks)
    sess = rt.load(model, 128, 1)
    # the 70-row prefill takes the tiled attention (attention_tile), the decode steps attention_split
    from g4c.runtimes.cuda.runtime import tiled_attention

    assert tiled_attention(np.zeros(70, np.int64), np.arange(70)) and not tiled_attention(np.zeros(1, np.int64), [70])
    rows = list(np.asarray(sess.prefill(list(toks[:70]))))
    for t in toks[70:-1]:
        rows.append(np.asarray(sess.decode([t]))[0])
    assert_logits_close(np.array(rows), ref[:-1], tol, tol.logit_max_abs(model.config, ref), np.arange(73),
                        what="emulated cuda logits")


def test_emulator_bandwidth_is_the_hosts():
    """The benchmarks' roofline for the emulator: host memory, measured (CudaRuntime's own
    measurement needs CUDA events and a device; the emulator once raised 'cupy is not installed')."""
    bw = emu.EmulatedCudaRuntime().memory_bandwidth()
    assert bw["bytes_per_s"] > 1e8 and bw["device"] == "host" and "emulator" in bw["note"]
