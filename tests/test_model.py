"""The model layer: config derived as the spec says, and every bad file refused with one
clear error naming the key or tensor."""

import numpy as np
import pytest
from gguf import GGUFValueType as VT

from g4c import fixtures
from g4c.fixtures.edit import rewrite
from g4c.errors import GGUFFormatError, UnsupportedModelError, UnsupportedQuantError
from g4c.model import Model, check_header


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


def _tensor_info_fields(data: bytes, name: bytes = b"blk.0.attn_q.weight") -> dict[str, int]:
    """Byte positions of one tensor info's fields (a tensor's name appears once, in its info)."""
    at = data.index(name)
    n_dims_at = at + len(name)
    n_dims = int.from_bytes(data[n_dims_at:n_dims_at + 4], "little")
    type_at = n_dims_at + 4 + 8 * n_dims
    return {"name_len": at - 8, "name": at, "n_dims": n_dims_at, "dim0": n_dims_at + 4, "dim1": n_dims_at + 12,
            "type": type_at, "offset": type_at + 4}


# blk.0.attn_q.weight in the micro fixture: Q4_0 [64, 64], 2304 bytes
@pytest.mark.parametrize("field,value,width,needle", [
    ("name_len", 10**9, 8, r"tensor info \d+: name at byte \d+ needs 1000000000 bytes; \d+ are left"),
    ("name_len", 3000, 8, r"tensor info \d+: name of 3000 bytes at byte \d+, over the GGUF limit of 64"),
    ("name", 0xFF, 1, r"tensor info \d+: name b'\\xfflk.0.attn_q.weight' at byte \d+ is not UTF-8"),
    ("name", 0x0A, 1, r"tensor info \d+: name '\\nlk.0.attn_q.weight' holds a control character"),
    ("n_dims", 2**32 - 1, 4, r"tensor blk.0.attn_q.weight: n_dims = 4294967295, expected 1 to 4"),
    ("n_dims", 0, 4, r"tensor blk.0.attn_q.weight: n_dims = 0, expected 1 to 4"),
    ("dim0", 33, 8, r"tensor blk.0.attn_q.weight row length 33 is not a multiple of the Q4_0 block size 32"),
    ("dim1", 0, 8, r"tensor blk.0.attn_q.weight: dims \[64, 0\] hold a 0"),
    # 2^62 x 64 elements wrap to 0 in the reader's uint64 product
    ("dim1", 2**62, 8, r"tensor blk.0.attn_q.weight \(Q4_0 \[64, 4611686018427387904\]\) needs "
                       r"166020696663385964544 bytes at data offset 4992 "),
    ("offset", 10**9, 8, r"tensor blk.0.attn_q.weight \(Q4_0 \[64, 64\]\) needs 2304 bytes at data offset "
                         r"1000000000 \(byte \d+: the data section starts at \d+, alignment 32\); the file has 47104"),
    # the reader adds it modulo 2^64: the tensor loaded from one byte before the data section
    ("offset", 2**64 - 1, 8, r"tensor blk.0.attn_q.weight \(Q4_0 \[64, 64\]\) needs 2304 bytes at data offset "
                             r"18446744073709551615 "),
], ids=["name-length-huge", "name-length-over-limit", "name-not-utf8", "name-newline",
        "n_dims-huge", "n_dims-0", "row-not-block-multiple",
        "dim-0", "dims-product-overflow", "offset-past-end", "offset-wraps"])
def test_corrupt_tensor_info_named(tmp_path, field, value, width, needle):
    """Every field of a tensor info is checked against the file before gguf's reader runs,
    with the tensor and the figures named."""
    data = bytearray(fixtures.ensure("micro").read_bytes())
    at = _tensor_info_fields(bytes(data))[field]
    data[at:at + width] = value.to_bytes(width, "little")
    path = tmp_path / "bad-info.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFFormatError, match=r"bad-info.gguf: " + needle):
        Model(path)


@pytest.mark.parametrize("value,vtype,needle", [
    (0, VT.UINT32, r"key 'general.alignment' = 0 is not a power of two"),
    (48, VT.UINT32, r"key 'general.alignment' = 48 is not a power of two"),
    (32, VT.UINT64, r"key 'general.alignment' has value type 10, expected UINT32 \(4\)"),
    # a power of two, but it puts the data section past the end of the file
    (2**31, VT.UINT32, r"tensor token_embd.weight \(.*\) needs \d+ bytes at data offset 0 \(byte 2147483648: "
                       r"the data section starts at 2147483648, alignment 2147483648\)"),
], ids=["zero", "not-power-of-two", "uint64", "past-end"])
def test_bad_alignment_named(tmp_path, value, vtype, needle):
    micro = fixtures.ensure("micro")
    path = rewrite(micro, tmp_path / "align.gguf", set_keys={"general.alignment": (32, vtype)})
    data = bytearray(path.read_bytes())
    at = data.index(b"general.alignment") + len(b"general.alignment") + 4  # past the name and the value type
    width = 4 if vtype == VT.UINT32 else 8
    data[at:at + width] = value.to_bytes(width, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFFormatError, match=r"align.gguf: " + needle):
        Model(path)


def test_alignment_written_by_gguf_accepted(tmp_path):
    """A file that gguf's writer aligns to 256 passes the walk, which puts the data section
    where the reader does: the last tensor, 256 bytes, ends at the end of the file."""
    import gguf

    path = tmp_path / "a256.gguf"
    w = gguf.GGUFWriter(str(path), "gemma4")
    w.add_custom_alignment(256)
    w.add_tensor("a.weight", np.arange(10, dtype=np.float32))
    w.add_tensor("b.weight", np.arange(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    check_header(str(path))
    reader = gguf.GGUFReader(path)
    assert reader.data_offset % 256 == 0 and reader.tensors[-1].data_offset + 256 == path.stat().st_size
