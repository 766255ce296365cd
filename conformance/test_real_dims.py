"""The real dims: every runtime on the `12b` preset (3840 wide, FFN 15360, a 262144-row Q6_K
tied head, 48 layers of Q4_0) against the float64 reference's committed goldens
(fixtures/golden/12b-q4_0.json, written by python -m g4c.fixtures.golden12b).

Off by default (a 7 GB fixture, minutes per runtime): G4C_REAL_DIMS=1 runs it
(`nox -s real-dims`). Without the fixture on disk the test generates it (about 40 s and
6.5 GiB of disk on 2 cores), and refuses to compare against a file whose sha256 is not the
golden's. A runtime whose memory plan does not fit this machine, or a disk short of room
for the fixture, is a skip naming the figures, never a pass.

The goldens hold, for a 5-token prompt at start positions 0 and 131072, each row's top-32
logits, the logits at 64 fixed random ids and statistics of the whole row. The runtime's
logits at those ids are held to the runtime's tolerance (g4c.tolerance) as the tiny presets'
are against whole rows: NMSE over the compared entries (the 64 random ids are a uniform
sample of the row, so this estimates the row's NMSE; the top-32 weigh the largest logits
in), max |dlogit| on every compared entry, and through the whole-row statistics the rest of
the row: logsumexp and max |logit| move by at most max |dlogit| (both are 1-Lipschitz in the
max norm), and rms(got) - rms(ref) is at most rms(got - ref) = sqrt(NMSE) x rms(ref).
At both starts the allowance for f32 RoPE angles is the measured one (as test_rope's): the
goldens record how far the f32-angle references (transformers' and llama.cpp's way) sit from
exact angles; twice their max |dlogit| is added to the max |dlogit| limit, four times their
NMSE on the compared entries to the NMSE limit (2x in rms).

test_real_dims_fixture requires the fixture's logits to depend on the input
(golden_row_spread, the largest change of a sampled logit between golden rows, at least
MIN_ROW_SPREAD). Generator version 3 gave 3e-6: its random blocks' codes averaged -0.5
steps, every matrix carried an all-ones component, the residual stream collapsed onto it
over 48 layers, and --fault inv-sqrt-d-scale passed here (max |dlogit| 2.8e-6). Version 4
gives each block's scale a random sign (g4c.quants.random_blocks): spread 4.24, and that
fault fails by 4.15 at start 0 (rope-interleaved by 6.05). At start 131072 the f32-angle
allowance is 2.5 (f32 angles sit 1.27 from exact ones there), so that start checks
position and cache indexing at the real dims more than it checks RoPE's accuracy.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from g4c.fixtures import generate, golden12b
from g4c.fixtures.golden import sha256
from g4c.model import Model
from g4c.plan import GIB, available_host_memory, check_fits
from g4c.runtime import capabilities, has_method

from g4c.conformance.harness import reads_type, release_memory, resources_or_skip

ENABLED = os.environ.get("G4C_REAL_DIMS") == "1"
pytestmark = [
    pytest.mark.real_dims,
    pytest.mark.skipif(not ENABLED, reason="the 12b preset (7 GB fixture, minutes per runtime) runs only with "
                                           "G4C_REAL_DIMS=1 (nox -s real-dims)"),
]

# a logit moves by at least this much between golden rows, or the fixture is blind to its input
# (a bug in attention or RoPE, the input's only paths to the logits, moved version 3's by 3e-6)
MIN_ROW_SPREAD = 0.5

# the long start first: its session (max_context 131077) then serves start 0 too
STARTS = sorted(golden12b.STARTS, reverse=True)


@pytest.fixture(scope="module")
def golden():
    return golden12b.load()


@pytest.fixture(scope="module")
def real12b(golden):
    """(Model of the 12b preset, seconds spent generating it or None if it was on disk);
    generated when absent, refused when it is not the file the goldens were made from."""
    fx = golden["fixture"]
    p, qt = generate.resolve(fx["preset"], fx["type"])
    path = generate.cache_dir() / f"{generate.fixture_id(p, qt, fx['seed'])}.gguf"  # where ensure() keeps it
    generated_s = None
    if not path.exists():
        t = time.perf_counter()
        with resources_or_skip():  # the cache's disk short of the file's bytes: a skip with the figures
            path = generate.ensure(fx["preset"], fx["type"], fx["seed"], progress=True)
        generated_s = time.perf_counter() - t
    if path.name != fx["file"] or sha256(path) != fx["sha256"]:
        pytest.fail(f"{path} is not the file the 12b goldens were made from ({fx['file']}, sha256 "
                    f"{fx['sha256'][:12]}...): the generator changed; regenerate with python -m g4c.fixtures.golden12b")
    yield Model(path), generated_s
    _drop_session()


def test_real_dims_fixture(real12b, golden, metric):
    """The fixture is the goldens' file (checked by real12b); records what it took and how
    much its logits depend on the input: the largest change of a sampled logit from one
    golden row to another (other position, other start) and the f32-angle deviation, the
    scale of what the logits comparison can see of attention and RoPE."""
    model, generated_s = real12b
    c = model.config
    assert (c.n_embd, c.n_layer, model.n_vocab) == (3840, 48, 262144), "the 12b preset lost its real dims"
    metric("fixture_bytes", golden["fixture"]["bytes"])
    if generated_s is not None:
        metric("fixture_generated_s", round(generated_s, 1))
    rows = np.array([r["sample_logits"] for s in golden["starts"] for r in s["rows"]])
    spread = float(np.abs(rows - rows[0]).max())
    metric("golden_row_spread", spread)
    metric("f32_angle_deviation", max(d["max_abs"] for s in golden["starts"] for d in s["f32_angles"].values()))
    assert spread >= MIN_ROW_SPREAD, (f"the 12b fixture's logits hardly depend on the input (spread {spread:.3g} < "
                                      f"{MIN_ROW_SPREAD}): a test on it cannot see attention or RoPE bugs")


@pytest.mark.parametrize("start", STARTS)
def test_real_dims_logits(runtime, tol, metric, real12b, golden, start):
    """Prefill of the golden prompt at `start`: logits at the golden ids, whole-row
    statistics and top-1 against the float64 reference's."""
    model, _ = real12b
    for qtype in sorted({w.qtype.name for w in [*model.layer_matrices(), model.output_weight]}):
        reads_type(runtime, qtype)
    _not_emulated(runtime, model)
    prompt, gold = golden["prompt"], next(s for s in golden["starts"] if s["start"] == start)
    sess, load_s = _session(runtime, model, start + len(prompt))
    if load_s is not None:
        metric("load_s", round(load_s, 1))
    sess.reset()
    t = time.perf_counter()
    got = np.asarray(sess.prefill(prompt, start), np.float64)
    metric("prefill_s", round(time.perf_counter() - t, 1))
    where = f"{runtime.name}, 12b preset, positions {start}..{start + len(prompt) - 1}"
    if not np.isfinite(got).all():
        row, col = np.argwhere(~np.isfinite(got))[0]
        pytest.fail(f"{where}: non-finite logit {got[row, col]} at position {start + row} token {col}")

    # the tolerance of the tiny presets' whole-row comparisons (g4c.tolerance), plus the
    # measured f32-angle allowance: 2x its max |dlogit|, 4x its NMSE (2x in rms)
    max_abs_limit, nmse_limit, allowance = golden12b.limits(tol, model.config, gold)
    metric("max_abs_limit", max_abs_limit)
    metric("nmse_limit", nmse_limit)
    metric("f32_angle_allowance", allowance)
    limits = f"limits NMSE {nmse_limit:.3g}, max|dlogit| {max_abs_limit:.3g} ({tol.precision}: {tol.why})"
    _check_golden_ids(got, gold, golden["sample_ids"], max_abs_limit, nmse_limit, where, limits, metric)
    _check_row_stats(got, gold, max_abs_limit, nmse_limit, where, limits, metric)
    _check_top1(got, gold, max_abs_limit, where, metric)


def _check_golden_ids(got, gold, sample, max_abs_limit, nmse_limit, where, limits, metric) -> None:
    """NMSE and max |dlogit| over every logit the golden holds."""
    c = golden12b.compare(got, gold, sample)
    err, max_abs = c["nmse"], c["max_abs"]
    metric("max_abs_dlogit", max_abs)
    metric("nmse", err)
    metric("compared_entries", c["entries"])
    assert err <= nmse_limit and max_abs <= max_abs_limit, (
        f"{where}: max|dlogit| {max_abs:.3g} at position {c['position']} token {c['token']} "
        f"({c['got']:.6g} vs reference {c['ref']:.6g}), NMSE {err:.3g} over {c['entries']} golden entries; "
        f"{limits}")


def _check_row_stats(got, gold, max_abs_limit, nmse_limit, where, limits, metric) -> None:
    """The rest of each row, through the statistics of the whole row."""
    worst = 0.0
    for g, r in zip(got, gold["rows"]):
        m = float(g.max())
        stats = {"logsumexp": (m + float(np.log(np.exp(g - m).sum())), r["logsumexp"], max_abs_limit),
                 "max |logit|": (float(np.abs(g).max()), r["max_abs"], max_abs_limit),
                 "rms": (float(np.sqrt(np.mean(g * g))), r["rms"], np.sqrt(nmse_limit) * r["rms"])}
        for name, (have, want, limit) in stats.items():
            worst = max(worst, abs(have - want) / limit)
            assert abs(have - want) <= limit, (
                f"{where}: whole-row {name} at position {r['position']} is {have:.6g}, the reference's {want:.6g}: "
                f"off by {abs(have - want):.3g} > {limit:.3g}, so logits outside the golden ids moved; {limits}")
    metric("row_stats_worst_fraction_of_limit", worst)


def _check_top1(got, gold, max_abs_limit, where, metric) -> None:
    """The runtime's top-1 is the reference's, unless the reference puts the two within 2x the
    max |dlogit| limit of each other (a near tie a correct runtime may break either way)."""
    agree = ties = 0
    for g, r in zip(got, gold["rows"]):
        top, want, ids, vals = int(np.argmax(g)), r["top_k_ids"][0], r["top_k_ids"], r["top_k_logits"]
        if top == want:
            agree += 1
            continue
        gap = vals[0] - (vals[ids.index(top)] if top in ids else vals[-1])
        assert gap <= 2 * max_abs_limit, (
            f"{where}: top-1 at position {r['position']} is {top}, the reference's is {want} "
            f"({'reference gap' if top in ids else 'not in its top-32: reference gap at least'} {gap:.3g} "
            f"> 2 x {max_abs_limit:.3g})")
        ties += 1
    metric("top1_agreement", agree / len(gold["rows"]))
    metric("top1_near_ties", ties)


def _not_emulated(runtime, model) -> None:
    """A runtime that runs only when named (capabilities.explicit_only: the CUDA emulator,
    correct but far too slow for every run) is skipped here unless G4C_REAL_DIMS_EMULATED=1.
    Its kernels run as CPU fibers: on 2 cores cuda-emu takes 46 s for a 5-token prefill of the
    92 MiB schema preset, so about an hour for each of the 12b's (scaled by weight bytes)."""
    if capabilities(runtime).explicit_only and os.environ.get("G4C_REAL_DIMS_EMULATED") != "1":
        pytest.skip(f"runtime {runtime.name} is declared explicit_only (an emulator, too slow for every run): a 12b "
                    f"prefill streams {model.weight_bytes / GIB:.2f} GiB of weights through its emulated kernels, "
                    "about an hour on 2 cores; G4C_REAL_DIMS_EMULATED=1 runs it anyway")


# one loaded 12b session at a time (a device runtime holds 6.5 GiB of weights): kept across
# the two starts of a runtime, dropped when another runtime asks
_held: dict = {}


def _drop_session() -> None:
    _held.clear()
    release_memory()


def _session(runtime, model, n_ctx: int):
    """(session of max_context >= n_ctx, seconds its load took or None if reused); a skip with
    the runtime's figures when its memory plan does not fit this machine."""
    held = _held.get("session")
    if held is not None and _held["runtime"] == runtime.name and held.max_context >= n_ctx:
        return held, None
    _drop_session()
    with resources_or_skip():
        if has_method(runtime, "memory_plan") and runtime.memory_plan(model, n_ctx, 1).where == "host":
            # checked here too, before load, for a runtime that plans host memory but does not
            # check it itself; a device's own memory is the runtime's to check, in load()
            check_fits(lambda n: runtime.memory_plan(model, n, 1), n_ctx, model.config.n_ctx_train,
                       available_host_memory(), f"12b preset on {runtime.name}")
        t = time.perf_counter()
        sess = runtime.load(model, n_ctx, 1)
    _held.update(session=sess, runtime=runtime.name)
    return sess, time.perf_counter() - t
