"""RoPE angles, shared by the reference and the runtimes (spec section 3.1).

theta_j = p * base^(-2j / n_rot) / ff_j for j < n_rot/2, ff = rope_freqs on gemma4 full
layers and 1 elsewhere. Three ways to evaluate it, because engines differ and at p ~ 262k
the difference is a few hundredths of a radian:
- "f64": exact, in float64;
- "f32": f32 inverse frequencies times an f32 position (transformers; our runtimes);
- "f32_cumulative": theta *= base^(-2/n_rot) accumulated in f32 from theta = p (llama.cpp).
A huge ff (1e30: a pair that does not rotate) divides to angle 0, never inf or NaN.
"""

from __future__ import annotations

import numpy as np

from .config import LayerSpec

MODES = ("f64", "f32", "f32_cumulative")


def freq_factors(spec: LayerSpec, rope_freqs: np.ndarray | None) -> np.ndarray:
    n = spec.n_rot // 2
    if spec.uses_rope_freqs and rope_freqs is not None:
        return np.asarray(rope_freqs, np.float64)[:n]
    return np.ones(n)


def inv_freq_f32(spec: LayerSpec, rope_freqs: np.ndarray | None) -> np.ndarray:
    """f32 inverse frequencies over the full n_rot, divided by the freq factors (the "f32"
    mode's table: a runtime multiplies it by an f32 position)."""
    j = np.arange(spec.n_rot // 2, dtype=np.float64)
    ff = freq_factors(spec, rope_freqs).astype(np.float32)
    inv = (np.float32(spec.rope_base) ** (-2.0 * j / spec.n_rot)).astype(np.float32) / ff
    return (inv / np.float32(spec.rope_scale)).astype(np.float32)


def rope_angles(spec: LayerSpec, positions: np.ndarray, rope_freqs: np.ndarray | None, mode: str = "f64") -> np.ndarray:
    """Angles (n_positions, n_rot/2), float64 holding the values the mode computes."""
    n = spec.n_rot // 2
    ff = freq_factors(spec, rope_freqs)
    pos = np.asarray(positions, np.float64) / spec.rope_scale
    j = np.arange(n, dtype=np.float64)
    if mode == "f64":
        return pos[:, None] * (spec.rope_base ** (-2.0 * j / spec.n_rot)) / ff
    if mode == "f32":
        inv = inv_freq_f32(spec, rope_freqs)
        return (np.asarray(positions).astype(np.float32)[:, None] * inv[None, :]).astype(np.float64)
    if mode == "f32_cumulative":
        step = np.float32(np.float32(spec.rope_base) ** np.float32(-2.0 / spec.n_rot))
        theta = np.empty((len(pos), n), np.float32)
        t = pos.astype(np.float32)
        for i in range(n):
            theta[:, i] = t
            t = (t * step).astype(np.float32)
        return (theta / ff.astype(np.float32)).astype(np.float64)
    raise ValueError(f"unknown RoPE angle mode {mode!r} (known: {', '.join(MODES)})")


def apply_neox(x: np.ndarray, angles: np.ndarray, n_rot: int) -> np.ndarray:
    """Rotate-half RoPE of x (n, heads, d) by angles (n, n_rot/2); dims past n_rot pass through."""
    half = n_rot // 2
    cos = np.cos(angles).astype(x.dtype)[:, None, :]
    sin = np.sin(angles).astype(x.dtype)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:n_rot]
    out = x.copy()
    out[..., :half] = x1 * cos - x2 * sin
    out[..., half:n_rot] = x2 * cos + x1 * sin
    return out
