"""GGML weight formats: block layouts, vectorized dequantization, and quantizers for fixtures.

One small function per type, shapes spelled out, in the manner of gguf-py's quants.py.
`gguf.quants.dequantize` is the oracle these functions are tested against; runtimes use
the layouts here (block size, bytes per block) rather than restating them.

Every dequantizer takes a uint8 array of shape (rows, blocks_per_row * type_size) and
returns float32 of shape (rows, blocks_per_row * block_size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import quants as gguf_quants

from .errors import UnsupportedQuantError

QK_K = 256


@dataclass(frozen=True)
class BlockLayout:
    qtype: QT
    block_size: int  # weights per block
    type_size: int  # bytes per block

    def row_bytes(self, n_cols: int) -> int:
        return n_cols // self.block_size * self.type_size


LAYOUTS: dict[QT, BlockLayout] = {
    QT.F32: BlockLayout(QT.F32, 1, 4),
    QT.F16: BlockLayout(QT.F16, 1, 2),
    QT.BF16: BlockLayout(QT.BF16, 1, 2),
    QT.Q8_0: BlockLayout(QT.Q8_0, 32, 34),  # f16 d, int8 qs[32]
    QT.Q4_0: BlockLayout(QT.Q4_0, 32, 18),  # f16 d, qs[16]: low nibbles = 0..15, high = 16..31
    QT.Q5_0: BlockLayout(QT.Q5_0, 32, 22),  # f16 d, u32 qh (5th bits), qs[16]
    QT.Q4_K: BlockLayout(QT.Q4_K, QK_K, 144),  # f16 d, f16 dmin, scales[12], qs[128]
    QT.Q5_K: BlockLayout(QT.Q5_K, QK_K, 176),  # f16 d, f16 dmin, scales[12], qh[32], qs[128]
    QT.Q6_K: BlockLayout(QT.Q6_K, QK_K, 210),  # ql[128], qh[64], int8 scales[16], f16 d
}

SUPPORTED_TYPES = tuple(LAYOUTS)
TYPE_NAMES = {qt.name: qt for qt in SUPPORTED_TYPES}


def layout(qtype: QT, what: str = "tensor") -> BlockLayout:
    try:
        return LAYOUTS[QT(qtype)]
    except (KeyError, ValueError):
        name = getattr(qtype, "name", str(qtype))
        raise UnsupportedQuantError(
            f"{what}: GGML type {name} is not supported (supported: {', '.join(TYPE_NAMES)})"
        ) from None


def _f16(raw: np.ndarray) -> np.ndarray:
    """(rows, nb, 2) uint8 -> (rows, nb, 1) float32."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _blocks(rows: np.ndarray, lay: BlockLayout) -> np.ndarray:
    return rows.reshape(rows.shape[0], -1, lay.type_size)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., n) bytes -> (..., 2, n): low nibbles first, then high nibbles."""
    return np.stack([qs & 0x0F, qs >> 4], axis=-2)


def _kquant_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack the 12-byte 6-bit scale/min table of Q4_K/Q5_K: (rows, nb, 12) -> 2 x (rows, nb, 8)."""
    d, m, hi = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = np.concatenate([d & 0x3F, (hi & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (hi >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def dequant_f32(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows).view(np.float32)


def dequant_f16(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows).view(np.float16).astype(np.float32)


def dequant_bf16(rows: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(rows).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def dequant_q8_0(rows: np.ndarray) -> np.ndarray:
    b = _blocks(rows, LAYOUTS[QT.Q8_0])  # (r, nb, 34)
    d = _f16(b[..., 0:2])
    q = np.ascontiguousarray(b[..., 2:]).view(np.int8).astype(np.float32)  # (r, nb, 32)
    return (d * q).reshape(rows.shape[0], -1)


def dequant_q4_0(rows: np.ndarray) -> np.ndarray:
    b = _blocks(rows, LAYOUTS[QT.Q4_0])  # (r, nb, 18)
    d = _f16(b[..., 0:2])
    q = _nibbles(b[..., 2:]).reshape(*b.shape[:2], 32).astype(np.float32) - 8.0
    return (d * q).reshape(rows.shape[0], -1)


def dequant_q5_0(rows: np.ndarray) -> np.ndarray:
    b = _blocks(rows, LAYOUTS[QT.Q5_0])  # (r, nb, 22)
    d = _f16(b[..., 0:2])
    qh = np.unpackbits(b[..., 2:6], axis=-1, bitorder="little")  # (r, nb, 32): bit i -> weight i
    ql = _nibbles(b[..., 6:]).reshape(*b.shape[:2], 32)
    q = (ql | (qh << 4)).astype(np.float32) - 16.0
    return (d * q).reshape(rows.shape[0], -1)


def dequant_q4_k(rows: np.ndarray) -> np.ndarray:
    b = _blocks(rows, LAYOUTS[QT.Q4_K])  # (r, nb, 144)
    d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    sc, mn = _kquant_scale_min(b[..., 4:16])
    # 4 chunks of 32 bytes; chunk c holds sub-block 2c in low nibbles and 2c+1 in high nibbles
    qs = b[..., 16:].reshape(*b.shape[:2], 4, 32)
    q = _nibbles(qs).reshape(*b.shape[:2], 8, 32).astype(np.float32)
    w = (d * sc)[..., None] * q - (dmin * mn)[..., None]
    return w.reshape(rows.shape[0], -1)


def dequant_q5_k(rows: np.ndarray) -> np.ndarray:
    b = _blocks(rows, LAYOUTS[QT.Q5_K])  # (r, nb, 176)
    d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    sc, mn = _kquant_scale_min(b[..., 4:16])
    qh = b[..., 16:48]  # bit j of qh[i] is the 5th bit of sub-block j, weight i
    qs = b[..., 48:].reshape(*b.shape[:2], 4, 32)
    ql = _nibbles(qs).reshape(*b.shape[:2], 8, 32)
    hi = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # (r, nb, 8, 32)
    q = (ql | (hi << 4)).astype(np.float32)
    w = (d * sc)[..., None] * q - (dmin * mn)[..., None]
    return w.reshape(rows.shape[0], -1)


def dequant_q6_k(rows: np.ndarray) -> np.ndarray:
    b = _blocks(rows, LAYOUTS[QT.Q6_K])  # (r, nb, 210)
    r, nb = b.shape[:2]
    # two halves of 128 weights: ql 64 bytes each (low nibbles = weights 0..63, high = 64..127),
    # qh 32 bytes each (bits 2c..2c+1 of byte i = weight 32c + i)
    ql = _nibbles(b[..., 0:128].reshape(r, nb, 2, 64)).reshape(r, nb, 2, 4, 32)
    qh = b[..., 128:192].reshape(r, nb, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[:, None]
    q = (ql | ((qh & 3) << 4)).astype(np.float32) - 32.0  # (r, nb, 2, 4, 32)
    scales = np.ascontiguousarray(b[..., 192:208]).view(np.int8).astype(np.float32)  # (r, nb, 16)
    d = _f16(b[..., 208:210])
    w = q.reshape(r, nb, 16, 16) * (d * scales)[..., None]
    return w.reshape(r, -1)


DEQUANTIZERS: dict[QT, Callable[[np.ndarray], np.ndarray]] = {
    QT.F32: dequant_f32,
    QT.F16: dequant_f16,
    QT.BF16: dequant_bf16,
    QT.Q8_0: dequant_q8_0,
    QT.Q4_0: dequant_q4_0,
    QT.Q5_0: dequant_q5_0,
    QT.Q4_K: dequant_q4_k,
    QT.Q5_K: dequant_q5_k,
    QT.Q6_K: dequant_q6_k,
}


def dequantize(raw: np.ndarray, qtype: QT, n_cols: int) -> np.ndarray:
    """Raw bytes of whole rows -> float32 (rows, n_cols)."""
    lay = layout(qtype)
    rows = np.asarray(raw).reshape(-1, lay.row_bytes(n_cols))
    if rows.dtype != np.uint8:
        rows = rows.view(np.uint8)
    return DEQUANTIZERS[lay.qtype](rows)


# ---------------------------------------------------------------------------------------
# Quantizers, for writing fixtures. gguf.quants covers the legacy types; the K-quants are
# ours (gguf-py 0.19 raises NotImplementedError for them) and tested against its
# dequantizer. They aim for valid blocks with small error, not for llama.cpp's exact
# rounding choices.


def _pack_kquant_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Inverse of _kquant_scale_min: 2 x (n, 8) ints in 0..63 -> (n, 12) bytes."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 0x3F) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return out


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _kquant_affine(blocks: np.ndarray, nmax: int):
    """Per 32-weight sub-block affine fit w ~ d*sc*q - dmin*m with q in 0..nmax."""
    sub = blocks.reshape(-1, 8, 32)
    lo = np.minimum(sub.min(axis=-1), 0.0)
    hi = sub.max(axis=-1)
    scale = (hi - lo) / nmax
    d = (scale.max(axis=-1) / 63).astype(np.float16).astype(np.float32)
    dmin = ((-lo).max(axis=-1) / 63).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.clip(np.rint(scale / d[:, None]), 0, 63), 0)
        mn = np.where(dmin[:, None] > 0, np.clip(np.rint(-lo / dmin[:, None]), 0, 63), 0)
        step = (d[:, None] * sc)[..., None]
        q = np.where(step > 0, np.rint((sub + (dmin[:, None] * mn)[..., None]) / step), 0)
    q = np.clip(q, 0, nmax).astype(np.uint8)
    return d, dmin, sc, mn, q


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, sc, mn, q = _kquant_affine(blocks, 15)
    q = q.reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _pack_kquant_scales(sc, mn), qs], axis=1)


def quantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, sc, mn, q = _kquant_affine(blocks, 31)
    hi = (q >> 4) & 1  # (n, 8, 32)
    qh = np.zeros((q.shape[0], 32), np.uint8)
    for j in range(8):
        qh |= hi[:, j] << j
    ql = (q & 0x0F).reshape(-1, 4, 2, 32)
    qs = (ql[:, :, 0] | (ql[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate(
        [_f16_bytes(d), _f16_bytes(dmin), _pack_kquant_scales(sc, mn), qh, qs], axis=1
    )


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    sub = blocks.reshape(-1, 16, 16)
    amax = np.abs(sub).max(axis=-1)
    scale = amax / 31
    d = (scale.max(axis=-1) / 127).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.clip(np.rint(scale / d[:, None]), -128, 127), 0)
        step = (d[:, None] * sc)[..., None]
        q = np.where(step > 0, np.rint(sub / step), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # halves, chunks
    low = q & 0x0F
    ql = (low[:, :, 0:2] | (low[:, :, 2:4] << 4)).reshape(-1, 128)
    hi = q >> 4
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(-1, 64)
    scales = sc.astype(np.int8).view(np.uint8)
    return np.concatenate([ql, qh, scales, _f16_bytes(d)], axis=1)


_KQUANTIZERS = {QT.Q4_K: quantize_q4_k, QT.Q5_K: quantize_q5_k, QT.Q6_K: quantize_q6_k}


def quantize(weights: np.ndarray, qtype: QT) -> np.ndarray:
    """float32 (rows, n_cols) -> raw uint8 (rows, row_bytes), through gguf.quants where it can."""
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    lay = layout(qtype)
    if lay.qtype in _KQUANTIZERS:
        blocks = weights.reshape(-1, lay.block_size)
        return _KQUANTIZERS[lay.qtype](blocks).reshape(weights.shape[0], -1)
    if lay.qtype == QT.F32:
        return weights.view(np.uint8).reshape(weights.shape[0], -1)
    if lay.qtype == QT.F16:
        return weights.astype(np.float16).view(np.uint8).reshape(weights.shape[0], -1)
    return gguf_quants.quantize(weights, lay.qtype)


def random_blocks(rng: np.random.Generator, n_rows: int, n_cols: int, qtype: QT, std: float) -> np.ndarray:
    """Valid random blocks whose weights have roughly standard deviation `std` and mean 0,
    written directly (no float weights, no quantization): how the 12B-sized preset stays fast.

    Uniform random codes are not centred: Q4_0's nibbles 0..15 stand for -8..7, Q8_0's and
    Q6_K's codes likewise, a mean of -0.5 steps. With every scale positive, each matrix then
    carries a common all-ones component, which over 48 layers took 99.6% of the residual
    stream's energy: every position gave the same logits, and an attention bug moved them by
    nothing a test could see. Each block's (Q6_K: sub-block's) scale gets a random sign; Q4_K's
    mins centre each sub-block."""
    lay = layout(qtype)
    nb = n_rows * n_cols // lay.block_size
    raw = np.frombuffer(rng.bytes(nb * lay.type_size), np.uint8).reshape(nb, lay.type_size).copy()
    if lay.qtype in (QT.Q4_0, QT.Q8_0):
        # uniform nibbles in 0..15 minus 8 have std 4.6; uniform int8, 73.9
        sign = rng.choice(np.array([-1.0, 1.0], np.float32), nb)
        raw[:, 0:2] = _f16_bytes(sign * np.float32(std / (4.6 if lay.qtype == QT.Q4_0 else 73.9)))
    elif lay.qtype == QT.Q6_K:
        # uniform q in -32..31 has std 18.5; sub-block scales +-(1..8), mean square 25.5
        sign = rng.choice(np.array([-1, 1], np.int16), (nb, 16))
        raw[:, 192:208] = ((raw[:, 192:208] % 8 + 1).astype(np.int16) * sign).astype(np.int8).view(np.uint8)
        raw[:, 208:210] = _f16_bytes(np.full(nb, std / (18.5 * 5.05), np.float32))
    elif lay.qtype == QT.Q4_K:
        # w = d * sc * q - dmin * m per 32-weight sub-block, q uniform in 0..15 (std 4.6): sub-
        # scales 1..8 (mean square 25.5) and each min m = round(7.5 sc) with dmin = d, so a
        # sub-block's weights are d * (sc q - m), centred; the super-block's d a random sign
        sc = raw[:, 4:12].astype(np.int64) % 8 + 1
        m = np.rint(7.5 * sc).astype(np.int64)
        raw[:, 4:16] = _pack_kquant_scales(sc, m)
        d = _f16_bytes(rng.choice(np.array([-1.0, 1.0], np.float32), nb) * np.float32(std / (4.6 * 5.05)))
        raw[:, 0:2], raw[:, 2:4] = d, d
    else:
        raise UnsupportedQuantError(f"random blocks are not implemented for {lay.qtype.name}")
    return raw.reshape(n_rows, -1)
