"""Measure the CPU runtime decoding a model: tokens/s and peak memory, written as JSON.

    python -m g4c.reports.cpu_decode MODEL.gguf [--decode 4] [--out reports/data/x.json]

Peak memory is sampled from /proc/self/status every 50 ms: RssAnon (the runtime's own
allocations) apart from RssFile (pages of the memory-mapped GGUF, which the kernel can drop
and which count in a plain peak RSS). Throughput pytest-benchmarks arrive with the benchmark
suite; this records the foundation's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=4)
    ap.add_argument("--decode", type=int, default=4)
    ap.add_argument("--out")
    args = ap.parse_args()

    peak = {"RssAnon": 0, "RssFile": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            s = _status()
            for k in peak:
                peak[k] = max(peak[k], s.get(k, 0))
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    from g4c import provenance
    from g4c.model import Model
    from g4c.runtimes.cpu import CpuRuntime

    t0 = time.perf_counter()
    model = Model(args.model)
    sess = CpuRuntime().load(model, 64, 1)
    t1 = time.perf_counter()
    sess.prefill([2] + [1000 + i for i in range(args.prompt - 1)], all_logits=False)
    t2 = time.perf_counter()
    steps = []
    for i in range(args.decode):
        a = time.perf_counter()
        sess.decode([1000 + i])
        steps.append(time.perf_counter() - a)
    stop.set()
    doc = {
        "model": os.path.basename(args.model),
        "weight_bytes": model.weight_bytes,
        "load_s": t1 - t0,
        "prefill_tokens": args.prompt,
        "prefill_s": t2 - t1,
        "decode_s_per_token": steps,
        "decode_tokens_per_s": len(steps) / sum(steps),
        "weight_gb_per_s": model.weight_bytes * len(steps) / sum(steps) / 1e9,
        "peak_rss_anon_bytes": peak["RssAnon"],
        "peak_rss_file_bytes": peak["RssFile"],
        "peak_rss_bytes": _status()["VmHWM"],
        "provenance": provenance.record({"cpu": CpuRuntime()}),
    }
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
