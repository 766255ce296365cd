"""CPU runtime: numpy float32, KV cache, batched prefill and decode, every weight type.

Weights stay memory-mapped and quantized. A model whose matrices fit the dequantization
budget (G4C_CPU_DEQUANT_BUDGET_MB, default 2048) is dequantized once at load; a larger one
(the real 12B) is dequantized on the fly in row chunks of at most CHUNK_BYTES, so at most
one matrix's chunks are live at a time and 7 GB of Q4_0 runs in a few GiB of RAM.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from g4c import quants
from g4c.config import LayerSpec
from g4c.model import Model, Weight
from g4c.plan import MemoryPlan, available_host_memory, check_fits, kv_bytes
from g4c.runtime import Availability, check_load, check_prefill, check_seq, check_tokens, decode_step, prefill_rows

from . import ops

F32 = np.float32
CHUNK_BYTES = 64 << 20
UBATCH = 128  # prefill rows per forward: bounds the attention scores to UBATCH x heads x keys
MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORMS = ("attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm")


def _budget() -> int:
    return int(os.environ.get("G4C_CPU_DEQUANT_BUDGET_MB", "2048")) << 20


def _matrix_names(model: Model) -> list[str]:
    return [f"blk.{s.index}.{m}.weight" for s in model.config.layers for m in MATRICES
            if model.has(f"blk.{s.index}.{m}.weight")]


def _dense_bytes(model: Model) -> int:
    return sum(4 * model.weight(n).n_rows * model.weight(n).n_cols for n in _matrix_names(model))


class CpuRuntime:
    name = "cpu"
    backend = "CPU"  # llama-bench's backend column

    def availability(self) -> Availability:
        return Availability(True)

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
            (os.cpu_count() or 1) * CHUNK_BYTES
            + rows * (6 * c.n_embd + 4 * qd + 3 * F) * 4
            + 3 * rows * c.n_head * keys * 4  # scores, their exponentials, the masked copy
            + rows * model.n_vocab * 4
        )
        return MemoryPlan("cpu", n_ctx, n_seq, weights, kv_bytes(c, n_ctx, n_seq), scratch, "host")

    # op-level entry points, for the conformance suite's weight-type cases
    @staticmethod
    def dequantize(raw: np.ndarray, qtype, n_cols: int) -> np.ndarray:
        return quants.dequantize(raw, qtype, n_cols)

    @staticmethod
    def matvec(raw: np.ndarray, qtype, n_cols: int, x: np.ndarray) -> np.ndarray:
        return x.astype(F32) @ quants.dequantize(raw, qtype, n_cols).T


class _Matrix:
    """y = x @ W^T for a GGUF weight, dequantized once or chunk by chunk."""

    def __init__(self, w: Weight, keep: bool, pool: ThreadPoolExecutor):
        self.w, self.pool = w, pool
        self.dense = w.dequantize() if keep else None
        self.chunk = max(1, CHUNK_BYTES // (4 * w.n_cols))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.dense is not None:
            return x @ self.dense.T
        out = np.empty((x.shape[0], self.w.n_rows), F32)

        def part(a: int) -> None:
            b = min(a + self.chunk, self.w.n_rows)
            out[:, a:b] = x @ self.w.rows(a, b).T

        list(self.pool.map(part, range(0, self.w.n_rows, self.chunk)))
        return out


class _Ring:
    """Sliding-layer cache: W slots, slot = position mod W."""

    def __init__(self, size: int, n_kv: int, d: int):
        self.k = np.zeros((size, n_kv, d), F32)
        self.v = np.zeros((size, n_kv, d), F32)
        self.pos = np.full(size, -1, np.int64)

    def past(self, before: int):
        idx = np.flatnonzero((self.pos >= 0) & (self.pos < before))
        idx = idx[np.argsort(self.pos[idx])]
        return self.k[idx], self.v[idx], self.pos[idx]

    def truncate(self, start: int) -> None:
        self.pos[self.pos >= start] = -1

    def write(self, k, v, pos) -> None:
        n = len(self.pos)
        k, v, pos = k[-n:], v[-n:], pos[-n:]  # only the last W positions survive a long batch
        slots = pos % n
        self.k[slots], self.v[slots], self.pos[slots] = k, v, pos


class _Growing:
    """Full-layer cache: positions appended in order, storage grown by doubling up to the
    session's max_context (or allocated whole at once with reserve)."""

    def __init__(self, n_kv: int, d: int, limit: int, reserve: bool = False):
        cap = limit if reserve else min(16, limit)
        self.k = np.zeros((cap, n_kv, d), F32)
        self.v = np.zeros((cap, n_kv, d), F32)
        self.pos = np.zeros(cap, np.int64)
        self.n, self.limit = 0, limit

    def past(self, before: int):
        m = int(np.searchsorted(self.pos[: self.n], before))
        return self.k[:m], self.v[:m], self.pos[:m]

    def truncate(self, start: int) -> None:
        self.n = int(np.searchsorted(self.pos[: self.n], start))

    def write(self, k, v, pos) -> None:
        need = self.n + len(pos)
        if need > len(self.pos):
            cap = min(max(need, 2 * len(self.pos)), max(need, self.limit))
            for name in ("k", "v", "pos"):
                old = getattr(self, name)
                new = np.zeros((cap,) + old.shape[1:], old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
        self.k[self.n : need], self.v[self.n : need], self.pos[self.n : need] = k, v, pos
        self.n = need


class CpuSession:
    def __init__(self, model: Model, max_context: int, n_seq: int = 1, trace: bool = False, reserve: bool = False):
        c = model.config
        check_load(model, max_context, n_seq)
        self.plan = check_fits(lambda n: CpuRuntime.memory_plan(model, n, n_seq), max_context, c.n_ctx_train,
                               available_host_memory(), f"{model.path} on cpu")
        self.reserve = reserve
        self.model, self.cfg = model, c
        self.max_context, self.n_seq = max_context, n_seq
        self.n_vocab = model.n_vocab
        self.trace: dict | None = {} if trace else None
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        budget = _budget()
        names = _matrix_names(model)
        keep = _dense_bytes(model) <= budget
        self.mat = {n: _Matrix(model.weight(n), keep, self._pool) for n in names}
        self.norm = {
            f"blk.{s.index}.{n}.weight": model.layer_weight(s.index, n).vector() for s in c.layers for n in NORMS
        }
        self.out_scale = {
            s.index: F32(model.layer_weight(s.index, "layer_output_scale").vector()[0]) for s in c.layers if s.has_output_scale
        }
        self.output_norm = model.weight("output_norm.weight").vector()
        self.embd = model.weight("token_embd.weight")
        out_w = model.output_weight
        self.head = _Matrix(out_w, keep and 4 * out_w.n_rows * out_w.n_cols <= budget, self._pool)
        self.rope_freqs = model.rope_freqs
        self._last = np.zeros((n_seq, self.n_vocab), F32)
        self.reset()

    # -- public interface ----------------------------------------------------------------
    @property
    def logits(self) -> np.ndarray:
        return self._last[0]

    def memory_report(self) -> dict:
        """Bytes actually held now: the mapped file, dequantized matrices, KV arrays."""
        kv = sum(c.k.nbytes + c.v.nbytes for caches in self.caches for c in caches)
        index = sum(c.pos.nbytes for caches in self.caches for c in caches)
        dense = sum(m.dense.nbytes for m in list(self.mat.values()) + [self.head] if m.dense is not None)
        return {"mapped_weights": self.model.weight_bytes, "dense_weights": dense, "kv": kv, "kv_position_index": index}

    def reset(self, seq: int | None = None) -> None:
        seqs = range(self.n_seq) if seq is None else [check_seq(seq, self.n_seq)]
        if seq is None:
            self.caches = [None] * self.n_seq
            self.next_pos = [0] * self.n_seq
        for s in seqs:
            self.caches[s] = [
                _Ring(min(self.cfg.window, self.max_context), l.n_head_kv, l.head_dim) if l.sliding
                else _Growing(l.n_head_kv, l.head_dim, self.max_context, self.reserve)
                for l in self.cfg.layers
            ]
            self.next_pos[s] = 0

    def prefill(self, tokens: Sequence[int], start_pos: int = 0, seq: int = 0, all_logits: bool = True) -> np.ndarray:
        toks = check_tokens(tokens, self.n_vocab)
        check_seq(seq, self.n_seq)
        check_prefill(start_pos, len(toks), self.max_context)
        if start_pos > self.next_pos[seq]:
            self.reset(seq)  # a gap: the sequence starts afresh at start_pos
        for cache in self.caches[seq]:
            cache.truncate(start_pos)
        return prefill_rows(self, toks, seq, start_pos, all_logits, UBATCH)

    def decode(self, tokens: Sequence[int]) -> np.ndarray:
        return decode_step(self, tokens)

    # -- forward -------------------------------------------------------------------------
    def _matrix(self, name: str) -> _Matrix:
        m = self.mat.get(name)
        if m is None:
            self.model.weight(name)  # raises the error naming the missing tensor
        return m

    def _forward(self, toks: np.ndarray, seqs: np.ndarray, pos: np.ndarray, all_logits: bool) -> np.ndarray:
        c = self.cfg
        x = self.embd.take(toks) * F32(c.embd_scale)
        if self.trace is not None:
            self.trace.clear()
        for spec in c.layers:
            x = self._layer(spec, x, seqs, pos)
        if not all_logits:
            x = x[-1:]
        h = ops.rms_norm(x, self.output_norm, c.eps)
        return ops.softcap(self.head(h), c.final_softcap)

    def _layer(self, s: LayerSpec, x: np.ndarray, seqs: np.ndarray, pos: np.ndarray) -> np.ndarray:
        c, i, n = self.cfg, s.index, len(pos)
        H, Hkv, d = c.n_head, s.n_head_kv, s.head_dim
        w = lambda name: self._matrix(f"blk.{i}.{name}.weight")  # noqa: E731
        norm = lambda name: self.norm[f"blk.{i}.{name}.weight"]  # noqa: E731
        h = ops.rms_norm(x, norm("attn_norm"), c.eps)
        q = w("attn_q")(h).reshape(n, H, d)
        k_raw = w("attn_k")(h).reshape(n, Hkv, d)
        v_name = ops.value_tensor(s)
        v_raw = w(v_name)(h).reshape(n, Hkv, d) if v_name else None
        q = ops.rms_norm(q, norm("attn_q_norm"), c.eps)
        k = ops.rms_norm(k_raw, norm("attn_k_norm"), c.eps)
        ang = ops.rope_angles(s, pos, self.rope_freqs)
        q, k = ops.rope(q, ang, s.n_rot), ops.rope(k, ang, s.n_rot)
        v = ops.value(v_raw, k_raw, k)
        if c.v_norm:
            v = ops.rms_norm(v, None, c.eps)
        a = np.empty((n, H, d), F32)
        for seq in np.unique(seqs):
            rows = np.flatnonzero(seqs == seq)
            a[rows] = self._attend(s, int(seq), q[rows], k[rows], v[rows], pos[rows])
        attn_out = ops.rms_norm(w("attn_output")(a.reshape(n, H * d)), norm("post_attention_norm"), c.eps)
        x = x + attn_out
        h = ops.rms_norm(x, norm("ffn_norm"), c.eps)
        ffn = w("ffn_down")(ops.gelu_tanh(w("ffn_gate")(h)) * w("ffn_up")(h))
        ffn_out = ops.rms_norm(ffn, norm("post_ffw_norm"), c.eps)
        x = x + ffn_out
        if s.has_output_scale:
            x = x * self.out_scale[i]
        if self.trace is not None:
            self.trace[(i, "attn_out")], self.trace[(i, "ffn_out")], self.trace[(i, "layer_out")] = attn_out, ffn_out, x
        return x

    def _attend(self, s: LayerSpec, seq: int, q, k_new, v_new, pos) -> np.ndarray:
        """Attention of rows of one sequence over its cache plus the new rows, then cache write.

        The new keys are attended before they are written, so a batch longer than W never
        evicts keys that its own earlier rows still need.
        """
        cache = self.caches[seq][s.index]
        k_past, v_past, p_past = cache.past(int(pos[0]))
        keys = np.concatenate([k_past, k_new])
        vals = np.concatenate([v_past, v_new])
        kpos = np.concatenate([p_past, pos])
        m, H, d = q.shape
        Hkv = s.n_head_kv
        g = H // Hkv  # query head h uses KV head h // g
        qg = q.reshape(m, Hkv, g, d).transpose(1, 2, 0, 3).reshape(Hkv, g * m, d)
        scores = (qg @ keys.transpose(1, 2, 0)) * F32(ops.attention_scale(self.cfg, s))  # (Hkv, g*m, n_k)
        mask = ops.visible(pos, kpos, s, self.cfg.window)  # (m, n_k)
        scores = np.where(np.tile(mask, (g, 1))[None], scores, F32(-np.inf))
        out = ops.softmax(scores) @ vals.transpose(1, 0, 2)  # (Hkv, g*m, d)
        cache.write(k_new, v_new, pos)
        return out.reshape(Hkv, g, m, d).transpose(2, 0, 1, 3).reshape(m, H, d)

