"""Tolerances, each derived from the error of a number format, in one table.

A runtime declares its arithmetic in its capabilities' `precision` ("f32" by default). The figures below are bounds for an implementation that is correct; a real bug
(off-by-one window, ignored rope_freqs, wrong scale or norm) moves logits by O(1) and
stands orders of magnitude above them (the fault-injection tests show each one).
"""

from __future__ import annotations

import math

import numpy as np
from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    precision: str
    unit_roundoff: float
    accumulates: bool  # errors grow with dot length (f32 arithmetic) or only per stored value
    logit_nmse: float
    op_nmse: float  # op-level (dequant, matvec) against gguf's float dequantization
    why: str

    def logit_max_abs(self, cfg, ref_logits) -> float:
        """Worst-case bound on |delta logit| for this model: scale * u * growth, scale the
        largest reference logit (at most the softcap). NMSE is the tight criterion; this one
        guards against an error concentrated on a few logits."""
        cap = float(np.abs(ref_logits).max())
        dot = longest_dot(cfg)
        growth = cfg.n_layer * dot if self.accumulates else 4 * math.sqrt(cfg.n_layer)
        return cap * self.unit_roundoff * growth

    def hidden_nmse(self, cfg) -> dict:
        """NMSE limit of each traced (layer, op) output: 4 * e^2 with e the typical relative
        error after l + 1 layers, (l + 1) * sqrt(K) * u for f32 arithmetic and sqrt(l + 1) * u
        for f16 storage (4 in NMSE is 2 in rms; the fixtures measure at most 0.48 of e^2)."""
        from .reference import TRACE_OPS

        dot = longest_dot(cfg)
        limits = {}
        for layer in range(cfg.n_layer):
            e = (layer + 1) * math.sqrt(dot) if self.accumulates else math.sqrt(layer + 1)
            for op in TRACE_OPS:
                limits[layer, op] = 4 * (e * self.unit_roundoff) ** 2
        return limits


def longest_dot(cfg) -> int:
    """The longest dot product of the forward: the residual width (projections), the FFN
    width (ffn_down) or the attention output width, heads x head dim, of any layer (attn_output;
    a sliding head dim may exceed the full layers')"""
    return max([cfg.n_embd] + [cfg.n_head * s.head_dim for s in cfg.layers] + [s.n_ff for s in cfg.layers])


# f32: unit roundoff u = 6e-8. A logit is a chain of L layers of K-term dot products with
# norms between. The relative error of a K-term dot product is at most K*u (Higham's gamma_K);
# compounded over L layers, on logits capped at 30: |delta| <= 30 * L * K * u (7.3e-3 on the
# tiny fixture, where two f32 evaluations measure 1.7e-3 apart). Typical errors grow as
# sqrt(K) instead, relative L * sqrt(K) * u = 1.1e-5 on the tiny fixture and 3.6e-4 on the
# real 12B: NMSE = e^2 <= 1.3e-7, hence 1e-7, the default of llama.cpp's test-backend-ops.
F32 = Tolerance(
    "f32", unit_roundoff=2.0**-24, accumulates=True, logit_nmse=1e-7, op_nmse=1e-10,
    why="f32 roundoff 6e-8 x layers x sqrt(dot length), logits capped at 30",
)

# f16 storage of activations or KV (llama.cpp's default cache): u = 4.9e-4 per stored value,
# relative error about sqrt(L) * u (3.4e-3 at 48 layers): NMSE 1.2e-5 -> 1e-4; |delta| within
# 30 * 4 * sqrt(L) * u (0.4 at 48 layers; spec section 5 measured 0.18 for llama.cpp with an
# f16 KV cache on a small model).
F16 = Tolerance(
    "f16", unit_roundoff=2.0**-11, accumulates=False, logit_nmse=1e-4, op_nmse=1e-6,
    why="f16 roundoff 4.9e-4 on stored activations and KV",
)

TABLE = {t.precision: t for t in (F32, F16)}


def for_runtime(runtime) -> Tolerance:
    from .runtime import capabilities

    return TABLE[capabilities(runtime).precision]


def long_position_allowance(ref_f64, ref_f32_variants) -> float:
    """Extra |delta logit| a correct f32 engine may show at a long position: twice the largest
    deviation of the f32-angle references (transformers' and llama.cpp's way of computing
    angles) from exact float64 angles at that position. It comes from angle rounding alone,
    grows with the position, and is reported beside the runtime's own deviation."""
    return 2.0 * max(float(np.abs(v - ref_f64).max()) for v in ref_f32_variants)
