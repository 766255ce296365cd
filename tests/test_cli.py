"""The g4c command line, run as a user runs it."""

import json
import subprocess
import sys

import pytest

from g4c import fixtures


def g4c(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "g4c.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_header_tiny():
    r = g4c("header", fixtures.ensure("tiny"))
    assert r.returncode == 0, r.stderr
    assert "full layers at: 5, 7" in r.stdout and "| `gemma4.attention.sliding_window` | UINT32 | 32 |" in r.stdout


def test_header_committed_dumps_current():
    """fixtures/headers/*.md for the small presets match what g4c header prints today."""
    for preset in ("tiny", "window", "schema"):
        r = g4c("header", fixtures.ensure(preset))
        with open(f"{fixtures.__path__[0]}/headers/{preset}.md") as f:
            assert r.stdout == f.read(), f"fixtures/headers/{preset}.md is stale: regenerate with g4c header"


def test_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 7)
    for args in (("header", tmp_path / "missing.gguf"), ("header", bad), ("fixture", "huge")):
        r = g4c(*args)
        assert r.returncode == 2, r
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"g4c {args[0]}: error:")


def test_generate_greedy_matches_golden():
    from g4c.fixtures import golden

    gold = golden.load("tiny", "F32")
    r = g4c("generate", fixtures.ensure("tiny"), "--tokens", ",".join(map(str, gold["prompt"])), "-n", 12)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("tokens:"))
    assert [int(t) for t in line.split(":")[1].split(",")] == gold["greedy"][:12]


def test_generate_chat_renders_template_and_tokenizes():
    from g4c.model import Model
    from g4c.tokenizer import Tokenizer

    path = fixtures.ensure("tiny")
    r = g4c("generate", path, "--chat", "hello world", "-n", 4, "--runtime", "cpu")
    assert r.returncode == 0, r.stderr
    prompt = [int(t) for t in next(l for l in r.stdout.splitlines() if l.startswith("prompt:")).split(":")[1].split(",")]
    tok = Tokenizer(Model(path))
    # <bos> <|turn> "user\n" ... <turn|> "\n" <|turn> "model\n": the template's text, specials as single ids
    assert prompt[:2] == [2, 105] and prompt.count(106) == 1
    # control tokens are not text; the fixture's letters-only vocabulary cannot spell "\n", which
    # is dropped as llama.cpp drops it (tests/test_tokenizer.py compares the ids with llama.cpp's)
    assert tok.decode(prompt) == "userhello worldmodel"
    assert "text:" in r.stdout


def test_golden_without_llamacpp_is_one_line(tmp_path):
    try:
        import llama_cpp  # noqa: F401

        pytest.skip("llama-cpp-python is installed here: the error path needs it absent")
    except ImportError:
        pass
    r = g4c("golden", fixtures.ensure("tiny"), "--tokens", "2,10", "--out", tmp_path / "g.json")
    assert r.returncode == 2 and "llama-cpp-python is not installed" in r.stderr and "Traceback" not in r.stderr


def test_run_with_fault_fails_and_reports(tmp_path):
    out = tmp_path / "r.json"
    r = g4c("run", "--runtime", "cpu", "--fault", "no-softcap", "--json", out, "--", "-k", "test_dense_logits")
    assert r.returncode == 1, r.stdout[-2000:]
    doc = json.loads(out.read_text())
    assert doc["fault"] == "no-softcap" and doc["counts"]["failed"] >= 1
    assert "| cpu | 0 | 4 |" in r.stdout


def test_run_leaves_out_runtimes_that_run_only_when_named(tmp_path):
    """The quick start's `g4c run` takes every available runtime but the CUDA emulator."""
    r = g4c("run", "--json", tmp_path / "r.json", "--", "-k", "test_softcap_bounds")
    assert r.returncode == 0, r.stdout[-2000:]
    assert "runtime cuda-emu: skipped (runs only when named)" in r.stdout
    assert "cuda-emu" not in json.loads((tmp_path / "r.json").read_text())["runtimes"]


def test_runtimes_lists_cpu():
    r = g4c("runtimes")
    assert r.returncode == 0 and "cpu" in r.stdout and "available" in r.stdout
    # each runtime's declared capabilities, so an engine author sees what the suite read
    assert ("precision f32, trace yes, weight types: every type; methods: memory_bandwidth, memory_plan, settings; "
            "ops: attention, dequantize, gelu_mul, matmul, matvec, rms_norm, rope, softcap") in r.stdout


def test_check_command():
    r = g4c("check", fixtures.ensure("micro"))
    assert r.returncode == 0 and "every weight finite" in r.stdout, r.stderr


def test_untraced_logit_failure_says_divergence_point_unknown():
    """The failure line `g4c run` prints for logits outside tolerance names the first
    diverging layer where both traces were compared; on a path with no per-layer trace
    (decode steps, a runtime without trace) it says so, not that every layer was within."""
    import numpy as np

    from g4c.compare import assert_logits_close
    from g4c.tolerance import F32

    ref = np.random.default_rng(0).normal(size=(2, 8))
    got = ref.copy()
    got[1, 3] += 9.56
    untraced = "; no per-layer trace on this path: divergence point unknown"
    with pytest.raises(AssertionError) as e:
        assert_logits_close(got, ref, F32, 1.0)
    assert str(e.value).startswith("logits: max|dlogit| 9.56 at position 1 token 3") and str(e.value).endswith(untraced)
    trace = {(0, "layer_out"): np.ones((2, 4))}
    with pytest.raises(AssertionError) as e:
        assert_logits_close(got, ref, F32, 1.0, got_trace=trace, ref_trace=trace, hidden_nmse=1e-9)
    assert str(e.value).endswith("; every traced layer within tolerance")
    with pytest.raises(AssertionError) as e:  # traces with no (layer, op) in common compare nothing
        assert_logits_close(got, ref, F32, 1.0, got_trace={(0, "attn_out"): np.ones((2, 4))}, ref_trace=trace,
                            hidden_nmse=1e-9)
    assert str(e.value).endswith(untraced)
