"""The shape sweep (fixtures/sweep.py): every runtime matches the float64 reference on each
small variant, or refuses it at load with an UnsupportedModelError naming the dimension.

Never a silently wrong result: a kernel written for head dims that are multiples of 32, a
group size of 2, a window of 1024 or widths that are multiples of 64 fails here, where
the 12B-shaped fixtures cannot see it. Each case prefills 16 tokens (past the windows of
1, 2 and 7, so the rings wrap inside the batch), every traced layer checked, then decodes 6
more one at a time, each step against the reference at its position.
"""

import numpy as np
import pytest

from g4c.fixtures import sweep
from g4c.compare import assert_logits_close
from g4c.errors import UnsupportedModelError
from g4c.runtime import capabilities

from g4c.conformance.harness import NOT_SUPPORTED, load_model, prompt, reads_type, reference_logits

PREFILL, DECODE = 16, 6


def load_or_refuse(runtime, model, case, **kw):
    """A session, or a not_supported outcome when the runtime refuses the file at load; the
    refusal must name the file and one of the case's dimensions (a refusal that says nothing
    of what it cannot do is as useless to an engine author as a crash)."""
    try:
        return runtime.load(model, 64, 1, **kw)
    except UnsupportedModelError as e:
        msg = str(e)
        dims = {str(v) for k, v in case.variant.items() if k != "n_layer"}
        assert str(model.path) in msg and any(d in msg.replace(",", " ").replace(":", " ").split() for d in dims), (
            f"runtime {runtime.name} refused sweep case {case.name} without naming the file and the dimension: {msg}")
        pytest.skip(f"{NOT_SUPPORTED} {msg}")


@pytest.mark.parametrize("shape", [c.name for c in sweep.CASES])
def test_shape(runtime, tol, metric, shape):
    case = sweep.case(shape)
    reads_type(runtime, case.qtype)
    model = load_model("tiny", case.qtype, **case.variant)
    toks = prompt(PREFILL + DECODE, model.n_vocab, seed=7)
    ref = reference_logits(model, toks)
    _, ref_trace = reference_logits(model, toks[:PREFILL], trace=True)
    trace = capabilities(runtime).trace
    sess = load_or_refuse(runtime, model, case, trace=trace)
    got = np.asarray(sess.prefill(list(toks[:PREFILL]))).copy()
    limit = tol.logit_max_abs(model.config, ref)
    rep = assert_logits_close(got, ref[:PREFILL], tol, limit, np.arange(PREFILL), got_trace=sess.trace if trace else None,
                              ref_trace=ref_trace, hidden_nmse=tol.hidden_nmse(model.config),
                              what=f"sweep case {shape} ({case.covers}): prefill logits")
    steps = [np.asarray(sess.decode([t]))[0] for t in toks[PREFILL:]]
    dec = assert_logits_close(np.array(steps), ref[PREFILL:], tol, limit, np.arange(PREFILL, PREFILL + DECODE),
                              what=f"sweep case {shape}: decode logits")
    metric("max_abs_dlogit", max(rep.max_abs, dec.max_abs))
    metric("nmse", rep.nmse)
    metric("top1_agreement", rep.top1_agreement)
