"""The OpenCL runtime's ops at op level (g4c.opcases): each case one launch (per row chunk) of
the kernel the forward enqueues for that op, on the device's matvec path (Device.path), with
the arguments OpenCLSession passes. Inputs go to device buffers first, so a timed run is the
launch alone, waited for.

Attention reads a KV cache as the session lays it out for one sequence: a ring of
W + UBATCH slots (slot = position mod capacity) on a sliding layer, one slot per position
from the first held (slot = position - base) on a full layer, every other slot empty
(position -1).
"""

from __future__ import annotations

import numpy as np

from g4c import quants
from g4c.errors import UnsupportedModelError
from g4c.opcases import OpCase, timed
from g4c.rope import inv_freq_f32
from g4c.slots import attention_cache, cs_table

from .runtime import GELU_MUL, SOFTCAP, UBATCH, Kernels, _Matrix, head_dim_refusal

F32 = np.float32


def run_op(dev, case: OpCase, inputs: dict, repeat: int = 0) -> tuple[np.ndarray, list[float]]:
    launch, out, shape = _prepare(dev, Kernels(dev), case, inputs)

    def run():
        launch()
        dev.finish()

    return timed(run, lambda: dev.read(out, F32, int(np.prod(shape))).reshape(shape), repeat)


def _prepare(dev, k: Kernels, case: OpCase, inputs: dict):
    """(a function that enqueues the op, its output buffer, the output's shape)."""
    op = case.op
    put = lambda a: dev.buffer(np.asarray(a).nbytes, np.ascontiguousarray(a))  # noqa: E731
    if op in ("dequantize", "matvec", "matmul"):
        qt = quants.TYPE_NAMES[case.qtype]
        raw = inputs["raw"]
        rows = raw.shape[0]
        m = _Matrix(dev, f"op case {case}", raw, qt, case.cols)
        if op == "dequantize":
            out = dev.buffer(rows * case.cols * 4)
            return lambda: k.dequant(m, out, rows), out, (rows, case.cols)
        n = case.n
        x, y = put(inputs["x"]), dev.buffer(n * rows * 4)
        return lambda: k.matrix(m, x, y, n), y, (n, rows)
    if op == "rms_norm":
        x = inputs["x"]
        seg = x.shape[0] * x.shape[1]
        bx, by = put(x), dev.buffer(x.nbytes)
        bw = put(inputs["w"]) if "w" in inputs else None
        return lambda: k.rms_norm(bx, by, bw, case.d, seg, float(case.eps)), by, x.shape
    if op == "rope":
        x, pos = inputs["x"], inputs["pos"]
        n, heads, d = x.shape
        cs = cs_table(pos, inv_freq_f32(case.layer_spec(), inputs.get("freq_factors")))
        bx, bcs = put(x), put(cs)
        return lambda: k.rope(bx, bcs, n, heads, d, case.n_rot), bx, x.shape
    if op == "attention":
        return _attention(dev, k, case, inputs, put)
    if op == "softcap":
        x = inputs["x"]
        a = put(x)
        return lambda: k.elementwise(a, a, x.size, SOFTCAP, float(case.cap)), a, x.shape
    gate = inputs["gate"]
    a, b = put(gate), put(inputs["up"])
    return lambda: k.elementwise(a, b, gate.size, GELU_MUL), a, gate.shape


def _attention(dev, k: Kernels, case: OpCase, inputs: dict, put):
    d, H, Hkv, n = case.d, case.heads, case.kv_heads, case.n
    if head_dim_refusal(d):
        raise UnsupportedModelError(head_dim_refusal(d))
    cap, kc, vc, held, tok, _ = attention_cache(case, inputs, UBATCH, "opencl")  # the session's layout
    q, bk, bv, bp, bt = put(inputs["q"]), put(kc), put(vc), put(held), put(tok)
    scores, out = dev.buffer(n * H * cap * 4), dev.buffer(n * H * d * 4)
    return (lambda: k.attention(q, bk, bv, bp, bt, scores, out, n, H, Hkv, d, cap, case.window, float(case.scale)),
            out, (n, H, d))
