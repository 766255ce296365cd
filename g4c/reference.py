"""The float64 oracle: spec section 3, one line per equation, no cache, no speed.

Weights are dequantized with `gguf.quants.dequantize` (the format's own oracle) and held
in float64. `forward` evaluates a whole token sequence placed at positions
start .. start+n-1 with the causal (and sliding-window) mask, and can record a per-layer
trace with the same keys a runtime's trace uses.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from gguf import quants as gguf_quants

from .config import LayerSpec
from .model import Model
from .rope import apply_neox, rope_angles

TRACE_OPS = ("attn_out", "ffn_out", "layer_out")  # keys of a trace, per layer, in order
CACHE_BYTES = 2 << 30  # float64 weights kept between calls up to this size
CHUNK_BYTES = 256 << 20


def rms(x: np.ndarray, w: np.ndarray | float, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w  # weight as stored: no (1 + w)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Reference:
    def __init__(self, model: Model, angles: str = "f64", window: int | None = None):
        """angles: a g4c.rope mode. window: override of the sliding window (0 = none), used
        only to prove that a window test tells W from W-1, W+1 and no window."""
        self.model = model
        self.cfg = model.config
        self.angles = angles
        self.window = self.cfg.window if window is None else window
        # small models keep their float64 weights; a 12B is dequantized matrix by matrix
        n_params = sum(w.n_rows * w.n_cols for w in model.weights())
        self._w = lru_cache(maxsize=None)(self._dequant) if 8 * n_params <= CACHE_BYTES else self._dequant

    def _dequant(self, name: str, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        w = self.model.weight(name)
        raw = w.raw[rows]
        out = gguf_quants.dequantize(raw, w.qtype).astype(np.float64)
        return out.reshape(len(raw), w.n_cols) if len(w.shape) > 1 else out.reshape(-1)

    def _head(self, h: np.ndarray) -> np.ndarray:
        """h @ W_out^T in row chunks: a 262144 x 3840 head is 8 GB in float64."""
        name = "token_embd.weight" if self.cfg.tied_output else "output.weight"
        w = self.model.weight(name)
        step = max(1, CHUNK_BYTES // (8 * w.n_cols))
        return np.concatenate([h @ self._dequant(name, slice(a, a + step)).T for a in range(0, w.n_rows, step)], axis=1)

    def w(self, layer: int, name: str) -> np.ndarray:
        return self._w(f"blk.{layer}.{name}.weight")

    def forward(self, tokens, start: int = 0, *, trace: dict | None = None) -> np.ndarray:
        """Logits (n, vocab) in float64 for tokens at positions start, start+1, ..."""
        c = self.cfg
        tokens = np.asarray(tokens, np.int64)
        pos = start + np.arange(len(tokens))
        x = self._dequant("token_embd.weight", tokens) * c.embd_scale
        for s in c.layers:
            x = self.layer(s, x, pos, trace)
        logits = self._head(rms(x, self._w("output_norm.weight"), c.eps))
        if c.final_softcap is not None:
            logits = c.final_softcap * np.tanh(logits / c.final_softcap)
        return logits

    def layer(self, s: LayerSpec, x: np.ndarray, pos: np.ndarray, trace: dict | None) -> np.ndarray:
        c, i, n = self.cfg, s.index, len(pos)
        H, Hkv, d = c.n_head, s.n_head_kv, s.head_dim
        h = rms(x, self.w(i, "attn_norm"), c.eps)
        q = (h @ self.w(i, "attn_q").T).reshape(n, H, d)
        k = (h @ self.w(i, "attn_k").T).reshape(n, Hkv, d)
        v = (h @ self.w(i, "attn_v" if s.has_v else "attn_k").T).reshape(n, Hkv, d)  # raw K projection
        q = rms(q, self.w(i, "attn_q_norm"), c.eps)
        k = rms(k, self.w(i, "attn_k_norm"), c.eps)
        if c.v_norm:
            v = rms(v, 1.0, c.eps)  # weightless RMS norm on V
        ang = rope_angles(s, pos, self.model.rope_freqs, self.angles)
        q, k = apply_neox(q, ang, s.n_rot), apply_neox(k, ang, s.n_rot)
        a = self.attention(s, q, k, v, pos)
        attn_out = rms(a.reshape(n, H * d) @ self.w(i, "attn_output").T, self.w(i, "post_attention_norm"), c.eps)
        x = x + attn_out
        h = rms(x, self.w(i, "ffn_norm"), c.eps)
        ffn = (gelu_tanh(h @ self.w(i, "ffn_gate").T) * (h @ self.w(i, "ffn_up").T)) @ self.w(i, "ffn_down").T
        ffn_out = rms(ffn, self.w(i, "post_ffw_norm"), c.eps)
        x = x + ffn_out
        if s.has_output_scale:
            x = x * self.w(i, "layer_output_scale")
        if trace is not None:
            trace[(i, "attn_out")], trace[(i, "ffn_out")], trace[(i, "layer_out")] = attn_out, ffn_out, x
        return x

    def attention(self, s: LayerSpec, q, k, v, pos) -> np.ndarray:
        c = self.cfg
        group = c.n_head // s.n_head_kv  # query head i uses KV head i // group
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = (q.transpose(1, 0, 2) @ k.transpose(1, 2, 0)) * s.attn_scale  # (h, q, k)
        delta = pos[:, None] - pos[None, :]
        visible = delta >= 0
        if s.sliding and self.window:
            visible &= delta < self.window  # W keys including itself
        scores = np.where(visible[None], scores, -np.inf)
        return (softmax(scores) @ v.transpose(1, 0, 2)).transpose(1, 0, 2)

    def greedy(self, prompt, n_new: int) -> list[int]:
        """n_new greedy tokens after prompt (suppressed tokens never chosen)."""
        seq = list(prompt)
        for _ in range(n_new):
            seq.append(argmax_allowed(self.forward(seq)[-1], self.cfg.suppress_tokens))
        return seq[len(prompt):]


def argmax_allowed(logits: np.ndarray, suppress: tuple[int, ...]) -> int:
    """Greedy pick with a -inf bias on the GGUF's suppress_tokens, as llama.cpp's sampler does."""
    if suppress:
        logits = logits.copy()
        logits[list(suppress)] = -np.inf
    return int(np.argmax(logits))
