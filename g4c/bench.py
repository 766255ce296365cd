"""Throughput accounting shared by the benchmark suite, the report and `g4c bench-table`:
bytes read per step, parameter counts, measured memory bandwidth, llama-bench-style rows.

Roofline: a decode step reads every weight once (the token embedding one row, unless it
is also the output head) plus the KV cache up to the current depth. The limit on tokens/s
is the machine's measured memory bandwidth over those bytes; a run's roofline fraction is
bytes per step x steps per second / bandwidth. Prefill reads the weights at least once
per batch, so its figure is a lower bound on traffic and prefill is compute-bound anyway.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .model import Model


def decode_weight_bytes(model: Model) -> int:
    """Weight bytes one decode step reads: every tensor once, the token embedding as one row
    unless it doubles as the output head (tied), where the head reads all of it."""
    total = 0
    for w in model.weights():
        if w.name == "token_embd.weight" and not model.config.tied_output:
            total += w.raw.shape[1] if w.raw.ndim == 2 else 0
        else:
            total += w.nbytes
    return total


def n_params(model: Model) -> int:
    return sum(int(np.prod(w.shape, dtype=np.int64)) for w in model.weights())


def main_type(model: Model) -> str:
    """The weight type holding most of the bytes, as llama-bench names a model's type."""
    by_type: dict[str, int] = {}
    for w in model.weights():
        by_type[w.qtype.name] = by_type.get(w.qtype.name, 0) + w.nbytes
    return max(by_type, key=by_type.get)


def params_label(n: int) -> str:
    return f"{n / 1e9:.0f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def model_label(model: Model) -> str:
    """'gemma4 12B Q4_0': architecture, parameter count, main weight type (llama-bench's model column)."""
    return f"{model.config.arch} {params_label(n_params(model))} {main_type(model)}"


def host_read_bandwidth(nbytes: int = 512 << 20, reps: int = 5) -> dict:
    """Host memory read bandwidth: each of os.cpu_count() threads sums its own slice of a
    buffer far larger than the caches (numpy releases the GIL), best of `reps`. Reading is
    what a matvec does to its weights, so this is the roofline's limit on the CPU."""
    n_threads = os.cpu_count() or 1
    a = np.ones(nbytes // 4, np.float32)
    parts = np.array_split(a, n_threads)
    best = math.inf
    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(np.sum, parts))  # warm: pages touched, threads started
        for _ in range(reps):
            t = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - t)
    return {"bytes_per_s": a.nbytes / best, "method": f"numpy sum of {a.nbytes >> 20} MiB on {n_threads} threads, best of {reps}",
            "device": "host"}


def fmt_size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.2f} MiB"


def fmt_params(n: float) -> str:
    if n is None or not math.isfinite(n):
        return "?"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def llama_bench_table(rows: list[dict]) -> str:
    """Markdown in llama-bench's layout (model, size, params, backend, test, t/s), one line per
    row dict with keys model, size_bytes, params, backend, test, tok_s, tok_s_std."""
    out = ["| model | size | params | backend | test | t/s |", "| --- | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        std = r.get("tok_s_std")
        ts = f"{r['tok_s']:.2f} ± {std:.2f}" if std is not None and math.isfinite(std) else f"{r['tok_s']:.2f}"
        out.append(f"| {r['model']} | {fmt_size(r['size_bytes'])} | {fmt_params(r['params'])} | {r['backend']} | "
                   f"{r['test']} | {ts} |")
    return "\n".join(out) + "\n"
