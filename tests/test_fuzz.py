"""Fuzzing the model layer with mutated GGUF files (hypothesis).

Each case mutates the micro fixture (truncation, flipped bytes, extreme integers written
over counts, lengths, types and offsets, spliced ranges), then loads it and, if it loads,
runs a CPU prefill. The only failures allowed are the suite's own errors (G4CError);
anything else, a hang past the per-case alarm, or a crash is a defect. CI runs
G4C_FUZZ_EXAMPLES (default 2000); `nox -s fuzz` runs more.
"""

import os
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from g4c import fixtures
from g4c.errors import G4CError, InputError
from g4c.model import Model
from g4c.runtimes.cpu import CpuRuntime

EXAMPLES = int(os.environ.get("G4C_FUZZ_EXAMPLES", "2000"))
CASE_SECONDS = 20
EXTREMES = [0, 1, 2, 3, 7, 255, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**62, 2**63 - 1, 2**64 - 1]
OUTCOMES = {"loaded": 0, "refused": 0}


@pytest.fixture(scope="module")
def micro():
    path = fixtures.ensure("micro")
    return path.read_bytes()


def _mutate(data: bytes, draw) -> bytes:
    buf = bytearray(data)
    # most structure sits in the first few KB (header, keys, tensor infos); aim there half the time
    header = min(len(buf), 8192)
    where = lambda: draw(st.one_of(st.integers(0, header - 1), st.integers(0, len(buf) - 1)))  # noqa: E731
    kind = draw(st.sampled_from(["truncate", "flip", "int64", "int32", "splice", "zero_run"]))
    if kind == "truncate":
        return bytes(buf[: draw(st.integers(0, len(buf) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        at = where()
        if kind == "flip":
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif kind in ("int64", "int32"):
            width = 8 if kind == "int64" else 4
            value = draw(st.sampled_from(EXTREMES)) % (1 << (8 * width))
            buf[at:at + width] = value.to_bytes(width, "little")[: len(buf) - at]
        elif kind == "splice":
            src, n = where(), draw(st.integers(1, 64))
            buf[at:at + n] = buf[src:src + n]
        else:
            buf[at:at + draw(st.integers(1, 256))] = bytes(min(256, len(buf) - at))
    return bytes(buf)


def _alarm(signum, frame):
    raise TimeoutError(f"a mutated file took more than {CASE_SECONDS} s: a hang")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_micro_file(micro, tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz.gguf"
    path.write_bytes(_mutate(micro, data.draw))
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        with np.errstate(all="ignore"):  # mutated weights may well be NaN: that is not an error
            model = Model(path)
            sess = CpuRuntime().load(model, 16)
            sess.prefill([1, 2, 3])
        OUTCOMES["loaded"] += 1
    except InputError as e:  # e.g. a mutated vocab_size smaller than the prompt's ids
        assert "\n" not in str(e) and "token id" in str(e), str(e)
        OUTCOMES["refused"] += 1
    except G4CError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path)), f"unclear error: {e}"
        OUTCOMES["refused"] += 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_fuzz_counts_reported():
    """Prints how many mutated files loaded and how many were refused with our error."""
    total = OUTCOMES["loaded"] + OUTCOMES["refused"]
    print(f"fuzz: {total} cases, {OUTCOMES['refused']} refused with a G4CError, {OUTCOMES['loaded']} loaded and ran")
    assert total >= min(EXAMPLES, 100), "the fuzz test did not run"
