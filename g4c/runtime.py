"""The one Runtime interface, the capability record of its optional parts, and the registry
that finds runtimes through entry points.

An engine plugs in by exposing, under the entry-point group `gemma4_conformance.runtimes`,
a zero-argument callable returning an object with:

    name: str
    availability() -> Availability            # device present? if not, why
    load(model, max_context, n_seq=1, trace=False) -> Session

and a Session with:

    prefill(tokens, start_pos=0, seq=0, all_logits=True) -> float32 (n or 1, vocab)
    decode(tokens) -> float32 (n_seq, vocab)   # one token per sequence, at its next position
    logits -> float32 (vocab,)                 # last logits of sequence 0
    reset(seq=None)                            # forget one sequence (or all)
    trace: dict[(layer, op), array] | None     # per-layer outputs of the last call, ops as in
                                               # g4c.reference.TRACE_OPS, when the runtime
                                               # declares trace and load(..., trace=True)

`prefill` at start_pos keeps the sequence's cached positions below start_pos when they
reach up to it (start_pos <= the next position) and forgets the rest; a start_pos past the
next position, or before the first position the sequence holds, begins the sequence afresh
there, so start_pos = 100000 on a new session places a prompt far out (long-position RoPE). g4c.session.Session implements these rules
for a runtime that supplies its forward.

Everything else is optional and declared in one record, `capabilities = Capabilities(...)`
on the runtime; a runtime that declares nothing gets the defaults and runs the whole suite
(tests that need what it lacks report "not supported": a g4c.errors.NotSupported raised
during a test is that outcome, with its message).

A runtime that gives only the most probable tokens (a server: `logits="top_k"`) has sessions
whose prefill, decode and logits raise NotSupported, and instead

    top_logprobs(tokens, k, first=0) -> (ids int64 (n - first, k), logprobs float64 (n - first, k))

row j holding the k most probable tokens after tokens[:first + j + 1], most probable first;
the tests that need only greedy tokens and top-1 (greedy parity, llama.cpp parity at decided
positions) run on it.

Op-level cases (g4c.opcases.CASES: dequantize, matvec, matmul, rms_norm, rope, attention,
softcap, gelu_mul, each with its inputs and a float64 expected output) run on a runtime that
names the ops it has in `Capabilities.ops` and has

    run_op(case, inputs, repeat=0) -> (float32 output, seconds)

case a g4c.opcases.OpCase, inputs its arrays as OpCase documents them; the output has the
case's output shape, and seconds holds the time of each of `repeat` further runs of the op
alone, inputs already on the device, each waited for (the perf mode's GB/s; a runtime that
returns fewer is timed by whole calls). A case the runtime cannot run (a head dim its kernel
does not take) raises g4c.errors.UnsupportedModelError naming the dimension: not supported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Mapping, Protocol, Sequence

import numpy as np

from .cases import Case
from .errors import G4CError
from .model import Model

ENTRY_POINT_GROUP = "gemma4_conformance.runtimes"


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


# optional methods a runtime may have, declared by name in Capabilities.methods
METHODS = {
    "settings": "settings() -> dict: what results depend on (device, driver, kernel path); recorded with every result file",
    "memory_plan": "memory_plan(model, n_ctx, n_seq=1) -> g4c.plan.MemoryPlan: its memory at a context (g4c plan; the "
                   "benchmarks' KV bytes)",
    "memory_bandwidth": "memory_bandwidth() -> dict(bytes_per_s, method, device): the benchmarks' roofline (default: "
                        "host read bandwidth)",
    "tokenize": "tokenize(model, text) -> list[int]: the engine's own token ids for text (BOS as the model adds it, "
                "special tokens parsed), held to llama.cpp's",
}
LOGITS = ("full", "top_k")  # Capabilities.logits

# what the suite's own runtimes declare: every method but tokenize, an engine's own tokenizer
# (a server's), which the suite's runtimes, built on its tokenizer, have no separate one of
EVERY_METHOD = frozenset(METHODS) - {"tokenize"}


@dataclass(frozen=True)
class Departure:
    """Where a runtime departs from the reference by design: the cases, the spec section and
    why. The test still runs; a failure is recorded as a departure, a pass fails the run (the
    declaration is stale)."""

    case: Case
    spec: str  # section of ../shared/spec/gemma4.md, e.g. "5"
    reason: str

    def __str__(self) -> str:
        return f"spec section {self.spec}: {self.reason}"


def departure(test: str, spec: str, reason: str, **params: Sequence[str] | str) -> Departure:
    """Departure(Case(test, params), spec, reason): departure("test_model_in_type", "5", why, qtype=("Q4_0", ...))."""
    return Departure(Case.of(test, **params), spec, reason)


@dataclass(frozen=True)
class Capabilities:
    """What a runtime declares beyond name, availability() and load(). Every field has a
    default, so a runtime that declares nothing still runs the whole suite."""

    precision: str = "f32"  # tolerance class (g4c.tolerance): "f32", or "f16" for f16 storage
    trace: bool = False  # sessions record per-layer outputs when loaded with trace=True
    weight_types: frozenset[str] | None = None  # GGML types it reads (None: every type the suite has)
    departures: tuple[Departure, ...] = ()
    methods: frozenset[str] = frozenset()  # optional methods it has, from METHODS
    ops: frozenset[str] = frozenset()  # ops run_op() runs, from g4c.opcases.OPS
    backend: str = ""  # llama-bench's backend column (default: the runtime's name)
    explicit_only: bool = False  # runs only when named (the CUDA emulator: right, but too slow for every run)
    logits: str = "full"  # "full": sessions return every logit; "top_k": only top log-probabilities (top_logprobs)

    def reads(self, qtype: str) -> bool:
        return self.weight_types is None or qtype in self.weight_types

    def departure(self, module: str, test: str, params: Mapping[str, object]) -> Departure | None:
        return next((d for d in self.departures if d.case.matches(module, test, params)), None)


def capabilities(rt) -> Capabilities:
    """The runtime's declared capabilities (defaults where it declares none), checked: a
    declared method must exist, a precision must have a tolerance class, a weight type and an
    op must be ones the suite knows, and declared ops need run_op(). Raises G4CError naming
    the runtime and the field."""
    from .opcases import OPS
    from .quants import SUPPORTED_TYPES
    from .tolerance import TABLE

    caps = getattr(rt, "capabilities", None)
    if caps is None:
        return Capabilities()
    name = getattr(rt, "name", type(rt).__name__)
    if not isinstance(caps, Capabilities):
        raise G4CError(f"runtime {name}: capabilities must be a g4c.runtime.Capabilities, got {type(caps).__name__}")
    if caps.logits not in LOGITS:
        raise G4CError(f"runtime {name}: capabilities.logits {caps.logits!r} is not one of {', '.join(LOGITS)}")
    if caps.precision not in TABLE:
        raise G4CError(f"runtime {name}: capabilities.precision {caps.precision!r} is not one of {', '.join(TABLE)}")
    unknown = sorted(set(caps.weight_types or ()) - {t.name for t in SUPPORTED_TYPES})
    if unknown:
        raise G4CError(f"runtime {name}: capabilities.weight_types names {', '.join(unknown)}, not among "
                       f"{', '.join(t.name for t in SUPPORTED_TYPES)}")
    for m in caps.methods:
        if m not in METHODS:
            raise G4CError(f"runtime {name}: capabilities.methods names {m!r}, not one of {', '.join(METHODS)}")
        if not callable(getattr(rt, m, None)):
            raise G4CError(f"runtime {name}: capabilities.methods declares {m} but the runtime has no method {m}()")
    unknown = sorted(set(caps.ops) - set(OPS))
    if unknown:
        raise G4CError(f"runtime {name}: capabilities.ops names {', '.join(unknown)}, not among {', '.join(OPS)}")
    if caps.ops and not callable(getattr(rt, "run_op", None)):
        raise G4CError(f"runtime {name}: capabilities.ops declares {', '.join(sorted(caps.ops))} but the runtime has "
                       "no method run_op()")
    return caps


def has_method(rt, method: str) -> bool:
    return method in capabilities(rt).methods


def backend(rt) -> str:
    return capabilities(rt).backend or rt.name


class Session(Protocol):
    n_seq: int
    max_context: int
    trace: dict | None

    def prefill(self, tokens: Sequence[int], start_pos: int = 0, seq: int = 0, all_logits: bool = True) -> np.ndarray: ...

    def decode(self, tokens: Sequence[int]) -> np.ndarray: ...

    @property
    def logits(self) -> np.ndarray: ...

    def reset(self, seq: int | None = None) -> None: ...


class Runtime(Protocol):
    name: str
    capabilities: Capabilities  # optional: a runtime without it gets Capabilities()

    def availability(self) -> Availability: ...

    def load(self, model: Model, max_context: int, n_seq: int = 1, trace: bool = False) -> Session: ...


def discover() -> dict[str, Runtime]:
    """Every registered runtime by name. A plugin that fails to import, or declares malformed
    capabilities, is reported unavailable with the reason, not hidden."""
    found: dict[str, Runtime] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = ep.load()()
        except Exception as e:  # an outside plugin's import error must not break the suite
            found[ep.name] = _Broken(ep.name, f"entry point {ep.value} failed to load: {type(e).__name__}: {e}")
            continue
        try:
            capabilities(found[ep.name])
        except G4CError as e:
            found[ep.name] = _Broken(ep.name, str(e))
    return dict(sorted(found.items()))


def select(asked: Sequence[str]) -> dict[str, Runtime]:
    """The runtimes a run covers: those asked for (each must be registered and available),
    or every registered one when none is asked for (absent ones are skipped later, with
    their reason), less those that run only when named (a runtime whose `explicit_only`
    is true, such as the CUDA emulator: correct, but far too slow for every run). Raises
    G4CError naming what is wrong."""
    found = discover()
    unknown = [r for r in asked if r not in found]
    if unknown:
        raise G4CError(f"unknown runtime(s) {', '.join(unknown)} (registered: {', '.join(found)})")
    for name in asked:
        av = found[name].availability()
        if not av.ok:
            raise G4CError(f"runtime {name} was asked for explicitly but is unavailable: {av.reason}")
    return {n: found[n] for n in (asked or [n for n, rt in found.items() if runs_by_default(rt)])}


def runs_by_default(rt: Runtime) -> bool:
    """False for a runtime that runs only when named (`explicit_only`, e.g. the CUDA emulator)."""
    return not capabilities(rt).explicit_only


def get(name: str) -> Runtime:
    runtimes = discover()
    if name not in runtimes:
        raise G4CError(f"unknown runtime {name!r} (registered: {', '.join(runtimes) or 'none'})")
    return runtimes[name]


class _Broken:
    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason

    def availability(self) -> Availability:
        return Availability(False, self.reason)

    def load(self, *a, **k):
        raise G4CError(f"runtime {self.name}: {self.reason}")


def env_seconds(name: str, default: float) -> float:
    """A per-request timeout of a runtime that talks to an outside engine, from the environment
    variable `name` (default when unset); G4CError naming the variable when it is not a number
    of seconds above 0."""
    raw = os.environ.get(name, "").strip()
    try:
        seconds = float(raw) if raw else default
    except ValueError:
        seconds = -1.0
    if not seconds > 0:  # also NaN
        raise G4CError(f"{name} {raw!r} must be a number of seconds above 0")
    return seconds
