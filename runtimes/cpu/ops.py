"""float32 numpy ops of the CPU runtime.

The forward in runtime.py calls these through the module (`ops.rms_norm(...)`), so the
conformance suite's fault injection (conformance/faults.py) can swap one for a deliberately
broken twin and show that some test catches it. Every step an engine has shipped a bug in
is one of these: which tensor is read, how a weight is dequantized, how a query head finds
its KV head, which cache slot holds a position, which rows share a cache.
None of them is used by the float64 reference (g4c/reference.py), which a fault never reaches.
"""

from __future__ import annotations

import numpy as np

from g4c import quants
from g4c.config import LayerSpec, ModelConfig
from g4c.rope import apply_neox, rope_angles as _rope_angles

F32 = np.float32


# -- weights -------------------------------------------------------------------------------
# Products go through the fused kernels (kernels.py), which compute matmul(x, dequantize(rows))
# without the float32 matrix. Off, every product is those two functions: a fault stated on
# either (conformance/faults.py) turns it off, so that what it breaks is what the runtime runs.
FUSED = True


def dequantize(raw: np.ndarray, qtype, n_cols: int) -> np.ndarray:
    """Raw GGUF rows -> float32 (rows, n_cols): every weight the runtime reads comes through here."""
    return quants.dequantize(raw, qtype, n_cols)


def matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (rows, n_cols) times a dequantized matrix w (out, n_cols), transposed: (rows, out)."""
    return x @ w.T


def layer_tensor(name: str) -> str:
    """The tensor a layer reads for a role (attn_q, post_ffw_norm, ...): the role's own name."""
    return name


def output_tensor(cfg: ModelConfig) -> str:
    """The output head: output.weight, or token_embd.weight when the file ties them."""
    return "token_embd.weight" if cfg.tied_output else "output.weight"


def embedding_scale(cfg: ModelConfig) -> float:
    """sqrt(n_embd) in f32, as llama.cpp computes it (spec section 5)."""
    return cfg.embd_scale


# -- norms and activations -----------------------------------------------------------------
def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis; w = None is the weightless norm."""
    y = x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True, dtype=F32) + F32(eps))
    return y if w is None else y * w


def post_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """The norm of a branch's output before it joins the residual (post_attention_norm, post_ffw_norm)."""
    return rms_norm(x, w, eps)


def final_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """output_norm, before the head."""
    return rms_norm(x, w, eps)


def layer_output(x: np.ndarray, ffn_out: np.ndarray, scale: np.float32 | None) -> np.ndarray:
    """The layer's output: the residual plus the FFN branch, times layer_output_scale where
    the file has it (the whole sum, not one branch)."""
    x = x + ffn_out
    return x if scale is None else x * scale


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return F32(0.5) * x * (F32(1) + np.tanh(F32(np.sqrt(2 / np.pi)) * (x + F32(0.044715) * x * x * x)))


def softcap(logits: np.ndarray, cap: float | None) -> np.ndarray:
    if cap is None:
        return logits
    return F32(cap) * np.tanh(logits / F32(cap))


# -- q, k, v -------------------------------------------------------------------------------
def rope_angles(spec: LayerSpec, positions: np.ndarray, rope_freqs: np.ndarray | None) -> np.ndarray:
    """f32 angles (n, n_rot/2): f32 inverse frequencies times an f32 position."""
    return _rope_angles(spec, positions, rope_freqs, "f32").astype(F32)


def rope(x: np.ndarray, angles: np.ndarray, n_rot: int) -> np.ndarray:
    """NEOX (rotate-half) pairing: dimension j with j + n_rot/2."""
    return apply_neox(x, angles, n_rot)


def norm_rope(x: np.ndarray, w: np.ndarray, eps: float, angles: np.ndarray, n_rot: int) -> np.ndarray:
    """q or k: the per-head norm first, then RoPE."""
    return rope(rms_norm(x, w, eps), angles, n_rot)


def value_tensor(spec: LayerSpec) -> str | None:
    """Which projection gives V: attn_v where the layer has it, else none (k_eq_v)."""
    return "attn_v" if spec.has_v else None


def value(v_raw: np.ndarray | None, k_raw: np.ndarray, k_normed_roped: np.ndarray) -> np.ndarray:
    """V before its norm: the attn_v projection, or on k_eq_v layers the raw K projection
    (not K after k_norm and RoPE, a bug other engines shipped)."""
    return k_raw if v_raw is None else v_raw


def value_norm(v: np.ndarray, eps: float) -> np.ndarray:
    """The weightless RMS norm of V (gemma4)."""
    return rms_norm(v, None, eps)


# -- attention -----------------------------------------------------------------------------
def query_heads(n_head: int, n_kv: int) -> np.ndarray:
    """(n_kv, group) query heads served by each KV head: query head h uses KV head h // group."""
    return np.arange(n_head).reshape(n_kv, n_head // n_kv)


def attention_scale(spec: LayerSpec) -> float:
    return spec.attn_scale


def scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Dot products over the whole head dim: q (KV heads, rows, d), k (keys, KV heads, d) ->
    (KV heads, rows, keys)."""
    return q @ k.transpose(1, 2, 0)


def visible(q_pos: np.ndarray, k_pos: np.ndarray, spec: LayerSpec) -> np.ndarray:
    """(n_q, n_k) mask: causal, and on sliding layers the last W keys including itself."""
    delta = q_pos[:, None] - k_pos[None, :]
    mask = delta >= 0
    if spec.sliding:
        mask &= delta < spec.window
    return mask


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# -- the KV cache --------------------------------------------------------------------------
def attend(q: np.ndarray, keys: np.ndarray, vals: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
           spec: LayerSpec) -> np.ndarray:
    """Attention of queries (m, H, d) over keys and values (n_k, KV heads, d) at their
    positions: the query heads of each KV head stacked into one product, scores scaled and
    masked by `visible`, softmax, times the values; (m, H, d). Calls the hooks above, so a
    fault in one of them shows in the session's forward and at op level alike."""
    m, H, d = q.shape
    heads = query_heads(H, spec.n_head_kv)  # (Hkv, g): the query heads of each KV head
    Hkv, g = heads.shape
    qg = q[:, heads.reshape(-1)].reshape(m, Hkv, g, d).transpose(1, 2, 0, 3).reshape(Hkv, g * m, d)
    s = scores(qg, keys) * F32(attention_scale(spec))  # (Hkv, g*m, n_k)
    mask = visible(q_pos, k_pos, spec)  # (m, n_k)
    s = np.where(np.tile(mask, (g, 1))[None], s, F32(-np.inf))
    out = softmax(s) @ vals.transpose(1, 0, 2)  # (Hkv, g*m, d)
    a = np.empty((m, H, d), F32)
    a[:, heads.reshape(-1)] = out.reshape(Hkv, g, m, d).transpose(2, 0, 1, 3).reshape(m, H, d)
    return a


def sequence_rows(seqs: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(sequence, its rows) for each sequence in a batch: each attends to its own cache only."""
    return [(int(q), np.flatnonzero(seqs == q)) for q in np.unique(seqs)]


def kv_held(kv, spec: LayerSpec, base: int, before: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, slots) a sequence's cache of this layer holds below `before` (g4c.session.KVPlan)."""
    return kv.held(spec, base, before)


def kv_slots(kv, spec: LayerSpec, seqs: np.ndarray, pos: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Slot of each new row's key (-1: not kept) in its sequence's cache (g4c.session.KVPlan)."""
    return kv.slots(spec, seqs, pos, base)


def to_cache(x: np.ndarray) -> np.ndarray:
    """Keys or values as the cache stores them: f32, unchanged."""
    return x
