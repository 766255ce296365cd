"""Every weight format a Gemma 4 GGUF may carry, through the whole model: the tiny fixture
stored in each format against the reference, which dequantizes the very same blocks with
gguf. The op-level dequantize, matvec and matmul of each format are cases of
conformance/test_ops.py (g4c.opcases).
"""

import numpy as np
import pytest
from gguf import quants as gguf_quants

from g4c import quants

from g4c.conformance.harness import check_logits, load_model, prompt, reads_type

TYPES = [t.name for t in quants.SUPPORTED_TYPES]


def _case(qtype: str, rows: int = 16, cols: int = 512, seed: int = 0):
    """(raw rows in qtype, gguf's float64 dequantization of them, an input vector): the op
    data tests/test_vulkan_ops.py runs the shaders on directly."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    raw = quants.quantize(w, quants.TYPE_NAMES[qtype])
    oracle = gguf_quants.dequantize(raw, quants.TYPE_NAMES[qtype]).reshape(rows, cols).astype(np.float64)
    return raw, oracle, rng.standard_normal(cols).astype(np.float32)


@pytest.mark.parametrize("qtype", TYPES)
def test_model_in_type(runtime, tol, metric, qtype):
    reads_type(runtime, qtype)
    model = load_model("tiny", qtype)
    assert model.weight("blk.0.attn_q.weight").qtype.name == qtype
    check_logits(runtime, tol, model, prompt(16, model.n_vocab, seed=9), metric)
