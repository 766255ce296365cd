"""Throughput accounting shared by the benchmark suite, the report and `g4c bench-table`:
bytes read per step, parameter counts, measured memory bandwidth, llama-bench-style rows with
the model's type as llama-bench names it, and the checks that what a benchmark timed computed
the right thing (check_row, check_prefill, check_decode).

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
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import LlamaFileType

from .errors import GGUFFormatError
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


# llama.cpp's name of each file type (llama_ftype_name in its src/llama-model-loader.cpp), by the
# member of gguf's LlamaFileType whose number general.file_type holds (llama.h's llama_ftype)
FILE_TYPE_NAMES = {
    "ALL_F32": "all F32", "MOSTLY_F16": "F16", "MOSTLY_BF16": "BF16", "MOSTLY_Q1_0": "Q1_0",
    "MOSTLY_Q4_0": "Q4_0", "MOSTLY_Q4_1": "Q4_1", "MOSTLY_Q5_0": "Q5_0", "MOSTLY_Q5_1": "Q5_1", "MOSTLY_Q8_0": "Q8_0",
    "MOSTLY_MXFP4_MOE": "MXFP4 MoE", "MOSTLY_NVFP4": "NVFP4",
    "MOSTLY_Q2_K": "Q2_K - Medium", "MOSTLY_Q2_K_S": "Q2_K - Small",
    "MOSTLY_Q3_K_S": "Q3_K - Small", "MOSTLY_Q3_K_M": "Q3_K - Medium", "MOSTLY_Q3_K_L": "Q3_K - Large",
    "MOSTLY_Q4_K_S": "Q4_K - Small", "MOSTLY_Q4_K_M": "Q4_K - Medium",
    "MOSTLY_Q5_K_S": "Q5_K - Small", "MOSTLY_Q5_K_M": "Q5_K - Medium", "MOSTLY_Q6_K": "Q6_K",
    "MOSTLY_TQ1_0": "TQ1_0 - 1.69 bpw ternary", "MOSTLY_TQ2_0": "TQ2_0 - 2.06 bpw ternary",
    "MOSTLY_IQ2_XXS": "IQ2_XXS - 2.0625 bpw", "MOSTLY_IQ2_XS": "IQ2_XS - 2.3125 bpw", "MOSTLY_IQ2_S": "IQ2_S - 2.5 bpw",
    "MOSTLY_IQ2_M": "IQ2_M - 2.7 bpw", "MOSTLY_IQ3_XXS": "IQ3_XXS - 3.0625 bpw", "MOSTLY_IQ3_XS": "IQ3_XS - 3.3 bpw",
    "MOSTLY_IQ3_S": "IQ3_S - 3.4375 bpw", "MOSTLY_IQ3_M": "IQ3_S mix - 3.66 bpw", "MOSTLY_IQ1_S": "IQ1_S - 1.5625 bpw",
    "MOSTLY_IQ1_M": "IQ1_M - 1.75 bpw", "MOSTLY_IQ4_NL": "IQ4_NL - 4.5 bpw", "MOSTLY_IQ4_XS": "IQ4_XS - 4.25 bpw",
}
UNKNOWN_FILE_TYPE = "unknown, may not work"  # llama.cpp's name for a number it does not know


def main_type(model: Model) -> str:
    """The model's type as llama-bench names it: llama.cpp's name of the file's
    general.file_type ("Q4_K - Medium" for a Q4_K_M file, whichever type holds the most bytes).
    A file without that key gets the type holding the most weight bytes, named as llama.cpp
    names the file type it assumes for that type and marked as llama.cpp 0.3.36 marks a guess
    ("(guessed) Q8_0"; llama.cpp itself guesses from the type of the most tensors, which
    makes every fixture "all F32": the norm vectors outnumber the matrices)."""
    mv = model.metadata.get("general.file_type")
    if mv is None:
        by_type: dict[str, int] = {}
        for w in model.weights():
            by_type[w.qtype.name] = by_type.get(w.qtype.name, 0) + w.nbytes
        qtype = max(by_type, key=by_type.get)
        # the file type llama.cpp assumes for weights mostly of one type: K-quants as their _M mix
        assumed = ("ALL_F32" if qtype == "F32" else f"MOSTLY_{qtype}_M" if qtype in ("Q3_K", "Q4_K", "Q5_K")
                   else f"MOSTLY_{qtype}")
        return "(guessed) " + FILE_TYPE_NAMES.get(assumed, qtype)
    if isinstance(mv.value, bool) or not isinstance(mv.value, int):
        raise GGUFFormatError(f"{model.path}: key general.file_type is {mv.type_name} {mv.value!r}, not an integer "
                              "(llama.cpp's file type, a UINT32)")
    try:
        return FILE_TYPE_NAMES.get(LlamaFileType(mv.value).name, UNKNOWN_FILE_TYPE)
    except ValueError:  # a number gguf's enum lacks
        return UNKNOWN_FILE_TYPE


def params_label(n: int) -> str:
    return f"{n / 1e9:.0f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def model_label(model: Model) -> str:
    """'gemma4 12B Q4_0': architecture, parameter count, file type (llama-bench's model column)."""
    return f"{model.config.arch} {params_label(n_params(model))} {main_type(model)}"


def check_row(logits, n_vocab: int, what: str) -> np.ndarray:
    """A copy of one row of logits a benchmark timed, once it is n_vocab finite values that are
    not all equal (a runtime that returned NaN, a truncated row or zeros computed nothing);
    AssertionError naming `what` otherwise."""
    row = np.array(logits, np.float32)
    if row.shape != (n_vocab,):
        raise AssertionError(f"{what}: logits of shape {row.shape}, expected ({n_vocab},), the vocabulary")
    bad = ~np.isfinite(row)
    if bad.any():
        raise AssertionError(f"{what}: {int(bad.sum())} of {n_vocab} logits are not finite (the first at token "
                             f"{int(np.argmax(bad))}: {row[bad][0]})")
    if row.min() == row.max():
        raise AssertionError(f"{what}: every logit is {row[0]}: nothing was computed")
    return row


def check_same_greedy(got: np.ndarray, other: np.ndarray, tol, cfg, what: str) -> None:
    """Two rows of logits for the same sequence, computed two ways, pick the same greedy token,
    or two tokens that tie within twice the runtime's bound on |delta logit| under both rows
    (tol: its g4c.tolerance class; each way may stand that far from the exact logits).
    AssertionError naming `what`, both tokens and the gap otherwise."""
    a, b = int(np.argmax(got)), int(np.argmax(other))
    if a == b:
        return
    bound = 2 * tol.logit_max_abs(cfg, other)
    gap = max(float(got[a] - got[b]), float(other[b] - other[a]))
    if gap > bound:
        raise AssertionError(f"{what}: greedy token {a} against {b}, apart by {gap:.4g} in logit where a tie allows "
                             f"{bound:.4g} ({tol.precision} tolerance, twice its bound)")


def check_prefill(sess, model: Model, toks: list[int], timed, tol, what: str) -> None:
    """After a benchmark's timed prefills of toks (sequence 0 from position 0), untimed: the
    last row they returned passes check_row and picks the greedy token that prefilling all but
    the last token, then decoding that one, picks (check_same_greedy). Catches NaN, zeros, a
    prefill returning another row than the last, a decode that ignores what prefill cached.
    Leaves the session holding toks."""
    got = check_row(timed, model.n_vocab, what)
    sess.reset()
    if len(toks) > 1:
        sess.prefill(toks[:-1], 0, all_logits=False)
    other = check_row(sess.decode(toks[-1:])[0], model.n_vocab, f"{what}, computed by prefill and decode")
    check_same_greedy(got, other, tol, model.config, f"{what}: the timed prefill against prefill and decode")


def check_decode(sess, model: Model, toks: list[int], timed, tol, what: str, seq: int = 0) -> None:
    """After a benchmark's timed decodes that ended sequence seq on toks (from position 0),
    untimed: the last row they returned for it passes check_row and picks the greedy token that
    one prefill of toks picks (check_same_greedy). Catches NaN, zeros, a decode that ignores or
    loses its cache, a batch whose rows read other sequences' caches. Resets the session."""
    got = check_row(timed, model.n_vocab, what)
    sess.reset()
    whole = check_row(sess.prefill(toks, 0, seq=seq, all_logits=False)[-1], model.n_vocab,
                      f"{what}, computed by one prefill of its {len(toks)} tokens")
    check_same_greedy(got, whole, tol, model.config, f"{what}: the timed decode against one prefill")


def check_goldens(sess, model: Model, tol) -> dict | None:
    """On the 12b preset's golden file (fixtures/golden/12b-q4_0.json names it), untimed: the
    golden prompt prefilled at position 0 against the float64 reference's logits, held to the
    limits conformance/test_real_dims.py holds them to. None on any other model; else a
    record for the benchmark row, "ok" false when the output is wrong. Resets the session."""
    from g4c.fixtures import golden12b

    gold = golden12b.load()
    if Path(str(model.path)).name != gold["fixture"]["file"]:
        return None
    start = next(s for s in gold["starts"] if s["start"] == 0)
    sess.reset()
    got = np.asarray(sess.prefill(gold["prompt"], 0), np.float64)
    sess.reset()
    max_abs_limit, nmse_limit, _ = golden12b.limits(tol, model.config, start)
    if not np.isfinite(got).all():
        return {"ok": False, "message": "non-finite logits on the golden prompt"}
    c = golden12b.compare(got, start, gold["sample_ids"])
    ok = c["nmse"] <= nmse_limit and c["max_abs"] <= max_abs_limit
    return {"ok": ok, "nmse": c["nmse"], "max_abs_dlogit": c["max_abs"], "nmse_limit": nmse_limit,
            "max_abs_limit": max_abs_limit,
            "message": (f"golden prompt: max|dlogit| {c['max_abs']:.3g} (limit {max_abs_limit:.3g}) at position "
                        f"{c['position']} token {c['token']}, NMSE {c['nmse']:.3g} (limit {nmse_limit:.3g})")}


@lru_cache(maxsize=None)
def host_read_bandwidth(nbytes: int = 512 << 20, reps: int = 5) -> dict:
    """Host memory read bandwidth: each of os.cpu_count() threads sums its own slice of a
    buffer far larger than the caches (numpy releases the GIL), best of `reps`. Reading is
    what a matvec does to its weights, so this is the roofline's limit on the CPU. Measured
    once per process: every runtime of a benchmark run that reads host memory (cpu, llamacpp)
    is set against the same figure, so their roofline fractions compare. Do not modify the
    dict returned."""
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
