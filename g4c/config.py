"""GGUF metadata parsed once into a frozen ModelConfig with one LayerSpec per layer.

No runtime reads GGUF keys itself: everything a forward needs is here, derived in
`ModelConfig.from_gguf` exactly as ../shared/spec/gemma4.md sections 1, 2 and 6 say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from gguf import GGUFValueType as VT

from .errors import GGUFFormatError, UnsupportedModelError

GEMMA4_ARCHS = ("gemma4", "gemma4_unified")
GEMMA3_ARCHS = ("gemma3",)
SUPPORTED_ARCHS = GEMMA4_ARCHS + GEMMA3_ARCHS

_INT_TYPES = {VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.UINT64, VT.INT64}
_FLOAT_TYPES = {VT.FLOAT32, VT.FLOAT64}

# Per-layer-embedding (E2B/E4B) tensors: their presence means a model this suite does not run.
PLE_TENSORS = ("per_layer_token_embd.weight", "per_layer_model_proj.weight", "per_layer_proj_norm.weight")
PLE_LAYER_TENSORS = ("inp_gate", "proj", "post_norm")


@dataclass(frozen=True)
class MetaValue:
    """One GGUF key/value, decoded, with its GGUF type names (for the header dump)."""

    value: Any
    type_name: str


@dataclass(frozen=True)
class LayerSpec:
    index: int
    sliding: bool
    head_dim: int
    n_head_kv: int
    rope_base: float
    n_rot: int
    uses_rope_freqs: bool  # full layers of gemma4 divide their angles by rope_freqs
    rope_scale: float  # gemma3 linear rope scaling of full layers (positions / factor)
    has_v: bool  # False: k_eq_v, V is the raw K projection
    n_ff: int
    has_output_scale: bool
    window: int  # sliding layers: a query sees the last `window` keys, itself included; 0 on full layers
    attn_scale: float  # gemma4: 1.0 (q and k are normed); gemma3: 1/sqrt(key_length)

    @property
    def kind(self) -> str:
        return "sliding" if self.sliding else "full"

    @property
    def v_source(self) -> str:
        return "attn_v" if self.has_v else "attn_k (k_eq_v)"


@dataclass(frozen=True)
class ModelConfig:
    path: str
    arch: str  # general.architecture as stored
    family: str  # "gemma4" or "gemma3": which forward math applies
    n_layer: int
    n_ctx_train: int
    n_vocab: int
    n_embd: int
    n_head: int
    head_dim_full: int
    head_dim_swa: int
    window: int
    eps: float
    shared_kv_layers: int
    final_softcap: float | None
    v_norm: bool  # gemma4: weightless RMS norm on V
    tied_output: bool
    has_rope_freqs: bool
    suppress_tokens: tuple[int, ...]
    bos_id: int | None
    eos_ids: tuple[int, ...]
    layers: tuple[LayerSpec, ...]
    metadata: Mapping[str, MetaValue] = field(repr=False, compare=False)

    @property
    def embd_scale(self) -> float:
        # llama.cpp multiplies by sqrtf(n_embd) in f32; the parity target (spec section 5)
        return float(np.sqrt(np.float32(self.n_embd), dtype=np.float32))

    @property
    def full_layers(self) -> tuple[int, ...]:
        return tuple(s.index for s in self.layers if not s.sliding)

    @classmethod
    def from_gguf(cls, path: str, meta: Mapping[str, MetaValue], tensor_names: set[str]) -> "ModelConfig":
        keys = _Keys(path, meta)
        arch = keys.string("general.architecture", prefixed=False)
        if arch not in SUPPORTED_ARCHS:
            raise UnsupportedModelError(
                f"{path}: general.architecture = {arch!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ARCHS)})"
            )
        ple = sorted(n for n in tensor_names if _is_ple_tensor(n))
        n_ple = keys.int("embedding_length_per_layer_input", default=0)
        if ple or n_ple:
            raise UnsupportedModelError(
                f"{path}: per-layer embeddings (PLE, Gemma 4 E2B/E4B) are not supported: "
                f"embedding_length_per_layer_input = {n_ple}, PLE tensors present: {', '.join(ple[:6]) or 'none'}"
            )
        family = "gemma3" if arch in GEMMA3_ARCHS else "gemma4"
        n_layer = keys.int("block_count")
        n_embd = keys.int("embedding_length")
        keys.positive("block_count", n_layer, limit=4096)
        keys.positive("embedding_length", n_embd, limit=1 << 20)
        n_head = keys.per_layer_int("attention.head_count", n_layer)
        if len(set(n_head)) != 1:
            raise UnsupportedModelError(f"{path}: per-layer attention.head_count is not supported")
        n_head_kv = keys.per_layer_int("attention.head_count_kv", n_layer)
        n_ff = keys.per_layer_int("feed_forward_length", n_layer)
        head_dim_full = keys.int("attention.key_length", default=n_embd // n_head[0])
        if keys.int("attention.value_length", default=head_dim_full) != head_dim_full:
            raise UnsupportedModelError(f"{path}: value_length != key_length is not supported")
        window = keys.int("attention.sliding_window")
        eps = keys.float("attention.layer_norm_rms_epsilon")
        keys.positive("attention.head_count", min(n_head), limit=1 << 12)
        keys.positive("attention.head_count_kv", min(n_head_kv), limit=max(n_head))
        keys.positive("feed_forward_length", min(n_ff), limit=1 << 24)
        keys.positive("attention.key_length", head_dim_full, limit=1 << 14)
        keys.positive("attention.sliding_window", window, limit=1 << 31)
        if not (0 < eps < 1):
            raise GGUFFormatError(f"{path}: key {keys.full('attention.layer_norm_rms_epsilon')} = {eps} is not in (0, 1)")
        rope_base_full = keys.float("rope.freq_base", default=10000.0)
        n_rot_full = keys.int("rope.dimension_count", default=head_dim_full)
        has_rope_freqs = "rope_freqs.weight" in tensor_names

        if family == "gemma4":
            head_dim_swa = keys.int("attention.key_length_swa")
            if keys.int("attention.value_length_swa", default=head_dim_swa) != head_dim_swa:
                raise UnsupportedModelError(f"{path}: value_length_swa != key_length_swa is not supported")
            rope_base_swa = keys.float("rope.freq_base_swa")
            n_rot_swa = keys.int("rope.dimension_count_swa")
            keys.positive("attention.key_length_swa", head_dim_swa, limit=1 << 14)
            pattern = keys.bool_array("attention.sliding_window_pattern", n_layer)
            shared_kv = keys.int("attention.shared_kv_layers", default=0)
            softcap = keys.float("final_logit_softcapping", default=None)
            attn_scale = 1.0
            rope_scale = 1.0
        else:
            head_dim_swa = head_dim_full
            n_rot_swa = n_rot_full
            rope_base_swa = 10000.0  # llama.cpp hard-codes the local base of gemma3
            pattern = tuple((i + 1) % 6 != 0 for i in range(n_layer))
            shared_kv = 0
            softcap = None
            attn_scale = 1.0 / math.sqrt(head_dim_full)
            rope_scale = keys.float("rope.scaling.factor", default=1.0) if keys.has("rope.scaling.type") or keys.has("rope.scaling.factor") else 1.0
        for what, base in (("rope.freq_base", rope_base_full), ("rope.freq_base_swa", rope_base_swa)):
            if not (base > 1 and math.isfinite(base)):
                raise GGUFFormatError(f"{path}: key {keys.full(what)} = {base} must be a finite base above 1")
        if softcap is not None and not (softcap > 0 and math.isfinite(softcap)):
            raise GGUFFormatError(f"{path}: key {keys.full('final_logit_softcapping')} = {softcap} must be positive")
        if shared_kv:
            raise UnsupportedModelError(f"{path}: attention.shared_kv_layers = {shared_kv} (E2B/E4B KV sharing) is not supported")
        for what, n_rot, d in (("rope.dimension_count", n_rot_full, head_dim_full), ("rope.dimension_count_swa", n_rot_swa, head_dim_swa)):
            if n_rot > d or n_rot % 2:
                raise GGUFFormatError(f"{path}: {keys.full(what)} = {n_rot} does not fit head dim {d}")

        layers = []
        for i in range(n_layer):
            sliding = pattern[i]
            d = head_dim_swa if sliding else head_dim_full
            layers.append(
                LayerSpec(
                    index=i,
                    sliding=sliding,
                    head_dim=d,
                    n_head_kv=n_head_kv[i],
                    rope_base=rope_base_swa if sliding else rope_base_full,
                    n_rot=n_rot_swa if sliding else n_rot_full,
                    uses_rope_freqs=(family == "gemma4" and not sliding and has_rope_freqs),
                    rope_scale=1.0 if sliding else rope_scale,
                    has_v=f"blk.{i}.attn_v.weight" in tensor_names,
                    n_ff=n_ff[i],
                    has_output_scale=f"blk.{i}.layer_output_scale.weight" in tensor_names,
                    window=window if sliding else 0,
                    attn_scale=attn_scale,
                )
            )
            if n_head[0] % n_head_kv[i] or n_head_kv[i] < 1:
                raise GGUFFormatError(
                    f"{path}: layer {i}: head_count {n_head[0]} is not a multiple of head_count_kv {n_head_kv[i]}"
                )
        suppress = keys.int_array("tokenizer.ggml.suppress_tokens", prefixed=False, default=())
        eos = [keys.int("tokenizer.ggml.eos_token_id", prefixed=False, default=None)]
        eos += list(keys.int_array("tokenizer.ggml.eot_token_ids", prefixed=False, default=()))
        return cls(
            path=path,
            arch=arch,
            family=family,
            n_layer=n_layer,
            n_ctx_train=keys.int("context_length"),
            n_vocab=keys.int("vocab_size", default=0),
            n_embd=n_embd,
            n_head=n_head[0],
            head_dim_full=head_dim_full,
            head_dim_swa=head_dim_swa,
            window=window,
            eps=eps,
            shared_kv_layers=shared_kv,
            final_softcap=softcap,
            v_norm=(family == "gemma4"),
            tied_output="output.weight" not in tensor_names,
            has_rope_freqs=has_rope_freqs,
            suppress_tokens=tuple(suppress),
            bos_id=keys.int("tokenizer.ggml.bos_token_id", prefixed=False, default=None),
            eos_ids=tuple(dict.fromkeys(e for e in eos if e is not None)),
            layers=tuple(layers),
            metadata=meta,
        )


def _is_ple_tensor(name: str) -> bool:
    parts = name.split(".")
    return name in PLE_TENSORS or (parts[0] == "blk" and len(parts) == 4 and parts[2] in PLE_LAYER_TENSORS)


_MISSING = object()


class _Keys:
    """Typed access to metadata under the architecture prefix, with errors naming the key."""

    def __init__(self, path: str, meta: Mapping[str, MetaValue]):
        self.path, self.meta = path, meta
        arch = meta.get("general.architecture")
        self.prefix = arch.value if arch is not None and isinstance(arch.value, str) else ""

    def full(self, key: str, prefixed: bool = True) -> str:
        return f"{self.prefix}.{key}" if prefixed else key

    def has(self, key: str) -> bool:
        return self.full(key) in self.meta

    def _get(self, key: str, prefixed: bool, default: Any):
        name = self.full(key, prefixed)
        mv = self.meta.get(name)
        if mv is None:
            if default is _MISSING:
                raise GGUFFormatError(f"{self.path}: required key {name} is missing")
            return name, None, default
        return name, mv, None

    def _bad(self, name: str, mv: MetaValue, want: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.path}: key {name} has type {mv.type_name}, expected {want}")

    def positive(self, key: str, value: int, limit: int) -> None:
        if not 0 < value <= limit:
            raise GGUFFormatError(f"{self.path}: key {self.full(key)} = {value} is outside 1..{limit}")

    def string(self, key: str, prefixed: bool = True, default: Any = _MISSING) -> str:
        name, mv, dflt = self._get(key, prefixed, default)
        if mv is None:
            return dflt
        if mv.type_name != "STRING":
            raise self._bad(name, mv, "STRING")
        return mv.value

    def int(self, key: str, prefixed: bool = True, default: Any = _MISSING) -> int:
        name, mv, dflt = self._get(key, prefixed, default)
        if mv is None:
            return dflt
        if mv.type_name not in {t.name for t in _INT_TYPES}:
            raise self._bad(name, mv, "an integer")
        return int(mv.value)

    def float(self, key: str, prefixed: bool = True, default: Any = _MISSING) -> float:
        name, mv, dflt = self._get(key, prefixed, default)
        if mv is None:
            return dflt
        if mv.type_name not in {t.name for t in _FLOAT_TYPES}:
            raise self._bad(name, mv, "FLOAT32")
        return float(mv.value)

    def per_layer_int(self, key: str, n_layer: int) -> tuple[int, ...]:
        name, mv, _ = self._get(key, True, _MISSING)
        ints = {t.name for t in _INT_TYPES}
        if mv.type_name in ints:
            return (int(mv.value),) * n_layer
        if mv.type_name.startswith("ARRAY[") and mv.type_name[6:-1] in ints:
            if len(mv.value) != n_layer:
                raise GGUFFormatError(f"{self.path}: key {name} has {len(mv.value)} entries, block_count is {n_layer}")
            return tuple(int(v) for v in mv.value)
        raise self._bad(name, mv, "an integer or an integer array")

    def int_array(self, key: str, prefixed: bool = True, default: Any = _MISSING) -> tuple[int, ...]:
        name, mv, dflt = self._get(key, prefixed, default)
        if mv is None:
            return dflt
        if not (mv.type_name.startswith("ARRAY[") and mv.type_name[6:-1] in {t.name for t in _INT_TYPES}):
            raise self._bad(name, mv, "an integer array")
        return tuple(int(v) for v in mv.value)

    def bool_array(self, key: str, n_layer: int) -> tuple[bool, ...]:
        name, mv, _ = self._get(key, True, _MISSING)
        if mv.type_name != "ARRAY[BOOL]":
            raise self._bad(name, mv, "ARRAY[BOOL]")
        if len(mv.value) != n_layer:
            raise GGUFFormatError(f"{self.path}: key {name} has {len(mv.value)} entries, block_count is {n_layer}")
        return tuple(bool(v) for v in mv.value)
