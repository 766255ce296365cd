"""float32 numpy ops of the CPU runtime.

The forward in runtime.py calls these through the module (`ops.rms_norm(...)`), so the
conformance suite's fault injection can swap one for a deliberately broken twin and show
that some test catches it.
"""

from __future__ import annotations

import numpy as np

from g4c.config import LayerSpec
from g4c.rope import apply_neox, rope_angles as _rope_angles

F32 = np.float32


def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis; w = None is the weightless norm."""
    y = x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True, dtype=F32) + F32(eps))
    return y if w is None else y * w


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return F32(0.5) * x * (F32(1) + np.tanh(F32(np.sqrt(2 / np.pi)) * (x + F32(0.044715) * x * x * x)))


def rope_angles(spec: LayerSpec, positions: np.ndarray, rope_freqs: np.ndarray | None) -> np.ndarray:
    """f32 angles (n, n_rot/2): f32 inverse frequencies times an f32 position."""
    return _rope_angles(spec, positions, rope_freqs, "f32").astype(F32)


def rope(x: np.ndarray, angles: np.ndarray, n_rot: int) -> np.ndarray:
    return apply_neox(x, angles, n_rot)


def attention_scale(spec: LayerSpec) -> float:
    return spec.attn_scale


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


def softcap(logits: np.ndarray, cap: float | None) -> np.ndarray:
    if cap is None:
        return logits
    return F32(cap) * np.tanh(logits / F32(cap))


def value_tensor(spec: LayerSpec) -> str | None:
    """Which projection gives V: attn_v where the layer has it, else none (k_eq_v)."""
    return "attn_v" if spec.has_v else None


def value(v_raw: np.ndarray | None, k_raw: np.ndarray, k_normed_roped: np.ndarray) -> np.ndarray:
    """V before its norm: the attn_v projection, or on k_eq_v layers the raw K projection
    (not K after k_norm and RoPE, a bug other engines shipped)."""
    return k_raw if v_raw is None else v_raw
