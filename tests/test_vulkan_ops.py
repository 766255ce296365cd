"""Vulkan shaders at op level: dequantization and matvec of every weight format against
gguf's dequantization (the oracle), on whatever Vulkan device is present (lavapipe in CI).
Skipped, with the reason, where the vulkan binding, a Vulkan device or glslang is absent."""

import numpy as np
import pytest

from g4c import quants
from g4c.errors import DeviceUnavailableError
from g4c.tolerance import F32

from g4c.conformance.test_weight_types import TYPES, _case


@pytest.fixture(scope="module")
def dev():
    from g4c.runtimes.vulkan.device import Device

    try:
        return Device()
    except DeviceUnavailableError as e:
        pytest.skip(f"vulkan unavailable: {e}")


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize(dev, qtype):
    t = quants.TYPE_NAMES[qtype]
    raw, oracle, _ = _case(qtype)
    rows, cols = oracle.shape
    w, out = dev.buffer(raw.nbytes), dev.buffer(rows * cols * 4)
    w.write(raw)
    units = rows * cols // 32
    dev.run(dev.pipeline("dequant", {"TYPE": int(t)}, 2, 4), [w, out], [rows, cols, raw.shape[1], 0], (-(-units // 64), 1, 1))
    got = out.read(np.float32, rows * cols).reshape(rows, cols)
    bad = np.argwhere(got != oracle.astype(np.float32))
    assert not bad.size, f"{qtype}: first difference at row {bad[0][0]} col {bad[0][1]}: {got[tuple(bad[0])]} vs {oracle[tuple(bad[0])]}"


@pytest.fixture(params=["baseline", "wide"])
def path(request, dev):
    """The kernel path under test; the device's own choice is restored afterwards."""
    if request.param == "wide" and dev.wide_reason:
        pytest.skip(f"wide path unavailable: {dev.name} {dev.wide_reason}")
    was = dev.wide
    dev.wide = request.param == "wide"
    yield request.param
    dev.wide = was


# n: 1 and 3 vectors (matvec), 16 (matvec's limit), 40 and 70 tokens (matmul, with a partial tile)
@pytest.mark.parametrize("n", [1, 3, 16, 40, 70])
@pytest.mark.parametrize("qtype", TYPES)
def test_matrix_kernels(dev, path, qtype, n):
    from g4c.runtimes.vulkan.runtime import PAD, matrix_kernel

    t = quants.TYPE_NAMES[qtype]
    # 67 rows: a partial workgroup of rows; legacy blocks at 288 columns (9 blocks) give rows
    # that start off every 8-byte boundary, which the wide path must realign
    cols = 512 if quants.LAYOUTS[t].block_size == 256 else 288
    raw, oracle, _ = _case(qtype, rows=67, cols=cols)
    rows = oracle.shape[0]
    x = np.random.default_rng(1).standard_normal((n, cols)).astype(np.float32)
    w, bx, by = dev.buffer(raw.nbytes + PAD), dev.buffer(x.nbytes), dev.buffer(n * rows * 4)
    w.write(raw)
    bx.write(x)
    name, defines, groups = matrix_kernel(dev, dev.wide, t, rows, n)
    dev.run(dev.pipeline(name, defines, 3, 7), [w, bx, by], [rows, cols, raw.shape[1], n, 0, 0, rows], groups)
    got = by.read(np.float32, n * rows).reshape(n, rows).astype(np.float64)
    want = x.astype(np.float64) @ oracle.T
    e = float(np.sum((got - want) ** 2) / np.sum(want ** 2))
    # f32 dot products of length K: NMSE about K u^2, far below op_nmse (1e-10, as llama.cpp's test-backend-ops 1e-7 scaled)
    assert e <= F32.op_nmse, (f"{name} {qtype} x{n}: NMSE {e:.3g} > {F32.op_nmse:g}; worst vector "
                              f"{int(np.abs(got - want).max(1).argmax())}, row {int(np.abs(got - want).max(0).argmax())}")


def test_descriptor_sets_follow_new_buffers(dev):
    """Buffers made after others were collected get fresh descriptor sets (a cache keyed by
    Python id() bound a new buffer's dispatch to a freed one: wrong logits at long positions)."""
    p = dev.pipeline("elementwise", {}, 2, 5)
    for value in (1.0, 2.0, 3.0):
        a, b = dev.buffer(256), dev.buffer(256)
        b.write(np.full(64, value, np.float32))
        dev.run(p, [a, b], [64, 4, 0.0, 0, 0], (1, 1, 1))  # mode 4: copy b into a
        assert (a.read(np.float32, 64) == value).all(), f"copy of {value} read back {a.read(np.float32, 4)}"
        del a, b


@pytest.mark.parametrize("qtype", ["F32", "Q4_K"])
def test_forward_on_both_paths(dev, path, qtype):
    """The whole forward on each kernel path (matmul prefill of 70 tokens, a partial tile
    included, the sliding window of 32 crossed, then decode steps) against the float64
    reference: the conformance suite runs the device's own path, this runs the other too."""
    from g4c.conformance.harness import load_model, prompt, reference_logits
    from g4c import tolerance
    from g4c.compare import assert_logits_close
    from g4c.runtimes.vulkan.runtime import VulkanRuntime

    rt = VulkanRuntime()
    rt._dev = dev
    tol = tolerance.for_runtime(rt)
    model = load_model("tiny", qtype)
    toks = prompt(74, model.n_vocab, seed=5)
    ref = reference_logits(model, toks)
    sess = rt.load(model, 128, 1)
    assert sess.wide == (path == "wide")
    rows = list(np.asarray(sess.prefill(list(toks[:70]))))
    for t in toks[70:-1]:
        rows.append(np.asarray(sess.decode([t]))[0])
    assert_logits_close(np.array(rows), ref[:-1], tol, tol.logit_max_abs(model.config, ref), np.arange(73),
                        what=f"{path} path logits")


@pytest.fixture
def staged(dev):
    """Device-local memory never mapped (as on a discrete GPU), restored afterwards."""
    was, dev.staging = dev.staging, True
    yield dev
    dev.staging = was


def test_staged_device_memory(staged):
    """Weights, caches and activations in device-local memory that the host never maps (a
    discrete GPU's; forced here with Device.staging): uploads through the staging buffer,
    the full-layer cache grown by device copies (300 tokens > 256 slots), a rewind, a
    second sequence, a restart after a gap (whose old slots must be emptied on the device),
    a reset, all against the float64 reference."""
    from g4c.conformance.harness import load_model, prompt, reference_logits
    from g4c import tolerance
    from g4c.compare import assert_logits_close
    from g4c.runtimes.vulkan.runtime import VulkanRuntime

    rt = VulkanRuntime()
    rt._dev = staged
    model = load_model("tiny", "Q4_K")
    sess = rt.load(model, 512, 2)
    tol = tolerance.for_runtime(rt)
    sess.prefill([1])
    assert not any(b.mapped for b in sess.device_buffers()), "a device-local buffer was mapped although staging was forced"
    tol = tolerance.for_runtime(rt)

    def check(got, toks, rows, what, start=0):
        ref = reference_logits(model, tuple(int(t) for t in toks), start)[rows]
        assert_logits_close(np.asarray(got), ref, tol, tol.logit_max_abs(model.config, ref), np.asarray(rows), what=what)

    a = prompt(300, model.n_vocab, seed=7)
    check(sess.prefill(list(a), seq=0), a, np.arange(300), "prefill of 300 (the full cache grows past 256)")
    b = a[:280] + prompt(12, model.n_vocab, seed=8)
    check(sess.prefill(list(b[280:]), start_pos=280, seq=0), b, np.arange(280, 292), "rewind to 280")
    c = prompt(40, model.n_vocab, seed=9)
    check(sess.prefill(list(c), seq=1), c, np.arange(40), "second sequence")
    step = sess.decode([int(b[-1]), int(c[-1])])
    check(step[:1], b + b[-1:], [292], "decode, sequence 0")
    check(step[1:2], c + c[-1:], [40], "decode, sequence 1")
    d = prompt(10, model.n_vocab, seed=10)  # a gap after position 40: restart at 45, old keys in the window
    check(sess.prefill(list(d), start_pos=45, seq=1), d, np.arange(10), "restart at 45", start=45)
    sess.reset()
    check(sess.prefill(list(c[:20]), seq=0), c[:20], np.arange(20), "after reset")


def _lavapipe(dev) -> None:
    if not dev.is_cpu or "llvmpipe" not in dev.name:
        pytest.skip(f"the subgroup size is set through lavapipe's LP_NATIVE_VECTOR_WIDTH; the device is {dev.name}")


# lavapipe's subgroup is its vector width / 32 lanes: 4, 8 (the default on AVX2) and 16
@pytest.mark.parametrize("width,subgroup", [(128, 4), (512, 16)])
def test_wide_path_at_other_subgroup_sizes(dev, tmp_path, width, subgroup):
    """The wide shaders are one code path for every subgroup size (broadcast.glsl): the shape
    sweep and the op cases on the wide path at lavapipe's subgroups of 4 and 16 (the suite itself runs 8), in a
    process of its own, since lavapipe reads LP_NATIVE_VECTOR_WIDTH when it loads."""
    import json
    import os
    import subprocess
    import sys

    _lavapipe(dev)
    out = tmp_path / "results.json"
    env = {**os.environ, "LP_NATIVE_VECTOR_WIDTH": str(width), "G4C_VULKAN_PATH": "wide"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "conformance/test_shapes.py", "conformance/test_ops.py", "--runtime", "vulkan", "-q",
                           "-p", "no:cacheprovider", "--results-json", str(out)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
    doc = json.loads(out.read_text())
    settings = doc["runtimes"]["vulkan"]["settings"]
    assert (settings["subgroup_size"], settings["path"]) == (subgroup, "wide"), settings
    counts = doc["counts"]  # every case computed right, or refused by name (head dim 640, rows of 80)
    assert counts["passed"] > 0 and counts["passed"] + counts["not_supported"] == len(doc["tests"]), counts


def test_device_that_misreports_its_subgroup_size_gets_the_baseline_path(dev):
    """Lavapipe at LP_NATIVE_VECTOR_WIDTH=1024 reports subgroups of 32 but runs smaller ones:
    a wide kernel compiled for 32 lanes then broadcasts from lanes that do not exist (every
    logit wrong). The device's probe sees it and refuses the wide path, with the reason."""
    import os
    import subprocess
    import sys

    _lavapipe(dev)
    code = "from g4c.runtimes.vulkan.device import Device; d = Device(); print(d.subgroup_size, d.wide, d.wide_reason)"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LP_NATIVE_VECTOR_WIDTH": "1024"},
                          capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    size, wide, reason = proc.stdout.strip().split(" ", 2)
    assert (size, wide) == ("32", "False") and "broadcast from its lanes fails" in reason, proc.stdout
