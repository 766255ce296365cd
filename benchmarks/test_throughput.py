"""llama-bench's tests, per runtime: pp (prompt lengths --bench-pp, default 512), tg (decode
lengths --bench-tg, default 128), tg32 at depth, batched decode N = 1, 4, 16.

Timed calls return host logits, so a device runtime has finished its work when the clock
stops. Untimed setup (pedantic's setup=) resets and refills the sequences; decode feeds
fixed ordinary tokens, as llama-bench does, so sampling costs nothing.

After the timed rounds each test checks, untimed, that what it timed computed something (a
row of the vocabulary's length, finite, not constant: g4c.bench.check_row) and, where a second
way costs about one round, the right thing: pp's last logits against prefilling all but the
last token then decoding it (g4c.bench.check_prefill); tg's last decode, and batched decode's
last sequence, against one prefill of the same tokens (g4c.bench.check_decode); the greedy
token must agree, or tie within the runtime's tolerance. On the 12b preset pp also prefills
the golden prompt and holds its logits to the float64 goldens (g4c.bench.check_goldens, the
limits of conformance/test_real_dims.py); its row records the result under "golden". NaN, all-zero logits, a prefill
returning another row than the last, a decode that ignores or loses its cache and a batch whose
rows read other sequences' caches fail there. The depth tests check the row only: a second way
means a second prefill of the whole depth.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from g4c import bench
from g4c.plan import kv_bytes
from g4c.runtime import has_method
from g4c.tolerance import for_runtime

DEPTH_TG, BATCH_TG = 32, 32


def _tokens(model, n: int, seed: int = 0) -> list[int]:
    # ordinary ids: above the specials (< 5), below the vocabulary's end
    return [int(t) for t in np.random.default_rng(seed).integers(5, model.n_vocab - 2, n)]


def _kv_read(runtime, model, depth: int, n_seq: int = 1) -> int:
    """KV bytes a decode step at this depth reads: the runtime's own planned cache there
    (its element size), or an f32 cache when it plans nothing."""
    if has_method(runtime, "memory_plan"):
        return runtime.memory_plan(model, depth, n_seq).kv
    return kv_bytes(model.config, depth, n_seq)


def _load(runtime, model, max_context: int, n_seq: int = 1):
    if max_context > model.config.n_ctx_train:
        pytest.skip(f"needs a context of {max_context}; the model's context_length is {model.config.n_ctx_train}")
    # a plan that does not fit this machine is a skip with its figures (bench_runtime's load)
    return runtime.load(model, max_context, n_seq)


def test_pp(benchmark, bench_runtime, bench_model, rounds, record, n_prompt):
    sess = _load(bench_runtime, bench_model, n_prompt)
    toks = _tokens(bench_model, n_prompt)
    timed = benchmark.pedantic(lambda: sess.prefill(toks, 0, all_logits=False), setup=sess.reset,
                               rounds=rounds, warmup_rounds=1)
    tol = for_runtime(bench_runtime)
    bench.check_prefill(sess, bench_model, toks, timed[-1], tol, f"pp{n_prompt}'s last logits")
    # on the 12b preset, also against the float64 goldens: the row says whether the output is right
    golden = bench.check_goldens(sess, bench_model, tol)
    record(f"pp{n_prompt}", n_prompt, bench.decode_weight_bytes(bench_model), 1,
           **({"golden": golden} if golden else {}))
    assert golden is None or golden["ok"], f"{bench_runtime.name} on {bench_model.path}: {golden['message']}"


def test_tg(benchmark, bench_runtime, bench_model, rounds, record, n_gen):
    sess = _load(bench_runtime, bench_model, n_gen + 1)
    toks = _tokens(bench_model, n_gen + 1, seed=1)

    def setup():
        sess.reset()
        sess.prefill(toks[:1], 0, all_logits=False)

    step_ms: list[list[float]] = []  # per round, each step's wall time (decode returns host logits: finished)

    def run():
        times = []
        for t in toks[1:]:
            t0 = time.perf_counter()
            out = sess.decode([t])
            times.append(round((time.perf_counter() - t0) * 1e3, 4))
        step_ms.append(times)
        return out

    timed = benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=1)
    bench.check_decode(sess, bench_model, toks, timed[0], for_runtime(bench_runtime), f"tg{n_gen}'s last decode")
    # mean depth n_gen/2: the KV read is small beside the weights, counted all the same; each
    # timed round's step times kept, so a spike (a graph capture, a cache reallocation) shows
    record(f"tg{n_gen}", n_gen, bench.decode_weight_bytes(bench_model) + _kv_read(bench_runtime, bench_model, n_gen // 2),
           n_gen, step_ms=step_ms[1:])


def test_tg_at_depth(benchmark, bench_runtime, bench_model, rounds, record, depth):
    """tg32 after a prompt of `depth` tokens. Rounds continue the same sequence (no rewind, no
    re-prefill), so round r decodes at depth + 32 r, as llama-bench's tg at -d does."""
    n_decode = DEPTH_TG * (rounds + 1)
    sess = _load(bench_runtime, bench_model, depth + n_decode)
    sess.prefill(_tokens(bench_model, depth, seed=2), 0, all_logits=False)
    toks = _tokens(bench_model, DEPTH_TG, seed=3)

    def run():
        for t in toks:
            out = sess.decode([t])
        return out

    timed = benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
    bench.check_row(timed[0], bench_model.n_vocab, f"tg{DEPTH_TG} @ d{depth}'s last decode")
    kv = _kv_read(bench_runtime, bench_model, depth + n_decode // 2)
    record(f"tg{DEPTH_TG} @ d{depth}", DEPTH_TG, bench.decode_weight_bytes(bench_model) + kv, DEPTH_TG,
           depth=depth, kv_bytes_per_step=kv)


@pytest.mark.parametrize("n_seq", [1, 4, 16], ids=lambda n: f"N{n}")
def test_batched_decode(benchmark, bench_runtime, bench_model, rounds, record, n_seq):
    """N independent sequences decoded together: tokens/s summed over sequences. A runtime
    that reads each weight once per step for all N turns N into throughput."""
    sess = _load(bench_runtime, bench_model, BATCH_TG + 1, n_seq)
    first = _tokens(bench_model, n_seq, seed=4)
    steps = [_tokens(bench_model, n_seq, seed=5 + i) for i in range(BATCH_TG)]

    def setup():
        sess.reset()
        for s in range(n_seq):
            sess.prefill([first[s]], 0, seq=s, all_logits=False)

    def run():
        for t in steps:
            out = sess.decode(t)
        return out

    timed = benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=1)
    for s, row in enumerate(timed[:-1]):
        bench.check_row(row, bench_model.n_vocab, f"tg{BATCH_TG} x{n_seq}'s last decode of sequence {s}")
    # the last sequence against a prefill of it alone: a batch that mixes sequences up reads it from another's cache
    last = n_seq - 1
    bench.check_decode(sess, bench_model, [first[last]] + [t[last] for t in steps], timed[last], for_runtime(bench_runtime),
                       f"tg{BATCH_TG} x{n_seq}'s last decode of sequence {last}", seq=last)
    kv = _kv_read(bench_runtime, bench_model, BATCH_TG // 2, n_seq)
    record(f"tg{BATCH_TG} x{n_seq}", n_seq * BATCH_TG, bench.decode_weight_bytes(bench_model) + kv, BATCH_TG,
           n_seq=n_seq)
