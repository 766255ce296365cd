"""The host side of the KV cache layout the vulkan and opencl runtimes share.

Per layer, the caches of all sequences lie in one buffer, sequence q's slots from
q * capacity: a ring of W + ubatch slots on sliding layers (slot = position mod ring: a
micro-batch stores its keys before attending and must not evict a key one of its own rows
still needs), one slot per position from the sequence's base on full layers, grown by
doubling up to max_context (g4c.session.KVPlan). Beside each cache, the key position every
slot holds (-1: empty) lives on the device, where attention reads it to mask, written there
by the kernel that stores keys; the session keeps a host copy (`kpos_host`) that it edits
when a sequence forgets positions and uploads through `_upload_kpos`.

`SlotSession` holds that copy and makes each batch's inputs (positions and sequences, slots,
the RoPE cos/sin tables); the runtime supplies the device: its buffers, its kernels and
`_upload_kpos`. `memory_plan` is both runtimes' plan, `attention_cache` an op case's cache in
this layout.
"""

from __future__ import annotations

import numpy as np

from .config import LayerSpec
from .errors import UnsupportedModelError
from .model import Model
from .plan import MemoryPlan, kv_bytes
from .rope import inv_freq_f32
from .session import Session

F32, I32 = np.float32, np.int32
FIRST_FULL_CAP = 256  # full-layer slots per sequence at load (then doubled as positions need)


def memory_plan(runtime: str, model: Model, n_ctx: int, n_seq: int, ubatch: int) -> MemoryPlan:
    """Device memory at n_ctx: quantized weights, f32 KV (sliding rings of W + ubatch), and
    per-batch scratch (activations and attention scores of one micro-batch)."""
    c = model.config
    kv = kv_bytes(c, n_ctx, n_seq, ring_extra=ubatch)
    F = max(s.n_ff for s in c.layers)
    rows = max(min(ubatch, n_ctx), n_seq)
    scratch = rows * (4 * c.n_embd + 3 * c.n_head * c.head_dim_full + 2 * F + model.n_vocab) * 4 \
        + rows * c.n_head * n_ctx * 4
    return MemoryPlan(runtime, n_ctx, n_seq, model.weight_bytes, kv, scratch, "device")


def cs_table(pos: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """(n, n_rot) cos then sin of each row's angles: f32 angles (as the reference forms them),
    cos and sin evaluated in float64, so angles at position 262143 keep the host's accuracy."""
    ang = (pos.astype(F32)[:, None] * inv_freq[None, :]).astype(np.float64)
    return np.concatenate([np.cos(ang), np.sin(ang)], 1).astype(F32)


class SlotSession(Session):
    """A session whose caches follow the layout above; see the module docstring."""

    def _init_slots(self) -> None:
        self.ring = self.kv.ring
        self.full_cap = min(FIRST_FULL_CAP, self.max_context)
        self.inv_freq = {s.index: inv_freq_f32(s, self.model.rope_freqs) for s in self.cfg.layers}
        self.kpos_host = {s.index: np.full(self.n_seq * self._cap(s), -1, I32) for s in self.cfg.layers}

    def _cap(self, s: LayerSpec) -> int:
        return self.ring if s.sliding else self.full_cap

    def _upload_kpos(self, layer: int, values: np.ndarray, offset: int) -> None:
        """Write values (int32) into the device's slot positions of layer, from byte offset."""
        raise NotImplementedError

    def _grown_kpos(self, layer: int, new: int) -> np.ndarray:
        """Layer's host slot positions with each sequence's full-layer slots grown from
        full_cap to new (the new ones empty); the caller uploads them with the grown caches."""
        kp = np.full((self.n_seq, new), -1, I32)
        kp[:, :self.full_cap] = self.kpos_host[layer].reshape(self.n_seq, self.full_cap)
        self.kpos_host[layer] = kp.reshape(-1)
        return self.kpos_host[layer]

    def _forget(self, seq: int, start: int) -> bool:
        """Slots of seq holding positions >= start marked empty, on the host and the device."""
        for s in self.cfg.layers:
            cap = self._cap(s)
            kp = self.kpos_host[s.index][seq * cap:(seq + 1) * cap]
            drop = kp >= start
            if drop.any():
                kp[drop] = -1
                self._upload_kpos(s.index, kp, seq * cap * 4)
        return True

    def _batch_inputs(self, seqs: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
        """A batch's inputs: (position, sequence) per row ("tok"), each row's slot in the
        sliding and full caches of all sequences ("slot_swa", "slot_full"; a ring of
        W + ubatch keeps every row of a micro-batch, so no -1 here), and the RoPE tables of
        each kind of layer ("cs_swa", "cs_full"). Records the key positions the rows take in
        kpos_host (the device's are written by the kernel that stores the keys)."""
        out = {"tok": np.stack([pos, seqs], 1).astype(I32),
               "slot_swa": (seqs * self.ring + self.kv.ring_slots(seqs, pos)).astype(I32),
               "slot_full": (seqs * self.full_cap + self.kv.full_slots(seqs, pos, self.base)).astype(I32)}
        for s in self.cfg.layers:
            self.kpos_host[s.index][out["slot_swa" if s.sliding else "slot_full"]] = pos
        for kind in ("swa", "full"):
            spec = next((s for s in self.cfg.layers if s.sliding == (kind == "swa")), None)
            if spec is not None:
                out[f"cs_{kind}"] = cs_table(pos, self.inv_freq[spec.index])
        return out


def attention_cache(case, inputs: dict, ubatch: int, runtime: str):
    """An op case's keys and values laid out as a SlotSession lays out one sequence's cache:
    (capacity, K cache, V cache, slot positions, (position, sequence 0) per query, each
    query's own slot). A ring holds W + ubatch keys: more query rows are refused, naming them."""
    d, Hkv, n = case.d, case.kv_heads, case.n
    kpos = inputs["kpos"].astype(np.int64)
    if case.window:
        if n > ubatch:
            raise UnsupportedModelError(f"{n} query rows: the {runtime} ring holds W + {ubatch} keys")
        cap = case.window + ubatch
        slots = kpos % cap
    else:
        cap = max(16, 1 << int(case.n_keys - 1).bit_length())  # grown by doubling, as the session's
        slots = kpos - case.key_base
    kc, vc = np.zeros((cap, Hkv, d), F32), np.zeros((cap, Hkv, d), F32)
    kc[slots], vc[slots] = inputs["k"], inputs["v"]
    held = np.full(cap, -1, I32)
    held[slots] = kpos
    tok = np.stack([inputs["qpos"], np.zeros(n, I32)], 1).astype(I32)
    return cap, kc, vc, held, tok, slots[-n:].astype(I32)
