"""Vulkan runtime: the Gemma 4 (and Gemma 3) forward in GLSL compute shaders.

Weights are uploaded once to device-local memory, in their quantized form; a matrix larger
than the device's storage-binding limit (lavapipe: 128 MiB) is split into row chunks. Per
forward, the host writes the inputs (embedding rows, RoPE cos/sin tables, token positions
and sequences, KV slots) into persistent host-visible buffers and replays a command buffer
recorded once per batch shape, which copies them to the device, runs the layers and copies
the logits back: decode steps reuse theirs until a full-layer cache grows. Prefill runs
micro-batches of UBATCH tokens through the tiled matmul shader; decode of up to 16
sequences reads each weight row once for all of them (matvec shader).

KV caches are f32, per sequence, slots as the session's KV plan (g4c.session.KVPlan) assigns
them: sliding layers a ring of W + UBATCH slots, since a micro-batch stores its keys before
attending and must not evict a key one of its own rows still needs; full layers one slot per
position from where the sequence began, grown by doubling up to max_context. Each slot's
position lives on the device too (-1: empty), so attention skips what was forgotten.
"""

from __future__ import annotations

import math
import numpy as np

from g4c import quants
from g4c.errors import DeviceUnavailableError, G4CError, UnsupportedModelError
from g4c.model import Model
from g4c import slots
from g4c.plan import MemoryPlan, check_fits
from g4c.opcases import EVERY_OP
from g4c.runtime import EVERY_METHOD, Availability, Capabilities

F32 = np.float32
UBATCH = 64
MAX_MATVEC_SEQ = 16  # matvec.comp's MAX_SEQ
MAX_HEAD_DIM = 512  # the attention shaders' outputs: 64 threads x 8 dims
ADD, SCALE, GELU_MUL, SOFTCAP, COPY = range(5)
# the bindings each shader writes (the rest it only reads)
WRITES = {"matvec": (2,), "matmul": (2,), "matvec_wide": (2,), "matmul_wide": (2,), "rms_norm": (1,), "rope": (0,), "kv_store": (3, 4, 6), "attention": (5, 6),
          "elementwise": (0,), "dequant": (1,), "attention_wide": (5, 6)}


INPUTS = ("x", "tok", "slot_swa", "slot_full", "cs_swa", "cs_full")  # written by the host per batch
PAD = 16  # bytes after every weight buffer: the wide path reads one 64-bit word past a span


def head_dim_refusal(d: int) -> str | None:
    """Why the attention shaders cannot take head dim d (the session's load check and the op
    cases both ask), or None."""
    if d % 2 or d > MAX_HEAD_DIM:
        return f"head dim {d}: the vulkan attention shaders take even head dims up to {MAX_HEAD_DIM}"
    return None


def matrix_kernel(dev, wide: bool, qtype, rows: int, n: int) -> tuple[str, dict, tuple[int, int, int]]:
    """Shader, defines and workgroups for y = W x over n vectors: matvec up to MAX_MATVEC_SEQ
    (weights read once for all n), else the tiled matmul; baseline or wide path."""
    t = int(qtype)
    if wide:
        if n <= MAX_MATVEC_SEQ:
            return "matvec_wide", {"TYPE": t, "SG": dev.subgroup_size, "NSEQ": n}, _grid(-(-rows // 64))
        return "matmul_wide", {"TYPE": t, "SG": dev.subgroup_size}, (-(-rows // 64), -(-n // 16), 1)
    if n <= MAX_MATVEC_SEQ:  # 8 rows per workgroup
        return "matvec", {"TYPE": t}, _grid(-(-rows // 8))
    return "matmul", {"TYPE": t}, (-(-rows // 64), -(-n // 8), 1)


def _grid(n: int) -> tuple[int, int, int]:
    """Workgroups for n items of 64 (or n workgroups): at most 65535 in x."""
    return (min(n, 65535), -(-n // 65535), 1)


class VulkanRuntime:
    name = "vulkan"
    capabilities = Capabilities(trace=True, backend="Vulkan", methods=EVERY_METHOD, ops=EVERY_OP)

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
        import shutil

        try:
            self.device()
        except DeviceUnavailableError as e:
            return Availability(False, str(e))
        if shutil.which("glslangValidator") is None:
            return Availability(False, "glslangValidator is not installed (Debian glslang-tools)")
        return Availability(True)

    def settings(self) -> dict:
        """What results depend on: the device, the kernel path, how device memory is reached."""
        dev = self.device()
        return {"device": dev.name, "driver": dev.driver, "path": "wide" if dev.wide else "baseline",
                "subgroup_size": dev.subgroup_size, "staging": dev.staging, "storage16": dev.storage16}

    def load(self, model: Model, max_context: int, n_seq: int = 1, trace: bool = False) -> "VulkanSession":
        return VulkanSession(self.device(), model, max_context, n_seq, trace)

    @staticmethod
    def memory_plan(model: Model, n_ctx: int, n_seq: int = 1) -> MemoryPlan:
        """Device memory at n_ctx (g4c.slots.memory_plan: the cache layout opencl shares)."""
        return slots.memory_plan("vulkan", model, n_ctx, n_seq, UBATCH)

    def memory_bandwidth(self) -> dict:
        """Device read bandwidth: a matvec over a 64 MiB F32 matrix (lavapipe's memory is host
        memory), best of 5."""
        import time

        dev = self.device()
        rows, cols = 4096, 4096
        w, x, y = (dev.buffer(n, host=False) for n in (rows * cols * 4 + PAD, cols * 4, rows * 4))
        for b in (w, x):
            dev.fill(b)
        name, defines, groups = matrix_kernel(dev, dev.wide, quants.QT.F32, rows, 1)
        p = dev.pipeline(name, defines, 3, 7)
        best = math.inf
        for _ in range(6):
            t = time.perf_counter()
            dev.run(p, [w, x, y], [rows, cols, cols * 4, 1, 0, 0, rows], groups)
            best = min(best, time.perf_counter() - t)
        dev.forget([w, x, y])
        for b in (w, x, y):
            b.free()
        return {"bytes_per_s": rows * cols * 4 / best, "method": f"{name} over a 64 MiB F32 matrix, best of 6", "device": dev.name}

    def run_op(self, case, inputs: dict, repeat: int = 0) -> tuple[np.ndarray, list[float]]:
        """An op-level case (g4c.opcases) as one dispatch of its shader on the device's kernel
        path (oplevel.py)."""
        from .oplevel import run_op

        return run_op(self.device(), case, inputs, repeat)

class _Matrix:
    """A weight matrix on the device, quantized, in row chunks within the binding limit."""

    def __init__(self, dev, name: str, raw: np.ndarray, qtype, n_cols: int):
        self.name, self.qtype, self.n_cols = name, qtype, n_cols
        self.n_rows, self.row_bytes = raw.shape
        per = max(1, (dev.max_binding - PAD) // self.row_bytes)
        self.chunks = []
        for a in range(0, self.n_rows, per):
            part = np.ascontiguousarray(raw[a:a + per])
            buf = dev.buffer(part.nbytes + PAD, host=False)
            dev.upload(buf, part)
            dev.upload(buf, np.zeros(PAD, np.uint8), part.nbytes)
            self.chunks.append((a, len(part), buf))


class VulkanSession(slots.SlotSession):
    ubatch = UBATCH
    ring_extra = UBATCH  # a micro-batch stores its keys before attending (KVPlan)

    def __init__(self, dev, model: Model, max_context: int, n_seq: int = 1, trace: bool = False):
        super().__init__(model, max_context, n_seq, trace)
        c = self.cfg
        self.plan = check_fits(lambda n: VulkanRuntime.memory_plan(model, n, n_seq), max_context, c.n_ctx_train,
                               dev.available_memory(), f"{model.path} on vulkan ({dev.name})")
        self.dev = dev
        self.wide = dev.wide  # the kernel path, fixed for the session
        for s in c.layers:  # the shaders index heads assuming an even split
            if c.n_head % s.n_head_kv:
                raise G4CError(f"{model.path}: layer {s.index}: {c.n_head} heads do not split over {s.n_head_kv} KV heads")
            why = head_dim_refusal(s.head_dim)
            if why:
                raise UnsupportedModelError(f"{model.path}: layer {s.index} ({s.kind}) {why}")
        self.mat: dict[str, _Matrix] = {}
        for w in [*model.layer_matrices(), model.output_weight]:
            quants.layout(w.qtype, f"{model.path}: {w.name}")
            if w.n_cols % 32:
                raise UnsupportedModelError(f"{model.path}: tensor {w.name}: rows of {w.n_cols} values: the vulkan matrix "
                                            "shaders take rows of whole units of 32 values")
        for w in model.layer_matrices():
            self.mat[w.name] = _Matrix(dev, w.name, w.raw, w.qtype, w.n_cols)
        out = model.output_weight
        self.head = _Matrix(dev, out.name, out.raw, out.qtype, out.n_cols)
        self.embd = model.weight("token_embd.weight")
        self.vec = {key: self._upload(v) for key, v in model.norm_vectors().items()}
        self.vec["output_norm"] = self._upload(model.weight("output_norm.weight").vector())
        self.out_scale = model.output_scales()
        self._init_slots()  # ring, full_cap, inv_freq, kpos_host (g4c.slots)
        self._io = None
        self._scores = None  # attention scores scratch, grown with the batch and the caches
        self._recorded: dict = {}
        self._alloc_caches()

    def __del__(self):
        dev = getattr(self, "dev", None)
        cbs = list(getattr(self, "_recorded", {}).values())
        if dev is not None and cbs:
            try:
                dev.vk.vkFreeCommandBuffers(dev.device, dev.cmd_pool, len(cbs), cbs)
            except Exception:  # interpreter shutdown
                pass

    def _upload(self, arr: np.ndarray):
        b = self.dev.buffer(arr.nbytes, host=False)
        self.dev.upload(b, np.ascontiguousarray(arr, F32))
        return b

    def device_buffers(self) -> list:
        """Every device-local buffer the session holds: weights, norms, caches, activations."""
        return ([b for m in [*self.mat.values(), self.head] for _, _, b in m.chunks] + list(self.vec.values())
                + [*self.kc.values(), *self.vc.values(), *self.kpos.values(), *(self._io or {}).values()])

    # -- caches -----------------------------------------------------------------------------
    def _alloc_caches(self) -> None:
        """Device-local K and V caches, zeroed (attention multiplies masked slots' values by
        a probability of 0, which garbage NaN bits would survive), and the key position of
        every slot (-1: empty) on the device, written there by kv_store, with a host copy
        (kpos_host, g4c.slots) that _forget edits and uploads."""
        self.kc, self.vc, self.kpos = {}, {}, {}
        for s in self.cfg.layers:
            n = self.n_seq * self._cap(s)
            row = s.n_head_kv * s.head_dim * 4
            self.kc[s.index], self.vc[s.index] = self._zeroed(n * row), self._zeroed(n * row)
            self.kpos[s.index] = self.dev.buffer(n * 4, host=False)
            self.dev.upload(self.kpos[s.index], self.kpos_host[s.index])

    def _zeroed(self, nbytes: int):
        b = self.dev.buffer(nbytes, host=False)
        self.dev.fill(b)
        return b

    def _grow_full(self, need: int) -> None:
        """Full-layer caches to at least `need` slots per sequence (doubling, up to max_context):
        K and V copied on the device, sequence by sequence, into zeroed larger buffers; slot
        positions grown on the host and uploaded; recorded batches dropped."""
        new = self.kv.grown(self.full_cap, need)
        old = self.full_cap
        for s in self.cfg.layers:
            if s.sliding:
                continue
            i, row = s.index, s.n_head_kv * s.head_dim * 4
            bufs = [self.kc[i], self.vc[i], self.kpos[i]]
            for cache in (self.kc, self.vc):
                grown = self._zeroed(self.n_seq * new * row)
                self.dev.copy(cache[i], grown, [(q * old * row, q * new * row, old * row) for q in range(self.n_seq)])
                cache[i] = grown
            kp = self._grown_kpos(i, new)
            self.kpos[i] = self.dev.buffer(kp.nbytes, host=False)
            self.dev.upload(self.kpos[i], kp)
            self.dev.forget(bufs)
            for b in bufs:
                b.free()
        self.full_cap = new
        self._recorded.clear()

    def _upload_kpos(self, layer: int, values: np.ndarray, offset: int) -> None:
        self.dev.upload(self.kpos[layer], values, offset)

    # -- forward ------------------------------------------------------------------------------
    def _io_buffers(self):
        """Persistent device-local inputs and activations for a micro-batch of up to
        max(UBATCH, n_seq) rows; the inputs (INPUTS) and the logits also have host-visible
        twins (_in, _out), copied from and to at the start and end of each batch."""
        if self._io is None:
            c = self.cfg
            n = max(UBATCH, self.n_seq)
            E, HD = c.n_embd, c.n_head * max(s.head_dim for s in c.layers)
            KD = max(s.n_head_kv * s.head_dim for s in c.layers)
            F = max(s.n_ff for s in c.layers)
            R = max(s.n_rot for s in c.layers)
            sizes = {"x": n * E, "h": n * E, "t": n * E, "q": n * HD, "a": n * HD, "k": n * KD, "v": n * KD,
                     "g": n * F, "u": n * F, "logits": n * self.n_vocab, "tok": n * 2, "slot_swa": n, "slot_full": n,
                     "cs_swa": n * R, "cs_full": n * R, "dummy": 1}
            self._io = {k: self.dev.buffer(4 * v, host=False) for k, v in sizes.items()}
            self._in = {k: self.dev.buffer(4 * sizes[k]) for k in INPUTS}
            self._out = self.dev.buffer(4 * sizes["logits"])
        return self._io

    def _scores_buffer(self, n: int):
        need = n * self.cfg.n_head * max(self.ring, self.full_cap) * 4
        if self._scores is None or self._scores.nbytes < need:
            if self._scores is not None:
                self.dev.forget([self._scores])
                self._scores.free()
            self._scores = self.dev.buffer(need)
            self._recorded.clear()
        return self._scores

    def _forward(self, toks: np.ndarray, seqs: np.ndarray, pos: np.ndarray, all_logits: bool) -> np.ndarray:
        c, n = self.cfg, len(toks)
        need = self.kv.full_needed(seqs, pos, self.base)
        if need > self.full_cap:
            self._grow_full(need)
        self._io_buffers()  # made on first use, with their host twins _in and _out
        scores = self._scores_buffer(n)
        # inputs: embeddings, then positions and sequences, cache slots, RoPE tables
        inp = self._in
        inp["x"].write(self.embd.take(toks) * F32(c.embd_scale))
        for name, values in self._batch_inputs(seqs, pos).items():  # slots, positions, RoPE tables (g4c.slots)
            inp[name].write(values)
        key = (n, all_logits, self.trace is not None)
        cb = self._recorded.get(key)
        if cb is None:
            cb = self._record(n, all_logits, scores)
            if self.trace is None:
                self._recorded[key] = cb
        self.dev.submit(cb)
        if self.trace is not None:
            self._read_trace(n)
            self.dev.vk.vkFreeCommandBuffers(self.dev.device, self.dev.cmd_pool, 1, [cb])
        rows = n if all_logits else 1
        return self._out.read(F32, rows * self.n_vocab).reshape(rows, self.n_vocab)

    def _record(self, n: int, all_logits: bool, scores):
        dev, vk, c, io = self.dev, self.dev.vk, self.cfg, self._io
        cb = dev.command_buffer()
        vk.vkBeginCommandBuffer(cb, vk.VkCommandBufferBeginInfo())
        self._cb = cb
        self._written: set = set()
        self._read: set = set()
        self._trace_bufs = []
        E = c.n_embd
        for k in INPUTS:  # the batch's rows of each input, from its host-visible twin
            dev.record_copy(cb, self._in[k], io[k], [(0, 0, n * self._in[k].nbytes // max(UBATCH, self.n_seq))])
        dev.transfer_barrier(cb)
        for s in c.layers:
            i = s.index
            H, Hkv, d = c.n_head, s.n_head_kv, s.head_dim
            self._norm(io["x"], io["h"], self.vec[i, "attn_norm"], E, n)
            self._mm(f"blk.{i}.attn_q.weight", io["h"], io["q"], n)
            self._mm(f"blk.{i}.attn_k.weight", io["h"], io["k"], n)
            if s.has_v:
                self._mm(f"blk.{i}.attn_v.weight", io["h"], io["v"], n)
            else:  # k_eq_v: V is the raw K projection (before k_norm and RoPE)
                self._ew(io["v"], io["k"], n * Hkv * d, COPY)
            self._norm(io["q"], io["q"], self.vec[i, "attn_q_norm"], d, n * H)
            self._norm(io["k"], io["k"], self.vec[i, "attn_k_norm"], d, n * Hkv)
            if c.v_norm:
                self._norm(io["v"], io["v"], None, d, n * Hkv)
            cs = io["cs_swa" if s.sliding else "cs_full"]
            for buf, heads in ((io["q"], H), (io["k"], Hkv)):
                self._dispatch("rope", {}, [buf, cs], [n, heads, d, s.n_rot], _grid(-(-n * heads * (s.n_rot // 2) // 64)))
            cap = self._cap(s)
            slots = io["slot_swa" if s.sliding else "slot_full"]
            self._dispatch("kv_store", {}, [io["k"], io["v"], slots, self.kc[i], self.vc[i], io["tok"], self.kpos[i]],
                           [n, Hkv * d], _grid(-(-n * Hkv * d // 64)))
            push = [n, H, Hkv, d, cap, s.window, float(s.attn_scale)]
            bufs = [io["q"], self.kc[i], self.vc[i], self.kpos[i], io["tok"], scores, io["a"]]
            if self.wide:
                self._dispatch("attention_wide", {"SG": self.dev.subgroup_size}, bufs + [slots], push, _grid(n * H))
            else:
                self._dispatch("attention", {}, bufs, push, _grid(n * H))
            self._mm(f"blk.{i}.attn_output.weight", io["a"], io["t"], n)
            self._norm(io["t"], io["t"], self.vec[i, "post_attention_norm"], E, n)
            self._traced(i, "attn_out", io["t"], n * E)
            self._ew(io["x"], io["t"], n * E, ADD)
            self._norm(io["x"], io["h"], self.vec[i, "ffn_norm"], E, n)
            self._mm(f"blk.{i}.ffn_gate.weight", io["h"], io["g"], n)
            self._mm(f"blk.{i}.ffn_up.weight", io["h"], io["u"], n)
            self._ew(io["g"], io["u"], n * s.n_ff, GELU_MUL)
            self._mm(f"blk.{i}.ffn_down.weight", io["g"], io["t"], n)
            self._norm(io["t"], io["t"], self.vec[i, "post_ffw_norm"], E, n)
            self._traced(i, "ffn_out", io["t"], n * E)
            self._ew(io["x"], io["t"], n * E, ADD)
            if s.has_output_scale:
                self._ew(io["x"], io["dummy"], n * E, SCALE, self.out_scale[i])
            self._traced(i, "layer_out", io["x"], n * E)
        rows = n if all_logits else 1
        self._norm(io["x"], io["h"], self.vec["output_norm"], E, n)
        self._mm_w(self.head, io["h"], io["logits"], rows, x_off=(n - rows) * E)
        if c.final_softcap:
            self._ew(io["logits"], io["dummy"], rows * self.n_vocab, SOFTCAP, float(c.final_softcap))
        dev.transfer_barrier(cb)
        dev.record_copy(cb, io["logits"], self._out, [(0, 0, rows * self.n_vocab * 4)])
        dev.transfer_barrier(cb, to_host=True)
        vk.vkEndCommandBuffer(cb)
        return cb

    # -- recording helpers ----------------------------------------------------------------------
    def _dispatch(self, name, defines, buffers, push, groups):
        """Record one dispatch, after a barrier only when it reads a buffer written since the
        last barrier or writes one read or written since (independent dispatches, such as the
        q, k and v projections, run unordered)."""
        ids = [b.key for b in buffers]
        writes = {ids[i] for i in WRITES[name]}
        if set(ids) & self._written or writes & self._read:
            self.dev.barrier(self._cb)
            self._written, self._read = set(), set()
        p = self.dev.pipeline(name, defines, len(buffers), len(push))
        p.record(self._cb, buffers, push, groups)
        self._written |= writes
        self._read |= set(ids) - writes

    def _norm(self, x, y, w, n_per: int, n_seg: int) -> None:
        self._dispatch("rms_norm", {}, [x, y, w if w is not None else self._io["dummy"]],
                       [n_per, n_seg, float(self.cfg.eps), 1 if w is not None else 0], _grid(n_seg))

    def _ew(self, a, b, n: int, mode: int, param: float = 0.0) -> None:
        self._dispatch("elementwise", {}, [a, b], [n, mode, float(param), 0, 0], _grid(-(-n // 64)))

    def _mm(self, name: str, x, y, n: int) -> None:
        m = self.mat.get(name)
        if m is None:
            self.model.weight(name)  # raises the error naming the missing tensor
        self._mm_w(m, x, y, n)

    def _mm_w(self, m: _Matrix, x, y, n: int, x_off: int = 0) -> None:
        for a, rows, buf in m.chunks:
            name, defines, groups = matrix_kernel(self.dev, self.wide, m.qtype, rows, n)
            self._dispatch(name, defines, [buf, x, y], [rows, m.n_cols, m.row_bytes, n, x_off, a, m.n_rows], groups)

    def _traced(self, layer: int, op: str, src, count: int) -> None:
        if self.trace is None:
            return
        dst = self.dev.buffer(count * 4)  # host-visible: read back after the batch
        self._ew(dst, src, count, COPY)
        self._trace_bufs.append(((layer, op), dst, count))

    def _read_trace(self, n: int) -> None:
        self.trace.clear()
        for key, buf, count in self._trace_bufs:
            self.trace[key] = buf.read(F32, count).reshape(n, -1)
            self.dev.forget([buf])
            buf.free()
        self._trace_bufs = []
