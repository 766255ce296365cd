"""Every CUDA matvec variant on the 12b preset's real shapes, in one run on the GPU machine.

    python3 reports/device/matvec_sweep.py OUT_DIR [--deadline SECONDS] [--emu]

1. The device, and its read-only ceiling (a kernel that only reads 1 GiB, 16-byte loads)
   and copy bandwidth, measured in the same run.
2. Random blocks as the 12b preset writes them in the real shapes: q/k/v stacked 8192 x 3840,
   o 3840 x 4096, gate+up 30720 x 3840, down 3840 x 15360 (Q4_0; the FFN also in Q4_K) and
   the head 262144 x 3840 (Q6_K); each in enough copies (>= 150 MB in all) that
   launches rotate through more than L2 holds. Stored (for the staged kernels) and repacked.
3. A correctness gate per variant and N = 1, 2, 4, 8, 16: 64 sampled rows against the
   float64 oracle, outputs pre-filled with NaN, x with outliers (1e4 and 1e-6 values). A
   variant that fails is reported and not timed.
4. Time per launch: median of 20 by CUDA events, rotating copies; GB/s of weight bytes.
Stops at the deadline (default 240 s) wherever it is and still writes OUT_DIR/matvec-sweep.json
and prints the table. --emu runs the same steps on the CUDA emulator at shapes 1/64 the
size (rows and columns): the script's own check, no speed figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT

from g4c import quants
from g4c.runtimes.cuda.runtime import DIRECT_CONFIG, DIRECT_SWEEP, MMA_SHAPES, CudaRuntime

SHAPES = {  # name: (rows, cols, format) of the 12b preset's sliding layers and head
    "qkv": (8192, 3840, QT.Q4_0), "o": (3840, 4096, QT.Q4_0), "gate_up": (30720, 3840, QT.Q4_0),
    "down": (3840, 15360, QT.Q4_0), "head": (262144, 3840, QT.Q6_K),
    # the FFN of the 12b preset in Q4_K (--bench-model 12b:Q4_K): does batching pay on a K-quant?
    "gate_up_q4k": (30720, 3840, QT.Q4_K), "down_q4k": (3840, 15360, QT.Q4_K)}
NS = (1, 2, 4, 8, 16)
ROTATE_BYTES = 150 << 20
SAMPLE_ROWS = 64
READ_ONLY = r"""
extern "C" __global__ void read_only(const uint4* p, long n, unsigned* out) {
    unsigned acc = 0;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        uint4 v = __ldg(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) out[0] = acc;  // keeps the loads; practically never written
}
"""


class Clock:
    """Launch timing: CUDA events on a GPU, the wall clock on the emulator."""

    def __init__(self, cp, emu: bool):
        self.cp, self.emu = cp, emu

    def time(self, fn, reps: int) -> list[float]:
        out = []
        for i in range(reps):
            if self.emu:
                t = time.perf_counter()
                fn(i)
                out.append(time.perf_counter() - t)
                continue
            a, b = self.cp.cuda.Event(), self.cp.cuda.Event()
            a.record()
            fn(i)
            b.record()
            b.synchronize()
            out.append(self.cp.cuda.get_elapsed_time(a, b) / 1e3)
        return out


def random_rows(qtype: QT, rows: int, cols: int, rng) -> np.ndarray:
    """Raw rows as the 12b preset writes them (g4c.quants.random_blocks: random codes, scales
    of random sign, weights of standard deviation 0.02)."""
    return quants.random_blocks(rng, rows, cols, qtype, 0.02)


def variants(n: int, qtype: QT):
    """(name, kind, launch parameters) of every kernel that serves a batch of n."""
    out = [("staged", "staged", {})]
    nv = next(v for v in (1, 2, 4, 8, 16) if v >= n)
    r, w = DIRECT_CONFIG.get(nv, (2, 4))
    out.append((f"mvd_r{r}w{w}", "direct", {"nv": nv, "rows": r, "warps": w}))
    if n == 1:
        out += [(f"mvd_r{r}w{w}", "direct", {"nv": 1, "rows": r, "warps": w}) for r, w in DIRECT_SWEEP]
    else:
        out += [(f"mvt_m{t}w{w}nt{nt}", "mma", {"tiles": t, "warps": w, "nt": nt})
                for t, w, nt in MMA_SHAPES if (nt == 1) == (n <= 8)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--deadline", type=float, default=240.0)
    ap.add_argument("--emu", action="store_true")
    args = ap.parse_args(argv)
    t_end = time.monotonic() + args.deadline
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.emu:
        from g4c.runtimes.cuda.emu import EmulatedCudaRuntime

        rt = EmulatedCudaRuntime()
    else:
        rt = CudaRuntime()
    k = rt.kernels()
    cp = k.cp
    clock = Clock(cp, args.emu)
    reps = 3 if args.emu else 20
    doc = {"settings": rt.settings(), "emulated": args.emu, "shapes": {}, "results": [], "failures": [], "stopped": None}
    rng = np.random.default_rng(0)

    def save():
        (out_dir / "matvec-sweep.json").write_text(json.dumps(doc, indent=1) + "\n")

    try:
        # ceilings, in this run
        nbytes = (1 << 30) if not args.emu else (1 << 22)
        buf = cp.zeros(nbytes, cp.uint8)
        ro = cp.RawModule(code=READ_ONLY).get_function("read_only")
        sink = cp.zeros(1, cp.uint32)
        grid = 132 * 8 if not args.emu else 4
        t = statistics.median(clock.time(lambda i: ro((grid,), (512,), (buf, np.int64(nbytes // 16), sink)), reps))
        doc["read_only_GBps"] = nbytes / t / 1e9
        dst = cp.empty_like(buf)
        t = statistics.median(clock.time(lambda i: cp.copyto(dst, buf), reps))
        doc["copy_read_plus_write_GBps"] = 2 * nbytes / t / 1e9
        del buf, dst
        save()
        scale = 64 if args.emu else 1
        for name, (rows, cols, qtype) in SHAPES.items():
            rows, cols = rows // scale, max(256, cols // scale)
            raw = random_rows(qtype, rows, cols, rng)
            copies = max(2, -(-ROTATE_BYTES // raw.nbytes)) if not args.emu else 2
            stored = [k.upload(raw, qtype, cols, path="staged") for _ in range(copies)]
            packed = [k.upload(raw, qtype, cols, path="direct") for _ in range(copies)]
            sample = np.sort(rng.choice(rows, min(SAMPLE_ROWS, rows), replace=False))
            w64 = quants.dequantize(raw[sample], qtype, cols).astype(np.float64)
            doc["shapes"][name] = {"rows": rows, "cols": cols, "format": qtype.name, "bytes": int(raw.nbytes), "copies": copies}
            for n in NS:
                x = rng.standard_normal((n, cols)).astype(np.float32)
                x[:, 3] *= 1e4
                x[:, 5::13] *= 1e-6
                ref = x.astype(np.float64) @ w64.T
                # the f32 bound of tests/test_cuda_matvec.py, plus the f16 hi + lo representation of x
                bound = (cols * 2.0 ** -24 * (np.abs(x.astype(np.float64)) @ np.abs(w64).T)
                         + 2.0 ** -22 * np.abs(x).max(1, keepdims=True) * np.abs(w64).sum(1)[None, :])
                xd = cp.asarray(x)
                for vname, kind, p in variants(n, qtype):
                    if time.monotonic() > t_end:
                        doc["stopped"] = f"deadline reached at {name} N={n} {vname}"
                        raise TimeoutError
                    mats = stored if kind == "staged" else packed

                    def launch(i, y=None, mats=mats, kind=kind, p=p):
                        m = mats[i % len(mats)]
                        if kind == "staged":
                            return k.matvec(m, xd)
                        if y is None:  # timed launches write into one buffer, allocated and filled untimed
                            y = launch.y
                        if kind == "direct":
                            k.matvec_direct(m, xd, y, p["nv"], p["rows"], p["warps"])
                        else:
                            k.matvec_mma(m, xd, y, p["tiles"], p["warps"], nt=p["nt"])
                        return y

                    launch.y = cp.empty((n, rows), cp.float32)
                    y = cp.asnumpy(launch(0, cp.full((n, rows), np.nan, cp.float32)))[:, sample]
                    err = np.abs(y - ref)
                    row = {"shape": name, "n": n, "variant": vname, **p}
                    if np.isnan(y).any() or (err > bound).any():
                        i = np.argwhere(~(err <= bound))[0]
                        row["error"] = (f"vector {i[0]} row {sample[i[1]]}: {y[tuple(i)]} against {ref[tuple(i)]}, "
                                        f"bound {bound[tuple(i)]:.3g}")
                        doc["failures"].append(row)
                        continue
                    row["max_rel_err"] = float((err / np.maximum(np.abs(ref), 1e-30)).max())
                    times = clock.time(launch, reps)
                    row["median_us"] = statistics.median(times) * 1e6
                    row["GBps"] = raw.nbytes / statistics.median(times) / 1e9
                    doc["results"].append(row)
            del stored, packed
            save()
    except TimeoutError:
        pass
    finally:
        save()
        print_table(doc)
    return 1 if doc["failures"] else 0


def print_table(doc: dict) -> None:
    print(f"device: {doc['settings'].get('device')}  read-only {doc.get('read_only_GBps', float('nan')):.0f} GB/s  "
          f"copy r+w {doc.get('copy_read_plus_write_GBps', float('nan')):.0f} GB/s" + ("  (emulated)" if doc["emulated"] else ""))
    best: dict = {}
    for r in doc["results"]:
        key = (r["shape"], r["n"])
        if key not in best or r["GBps"] > best[key]["GBps"]:
            best[key] = r
    staged = {(r["shape"], r["n"]): r["GBps"] for r in doc["results"] if r["variant"] == "staged"}
    print(f"{'shape':8s} {'N':>3s} {'best variant':18s} {'GB/s':>8s} {'staged':>8s}")
    for (shape, n), r in best.items():
        print(f"{shape:8s} {n:3d} {r['variant']:18s} {r['GBps']:8.1f} {staged.get((shape, n), float('nan')):8.1f}")
    for f in doc["failures"]:
        print(f"WRONG {f['shape']} N={f['n']} {f['variant']}: {f['error']}")
    if doc["stopped"]:
        print("stopped:", doc["stopped"])


if __name__ == "__main__":
    sys.exit(main())
