"""Several sequences in one session: each equals its single-sequence result."""

import numpy as np
import pytest

from g4c.compare import assert_logits_close

from g4c.conformance.harness import load_model, prompt


@pytest.mark.parametrize("n_seq", [2, 4])
def test_batched_decode_equals_single(runtime, tol, metric, n_seq):
    model = load_model("tiny")
    prompts = [list(prompt(5 + 3 * i, model.n_vocab, seed=20 + i)) for i in range(n_seq)]
    follow = [list(prompt(12, model.n_vocab, seed=40 + i)) for i in range(n_seq)]
    batch = runtime.load(model, 128, n_seq)
    for i, p in enumerate(prompts):
        batch.prefill(p, 0, seq=i)
    steps = np.array([np.asarray(batch.decode([follow[i][t] for i in range(n_seq)])) for t in range(12)])
    worst = 0.0
    for i in range(n_seq):
        single = runtime.load(model, 128, 1)
        single.prefill(prompts[i])
        alone = np.array([np.asarray(single.decode([t]))[0] for t in follow[i]])
        rep = assert_logits_close(steps[:, i], alone, tol, tol.logit_max_abs(model.config, alone),
                                  what=f"sequence {i} of {n_seq} vs alone")
        worst = max(worst, rep.max_abs)
    metric("max_abs_dlogit", worst)
