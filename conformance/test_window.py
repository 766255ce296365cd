"""Sliding window W = 1024: key k is visible from query p iff 0 <= p - k < W.

Logits at positions 1022..1026 of a 1027-token prompt whose edge keys stand out. 1022 is
the control (every window variant agrees there); at 1023 a W-1 window drops key 0, at
1024 a W+1 window keeps it, and past 1024 no window keeps keys 0..2. Each of those moves a
logit by more than 1 (tests/test_reference.py), against a tolerance near 1e-3.
"""

import numpy as np
import pytest

from g4c.compare import assert_logits_close

from g4c.conformance.harness import load_model, reference_logits, window_prompt

EDGE = range(1022, 1027)


@pytest.fixture(scope="module")
def wmodel():
    m = load_model("window")
    assert m.config.window == 1024
    return m


def test_window_edge_positions(runtime, tol, metric, wmodel):
    toks = window_prompt(1027)
    ref = reference_logits(wmodel, toks)
    got = np.asarray(runtime.load(wmodel, 2048, 1).prefill(list(toks)))
    limit = tol.logit_max_abs(wmodel.config, ref)
    for p in EDGE:
        rep = assert_logits_close(got[p], ref[p], tol, limit, [p], what=f"logits at position {p} (window 1024)")
        metric(f"max_abs_dlogit@{p}", rep.max_abs)


@pytest.mark.slow
def test_long_prefill_equals_decode(runtime, tol, metric, wmodel):
    """A one-shot prefill of 1300 tokens (longer than W) equals prefill of 1024 then 276
    decode steps: a ring cache must not evict keys the batch's own earlier rows still need."""
    toks = window_prompt(1300)
    one_shot = np.asarray(runtime.load(wmodel, 2048, 1).prefill(list(toks)))
    sess = runtime.load(wmodel, 2048, 1)
    rows = [np.asarray(sess.prefill(list(toks[:1024])))[-1]]
    for t in toks[1024:-1]:
        rows.append(np.asarray(sess.decode([t]))[0])
    stepped = np.array(rows)
    ref = reference_logits(wmodel, toks)
    limit = tol.logit_max_abs(wmodel.config, ref)
    rep = assert_logits_close(one_shot[1023:-1], stepped, tol, limit, np.arange(1023, 1299),
                              what="one-shot prefill vs token-by-token decode")
    metric("max_abs_dlogit_prefill_vs_decode", rep.max_abs)
    rep = assert_logits_close(one_shot[1023:], ref[1023:], tol, limit, np.arange(1023, 1300),
                              what="one-shot prefill past W vs reference")
    metric("max_abs_dlogit_vs_reference", rep.max_abs)
