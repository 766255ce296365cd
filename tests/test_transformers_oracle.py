"""The float64 reference against transformers' Gemma 4 in float64, through the goldens that
fixtures/transformers_oracle.py wrote (no torch needed here): every logit of every position
on the tiny fixture and its test_dense variants, and on one shape-sweep case.

Tolerance. The golden's `logits` come from transformers with its f32 upcasts widened to
float64, so they and the reference are two float64 evaluations of the same formulas in
different orders (BLAS blocking, torch's pow(ms, -0.5) against 1/sqrt): they differ by
float64 roundoff alone. The bound is g4c.tolerance's derivation with float64's unit
roundoff u = 2^-53: |delta| <= cap x L x K x u (Higham's gamma_K for a K-term dot product,
compounded over L layers, cap the largest logit), 1.1e-11 on the tiny fixture and 2.3e-12 on
the sweep case, plus 5e-14 for the golden's rounding to 1e-13. Measured against the committed
goldens (transformers 5.23.0, torch 2.13.0+cpu): at most 2.8e-13 on the tiny variants and
9.7e-14 on the sweep case, at least 33 and 24 times inside the bound.
None of spec section 5's divergences applies: transformers holds sqrt(E) in an f32 buffer, so
both sides scale embeddings by the f32 sqrt(E); both give raw logits (suppress_tokens is a
sampling matter); vision-token bidirectionality does not touch text.

transformers as shipped computes RMSNorm, the softmax and RoPE in f32 even in a float64
model (spec 3.1 names the RoPE part); its top-k logits are held to the reference within the
f32 bound of g4c.tolerance, 5.9e-3 on tiny (measured: 3.0e-5 on the top 8, and the golden
records 5.8e-5 between the shipped and the widened run over whole rows).

A reference with a deliberate bug (a (1 + w) norm, a 1/sqrt(d) scale, W - 1 keys, rope_freqs
ignored, no V norm, no softcap) must fail the same comparison by a thousand times its bound:
test_reference_fault_caught (measured 39, 26, 12, 3.6, 12 and 8.8).
"""

import dataclasses

import numpy as np
import pytest

from g4c import fixtures
from g4c.fixtures import golden, transformers_oracle
from g4c import reference as reference_module
from g4c.model import Model
from g4c.reference import Reference
from g4c.tolerance import F32, Tolerance

F64 = Tolerance("f64", unit_roundoff=2.0**-53, accumulates=True, logit_nmse=0.0, op_nmse=0.0,
                why="float64 roundoff 1.1e-16 x layers x dot length, logits capped at 30")
STORED = 0.5 * 10.0 ** -transformers_oracle.DECIMALS  # the golden's rounding
NAMES = [c.name for c in transformers_oracle.CASES]


def _open(name):
    gold = transformers_oracle.load(name)
    fx = gold["fixture"]
    path = fixtures.ensure(fx["preset"], fx["type"], fx["seed"], **fx["variant"])
    assert fx["generator_version"] == fixtures.generate.GENERATOR_VERSION
    assert golden.sha256(path) == fx["sha256"], (
        f"{path.name} differs from the fixture transformers' golden {name} was made from ({fx['id']}); "
        "regenerate with python -m g4c.fixtures.transformers_oracle after a deliberate generator change")
    return gold, Model(path)


def _compare(ref: Reference, gold) -> tuple[np.ndarray, float, float]:
    """(reference logits, max |dlogit| against the golden's float64 logits, the float64 bound)."""
    got = ref.forward(gold["prompt"])
    want = np.asarray(gold["logits"])
    return got, float(np.abs(got - want).max()), F64.logit_max_abs(ref.cfg, want) + STORED


@pytest.mark.parametrize("name", NAMES)
def test_reference_matches_transformers(name, record_property):
    gold, model = _open(name)
    got, err, bound = _compare(Reference(model), gold)
    want = np.asarray(gold["logits"])
    record_property("max_abs_dlogit", err)
    record_property("bound", bound)
    worst = np.unravel_index(np.abs(got - want).argmax(), want.shape)
    assert err <= bound, (
        f"float64 reference {err:.3g} from transformers {gold['versions']['transformers']} (float64) at position "
        f"{worst[0]}, token {worst[1]}: over the float64 bound {bound:.3g} ({F64.why})")
    # transformers as shipped (f32 RMSNorm, softmax and RoPE) within the f32 bound
    ids = np.asarray(gold["as_shipped"]["top_k_ids"])
    shipped_err = float(np.abs(np.take_along_axis(got, ids, -1) - gold["as_shipped"]["top_k_logits"]).max())
    record_property("as_shipped_max_abs_dlogit", shipped_err)
    assert shipped_err <= F32.logit_max_abs(model.config, want), (
        f"transformers as shipped sits {shipped_err:.3g} from the reference, over the f32 bound ({F32.why})")


@pytest.mark.parametrize("name", NAMES)
def test_golden_config_is_the_mapping(name):
    """The config each golden was made with is what the oracle maps its fixture to today
    (read with gguf alone, no torch), so a changed mapping shows up without torch."""
    gold, model = _open(name)
    assert transformers_oracle.hf_config_kwargs(model.path, *transformers_oracle.read_gguf(model.path)) == gold["config"]


def _one_plus_w(ref, mp):
    rms = reference_module.rms
    mp.setattr(reference_module, "rms", lambda x, w, eps: rms(x, w if np.isscalar(w) else 1.0 + w, eps))


def _inv_sqrt_d(ref, mp):
    attention = Reference.attention
    mp.setattr(Reference, "attention", lambda self, s, q, k, v, pos: attention(self, s, q / np.sqrt(s.head_dim), k, v, pos))


def _rope_freqs_ignored(ref, mp):
    angles = reference_module.rope_angles
    mp.setattr(reference_module, "rope_angles", lambda s, pos, ff, mode: angles(s, pos, None, mode))


FAULTS = {
    "one-plus-w-norm": _one_plus_w,
    "inv-sqrt-d-scale": _inv_sqrt_d,
    "window-minus-1": lambda ref, mp: setattr(ref, "window", ref.window - 1),
    "rope-freqs-ignored": _rope_freqs_ignored,
    "no-v-norm": lambda ref, mp: setattr(ref, "cfg", dataclasses.replace(ref.cfg, v_norm=False)),
    "no-softcap": lambda ref, mp: setattr(ref, "cfg", dataclasses.replace(ref.cfg, final_softcap=None)),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_reference_fault_caught(fault, monkeypatch, record_property):
    """The comparison above fails on a reference with one deliberate bug (tiny fixture,
    40 positions: the window of 32 is crossed)."""
    gold, model = _open("tiny-f32")
    ref = Reference(model)
    FAULTS[fault](ref, monkeypatch)
    _, err, bound = _compare(ref, gold)
    record_property("max_abs_dlogit", err)
    assert err > 1e3 * bound, f"reference with fault {fault} sits only {err:.3g} from transformers (bound {bound:.3g})"
