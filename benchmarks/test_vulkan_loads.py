"""How the Vulkan device's storage loads scale with their width: the probe that chose the wide
path's 64-bit weight loads over a 16-bit-storage path (on lavapipe each load is one scalar
load per lane, so fewer, wider loads win; 16-bit storage means more, narrower ones).

A 96 MiB buffer is summed by 512 workgroups of 64 lanes reading uint16_t, f16vec4 (both
16-bit storage), uint or uint64_t elements; extra_info holds the bytes read per second.
Skipped, with the reason, without a Vulkan device, per width the device lacks (16-bit
storage, shaderInt64), and where --bench-runtime (G4C_BENCH_RUNTIME) names runtimes but not
vulkan."""

import numpy as np
import pytest

from g4c.errors import DeviceUnavailableError

KINDS = {"uint16_t": (0, 2), "f16vec4": (1, 8), "uint": (2, 4), "uint64_t": (3, 8)}
NBYTES = 96 << 20  # under lavapipe's 128 MiB binding limit, far over its caches
GROUPS = 512


@pytest.fixture(scope="module")
def probe(request):
    chosen = request.config._g4c_bench_runtimes  # benchmarks/conftest.py: those asked for, else every default one
    if "vulkan" not in chosen:
        pytest.skip(f"--bench-runtime asks for {', '.join(chosen)}, not vulkan: these probes measure the vulkan device")
    from g4c.runtimes.vulkan.device import Device

    try:
        dev = Device()
    except DeviceUnavailableError as e:
        pytest.skip(f"vulkan unavailable: {e}")
    a, out = dev.buffer(NBYTES, host=False), dev.buffer(GROUPS * 64 * 4)
    # f16 values in [0, 1): finite whichever width reads them
    dev.upload(a, np.random.default_rng(0).integers(0, 0x3bff, NBYTES // 2, dtype=np.uint16))
    return dev, a, out


@pytest.mark.parametrize("kind", list(KINDS))
def test_load_width(benchmark, probe, kind):
    dev, a, out = probe
    if kind in ("uint16_t", "f16vec4") and not dev.storage16:
        pytest.skip(f"{dev.name} has no 16-bit storage buffer access")
    if kind == "uint64_t" and not dev.int64:
        pytest.skip(f"{dev.name} has no shaderInt64")
    code, width = KINDS[kind]
    p = dev.pipeline("load_probe", {"KIND": code}, 2, 1)
    benchmark.pedantic(dev.run, args=(p, [a, out], [NBYTES // width], (GROUPS, 1, 1)), rounds=5, warmup_rounds=1)
    if benchmark.stats is not None:
        benchmark.extra_info.update(device=dev.name, element=kind, bytes=NBYTES,
                                    read_bytes_per_s=NBYTES / benchmark.stats.stats.min)
