"""Checks on a GGUF the user points the suite at (`--model`, e.g. Google's 12B QAT file).

The reference evaluates it in float64 matrix by matrix, so on a 12B each reference
forward reads the whole file (minutes on 2 cores): the prompts here are short.
"""

import numpy as np

from g4c.header import render

from g4c.conformance.harness import check_logits


def _prompt(model, n):
    c = model.config
    rng = np.random.default_rng(11)
    body = rng.integers(1000 if model.n_vocab > 2000 else 5, model.n_vocab - 2, n - 1)
    return (c.bos_id if c.bos_id is not None else 2,) + tuple(int(t) for t in body)


def test_user_model_header(user_model, metric):
    text = render(user_model)
    c = user_model.config
    metric("layers", c.n_layer)
    metric("full_layers", ",".join(map(str, c.full_layers)))
    metric("weight_bytes", user_model.weight_bytes)
    assert "## Layers" in text


def test_user_model_logits(runtime, tol, metric, user_model):
    check_logits(runtime, tol, user_model, _prompt(user_model, 6), metric)


def test_user_model_long_position(runtime, tol, metric, user_model):
    """Logits far out in the context, where rope_freqs and f32 angle precision matter; the
    reference uses f32 angles as the engines do, so the tolerance stays the short one."""

    from g4c.compare import assert_logits_close

    from g4c.conformance.harness import reference_logits, run_prefill

    toks = _prompt(user_model, 4)
    start = min(user_model.config.n_ctx_train, 131072) - len(toks)
    ref, ref_trace = reference_logits(user_model, toks, start, "f32", trace=True)
    got, got_trace = run_prefill(runtime, user_model, toks, start, trace=True)
    rep = assert_logits_close(got, ref, tol, tol.logit_max_abs(user_model.config, ref), start + np.arange(len(toks)),
                              got_trace=got_trace, ref_trace=ref_trace, hidden_nmse=tol.hidden_nmse(user_model.config),
                              what=f"logits at positions {start}..{start + len(toks) - 1} (f32-angle reference)")
    metric("max_abs_dlogit", rep.max_abs)
