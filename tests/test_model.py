"""The model layer: config derived as the spec says, and every bad file refused with one
clear error naming the key or tensor."""

import numpy as np
import pytest
from gguf import GGUFValueType as VT

from g4c import fixtures
from g4c.fixtures.edit import rewrite
from g4c.errors import GGUFFormatError, UnsupportedModelError, UnsupportedQuantError
from g4c.model import Model


@pytest.fixture(scope="module")
def tiny_path():
    return fixtures.ensure("tiny")


def test_tiny_config(tiny_path):
    c = Model(tiny_path).config
    assert c.full_layers == (5, 7)  # every sixth layer, and the last
    assert [s.n_head_kv for s in c.layers] == [2, 2, 2, 2, 2, 1, 2, 1]
    assert [s.has_v for s in c.layers] == [True] * 5 + [False, True, False]
    assert c.layers[0].rope_base == 1e4 and c.layers[5].rope_base == 1e6
    assert c.embd_scale == np.float32(16.0)
    assert c.eos_ids == (1,) and c.bos_id == 2


def test_weights_stay_memory_mapped(tiny_path):
    w = Model(tiny_path).weight("blk.0.attn_q.weight")
    assert isinstance(w.raw.base, np.memmap) or isinstance(w.raw, np.memmap) or w.raw.base is not None
    assert not w.raw.flags.owndata


def test_gemma4_unified_accepted(tiny_path, tmp_path):
    m = Model(rewrite(tiny_path, tmp_path / "u.gguf", arch="gemma4_unified"))
    assert m.config.arch == "gemma4_unified" and m.config.n_layer == 8


def test_gemma3_config(tmp_path):
    """A gemma3 file: one head dim, pattern fixed 5:1, local base 10000, 1/sqrt(d) scale."""
    same_dims = fixtures.ensure("tiny", head_dim_swa=128)
    m = Model(rewrite(same_dims, tmp_path / "g3.gguf", arch="gemma3"))
    c = m.config
    assert c.family == "gemma3" and c.final_softcap is None and not c.v_norm
    assert all(s.attn_scale == pytest.approx(1 / np.sqrt(128)) for s in c.layers)
    assert c.layers[0].rope_base == 10000.0 and not any(s.uses_rope_freqs for s in c.layers)


@pytest.mark.parametrize("edit,error,needle", [
    (dict(arch="llama"), UnsupportedModelError, "general.architecture = 'llama'"),
    (dict(drop_keys=["gemma4.attention.sliding_window"]), GGUFFormatError, "gemma4.attention.sliding_window is missing"),
    (dict(set_keys={"gemma4.block_count": ("8", VT.STRING)}), GGUFFormatError, "gemma4.block_count has type STRING"),
    (dict(set_keys={"gemma4.attention.sliding_window_pattern": ([True] * 7, VT.ARRAY, VT.BOOL)}), GGUFFormatError,
     "sliding_window_pattern has 7 entries"),
    (dict(set_keys={"gemma4.embedding_length_per_layer_input": (256, VT.UINT32)}), UnsupportedModelError, "PLE"),
    (dict(add_tensors={"per_layer_token_embd.weight": np.zeros((4, 256))}), UnsupportedModelError, "per_layer_token_embd"),
    (dict(drop_tensors=["blk.3.ffn_up.weight"]), GGUFFormatError, "blk.3.ffn_up.weight is missing"),
    (dict(replace_tensors={"blk.2.attn_q_norm.weight": np.ones(32)}), GGUFFormatError,
     r"blk.2.attn_q_norm.weight has shape \[32\], expected \[64\]"),
    (dict(set_keys={"gemma4.attention.shared_kv_layers": (2, VT.UINT32)}), UnsupportedModelError, "shared_kv_layers"),
])
def test_bad_file_named(tiny_path, tmp_path, edit, error, needle):
    bad = rewrite(tiny_path, tmp_path / "bad.gguf", **edit)
    with pytest.raises(error, match=needle):
        Model(bad)


def test_rope_freqs_must_be_f32(tiny_path, tmp_path):
    from gguf import GGMLQuantizationType as QT

    with np.errstate(over="ignore"):  # 1e30 overflowing f16 is the point
        rf = Model(tiny_path).rope_freqs.astype(np.float16).view(np.uint8).reshape(1, -1)
    bad = rewrite(tiny_path, tmp_path / "f16rf.gguf", replace_raw={"rope_freqs.weight": (rf, QT.F16)})
    with pytest.raises(GGUFFormatError, match="rope_freqs.weight must be F32"):
        Model(bad)


def test_unsupported_quant_named_at_load(tiny_path, tmp_path):
    import gguf
    from gguf import GGMLQuantizationType as QT

    from g4c.runtimes.cpu import CpuRuntime

    q = gguf.quants.quantize(Model(tiny_path).weight("blk.0.attn_q.weight").dequantize(), QT.Q4_1)
    m = Model(rewrite(tiny_path, tmp_path / "q41.gguf", replace_raw={"blk.0.attn_q.weight": (q, QT.Q4_1)}))
    with pytest.raises(UnsupportedQuantError, match="blk.0.attn_q.weight: GGML type Q4_1 is not supported"):
        CpuRuntime().load(m, 64)


@pytest.mark.parametrize("cut", [10, 1000, -100])
def test_truncated_file(tiny_path, tmp_path, cut):
    data = tiny_path.read_bytes()
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(data[:cut] if cut > 0 else data[:cut])
    with pytest.raises(GGUFFormatError, match="trunc.gguf"):
        Model(bad)


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(GGUFFormatError, match=r"x.gguf: not a GGUF file \(magic b.not "):
        Model(bad)


def test_missing_file(tmp_path):
    with pytest.raises(GGUFFormatError, match="no such file"):
        Model(tmp_path / "nope.gguf")


def test_non_finite_weight_found_on_request(tiny_path, tmp_path):
    m = Model(tiny_path)
    w = m.weight("blk.1.ffn_norm.weight").vector().copy()
    w[7] = np.nan
    bad = Model(rewrite(tiny_path, tmp_path / "nan.gguf", replace_tensors={"blk.1.ffn_norm.weight": w}))
    with pytest.raises(GGUFFormatError, match="tensor blk.1.ffn_norm.weight has a non-finite weight nan at row 0 column 7"):
        bad.check_finite()
    m.check_finite()  # the clean file passes


def test_unknown_type_number_refused(tiny_path, tmp_path):
    """A tensor type id no GGML version defines: refused with our error, not a traceback."""
    data = bytearray(tiny_path.read_bytes())
    name = b"blk.0.attn_q.weight"
    at = data.index(name) + len(name)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    type_at = at + 4 + 8 * n_dims
    data[type_at:type_at + 4] = (999).to_bytes(4, "little")
    bad = tmp_path / "type999.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFFormatError, match="type999.gguf: .*999"):
        Model(bad)


def test_huge_array_count_refused_before_reading(tmp_path):
    """A string array whose count says 2^31 in a 40 KB file: refused by name before gguf's
    reader loops over the claimed entries (it built a view per entry, 24 GB and minutes
    later, on a case the fuzz test found)."""
    data = bytearray(fixtures.ensure("micro").read_bytes())
    key = b"tokenizer.ggml.tokens"
    at = data.index(key) + len(key) + 4 + 4  # past the name, the value type (array) and the entry type (string)
    data[at:at + 8] = (2**31).to_bytes(8, "little")
    path = tmp_path / "huge-count.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFFormatError, match=r"key 'tokenizer\.ggml\.tokens': 2147483648 strings"):
        Model(path)  # the walk's message: gguf's reader never ran
