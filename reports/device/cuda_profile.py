"""Where a CUDA decode step spends its time, run on the GPU machine.

    G4C_COMMIT=<commit> G4C_DIRTY=0|1 python3 reports/device/cuda_profile.py OUT.json

GPU time of single matvec kernels (so kernel bandwidth is read without Python between
launches), CPU against GPU time of one whole decode step (cupyx.profiler.benchmark), and
the host functions that dominate a decode loop (cProfile).
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys

import numpy as np
from cupyx.profiler import benchmark

from g4c import fixtures
from g4c import provenance
from g4c.model import Model
from g4c.runtimes.cuda.runtime import CudaRuntime


def main(out_path: str) -> None:
    model = Model(fixtures.ensure("12b"))
    rt = CudaRuntime()
    k = rt.kernels()
    cp = k.cp
    sess = rt.load(model, 1024, 1)
    res = {}
    for layer, group in ((0, "ffn_gate_up"), (0, "ffn_down"), (0, "attn_qkv"), (5, "attn_qkv")):
        w = sess.mats[layer, group][0]
        name = f"blk.{layer}.{group}"
        x = cp.ones((1, w.n_cols), cp.float32)
        r = benchmark(k.matvec, (w.raw, w.qtype, w.n_rows, w.n_cols, w.row_bytes, x), n_repeat=50, n_warmup=5)
        gpu = float(np.mean(r.gpu_times))
        res[f"matvec_{name}_us"] = gpu * 1e6
        res[f"matvec_{name}_GBps"] = w.nbytes / gpu / 1e9
    h = sess.head
    x = cp.ones((1, h.n_cols), cp.float32)
    r = benchmark(k.matvec, (h.raw, h.qtype, h.n_rows, h.n_cols, h.row_bytes, x), n_repeat=20, n_warmup=3)
    res["matvec_head_q6_k_us"] = float(np.mean(r.gpu_times)) * 1e6
    res["matvec_head_q6_k_GBps"] = h.nbytes / float(np.mean(r.gpu_times)) / 1e9
    sess.prefill([2, 1000, 2000, 3000], all_logits=False)
    step = iter(range(10**6))
    r = benchmark(lambda: sess.decode([1000 + next(step) % 5000]), n_repeat=20, n_warmup=3)
    res["decode_step_cpu_ms"] = float(np.mean(r.cpu_times)) * 1e3
    res["decode_step_gpu_ms"] = float(np.mean(r.gpu_times)) * 1e3
    sess.reset()
    sess.prefill([2, 1000, 2000, 3000], all_logits=False)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(16):
        sess.decode([1000 + i])
    cp.cuda.Device().synchronize()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
    res["cprofile_top_tottime"] = buf.getvalue()
    res["provenance"] = provenance.record({"cuda": rt})
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)
    for key, val in res.items():
        print(f"{key:45s} {val:.4g}" if isinstance(val, float) else f"{key}:\n{val}")


if __name__ == "__main__":
    provenance.require_commit(sys.argv[0])
    main(sys.argv[1])
