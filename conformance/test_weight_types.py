"""Every weight format a Gemma 4 GGUF may carry, op by op and through the whole model.

Op cases follow llama.cpp's test-backend-ops: random rows quantized into the format,
the runtime's dequantization and matvec compared with gguf's dequantization (the oracle)
by normalized mean squared error. Model cases run the tiny fixture stored in each format
against the reference, which dequantizes the very same blocks with gguf.
"""

import numpy as np
import pytest
from gguf import quants as gguf_quants

from g4c import quants
from g4c.compare import nmse

from .harness import check_logits, load_model, optional_method, prompt, reads_type

TYPES = [t.name for t in quants.SUPPORTED_TYPES]


def _case(qtype: str, rows: int = 16, cols: int = 512, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    raw = quants.quantize(w, quants.TYPE_NAMES[qtype])
    oracle = gguf_quants.dequantize(raw, quants.TYPE_NAMES[qtype]).reshape(rows, cols).astype(np.float64)
    return raw, oracle, rng.standard_normal(cols).astype(np.float32)


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize(runtime, tol, metric, qtype):
    reads_type(runtime, qtype)
    dequantize = optional_method(runtime, "dequantize")
    raw, oracle, _ = _case(qtype)
    got = np.asarray(dequantize(raw, quants.TYPE_NAMES[qtype], oracle.shape[1]), np.float64)
    e = nmse(got.reshape(oracle.shape), oracle)
    metric("nmse", e)
    assert e <= tol.op_nmse, f"dequantize {qtype}: NMSE {e:.3g} > {tol.op_nmse:g} against gguf.quants.dequantize"


@pytest.mark.parametrize("qtype", TYPES)
def test_matvec(runtime, tol, metric, qtype):
    reads_type(runtime, qtype)
    matvec = optional_method(runtime, "matvec")
    raw, oracle, x = _case(qtype, seed=1)
    got = np.asarray(matvec(raw, quants.TYPE_NAMES[qtype], oracle.shape[1], x), np.float64)
    want = oracle @ x.astype(np.float64)
    e = nmse(got.reshape(want.shape), want)
    metric("nmse", e)
    assert e <= tol.op_nmse, f"matvec {qtype}: NMSE {e:.3g} > {tol.op_nmse:g}; worst row {int(np.argmax(np.abs(got - want)))}"


@pytest.mark.parametrize("qtype", TYPES)
def test_model_in_type(runtime, tol, metric, qtype):
    reads_type(runtime, qtype)
    model = load_model("tiny", qtype)
    assert model.weight("blk.0.attn_q.weight").qtype.name == qtype
    check_logits(runtime, tol, model, prompt(16, model.n_vocab, seed=9), metric)
