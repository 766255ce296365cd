"""Op cases as data, in the manner of llama.cpp's test-backend-ops: one list, CASES, of
small op-level cases (op, shapes, weight type, seed), each with a readable id, inputs made
from its seed, a float64 expected output written from ../shared/spec/gemma4.md (weights
dequantized by gguf.quants, the oracle), a tolerance derived from the runtime's number
format with its reason, and its bytes and flops for the perf mode.

A runtime declares the ops it has in `capabilities.ops` and runs a case through
`run_op(case, inputs, repeat=0)` (g4c.runtime); conformance/test_ops.py runs the whole list
on every runtime, and

    python -m g4c.opcases --perf --runtime vulkan [--json FILE] [-k TEXT] [--repeat N]

runs it as a benchmark: each case checked against its expected output first, then GB/s
(bytes() over the best time) and GFLOP/s per case, as a table and optionally JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Callable

import numpy as np

from .config import LayerSpec

# every op a runtime may declare, with what it computes (the spec's equations, section 3)
OPS = {
    "dequantize": "a weight matrix in its GGML format to f32, (rows, cols)",
    "matvec": "y = W x for 1 to 16 vectors, W in its GGML format (decode): (n, rows)",
    "matmul": "y = W x for more than 16 vectors (prefill): (n, rows)",
    "rms_norm": "x / sqrt(mean(x^2) + eps) * w over each row or head; no w: the weightless V norm",
    "rope": "NEOX rotate-half RoPE at the rows' positions, theta_j = p * base^(-2j/n_rot) / ff_j",
    "attention": "softmax(scale * q.k) v over the keys each query sees (ring: the last W positions, "
                 "full: all up to its own), query head h on KV head h // (heads / kv_heads)",
    "softcap": "cap * tanh(x / cap)",
    "gelu_mul": "gelu_tanh(gate) * up, the FFN's product",
}
EVERY_OP = frozenset(OPS)
WEIGHT_OPS = ("dequantize", "matvec", "matmul")
MAX_MATVEC = 16  # matvec takes 1 to 16 vectors; more is matmul (prefill)
U32 = 2.0**-24  # f32 unit roundoff: RoPE angles are f32 in every engine, whatever its precision class


@dataclass(frozen=True)
class OpCase:
    """One op-level case. Its fields are its id; an op reads only the fields it names.

    Inputs (`inputs()`, float32 unless said) and the output, by op:
      dequantize   raw uint8 (rows, row_bytes)                        -> (rows, cols)
      matvec/matmul raw, x (n, cols)                                  -> (n, rows)
      rms_norm     x (n, heads, d), w (d,) unless norm == "none"      -> (n, heads, d)
      rope         x (n, heads, d), pos int32 (n,), freq_factors (d/2,) when freqs -> (n, heads, d)
      attention    q (n, heads, d), k and v (n_keys, kv_heads, d), kpos int32 (n_keys,),
                   qpos int32 (n,); keys at consecutive positions, the last n the queries'
                   own (stored before attending, as every runtime's cache does) -> (n, heads, d)
      softcap      x (n, cols)                                        -> (n, cols)
      gelu_mul     gate, up (n, cols)                                 -> (n, cols)
    """

    op: str
    qtype: str = "F32"  # weight format of dequantize, matvec, matmul
    rows: int = 0  # matrix rows (outputs of a matvec)
    cols: int = 0  # matrix columns (the dot length); row width of softcap and gelu_mul
    n: int = 1  # vectors, tokens or query rows
    heads: int = 1  # heads of rms_norm, rope and attention's queries
    kv_heads: int = 1  # attention's KV heads
    d: int = 0  # head dim (a weighted row norm's width); n_rot = d, as in Gemma 4
    norm: str = ""  # rms_norm: "row" (weight over the row), "head" (weight per head dim), "none" (weightless)
    base: float = 0.0  # RoPE frequency base
    freqs: bool = False  # RoPE: proportional frequency factors, 1 for the first n_rot/8 pairs, then 1e30 (spec 3.1)
    pos: int = 0  # position of the first row (RoPE; attention's first query)
    key_base: int = 0  # attention: the first position a full layer's cache holds
    window: int = 0  # attention: sliding window W, a ring of keys; 0 is a full layer
    scale: float = 1.0  # attention's score scale (Gemma 4: 1.0, q and k are normed)
    cap: float = 0.0  # softcap
    amp: float = 1.0  # input magnitude (rms_norm at 1e-3: mean(x^2) = eps, so eps must sit inside the sqrt)
    eps: float = 1e-6
    seed: int = 0

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r} (known: {', '.join(OPS)})")

    # -- identity ---------------------------------------------------------------------------
    @property
    def id(self) -> str:
        op = self.op
        if op == "dequantize":
            s = f"dequantize-{self.qtype}-{self.rows}x{self.cols}"
        elif op in ("matvec", "matmul"):
            s = f"{op}-{self.qtype}-{self.rows}x{self.cols}-n{self.n}"
        elif op == "rms_norm":
            s = f"rms_norm-{self.norm}-{self.n}x{self.heads}x{self.d}" + (f"-amp{self.amp:g}" if self.amp != 1 else "")
        elif op == "rope":
            s = f"rope-d{self.d}-h{self.heads}-b{self.base:.0f}{'-ff' if self.freqs else ''}-p{self.pos}-n{self.n}"
        elif op == "attention":
            kind = f"ring-W{self.window}" if self.window else "full" + (f"-base{self.key_base}" if self.key_base else "")
            s = f"attention-{kind}-d{self.d}-h{self.heads}kv{self.kv_heads}-n{self.n}-p{self.pos}"
        elif op == "softcap":
            s = f"softcap-{self.cap:g}-{self.n}x{self.cols}"
        else:
            s = f"{op}-{self.n}x{self.cols}"
        return s + (f"-s{self.seed}" if self.seed else "")

    def __str__(self) -> str:
        return self.id

    def params(self) -> dict:
        """The fields that make the id, as a dict: the op, its weight type, and every field off its default."""
        named = ("op", "qtype", "n") if self.op in ("matvec", "matmul") else ("op", "qtype") if self.op == "dequantize" else ("op",)
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default or f.name in named}

    @property
    def n_rot(self) -> int:
        return self.d

    def layer_spec(self) -> LayerSpec:
        """The layer this case's rope or attention belongs to, for runtimes that build their
        tables (inverse frequencies, masks) from a LayerSpec."""
        return LayerSpec(index=0, sliding=self.window > 0, head_dim=self.d, n_head_kv=self.kv_heads, rope_base=self.base,
                         n_rot=self.n_rot, uses_rope_freqs=self.freqs, rope_scale=1.0, has_v=True, n_ff=0,
                         has_output_scale=False, window=self.window, attn_scale=self.scale)

    # -- attention's keys -------------------------------------------------------------------
    @property
    def first_key(self) -> int:
        """Position of the first key held: a ring holds the W - 1 keys before the first query
        (the last W it sees, its own included); a full layer everything from key_base."""
        return max(self.key_base, self.pos - self.window + 1) if self.window else self.key_base

    @property
    def n_keys(self) -> int:
        return self.pos + self.n - self.first_key

    def visible(self, qpos: np.ndarray, kpos: np.ndarray) -> np.ndarray:
        """(n, n_keys) mask of spec section 3.2: causal, and the last W keys on a ring."""
        delta = qpos[:, None].astype(np.int64) - kpos[None, :]
        return (delta >= 0) & ((delta < self.window) if self.window else True)

    # -- data -------------------------------------------------------------------------------
    def inputs(self) -> dict[str, np.ndarray]:
        """The case's inputs, made from its seed (the same on every runtime), read-only."""
        from . import quants

        rng = np.random.default_rng(self.seed)
        f32 = np.float32
        op, out = self.op, {}
        if op in WEIGHT_OPS:
            w = rng.standard_normal((self.rows, self.cols)).astype(f32)
            out["raw"] = quants.quantize(w, quants.TYPE_NAMES[self.qtype])
            if op != "dequantize":
                out["x"] = rng.standard_normal((self.n, self.cols)).astype(f32)
        elif op == "rms_norm":
            out["x"] = (rng.standard_normal((self.n, self.heads, self.d)) * self.amp).astype(f32)
            if self.norm != "none":  # weights used as stored (no 1 + w), some negative
                out["w"] = (1.0 + 0.5 * rng.standard_normal(self.d)).astype(f32)
        elif op == "rope":
            # values +-1: every head has RMS exactly 1, so a runtime whose RoPE is fused behind
            # the q/k norm (cuda's qkv_prep) runs it with eps 0 and unit weights as the identity
            out["x"] = rng.choice(np.array([-1.0, 1.0], f32), (self.n, self.heads, self.d))
            out["pos"] = np.arange(self.pos, self.pos + self.n, dtype=np.int32)
            if self.freqs:
                half = self.n_rot // 2
                out["freq_factors"] = np.where(np.arange(half) < self.n_rot // 8, 1.0, 1e30).astype(f32)
        elif op == "attention":
            def normed(shape):  # per-head RMS 1, as k_norm and the V norm leave them
                a = rng.standard_normal(shape)
                return a / np.sqrt(np.mean(a * a, axis=-1, keepdims=True))

            # queries scaled so scores spread over a few units: a one-hot softmax would hide
            # errors in the weighted sum of values
            out["q"] = (normed((self.n, self.heads, self.d)) * (3.0 / math.sqrt(self.d))).astype(f32)
            out["k"] = normed((self.n_keys, self.kv_heads, self.d)).astype(f32)
            out["v"] = normed((self.n_keys, self.kv_heads, self.d)).astype(f32)
            out["kpos"] = np.arange(self.first_key, self.pos + self.n, dtype=np.int32)
            out["qpos"] = np.arange(self.pos, self.pos + self.n, dtype=np.int32)
        elif op == "softcap":
            x = rng.standard_normal((self.n, self.cols)) * self.cap
            x.flat[:4] = [0.0, 1e3, -1e3, 3e38]  # saturated, and where an exp-based tanh overflows
            out["x"] = x.astype(f32)
        elif op == "gelu_mul":
            g = rng.standard_normal((self.n, self.cols)) * 3
            g.flat[:4] = [0.0, 30.0, -30.0, -1e3]  # tanh saturated both ways
            out["gate"] = g.astype(f32)
            out["up"] = rng.standard_normal((self.n, self.cols)).astype(f32)
        for a in out.values():
            a.flags.writeable = False
        return out

    def expected(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The float64 output, from the spec's equations on the inputs, never from a runtime's
        code; weights dequantized by gguf.quants, the oracle."""
        f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
        op = self.op
        if op in WEIGHT_OPS:
            from gguf import quants as gguf_quants

            from .quants import TYPE_NAMES

            w = gguf_quants.dequantize(inputs["raw"], TYPE_NAMES[self.qtype]).reshape(self.rows, self.cols).astype(np.float64)
            return w if op == "dequantize" else f64(inputs["x"]) @ w.T
        if op == "rms_norm":
            x = f64(inputs["x"])
            y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps)
            return y * f64(inputs["w"]) if "w" in inputs else y
        if op == "rope":
            half = self.n_rot // 2
            ff = f64(inputs["freq_factors"]) if "freq_factors" in inputs else np.ones(half)
            theta = f64(inputs["pos"])[:, None] * self.base ** (-2.0 * np.arange(half) / self.n_rot) / ff
            c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
            x = f64(inputs["x"])
            x1, x2 = x[..., :half], x[..., half:self.n_rot]
            return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, x[..., self.n_rot:]], axis=-1)
        if op == "attention":
            q, k, v = f64(inputs["q"]), f64(inputs["k"]), f64(inputs["v"])
            vis = self.visible(inputs["qpos"], inputs["kpos"])  # (n, n_keys)
            group = self.heads // self.kv_heads
            out = np.empty_like(q)
            for h in range(self.heads):
                s = q[:, h] @ k[:, h // group].T * self.scale
                s = np.where(vis, s, -np.inf)
                p = np.exp(s - s.max(axis=1, keepdims=True))
                out[:, h] = (p / p.sum(axis=1, keepdims=True)) @ v[:, h // group]
            return out
        if op == "softcap":
            return self.cap * np.tanh(f64(inputs["x"]) / self.cap)
        g = f64(inputs["gate"])
        return 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3))) * f64(inputs["up"])

    # -- tolerance --------------------------------------------------------------------------
    def limit(self, tol, inputs: dict[str, np.ndarray]) -> tuple[float, str]:
        """(NMSE limit, why) for a runtime of precision class `tol` (g4c.tolerance): 4 e^2,
        e the typical relative error of a correct implementation in that number format (4 in
        NMSE is 2 in rms, as tolerance.hidden_nmse). f32 arithmetic (tol.accumulates) adds
        rounding per term of a sum, growing as sqrt(terms); f16 storage rounds each stored
        value once."""
        u = tol.unit_roundoff
        dot = (lambda k: math.sqrt(k)) if tol.accumulates else (lambda k: 1.0)
        op = self.op
        if op == "dequantize":
            # a value is d * scale * q - dmin * min: up to 4 roundings
            e, why = 4 * u, f"4 roundings per value (scales, products, the min), u = {u:.2g}"
        elif op in ("matvec", "matmul"):
            e, why = (dot(self.cols) + 4) * u, f"a {self.cols}-term dot product plus dequantization, u = {u:.2g}"
        elif op == "rms_norm":
            e, why = (dot(self.d) + 4) * u, f"a {self.d}-term mean of squares, rsqrt and 2 products, u = {u:.2g}"
        elif op == "rope":
            # an f32 angle p * f32(base^(-2j/n)) / ff is 3 roundings from exact: |d theta| <=
            # 3 u32 theta, a few hundredths of a radian at p = 262143 (spec 3.1), then cos,
            # sin, 2 products and a sum
            half = self.n_rot // 2
            ff = np.asarray(inputs.get("freq_factors", np.ones(half)), np.float64)
            theta = (self.pos + self.n - 1) * self.base ** (-2.0 * np.arange(half) / self.n_rot) / ff
            e = float(np.sqrt(np.mean((3 * U32 * theta + 4 * u) ** 2)))
            why = f"f32 angles up to {theta.max():.4g} rad: 3 roundings each (3 u32 theta), then 4 u, u = {u:.2g}"
        elif op == "attention":
            # a score's error is about u * sum_i |q_i k_i| (A, its largest: the rounding of d
            # products and partial sums, or of q and k stored), moving each probability by
            # that relative amount, twice over through exp and the normalizing sum; the
            # weighted sum of n_keys values adds sqrt(n_keys) u
            q, k = np.abs(inputs["q"]).astype(np.float64), np.abs(inputs["k"]).astype(np.float64)
            group = self.heads // self.kv_heads
            a = max(float((q[:, h] @ k[:, h // group].T).max()) for h in range(self.heads))
            e = (2 * a + dot(self.n_keys) + 4) * u
            why = f"scores of {self.d} terms (sum |q k| up to {a:.3g}), softmax and a {self.n_keys}-key sum, u = {u:.2g}"
        else:
            # a division or cubic, tanh (a few ulp in f32 libraries and GLSL), 2 or 3 products
            e, why = 8 * u, f"tanh (a few ulp) and up to 4 roundings per value, u = {u:.2g}"
        return 4 * e * e, f"{tol.precision}: {why}"

    # -- perf figures -----------------------------------------------------------------------
    def bytes(self) -> int:
        """Bytes the op must move at least: inputs read once, output written once (weights as
        stored; attention: every key and value held)."""
        from . import quants

        f = 4
        if self.op in WEIGHT_OPS:
            raw = self.rows * quants.layout(quants.TYPE_NAMES[self.qtype]).row_bytes(self.cols)
            if self.op == "dequantize":
                return raw + self.rows * self.cols * f
            return raw + self.n * (self.cols + self.rows) * f
        if self.op == "rms_norm":
            return 2 * self.n * self.heads * self.d * f + (0 if self.norm == "none" else self.d * f)
        if self.op == "rope":
            return 2 * self.n * self.heads * self.d * f + self.n * 4
        if self.op == "attention":
            return (2 * self.n * self.heads * self.d + 2 * self.n_keys * self.kv_heads * self.d) * f + self.n_keys * 4
        if self.op == "softcap":
            return 2 * self.n * self.cols * f
        return 3 * self.n * self.cols * f

    def flops(self) -> int:
        """Floating-point operations, a multiply-add counted as 2 and tanh, exp or rsqrt as 1."""
        if self.op == "dequantize":
            return 2 * self.rows * self.cols
        if self.op in ("matvec", "matmul"):
            return 2 * self.n * self.rows * self.cols
        if self.op == "rms_norm":
            return 4 * self.n * self.heads * self.d
        if self.op == "rope":
            return 3 * self.n * self.heads * self.d
        if self.op == "attention":
            qpos = np.arange(self.pos, self.pos + self.n)
            seen = int(self.visible(qpos, np.arange(self.first_key, self.pos + self.n)).sum())
            return seen * self.heads * (4 * self.d + 4)
        if self.op == "softcap":
            return 3 * self.n * self.cols
        return 9 * self.n * self.cols


def _weight_cases() -> list[OpCase]:
    from .quants import SUPPORTED_TYPES, LAYOUTS

    out = []
    for t in SUPPORTED_TYPES:
        # K-quants take whole 256-weight blocks; the others 288 columns (9 blocks of 32), so
        # rows start off every 8-byte boundary (the vulkan wide path realigns them); 67 rows
        # leave a partial workgroup
        cols = 512 if LAYOUTS[t].block_size == 256 else 288
        out.append(OpCase("dequantize", t.name, rows=16, cols=cols))
        out += [OpCase("matvec", t.name, rows=67, cols=cols, n=n) for n in (1, 4)]
        out.append(OpCase("matmul", t.name, rows=67, cols=cols, n=40))
    out += [OpCase("matvec", q, rows=67, cols=512, n=n) for q, n in (("Q4_0", 16), ("Q6_K", 16), ("F32", 16), ("Q8_0", 3))]
    out += [OpCase("matmul", "Q4_K", rows=96, cols=512, n=70), OpCase("matmul", "F16", rows=67, cols=288, n=17)]
    return out


def _cases() -> list[OpCase]:
    cases = _weight_cases()
    cases += [
        OpCase("rms_norm", norm="row", n=4, d=768),  # the residual stream's norms
        OpCase("rms_norm", norm="row", n=1, d=3840),  # the 12B's width
        OpCase("rms_norm", norm="row", n=2, d=256, amp=1e-3),
        OpCase("rms_norm", norm="head", n=4, heads=16, d=256),  # q_norm and k_norm, per head
        OpCase("rms_norm", norm="head", n=2, heads=8, d=512),
        OpCase("rms_norm", norm="none", n=4, heads=8, d=256),  # the weightless V norm
        OpCase("rms_norm", norm="none", n=3, heads=1, d=512),
    ]
    for d, base, freqs in ((256, 1e4, False), (512, 1e6, True)):  # the 12B's sliding and full layers
        cases += [OpCase("rope", d=d, heads=2, base=base, freqs=freqs, pos=0, n=4),
                  OpCase("rope", d=d, heads=2, base=base, freqs=freqs, pos=4096, n=2),
                  OpCase("rope", d=d, heads=2, base=base, freqs=freqs, pos=262140, n=4)]
    cases += [OpCase("rope", d=64, heads=4, base=1e4, pos=131072, n=2), OpCase("rope", d=128, heads=8, base=1e6, pos=7, n=3)]
    # attention: a full layer at every head dim (GQA groups of 2), then the ring with
    # wrap-around, the 12B's MQA full layer (16 query heads on 1 KV head, d 512) and a
    # cache that begins past 0
    cases += [OpCase("attention", d=d, heads=4, kv_heads=2, n=2, pos=40) for d in (16, 32, 64, 128, 256, 512)]
    cases += [
        OpCase("attention", d=256, heads=4, kv_heads=2, n=1, window=32, pos=100),
        OpCase("attention", d=64, heads=8, kv_heads=8, n=8, window=32, pos=90),
        OpCase("attention", d=16, heads=2, kv_heads=1, n=4, window=8, pos=70),
        OpCase("attention", d=128, heads=4, kv_heads=1, n=4, window=32, pos=262140),
        OpCase("attention", d=512, heads=16, kv_heads=1, n=1, pos=300),
        OpCase("attention", d=128, heads=8, kv_heads=4, n=3, pos=1040, key_base=1000),
    ]
    cases += [OpCase("softcap", cap=30.0, n=1, cols=4096), OpCase("softcap", cap=30.0, n=4, cols=1000),
              OpCase("gelu_mul", n=1, cols=4096), OpCase("gelu_mul", n=4, cols=1536)]
    return cases


CASES: list[OpCase] = _cases()
BY_ID: dict[str, OpCase] = {c.id: c for c in CASES}
assert len(BY_ID) == len(CASES), "op case ids must be unique"


@lru_cache(maxsize=None)
def prepared(case: OpCase) -> tuple[dict, np.ndarray]:
    """(inputs, expected output) of a case, made once per process for every runtime."""
    inputs = case.inputs()
    return inputs, case.expected(inputs)


# -- comparison --------------------------------------------------------------------------------
AXES = {"dequantize": ("row", "col"), "matvec": ("vector", "row"), "matmul": ("vector", "row"),
        "rms_norm": ("row", "head", "dim"), "rope": ("row", "head", "dim"), "attention": ("query", "head", "dim"),
        "softcap": ("row", "col"), "gelu_mul": ("row", "col")}


@dataclass(frozen=True)
class OpReport:
    nmse: float
    limit: float
    max_abs: float
    first_large: str | None  # where the first element beyond the rms allowance is, and its values
    why: str

    @property
    def ok(self) -> bool:
        return self.nmse <= self.limit  # False for NaN

    def line(self) -> str:
        return (f"NMSE {self.nmse:.3g} (limit {self.limit:.3g}; {self.why}), max |error| {self.max_abs:.3g}"
                + (f"; first large difference at {self.first_large}" if self.first_large else ""))


def compare(case: OpCase, got, want: np.ndarray, tol, inputs: dict) -> OpReport:
    """The runtime's output against the expected one: NMSE against the case's limit, the
    largest error, and the first element (in memory order) whose error exceeds the rms
    allowance sqrt(limit) * rms(expected) (an error of that size everywhere is the limit)."""
    limit, why = case.limit(tol, inputs)
    got = np.asarray(got, np.float64)
    if got.size != want.size:
        raise AssertionError(f"{case.id}: output of {got.shape} where {want.shape} is expected")
    got = got.reshape(want.shape)
    err = np.abs(got - want)
    err = np.where(np.isfinite(err), err, np.inf)
    den = float(np.sum(want * want))
    e = float(np.sum((got - want) ** 2) / den) if np.isfinite(err).all() else math.inf
    allowance = math.sqrt(limit * den / want.size)
    large = np.flatnonzero(err.reshape(-1) > allowance)
    where = None
    if large.size:
        idx = np.unravel_index(int(large[0]), want.shape)
        where = (", ".join(f"{a} {i}" for a, i in zip(AXES[case.op], idx)) +
                 f": {got[idx]:.7g} vs {want[idx]:.7g} (allowance {allowance:.3g}; {large.size} such)")
    return OpReport(e, limit, float(err.max()), where, why)


def timed(run: Callable[[], None], read: Callable[[], np.ndarray], repeat: int) -> tuple[np.ndarray, list[float]]:
    """What run_op returns from a runtime's prepared op: run it, read its output, then time
    `repeat` more runs (each must wait for its device)."""
    run()
    out = read()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return out, times


def unsupported(rt, case: OpCase) -> str | None:
    """Why the runtime declares it cannot run the case (its op, or its weight type), or None."""
    from .runtime import capabilities

    caps = capabilities(rt)
    if case.op not in caps.ops:
        return f"runtime {rt.name} declares no op-level {case.op}"
    if case.op in WEIGHT_OPS and not caps.reads(case.qtype):
        return f"runtime {rt.name} declares no support for weight type {case.qtype}"
    return None


# -- perf mode ---------------------------------------------------------------------------------
def perf(rt, cases: list[OpCase], repeat: int, echo=print) -> list[dict]:
    """Each case checked, then timed: one entry per case, as the JSON holds them."""
    from . import tolerance
    from .errors import UnsupportedModelError

    tol = tolerance.for_runtime(rt)
    rows = []
    echo(f"{'case':<46} {'outcome':<13} {'GB/s':>9} {'GFLOP/s':>9} {'best us':>10} {'NMSE':>9}")
    for case in cases:
        entry = {"id": case.id, "op": case.op, "params": case.params(), "bytes": case.bytes(), "flops": case.flops()}
        reason = unsupported(rt, case)
        if reason is None:
            inputs, want = prepared(case)
            try:
                t = time.perf_counter()
                got, times = rt.run_op(case, inputs, repeat=repeat)
                call = time.perf_counter() - t
            except UnsupportedModelError as e:
                reason = str(e)
        if reason is not None:
            entry.update(outcome="not_supported", reason=reason)
            echo(f"{case.id:<46} {'not supported':<13}")
            rows.append(entry)
            continue
        rep = compare(case, got, want, tol, inputs)
        timing = "op"
        if len(times) < repeat:  # the runtime times no op alone: whole calls, transfers included
            timing, times = "call", [call]
            for _ in range(repeat - 1):
                t = time.perf_counter()
                rt.run_op(case, inputs)
                times.append(time.perf_counter() - t)
        best = min(times) if times else math.nan
        entry.update(outcome="passed" if rep.ok else "failed", nmse=rep.nmse, nmse_limit=rep.limit, max_abs=rep.max_abs,
                     timing=timing, seconds=times, best_s=best, median_s=float(np.median(times)) if times else math.nan,
                     gb_per_s=case.bytes() / best / 1e9, gflop_per_s=case.flops() / best / 1e9)
        if not rep.ok:
            entry["message"] = rep.line()
        echo(f"{case.id:<46} {entry['outcome']:<13} {entry['gb_per_s']:>9.3f} {entry['gflop_per_s']:>9.3f} "
             f"{best * 1e6:>10.1f} {rep.nmse:>9.2g}")
        rows.append(entry)
    return rows


def main(argv: list[str] | None = None) -> int:
    from . import provenance
    from . import runtime as registry
    from .errors import G4CError

    p = argparse.ArgumentParser(prog="python -m g4c.opcases", description=__doc__.split("\n\n")[0])
    p.add_argument("--perf", action="store_true", help="check and time every case (else: list the cases)")
    p.add_argument("--runtime", help="runtime to run (with --perf)")
    p.add_argument("--json", help="write the perf results here")
    p.add_argument("-k", dest="match", default="", help="only cases whose id contains this text")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per case after the checked one (default: %(default)s)")
    args = p.parse_args(argv)
    cases = [c for c in CASES if args.match in c.id]
    if not args.perf:
        for c in cases:
            print(f"{c.id:<46} {c.bytes():>10} B {c.flops():>12} flop")
        return 0
    if not args.runtime:
        p.error("--perf needs --runtime")
    try:
        rt = registry.select([args.runtime])[args.runtime]
    except G4CError as e:
        print(f"g4c.opcases: error: {e}", file=sys.stderr)
        return 2
    rows = perf(rt, cases, args.repeat)
    failed = [r["id"] for r in rows if r["outcome"] == "failed"]
    if args.json:
        prov = provenance.record({args.runtime: rt})
        doc = {"suite": "gemma4-conformance", "kind": "op-perf", "format": 1, "created": prov["created"],
               "provenance": prov, "runtime": args.runtime, "repeat": args.repeat, "cases": rows}
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, default=float)
        os.replace(tmp, args.json)
    if failed:
        print(f"{len(failed)} case(s) computed the wrong result: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
