"""Greedy parity: 64 greedy tokens equal to the float64 reference's (checked-in goldens),
then teacher-forced over prompt + greedy tokens: max |delta logit|, mean KL and top-1
agreement against the live reference, reported for every runtime."""

import numpy as np
import pytest

from g4c.fixtures import golden
from g4c.compare import assert_logits_close
from g4c.reference import argmax_allowed

from g4c.conformance.harness import load_model, reads_type, reference_logits


def greedy(runtime, model, prompt, n):
    sess = runtime.load(model, len(prompt) + n, 1)
    sess.prefill(list(prompt))
    out = []
    for _ in range(n):
        out.append(argmax_allowed(np.asarray(sess.logits, np.float64), model.config.suppress_tokens))
        if len(out) < n:
            sess.decode([out[-1]])
    return out


@pytest.mark.parametrize("preset,qtype", golden.GOLDENS, ids=[f"{p}-{q}" for p, q in golden.GOLDENS])
def test_greedy_parity(runtime, tol, metric, preset, qtype):
    reads_type(runtime, qtype)
    gold = golden.load(preset, qtype)
    model = load_model(preset, qtype)
    got = greedy(runtime, model, gold["prompt"], len(gold["greedy"]))
    same = next((i for i, (a, b) in enumerate(zip(got, gold["greedy"])) if a != b), len(got))
    metric("greedy_tokens_equal", same)
    full = tuple(gold["prompt"] + gold["greedy"][:-1])
    ref = reference_logits(model, full)[len(gold["prompt"]) - 1:]
    sess = runtime.load(model, len(full), 1)
    tf = np.asarray(sess.prefill(list(full)))[len(gold["prompt"]) - 1:]
    rep = assert_logits_close(tf, ref, tol, tol.logit_max_abs(model.config, ref),
                              np.arange(len(gold["prompt"]) - 1, len(full)), what="teacher-forced logits")
    metric("tf_max_abs_dlogit", rep.max_abs)
    metric("tf_mean_kl", rep.mean_kl)
    metric("tf_top1_agreement", rep.top1_agreement)
    assert same == len(gold["greedy"]), (
        f"greedy token {same} differs: runtime {got[same]} vs reference {gold['greedy'][same]} "
        f"(reference top-3 there: {gold['top_k_ids'][same][:3]} {gold['top_k_logits'][same][:3]})"
    )
