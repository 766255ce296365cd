"""llama.cpp as a runtime, through llama-cpp-python's low-level C API (ctypes).

The first outside engine the suite tests, registered through the same entry point as any
engine would. Sequences map to llama.cpp sequence ids in one context (n_seq_max = n_seq,
per-sequence KV), positions are set per token, so `prefill(start_pos=262136)` really
evaluates at position 262136 and batched decode is one llama_decode of N tokens.

llama.cpp is not a float64 engine (spec section 5): its CPU matmuls quantize activations
to 8-bit blocks on quantized weights and GeLU goes through an f16 table. It is held to the
f16 tolerance class. Its most exact settings are the defaults here: an f32 KV cache
(G4C_LLAMACPP_KV=f16 gives llama.cpp's own default) and flash attention off
(G4C_LLAMACPP_FLASH_ATTN=auto|on); every session records both (`kv_type`, `flash_attn`).

Rewinding (start_pos below the next position) removes the tail with llama_memory_seq_rm;
where llama.cpp cannot remove part of a sliding-window cache, the sequence is cleared and
its kept tokens are evaluated again.
"""

from __future__ import annotations

import ctypes
import os
from typing import Sequence

import numpy as np

from g4c.errors import DeviceUnavailableError, G4CError
from g4c.model import Model
from g4c.runtime import Availability, check_decode, check_load, check_prefill, check_seq, check_tokens

N_BATCH = 512
KV_TYPES = {"f32": 0, "f16": 1}
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


def _lib():
    try:
        import llama_cpp
    except ImportError as e:
        raise DeviceUnavailableError(
            f"llama-cpp-python is not installed ({e}); pip install -e '.[llamacpp]' builds it from source") from None
    return llama_cpp


ACTIVATIONS = ("spec section 5: llama.cpp's CPU matmuls round the activations before multiplying "
               "(8-bit blocks, Q8_0 or Q8_K, for quantized weights; bf16 for BF16 weights)")
QUANTIZED = r"(Q\w+|BF16)"


class LlamaCppRuntime:
    name = "llamacpp"
    backend = "CPU (llama.cpp)"
    precision = "f16"  # spec section 5: 8-bit activations on quantized matmuls, f16 GeLU table
    # where llama.cpp departs from the reference, by design, with the spec section (conftest
    # turns each into a strict xfail: still run and measured, and a pass would flag it stale)
    departures = {
        rf"test_weight_types\.py::test_model_in_type\[{QUANTIZED}\]": ACTIVATIONS,
        rf"test_greedy\.py::test_greedy_parity\[tiny-{QUANTIZED}\]": ACTIVATIONS,
        rf"test_llamacpp_parity\.py::test_llamacpp_golden\[tiny-{QUANTIZED}\]": ACTIVATIONS,
        r"test_llamacpp_parity\.py::test_gemma3_270m_(llamacpp|reference_greedy)":
            ACTIVATIONS + " (the 270M is Q4_K/Q5_0/Q6_K/Q8_0; its F32 copy passes)",
        r"test_header\.py::test_architecture_strings\[gemma4_unified\]":
            "spec section 1: files may declare gemma4_unified; llama.cpp's architecture table knows only gemma4",
    }

    def __init__(self):
        self._ready = False

    def availability(self) -> Availability:
        try:
            _lib()
        except DeviceUnavailableError as e:
            return Availability(False, str(e))
        return Availability(True)

    def version(self) -> str:
        lib = _lib()
        return f"llama-cpp-python {lib.__version__}"

    def load(self, model: Model, max_context: int, n_seq: int = 1, trace: bool = False) -> "LlamaCppSession":
        lib = _lib()
        if not self._ready:
            lib.llama_backend_init()
            lib.llama_log_set(_SILENT, ctypes.c_void_p())
            self._ready = True
        return LlamaCppSession(lib, model, max_context, n_seq)

    @staticmethod
    def memory_bandwidth() -> dict:
        from g4c.bench import host_read_bandwidth

        return host_read_bandwidth()


def _silent(level, text, user_data):  # llama.cpp's log goes nowhere (errors reach us as return codes)
    return None


try:
    import llama_cpp as _lc

    _SILENT = _lc.llama_log_callback(_silent)
except ImportError:
    _SILENT = None


class LlamaCppSession:
    def __init__(self, lib, model: Model, max_context: int, n_seq: int):
        check_load(model, max_context, n_seq)
        self.lib, self.model = lib, model
        self.max_context, self.n_seq = max_context, n_seq
        self.trace = None  # llama.cpp exposes no per-layer outputs through this API
        self.kv_type = os.environ.get("G4C_LLAMACPP_KV", "f32")
        if self.kv_type not in KV_TYPES:
            raise G4CError(f"G4C_LLAMACPP_KV must be one of {', '.join(KV_TYPES)}, got {self.kv_type!r}")
        mp = lib.llama_model_default_params()
        mp.n_gpu_layers = 0
        self._model = lib.llama_model_load_from_file(str(model.path).encode(), mp)
        if not self._model:
            raise G4CError(f"{model.path}: llama.cpp could not load the model (llama_model_load_from_file failed)")
        vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = lib.llama_vocab_n_tokens(vocab)
        if self.n_vocab != model.n_vocab:
            raise G4CError(f"{model.path}: llama.cpp sees {self.n_vocab} tokens, the file {model.n_vocab}")
        cp = lib.llama_context_default_params()
        # positions are values in llama.cpp's cache cells, not indices: the cache only needs
        # room for the tokens held, so a prompt at position 262136 fits a small context
        cp.n_ctx = n_seq * min(max_context, int(os.environ.get("G4C_LLAMACPP_CTX", "8192")))
        cp.n_batch = cp.n_ubatch = N_BATCH
        cp.n_seq_max = n_seq
        cp.n_threads = cp.n_threads_batch = os.cpu_count() or 1
        cp.type_k = cp.type_v = KV_TYPES[self.kv_type]
        # off by default: the CPU flash-attention path rounds to f16 and moves logits by up to
        # 0.32 at 1024 keys on the window fixture (0.007 without); auto is llama.cpp's default
        fa = os.environ.get("G4C_LLAMACPP_FLASH_ATTN", "off")
        if fa not in FLASH_ATTN:
            raise G4CError(f"G4C_LLAMACPP_FLASH_ATTN must be one of {', '.join(FLASH_ATTN)}, got {fa!r}")
        cp.flash_attn_type = FLASH_ATTN[fa]
        self.flash_attn = fa
        cp.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cp)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise G4CError(f"{model.path}: llama.cpp could not create a context of {cp.n_ctx}")
        self.n_ctx = lib.llama_n_ctx(self._ctx)
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(N_BATCH, 0, n_seq)
        self._last = np.zeros((n_seq, self.n_vocab), np.float32)
        self.reset()

    def __del__(self):
        lib = getattr(self, "lib", None)
        if lib is None:
            return
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    @property
    def logits(self) -> np.ndarray:
        return self._last[0]

    def reset(self, seq: int | None = None) -> None:
        seqs = range(self.n_seq) if seq is None else [check_seq(seq, self.n_seq)]
        if seq is None:
            self.lib.llama_memory_clear(self._mem, True)
            self.base = [0] * self.n_seq
            self.history: list[list[int]] = [[] for _ in range(self.n_seq)]
        for s in seqs:
            self.lib.llama_memory_seq_rm(self._mem, s, -1, -1)
            self.base[s], self.history[s] = 0, []

    def _next(self, s: int) -> int:
        return self.base[s] + len(self.history[s])

    def prefill(self, tokens: Sequence[int], start_pos: int = 0, seq: int = 0, all_logits: bool = True) -> np.ndarray:
        toks = check_tokens(tokens, self.n_vocab)
        check_seq(seq, self.n_seq)
        check_prefill(start_pos, len(toks), self.max_context)
        if start_pos > self._next(seq) or start_pos < self.base[seq]:
            self.reset(seq)  # a gap (or a rewind before the sequence began): start afresh there
            self.base[seq] = start_pos
        elif start_pos < self._next(seq):
            self._rewind(seq, start_pos)
        self._room(len(toks))
        rows = self._eval(toks, np.full(len(toks), seq), start_pos + np.arange(len(toks)), all_logits)
        self.history[seq] += [int(t) for t in toks]
        self._last[seq] = rows[-1]
        return rows if all_logits else rows[-1:]

    def decode(self, tokens: Sequence[int]) -> np.ndarray:
        toks = check_tokens(tokens, self.n_vocab)
        pos = np.array([self._next(s) for s in range(self.n_seq)])
        check_decode(len(toks), pos, self.max_context)
        self._room(1)
        rows = self._eval(toks, np.arange(self.n_seq), pos, True)
        for s, t in enumerate(toks):
            self.history[s].append(int(t))
        self._last[:] = rows
        return rows

    def _room(self, n_new: int) -> None:
        held = max(len(h) for h in self.history) + n_new
        if held > self.n_ctx // self.n_seq:
            raise G4CError(f"llama.cpp context of {self.n_ctx // self.n_seq} per sequence cannot hold {held} tokens "
                           "(G4C_LLAMACPP_CTX sets it)")

    def _rewind(self, seq: int, start_pos: int) -> None:
        keep = start_pos - self.base[seq]
        if not self.lib.llama_memory_seq_rm(self._mem, seq, start_pos, -1):
            kept = self.history[seq][:keep]
            base = self.base[seq]
            self.reset(seq)
            self.base[seq] = base
            if kept:
                self._eval(np.array(kept), np.full(len(kept), seq), base + np.arange(len(kept)), False)
                self.history[seq] = kept
            return
        self.history[seq] = self.history[seq][:keep]

    def _eval(self, toks: np.ndarray, seqs: np.ndarray, pos: np.ndarray, all_logits: bool) -> np.ndarray:
        """llama_decode in batches of N_BATCH; logits of every row (or of the last)."""
        out = np.empty((len(toks) if all_logits else 1, self.n_vocab), np.float32)
        b = self._batch
        for a in range(0, len(toks), N_BATCH):
            n = min(N_BATCH, len(toks) - a)
            for i in range(n):
                j = a + i
                b.token[i] = int(toks[j])
                b.pos[i] = int(pos[j])
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = int(seqs[j])
                b.logits[i] = all_logits or j == len(toks) - 1
            b.n_tokens = n
            rc = self.lib.llama_decode(self._ctx, b)
            if rc != 0:
                raise G4CError(f"{self.model.path}: llama_decode failed with code {rc} at positions "
                               f"{int(pos[a])}..{int(pos[a + n - 1])}")
            for i in range(n):
                j = a + i
                if all_logits or j == len(toks) - 1:
                    ptr = self.lib.llama_get_logits_ith(self._ctx, i)
                    row = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (self.n_vocab,))
                    out[j if all_logits else 0] = row
        return out
