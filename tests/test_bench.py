"""Throughput accounting (g4c.bench): bytes a decode step reads, labels, llama-bench layout."""

import math

from g4c.conformance.harness import load_model
from g4c import bench


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
