"""The Vulkan runtime's ops at op level (g4c.opcases): each case one dispatch of the shader
the forward records for that op, on the device's kernel path (Device.wide: matvec_wide,
matmul_wide, attention_wide; else the baseline shaders), with push constants as
VulkanSession records them. Inputs go to device-local buffers first, so a timed run is the
dispatch alone (recorded, submitted and waited for, as Device.run does); the output comes
back through a host-visible copy.

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

from .runtime import GELU_MUL, PAD, SOFTCAP, UBATCH, _grid, head_dim_refusal, matrix_kernel

F32 = np.float32


class _Buffers:
    """The device-local buffers of one op, freed together."""

    def __init__(self, dev):
        self.dev, self.made = dev, []

    def new(self, nbytes: int):
        b = self.dev.buffer(nbytes, host=False)
        self.made.append(b)
        return b

    def put(self, arr: np.ndarray, pad: int = 0):
        a = np.ascontiguousarray(arr)
        b = self.new(a.nbytes + pad)
        self.dev.upload(b, a)
        if pad:
            self.dev.upload(b, np.zeros(pad, np.uint8), a.nbytes)
        return b

    def get(self, b, dtype, count: int) -> np.ndarray:
        host = self.dev.buffer(b.nbytes)
        self.made.append(host)
        self.dev.copy(b, host, [(0, 0, b.nbytes)])
        return host.read(dtype, count)

    def free(self) -> None:
        for b in self.made:
            b.free()


def run_op(dev, case: OpCase, inputs: dict, repeat: int = 0) -> tuple[np.ndarray, list[float]]:
    bufs = _Buffers(dev)
    try:
        pipeline, buffers, push, groups, out, shape = _prepare(dev, bufs, case, inputs)
        return timed(lambda: dev.run(pipeline, buffers, push, groups),
                     lambda: bufs.get(out, F32, int(np.prod(shape))).reshape(shape), repeat)
    finally:
        bufs.free()


def _prepare(dev, bufs: _Buffers, case: OpCase, inputs: dict):
    """(pipeline, buffers, push constants, workgroups, output buffer, output shape)."""
    op = case.op
    if op in ("dequantize", "matvec", "matmul"):
        qt = quants.TYPE_NAMES[case.qtype]
        raw = inputs["raw"]
        rows, row_bytes = raw.shape
        if op == "dequantize":
            w, out = bufs.put(raw), bufs.new(rows * case.cols * 4)
            return (dev.pipeline("dequant", {"TYPE": int(qt)}, 2, 4), [w, out], [rows, case.cols, row_bytes, 0],
                    _grid(-(-rows * case.cols // 32 // 64)), out, (rows, case.cols))
        n = case.n
        w, x, y = bufs.put(raw, PAD), bufs.put(inputs["x"]), bufs.new(n * rows * 4)
        name, defines, groups = matrix_kernel(dev, dev.wide, qt, rows, n)
        return (dev.pipeline(name, defines, 3, 7), [w, x, y], [rows, case.cols, row_bytes, n, 0, 0, rows], groups,
                y, (n, rows))
    if op == "rms_norm":
        x = inputs["x"]
        seg = x.shape[0] * x.shape[1]
        bx, by = bufs.put(x), bufs.new(x.nbytes)
        bw = bufs.put(inputs["w"]) if "w" in inputs else bufs.new(4)
        return (dev.pipeline("rms_norm", {}, 3, 4), [bx, by, bw], [case.d, seg, float(case.eps), int("w" in inputs)],
                _grid(seg), by, x.shape)
    if op == "rope":
        x, pos = inputs["x"], inputs["pos"]
        n, heads, d = x.shape
        # the host's table of cos and sin, as VulkanSession writes it (g4c.slots)
        cs = cs_table(pos, inv_freq_f32(case.layer_spec(), inputs.get("freq_factors")))
        bx, bcs = bufs.put(x), bufs.put(cs)
        return (dev.pipeline("rope", {}, 2, 4), [bx, bcs], [n, heads, d, case.n_rot],
                _grid(-(-n * heads * (case.n_rot // 2) // 64)), bx, x.shape)
    if op == "attention":
        return _attention(dev, bufs, case, inputs)
    if op == "softcap":
        x = inputs["x"]
        a = bufs.put(x)
        return (dev.pipeline("elementwise", {}, 2, 5), [a, bufs.new(4)], [x.size, SOFTCAP, float(case.cap), 0, 0],
                _grid(-(-x.size // 64)), a, x.shape)
    gate = inputs["gate"]
    a, b = bufs.put(gate), bufs.put(inputs["up"])
    return (dev.pipeline("elementwise", {}, 2, 5), [a, b], [gate.size, GELU_MUL, 0.0, 0, 0], _grid(-(-gate.size // 64)),
            a, gate.shape)


def _attention(dev, bufs: _Buffers, case: OpCase, inputs: dict):
    d, H, Hkv, n = case.d, case.heads, case.kv_heads, case.n
    if head_dim_refusal(d):
        raise UnsupportedModelError(head_dim_refusal(d))
    cap, kc, vc, held, tok, own = attention_cache(case, inputs, UBATCH, "vulkan")  # the session's layout
    out = bufs.new(n * H * d * 4)
    buffers = [bufs.put(inputs["q"]), bufs.put(kc), bufs.put(vc), bufs.put(held), bufs.put(tok),
               bufs.new(n * H * cap * 4), out]
    push = [n, H, Hkv, d, cap, case.window, float(case.scale)]
    if dev.wide:
        p = dev.pipeline("attention_wide", {"SG": dev.subgroup_size}, 8, 7)
        buffers.append(bufs.put(own))
    else:
        p = dev.pipeline("attention", {}, 7, 7)
    return p, buffers, push, _grid(n * H), out, (n, H, d)
