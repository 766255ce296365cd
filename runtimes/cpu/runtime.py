"""CPU runtime: numpy float32, KV cache, batched prefill and decode, every weight type.

Weights stay memory-mapped and quantized. Up to MATVEC_ROWS activation rows (decode, short
prompts) are multiplied by the fused dequantize-and-dot kernels of kernels.py, which read the
mapped file once per product. Longer prompts go to BLAS: a model whose matrices fit the
dequantization budget (G4C_CPU_DEQUANT_BUDGET_MB, default 2048) is dequantized once at load;
a larger one (the real 12B) chunk by chunk into one reused buffer of CHUNK_BYTES per product,
so 7 GB of Q4_0 runs in the file's pages plus a few hundred MiB.
"""

from __future__ import annotations

import os

import numpy as np

from g4c.config import LayerSpec
from g4c.model import Model, Weight
from g4c.plan import MemoryPlan, available_host_memory, check_fits, kv_bytes
from g4c.opcases import EVERY_OP
from g4c.runtime import EVERY_METHOD, Availability, Capabilities
from g4c.session import Session

from . import ops
from .kernels import Kernels

F32 = np.float32
CHUNK_BYTES = 16 << 20  # the chunk BLAS reads: 16 MiB took 68 ms where 64 MiB took 88 (12B ffn_gate, 64 rows)
# products of at most this many rows use the fused kernels: above it, dequantizing chunks for
# BLAS costs less (benchmarks/test_kernels.py, 12B ffn_gate: fused 24, 46, 54, 173 ms at 8, 16,
# 32, 64 rows; BLAS 48, 58, 66, 99)
MATVEC_ROWS = 32
UBATCH = 128  # prefill rows per forward: bounds the attention scores to UBATCH x heads x keys


def _budget() -> int:
    return int(os.environ.get("G4C_CPU_DEQUANT_BUDGET_MB", "2048")) << 20


def _dense_bytes(model: Model) -> int:
    return sum(4 * w.n_rows * w.n_cols for w in model.layer_matrices())


class CpuRuntime:
    name = "cpu"
    capabilities = Capabilities(trace=True, backend="CPU", methods=EVERY_METHOD, ops=EVERY_OP)

    def availability(self) -> Availability:
        return Availability(True)

    @staticmethod
    def settings() -> dict:
        """The device and what computes on it: numpy and the BLAS it was built with."""
        from g4c.provenance import cpu_name

        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        return {"device": cpu_name(), "driver": f"numpy {np.__version__}, {blas.get('name', '?')} {blas.get('version', '')}".strip(),
                "threads": os.cpu_count()}

    def load(self, model: Model, max_context: int, n_seq: int = 1, trace: bool = False,
             reserve: bool = False) -> "CpuSession":
        return CpuSession(model, max_context, n_seq, trace, reserve)

    @staticmethod
    def memory_bandwidth() -> dict:
        """The roofline's limit: host memory read bandwidth, measured (g4c.bench)."""
        from g4c.bench import host_read_bandwidth

        return host_read_bandwidth()

    @staticmethod
    def memory_plan(model: Model, n_ctx: int, n_seq: int = 1) -> MemoryPlan:
        """Host memory at n_ctx: the memory-mapped file, the float32 copy of small models'
        matrices, f32 KV, and per-forward scratch (dequantized chunks, one micro-batch of
        activations, attention scores, logits)."""
        c = model.config
        dense = _dense_bytes(model)
        weights = model.weight_bytes + (dense if dense <= _budget() else 0)
        F = max(s.n_ff for s in c.layers)
        qd = c.n_head * c.head_dim_full
        rows = min(UBATCH, n_ctx)
        keys = min(n_ctx, c.window + rows) if all(s.sliding for s in c.layers) else n_ctx
        scratch = (
            CHUNK_BYTES
            + rows * (6 * c.n_embd + 4 * qd + 3 * F) * 4
            + 3 * rows * c.n_head * keys * 4  # scores, their exponentials, the masked copy
            + rows * model.n_vocab * 4
        )
        return MemoryPlan("cpu", n_ctx, n_seq, weights, kv_bytes(c, n_ctx, n_seq), scratch, "host")

    @staticmethod
    def run_op(case, inputs: dict, repeat: int = 0) -> tuple[np.ndarray, list[float]]:
        """An op-level case (g4c.opcases) through this runtime's ops (oplevel.py)."""
        from .oplevel import run_op

        return run_op(case, inputs, repeat)


class _Matrix:
    """y = x @ W^T for a GGUF weight: the fused kernels for a few rows; for more, BLAS on the
    matrix dequantized once at load (keep), or chunk by chunk into the session's buffer."""

    def __init__(self, w: Weight, keep: bool, kernels: Kernels, scratch: np.ndarray):
        self.w, self.kernels, self.scratch = w, kernels, scratch
        self.dense = self.rows(0, w.n_rows) if keep else None
        self.chunk = max(1, CHUNK_BYTES // (4 * w.n_cols))

    def rows(self, a: int, b: int, out: np.ndarray | None = None) -> np.ndarray:
        if ops.FUSED:
            return self.kernels.dequantize(self.w.raw[a:b], self.w.qtype, self.w.n_cols, out)
        return ops.dequantize(self.w.raw[a:b], self.w.qtype, self.w.n_cols)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if ops.FUSED and len(x) <= MATVEC_ROWS:
            return self.fused(x)
        return self.blas(x)

    def fused(self, x: np.ndarray) -> np.ndarray:
        return self.kernels.matvec(self.w.raw, self.w.qtype, x)

    def blas(self, x: np.ndarray) -> np.ndarray:
        if self.dense is not None:
            return ops.matmul(x, self.dense)
        out = np.empty((x.shape[0], self.w.n_rows), F32)
        buf = self.scratch[: self.chunk * self.w.n_cols].reshape(self.chunk, self.w.n_cols)
        for a in range(0, self.w.n_rows, self.chunk):
            b = min(a + self.chunk, self.w.n_rows)
            out[:, a:b] = ops.matmul(x, self.rows(a, b, buf))
        return out


_KERNELS: list[Kernels] = []


def _kernels() -> Kernels:
    """One thread pool for every session: the kernels split each product over all cores."""
    if not _KERNELS:
        _KERNELS.append(Kernels())
    return _KERNELS[0]


class _LayerCache:
    """One layer's K and V for every sequence, (n_seq, slots, KV heads, head dim), slots as
    the session's KV plan assigns them."""

    def __init__(self, n_seq: int, cap: int, n_kv: int, d: int):
        self.k = np.zeros((n_seq, cap, n_kv, d), F32)
        self.v = np.zeros((n_seq, cap, n_kv, d), F32)

    @property
    def cap(self) -> int:
        return self.k.shape[1]

    def grow(self, cap: int) -> None:
        for name in ("k", "v"):
            old = getattr(self, name)
            new = np.zeros((old.shape[0], cap) + old.shape[2:], F32)
            new[:, : old.shape[1]] = old
            setattr(self, name, new)


class CpuSession(Session):
    ubatch = UBATCH

    def __init__(self, model: Model, max_context: int, n_seq: int = 1, trace: bool = False, reserve: bool = False):
        super().__init__(model, max_context, n_seq, trace)
        c = self.cfg
        self.plan = check_fits(lambda n: CpuRuntime.memory_plan(model, n, n_seq), max_context, c.n_ctx_train,
                               available_host_memory(), f"{model.path} on cpu")
        budget = _budget()
        keep = _dense_bytes(model) <= budget
        # one chunk buffer for every product (np.empty: its pages are taken only if written)
        kernels, scratch = _kernels(), np.empty(CHUNK_BYTES // 4, F32)
        self.mat = {w.name: _Matrix(w, keep, kernels, scratch) for w in model.layer_matrices()}
        self.norm = model.norm_vectors()
        self.out_scale = {i: F32(v) for i, v in model.output_scales().items()}
        self.output_norm = model.weight("output_norm.weight").vector()
        self.embd = model.weight("token_embd.weight")
        out_w = model.weight(ops.output_tensor(c))
        self.head = _Matrix(out_w, keep and 4 * out_w.n_rows * out_w.n_cols <= budget, kernels, scratch)
        self.rope_freqs = model.rope_freqs
        # full layers start small and grow with the positions held (reserve: allocated whole)
        full_cap = max_context if reserve else min(16, max_context)
        self.caches = [_LayerCache(n_seq, self.kv.ring if s.sliding else full_cap, s.n_head_kv, s.head_dim)
                       for s in c.layers]

    def memory_report(self) -> dict:
        """Bytes actually held now: the mapped file, dequantized matrices, KV arrays."""
        kv = sum(c.k.nbytes + c.v.nbytes for c in self.caches)
        dense = sum(m.dense.nbytes for m in list(self.mat.values()) + [self.head] if m.dense is not None)
        return {"mapped_weights": self.model.weight_bytes, "dense_weights": dense, "kv": kv}

    # -- forward -------------------------------------------------------------------------
    def _matrix(self, name: str) -> _Matrix:
        m = self.mat.get(name)
        if m is None:
            self.model.weight(name)  # raises the error naming the missing tensor
        return m

    def _forward(self, toks: np.ndarray, seqs: np.ndarray, pos: np.ndarray, all_logits: bool) -> np.ndarray:
        c = self.cfg
        need = self.kv.full_needed(seqs, pos, self.base)
        for s, cache in zip(c.layers, self.caches):
            if not s.sliding and cache.cap < need:
                cache.grow(self.kv.grown(cache.cap, need))
        x = ops.dequantize(self.embd.raw[toks], self.embd.qtype, self.embd.n_cols) * F32(ops.embedding_scale(c))
        if self.trace is not None:
            self.trace.clear()
        for spec in c.layers:
            x = self._layer(spec, x, seqs, pos)
        if not all_logits:
            x = x[-1:]
        h = ops.final_norm(x, self.output_norm, c.eps)
        return ops.softcap(self.head(h), c.final_softcap)

    def _layer(self, s: LayerSpec, x: np.ndarray, seqs: np.ndarray, pos: np.ndarray) -> np.ndarray:
        c, i, n = self.cfg, s.index, len(pos)
        H, Hkv, d = c.n_head, s.n_head_kv, s.head_dim
        w = lambda name: self._matrix(f"blk.{i}.{ops.layer_tensor(name)}.weight")  # noqa: E731
        norm = lambda name: self.norm[i, ops.layer_tensor(name)]  # noqa: E731
        h = ops.rms_norm(x, norm("attn_norm"), c.eps)
        q = w("attn_q")(h).reshape(n, H, d)
        k_raw = w("attn_k")(h).reshape(n, Hkv, d)
        v_name = ops.value_tensor(s)
        v_raw = w(v_name)(h).reshape(n, Hkv, d) if v_name else None
        ang = ops.rope_angles(s, pos, self.rope_freqs)
        q = ops.norm_rope(q, norm("attn_q_norm"), c.eps, ang, s.n_rot)
        k = ops.norm_rope(k_raw, norm("attn_k_norm"), c.eps, ang, s.n_rot)
        v = ops.value(v_raw, k_raw, k)
        if c.v_norm:
            v = ops.value_norm(v, c.eps)
        a = np.empty((n, H, d), F32)
        for seq, rows in ops.sequence_rows(seqs):
            a[rows] = self._attend(s, seq, q[rows], k[rows], v[rows], pos[rows])
        attn_out = ops.post_norm(w("attn_output")(a.reshape(n, H * d)), norm("post_attention_norm"), c.eps)
        x = x + attn_out
        h = ops.rms_norm(x, norm("ffn_norm"), c.eps)
        ffn = w("ffn_down")(ops.gelu_tanh(w("ffn_gate")(h)) * w("ffn_up")(h))
        ffn_out = ops.post_norm(ffn, norm("post_ffw_norm"), c.eps)
        x = ops.layer_output(x, ffn_out, self.out_scale.get(i))
        if self.trace is not None:
            self.trace[(i, "attn_out")], self.trace[(i, "ffn_out")], self.trace[(i, "layer_out")] = attn_out, ffn_out, x
        return x

    def _attend(self, s: LayerSpec, seq: int, q, k_new, v_new, pos) -> np.ndarray:
        """Attention of rows of one sequence over what its cache holds plus the new rows, then
        the cache store. The new keys are attended from the batch, so a batch longer than W
        never loses keys that its own earlier rows still need."""
        cache = self.caches[s.index]
        p_past, slots = ops.kv_held(self.kv, s, int(self.base[seq]), int(pos[0]))
        keys = np.concatenate([cache.k[seq, slots], k_new])
        vals = np.concatenate([cache.v[seq, slots], v_new])
        kpos = np.concatenate([p_past, pos])
        m = len(pos)
        a = ops.attend(q, keys, vals, pos, kpos, s)
        new = ops.kv_slots(self.kv, s, np.full(m, seq), pos, self.base)
        kept = new >= 0
        cache.k[seq, new[kept]], cache.v[seq, new[kept]] = ops.to_cache(k_new[kept]), ops.to_cache(v_new[kept])
        return a

