"""The dense no-PLE forward against the float64 reference, with the file variants a
runtime must read: layer_output_scale present or absent, head_count_kv scalar or array,
tied or untied output head, a softcap other than 30 (test_softcap_from_file). The logits
comparison also catches a missing softcap, a (1 + w) norm and a 1/sqrt(d) attention scale
(tests/test_faults.py)."""

import numpy as np
import pytest

from g4c.compare import assert_logits_close

from g4c.conformance.harness import check_logits, load_model, prompt, reference_logits

VARIANTS = {
    "12b-like": {},
    "no-layer-output-scale": {"output_scale": False},
    "scalar-kv-heads": {"kv_array": False, "n_head_kv_full": 2},
    "untied-output": {"tied": False},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dense_logits(runtime, tol, metric, variant):
    model = load_model("tiny", **VARIANTS[variant])
    c = model.config
    if variant == "no-layer-output-scale":
        assert not any(s.has_output_scale for s in c.layers)
    check_logits(runtime, tol, model, prompt(24, model.n_vocab, seed=1), metric)


def test_dense_decode_matches_reference(runtime, tol, metric):
    """Prefill 8 tokens, decode 40 one at a time (past the window of 32): each step's logits
    against the reference's logits at that position."""
    model = load_model("tiny")
    toks = prompt(48, model.n_vocab, seed=2)
    ref = reference_logits(model, toks)
    sess = runtime.load(model, 256, 1)
    rows = [np.asarray(sess.prefill(list(toks[:8])))[-1]]
    for t in toks[8:-1]:
        rows.append(np.asarray(sess.decode([t]))[0])
    rep = assert_logits_close(np.array(rows), ref[7:-1], tol, tol.logit_max_abs(model.config, ref), np.arange(7, 47),
                              what="decode logits")
    metric("max_abs_dlogit", rep.max_abs)
    metric("mean_kl", rep.mean_kl)
    assert np.allclose(np.asarray(sess.logits), rows[-1]), "session.logits is not the last decode's logits"


def _uncapped_peak(model, toks, metric) -> float:
    """Largest |logit| of the float64 reference before its softcap: a softcap test on logits
    that stay under the cap could never fail."""
    cap = model.config.final_softcap
    ref = reference_logits(model, toks)
    peak = float(np.abs(cap * np.arctanh(np.clip(ref / cap, -1, 1))).max())
    metric("max_abs_uncapped_reference_logit", peak)
    return peak


# embeddings of std 0.8 (the tiny preset's 0.4 keeps every uncapped logit under the cap of 30,
# where a missing softcap changes nothing this test could see): uncapped logits reach 63
SOFTCAP_VARIANT = {"embd_std": 0.8}


def test_softcap_bounds(runtime, metric):
    """Every logit within final_logit_softcapping, on a fixture whose uncapped reference
    logits exceed 1.5 x the cap."""
    model = load_model("tiny", **SOFTCAP_VARIANT)
    toks = prompt(16, model.n_vocab)
    cap = model.config.final_softcap
    peak = _uncapped_peak(model, toks, metric)
    assert peak > 1.5 * cap, f"fixture too tame: uncapped reference logits peak at {peak:.3g}, cap {cap}"
    got = np.asarray(runtime.load(model, 64, 1).prefill(list(toks)))
    metric("max_abs_logit", float(np.abs(got).max()))
    assert np.abs(got).max() <= cap, f"|logit| {np.abs(got).max():.3g} exceeds final_logit_softcapping {cap}"


def test_softcap_from_file(runtime, tol, metric):
    """final_logit_softcapping read from the file, not hard-coded to the 12B's 30: logits of
    a fixture capped at 20, which its uncapped reference logits exceed, against the reference."""
    model = load_model("tiny", softcap=20.0)
    toks = prompt(24, model.n_vocab, seed=1)
    cap = model.config.final_softcap
    assert cap == 20.0, f"fixture's final_logit_softcapping is {cap}, not 20"
    peak = _uncapped_peak(model, toks, metric)
    assert peak > 1.25 * cap, f"fixture too tame: uncapped reference logits peak at {peak:.3g}, cap {cap}"
    check_logits(runtime, tol, model, toks, metric)


@pytest.mark.parametrize("back", [1, 28], ids=["rewind-1", "rewind-28"])
def test_rewind_keeps_prefix(runtime, tol, metric, back):
    """prefill(tokens, start_pos) below the next position keeps the positions before
    start_pos: 48 tokens, then 3 others at 48 - back, equal the reference on the kept prefix
    and the new tokens. Rewinding 28 positions on the window of 32 needs keys a ring of W
    slots has overwritten: a runtime that attends to what its ring still holds sees too few."""
    model = load_model("tiny")
    toks = prompt(48, model.n_vocab, seed=10)
    new = prompt(3, model.n_vocab, seed=11)
    start = 48 - back
    ref = reference_logits(model, toks[:start] + new)
    sess = runtime.load(model, 256, 1)
    sess.prefill(list(toks))
    got = np.asarray(sess.prefill(list(new), start))
    rep = assert_logits_close(got, ref[start:], tol, tol.logit_max_abs(model.config, ref), np.arange(start, start + 3),
                              what=f"logits after rewinding {back} positions")
    metric("max_abs_dlogit", rep.max_abs)
    decoded = np.asarray(sess.decode([new[-1]]))  # and the session goes on from there
    whole = reference_logits(model, toks[:start] + new + new[-1:])[-1:]
    assert_logits_close(decoded, whole, tol, tol.logit_max_abs(model.config, whole), [start + 3], what="decode after the rewind")


def test_reset_forgets(runtime):
    model = load_model("tiny")
    toks = list(prompt(10, model.n_vocab, seed=3))
    sess = runtime.load(model, 64, 1)
    first = np.asarray(sess.prefill(toks)).copy()
    sess.prefill(list(prompt(20, model.n_vocab, seed=4)))
    sess.reset()
    again = np.asarray(sess.prefill(toks))
    np.testing.assert_array_equal(again, first, err_msg="logits after reset() differ from a fresh session's")



def test_layer_divergence(runtime, tol, metric):
    """Every layer's traced outputs on the 48-layer schema fixture against the reference, each
    within its depth-dependent f32 limit; the NMSE per (op, layer), and its ratio to the
    limit, go into the results for the report's heatmap."""
    from g4c.compare import nmse
    from g4c.reference import TRACE_OPS

    from g4c.conformance.harness import traces

    model = load_model("schema")
    ref_trace, got_trace = traces(runtime, model, prompt(16, model.n_vocab, seed=9))
    limits = tol.hidden_nmse(model.config)
    table = {op: [nmse(got_trace[i, op], ref_trace[i, op]) for i in range(model.config.n_layer)] for op in TRACE_OPS}
    metric("layer_nmse", table)
    metric("layer_nmse_over_limit", {op: [e / limits[i, op] for i, e in enumerate(v)] for op, v in table.items()})
    worst = max(((e / limits[i, op], i, op) for op, v in table.items() for i, e in enumerate(v)))
    metric("worst_ratio", worst[0])
    assert worst[0] <= 1, f"layer {worst[1]} op {worst[2]}: NMSE {table[worst[2]][worst[1]]:.3g} over its limit x{worst[0]:.3g}"
