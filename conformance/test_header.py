"""The 12B schema as a runtime will see it, read from a fixture with the real head geometry.

Expected values are the real file's (spec section 1), written here by hand: they are not
computed by the code under test.
"""

import numpy as np
import pytest

from g4c.header import render

from g4c.conformance.harness import check_logits, load_model, prompt

FULL_12B = (5, 11, 17, 23, 29, 35, 41, 47)


@pytest.fixture(scope="module")
def schema():
    return load_model("schema")


def test_schema_keys(schema):
    c = schema.config
    assert (c.arch, c.family, c.n_layer, c.n_ctx_train) == ("gemma4", "gemma4", 48, 262144)
    assert (c.n_head, c.head_dim_full, c.head_dim_swa, c.window) == (16, 512, 256, 1024)
    assert c.full_layers == FULL_12B
    assert [s.n_head_kv for s in c.layers] == [1 if i in FULL_12B else 8 for i in range(48)]
    assert c.eps == pytest.approx(1e-6) and c.final_softcap == 30.0 and c.shared_kv_layers == 0
    full, swa = c.layers[5], c.layers[0]
    assert (full.rope_base, full.n_rot, full.uses_rope_freqs) == (1e6, 512, True)
    assert (swa.rope_base, swa.n_rot, swa.uses_rope_freqs) == (1e4, 256, False)
    meta = schema.metadata
    assert meta["gemma4.attention.head_count_kv"].type_name == "ARRAY[UINT32]"
    assert meta["gemma4.attention.sliding_window_pattern"].type_name == "ARRAY[BOOL]"
    assert meta["gemma4.embedding_length_per_layer_input"].value == 0
    assert meta["tokenizer.ggml.model"].value == "gemma4"
    assert [meta[f"tokenizer.ggml.{k}_token_id"].value for k in ("bos", "eos", "padding", "unknown", "mask")] == [2, 1, 0, 3, 4]


def test_schema_tensors(schema):
    c = schema.config
    assert len(schema.tensor_names) == 40 * 14 + 8 * 13 + 3  # 667, as in the real file
    assert not any(s.has_v for s in c.layers if not s.sliding), "full layers must have no attn_v (k_eq_v)"
    assert all(s.has_v for s in c.layers if s.sliding)
    assert all(s.has_output_scale for s in c.layers)
    assert c.tied_output and not schema.has("output.weight")
    rf = schema.rope_freqs
    assert rf.shape == (256,) and schema.weight("rope_freqs.weight").qtype.name == "F32"
    assert np.all(rf[:64] == 1.0) and np.all(rf[64:] == np.float32(1e30))
    assert schema.weight("blk.5.attn_k.weight").shape == (256, 512)
    assert schema.weight("token_embd.weight").qtype.name == "Q6_K"


def test_header_dump(schema):
    text = render(schema)
    for needle in ("full layers at: 5, 11, 17, 23, 29, 35, 41, 47", "absent (dense, no PLE)",
                   "present, length 256 F32: 64 x 1.0 then 192 x 1e+30", "present on all 48 layers",
                   "`gemma4.attention.sliding_window` | UINT32 | 1024", "| 47 | full | 512 | 1 | 1e+06 | 512 | rope_freqs | attn_k (k_eq_v)"):
        assert needle in text, f"header dump lacks {needle!r}"


@pytest.mark.parametrize("arch", ["gemma4", "gemma4_unified"])
def test_architecture_strings(runtime, tol, metric, arch):
    """Both names of the dense 12B load and run the same forward."""
    model = load_model("tiny", arch=arch)
    assert model.config.arch == arch and model.config.family == "gemma4"
    check_logits(runtime, tol, model, prompt(12, model.n_vocab), metric)
