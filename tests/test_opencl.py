"""OpenCL kernels and device handling, on whatever OpenCL device is present (PoCL's CPU device
in CI): dequantization and products of every weight format against gguf's dequantization
(the oracle) on both matvec paths, the whole forward on both, device choice, build errors
and the reasons the runtime gives when pyopencl or an ICD is absent. Skipped, with the
reason, where pyopencl or an OpenCL device is absent (the absent-device tests run anyway)."""

import numpy as np
import pytest

from g4c import quants
from g4c.errors import DeviceUnavailableError, G4CError
from g4c.tolerance import F32

from g4c.conformance.test_weight_types import TYPES, _case


@pytest.fixture(scope="module")
def dev():
    from g4c.runtimes.opencl.device import Device

    try:
        return Device()
    except DeviceUnavailableError as e:
        pytest.skip(f"opencl unavailable: {e}")


def _matrix(dev, raw, qtype, cols):
    from g4c.runtimes.opencl.runtime import _Matrix

    return _Matrix(dev, f"test {qtype}", raw, quants.TYPE_NAMES[qtype], cols)


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize(dev, qtype):
    """Every weight of every format decoded exactly as gguf decodes it (f32 products of f16
    scales and small integers: exact)."""
    from g4c.runtimes.opencl.runtime import Kernels

    raw, oracle, _ = _case(qtype)
    rows, cols = oracle.shape
    out = dev.buffer(rows * cols * 4)
    Kernels(dev).dequant(_matrix(dev, raw, qtype, cols), out, rows)
    got = dev.read(out, np.float32, rows * cols).reshape(rows, cols)
    bad = np.argwhere(got != oracle.astype(np.float32))
    assert not bad.size, f"{qtype}: first difference at row {bad[0][0]} col {bad[0][1]}: {got[tuple(bad[0])]} vs {oracle[tuple(bad[0])]}"


@pytest.fixture(params=["plain", "subgroup"])
def path(request, dev):
    """The matvec path under test (subgroup: the device's own sub-groups, or their emulation
    where it has none, as on PoCL); the device's own choice is restored afterwards."""
    was = dev.path
    dev.path = request.param
    yield request.param
    dev.path = was


# n: 1 and 3 vectors (matvec), 16 (matvec's limit), 40 and 70 tokens (matmul, with a partial tile)
@pytest.mark.parametrize("n", [1, 3, 16, 40, 70])
@pytest.mark.parametrize("qtype", TYPES)
def test_matrix_kernels(dev, path, qtype, n):
    from g4c.runtimes.opencl.runtime import Kernels

    # 67 rows: a partial work-group of rows; legacy blocks at 288 columns (9 blocks), whose
    # 18-, 22- and 34-byte blocks start rows off every 4-byte boundary
    cols = 512 if quants.LAYOUTS[quants.TYPE_NAMES[qtype]].block_size == 256 else 288
    raw, oracle, _ = _case(qtype, rows=67, cols=cols)
    rows = oracle.shape[0]
    x = np.random.default_rng(1).standard_normal((n, cols)).astype(np.float32)
    bx, by = dev.buffer(x.nbytes, x), dev.buffer(n * rows * 4)
    Kernels(dev).matrix(_matrix(dev, raw, qtype, cols), bx, by, n)
    got = dev.read(by, np.float32, n * rows).reshape(n, rows).astype(np.float64)
    want = x.astype(np.float64) @ oracle.T
    e = float(np.sum((got - want) ** 2) / np.sum(want ** 2))
    # f32 dot products of length K: NMSE about K u^2, far below op_nmse (1e-10, as llama.cpp's test-backend-ops 1e-7 scaled)
    assert e <= F32.op_nmse, (f"{path} {qtype} x{n}: NMSE {e:.3g} > {F32.op_nmse:g}; worst vector "
                              f"{int(np.abs(got - want).max(1).argmax())}, row {int(np.abs(got - want).max(0).argmax())}")


def test_matrix_in_row_chunks(dev, monkeypatch):
    """A matrix larger than the device's largest allocation goes up in row chunks, each
    launched with its first row as the output offset (forced here with a small limit)."""
    from g4c.runtimes.opencl.runtime import Kernels

    raw, oracle, _ = _case("Q4_0", rows=67, cols=288)
    monkeypatch.setattr(dev, "max_alloc", 10 * raw.shape[1])
    m = _matrix(dev, raw, "Q4_0", 288)
    monkeypatch.undo()
    assert len(m.chunks) == 7, [c[:2] for c in m.chunks]
    x = np.random.default_rng(2).standard_normal((2, 288)).astype(np.float32)
    by = dev.buffer(2 * 67 * 4)
    Kernels(dev).matrix(m, dev.buffer(x.nbytes, x), by, 2)
    got = dev.read(by, np.float32, 2 * 67).reshape(2, 67)
    want = x.astype(np.float64) @ oracle.T
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), np.abs(got - want).max(0)


@pytest.mark.parametrize("qtype", ["F32", "Q4_K"])
def test_forward_on_both_paths(dev, path, qtype):
    """The whole forward on each matvec path (matmul prefill of 70 tokens, a partial tile
    included, the sliding window of 32 crossed, then decode steps, which run the matvec)
    against the float64 reference: the conformance suite runs the device's own path, this
    runs the other too."""
    from g4c.conformance.harness import load_model, prompt, reference_logits
    from g4c import tolerance
    from g4c.compare import assert_logits_close
    from g4c.runtimes.opencl.runtime import OpenCLRuntime

    rt = OpenCLRuntime()
    rt._dev = dev
    tol = tolerance.for_runtime(rt)
    model = load_model("tiny", qtype)
    toks = prompt(74, model.n_vocab, seed=5)
    ref = reference_logits(model, toks)
    sess = rt.load(model, 128, 1)
    assert sess.path == path
    rows = list(np.asarray(sess.prefill(list(toks[:70]))))
    for t in toks[70:-1]:
        rows.append(np.asarray(sess.decode([t]))[0])
    assert_logits_close(np.array(rows), ref[:-1], tol, tol.logit_max_abs(model.config, ref), np.arange(73),
                        what=f"{path} path logits")


def test_build_error_shows_the_log(dev):
    """A kernel that does not compile raises one error naming the source and the device,
    with the compiler's log (the undefined identifier), not pyopencl's bare status."""
    with pytest.raises(G4CError) as e:
        dev.build("kernel void broken(global float* y) { y[0] = no_such_function(1.0f); }", [], "kernels/broken.cl")
    msg = str(e.value)
    assert "kernels/broken.cl" in msg and dev.name in msg and "no_such_function" in msg, msg


def test_device_choice(dev, monkeypatch):
    """G4C_OPENCL_DEVICE picks by index, platform:device or name; a choice that matches
    nothing lists what there is."""
    from g4c.runtimes.opencl.device import Device

    monkeypatch.setenv("G4C_OPENCL_DEVICE", dev.index)
    assert Device().name == dev.name
    monkeypatch.setenv("G4C_OPENCL_DEVICE", dev.name[:6].upper())
    assert Device().name == dev.name
    monkeypatch.setenv("G4C_OPENCL_DEVICE", "no such device")
    with pytest.raises(G4CError, match="G4C_OPENCL_DEVICE='no such device' matches no OpenCL device") as e:
        Device()
    assert dev.name in str(e.value)
    monkeypatch.setenv("G4C_OPENCL_DEVICE", dev.index)
    monkeypatch.setenv("G4C_OPENCL_PATH", "fast")
    with pytest.raises(G4CError, match="G4C_OPENCL_PATH='fast': expected plain or subgroup"):
        Device()


def test_absent_pyopencl_is_a_reason(monkeypatch):
    """Without pyopencl the runtime is unavailable, saying how to install it (a skip with the
    reason in a default run, a failure of an explicit --runtime opencl)."""
    import sys

    from g4c.runtimes.opencl.runtime import OpenCLRuntime

    monkeypatch.setitem(sys.modules, "pyopencl", None)  # import pyopencl raises ImportError
    a = OpenCLRuntime().availability()
    assert not a.ok and "pip install pyopencl" in a.reason, a


def test_absent_icd_is_a_reason(monkeypatch):
    """With pyopencl but no platform (no ICD installed) or platforms without devices, the
    reason names the package that provides one."""
    from g4c.runtimes.opencl import device
    from g4c.runtimes.opencl.runtime import OpenCLRuntime

    class ClError(Exception):
        pass

    class NoPlatform:
        Error = ClError

        @staticmethod
        def get_platforms():
            raise ClError("clGetPlatformIDs failed: PLATFORM_NOT_FOUND_KHR")

    class EmptyPlatform(NoPlatform):
        class _P:
            def get_devices(self):
                raise ClError("clGetDeviceIDs failed: DEVICE_NOT_FOUND")

        @staticmethod
        def get_platforms():
            return [EmptyPlatform._P()]

    for fake, want in ((NoPlatform, "no OpenCL platform"), (EmptyPlatform, "no OpenCL device on any platform")):
        monkeypatch.setattr(device, "_cl", lambda fake=fake: fake)
        a = OpenCLRuntime().availability()
        assert not a.ok and want in a.reason and "pocl-opencl-icd" in a.reason, a


class _FakeDevice:
    """What device choice and sub-group detection read of a pyopencl device."""

    def __init__(self, name, kind=1, extensions="", version="OpenCL 1.2", c_version="OpenCL C 1.2", all_c=(), features=()):
        from types import SimpleNamespace as NS

        self.name, self.type, self.extensions, self.version = name, kind, extensions, version
        self.platform = NS(name="Fake platform")
        self._info = {"OPENCL_C_VERSION": c_version,
                      "OPENCL_C_ALL_VERSIONS": [NS(name="OpenCL C", version=(a << 22) | (b << 12)) for a, b in all_c],
                      "OPENCL_C_FEATURES": [NS(name=f) for f in features]}

    def get_info(self, key):
        return self._info[key]


def _fake_cl(devices):
    from types import SimpleNamespace as NS

    return NS(Error=Exception, device_type=NS(GPU=4, CPU=2),
              device_info=NS(OPENCL_C_VERSION="OPENCL_C_VERSION", OPENCL_C_ALL_VERSIONS="OPENCL_C_ALL_VERSIONS",
                             OPENCL_C_FEATURES="OPENCL_C_FEATURES"),
              get_platforms=lambda: [NS(get_devices=lambda: devices)])


def test_device_index_is_matched_before_names():
    """G4C_OPENCL_DEVICE=1 is the device at index 1, even when device 0's name holds a 1;
    without a choice a GPU comes first."""
    from g4c.runtimes.opencl.device import choose

    devs = [_FakeDevice("Accelerator H100", kind=2), _FakeDevice("Other GPU", kind=4)]
    cl = _fake_cl(devs)
    assert choose(cl, "1")[2].name == "Other GPU"
    assert choose(cl, "0:0")[2].name == "Accelerator H100"
    assert choose(cl, "h100")[2].name == "Accelerator H100"
    assert choose(cl, None)[2].name == "Other GPU"


@pytest.mark.parametrize("fake,want", [
    # PoCL 3.1: OpenCL 3.0, C 1.2 reported, 3.0 listed apart, no sub-group feature or extension
    (dict(version="OpenCL 3.0 PoCL", all_c=[(1, 2), (3, 0)], features=["__opencl_c_images"]), ("", ())),
    # an OpenCL 3.0 driver reporting C 1.2, with the sub-group feature among its 3.0 features
    (dict(version="OpenCL 3.0", all_c=[(1, 2), (3, 0)], features=["__opencl_c_subgroups"]),
     ("__opencl_c_subgroups", ("-cl-std=CL3.0",))),
    # an OpenCL 3.0 driver with the extension but no C 2.0: built as C 3.0
    (dict(version="OpenCL 3.0", extensions="cl_khr_subgroups", all_c=[(1, 2), (3, 0)]),
     ("cl_khr_subgroups", ("-cl-std=CL3.0", "-DKHR_SUBGROUPS=1"))),
    # an OpenCL 2.0 device with the extension
    (dict(version="OpenCL 2.0", extensions="cl_khr_subgroups", c_version="OpenCL C 2.0"),
     ("cl_khr_subgroups", ("-cl-std=CL2.0", "-DKHR_SUBGROUPS=1"))),
    # an OpenCL 1.2 device listing the extension cannot build it: plain
    (dict(extensions="cl_khr_subgroups"), ("", ())),
    (dict(extensions="cl_intel_subgroups cl_khr_subgroups", c_version="OpenCL C 1.2"), ("cl_intel_subgroups", ())),
])
def test_subgroup_detection(fake, want):
    """Which sub-group functions a device has and the compiler mode they need, from what
    OpenCL 1.2, 2.0 and 3.0 devices report (a 3.0 device reports C 1.2 as its C version)."""
    from types import SimpleNamespace as NS

    from g4c.runtimes.opencl.device import Device

    dev = _FakeDevice("fake", **fake)
    assert Device._subgroup_support(NS(cl=_fake_cl([dev]), dev=dev)) == want


def test_context_past_the_largest_allocation_is_refused_at_load(dev, monkeypatch):
    """A max_context whose attention scores would not fit one allocation is refused at load
    with the figures (a resource shortage: skipped in the suite), not halfway through a forward."""
    from g4c.conformance.harness import load_model
    from g4c.errors import ResourceUnavailable
    from g4c.runtimes.opencl.runtime import OpenCLRuntime

    rt = OpenCLRuntime()
    rt._dev = dev
    model = load_model("tiny", "Q4_0")
    monkeypatch.setattr(dev, "max_alloc", 1 << 20)
    with pytest.raises(ResourceUnavailable, match=r"at max_context 4096, one buffer would hold the attention scores of a "
                                                  r"micro-batch: \d+ bytes; the device's largest allocation is 1048576"):
        rt.load(model, 4096, 1)
    rt.load(model, 128, 1)  # 64 rows x heads x 128 slots fits
