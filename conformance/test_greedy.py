"""Greedy parity: 64 greedy tokens equal to the float64 reference's (checked-in goldens),
then teacher-forced over prompt + greedy tokens: max |delta logit|, mean KL and top-1
agreement against the live reference, reported for every runtime. A runtime that gives only
its top tokens (a server) is held to the same greedy tokens and, teacher-forced, to the
reference's top-1 wherever the reference decides it (no near tie)."""

import numpy as np
import pytest

from g4c.fixtures import golden
from g4c.compare import assert_logits_close
from g4c.reference import argmax_allowed

from g4c.conformance.harness import TOP_K, decided_top1, first_allowed, load_model, reads_type, reference_logits, top_k_only


def greedy(runtime, model, prompt, n):
    sess = runtime.load(model, len(prompt) + n, 1)
    if top_k_only(runtime):
        out = []
        for _ in range(n):
            ids, _ = sess.top_logprobs(list(prompt) + out, TOP_K, first=len(prompt) + len(out) - 1)
            out.append(first_allowed(ids[0], model.config.suppress_tokens))
        return out
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
    n0 = len(gold["prompt"]) - 1
    full = tuple(gold["prompt"] + gold["greedy"][:-1])
    ref = reference_logits(model, full)[n0:]
    sess = runtime.load(model, len(full), 1)
    if top_k_only(runtime):
        ids, _ = sess.top_logprobs(list(full), TOP_K, first=n0)
        agree, decided = decided_top1(ids[:, 0], ref, tol.logit_max_abs(model.config, ref))
        metric("tf_top1_agreement", float(agree.mean()))
        metric("tf_top1_agreement_decided", float(agree[decided].mean()) if decided.any() else 1.0)
        bad = np.flatnonzero(~agree & decided)
        assert not bad.size, (f"teacher-forced top-1 at position {n0 + bad[0]}: runtime {int(ids[bad[0], 0])} vs "
                              f"reference {int(ref[bad[0]].argmax())}, no near tie")
    else:
        tf = np.asarray(sess.prefill(list(full)))[n0:]
        rep = assert_logits_close(tf, ref, tol, tol.logit_max_abs(model.config, ref), np.arange(n0, len(full)),
                                  what="teacher-forced logits")
        metric("tf_max_abs_dlogit", rep.max_abs)
        metric("tf_mean_kl", rep.mean_kl)
        metric("tf_top1_agreement", rep.top1_agreement)
    assert same == len(gold["greedy"]), (
        f"greedy token {same} differs: runtime {got[same]} vs reference {gold['greedy'][same]} "
        f"(reference top-3 there: {gold['top_k_ids'][same][:3]} {gold['top_k_logits'][same][:3]})"
    )
