"""OpenCL runtime: the Gemma 4 (and Gemma 3) forward in OpenCL C kernels, through pyopencl.

Weights are uploaded once, in their quantized form; a matrix larger than the device's
largest allocation is split into row chunks. Per forward, the host writes the inputs
(token ids, positions and sequences, KV slots, RoPE cos/sin tables) and enqueues the layers
on one in-order queue, then reads the logits back. Prefill runs micro-batches of UBATCH
tokens through the tiled matmul kernel; decode of up to 16 sequences reads each weight row
once for all of them (matvec, on the plain or the sub-group path: device.py).

KV caches are f32, laid out as the vulkan runtime's (g4c.slots): per layer, every sequence's
slots in one buffer, a ring of W + UBATCH on sliding layers (a micro-batch stores its keys
before attending), a slot per position on full layers, grown by doubling up to max_context;
each slot's key position lives on the device too (-1: empty), so attention skips what was
forgotten. The kernels follow the vulkan baseline shaders.
"""

from __future__ import annotations

import math
import time

import numpy as np

from g4c import quants
from g4c.errors import DeviceUnavailableError, G4CError, ResourceUnavailable, UnsupportedModelError
from g4c.model import Model
from g4c.opcases import EVERY_OP
from g4c import slots
from g4c.plan import MemoryPlan, check_fits
from g4c.runtime import EVERY_METHOD, Availability, Capabilities

F32, I32, I64 = np.float32, np.int32, np.int64
UBATCH = 64
MAX_MATVEC_SEQ = 16  # matrix.cl's MAX_SEQ: more vectors take the tiled matmul
MATMUL_TM = 16  # matrix.cl's TM: vectors per matmul work-group
MAX_HEAD_DIM = 1024  # attention's outputs: 64 work-items x 16 dims (the 12B's largest is 512)
ADD, SCALE, GELU_MUL, SOFTCAP, COPY = range(5)  # layer.cl's elementwise modes


def head_dim_refusal(d: int) -> str | None:
    """Why the attention kernel cannot take head dim d (the session's load check and the op
    cases both ask), or None."""
    if d % 2 or d > MAX_HEAD_DIM:
        return f"head dim {d}: the opencl attention kernel takes even head dims up to {MAX_HEAD_DIM}"
    return None


class Kernels:
    """Thin launchers over the device's programs; the argument order is the kernels'."""

    def __init__(self, dev):
        self.dev = dev

    def matrix(self, m: "_Matrix", x, y, n: int, x_off: int = 0, path: str | None = None):
        """y[s * n_rows + r] = (W x_s)[r] for the n vectors of x from value x_off; each row
        chunk of m a launch, writing from its first row."""
        dev = self.dev
        path = path or dev.path
        for a, rows, buf in m.chunks:
            args = [buf, x, y, I32(rows), I32(m.n_cols), I64(m.row_bytes), I32(n), I32(x_off), I32(a), I32(m.n_rows)]
            if n > MAX_MATVEC_SEQ:
                k = dev.kernel("matrix", {"TYPE": int(m.qtype)}, "matmul")
                dev.run(k, args, rows, groups_y=-(-n // MATMUL_TM))
            elif path == "subgroup":
                k = dev.kernel("matrix", {"TYPE": int(m.qtype), **dev.sg_defines()}, "matvec_sg")
                lanes = 32 if dev.subgroups else 8  # at most one row per sub-group: no idle groups on small matrices
                dev.run(k, args, min(rows * lanes, 64 * 1024))
            else:
                k = dev.kernel("matrix", {"TYPE": int(m.qtype)}, "matvec")
                dev.run(k, args, rows * 8)  # 8 work-items per row

    def dequant(self, m: "_Matrix", out, n_out: int, rows=None, scale: float = 1.0):
        """out[i] = row rows[i] (or row i) of m, times scale. Rows are looked up in m's first
        chunk's numbering: callers pass a matrix in one chunk (checked)."""
        if len(m.chunks) != 1:
            raise G4CError(f"{m.name}: a lookup of rows needs the matrix in one buffer, it has {len(m.chunks)} chunks")
        dev = self.dev
        k = dev.kernel("matrix", {"TYPE": int(m.qtype)}, "dequant")
        dev.run(k, [m.chunks[0][2], rows if rows is not None else out, out, I32(n_out), I32(m.n_cols), I64(m.row_bytes),
                    I32(rows is not None), F32(scale)], n_out * (m.n_cols // 32))

    def rms_norm(self, x, y, w, n_per: int, n_seg: int, eps: float):
        k = self.dev.kernel("layer", {}, "rms_norm")
        self.dev.run(k, [x, y, w if w is not None else x, I32(n_per), F32(eps), I32(w is not None)], n_seg * 64)

    def rope(self, x, cs, n: int, heads: int, d: int, n_rot: int):
        k = self.dev.kernel("layer", {}, "rope")
        self.dev.run(k, [x, cs, I32(n), I32(heads), I32(d), I32(n_rot)], n * heads * (n_rot // 2))

    def kv_store(self, k_new, v_new, slots, kc, vc, tok, kpos, n: int, row: int):
        k = self.dev.kernel("layer", {}, "kv_store")
        self.dev.run(k, [k_new, v_new, slots, kc, vc, tok, kpos, I32(n), I32(row)], n * row)

    def attention(self, q, kc, vc, kpos, tok, scores, out, n: int, H: int, Hkv: int, d: int, cap: int, window: int,
                  scale: float):
        k = self.dev.kernel("layer", {}, "attention")
        self.dev.run(k, [q, kc, vc, kpos, tok, scores, out, I32(H), I32(Hkv), I32(d), I32(cap), I32(window), F32(scale)],
                     n * H * 64)

    def elementwise(self, a, b, n: int, mode: int, param: float = 0.0):
        k = self.dev.kernel("layer", {}, "elementwise")
        self.dev.run(k, [a, b, I32(n), I32(mode), F32(param)], n)


class OpenCLRuntime:
    name = "opencl"
    capabilities = Capabilities(trace=True, backend="OpenCL", methods=EVERY_METHOD, ops=EVERY_OP)

    def __init__(self):
        self._dev = None
        self._error = None

    def device(self):
        if self._dev is None and self._error is None:
            from .device import Device

            try:
                self._dev = Device()
            except DeviceUnavailableError as e:
                self._error = str(e)
        if self._dev is None:
            raise DeviceUnavailableError(self._error)
        return self._dev

    def availability(self) -> Availability:
        try:
            self.device()
        except DeviceUnavailableError as e:
            return Availability(False, str(e))
        return Availability(True)

    def settings(self) -> dict:
        """What results depend on: the device, its platform and driver, the matvec path."""
        dev = self.device()
        out = {"device": dev.name, "platform": dev.platform, "driver": dev.driver, "path": dev.path_label,
               "subgroups": dev.subgroups or "none"}
        if dev.subgroup_error:
            out["subgroup_error"] = dev.subgroup_error
        return out

    def load(self, model: Model, max_context: int, n_seq: int = 1, trace: bool = False) -> "OpenCLSession":
        return OpenCLSession(self.device(), model, max_context, n_seq, trace)

    @staticmethod
    def memory_plan(model: Model, n_ctx: int, n_seq: int = 1) -> MemoryPlan:
        """Device memory at n_ctx (g4c.slots.memory_plan: the cache layout vulkan shares)."""
        return slots.memory_plan("opencl", model, n_ctx, n_seq, UBATCH)

    def memory_bandwidth(self) -> dict:
        """The roofline's limit. A CPU device (PoCL) reads host memory: the host's read
        bandwidth, the figure the cpu runtime is set against in the same run. Elsewhere the
        device's own memory: a device-to-device copy of 256 MiB, read plus write bytes over
        the time, best of 10 after a warm-up."""
        dev = self.device()
        if dev.is_cpu:
            from g4c.bench import host_read_bandwidth

            return {**host_read_bandwidth(), "device": f"{dev.name} (host memory)"}
        n = 256 << 20
        a, b = dev.buffer(n), dev.buffer(n)
        dev.copy(a, b, n)
        dev.finish()
        best = math.inf
        for _ in range(10):
            t = time.perf_counter()
            dev.copy(a, b, n)
            dev.finish()
            best = min(best, time.perf_counter() - t)
        return {"bytes_per_s": 2 * n / best, "method": "copy of 256 MiB on the device, read + write, best of 10",
                "device": dev.name}

    def run_op(self, case, inputs: dict, repeat: int = 0) -> tuple[np.ndarray, list[float]]:
        """An op-level case (g4c.opcases) as one launch of the kernel the forward uses for
        that op, on the device's matvec path (oplevel.py)."""
        from .oplevel import run_op

        return run_op(self.device(), case, inputs, repeat)


class _Matrix:
    """A weight matrix on the device, quantized, in row chunks within the allocation limit."""

    def __init__(self, dev, name: str, raw: np.ndarray, qtype, n_cols: int):
        self.name, self.qtype, self.n_cols = name, qtype, n_cols
        self.n_rows, self.row_bytes = raw.shape
        per = max(1, dev.max_alloc // self.row_bytes)
        self.chunks = []
        for a in range(0, self.n_rows, per):
            part = np.ascontiguousarray(raw[a:a + per])
            self.chunks.append((a, len(part), dev.buffer(part.nbytes, part)))


class OpenCLSession(slots.SlotSession):
    ubatch = UBATCH
    ring_extra = UBATCH  # a micro-batch stores its keys before attending (KVPlan)

    def __init__(self, dev, model: Model, max_context: int, n_seq: int = 1, trace: bool = False):
        super().__init__(model, max_context, n_seq, trace)
        c = self.cfg
        self.plan = check_fits(lambda n: OpenCLRuntime.memory_plan(model, n, n_seq), max_context, c.n_ctx_train,
                               dev.available_memory(), f"{model.path} on opencl ({dev.name})")
        self._check_allocations(dev, max_context)
        self.dev, self.k = dev, Kernels(dev)
        self.path = dev.path  # the matvec path, fixed for the session
        for s in c.layers:  # the kernels index heads assuming an even split
            if c.n_head % s.n_head_kv:
                raise G4CError(f"{model.path}: layer {s.index}: {c.n_head} heads do not split over {s.n_head_kv} KV heads")
            why = head_dim_refusal(s.head_dim)
            if why:
                raise UnsupportedModelError(f"{model.path}: layer {s.index} ({s.kind}) {why}")
        embd = model.weight("token_embd.weight")
        for w in [*model.layer_matrices(), model.output_weight, embd]:
            quants.layout(w.qtype, f"{model.path}: {w.name}")
            if w.n_cols % 32:
                raise UnsupportedModelError(f"{model.path}: tensor {w.name}: rows of {w.n_cols} values: the opencl matrix "
                                            "kernels take rows of whole units of 32 values")
        self.mat = {w.name: _Matrix(dev, w.name, w.raw, w.qtype, w.n_cols) for w in model.layer_matrices()}
        self.embd = _Matrix(dev, embd.name, embd.raw, embd.qtype, embd.n_cols)
        out = model.output_weight
        self.head = self.embd if out.name == embd.name else _Matrix(dev, out.name, out.raw, out.qtype, out.n_cols)
        if len(self.embd.chunks) != 1:
            raise UnsupportedModelError(f"{model.path}: tensor {embd.name}: {embd.raw.nbytes} bytes exceed {dev.name}'s "
                                        f"largest allocation of {dev.max_alloc} (the embedding lookup reads one buffer)")
        self.vec = {key: dev.buffer(v.nbytes, np.asarray(v, F32)) for key, v in model.norm_vectors().items()}
        self.vec["output_norm"] = dev.buffer(4 * c.n_embd, model.weight("output_norm.weight").vector().astype(F32))
        self.out_scale = model.output_scales()
        self._init_slots()  # ring, full_cap, inv_freq, kpos_host (g4c.slots)
        self._io = None
        self._scores = None  # attention scores scratch, grown with the batch and the caches
        self._alloc_caches()

    def _check_allocations(self, dev, max_context: int) -> None:
        """Refuse at load, with the figures, a context whose largest single buffers (a full
        layer's cache grown to max_context, a micro-batch's attention scores or logits) would
        exceed the device's largest allocation: a forward would fail halfway otherwise."""
        c, rows = self.cfg, max(UBATCH, self.n_seq)
        full = [s for s in c.layers if not s.sliding]
        ring = self.kv.ring
        need = {"the attention scores of a micro-batch": rows * c.n_head * max(ring, max_context if full else 0) * 4,
                "the logits of a micro-batch": rows * self.n_vocab * 4,
                "a layer's K cache": max(self.n_seq * (ring if s.sliding else max_context) * s.n_head_kv * s.head_dim * 4
                                         for s in c.layers)}
        what, nbytes = max(need.items(), key=lambda kv: kv[1])
        if nbytes > dev.max_alloc:
            where = f"{self.model.path} on opencl ({dev.name})"
            raise ResourceUnavailable(f"{where}: at max_context {max_context}, one buffer would hold {what}: {nbytes} "
                                      f"bytes; the device's largest allocation is {dev.max_alloc}", resource="device memory",
                                      needed=nbytes, available=dev.max_alloc, where=where)

    # -- caches -----------------------------------------------------------------------------
    def _alloc_caches(self) -> None:
        """Zeroed K and V caches (attention multiplies masked slots' values by a probability
        of 0, which garbage NaN bits would survive), and the key position of every slot
        (-1: empty) on the device, written there by kv_store, with a host copy (kpos_host,
        g4c.slots) that _forget edits and uploads."""
        self.kc, self.vc, self.kpos = {}, {}, {}
        for s in self.cfg.layers:
            n = self.n_seq * self._cap(s)
            row = s.n_head_kv * s.head_dim * 4
            self.kc[s.index], self.vc[s.index] = self.dev.buffer(n * row), self.dev.buffer(n * row)
            self.kpos[s.index] = self.dev.buffer(n * 4, self.kpos_host[s.index])

    def _grow_full(self, need: int) -> None:
        """Full-layer caches to at least `need` slots per sequence (doubling, up to
        max_context): K and V copied on the device, sequence by sequence, into zeroed larger
        buffers; slot positions grown on the host and uploaded."""
        new = self.kv.grown(self.full_cap, need)
        old = self.full_cap
        for s in self.cfg.layers:
            if s.sliding:
                continue
            i, row = s.index, s.n_head_kv * s.head_dim * 4
            for cache in (self.kc, self.vc):
                grown = self.dev.buffer(self.n_seq * new * row)
                for q in range(self.n_seq):
                    self.dev.copy(cache[i], grown, old * row, q * old * row, q * new * row)
                cache[i] = grown
            kp = self._grown_kpos(i, new)
            self.kpos[i] = self.dev.buffer(kp.nbytes, kp)
        self.full_cap = new

    def _upload_kpos(self, layer: int, values: np.ndarray, offset: int) -> None:
        self.dev.write(self.kpos[layer], values, offset)

    # -- forward ------------------------------------------------------------------------------
    def _io_buffers(self) -> dict:
        """Device buffers for a micro-batch of up to max(UBATCH, n_seq) rows: inputs the host
        writes per batch, activations and the logits."""
        if self._io is None:
            c = self.cfg
            n = max(UBATCH, self.n_seq)
            E, HD = c.n_embd, c.n_head * max(s.head_dim for s in c.layers)
            KD = max(s.n_head_kv * s.head_dim for s in c.layers)
            F = max(s.n_ff for s in c.layers)
            R = max(s.n_rot for s in c.layers)
            sizes = {"x": n * E, "h": n * E, "t": n * E, "q": n * HD, "a": n * HD, "k": n * KD, "v": n * KD,
                     "g": n * F, "u": n * F, "logits": n * self.n_vocab, "ids": n, "tok": n * 2, "slot_swa": n,
                     "slot_full": n, "cs_swa": n * R, "cs_full": n * R}
            self._io = {k: self.dev.buffer(4 * v) for k, v in sizes.items()}
        return self._io

    def _scores_buffer(self, n: int):
        need = n * self.cfg.n_head * max(self.ring, self.full_cap) * 4
        if self._scores is None or self._scores.size < need:
            self._scores = self.dev.buffer(need)
        return self._scores

    def _forward(self, toks: np.ndarray, seqs: np.ndarray, pos: np.ndarray, all_logits: bool) -> np.ndarray:
        c, n, dev, k = self.cfg, len(toks), self.dev, self.k
        need = self.kv.full_needed(seqs, pos, self.base)
        if need > self.full_cap:
            self._grow_full(need)
        io = self._io_buffers()
        scores = self._scores_buffer(n)
        # inputs: token ids, then positions and sequences, cache slots, RoPE tables (g4c.slots)
        dev.write(io["ids"], toks.astype(I32))
        for name, values in self._batch_inputs(seqs, pos).items():
            dev.write(io[name], values)
        if self.trace is not None:
            self.trace.clear()
        E = c.n_embd
        k.dequant(self.embd, io["x"], n, rows=io["ids"], scale=float(F32(c.embd_scale)))
        for s in c.layers:
            i = s.index
            H, Hkv, d = c.n_head, s.n_head_kv, s.head_dim
            k.rms_norm(io["x"], io["h"], self.vec[i, "attn_norm"], E, n, c.eps)
            self._mm(f"blk.{i}.attn_q.weight", io["h"], io["q"], n)
            self._mm(f"blk.{i}.attn_k.weight", io["h"], io["k"], n)
            if s.has_v:
                self._mm(f"blk.{i}.attn_v.weight", io["h"], io["v"], n)
            else:  # k_eq_v: V is the raw K projection (before k_norm and RoPE)
                k.elementwise(io["v"], io["k"], n * Hkv * d, COPY)
            k.rms_norm(io["q"], io["q"], self.vec[i, "attn_q_norm"], d, n * H, c.eps)
            k.rms_norm(io["k"], io["k"], self.vec[i, "attn_k_norm"], d, n * Hkv, c.eps)
            if c.v_norm:
                k.rms_norm(io["v"], io["v"], None, d, n * Hkv, c.eps)
            cs = io["cs_swa" if s.sliding else "cs_full"]
            k.rope(io["q"], cs, n, H, d, s.n_rot)
            k.rope(io["k"], cs, n, Hkv, d, s.n_rot)
            cap = self._cap(s)
            k.kv_store(io["k"], io["v"], io["slot_swa" if s.sliding else "slot_full"], self.kc[i], self.vc[i], io["tok"],
                       self.kpos[i], n, Hkv * d)
            k.attention(io["q"], self.kc[i], self.vc[i], self.kpos[i], io["tok"], scores, io["a"], n, H, Hkv, d, cap,
                        s.window, float(s.attn_scale))
            self._mm(f"blk.{i}.attn_output.weight", io["a"], io["t"], n)
            k.rms_norm(io["t"], io["t"], self.vec[i, "post_attention_norm"], E, n, c.eps)
            self._traced(i, "attn_out", io["t"], n * E)
            k.elementwise(io["x"], io["t"], n * E, ADD)
            k.rms_norm(io["x"], io["h"], self.vec[i, "ffn_norm"], E, n, c.eps)
            self._mm(f"blk.{i}.ffn_gate.weight", io["h"], io["g"], n)
            self._mm(f"blk.{i}.ffn_up.weight", io["h"], io["u"], n)
            k.elementwise(io["g"], io["u"], n * s.n_ff, GELU_MUL)
            self._mm(f"blk.{i}.ffn_down.weight", io["g"], io["t"], n)
            k.rms_norm(io["t"], io["t"], self.vec[i, "post_ffw_norm"], E, n, c.eps)
            self._traced(i, "ffn_out", io["t"], n * E)
            k.elementwise(io["x"], io["t"], n * E, ADD)
            if s.has_output_scale:
                k.elementwise(io["x"], io["x"], n * E, SCALE, float(self.out_scale[i]))
            self._traced(i, "layer_out", io["x"], n * E)
        rows = n if all_logits else 1
        k.rms_norm(io["x"], io["h"], self.vec["output_norm"], E, n, c.eps)
        k.matrix(self.head, io["h"], io["logits"], rows, x_off=(n - rows) * E, path=self.path)
        if c.final_softcap:
            k.elementwise(io["logits"], io["logits"], rows * self.n_vocab, SOFTCAP, float(c.final_softcap))
        return dev.read(io["logits"], F32, rows * self.n_vocab).reshape(rows, self.n_vocab)

    def _mm(self, name: str, x, y, n: int) -> None:
        m = self.mat.get(name)
        if m is None:
            self.model.weight(name)  # raises the error naming the missing tensor
        self.k.matrix(m, x, y, n, path=self.path)

    def _traced(self, layer: int, op: str, buf, count: int) -> None:
        if self.trace is not None:
            n = count // self.cfg.n_embd
            self.trace[(layer, op)] = self.dev.read(buf, F32, count).reshape(n, -1)
