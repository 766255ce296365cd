"""k_eq_v full layers: no attn_v tensor, V = the raw K projection then a weightless RMS
norm (not K after k_norm and RoPE). Compared layer by layer where the runtime traces."""

import pytest

from g4c.compare import nmse

from g4c.conformance.harness import check_logits, load_model, prompt, traces


@pytest.mark.parametrize("preset", ["tiny", "schema"])
def test_k_eq_v_logits(runtime, tol, metric, preset):
    model = load_model(preset)
    full = [s for s in model.config.layers if not s.sliding]
    assert full and not any(s.has_v for s in full), "fixture must have full layers without attn_v"
    check_logits(runtime, tol, model, prompt(16, model.n_vocab, seed=7), metric)


def test_k_eq_v_layer_outputs(runtime, tol, metric):
    model = load_model("tiny")
    toks = prompt(16, model.n_vocab, seed=8)
    ref_trace, got_trace = traces(runtime, model, toks)
    limits = tol.hidden_nmse(model.config)
    for s in model.config.layers:
        if s.sliding:
            continue
        key = (s.index, "attn_out")
        e = nmse(got_trace[key], ref_trace[key])
        metric(f"attn_out_nmse_layer{s.index}", e)
        assert e <= limits[key], f"full layer {s.index} attention output: NMSE {e:.3g} > {limits[key]:.3g}"
