"""Every CUDA kernel file compiles with nvcc for the architectures the runtime targets.
Runs without a GPU; a machine without nvcc fails here, it does not skip."""

import shutil
import subprocess
from pathlib import Path

import pytest

from g4c.runtimes.cuda.runtime import KERNEL_DIR, KERNEL_FILES

ARCHS = ["sm_80", "sm_86", "sm_89", "sm_90"]


def nvcc() -> str:
    found = shutil.which("nvcc") or next((str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/nvcc"))), None)
    assert found, "nvcc not found on PATH or under /usr/local/cuda*/bin: .ci/run must install the CUDA compiler"
    return found


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", KERNEL_FILES)
def test_kernel_compiles(tmp_path, source, arch):
    r = subprocess.run([nvcc(), f"-arch={arch}", "-std=c++17", "-c", str(KERNEL_DIR / source), "-o", str(tmp_path / "k.o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{source} for {arch}:\n{r.stderr[-3000:]}"
    assert (tmp_path / "k.o").stat().st_size > 0


def test_kernel_list_complete():
    assert sorted(p.name for p in KERNEL_DIR.glob("*.cu")) == sorted(KERNEL_FILES)
