"""Bad input to a session gets one clear InputError, and the session stays usable."""

import numpy as np
import pytest

from g4c.errors import InputError

from g4c.conformance.harness import load_model, prompt


@pytest.fixture
def session(runtime):
    model = load_model("tiny")
    return model, runtime.load(model, 64, 1)


@pytest.mark.parametrize("bad,needle", [([5, 512, 7], "512"), ([5, -1], "-1"), ([], "empty")], ids=["too-big", "negative", "empty"])
def test_bad_tokens_then_usable(session, bad, needle):
    model, sess = session
    toks = list(prompt(6, model.n_vocab))
    want = np.asarray(sess.prefill(toks)).copy()
    sess.reset()
    with pytest.raises(InputError, match=needle):
        sess.prefill(bad)
    np.testing.assert_array_equal(np.asarray(sess.prefill(toks)), want)


def test_context_overflow(session):
    model, sess = session
    with pytest.raises(InputError, match="max_context"):
        sess.prefill(list(prompt(65, model.n_vocab)))
    sess.prefill(list(prompt(64, model.n_vocab)))
    with pytest.raises(InputError, match="max_context"):
        sess.decode([7])
