"""Our dequantizers against gguf's (the oracle), our K-quantizers through gguf's dequantizer."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants as gguf_quants
from hypothesis import given, settings
from hypothesis import strategies as st

from g4c import quants
from g4c.errors import UnsupportedQuantError

# Quantization error of each format on Gaussian weights, NMSE (llama.cpp's own quantizers
# reach about the same: Q4_0 7e-3, Q5_0 1.7e-3, Q4_K 6e-3, Q5_K 1.5e-3, Q6_K 4e-4);
# F16/BF16 from their mantissas (2^-11, 2^-8 relative, squared, with headroom).
MAX_NMSE = {QT.F32: 0.0, QT.F16: 1e-7, QT.BF16: 1e-5, QT.Q8_0: 1e-4, QT.Q4_0: 1e-2, QT.Q5_0: 3e-3,
            QT.Q4_K: 1e-2, QT.Q5_K: 3e-3, QT.Q6_K: 1e-3}


@pytest.mark.parametrize("qtype", quants.SUPPORTED_TYPES, ids=lambda q: q.name)
def test_dequantize_bit_exact_with_gguf(qtype):
    w = np.random.default_rng(0).standard_normal((8, 512)).astype(np.float32)
    raw = quants.quantize(w, qtype)
    ours = quants.dequantize(raw, qtype, 512)
    oracle = gguf_quants.dequantize(raw, qtype).reshape(ours.shape)
    np.testing.assert_array_equal(ours, oracle)


@pytest.mark.parametrize("qtype", quants.SUPPORTED_TYPES, ids=lambda q: q.name)
def test_quantizer_error(qtype):
    w = np.random.default_rng(1).standard_normal((16, 1024)).astype(np.float32)
    raw = quants.quantize(w, qtype)
    assert raw.shape == (16, quants.layout(qtype).row_bytes(1024))
    back = gguf_quants.dequantize(raw, qtype).reshape(w.shape)
    e = float(((back - w) ** 2).sum() / (w**2).sum())
    assert e <= MAX_NMSE[qtype], f"{qtype.name}: NMSE {e:.3g}"


@settings(max_examples=60, deadline=None)
@given(qtype=st.sampled_from([QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q5_0, QT.Q4_0]),
       seed=st.integers(0, 2**31), scale=st.floats(1e-3, 1e3), offset=st.floats(-2, 2))
def test_random_blocks_any_scale(qtype, seed, scale, offset):
    """Any block of random bytes, and any weights scale or offset, dequantize the same in
    both implementations."""
    rng = np.random.default_rng(seed)
    raw = np.frombuffer(rng.bytes(2 * quants.layout(qtype).type_size * (256 // quants.layout(qtype).block_size)), np.uint8)
    raw = raw.reshape(2, -1).copy()
    lay = quants.layout(qtype)
    raw_blocks = raw.reshape(-1, lay.type_size)
    # keep f16 scales finite: a NaN scale has no single right answer to compare
    f16_at = {QT.Q4_0: [0], QT.Q5_0: [0], QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208]}[qtype]
    for at in f16_at:
        raw_blocks[:, at:at + 2] = np.float16(0.01).reshape(1).view(np.uint8)
    ours = quants.dequantize(raw, qtype, 256)
    np.testing.assert_array_equal(ours, gguf_quants.dequantize(raw, qtype).reshape(ours.shape))
    w = (rng.standard_normal((2, 256)) * scale + offset).astype(np.float32)
    back = gguf_quants.dequantize(quants.quantize(w, qtype), qtype).reshape(w.shape)
    assert np.isfinite(back).all()


def test_random_blocks_have_requested_std():
    rng = np.random.default_rng(2)
    for qtype in (QT.Q4_0, QT.Q8_0, QT.Q6_K, QT.Q4_K):
        w = quants.dequantize(quants.random_blocks(rng, 64, 1024, qtype, 0.02), qtype, 1024)
        assert abs(w.std() / 0.02 - 1) < 0.05, qtype.name
        # centred block by block: no common component (the all-ones direction that once took
        # the 12b preset's residual stream); a block's mean within 4 standard errors of 0
        blocks = w.reshape(-1, 32)
        assert np.abs(blocks.mean(1)).max() < 4 * 0.02 / np.sqrt(32) * 2, qtype.name
        assert abs(w.mean()) < 0.02 * 0.01, qtype.name


def test_unsupported_type_named():
    with pytest.raises(UnsupportedQuantError, match="IQ2_XXS"):
        quants.layout(QT.IQ2_XXS, what="blk.0.attn_q.weight")
