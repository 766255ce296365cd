"""Deliberately broken variants of the CPU runtime, one bug each, as other engines shipped.

`pytest conformance --runtime cpu --fault NAME` runs the suite against the broken variant;
tests/test_faults.py runs each fault's `caught_by` node ids and requires every one of them to
fail. A fault patches the cpu runtime's ops (runtimes/cpu/ops.py), or a class only the cpu
runtime uses, never the float64 reference nor gguf's dequantization (the oracle), so what it
breaks the tests can see. `catalogue()` lists them as data for the report.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

F16, F32 = np.float16, np.float32

# bug classes: those of ../shared/spec/gemma4.md section 7, and others engines shipped
WINDOW = "sliding window bounds (spec 3.2; 7: decode kernels ignoring the window, off-by-one in window positions)"
RING = "ring cache wrap-around (spec 3.2; 7: a ring evicting keys the batch's earlier rows still need)"
KV = "KV cache slots and storage (spec 3.2: full layers keep every key, in f32)"
REWIND = "rewinding a sequence (the session rules of prefill at start_pos)"
BATCH = "sequences mixed in a batch"
ROPE_FREQS = "proportional RoPE through rope_freqs (spec 3.1; 7: rope_freqs ignored, inverse frequencies over " \
             "the rotary width, a table of 64 entries, factors on sliding layers)"
ROPE = "RoPE pairing and positions (spec 3.1: NEOX rotate-half at each row's position)"
K_EQ_V = "k_eq_v full layers (spec 3; 7: V taken from K after k_norm and RoPE, K/V split assuming attn_v)"
QKV_NORMS = "q, k and v norms (spec 3: per-head q/k norms before RoPE, weightless V norm)"
ATTN_SCALE = "attention scale (spec 3: 1.0, q and k are normed)"
NORM = "RMSNorm weight as stored (spec 3: no 1 + w)"
POST_NORMS = "post norms (spec 3: post_attention_norm and post_ffw_norm on each branch)"
FINAL_NORM = "final norm (spec 3: output_norm before the head)"
EMBD_SCALE = "embedding scale (spec 3 and 5: sqrt(E) in f32)"
LAYER_SCALE = "layer_output_scale placement (spec 3: the whole residual, after the FFN branch)"
SOFTCAP = "final logit softcap (spec 7: softcap missing, hard-coded instead of read from final_logit_softcapping)"
PRECISION = "f16 where f32 is specified (spec 3: softmax in f32; f32 accumulation)"
GQA = "GQA head mapping (spec 3: query head i uses KV head i // (H / Hkv))"
SHAPE = "shape handling (head dims, widths and vocabularies that are not multiples of a kernel's tile)"
KQUANT = "K-quant sub-block scales and mins (GGML Q4_K, Q5_K, Q6_K block layouts)"
TENSORS = "a tensor read under the wrong name (spec 2: the tensors of a layer)"
MASK = "causal mask (spec 3.2)"
GELU = "FFN activation (spec 3: GeLU, tanh approximation)"
HEAD = "output head (spec 2: output.weight, or token_embd when absent)"


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    bug_class: str
    patch: Callable  # (ops module, monkeypatch) -> None
    caught_by: tuple[str, ...]  # exact pytest node ids of the conformance tests that must fail


def _ids(module: str, test: str, *params: str) -> tuple[str, ...]:
    """Node ids of one test of conformance/<module>.py on the cpu runtime, one per parameter id."""
    return tuple(f"conformance/{module}.py::{test}[{'-'.join(filter(None, ('cpu', p)))}]" for p in params or ("",))


def _cpu():
    from g4c.runtimes.cpu import runtime

    return runtime


# -- sliding window, ring, KV cache ----------------------------------------------------------
def _window_shift(shift: int | None):
    def patch(ops, mp):
        orig = ops.visible

        def visible(q_pos, k_pos, spec):
            if shift is None:  # no window at all
                return q_pos[:, None] - k_pos[None, :] >= 0
            return orig(q_pos, k_pos, dataclasses.replace(spec, window=spec.window + shift) if spec.sliding else spec)

        mp.setattr(ops, "visible", visible)

    return patch


def _decode_ignores_window(ops, mp):
    orig = ops.visible
    mp.setattr(ops, "visible", lambda q_pos, k_pos, spec: (
        q_pos[:, None] - k_pos[None, :] >= 0 if len(q_pos) == 1 else orig(q_pos, k_pos, spec)))


def _ring_evicts_batch_keys(ops, mp):
    """A prompt prefilled in one batch (no micro-batches) whose keys go into the ring before it
    attends: of a batch longer than W, the earlier rows lose keys that later rows overwrote."""
    mp.setattr(_cpu().CpuSession, "ubatch", None)
    orig = ops.visible

    def visible(q_pos, k_pos, spec):
        mask = orig(q_pos, k_pos, spec)
        return mask & (k_pos[None, :] > q_pos.max() - spec.window) if spec.sliding else mask

    mp.setattr(ops, "visible", visible)


def _ring_slot_mask(ops, mp):
    """slot = pos & (ring - 1): right for rings of 2^n slots (32, 1024), colliding on others."""
    slots, held = ops.kv_slots, ops.kv_held

    def kv_slots(kv, spec, seqs, pos, base):
        s = slots(kv, spec, seqs, pos, base)
        return np.where(s >= 0, np.asarray(pos) & (kv.ring - 1), -1) if spec.sliding else s

    def kv_held(kv, spec, base, before):
        p, s = held(kv, spec, base, before)
        return p, (p & (kv.ring - 1) if spec.sliding else s)

    mp.setattr(ops, "kv_slots", kv_slots)
    mp.setattr(ops, "kv_held", kv_held)


def _ring_read_unrotated(ops, mp):
    """The ring read in slot order while its positions are counted from the oldest: after the
    ring wraps, keys carry other keys' positions into the mask."""
    held = ops.kv_held

    def kv_held(kv, spec, base, before):
        p, s = held(kv, spec, base, before)
        return p, (np.sort(s) if spec.sliding else s)

    mp.setattr(ops, "kv_held", kv_held)


def _full_layers_ring(ops, mp):
    """Every layer's cache a ring of W slots, full layers included."""
    slots, held = ops.kv_slots, ops.kv_held
    ring = lambda spec: dataclasses.replace(spec, sliding=True)  # noqa: E731
    mp.setattr(ops, "kv_slots", lambda kv, spec, seqs, pos, base: slots(kv, ring(spec), seqs, pos, base))
    mp.setattr(ops, "kv_held", lambda kv, spec, base, before: held(kv, ring(spec), base, before))


def _kv_cache_f16(ops, mp):
    mp.setattr(ops, "to_cache", lambda x: x.astype(F16).astype(F32))


def _kv_grow_drops_contents(ops, mp):
    cache = _cpu()._LayerCache

    def grow(self, cap):
        for name in ("k", "v"):
            old = getattr(self, name)
            setattr(self, name, np.zeros((old.shape[0], cap) + old.shape[2:], F32))

    mp.setattr(cache, "grow", grow)


def _rewind_without_reevaluation(ops, mp):
    from g4c.session import KVPlan

    mp.setattr(KVPlan, "keeps", lambda self, base, next_pos, start: True)


def _batch_as_one_sequence(ops, mp):
    mp.setattr(ops, "sequence_rows", lambda seqs: [(int(seqs[0]), np.arange(len(seqs)))])


def _batch_rows_next_cache(ops, mp):
    """Each sequence's rows paired with the next sequence's id: they read and write its cache."""
    orig = ops.sequence_rows

    def sequence_rows(seqs):
        groups = orig(seqs)
        return [(groups[(i + 1) % len(groups)][0], rows) for i, (_, rows) in enumerate(groups)]

    mp.setattr(ops, "sequence_rows", sequence_rows)


# -- RoPE --------------------------------------------------------------------------------------
def _rope_freqs_ignored(ops, mp):
    orig = ops.rope_angles
    mp.setattr(ops, "rope_angles", lambda spec, pos, ff: orig(spec, pos, None))


def _rope_freqs_on_sliding(ops, mp):
    orig = ops.rope_angles

    def rope_angles(spec, pos, ff):
        if spec.sliding and ff is not None:
            spec = dataclasses.replace(spec, uses_rope_freqs=True)
            ff = np.resize(ff, spec.n_rot // 2)
        return orig(spec, pos, ff)

    mp.setattr(ops, "rope_angles", rope_angles)


def _rotating(spec, ff) -> int:
    """Pairs of a full layer that rotate (factor not 1e30); all of them elsewhere."""
    n = spec.n_rot // 2
    return int(np.count_nonzero(np.asarray(ff)[:n] < 1e29)) if spec.uses_rope_freqs and ff is not None else n


def _rope_inv_freq_rotary_width(ops, mp):
    """Full layers: inverse frequencies base^(-2j / (2 x rotating pairs)) instead of over the
    full head dim."""
    orig = ops.rope_angles

    def rope_angles(spec, pos, ff):
        k = _rotating(spec, ff)
        if k == spec.n_rot // 2:
            return orig(spec, pos, ff)
        narrow = orig(dataclasses.replace(spec, n_rot=2 * k, uses_rope_freqs=False), pos, None)
        return np.concatenate([narrow, np.zeros((len(pos), spec.n_rot // 2 - k), F32)], axis=1)

    mp.setattr(ops, "rope_angles", rope_angles)


def _rope_table_rotating_only(ops, mp):
    """Full layers: a table of the rotating pairs only (64 of 256 on the 12B), so rotate-half
    pairs dimension j with j + 64 instead of j + 256."""
    angles, rope = ops.rope_angles, ops.rope
    mp.setattr(ops, "rope_angles", lambda spec, pos, ff: angles(spec, pos, ff)[:, : _rotating(spec, ff)])
    mp.setattr(ops, "rope", lambda x, ang, n_rot: rope(x, ang, 2 * ang.shape[1]))


def _rope_interleaved(ops, mp):
    """GPT-J pairing: dimension 2j with 2j + 1, instead of NEOX's j with j + n_rot/2."""

    def rope(x, angles, n_rot):
        cos = np.cos(angles).astype(x.dtype)[:, None, :]
        sin = np.sin(angles).astype(x.dtype)[:, None, :]
        x1, x2 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out = x.copy()
        out[..., 0:n_rot:2] = x1 * cos - x2 * sin
        out[..., 1:n_rot:2] = x2 * cos + x1 * sin
        return out

    mp.setattr(ops, "rope", rope)


def _rope_positions_from_batch_start(ops, mp):
    orig = ops.rope_angles
    mp.setattr(ops, "rope_angles", lambda spec, pos, ff: orig(spec, pos - pos[0], ff))


# -- q, k, v and attention -----------------------------------------------------------------------
def _v_from_attn_v(ops, mp):
    mp.setattr(ops, "value_tensor", lambda spec: "attn_v")


def _v_after_k_norm_rope(ops, mp):
    mp.setattr(ops, "value", lambda v_raw, k_raw, k_final: k_final if v_raw is None else v_raw)


def _no_v_norm(ops, mp):
    mp.setattr(ops, "value_norm", lambda v, eps: v)


def _qk_norm_after_rope(ops, mp):
    rope, norm = ops.rope, ops.rms_norm
    mp.setattr(ops, "norm_rope", lambda x, w, eps, ang, n_rot: norm(rope(x, ang, n_rot), w, eps))


def _inv_sqrt_scale(ops, mp):
    mp.setattr(ops, "attention_scale", lambda spec: 1.0 / np.sqrt(spec.head_dim))


def _gqa_modulo(ops, mp):
    """Query head h on KV head h % Hkv (KV heads repeated as a tile, not interleaved)."""
    mp.setattr(ops, "query_heads", lambda n_head, n_kv: np.arange(n_head).reshape(n_head // n_kv, n_kv).T)


def _dot_over_32_multiples(ops, mp):
    """q.k over the first 32 x floor(d / 32) dims of a head: nothing at head dim 16."""
    orig = ops.scores

    def scores(q, k):
        n = 32 * (q.shape[-1] // 32)
        return orig(q[..., :n], k[..., :n])

    mp.setattr(ops, "scores", scores)


def _causal_sees_next(ops, mp):
    orig = ops.visible
    mp.setattr(ops, "visible", lambda q_pos, k_pos, spec: orig(q_pos + 1, k_pos, spec))


def _softmax_f16(ops, mp):
    orig = ops.softmax
    mp.setattr(ops, "softmax", lambda s: orig(s.astype(F16)).astype(F32))


# -- weights and products -----------------------------------------------------------------------
# These are stated on ops.matmul and ops.dequantize, what the fused kernels compute in one step
# (runtimes/cpu/kernels.py): each turns the kernels off (ops.FUSED), so that every product goes
# through the broken function, as a long prompt's do.
def _matmul_k_tail(ops, mp):
    """Dot products over whole tiles of 64 columns; the tail of a width 64 does not divide dropped."""
    mp.setattr(ops, "FUSED", False)
    orig = ops.matmul

    def matmul(x, w):
        n = 64 * (w.shape[1] // 64)
        return orig(x[:, :n], w[:, :n])

    mp.setattr(ops, "matmul", matmul)


def _matmul_rows_tail(ops, mp):
    """Outputs in whole tiles of 64 rows; the rows of a last partial tile left at zero."""
    mp.setattr(ops, "FUSED", False)
    orig = ops.matmul

    def matmul(x, w):
        n = 64 * (w.shape[0] // 64)
        out = np.zeros((x.shape[0], w.shape[0]), F32)
        out[:, :n] = orig(x, w[:n])
        return out

    mp.setattr(ops, "matmul", matmul)


def _matmul_f16(ops, mp):
    mp.setattr(ops, "FUSED", False)
    mp.setattr(ops, "matmul", lambda x, w: (x.astype(F16) @ w.T.astype(F16)).astype(F32))


def _tensor_swap(a: str, b: str):
    def patch(ops, mp):
        orig = ops.layer_tensor
        mp.setattr(ops, "layer_tensor", lambda name: orig({a: b, b: a}.get(name, name)))

    return patch


def _untied_head_ignored(ops, mp):
    mp.setattr(ops, "output_tensor", lambda cfg: "token_embd.weight")


# -- norms, scales, activations -------------------------------------------------------------------
def _one_plus_w_norm(ops, mp):
    orig = ops.rms_norm
    mp.setattr(ops, "rms_norm", lambda x, w, eps: orig(x, None if w is None else 1.0 + w, eps))


def _no_post_norms(ops, mp):
    mp.setattr(ops, "post_norm", lambda x, w, eps: x)


def _no_final_norm(ops, mp):
    mp.setattr(ops, "final_norm", lambda x, w, eps: x)


def _no_embedding_scale(ops, mp):
    mp.setattr(ops, "embedding_scale", lambda cfg: 1.0)


def _bf16(x: float) -> float:
    """x rounded to bfloat16 (to nearest, ties to even), as transformers casts sqrt(E)."""
    u = int(np.array(x, F32).view(np.uint32))
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return float(np.array(u, np.uint32).view(F32))


def _embedding_scale_bf16(ops, mp):
    orig = ops.embedding_scale
    mp.setattr(ops, "embedding_scale", lambda cfg: _bf16(orig(cfg)))


def _layer_scale(where: str):
    def layer_output(x, ffn_out, scale):
        if scale is None or where == "ignored":
            return x + ffn_out
        return x * scale + ffn_out if where == "residual" else x + ffn_out * scale

    return lambda ops, mp: mp.setattr(ops, "layer_output", layer_output)


def _no_softcap(ops, mp):
    mp.setattr(ops, "softcap", lambda logits, cap: logits)


def _softcap_hard_coded(ops, mp):
    orig = ops.softcap
    mp.setattr(ops, "softcap", lambda logits, cap: orig(logits, 30.0))


def _gelu_erf(ops, mp):
    erf = np.frompyfunc(math.erf, 1, 1)
    mp.setattr(ops, "gelu_tanh", lambda x: (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)).astype(np.float64))).astype(F32))


# -- K-quant layouts: the correct dequantizer on bytes rearranged so that it computes what a
# reader of the wrong layout computes on the real bytes ----------------------------------------
def _misread(qtype: str, rearrange: Callable[[np.ndarray], np.ndarray], *more: str):
    def patch(ops, mp):
        from g4c import quants

        types = {quants.TYPE_NAMES[t]: quants.layout(quants.TYPE_NAMES[t]) for t in (qtype, *more)}
        mp.setattr(ops, "FUSED", False)  # see "weights and products" above
        orig = ops.dequantize

        def dequantize(raw, qt, n_cols):
            lay = types.get(quants.layout(qt).qtype)
            if lay is not None:
                raw = np.asarray(raw, np.uint8)
                blocks = rearrange(raw.reshape(-1, lay.type_size).copy(), lay.type_size)
                raw = blocks.reshape(-1, lay.row_bytes(n_cols))
            return orig(raw, qt, n_cols)

        mp.setattr(ops, "dequantize", dequantize)

    return patch


def _scale_min_swapped(b, size):
    """Q4_K/Q5_K: the 6-bit mins read as the scales and the scales as the mins."""
    t = b[:, 4:16].copy()  # scale bytes 0..3, min bytes 4..7, packed high halves 8..11
    b[:, 4:8], b[:, 8:12] = t[:, 4:8], t[:, 0:4]
    b[:, 12:16] = (t[:, 8:12] >> 4) | (t[:, 8:12] << 4)
    return b


def _scale_high_bits_dropped(b, size):
    """Q4_K/Q5_K: scales and mins of sub-blocks 4..7 read from their low 4 bits only."""
    b[:, 4:12] &= 0x3F
    return b


def _q4_k_nibble_order(b, size):
    """Q4_K: sub-blocks 0..3 read from the low nibbles of the four 32-byte chunks and 4..7 from
    the high nibbles, instead of sub-blocks 2c and 2c+1 sharing chunk c."""
    qs = b[:, 16:144].reshape(-1, 4, 32)
    wrong = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # (n, 8, 32): what the reader takes as sub-block j
    b[:, 16:144] = (wrong[:, 0::2] | (wrong[:, 1::2] << 4)).reshape(-1, 128)
    return b


def _q5_k_high_bit_order(b, size):
    """Q5_K: the fifth bit of weight w read from bit w % 8 of qh[w // 8] (Q5_0's sequential
    order), instead of bit j of qh[i] for weight i of sub-block j."""
    qh = b[:, 16:48]
    seq = np.unpackbits(qh, axis=1, bitorder="little").reshape(-1, 8, 32)  # [j, i] = bit of weight 32j + i
    b[:, 16:48] = np.packbits(seq.transpose(0, 2, 1), axis=2, bitorder="little").reshape(-1, 32)
    return b


def _q6_k_scale_order(b, size):
    """Q6_K: the 16-weight groups of each half take scales c + 4 * (l // 16) (chunk-major)
    instead of 2c + l // 16 (the order llama.cpp's dequantize_row_q6_K reads)."""
    sc = b[:, 192:208].reshape(-1, 2, 8)
    j = np.arange(8)
    b[:, 192:208] = sc[:, :, j // 2 + 4 * (j % 2)].reshape(-1, 16)
    return b


# -- the catalogue -------------------------------------------------------------------------------
DENSE = _ids("test_dense", "test_dense_logits", "12b-like")
DECODE = _ids("test_dense", "test_dense_decode_matches_reference")
SHAPE_W7 = _ids("test_shapes", "test_shape", "hd16-32-g2-w7")
ROPE_TINY = _ids("test_rope", "test_rope_long_position", "4096-tiny")

FAULTS = {
    f.name: f
    for f in (
        # the first eleven
        Fault("window-minus-1", "sliding window of W-1 keys", WINDOW, _window_shift(-1),
              _ids("test_window", "test_window_edge_positions")),
        Fault("window-plus-1", "sliding window of W+1 keys", WINDOW, _window_shift(+1),
              _ids("test_window", "test_window_edge_positions")),
        Fault("no-window", "sliding layers attend to every earlier key", WINDOW, _window_shift(None),
              _ids("test_window", "test_window_edge_positions") + DECODE),
        Fault("rope-freqs-ignored", "full layers rotate every pair (rope_freqs unused)", ROPE_FREQS,
              _rope_freqs_ignored, ROPE_TINY),
        Fault("rope-freqs-on-sliding", "rope_freqs also divides sliding-layer angles", ROPE_FREQS,
              _rope_freqs_on_sliding, ROPE_TINY),
        Fault("v-from-attn-v", "V read from attn_v on every layer (k_eq_v full layers have none)", K_EQ_V,
              _v_from_attn_v, _ids("test_k_eq_v", "test_k_eq_v_logits", "tiny")),
        Fault("v-after-k-norm-rope", "k_eq_v V taken from K after k_norm and RoPE", K_EQ_V, _v_after_k_norm_rope,
              _ids("test_k_eq_v", "test_k_eq_v_logits", "tiny") + _ids("test_k_eq_v", "test_k_eq_v_layer_outputs")),
        Fault("inv-sqrt-d-scale", "attention scaled by 1/sqrt(head_dim)", ATTN_SCALE, _inv_sqrt_scale, DENSE),
        Fault("one-plus-w-norm", "RMSNorm multiplies by (1 + w)", NORM, _one_plus_w_norm, DENSE),
        Fault("no-softcap", "final logit softcap skipped", SOFTCAP, _no_softcap,
              DENSE + _ids("test_dense", "test_softcap_bounds") + _ids("test_dense", "test_softcap_from_file")),
        Fault("rewind-without-reevaluation", "a rewind keeps what the sliding rings still hold, though they overwrote "
              "keys the kept positions' successors need", REWIND, _rewind_without_reevaluation,
              _ids("test_dense", "test_rewind_keeps_prefix", "rewind-28")),
        # window, ring, KV cache, batches
        Fault("decode-ignores-window", "decode steps attend to every key the ring holds (prefill keeps the window)",
              WINDOW, _decode_ignores_window, DECODE + SHAPE_W7),
        Fault("ring-evicts-batch-keys", "a prompt prefilled in one batch, stored into the ring before it attends: "
              "rows of a batch longer than W lose keys later rows overwrote", RING, _ring_evicts_batch_keys,
              _ids("test_window", "test_long_prefill_equals_decode") + SHAPE_W7),
        Fault("ring-slot-bitmask", "ring slot pos & (W - 1), right only for rings of 2^n slots", RING, _ring_slot_mask,
              SHAPE_W7),
        Fault("ring-read-unrotated", "the ring read in slot order as if it held its positions oldest first", RING,
              _ring_read_unrotated, DECODE),
        Fault("full-layers-ring", "full layers cached in a ring of W slots like sliding layers", KV, _full_layers_ring,
              DECODE),
        Fault("kv-cache-f16", "keys and values cached in f16", KV, _kv_cache_f16, DECODE),
        Fault("kv-grow-drops-contents", "a full layer's cache reallocated larger without copying what it held", KV,
              _kv_grow_drops_contents, DECODE),
        Fault("batch-as-one-sequence", "the rows of a batch attend as one sequence, in the first sequence's cache",
              BATCH, _batch_as_one_sequence, _ids("test_batch", "test_batched_decode_equals_single", "2")),
        Fault("batch-rows-next-cache", "each sequence's rows of a batch use the next sequence's cache", BATCH,
              _batch_rows_next_cache, _ids("test_batch", "test_batched_decode_equals_single", "2")),
        # RoPE
        Fault("rope-inv-freq-rotary-width", "full layers' inverse frequencies over the rotary width, not the head dim",
              ROPE_FREQS, _rope_inv_freq_rotary_width, ROPE_TINY),
        Fault("rope-table-rotating-only", "full layers' RoPE table of the rotating pairs only: rotate-half pairs "
              "dimension j with j + rotating pairs", ROPE_FREQS, _rope_table_rotating_only, DENSE + ROPE_TINY),
        Fault("rope-interleaved", "RoPE pairs adjacent dimensions (GPT-J) instead of rotate-half (NEOX)", ROPE,
              _rope_interleaved, DENSE),
        Fault("rope-positions-from-batch-start", "RoPE angles at positions counted from the batch's first row",
              ROPE, _rope_positions_from_batch_start,
              DECODE + _ids("test_rope", "test_rope_start_position_continuity")),
        # q, k, v, attention
        Fault("no-v-norm", "the weightless RMS norm of V skipped", QKV_NORMS, _no_v_norm,
              DENSE + _ids("test_k_eq_v", "test_k_eq_v_logits", "tiny")),
        Fault("qk-norm-after-rope", "q and k norms applied after RoPE", QKV_NORMS, _qk_norm_after_rope, DENSE),
        Fault("qk-norm-weights-swapped", "attn_q_norm read for k and attn_k_norm for q", TENSORS,
              _tensor_swap("attn_q_norm", "attn_k_norm"), DENSE),
        Fault("gqa-modulo", "query head h on KV head h % Hkv instead of h // (H / Hkv)", GQA, _gqa_modulo,
              DENSE + SHAPE_W7),
        Fault("attn-dot-32-multiples", "q.k over the first 32 x floor(d / 32) dims of a head", SHAPE,
              _dot_over_32_multiples, SHAPE_W7 + _ids("test_shapes", "test_shape", "hd512-16-g2-w1024")),
        Fault("causal-mask-sees-next", "prefill rows see the next row's key", MASK, _causal_sees_next, DENSE),
        Fault("softmax-f16", "attention softmax in f16", PRECISION, _softmax_f16, DENSE),
        # weights and products
        Fault("matmul-f16", "matrix products in f16", PRECISION, _matmul_f16, DENSE),
        Fault("matvec-k-tail-dropped", "dot products over whole tiles of 64 columns only", SHAPE, _matmul_k_tail,
              SHAPE_W7 + _ids("test_shapes", "test_shape", "hd32-64-g1-w1")),
        Fault("matvec-rows-tail-dropped", "outputs in whole tiles of 64 rows only: the last partial tile left at 0",
              SHAPE, _matmul_rows_tail, SHAPE_W7 + _ids("test_shapes", "test_shape", "hd32-64-g1-w1")),
        Fault("ffn-gate-up-swapped", "ffn_up read as the gate and ffn_gate as the up projection", TENSORS,
              _tensor_swap("ffn_gate", "ffn_up"), DENSE),
        Fault("untied-head-ignored", "token_embd used as the head though the file has output.weight", HEAD,
              _untied_head_ignored, _ids("test_dense", "test_dense_logits", "untied-output")),
        Fault("q4_k-scale-min-swapped", "Q4_K: sub-block mins read as the scales and scales as the mins", KQUANT,
              _misread("Q4_K", _scale_min_swapped), _ids("test_weight_types", "test_model_in_type", "Q4_K")
              + _ids("test_shapes", "test_shape", "hd64-256-g3-q4_k")),
        Fault("q5_k-scale-min-swapped", "Q5_K: sub-block mins read as the scales and scales as the mins", KQUANT,
              _misread("Q5_K", _scale_min_swapped), _ids("test_weight_types", "test_model_in_type", "Q5_K")),
        Fault("kquant-scale-high-bits-dropped", "Q4_K/Q5_K: the scales and mins of sub-blocks 4..7 read without their "
              "top two bits", KQUANT, _misread("Q4_K", _scale_high_bits_dropped, "Q5_K"),
              _ids("test_weight_types", "test_model_in_type", "Q4_K", "Q5_K")),
        Fault("q4_k-nibble-order", "Q4_K: sub-blocks 0..3 in the low nibbles, 4..7 in the high", KQUANT,
              _misread("Q4_K", _q4_k_nibble_order), _ids("test_weight_types", "test_model_in_type", "Q4_K")),
        Fault("q5_k-high-bit-order", "Q5_K: fifth bits read in Q5_0's sequential order", KQUANT,
              _misread("Q5_K", _q5_k_high_bit_order), _ids("test_weight_types", "test_model_in_type", "Q5_K")),
        Fault("q6_k-scale-order", "Q6_K: the sixteen sub-block scales applied chunk-major", KQUANT,
              _misread("Q6_K", _q6_k_scale_order), _ids("test_weight_types", "test_model_in_type", "Q6_K")
              + _ids("test_shapes", "test_shape", "hd32-256-g8-q6_k")),
        # norms, scales, activation, softcap
        Fault("no-post-norms", "post_attention_norm and post_ffw_norm skipped", POST_NORMS, _no_post_norms, DENSE),
        Fault("post-norms-swapped", "post_ffw_norm read after attention and post_attention_norm after the FFN",
              POST_NORMS, _tensor_swap("post_attention_norm", "post_ffw_norm"),
              DENSE + _ids("test_k_eq_v", "test_k_eq_v_layer_outputs")),
        Fault("no-final-norm", "output_norm skipped before the head", FINAL_NORM, _no_final_norm, DENSE),
        Fault("no-embedding-scale", "embeddings not multiplied by sqrt(E)", EMBD_SCALE, _no_embedding_scale, DENSE),
        Fault("embedding-scale-bf16", "sqrt(E) rounded to bf16 (transformers' cast; llama.cpp: f32)", EMBD_SCALE,
              _embedding_scale_bf16, SHAPE_W7),
        Fault("layer-output-scale-ignored", "layer_output_scale not applied", LAYER_SCALE, _layer_scale("ignored"),
              DENSE),
        Fault("layer-output-scale-before-ffn", "layer_output_scale applied to the residual before the FFN branch "
              "joins it", LAYER_SCALE, _layer_scale("residual"), DENSE),
        Fault("layer-output-scale-ffn-only", "layer_output_scale applied to the FFN branch only", LAYER_SCALE,
              _layer_scale("ffn"), DENSE),
        Fault("gelu-erf", "exact erf GeLU instead of the tanh approximation", GELU, _gelu_erf, DENSE),
        Fault("softcap-hard-coded-30", "softcap of 30 hard-coded, whatever final_logit_softcapping says", SOFTCAP,
              _softcap_hard_coded, _ids("test_dense", "test_softcap_from_file")),
    )
}


def catalogue() -> list[dict]:
    """Every fault as data: name, what it breaks, its bug class and the node ids that must fail."""
    return [{"name": f.name, "what": f.what, "bug_class": f.bug_class, "caught_by": list(f.caught_by)}
            for f in FAULTS.values()]


def apply(name: str, monkeypatch) -> Fault:
    from g4c.runtimes.cpu import ops

    fault = FAULTS[name]
    fault.patch(ops, monkeypatch)
    return fault
