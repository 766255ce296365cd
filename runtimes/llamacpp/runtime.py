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
where llama.cpp cannot remove part of a sliding-window cache, the session base
(g4c.session.Session) clears the sequence and evaluates its kept tokens again.

The context: positions are values in llama.cpp's cache cells, not indices, so a context only
needs a cell per token a sequence holds, and a prompt at position 262136 fits a small one. A
session may hold max_context positions per sequence; its context starts at
min(max_context, G4C_LLAMACPP_CTX, default 8192) cells per sequence, since the conformance
tests load with max_context = the model's whole context (to place prompts anywhere in it)
and hold at most a few thousand tokens (a context of 262144 costs 2 GiB and a second per load
on the tiny fixture, 180 GiB on the schema fixture). A call that would fill the context grows
it first, to twice what the sequences then hold (at most max_context): a new context, into
which the tokens held are evaluated again (none when a prefill starts a sequence: the
benchmarks' prefill to a depth grows before it evaluates). Each context is planned first
(memory_plan): a machine short of memory for it raises ResourceUnavailable with the figures,
at load for the first context, before the call that needs a larger one.

A llama.cpp fork plugs in by library path: G4C_LLAMA_LIB=/path/to/libllama.so is checked for
every C function this runtime calls (the runtime is unavailable, naming the missing ones and
the file, if any is absent), then loaded in place of llama-cpp-python's own through its
LLAMA_CPP_LIB_PATH, which names a directory holding libllama.so. llama-cpp-python's ctypes
structs must still match the fork's (a fork of the same llama.cpp era). settings() records
the library loaded and its build (system info line, ggml version and commit where exported).
"""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

from g4c import quants
from g4c.errors import DeviceUnavailableError, G4CError
from g4c.model import Model
from g4c.plan import MemoryPlan, available_host_memory, check_fits
from g4c.runtime import Availability, Capabilities, departure
from g4c.session import Session

N_BATCH = 512
CTX_ENV, DEFAULT_CTX = "G4C_LLAMACPP_CTX", 8192  # cells per sequence a context starts with
KV_TYPES = {"f32": 0, "f16": 1}
KV_BYTES = {"f32": 4, "f16": 2}
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}
LIB_ENV = "G4C_LLAMA_LIB"
# the name llama-cpp-python loads from the directory LLAMA_CPP_LIB_PATH names
LIB_NAME = {"darwin": "libllama.dylib", "win32": "llama.dll"}.get(sys.platform, "libllama.so")
# every C function of llama.h this runtime calls: a library lacking one cannot run it
C_API = ("llama_backend_init", "llama_log_set", "llama_print_system_info", "llama_model_default_params",
         "llama_model_load_from_file", "llama_model_get_vocab", "llama_model_free", "llama_vocab_n_tokens",
         "llama_vocab_is_eog", "llama_tokenize", "llama_context_default_params", "llama_init_from_model", "llama_free",
         "llama_n_ctx", "llama_get_memory", "llama_memory_seq_rm", "llama_batch_init", "llama_batch_free",
         "llama_decode", "llama_get_logits_ith")


def _lib():
    """llama-cpp-python, bound to G4C_LLAMA_LIB when that is set (checked first); raises
    DeviceUnavailableError with the reason it cannot be used."""
    chosen = os.environ.get(LIB_ENV)
    if chosen:
        chosen = _checked_library(chosen)
        os.environ["LLAMA_CPP_LIB_PATH"] = os.path.dirname(chosen)  # read by llama_cpp when first imported
    try:
        import llama_cpp
    except ImportError as e:
        raise DeviceUnavailableError(
            f"llama-cpp-python is not installed ({e}); pip install -e '.[llamacpp]' builds it from source") from None
    except (OSError, RuntimeError, AttributeError) as e:  # its import loads the library and binds every function
        raise DeviceUnavailableError(f"llama-cpp-python cannot use the library in "
                                     f"{os.environ.get('LLAMA_CPP_LIB_PATH') or 'its package'}: {e}") from None
    loaded = library_path(llama_cpp)
    if chosen and os.path.realpath(loaded) != os.path.realpath(chosen):
        raise DeviceUnavailableError(f"{LIB_ENV}={chosen}, but this process loaded llama.cpp from {loaded} before it was "
                                     f"set; set {LIB_ENV} before the suite starts")
    return llama_cpp


def _checked_library(path: str) -> str:
    """The absolute path of G4C_LLAMA_LIB, once it is a loadable file of the name
    llama-cpp-python loads and has every function in C_API; DeviceUnavailableError otherwise."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise DeviceUnavailableError(f"{LIB_ENV}={path}: no such file")
    if os.path.basename(path) != LIB_NAME:
        raise DeviceUnavailableError(f"{LIB_ENV}={path}: llama-cpp-python loads a file named {LIB_NAME} (from the "
                                     f"directory LLAMA_CPP_LIB_PATH names); link or copy it under that name")
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise DeviceUnavailableError(f"{LIB_ENV}={path} does not load: {e}") from None
    missing = [name for name in C_API if not hasattr(lib, name)]
    if missing:
        raise DeviceUnavailableError(f"{LIB_ENV}={path} lacks {len(missing)} of the {len(C_API)} llama.cpp C functions "
                                     f"this runtime calls: {', '.join(missing)}")
    return path


def library_path(llama_cpp) -> str:
    """The libllama file llama-cpp-python loaded."""
    return llama_cpp.llama_cpp._lib._name


def build_info(llama_cpp) -> dict:
    """ggml's version and commit, where the loaded library exports them (ggml_version and
    ggml_commit, in ggml since mid 2025; dlsym finds them through libllama's own
    dependencies); {} where it does not."""
    lib, info = llama_cpp.llama_cpp._lib, {}
    for name in ("ggml_version", "ggml_commit"):
        if hasattr(lib, name):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_char_p
            info[name] = fn().decode()
    return info


ACTIVATIONS = ("llama.cpp's CPU matmuls round the activations before multiplying "
               "(8-bit blocks, Q8_0 or Q8_K, for quantized weights; bf16 for BF16 weights)")
REAL_270M = ACTIVATIONS + " (the 270M is Q4_K/Q5_0/Q6_K/Q8_0; its F32 copy passes)"
# the weight types whose matmuls round the activations: all but F32 and F16
ROUNDED = tuple(t.name for t in quants.SUPPORTED_TYPES if t.name not in ("F32", "F16"))


def memory_plan(model: Model, n_ctx: int, n_seq: int = 1, kv_type: str = "f32") -> MemoryPlan:
    """Host memory of a session whose context holds n_ctx cells per sequence, as llama.cpp
    0.3.36 allocates it (its log's buffer sizes on the tiny, schema and Gemma 3 270M files):
    the mapped file; a KV cache per sequence with every layer at n_ctx cells (llama-cpp-python's
    default swa_full keeps sliding layers whole); and a compute buffer reserved for a
    micro-batch of N_BATCH rows against the whole context, the larger of attention scores and
    mask, (heads + 2) x n_ctx floats per row, and the head's logits, plus the activations and
    the output buffer of a micro-batch's logits (every row's, as prefill may ask)."""
    c = model.config
    owners = c.layers[: c.n_layer - c.shared_kv_layers]
    kv = n_seq * n_ctx * sum(2 * s.n_head_kv * s.head_dim * KV_BYTES[kv_type] for s in owners)
    qd = max(c.n_head * s.head_dim for s in c.layers)
    rows = N_BATCH * 4  # bytes per float of each row of a micro-batch
    scratch = (rows * max((c.n_head + 2) * n_ctx, model.n_vocab)
               + rows * (6 * c.n_embd + 4 * qd + 3 * max(s.n_ff for s in c.layers))
               + rows * model.n_vocab)
    return MemoryPlan("llamacpp", n_ctx, n_seq, model.weight_bytes, kv, scratch, "host")


def _first_context() -> int:
    """Cells per sequence a context starts with: G4C_LLAMACPP_CTX, default 8192; G4CError
    naming the variable when it is not a whole number of 1 or more."""
    raw = os.environ.get(CTX_ENV, "").strip() or str(DEFAULT_CTX)
    if not raw.isdigit() or int(raw) < 1:
        raise G4CError(f"{CTX_ENV} must be a whole number of cells of 1 or more, got {raw!r}")
    return int(raw)


class LlamaCppRuntime:
    name = "llamacpp"
    capabilities = Capabilities(
        precision="f16",  # spec section 5: 8-bit activations on quantized matmuls, f16 GeLU table
        backend="CPU (llama.cpp)",
        methods=frozenset({"settings", "memory_bandwidth"}),
        # where llama.cpp departs from the reference by design, with the spec section (conftest
        # turns each into a strict xfail: still run and measured, and a pass flags it stale)
        departures=(
            departure("test_model_in_type", "5", ACTIVATIONS, qtype=ROUNDED),
            departure("test_greedy_parity", "5", ACTIVATIONS, preset="tiny", qtype=ROUNDED),
            departure("test_llamacpp_golden", "5", ACTIVATIONS, preset="tiny", qtype=ROUNDED),
            departure("test_gemma3_270m_llamacpp", "5", REAL_270M),
            departure("test_gemma3_270m_reference_greedy", "5", REAL_270M),
            departure("test_architecture_strings", "1",
                      "files may declare gemma4_unified; llama.cpp's architecture table knows only gemma4", arch="gemma4_unified"),
        ))

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

    def settings(self) -> dict:
        """llama.cpp's build (its system info line; ggml's version and commit where exported),
        the library file loaded (G4C_LLAMA_LIB's, or llama-cpp-python's own) and the settings
        every session takes."""
        from g4c.provenance import cpu_name

        lib = _lib()
        return {"device": cpu_name(), "driver": f"{self.version()}: {lib.llama_print_system_info().decode().strip()}",
                "kv_type": os.environ.get("G4C_LLAMACPP_KV", "f32"),
                "flash_attn": os.environ.get("G4C_LLAMACPP_FLASH_ATTN", "off"),
                "library": library_path(lib), "library_build": build_info(lib)}

    def load(self, model: Model, max_context: int, n_seq: int = 1, trace: bool = False) -> "LlamaCppSession":
        global _silent_callback
        lib = _lib()
        if not self._ready:
            lib.llama_backend_init()
            # kept for the life of the process: llama.cpp calls it from then on
            _silent_callback = _silent_callback or lib.llama_log_callback(_silent)
            lib.llama_log_set(_silent_callback, ctypes.c_void_p())
            self._ready = True
        return LlamaCppSession(lib, model, max_context, n_seq)

    @staticmethod
    def memory_bandwidth() -> dict:
        from g4c.bench import host_read_bandwidth

        return host_read_bandwidth()


def _silent(level, text, user_data):  # llama.cpp's log goes nowhere (errors reach us as return codes)
    return None


# made on first load, not at import: importing llama_cpp binds the library, which
# G4C_LLAMA_LIB may still have to choose
_silent_callback = None


class LlamaCppSession(Session):
    ubatch = N_BATCH

    def __init__(self, lib, model: Model, max_context: int, n_seq: int):
        super().__init__(model, max_context, n_seq)  # no trace: llama.cpp exposes no per-layer outputs here
        self.lib = lib
        self.kv_type = os.environ.get("G4C_LLAMACPP_KV", "f32")
        if self.kv_type not in KV_TYPES:
            raise G4CError(f"G4C_LLAMACPP_KV must be one of {', '.join(KV_TYPES)}, got {self.kv_type!r}")
        first = min(max_context, _first_context())
        self._plan = check_fits(lambda n: memory_plan(model, n, n_seq, self.kv_type), first, max_context,
                                available_host_memory(), f"{model.path} on llamacpp")
        mp = lib.llama_model_default_params()
        mp.n_gpu_layers = 0
        self._model = lib.llama_model_load_from_file(str(model.path).encode(), mp)
        if not self._model:
            raise G4CError(f"{model.path}: llama.cpp could not load the model (llama_model_load_from_file failed)")
        vocab = lib.llama_model_get_vocab(self._model)
        if lib.llama_vocab_n_tokens(vocab) != model.n_vocab:
            raise G4CError(f"{model.path}: llama.cpp sees {lib.llama_vocab_n_tokens(vocab)} tokens, the file {model.n_vocab}")
        cp = lib.llama_context_default_params()
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
        self._cp, self._ctx = cp, None
        self._batch = lib.llama_batch_init(N_BATCH, 0, n_seq)
        self._new_context(first)

    def _new_context(self, per_seq: int) -> None:
        """Replace the context (empty caches) with one of per_seq cells per sequence."""
        if self._ctx:
            self.lib.llama_free(self._ctx)
            self._ctx = None
        self._cp.n_ctx = self.n_seq * per_seq
        self._ctx = self.lib.llama_init_from_model(self._model, self._cp)
        if not self._ctx:
            raise G4CError(f"{self.model.path}: llama.cpp could not create a context of {per_seq} cells per sequence "
                           f"x {self.n_seq} (llama_init_from_model failed)")
        self.n_ctx = self.lib.llama_n_ctx(self._ctx)
        self.per_seq = self.n_ctx // self.n_seq  # llama.cpp may round the context up
        self._mem = self.lib.llama_get_memory(self._ctx)

    def _check_held(self, held: int) -> None:
        """Grow the context before a call that would leave a sequence holding `held` positions
        in a full one (the session base has bounded held by max_context): to twice that, at
        most max_context, planned against the memory available plus what this context frees,
        then the tokens every sequence holds evaluated into it again."""
        if held < self.per_seq or self.per_seq >= self.max_context:
            return
        per_seq = min(self.max_context, 2 * held)
        self._plan = check_fits(lambda n: memory_plan(self.model, n, self.n_seq, self.kv_type), per_seq,
                                self.max_context, available_host_memory() + self._plan.total,
                                f"{self.model.path} on llamacpp, growing its context for {held} positions held")
        self._new_context(per_seq)
        for q in range(self.n_seq):
            toks = np.array(self.history[q], np.int64)
            for a in range(0, len(toks), N_BATCH):
                part = toks[a:a + N_BATCH]
                self._forward(part, np.full(len(part), q), self.base[q] + a + np.arange(len(part)), False)

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

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's ids for text, add_special (BOS) and parse_special on."""
        vocab = self.lib.llama_model_get_vocab(self._model)
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        buf = (ctypes.c_int32 * n_max)()
        n = self.lib.llama_tokenize(vocab, raw, len(raw), buf, n_max, True, True)
        if n < 0:
            raise G4CError(f"llama_tokenize needs {-n} tokens for {text!r}")
        return list(buf[:n])

    def eog_ids(self) -> list[int]:
        """The ids llama.cpp ends generation at."""
        vocab = self.lib.llama_model_get_vocab(self._model)
        return [i for i in range(self.n_vocab) if self.lib.llama_vocab_is_eog(vocab, i)]

    def _forget(self, seq: int, start: int) -> bool:
        """llama_memory_seq_rm of positions >= start; False where llama.cpp refuses (part of a
        sliding-window cache)."""
        if start <= self.base[seq]:
            start = -1  # the whole sequence
        return bool(self.lib.llama_memory_seq_rm(self._mem, seq, start, -1))

    def _forward(self, toks: np.ndarray, seqs: np.ndarray, pos: np.ndarray, all_logits: bool) -> np.ndarray:
        """One llama_decode of at most N_BATCH rows; logits of every row (or of the last)."""
        if not self._ctx:
            raise G4CError(f"{self.model.path}: this session has no llama.cpp context (creating a larger one failed)")
        n, b = len(toks), self._batch
        for i in range(n):
            b.token[i] = int(toks[i])
            b.pos[i] = int(pos[i])
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = int(seqs[i])
            b.logits[i] = all_logits or i == n - 1
        b.n_tokens = n
        rc = self.lib.llama_decode(self._ctx, b)
        if rc != 0:
            raise G4CError(f"{self.model.path}: llama_decode failed with code {rc} at positions {int(pos[0])}..{int(pos[-1])}")
        rows = range(n) if all_logits else [n - 1]
        out = np.empty((len(rows), self.n_vocab), np.float32)
        for j, i in enumerate(rows):
            ptr = self.lib.llama_get_logits_ith(self._ctx, i)
            out[j] = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (self.n_vocab,))
        return out
