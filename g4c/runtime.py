"""The one Runtime interface and the registry that finds runtimes through entry points.

An engine plugs in by exposing, under the entry-point group `gemma4_conformance.runtimes`,
a zero-argument callable returning an object with:

    name: str
    availability() -> Availability            # device present? if not, why
    load(model, max_context, n_seq=1) -> Session

and a Session with:

    prefill(tokens, start_pos=0, seq=0, all_logits=True) -> float32 (n or 1, vocab)
    decode(tokens) -> float32 (n_seq, vocab)   # one token per sequence, at its next position
    logits -> float32 (vocab,)                 # last logits of sequence 0
    reset(seq=None)                            # forget one sequence (or all)
    trace: dict[(layer, op), array] | None     # optional: per-layer outputs of the last call,
                                               # ops as in g4c.reference.TRACE_OPS, when
                                               # load(..., trace=True) was accepted

`prefill` at start_pos keeps the sequence's cached positions below start_pos when they
reach up to it (start_pos <= the next position) and forgets the rest; a start_pos past the
next position begins the sequence afresh there, so start_pos = 100000 on a new session
places a prompt far out (long-position RoPE).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Protocol, Sequence

import numpy as np

from .errors import G4CError, InputError
from .model import Model

ENTRY_POINT_GROUP = "gemma4_conformance.runtimes"


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


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

    def availability(self) -> Availability: ...

    def load(self, model: Model, max_context: int, n_seq: int = 1, trace: bool = False) -> Session: ...


def discover() -> dict[str, Runtime]:
    """Every registered runtime by name. A plugin that fails to import is reported, not hidden."""
    found: dict[str, Runtime] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = ep.load()()
        except Exception as e:  # an outside plugin's import error must not break the suite
            found[ep.name] = _Broken(ep.name, f"entry point {ep.value} failed to load: {type(e).__name__}: {e}")
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
    return not getattr(rt, "explicit_only", False)


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


def check_tokens(tokens: Sequence[int], n_vocab: int) -> np.ndarray:
    """Validate token ids for any runtime: empty input and out-of-range ids are input errors."""
    arr = np.asarray(tokens)
    if arr.ndim != 1 or arr.size == 0:
        raise InputError("empty prompt: at least one token is needed")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"token ids must be integers, got {arr.dtype}")
    bad = (arr < 0) | (arr >= n_vocab)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"token id {int(arr[i])} at index {i} is out of range [0, {n_vocab})")
    return arr.astype(np.int64)


# Session argument checks every runtime makes the same way, with the same messages.


def check_load(model: Model, max_context: int, n_seq: int) -> None:
    n_ctx = model.config.n_ctx_train
    if not 0 < max_context <= n_ctx:
        raise InputError(f"max_context {max_context} must be in 1..{n_ctx} (context_length of {model.path})")
    if n_seq < 1:
        raise InputError(f"n_seq must be at least 1, got {n_seq}")


def check_seq(seq: int, n_seq: int) -> int:
    if not 0 <= seq < n_seq:
        raise InputError(f"sequence {seq} out of range: the session holds {n_seq}")
    return seq


def check_prefill(start_pos: int, n_tokens: int, max_context: int) -> None:
    if start_pos < 0 or start_pos + n_tokens > max_context:
        raise InputError(f"positions {start_pos}..{start_pos + n_tokens - 1} do not fit max_context {max_context}")


def check_decode(n_tokens: int, next_positions: np.ndarray, max_context: int) -> None:
    """One token per sequence, and room for each at its next position."""
    if n_tokens != len(next_positions):
        raise InputError(f"decode takes one token per sequence: got {n_tokens}, n_seq is {len(next_positions)}")
    if (np.asarray(next_positions) >= max_context).any():
        raise InputError(f"context full: position {int(np.max(next_positions))} is past max_context {max_context}")


# The prefill/decode bookkeeping of a runtime whose session keeps next_pos, _last and a
# _forward(toks, seqs, pos, all_logits) over rows of several sequences (cpu, vulkan).


def prefill_rows(session, toks: np.ndarray, seq: int, start_pos: int, all_logits: bool, ubatch: int) -> np.ndarray:
    """session._forward over micro-batches of at most ubatch rows from start_pos, each
    attending to the cache the previous ones wrote; then next_pos and the last logits of the
    sequence. Logits of every row, or of the last."""
    pos = start_pos + np.arange(len(toks))
    parts = []
    for a in range(0, len(toks), ubatch):
        last = a + ubatch >= len(toks)
        sl = slice(a, a + ubatch)
        parts.append(session._forward(toks[sl], np.full(len(toks[sl]), seq), pos[sl], all_logits or not last))
    logits = np.concatenate(parts) if all_logits else parts[-1]
    session.next_pos[seq] = start_pos + len(toks)
    session._last[seq] = logits[-1]
    return logits


def decode_step(session, tokens: Sequence[int]) -> np.ndarray:
    """One token per sequence at its next position, through session._forward."""
    toks = check_tokens(tokens, session.n_vocab)
    pos = np.array(session.next_pos)
    check_decode(len(toks), pos, session.max_context)
    logits = session._forward(toks, np.arange(session.n_seq), pos, True)
    session.next_pos = [p + 1 for p in session.next_pos]
    session._last[:] = logits
    return logits
