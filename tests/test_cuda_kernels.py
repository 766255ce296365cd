"""Every CUDA kernel file compiles with nvcc for the architectures the runtime targets, and
ptxas's register and spill report (-Xptxas -v) matches the one committed in
reports/data/cuda-ptxas.json. Runs without a GPU; a machine without nvcc fails here, it does
not skip."""

import json
from pathlib import Path

import pytest

from g4c.runtimes.cuda import ptxas
from g4c.runtimes.cuda.runtime import KERNEL_DIR, KERNEL_FILES

REPORT = Path(__file__).parent.parent / "reports" / "data" / "cuda-ptxas.json"


@pytest.fixture(scope="module")
def committed():
    return json.loads(REPORT.read_text())


@pytest.mark.parametrize("arch", ptxas.ARCHS)
@pytest.mark.parametrize("source", KERNEL_FILES)
def test_kernel_compiles_as_reported(source, arch, committed):
    """Compiled now: the same kernels as the committed report, none spilling; with the same
    nvcc, the same registers and shared memory (a kernel change that moves them must
    rewrite the report: python -m g4c.runtimes.cuda.ptxas reports/data/cuda-ptxas.json)."""
    try:
        now = ptxas.report(source, arch)
    except ptxas.CompileError as e:
        pytest.fail(f"{e} (.ci/run's machine must have the CUDA compiler)")
    assert now, f"{source} for {arch}: ptxas reported no kernel"
    spilling = {k: v for k, v in now.items() if v.get("spill_stores") or v.get("spill_loads")}
    assert not spilling, f"{source} for {arch}: kernels spill registers to local memory: {spilling}"
    was = {k: v for k, v in committed["kernels"][arch].items() if v["source"] == source}
    assert sorted(now) == sorted(was), (f"{source} for {arch}: kernels differ from reports/data/cuda-ptxas.json: "
                                        f"new {sorted(set(now) - set(was))}, gone {sorted(set(was) - set(now))}")
    if committed["nvcc"] == ptxas.nvcc_version():
        moved = {k: (was[k]["registers"], v["registers"]) for k, v in now.items()
                 if (v["registers"], v["smem"]) != (was[k]["registers"], was[k]["smem"])}
        assert not moved, f"{source} for {arch}: registers (committed, now) moved: {moved}; rewrite the report"


def test_kernel_list_complete():
    assert sorted(p.name for p in KERNEL_DIR.glob("*.cu")) == sorted(KERNEL_FILES)


def test_parse_reads_ptxas_lines():
    text = """ptxas info    : Compiling entry function 'mvd_x' for 'sm_90'
ptxas info    : Function properties for mvd_x
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 128 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'k2' for 'sm_90'
ptxas info    : Function properties for k2
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 380 bytes cmem[0]
"""
    assert ptxas.parse(text) == {
        "mvd_x": {"stack": 16, "spill_stores": 8, "spill_loads": 4, "registers": 255, "smem": 128},
        "k2": {"stack": 0, "spill_stores": 0, "spill_loads": 0, "registers": 12, "smem": 0}}
