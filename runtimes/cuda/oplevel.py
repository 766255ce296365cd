"""The CUDA runtime's ops at op level (g4c.opcases), through the kernels and launchers its
forward uses (Kernels in runtime.py), on a GPU or on the emulator.

Two ops exist only fused in the forward, and run here in their fused kernel:
- RoPE is the second half of qkv_prep (the per-head norm, then the rotation). The rope cases'
  inputs are +-1, so every head has RMS exactly 1 and the norm, run with eps 0 and unit
  weights, is the identity in f32; other inputs are refused.
- Attention is attention_split (over the cached keys and the batch's own) and
  attention_combine; the cache holds the keys before the first query, in a ring of W slots
  (slot = position mod W) on a sliding layer or one slot per position from the base on a
  full layer, and the queries' own keys come from the batch, as in CudaSession. The
  combine's cache store is turned off (slot -1), so repeated runs read the same cache.
"""

from __future__ import annotations

import numpy as np

from g4c import quants
from g4c.errors import UnsupportedModelError
from g4c.opcases import OpCase, timed
from g4c.rope import inv_freq_f32

from .runtime import ATT_KEYS_PER_SPLIT, ATT_MAX_SPLIT, ATT_WARPS, head_dim_refusal

F32 = np.float32


def run_op(k, case: OpCase, inputs: dict, repeat: int = 0) -> tuple[np.ndarray, list[float]]:
    cp = k.cp
    launch, shape = _prepare(k, case, inputs)
    last = {}

    def run() -> None:
        last["y"] = launch()
        sync = getattr(cp.cuda.Device(), "synchronize", None)  # the emulator's launches finish when they return
        if sync:
            sync()

    return timed(run, lambda: cp.asnumpy(last["y"]).reshape(shape), repeat)


def _prepare(k, case: OpCase, inputs: dict):
    """(a function launching the op on device-resident inputs and returning its output, the
    output's shape)."""
    cp, op = k.cp, case.op
    if op in ("dequantize", "matvec", "matmul"):
        m = k.upload(inputs["raw"], quants.TYPE_NAMES[case.qtype], case.cols)  # repacked as the runtime's weights are
        rows = m.n_rows
        if op == "dequantize":
            return (lambda: k.dequant(m)), (rows, case.cols)
        x = cp.asarray(inputs["x"])
        if op == "matvec":
            return (lambda: k.matvec(m, x)), (case.n, rows)
        # prefill, as CudaSession._mm_w: the prefill path's product (cuBLAS)
        return (lambda: k.matmul(m, x)), (case.n, rows)
    if op == "rms_norm":
        x = inputs["x"]
        x2 = cp.asarray(x.reshape(-1, case.d))
        w = cp.asarray(inputs["w"]) if "w" in inputs else np.uintp(0)  # a null weight: the weightless norm
        return (lambda: k.rms_norm(x2, w, case.eps)), x.shape
    if op == "rope":
        return _rope(k, case, inputs)
    if op == "attention":
        return _attention(k, case, inputs)
    if op == "softcap":
        x = cp.asarray(inputs["x"])  # capped in place
        return (lambda: k.softcap(x, case.cap)), inputs["x"].shape
    gu = cp.asarray(np.concatenate([inputs["gate"], inputs["up"]], 1))  # the fused gate and up projection's layout
    return (lambda: k.gelu_mul(gu)), inputs["gate"].shape


def _rope(k, case: OpCase, inputs: dict):
    cp, x = k.cp, inputs["x"]
    if not np.all(np.abs(x) == 1):
        raise UnsupportedModelError("the cuda runtime's RoPE runs fused behind the q/k norm (qkv_prep): op cases whose "
                                    "heads have RMS exactly 1 only")
    n, H, d = x.shape
    qkv = cp.asarray(x.reshape(n, H * d))
    ones, unused = cp.asarray(np.ones(d, F32)), cp.empty(1, cp.float32)
    pos = cp.asarray(inputs["pos"].astype(np.int32))
    inv = cp.asarray(inv_freq_f32(case.layer_spec(), inputs.get("freq_factors")))
    q = cp.empty((n, H, d), cp.float32)
    fn = k.fn("qkv_prep")
    # every head a q head (no k or v heads): normed with eps 0 and unit weights, then rotated
    args = (qkv, np.int64(H * d), np.int32(H * d), np.int32(H * d), ones, ones, q, unused, unused, pos, inv,
            np.int32(H), np.int32(0), np.int32(d), np.int32(case.n_rot), np.float32(0.0), np.int32(0))

    def launch():
        fn((n, H), (128,), args)
        return q

    return launch, x.shape


def _attention(k, case: OpCase, inputs: dict):
    cp = k.cp
    d, H, Hkv, n = case.d, case.heads, case.kv_heads, case.n
    if head_dim_refusal(d):
        raise UnsupportedModelError(head_dim_refusal(d))
    kpos = inputs["kpos"].astype(np.int64)
    base, p0 = case.key_base, case.pos
    cached = kpos[:-n]  # the keys before the first query; the queries' own come from the batch
    n_slots = case.window if case.window else case.n_keys
    slots = cached % n_slots if case.window else cached - base
    k_cache, v_cache = np.zeros((1, n_slots, Hkv, d), F32), np.zeros((1, n_slots, Hkv, d), F32)
    k_cache[0, slots], v_cache[0, slots] = inputs["k"][:-n], inputs["v"][:-n]
    last = case.pos + n - 1
    max_keys = min(case.window, last - base + 1) if case.window else last - base + 1
    n_split = max(1, min(ATT_MAX_SPLIT, -(-max_keys // ATT_KEYS_PER_SPLIT)))
    dev = {name: cp.asarray(a) for name, a in {
        "q": inputs["q"], "k": inputs["k"][-n:], "v": inputs["v"][-n:], "kc": k_cache, "vc": v_cache,
        "pos": inputs["qpos"].astype(np.int32), "seq": np.zeros(n, np.int32), "base": np.array([base], np.int32),
        "p0": np.array([p0], np.int32), "no_store": np.full(n, -1, np.int64)}.items()}
    part = cp.empty((n, H, n_split, d + 2), cp.float32)
    out = cp.empty((n, H, d), cp.float32)
    split, combine = k.fn("attention_split"), k.fn("attention_combine")

    def launch():
        split((n, H, n_split), (32 * ATT_WARPS,), (
            dev["q"], dev["k"], dev["v"], dev["kc"], dev["vc"], part, dev["pos"], dev["seq"], dev["base"], dev["p0"],
            np.int32(H), np.int32(Hkv), np.int32(d), np.int32(n_slots), np.int32(case.window), np.float32(case.scale),
            np.int32(case.window > 0), np.int32(n_split)))
        combine((n, H), (128,), (part, out, np.int32(H), np.int32(d), np.int32(n_split), dev["k"], dev["v"], dev["kc"],
                                 dev["vc"], dev["no_store"], dev["seq"], np.int32(Hkv), np.int32(n_slots)))
        return out

    return launch, (n, H, d)
