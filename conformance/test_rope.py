"""RoPE at long positions: 4096, 32768, 131072 and 262143, on the tiny fixture and on the
real 12B head geometry (head dim 512, 64 of 256 pairs rotating through rope_freqs).

The float64 reference is exact; an f32 engine's angles are off by up to ~0.04 rad at
262k. The allowance for that is measured, not guessed: twice the largest deviation of the
two f32-angle references (transformers' and llama.cpp's way) from exact angles, reported
beside the runtime's own deviation. Ignoring rope_freqs, or applying it to sliding layers,
moves angles by whole radians already at 4096 (tests/test_faults.py).
"""

import dataclasses

import numpy as np
import pytest

from g4c.compare import assert_logits_close, nmse
from g4c.tolerance import long_position_allowance

from g4c.conformance.harness import load_model, prompt, reference_logits, run_prefill

POSITIONS = [4096, 32768, 131072, 262143]
N = 8


@pytest.mark.parametrize("preset", ["tiny", "schema"])
@pytest.mark.parametrize("last", POSITIONS)
def test_rope_long_position(runtime, tol, metric, preset, last):
    rep, drift, _ = _check_at(runtime, tol, load_model(preset), last)
    metric("max_abs_dlogit", rep.max_abs)
    metric("f32_angle_allowance", drift)
    metric("nmse", rep.nmse)


# the drift curve of the report: 0 to 262143, denser where the f32 angle error starts to show
CURVE = [N - 1, 1024, 4096, 16384, 32768, 65536, 98304, 131072, 163840, 196608, 229376, 262143]


def test_rope_drift_curve(runtime, tol, metric):
    """Logit error against position on the tiny fixture, each point held to the same limit as
    test_rope_long_position; the curve goes into the results for the report's drift plot."""
    curve = []
    for last in CURVE:
        rep, drift, limit = _check_at(runtime, tol, load_model("tiny"), last)
        curve.append({"position": last, "max_abs_dlogit": rep.max_abs, "f32_angle_allowance": drift, "limit": limit})
    metric("drift_curve", curve)
    metric("max_abs_dlogit_at_262143", curve[-1]["max_abs_dlogit"])


def _check_at(runtime, tol, model, last):
    """Runtime logits of an 8-token prompt ending at `last` against the float64 reference,
    allowing the measured f32-angle drift; returns (report, allowance, max |delta| limit)."""
    toks = prompt(N, model.n_vocab, seed=5)
    start = last - N + 1
    # the runtime first: a machine short of the memory it plans for the whole context skips
    # at load, before the three reference forwards
    got, got_trace = run_prefill(runtime, model, toks, start, trace=True)
    ref, ref_trace = reference_logits(model, toks, start, trace=True)
    f32_refs = [reference_logits(model, toks, start, mode, trace=True) for mode in ("f32", "f32_cumulative")]
    drift = long_position_allowance(ref, [r[0] for r in f32_refs])
    # the same allowance per traced layer: 4x in NMSE is 2x in rms, as for the logits
    limits = tol.hidden_nmse(model.config)
    hidden = {key: limits[key] + 4 * max(nmse(r[1][key], ref_trace[key]) for r in f32_refs) for key in ref_trace}
    base = tol.logit_max_abs(model.config, ref)
    rep = assert_logits_close(got, ref, _loosened(tol, ref, base + drift), base + drift, np.arange(start, last + 1),
                              got_trace=got_trace, ref_trace=ref_trace, hidden_nmse=hidden,
                              what=f"logits at positions {start}..{last}")
    return rep, drift, base + drift


def _loosened(tol, ref, max_abs):
    """NMSE limit raised to what max_abs allows on these logits (angle rounding is not noise
    spread evenly over positions, so max_abs is the governing bound here)."""
    rms2 = float(np.mean(np.square(ref)))
    return dataclasses.replace(tol, logit_nmse=max(tol.logit_nmse, max_abs**2 / rms2))


def test_rope_start_position_continuity(runtime, tol, metric):
    """prefill(a, 0) then prefill(b, len(a)) equals prefill(a + b, 0)."""
    model = load_model("tiny")
    toks = prompt(20, model.n_vocab, seed=6)
    whole, _ = run_prefill(runtime, model, toks)
    sess = runtime.load(model, 1024, 1)
    sess.prefill(list(toks[:12]), 0)
    tail = np.asarray(sess.prefill(list(toks[12:]), 12))
    rep = assert_logits_close(tail, whole[12:], tol, tol.logit_max_abs(model.config, whole), np.arange(12, 20),
                              what="continued prefill")
    metric("max_abs_dlogit", rep.max_abs)
