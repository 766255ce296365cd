"""CUDA runtime: the Gemma 4 forward on CuPy RawModule kernels (kernels/*.cu), float32.

Weights are uploaded once in their quantized form, the matrices that read the same input
stacked by rows (q, k and v; gate and up) so that one launch multiplies them all. A call
with at most 16 rows (decode, batched decode of up to 16 sequences) runs fused
dequantize-matvec kernels that read each weight row once for all rows; a longer call
(prefill) dequantizes each matrix into a scratch buffer and multiplies through cuBLAS.
Around the matvecs a layer is four launches: the per-head norms and RoPE of q, k and v;
attention in two (its splits, then their merge with the cache store); and the residual add
of each sub-layer fused with the norm that follows it. The KV cache lives on the device,
slots as the session's KV plan (g4c.session.KVPlan) assigns them: a ring of W slots on
sliding layers (attention reads a batch's own keys from the batch), max_context slots on
full layers, allocated at load so that the decode step's CUDA graph is captured once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from gguf import GGMLQuantizationType as QT

from g4c.config import LayerSpec
from g4c.errors import DeviceUnavailableError, G4CError, UnsupportedModelError, UnsupportedQuantError
from g4c.model import Model, Weight
from g4c.plan import MemoryPlan, check_fits, kv_bytes
from g4c.rope import inv_freq_f32
from g4c.opcases import EVERY_OP
from g4c.runtime import EVERY_METHOD, Availability, Capabilities
from g4c.session import Session

KERNEL_DIR = Path(__file__).parent / "kernels"
KERNEL_FILES = ("matvec.cu", "matvec_direct.cu", "norm_rope.cu", "attention.cu")
TYPE_NAMES = {QT.F32: "f32", QT.F16: "f16", QT.BF16: "bf16", QT.Q8_0: "q8_0", QT.Q4_0: "q4_0",
              QT.Q5_0: "q5_0", QT.Q4_K: "q4_k", QT.Q5_K: "q5_k", QT.Q6_K: "q6_k"}
MATVEC_NV = (1, 4, 16)  # compiled batch widths of the staged matvec (matvec.cu)
MATVEC_WARPS = 4  # warps per block, as in matvec.cu
MATVEC_ROWS1 = {QT.F32: 2}  # rows per warp of the single-vector matvec (RowsPer in matvec.cu); 4 otherwise
# The matvec kernels (G4C_CUDA_MATVEC):
#   direct (default): Q4_0, Q4_K and Q6_K repacked at upload; one vector on CUDA cores with
#     the weights loaded straight into registers (mvd_*), 2..16 vectors of those three on
#     tensor cores (mvt_*, x as f16 hi + lo: the f32 class), other formats on mvd_*
#   cores: as direct, but every batch on CUDA cores (mvd_*)
#   staged: matvec.cu's kernels, weights as stored, staged through shared memory
MATVEC_PATHS = ("direct", "cores", "staged")
# The prefill's products (more than 16 rows; G4C_CUDA_PREFILL):
#   f16x3 (default): weights dequantized per row and x per row, each prescaled by a power of two
#     and split into f16 hi + lo, then three cuBLAS f16 GEMMs with f32 accumulation (hi hi, lo
#     hi, hi lo): tensor cores, results to 2^-21 of max|w| sum|x| + max|x| sum|w|, inside the
#     f32 class (whose bound grows with the dot length: 3840 * 2^-24 = 2^-12)
#   f32: weights dequantized to f32, one cuBLAS f32 GEMM
PREFILL_PATHS = ("f16x3", "f32")
PACKED = {QT.Q4_0: ("q4_0p", "repack_q4_0"), QT.Q4_K: ("q4_kp", "repack_q4_k"), QT.Q6_K: ("q6_kp", "repack_q6_k")}
DIRECT_NV = (1, 2, 4, 8, 16)  # compiled batch widths of mvd_*
DIRECT_CONFIG = {1: (8, 4)}  # batch width -> (rows per block, warps per block) of the runtime's mvd_* launch; (2, 4) otherwise
MMA_CONFIG = (2, 4)  # (16-row tiles per warp, warps per block) of the runtime's mvt_* launch
# what matvec_direct.cu also compiles for the device sweep (reports/device/matvec_sweep.py):
DIRECT_SWEEP = ((4, 4), (16, 4), (8, 8), (4, 8))  # (rows, warps) of mvd_* for one vector, the packed formats
MMA_SHAPES = ((2, 4, 1), (2, 4, 2), (1, 4, 1), (1, 4, 2), (4, 4, 2), (2, 8, 2))  # (tiles, warps, vector tiles) of mvt_*
ATT_WARPS, ATT_MAX_D = 4, 512  # as in attention.cu
ATT_KEYS_PER_SPLIT, ATT_MAX_SPLIT = 256, 64  # flash-decoding split of the visible keys
ATT_TILE = 8  # rows per block of attention_tile, the prefill's attention (as in attention.cu)
ATTENTION_TILED = os.environ.get("G4C_CUDA_ATTENTION_TILE", "1") != "0"  # 0: the prefill on attention_split too
# a layer's matrices by the input they read: one launch multiplies each group, stacked by rows
GROUPS = {"attn_qkv": ("attn_q", "attn_k", "attn_v"), "attn_output": ("attn_output",),
          "ffn_gate_up": ("ffn_gate", "ffn_up"), "ffn_down": ("ffn_down",)}
NORM_THREADS = 256  # threads of a row-norm block (qkv_prep uses 128: a head has at most 512 values)



def head_dim_refusal(d: int) -> str | None:
    """Why the attention kernel cannot take head dim d (the session's load check and the op
    cases both ask), or None."""
    if d % 32 or d > ATT_MAX_D:
        return f"head dim {d}: the cuda attention kernel takes multiples of 32 up to {ATT_MAX_D}"
    return None

def stacks(model: Model, s: LayerSpec) -> dict[str, list[list[Weight]]]:
    """Each group's tensors of layer s, in runs of one format and width that stack into one
    matrix (a group mixing formats takes more than one launch). A missing tensor raises the
    model's error naming it; V is absent on k_eq_v layers."""
    out = {}
    for group, names in GROUPS.items():
        runs: list[list[Weight]] = []
        for m in names:
            if m == "attn_v" and not s.has_v:
                continue
            w = model.weight(f"blk.{s.index}.{m}.weight")
            if runs and (runs[-1][0].qtype, runs[-1][0].n_cols) == (w.qtype, w.n_cols):
                runs[-1].append(w)
            else:
                runs.append([w])
        out[group] = runs
    return out


def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise DeviceUnavailableError(f"cupy is not installed ({e})") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver absent: CuPy raises its own runtime error types
        raise DeviceUnavailableError(f"no CUDA device: {type(e).__name__}: {e}") from None
    if n < 1:
        raise DeviceUnavailableError("no CUDA device")
    return cupy


class CudaRuntime:
    name = "cuda"
    capabilities = Capabilities(trace=True, backend="CUDA", methods=EVERY_METHOD, ops=EVERY_OP)

    def __init__(self):
        self._kernels = None

    def cupy(self):
        """The array and kernel module the runtime runs on: CuPy on a CUDA device."""
        return _cupy()

    def availability(self) -> Availability:
        try:
            self.cupy()
        except DeviceUnavailableError as e:
            return Availability(False, str(e))
        return Availability(True)

    def settings(self) -> dict:
        """The device, its driver and CUDA runtime, how the kernels were compiled, graphs or not."""
        cp = self.cupy()
        rt = cp.cuda.runtime
        version = lambda v: f"{v // 1000}.{v % 1000 // 10}"  # noqa: E731 - CUDA's 12040 is 12.4
        return {"device": rt.getDeviceProperties(cp.cuda.Device().id)["name"].decode(),
                "driver": f"CUDA driver {version(rt.driverGetVersion())}, runtime {version(rt.runtimeGetVersion())}",
                "compiler": "nvcc" if shutil.which("nvcc") else "nvrtc",
                "graphs": os.environ.get("G4C_CUDA_GRAPHS", "1") != "0"}

    def kernels(self):
        if self._kernels is None:
            self._kernels = Kernels(self.cupy())
        return self._kernels

    def load(self, model: Model, max_context: int, n_seq: int = 1, trace: bool = False) -> "CudaSession":
        return CudaSession(self.kernels(), model, max_context, n_seq, trace)

    def memory_bandwidth(self) -> dict:
        """The roofline's limit: device-to-device copy of 1 GiB, read plus write bytes over
        the time, best of 10 after a warm-up (what HBM moves when a kernel streams)."""
        cp = _cupy()
        n = 1 << 30
        a, b = cp.empty(n, cp.uint8), cp.empty(n, cp.uint8)
        cp.copyto(b, a)
        best = float("inf")
        for _ in range(10):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            cp.copyto(b, a)
            stop.record()
            stop.synchronize()
            best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3)
        name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()
        return {"bytes_per_s": 2 * n / best, "method": "cupy copy of 1 GiB, read + write, best of 10", "device": name}

    @staticmethod
    def memory_plan(model: Model, n_ctx: int, n_seq: int = 1) -> MemoryPlan:
        """Device memory at n_ctx: quantized weights, f32 KV, and the prefill scratch (the
        largest matrix dequantized to f32, the output head included when all logits are
        asked for), activations of a 512-row prefill and the attention partials."""
        c = model.config
        rows = min(512, n_ctx)
        largest = max(4 * sum(w.n_rows for w in run) * run[0].n_cols
                      for s in c.layers for runs in stacks(model, s).values() for run in runs)
        largest = max(largest, 4 * model.n_vocab * c.n_embd)
        F = max(s.n_ff for s in c.layers)
        n_split = min(ATT_MAX_SPLIT, -(-n_ctx // ATT_KEYS_PER_SPLIT))
        scratch = (largest + rows * (6 * c.n_embd + 4 * c.n_head * c.head_dim_full + 3 * F) * 4
                   + rows * c.n_head * n_split * (c.head_dim_full + 2) * 4 + rows * model.n_vocab * 4)
        return MemoryPlan("cuda", n_ctx, n_seq, model.weight_bytes, kv_bytes(c, n_ctx, n_seq), scratch, "device")

    def run_op(self, case, inputs: dict, repeat: int = 0) -> tuple[np.ndarray, list[float]]:
        """An op-level case (g4c.opcases) through the forward's kernels (oplevel.py)."""
        from .oplevel import run_op

        return run_op(self.kernels(), case, inputs, repeat)

class Kernels:
    """The compiled module and thin launchers; one instance per process."""

    def __init__(self, cp):
        self.cp = cp
        arch = cp.cuda.Device().compute_capability
        formats = (KERNEL_DIR / "formats.cuh").read_text().replace("#pragma once", "")
        source = formats + "\n".join((KERNEL_DIR / f).read_text().replace('#include "formats.cuh"', "") for f in KERNEL_FILES)
        # nvcc where it is installed (the compiler CI tests the sources with), else NVRTC
        backend = "nvcc" if shutil.which("nvcc") else "nvrtc"
        self.module = cp.RawModule(code=source, backend=backend, options=("-std=c++17", f"-arch=sm_{arch}"))
        self._fn = {}
        self.path = matvec_path()
        self.prefill = os.environ.get("G4C_CUDA_PREFILL", "f16x3")
        if self.prefill not in PREFILL_PATHS:
            raise G4CError(f"G4C_CUDA_PREFILL={self.prefill!r}: choose one of {', '.join(PREFILL_PATHS)}")

    def fn(self, name: str):
        f = self._fn.get(name)
        if f is None:
            f = self._fn[name] = self.module.get_function(name)
        return f

    def upload(self, raw: np.ndarray, qtype: QT, n_cols: int, path: str | None = None) -> "DeviceMatrix":
        """A matrix's stored rows (host bytes, n_rows x row_bytes) on the device, in the layout
        the matvec path reads: Q4_0, Q4_K and Q6_K (PACKED) repacked on the device (rows padded to 16 bytes)
        unless the path is staged."""
        cp = self.cp
        path = path or self.path
        n_rows, row_bytes = raw.shape
        src = cp.asarray(np.ascontiguousarray(raw))
        if path == "staged" or qtype not in PACKED:
            return DeviceMatrix(src, qtype, TYPE_NAMES[qtype], n_rows, n_cols, row_bytes, path)
        fmt, kernel = PACKED[qtype]
        stride = -(-row_bytes // 16) * 16
        dst = cp.zeros((n_rows, stride), cp.uint8)
        units, threads = n_rows * (n_cols // 32), 256
        self.fn(kernel)(((units + threads - 1) // threads,), (threads,), (
            src, dst, np.int32(n_rows), np.int32(n_cols // 32), np.int64(row_bytes), np.int64(stride)))
        return DeviceMatrix(dst, qtype, fmt, n_rows, n_cols, stride, path)

    def matvec(self, m: "DeviceMatrix", x):
        """y (n, n_rows) = x (n, n_cols) @ W^T for n <= 16, W read once."""
        cp = self.cp
        n = x.shape[0]
        x = cp.ascontiguousarray(x)
        y = cp.empty((n, m.n_rows), cp.float32)
        args = (np.int32(m.n_rows), np.int32(m.n_cols), np.int64(m.row_bytes), np.int32(n))
        if m.path == "staged":
            nv = next(v for v in MATVEC_NV if v >= n)
            threads = 32 * MATVEC_WARPS  # a warp per row, or per ROWS1 rows for one vector
            rows_per_block = MATVEC_WARPS * (MATVEC_ROWS1.get(m.qtype, 4) if nv == 1 else 1)
            blocks = (m.n_rows + rows_per_block - 1) // rows_per_block
            self.fn(f"matvec_{m.fmt}_nv{nv}")((blocks,), (threads,), (m.raw, x, y, *args))
        elif n > 1 and m.path == "direct" and m.qtype in PACKED:
            self.matvec_mma(m, x, y, *MMA_CONFIG)
        else:
            nv = next(v for v in DIRECT_NV if v >= n)
            self.matvec_direct(m, x, y, nv, *DIRECT_CONFIG.get(nv, (2, 4)))
        return y

    def matvec_direct(self, m: "DeviceMatrix", x, y, nv: int, rows: int, warps: int):
        """mvd_*: CUDA cores, weights straight into registers (the launch shape explicit for the sweep)."""
        self.fn(f"mvd_{m.fmt}_nv{nv}_r{rows}_w{warps}")((-(-m.n_rows // rows),), (32 * warps,), (
            m.raw, x, y, np.int32(m.n_rows), np.int32(m.n_cols), np.int64(m.row_bytes), np.int32(x.shape[0])))

    def matvec_mma(self, m: "DeviceMatrix", x, y, tiles: int, warps: int, nt: int | None = None):
        """mvt_*: tensor cores, x split into f16 hi + lo by split_x first; nt tiles of 8
        vectors (by default as few as hold x's)."""
        cp, n = self.cp, x.shape[0]
        nt = nt or (1 if n <= 8 else 2)
        xs, inv = cp.empty(16 * nt * m.n_cols, cp.uint16), cp.empty(8 * nt, cp.float32)
        # unit sums of x for a format with mins (Q4_K), else none
        xsum = cp.empty(8 * nt * (m.n_cols // 32), cp.float32) if m.qtype == QT.Q4_K else np.uintp(0)
        self.fn("split_x")((8 * nt,), (256,), (x, xs, inv, xsum, np.int32(m.n_cols), np.int32(n)))
        self.fn(f"mvt_{m.fmt}_nt{nt}_m{tiles}_w{warps}")((-(-m.n_rows // (16 * tiles)),), (32 * warps,), (
            m.raw, xs, inv, xsum, y, np.int32(m.n_rows), np.int32(m.n_cols), np.int64(m.row_bytes), np.int32(n)))

    def matmul(self, m: "DeviceMatrix", x, scratch=None):
        """y (n, n_rows) = x (n, n_cols) @ W^T for a prefill, on the prefill path; scratch: a
        float32 buffer of at least n_rows * n_cols values to reuse (the dense or split matrix)."""
        cp = self.cp
        need = m.n_rows * m.n_cols
        if scratch is None or scratch.size < need:
            scratch = cp.empty(need, cp.float32)
        if self.prefill == "f32":
            return x @ self.dequant(m, out=scratch[:need].reshape(m.n_rows, m.n_cols)).T
        n, K, R = x.shape[0], m.n_cols, m.n_rows
        ws = scratch[:need].view(cp.uint16)  # rows of K hi then K lo halves: the f32 scratch's bytes
        inv_w, inv_x = cp.empty(R, cp.float32), cp.empty(n, cp.float32)
        self.fn(f"dequant_split_{m.fmt}")((R,), (256,), (m.raw, ws, inv_w, np.int32(K), np.int64(m.row_bytes)))
        xs = cp.empty(2 * n * K, cp.uint16)
        self.fn("split_x")((n,), (256,), (cp.ascontiguousarray(x), xs, inv_x, np.uintp(0), np.int32(K), np.int32(n)))
        y = cp.empty((n, R), cp.float32)
        self.gemm_f16x3(ws, xs, y, n, R, K)
        self.fn("unscale")(((n * R + 255) // 256,), (256,), (y, inv_x, inv_w, np.int32(R), np.int64(n * R)))
        return y

    def gemm_f16x3(self, ws, xs, y, n: int, R: int, K: int):
        """y (n, R) = Xh Wh^T + Xl Wh^T + Xh Wl^T, f16 operands (rows of K hi then K lo
        halves), f32 accumulation and output: three cuBLAS gemmEx calls (column-major: y^T
        = W X^T), on CuPy's handle and current stream."""
        cp = self.cp
        if getattr(cp, "emulated", False):  # the emulator: numpy, f16 values exact in f32, f32 sums
            w, xx = ws.view(np.float16).reshape(R, 2 * K).astype(np.float32), xs.view(np.float16).reshape(n, 2 * K).astype(np.float32)
            y[...] = xx[:, :K] @ w[:, :K].T
            y += xx[:, K:] @ w[:, :K].T
            y += xx[:, :K] @ w[:, K:].T
            return
        try:
            from cupy_backends.cuda.libs import cublas
        except ImportError:  # where an older CuPy kept it
            from cupy.cuda import cublas

        handle = cp.cuda.device.get_cublas_handle()
        cublas.setStream(handle, cp.cuda.get_current_stream().ptr)
        f16, f32 = getattr(cp.cuda.runtime, "CUDA_R_16F", 2), getattr(cp.cuda.runtime, "CUDA_R_32F", 0)
        compute = getattr(cublas, "CUBLAS_COMPUTE_32F", 68)
        one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
        wh, xh = ws.data.ptr, xs.data.ptr
        for a, b, beta in ((wh, xh, zero), (wh, xh + 2 * K, one), (wh + 2 * K, xh, one)):  # lo: K halves on
            cublas.gemmEx(handle, cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N, R, n, K, one.ctypes.data, a, f16, 2 * K,
                          b, f16, 2 * K, beta.ctypes.data, y.data.ptr, f32, R, compute, cublas.CUBLAS_GEMM_DEFAULT)

    def dequant(self, m: "DeviceMatrix", rows=None, out=None):
        """Rows of m (all, or rows[i]) as float32."""
        cp = self.cp
        n_out = m.n_rows if rows is None else len(rows)
        if out is None:
            out = cp.empty((n_out, m.n_cols), cp.float32)
        units = n_out * (m.n_cols // 32)
        threads = 256
        self.fn(f"dequant_{m.fmt}")(
            ((units + threads - 1) // threads,), (threads,),
            (m.raw, rows if rows is not None else np.uintp(0), out, np.int32(n_out), np.int32(m.n_cols), np.int64(m.row_bytes)))
        return out

    def rms_norm(self, x, w, eps: float):
        """The rows of x (n, width) normed, times w."""
        y = self.cp.empty_like(x)
        self.fn("rms_norm")((x.shape[0],), (NORM_THREADS,), (x, w, y, np.int32(x.shape[1]), np.float32(eps)))
        return y

    def residual_norm(self, x, y, w_post, w_next, eps: float, scale: float = 1.0, y_normed=None):
        """x = (x + rms_norm(y) * w_post) * scale in place; returns rms_norm(x) * w_next."""
        h = self.cp.empty_like(x)
        self.fn("residual_norm")((x.shape[0],), (NORM_THREADS,), (
            x, y, w_post, w_next, h, np.uintp(0) if y_normed is None else y_normed, np.int32(x.shape[1]),
            np.float32(eps), np.float32(scale)))
        return h

    def gelu_mul(self, gu):
        """gelu_tanh(gate) * up from the fused gate and up projection (n, 2f)."""
        n, f = gu.shape[0], gu.shape[1] // 2
        out = self.cp.empty((n, f), self.cp.float32)
        self.fn("gelu_mul")(((n * f + 255) // 256,), (256,), (gu, out, np.int32(f), np.int64(n * f)))
        return out

    def softcap(self, x, cap: float):
        n = x.size
        self.fn("softcap")(((n + 255) // 256,), (256,), (x, np.float32(cap), np.int64(n)))
        return x


def _pinned(cp, shape, dtype) -> np.ndarray:
    """A host array in page-locked memory (copies to and from it run asynchronously, at full
    speed), or an ordinary one where the array module has none (the emulator)."""
    alloc = getattr(cp.cuda, "alloc_pinned_memory", None)
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if alloc is None:
        return np.empty(shape, dtype)
    return np.frombuffer(alloc(n), dtype, int(np.prod(shape))).reshape(shape)


class _Staging:
    """A decode step's inputs in one pinned host buffer and one device buffer of the same
    layout (each array 8-byte aligned): a step packs them on the host and crosses in one
    copy, and the device arrays (views of the device buffer) keep their addresses, as a
    captured graph needs. Scalars pass through as they are."""

    def __init__(self, cp, host: dict):
        self.cp, self.slots, off = cp, {}, 0
        for k, v in host.items():
            if isinstance(v, np.ndarray):
                self.slots[k] = (off, v.dtype, v.shape)
                off += -(-v.nbytes // 8) * 8
        self.host = _pinned(cp, (max(off, 8),), np.uint8)
        self.dev = cp.empty(max(off, 8), cp.uint8)
        self.views = {k: self.dev[o : o + int(np.prod(shp)) * dt.itemsize].view(dt).reshape(shp)
                      for k, (o, dt, shp) in self.slots.items()}

    def device(self, host: dict, stream) -> dict:
        """host's arrays copied in (same shapes as at construction), as the device dict the forward reads."""
        for k, (o, dt, shp) in self.slots.items():
            self.host[o : o + int(np.prod(shp)) * dt.itemsize].view(dt).reshape(shp)[...] = host[k]
        if hasattr(self.dev, "set"):
            self.dev.set(self.host, stream=stream)
        else:  # the emulator's arrays are host memory
            self.dev[...] = self.host
        return {k: self.views.get(k, v) for k, v in host.items()}


class DeviceMatrix:
    """A matrix on the device: its rows in the stored format (fmt "q4_0p", "q4_kp" or "q6_kp": repacked,
    rows padded to row_bytes), one tensor or tensors of one format and width stacked by rows,
    and the matvec path it was uploaded for."""

    def __init__(self, raw, qtype: QT, fmt: str, n_rows: int, n_cols: int, row_bytes: int, path: str):
        self.raw, self.qtype, self.fmt, self.path = raw, qtype, fmt, path
        self.n_rows, self.n_cols, self.row_bytes = n_rows, n_cols, row_bytes


def tiled_attention(seqs: np.ndarray, pos: np.ndarray) -> bool:
    """Whether a forward's rows take attention_tile: rows of one sequence at consecutive
    positions, more than a decode batch (a prefill), unless G4C_CUDA_ATTENTION_TILE=0."""
    seqs, pos = np.asarray(seqs), np.asarray(pos)
    return bool(ATTENTION_TILED and len(pos) > MATVEC_NV[-1] and (seqs == seqs[0]).all() and (np.diff(pos) == 1).all())


def matvec_path() -> str:
    path = os.environ.get("G4C_CUDA_MATVEC", "direct")
    if path not in MATVEC_PATHS:
        raise G4CError(f"G4C_CUDA_MATVEC={path!r}: choose one of {', '.join(MATVEC_PATHS)}")
    return path


def upload(k: Kernels, ws: Sequence[Weight]) -> DeviceMatrix:
    """Tensors of one format and width, stacked by rows, on the device."""
    raw = ws[0].raw if len(ws) == 1 else np.concatenate([np.asarray(w.raw) for w in ws])
    return k.upload(raw, ws[0].qtype, ws[0].n_cols)


class CudaSession(Session):
    def __init__(self, k: Kernels, model: Model, max_context: int, n_seq: int = 1, trace: bool = False):
        super().__init__(model, max_context, n_seq, trace)
        c = self.cfg
        for w in model.weights():  # refuse an unsupported format or row length at load, naming the tensor
            if w.qtype not in TYPE_NAMES:
                raise UnsupportedQuantError(f"{model.path}: tensor {w.name}: GGML type {w.qtype.name} is not supported by cuda")
            if len(w.shape) > 1 and w.n_cols % 32:
                raise UnsupportedModelError(f"{model.path}: tensor {w.name}: rows of {w.n_cols} values: the cuda matrix "
                                            "kernels take rows of whole units of 32 values")
        for s in c.layers:
            why = head_dim_refusal(s.head_dim)
            if why:
                raise UnsupportedModelError(f"{model.path}: layer {s.index} {why}")
        self.k, self.cp = k, k.cp
        cp = self.cp
        free = cp.cuda.runtime.memGetInfo()[0]
        self.plan = check_fits(lambda n: CudaRuntime.memory_plan(model, n, n_seq), max_context, c.n_ctx_train,
                               free, f"{model.path} on cuda")
        # (layer, group) -> its matrices, usually one
        self.mats = {(s.index, g): [upload(k, run) for run in runs]
                     for s in c.layers for g, runs in stacks(model, s).items()}
        self.embd = upload(k, [model.weight("token_embd.weight")])
        self.head = self.embd if c.tied_output else upload(k, [model.weight("output.weight")])
        self.norm = {key: cp.asarray(v) for key, v in model.norm_vectors().items()}
        self.out_scale = model.output_scales()
        self.output_norm = cp.asarray(model.weight("output_norm.weight").vector())
        self.inv_freq = {s.index: cp.asarray(inv_freq_f32(s, model.rope_freqs)) for s in c.layers}
        self.ring = self.kv.ring
        self._scratch = None
        self._graph = None
        # decode steps replay a CUDA graph unless G4C_CUDA_GRAPHS=0
        self.graphs = os.environ.get("G4C_CUDA_GRAPHS", "1") != "0"
        self.graph_error: str | None = None
        self.kv_cache = {}
        for s in c.layers:
            if s.sliding:
                shape = (n_seq, self.ring, s.n_head_kv, s.head_dim)
                self.kv_cache[s.index] = (cp.zeros(shape, cp.float32), cp.zeros(shape, cp.float32))
        self._alloc_full()
        self.captures = 0  # decode graphs captured: one per session, unless graphs fail
        # the uploads' repacking and the caches' zeroing ran on the default stream; a first
        # decode runs on the graph's own non-blocking stream, which would not wait for them
        sync = getattr(cp.cuda.Device(), "synchronize", None)  # the emulator's work is done when issued
        if sync:
            sync()

    def _decode(self, toks: np.ndarray, pos: np.ndarray) -> np.ndarray:
        seqs = np.arange(self.n_seq)
        if self.graphs and self.trace is None:
            return self._decode_graph(toks, seqs, pos)
        return self._forward(toks, seqs, pos, True)

    # -- internals -----------------------------------------------------------------------
    def _alloc_full(self):
        """Full-layer caches of max_context slots per sequence (KVPlan: slot = position - base),
        allocated once at load as the memory plan reserves them: a captured decode graph's
        pointers then stay valid for the session's life (no re-capture as the context grows)."""
        cp = self.cp
        for s in self.cfg.layers:
            if not s.sliding:
                shape = (self.n_seq, self.max_context, s.n_head_kv, s.head_dim)
                self.kv_cache[s.index] = (cp.zeros(shape, cp.float32), cp.zeros(shape, cp.float32))

    def _decode_graph(self, toks, seqs, pos) -> np.ndarray:
        """One decode step replayed from a CUDA graph: no Python between its ~1300 kernels.

        The first step runs eagerly and then captures the same forward on a private memory
        pool that lives as long as the graph, with every input in a persistent device buffer
        and scratch sized to the cache capacity (max_context), so that kernel arguments do not
        change between steps and the graph is captured once per session. Each step's inputs
        cross from one pinned host buffer in one copy."""
        cp = self.cp
        host = self._host_inputs(toks, seqs, pos)
        host["max_keys_sliding"], host["max_keys_full"] = self.ring, self.max_context
        g = self._graph
        if g is None:
            pool, stream = cp.cuda.MemoryPool(), cp.cuda.Stream(non_blocking=True)
            with cp.cuda.using_allocator(pool.malloc), stream:
                staging = _Staging(cp, host)
                dev = staging.device(host, stream)
                result = cp.asnumpy(self._run(dev, True))  # this step's logits, and the warm-up
                try:
                    stream.begin_capture()
                    out = self._run(dev, True)
                    graph = stream.end_capture()
                except Exception as e:  # a CuPy op that cannot be captured: stay eager, say why once
                    if stream.is_capturing():
                        stream.end_capture()
                    self.graphs = False
                    self.graph_error = f"{type(e).__name__}: {e}"
                    return result
            self._graph = {"graph": graph, "staging": staging, "out": out, "pool": pool, "stream": stream,
                           "logits": _pinned(cp, out.shape, np.float32)}
            self.captures += 1
            return result
        stream = g["stream"]
        with stream:
            g["staging"].device(host, stream)
            g["graph"].launch(stream)
            g["out"].get(stream=stream, out=g["logits"])
            stream.synchronize()
            return g["logits"].copy()

    def _mm(self, x, layer: int, group: str):
        ys = [self._mm_w(x, w) for w in self.mats[layer, group]]
        return ys[0] if len(ys) == 1 else self.cp.concatenate(ys, axis=1)

    def _mm_w(self, x, w: DeviceMatrix):
        if x.shape[0] <= MATVEC_NV[-1]:
            return self.k.matvec(w, x)
        need = w.n_rows * w.n_cols
        if self._scratch is None or self._scratch.size < need:
            self._scratch = self.cp.empty(need, self.cp.float32)
        return self.k.matmul(w, x, self._scratch)

    def _host_inputs(self, toks, seqs, pos) -> dict:
        """Everything a forward reads, as host arrays (uploaded eagerly, or copied into a
        captured graph's persistent buffers)."""
        p0 = self.next_pos.copy()
        for q in np.unique(seqs):
            p0[q] = pos[seqs == q].min()
        span = self.kv.full_slots(seqs, pos, self.base)
        return {
            "ids": toks.astype(np.int64), "pos": pos.astype(np.int32), "seq": seqs.astype(np.int32),
            "base": self.base.astype(np.int32), "p0": p0.astype(np.int32),
            "ring_slot": self.kv.ring_slots(seqs, pos), "full_slot": span,
            "max_keys_sliding": max(1, int(min(self.ring, span.max() + 1))), "max_keys_full": max(1, int(span.max() + 1)),
            "tiled": tiled_attention(seqs, pos),
        }

    def _forward(self, toks: np.ndarray, seqs: np.ndarray, pos: np.ndarray, all_logits: bool) -> np.ndarray:
        host = self._host_inputs(toks, seqs, pos)
        dev = {k: (self.cp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in host.items()}
        return self.cp.asnumpy(self._run(dev, all_logits))

    def _run(self, dev: dict, all_logits: bool):
        """The forward on the device from uploaded inputs; no host synchronization inside,
        so a decode step can be captured as a CUDA graph."""
        c = self.cfg
        e = self.embd
        x = self.k.dequant(e, rows=dev["ids"]) * np.float32(c.embd_scale)
        if self.trace is not None:
            self.trace.clear()
        # each layer's input norm, then the output norm: a layer ends by computing the next one
        norms = [self.norm[s.index, "attn_norm"] for s in c.layers] + [self.output_norm]
        h = self.k.rms_norm(x, norms[0], c.eps)
        for j, s in enumerate(c.layers):
            h = self._layer(s, x, h, norms[j + 1], dev)  # x updated in place
        if not all_logits:
            h = h[-1:]
        logits = self._mm_w(h, self.head)
        if c.final_softcap is not None:
            self.k.softcap(logits, c.final_softcap)
        return logits

    def _layer(self, s: LayerSpec, x, h, next_norm, dev: dict):
        """Layer s on the residual stream x (updated in place) from h = attn_norm(x); returns
        next_norm(x) for what follows (the next layer's attn_norm, or the output norm)."""
        cp, c, k, i = self.cp, self.cfg, self.k, s.index
        n, H, Hkv, d = x.shape[0], c.n_head, s.n_head_kv, s.head_dim
        norm = lambda name: self.norm[i, name]  # noqa: E731
        qkv = self._mm(h, i, "attn_qkv")
        q, kk, v = cp.empty((n, H, d), cp.float32), cp.empty((n, Hkv, d), cp.float32), cp.empty((n, Hkv, d), cp.float32)
        col_k = H * d
        col_v = col_k + Hkv * d if s.has_v else col_k  # k_eq_v: V is the raw K projection
        k.fn("qkv_prep")((n, H + 2 * Hkv), (128,), (
            qkv, np.int64(qkv.shape[1]), np.int32(col_k), np.int32(col_v), norm("attn_q_norm"), norm("attn_k_norm"),
            q, kk, v, dev["pos"], self.inv_freq[i], np.int32(H), np.int32(Hkv), np.int32(d), np.int32(s.n_rot),
            np.float32(c.eps), np.int32(c.v_norm)))
        k_cache, v_cache = self.kv_cache[i]
        n_slots = k_cache.shape[1]
        max_keys = dev["max_keys_sliding" if s.sliding else "max_keys_full"]
        a = cp.empty((n, H, d), cp.float32)
        n_split = max(1, min(ATT_MAX_SPLIT, -(-max_keys // ATT_KEYS_PER_SPLIT)))
        part = cp.empty((n, H, n_split, d + 2), cp.float32)
        if dev.get("tiled"):  # a prefill: ATT_TILE rows share each key read
            k.fn("attention_tile")((-(-n // ATT_TILE), H, n_split), (32 * ATT_TILE,), (
                q, kk, v, k_cache, v_cache, part, dev["pos"], dev["seq"], dev["base"], dev["p0"], np.int32(n), np.int32(H),
                np.int32(Hkv), np.int32(d), np.int32(n_slots), np.int32(s.window), np.float32(s.attn_scale),
                np.int32(s.sliding), np.int32(n_split)))
        else:
            k.fn("attention_split")((n, H, n_split), (32 * ATT_WARPS,), (
                q, kk, v, k_cache, v_cache, part, dev["pos"], dev["seq"], dev["base"], dev["p0"], np.int32(H), np.int32(Hkv),
                np.int32(d), np.int32(n_slots), np.int32(s.window), np.float32(s.attn_scale), np.int32(s.sliding),
                np.int32(n_split)))
        # the merge then stores the new keys: after every split has read the cache
        k.fn("attention_combine")((n, H), (128,), (
            part, a, np.int32(H), np.int32(d), np.int32(n_split), kk, v, k_cache, v_cache,
            dev["ring_slot" if s.sliding else "full_slot"], dev["seq"], np.int32(Hkv), np.int32(n_slots)))
        traced = self.trace is not None
        attn_out = cp.empty_like(x) if traced else None
        h = k.residual_norm(x, self._mm(a.reshape(n, H * d), i, "attn_output"), norm("post_attention_norm"),
                            norm("ffn_norm"), c.eps, y_normed=attn_out)
        g = k.gelu_mul(self._mm(h, i, "ffn_gate_up"))
        ffn_out = cp.empty_like(x) if traced else None
        scale_out = self.out_scale[i] if s.has_output_scale else 1.0
        h = k.residual_norm(x, self._mm(g, i, "ffn_down"), norm("post_ffw_norm"), next_norm, c.eps, scale_out,
                            y_normed=ffn_out)
        if traced:
            for op, val in (("attn_out", attn_out), ("ffn_out", ffn_out), ("layer_out", x)):
                self.trace[(i, op)] = cp.asnumpy(val)
        return h
