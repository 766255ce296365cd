"""What ptxas reports for every CUDA kernel of the runtime: registers, spill stores and loads,
stack frame and shared memory per kernel, per architecture (nvcc -Xptxas -v; no GPU needed).

    python -m g4c.runtimes.cuda.ptxas reports/data/cuda-ptxas.json

tests/test_cuda_kernels.py compiles every source for every architecture through report()
and holds the committed JSON to what it prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .runtime import KERNEL_DIR, KERNEL_FILES

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?, (\d+) bytes smem)?")


class CompileError(RuntimeError):
    pass


def nvcc() -> str:
    found = shutil.which("nvcc") or next((str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/nvcc"))), None)
    if not found:
        raise CompileError("nvcc not found on PATH or under /usr/local/cuda*/bin")
    return found


def nvcc_version() -> str:
    out = subprocess.run([nvcc(), "--version"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


def parse(text: str) -> dict[str, dict]:
    """ptxas -v's lines -> {kernel: {registers, spill_stores, spill_loads, stack, smem}}."""
    out, name = {}, None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            name = m.group(1)
            out[name] = {}
        elif name and (m := _STACK.search(line)):
            out[name].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif name and (m := _USED.search(line)):
            out[name].update(registers=int(m.group(1)), smem=int(m.group(2) or 0))
    return out


def report(source: str, arch: str) -> dict[str, dict]:
    """Compile one kernel file for one architecture; its kernels as parse() gives them."""
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([nvcc(), f"-arch={arch}", "-std=c++17", "-Xptxas", "-v", "-c", str(KERNEL_DIR / source),
                            "-o", f"{tmp}/k.o"], capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise CompileError(f"{source} for {arch}:\n{r.stderr[-3000:]}")
    return parse(r.stderr)


def full_report() -> dict:
    jobs = [(src, arch) for src in KERNEL_FILES for arch in ARCHS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda j: report(*j), jobs))
    kernels: dict[str, dict] = {}
    for (src, arch), res in zip(jobs, results):
        for name, info in res.items():
            kernels.setdefault(arch, {})[name] = {"source": src, **info}
    return {"nvcc": nvcc_version(), "archs": list(ARCHS), "kernels": {a: dict(sorted(k.items())) for a, k in kernels.items()}}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    doc = full_report()
    Path(argv[0]).write_text(json.dumps(doc, indent=1) + "\n")
    for arch, ks in doc["kernels"].items():
        spills = [k for k, v in ks.items() if v.get("spill_stores") or v.get("spill_loads")]
        print(f"{arch}: {len(ks)} kernels, max {max(v['registers'] for v in ks.values())} registers, "
              f"spilling: {', '.join(spills) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
