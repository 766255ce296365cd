"""The memory planner against the CPU runtime's actual allocation, written as JSON.

    python -m g4c.reports.plan_check MODEL.gguf --context 8192 --context 32768 --out F.json

For each context the CPU session is loaded with its full-layer caches reserved whole, and
the bytes it holds (memory_report: mapped weights, dequantized matrices, KV arrays) are set
beside the planner's figures. Scratch is transient (allocated per forward) and reported as
planned.
"""

from __future__ import annotations

import argparse
import json

from g4c import provenance
from g4c.model import Model
from g4c.runtimes.cpu import CpuRuntime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--context", type=int, action="append", required=True)
    ap.add_argument("--out")
    args = ap.parse_args()
    model = Model(args.model)
    rows = []
    for n in args.context:
        plan = CpuRuntime.memory_plan(model, n)
        sess = CpuRuntime().load(model, n, reserve=True)
        actual = sess.memory_report()
        rows.append({"context": n, "planned": plan.as_dict(), "actual": actual,
                     "kv_planned_minus_actual": plan.kv - actual["kv"],
                     "weights_planned_minus_actual": plan.weights - actual["mapped_weights"] - actual["dense_weights"]})
        del sess
        print(f"context {n}: planned KV {plan.kv:,} B, actual KV arrays {actual['kv']:,} B; "
              f"planned weights {plan.weights:,} B, "
              f"actual {actual['mapped_weights'] + actual['dense_weights']:,} B; planned scratch {plan.scratch:,} B; "
              f"planned total {plan.total:,} B")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model.rsplit("/", 1)[-1], "runtime": "cpu", "rows": rows,
                       "provenance": provenance.record({"cpu": CpuRuntime()})}, f, indent=1)


if __name__ == "__main__":
    main()
