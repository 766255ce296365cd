"""The session contract in code: a base that owns everything but the forward, and the KV plan
every runtime's cache follows.

`Session` validates input, keeps each sequence's positions (`base`, the first position its
cache holds, and `next_pos`), applies the keep-or-restart rule of `prefill(start_pos)`,
splits prefill into micro-batches and keeps the last logits. A runtime subclasses it and
supplies two methods:

    _forward(toks, seqs, pos, all_logits) -> float32 (n or 1, vocab)
        rows of one or several sequences at the given positions, attending to what the
        caches hold below each row and to the rows before it in the batch; stores their keys
    _forget(seq, start) -> bool
        drop sequence seq's cached positions >= start (start 0: all of them); False if the
        caches cannot (the base then re-evaluates the kept tokens)

and, optionally, `ubatch` (prefill rows per _forward; None: all at once) and `_decode`
(one token per sequence; cuda replays a graph there). An outside engine need not use this
base: the Protocol in g4c.runtime is the contract, this is one implementation of its rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .config import LayerSpec, ModelConfig
from .errors import InputError
from .model import Model


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


@dataclass(frozen=True)
class KVPlan:
    """Which cache slot holds which position, per layer and sequence.

    Full layers: one slot per position from where the sequence began, slot = position - base,
    capacity grown by doubling up to max_context. Sliding layers: a ring of `ring` slots,
    slot = position mod ring, so the ring holds positions max(base, next - ring) .. next - 1.
    `ring` is the window W for a runtime that attends a batch's own keys from the batch (of a
    batch longer than the ring only the last `ring` rows are stored: slot -1 for the others),
    and W + ubatch for one that stores a micro-batch's keys before attending to the cache.
    """

    max_context: int
    window: int
    ring: int  # slots of a sliding layer's cache per sequence

    @classmethod
    def for_model(cls, cfg: ModelConfig, max_context: int, ring_extra: int = 0) -> "KVPlan":
        sliding = any(s.sliding for s in cfg.layers)
        return cls(max_context, cfg.window, min(cfg.window + ring_extra, max_context) if sliding else max_context)

    def slots(self, spec: LayerSpec, seqs: np.ndarray, pos: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Slot of each row's key in its sequence's cache of this layer."""
        return self.ring_slots(seqs, pos) if spec.sliding else self.full_slots(seqs, pos, base)

    def full_slots(self, seqs: np.ndarray, pos: np.ndarray, base: np.ndarray) -> np.ndarray:
        return np.asarray(pos, np.int64) - np.asarray(base, np.int64)[np.asarray(seqs)]

    def ring_slots(self, seqs: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """pos mod ring; -1 for the rows of a batch that the ring does not keep (all but the
        last `ring` rows of one sequence)."""
        seqs, slot = np.asarray(seqs), np.asarray(pos, np.int64) % self.ring
        for q in np.unique(seqs):
            rows = np.flatnonzero(seqs == q)
            slot[rows[: max(0, len(rows) - self.ring)]] = -1
        return slot

    def held(self, spec: LayerSpec, base: int, before: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, slots) a sequence's cache of this layer holds below `before`, in order."""
        first = base if not spec.sliding else max(base, before - self.ring)
        pos = np.arange(first, before, dtype=np.int64)
        return pos, (pos - base if not spec.sliding else pos % self.ring)

    def full_needed(self, seqs: np.ndarray, pos: np.ndarray, base: np.ndarray) -> int:
        """Full-layer slots per sequence that a batch at these positions needs."""
        return int(self.full_slots(seqs, pos, base).max()) + 1

    def grown(self, cap: int, need: int) -> int:
        """Full-layer capacity for `need` slots from `cap`: doubled, at most max_context."""
        while cap < min(need, self.max_context):
            cap = min(max(2 * cap, 16), self.max_context)
        return cap

    def keeps(self, base: int, next_pos: int, start: int) -> bool:
        """Whether rewinding a sequence from next_pos to start leaves in its rings every key the
        positions from start on need (start - W + 1 .. start - 1, or from base)."""
        if self.ring >= self.max_context:
            return True
        return max(base, start - self.window + 1) >= max(base, next_pos - self.ring)


class Session:
    """Base of a runtime's session; see the module docstring for what a subclass supplies."""

    ubatch: int | None = None  # prefill rows per _forward (None: all rows at once)
    ring_extra: int = 0  # sliding rings of W + ring_extra slots (KVPlan)
    held_limit: int | None = None  # most positions one sequence may hold, where less than max_context
    held_why: str = ""  # what sets held_limit, for the error message

    def __init__(self, model: Model, max_context: int, n_seq: int = 1, trace: bool = False):
        check_load(model, max_context, n_seq)
        self.model, self.cfg = model, model.config
        self.max_context, self.n_seq, self.n_vocab = max_context, n_seq, model.n_vocab
        self.trace: dict | None = {} if trace else None
        self.kv = KVPlan.for_model(self.cfg, max_context, self.ring_extra)
        self.base = np.zeros(n_seq, np.int64)
        self.next_pos = np.zeros(n_seq, np.int64)
        self.history: list[list[int]] = [[] for _ in range(n_seq)]  # tokens at base, base + 1, ...
        self._last = np.zeros((n_seq, self.n_vocab), np.float32)

    # -- the contract ----------------------------------------------------------------------
    @property
    def logits(self) -> np.ndarray:
        """Last logits of sequence 0."""
        return self._last[0]

    def reset(self, seq: int | None = None) -> None:
        """Forget one sequence, or all of them."""
        for q in range(self.n_seq) if seq is None else [check_seq(seq, self.n_seq)]:
            self._restart(q, 0)

    def prefill(self, tokens: Sequence[int], start_pos: int = 0, seq: int = 0, all_logits: bool = True) -> np.ndarray:
        """Tokens at start_pos.. of sequence seq. Cached positions below start_pos are kept when
        they reach up to it (base <= start_pos <= next position); otherwise the sequence
        starts afresh at start_pos. Logits of every row, or of the last."""
        toks = check_tokens(tokens, self.n_vocab)
        check_seq(seq, self.n_seq)
        if start_pos < 0 or start_pos + len(toks) > self.max_context:
            raise InputError(f"positions {start_pos}..{start_pos + len(toks) - 1} do not fit max_context {self.max_context}")
        base, nxt = int(self.base[seq]), int(self.next_pos[seq])
        keep = base <= start_pos <= nxt  # else a gap, or before the sequence began: afresh at start_pos
        self._check_held(start_pos + len(toks) - (base if keep else start_pos))
        if not keep:
            self._restart(seq, start_pos)
        elif start_pos < nxt:
            kept = self.history[seq][: start_pos - base]
            if not (self.kv.keeps(base, nxt, start_pos) and self._forget(seq, start_pos)):
                # the caches lost keys the kept positions' successors need: evaluate them again
                self._restart(seq, base)
                if kept:
                    self._rows(np.array(kept), seq, base, False)
            self.next_pos[seq], self.history[seq] = start_pos, kept
        logits = self._rows(toks, seq, start_pos, all_logits)
        self._last[seq] = logits[-1]
        return logits

    def decode(self, tokens: Sequence[int]) -> np.ndarray:
        """One token per sequence, each at its next position; logits (n_seq, vocab)."""
        toks = check_tokens(tokens, self.n_vocab)
        if len(toks) != self.n_seq:
            raise InputError(f"decode takes one token per sequence: got {len(toks)}, n_seq is {self.n_seq}")
        pos = self.next_pos.copy()
        if (pos >= self.max_context).any():
            raise InputError(f"context full: position {int(pos.max())} is past max_context {self.max_context}")
        self._check_held(int((pos - self.base).max()) + 1)
        logits = self._decode(toks, pos)
        self.next_pos += 1
        for q, t in enumerate(toks):
            self.history[q].append(int(t))
        self._last[:] = logits
        return logits

    # -- for subclasses ----------------------------------------------------------------------
    def _forward(self, toks: np.ndarray, seqs: np.ndarray, pos: np.ndarray, all_logits: bool) -> np.ndarray:
        raise NotImplementedError

    def _forget(self, seq: int, start: int) -> bool:
        """Drop seq's cached positions >= start. A cache indexed by the KV plan needs nothing:
        what lies beyond next_pos is never read."""
        return True

    def _decode(self, toks: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return self._forward(toks, np.arange(self.n_seq), pos, True)

    # -- internals -----------------------------------------------------------------------------
    def _check_held(self, held: int) -> None:
        """Refuse, before any work, a call that would leave a sequence holding more positions
        than held_limit."""
        if self.held_limit is not None and held > self.held_limit:
            raise InputError(f"a sequence would hold {held} positions; {self.held_why} holds {self.held_limit}")

    def _restart(self, seq: int, start: int) -> None:
        self._forget(seq, 0)
        self.base[seq] = self.next_pos[seq] = start
        self.history[seq] = []

    def _rows(self, toks: np.ndarray, seq: int, start: int, all_logits: bool) -> np.ndarray:
        """_forward over micro-batches from start, each attending to what the previous ones
        stored; advances next_pos and the history."""
        pos = start + np.arange(len(toks), dtype=np.int64)
        step = self.ubatch or len(toks)
        parts, traces = [], []
        for a in range(0, len(toks), step):
            sl = slice(a, a + step)
            parts.append(self._forward(toks[sl], np.full(len(toks[sl]), seq), pos[sl], all_logits))
            self.next_pos[seq] = pos[sl][-1] + 1
            self.history[seq] += [int(t) for t in toks[sl]]
            if self.trace is not None:
                traces.append(dict(self.trace))
        if len(traces) > 1:  # the trace of the whole call, not of its last micro-batch
            self.trace = {key: np.concatenate([t[key] for t in traces]) for key in traces[0]}
        return np.concatenate(parts) if all_logits else parts[-1]
