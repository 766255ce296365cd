"""Throughput of the CUDA runtime on the 12b preset, run on the GPU machine.

    G4C_COMMIT=<commit> G4C_DIRTY=0|1 python3 reports/device/cuda_bench.py OUT.json

Measures the device's copy bandwidth, pp512, tg128, decode at depth 8192, batched decode
at N = 1, 4, 16, and the time of the weight matvecs alone (all layers and the head, no
Python between them) to separate kernel time from launch overhead. Timings synchronize the
device; each figure is the mean of the timed runs after one warm-up.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from g4c import fixtures
from g4c import provenance
from g4c.model import Model
from g4c.runtimes.cuda.runtime import CudaRuntime


def timed(cp, fn, reps=1):
    fn()  # warm-up
    cp.cuda.Device().synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    cp.cuda.Device().synchronize()
    return (time.perf_counter() - t) / reps


def main(out_path: str) -> None:
    t0 = time.perf_counter()
    path = fixtures.ensure("12b")
    gen_s = time.perf_counter() - t0
    model = Model(path)
    rt = CudaRuntime()
    k = rt.kernels()
    cp = k.cp
    res = {"device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "model": path.name,
           "weight_bytes": model.weight_bytes, "fixture_write_s": gen_s}

    n = 1 << 30
    a, b = cp.empty(n, cp.uint8), cp.empty(n, cp.uint8)
    dt = timed(cp, lambda: cp.copyto(b, a), reps=10)
    res["copy_bandwidth_read_plus_write_GBps"] = 2 * n / dt / 1e9
    res["copy_bandwidth_read_GBps"] = n / dt / 1e9
    del a, b

    rng = np.random.default_rng(0)
    toks = lambda m: [2] + [int(t) for t in rng.integers(1000, 200000, m - 1)]  # noqa: E731

    t = time.perf_counter()
    sess = rt.load(model, 8192 + 256, 1)
    cp.cuda.Device().synchronize()
    res["load_s"] = time.perf_counter() - t

    # weight matvecs alone: what the decode step costs without Python between kernels
    x = cp.asarray(np.random.default_rng(1).standard_normal((1, model.config.n_embd)).astype(np.float32))

    def all_matvecs():
        for w in (w for ws in sess.mats.values() for w in ws):
            xin = x if w.n_cols == x.shape[1] else cp.ones((1, w.n_cols), cp.float32)
            k.matvec(w, xin)
        k.matvec(sess.head, x)

    dt = timed(cp, all_matvecs, reps=5)
    res["matvec_only_ms_per_token"] = dt * 1e3
    res["matvec_only_GBps"] = model.weight_bytes / dt / 1e9

    prompt = toks(512)
    dt = timed(cp, lambda: (sess.reset(), sess.prefill(prompt, all_logits=False)), reps=3)
    res["pp512_tokens_per_s"] = 512 / dt

    def tg(n_tok, session, first):
        session.reset()
        session.prefill(first, all_logits=False)
        cp.cuda.Device().synchronize()
        t = time.perf_counter()
        for i in range(n_tok):
            session.decode([1000 + i] * session.n_seq)
        cp.cuda.Device().synchronize()
        return time.perf_counter() - t

    tg(4, sess, toks(16))  # warm-up
    dt = tg(128, sess, toks(16))
    res["tg128_tokens_per_s"] = 128 / dt
    res["decode_graph_captures"] = sess.captures  # 1: captured once for the session
    res["tg128_ms_per_token"] = dt / 128 * 1e3
    res["tg128_weight_GBps"] = model.weight_bytes * 128 / dt / 1e9
    # roofline: weight bytes per token over the measured copy bandwidth (bytes read + written)
    res["tg128_roofline_fraction"] = res["tg128_weight_GBps"] / res["copy_bandwidth_read_plus_write_GBps"]

    sess.reset()
    deep = toks(8192)
    t = time.perf_counter()
    for i in range(0, 8192, 512):
        sess.prefill(deep[i:i + 512], start_pos=i, all_logits=False)
    cp.cuda.Device().synchronize()
    res["prefill_8192_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(32):
        sess.decode([1000 + i])
    cp.cuda.Device().synchronize()
    res["tg32_at_depth_8192_tokens_per_s"] = 32 / (time.perf_counter() - t)
    del sess

    for n_seq in (1, 4, 16):
        s = rt.load(model, 256, n_seq)
        for q in range(n_seq):
            s.prefill(toks(16), seq=q, all_logits=False)
        cp.cuda.Device().synchronize()
        t = time.perf_counter()
        for i in range(32):
            s.decode([1000 + i + q for q in range(n_seq)])
        cp.cuda.Device().synchronize()
        res[f"batched_N{n_seq}_tokens_per_s"] = 32 * n_seq / (time.perf_counter() - t)
        del s

    res["provenance"] = provenance.record({"cuda": rt})
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)
    for key, val in res.items():
        print(f"{key:40s} {val:.4g}" if isinstance(val, float) else f"{key:40s} {val}")


if __name__ == "__main__":
    provenance.require_commit(sys.argv[0])
    main(sys.argv[1])
