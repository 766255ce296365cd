"""Shared pieces of the conformance tests: cached fixture models and reference outputs."""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import pytest

from g4c import fixtures
from g4c.errors import NotSupported, ResourceUnavailable
from g4c.model import Model
from g4c.reference import Reference
from g4c.runtime import capabilities


NOT_SUPPORTED = "not supported:"
TOP_K = 8  # top tokens asked of a runtime that gives only those (as many as the goldens keep)


@contextmanager
def resources_or_skip():
    """Around a step that needs this machine's memory or disk (loading a session, writing a
    fixture): a ResourceUnavailable becomes a skip stating the figures, since the machine's
    shortage is neither the runtime's failure nor its pass."""
    try:
        yield
    except ResourceUnavailable as e:
        pytest.skip(f"this machine lacks {e.resource}: {e}")


@lru_cache(maxsize=None)
def load_model(preset: str, qtype: str | None = None, **variant) -> Model:
    """The fixture model, generated into the cache first if absent; a skip with the figures
    when the cache's disk has no room for it."""
    with resources_or_skip():
        return Model(fixtures.ensure(preset, qtype, **variant))


@lru_cache(maxsize=None)
def reference(model: Model, angles: str = "f64") -> Reference:
    return Reference(model, angles)


@lru_cache(maxsize=None)
def reference_logits(model: Model, tokens: tuple, start: int = 0, angles: str = "f64", trace: bool = False):
    """Reference logits (and trace) for a prompt, computed once per session for all runtimes."""
    tr = {} if trace else None
    out = reference(model, angles).forward(np.array(tokens), start, trace=tr)
    return (out, tr) if trace else out


def release_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it after many mid-sized numpy frees), so a
    later runtime's load-time memory check sees what is really available."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reads_type(runtime, qtype: str) -> None:
    """A weight type outside the runtime's declared weight_types is a not_supported outcome."""
    if not capabilities(runtime).reads(qtype):
        pytest.skip(f"{NOT_SUPPORTED} runtime {runtime.name} declares no support for weight type {qtype}")


def available_or_skip(runtime, name: str):
    """The runtime, or a skip naming why its device is absent (never a pass). Its load()
    skips, with the figures, where this machine lacks the memory the runtime's plan needs
    (never a failure): tests load sessions directly, and each would otherwise have to."""
    av = runtime.availability()
    if not av.ok:
        pytest.skip(f"runtime {name} unavailable: {av.reason}")
    return _SkipsWhenShort(runtime)


class _SkipsWhenShort:
    """The runtime as it is, but for load(), which runs under resources_or_skip."""

    def __init__(self, runtime):
        self._runtime = runtime

    def __getattr__(self, name):
        return getattr(self._runtime, name)

    def load(self, *args, **kwargs):
        with resources_or_skip():
            return self._runtime.load(*args, **kwargs)


def traces(runtime, model, tokens) -> tuple[dict, dict]:
    """(reference trace, runtime trace) of a prefill; not_supported, before any work, when the
    runtime declares no trace."""
    if not capabilities(runtime).trace:
        pytest.skip(f"{NOT_SUPPORTED} runtime {runtime.name} records no per-layer trace")
    _, got_trace = run_prefill(runtime, model, tokens, trace=True)
    if not got_trace:
        pytest.fail(f"runtime {runtime.name} declares trace but its session recorded none")
    _, ref_trace = reference_logits(model, tuple(tokens), trace=True)
    return ref_trace, got_trace


def prompt(n: int, n_vocab: int, seed: int = 0) -> tuple[int, ...]:
    """A deterministic prompt of ordinary tokens (no specials, no suppressed ids)."""
    return tuple(int(t) for t in np.random.default_rng(seed).integers(5, n_vocab - 2, n))


def window_prompt(n: int) -> tuple[int, ...]:
    """Three distinct tokens then one filler token repeated: the keys at the window's edge
    stand out from the filler's, so seeing one key more or less moves the logits by whole
    units (tests/test_reference.py measures it) instead of by noise."""
    return (300, 301, 302) + (200,) * (n - 3)


def run_prefill(runtime, model, tokens, start=0, trace=False, max_context=None):
    """Load a session and prefill; returns (logits, trace or None). A trace is asked for only
    of a runtime that declares it."""
    trace = trace and capabilities(runtime).trace
    sess = runtime.load(model, max_context or model.config.n_ctx_train, 1, trace=trace)
    logits = sess.prefill(list(tokens), start)
    return np.asarray(logits), (sess.trace if trace else None)


def check_logits(runtime, tol, model, tokens, metric, start=0, what="logits", max_abs=None):
    """Runtime prefill against the float64 reference, diverging layer named on failure."""
    from g4c.compare import assert_logits_close

    ref, ref_trace = reference_logits(model, tuple(tokens), start, trace=True)
    got, got_trace = run_prefill(runtime, model, tokens, start, trace=True)
    limit = tol.logit_max_abs(model.config, ref) if max_abs is None else max_abs
    rep = assert_logits_close(got, ref, tol, limit, start + np.arange(len(tokens)),
                              got_trace=got_trace, ref_trace=ref_trace, hidden_nmse=tol.hidden_nmse(model.config), what=what)
    metric("max_abs_dlogit", rep.max_abs)
    metric("nmse", rep.nmse)
    metric("mean_kl", rep.mean_kl)
    metric("top1_agreement", rep.top1_agreement)
    return rep


def top_k_only(runtime) -> bool:
    """Whether the runtime gives only its top tokens' log-probabilities (a server), not logits."""
    return capabilities(runtime).logits == "top_k"


def first_allowed(ids, suppressed) -> int:
    """The most probable of a runtime's top ids that is not suppressed: its greedy token, as
    argmax_allowed picks it from full logits."""
    allowed = [int(i) for i in ids if int(i) not in suppressed]
    if not allowed:
        raise NotSupported(f"all of the runtime's top {len(ids)} tokens are suppressed ({list(map(int, ids))})")
    return allowed[0]


def decided_top1(top1, ref, bound) -> tuple[np.ndarray, np.ndarray]:
    """(agree, decided) per position: whether a runtime's top-1 equals the float64 reference's
    argmax, and whether the reference decides it (its top-1 over its top-2 by more than twice
    the runtime's tolerance bound: no near tie)."""
    srt = np.sort(ref, axis=-1)
    return np.asarray(top1) == ref.argmax(-1), (srt[:, -1] - srt[:, -2]) > 2 * bound
