"""A runtime's own tokenizer (a server's /tokenize) against llama.cpp's ids in the committed
golden: the tiny fixture's strings (BPE merges, spaces, special tokens)."""

import pytest

from g4c.fixtures import llamacpp
from g4c.runtime import has_method

from g4c.conformance.harness import NOT_SUPPORTED, load_model


def test_tokenizer_ids_equal_llamacpp(runtime, metric):
    if not has_method(runtime, "tokenize"):
        pytest.skip(f"{NOT_SUPPORTED} runtime {runtime.name} has no tokenizer of its own (tokenize())")
    gold = llamacpp.load("tiny-f32")["tokenizer"]
    model = load_model("tiny")
    bad = []
    for s, want in zip(gold["strings"], gold["ids"]):
        got = runtime.tokenize(model, s)
        if got != want:
            bad.append(f"{s!r}: runtime {got} llama.cpp {want}")
    metric("strings_equal", len(gold["strings"]) - len(bad))
    assert not bad, f"{len(bad)} of {len(gold['strings'])} strings differ from llama.cpp:\n" + "\n".join(bad)
