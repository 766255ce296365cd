"""Fuzzing the model layer with mutated GGUF files (hypothesis).

Each case mutates the micro fixture (truncation, flipped bytes, extreme integers written
over counts, lengths, types and offsets, spliced ranges), then loads it and, if it loads,
runs a CPU prefill. The only failures allowed are the suite's own errors (G4CError);
anything else, a hang past the per-case alarm, or a crash is a defect. CI runs
G4C_FUZZ_EXAMPLES (default 2000); `nox -s fuzz` runs more. Fixed cases follow: lengths and
counts far past the end of the file, and paths that are not regular files.
"""

import os
import signal
import struct
import subprocess
import sys
import textwrap

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


def _patch_u64(data: bytes, key: bytes, skip: int, value: int) -> bytes:
    """data with the u64 that sits `skip` bytes after key's name set to value."""
    at = data.index(key) + len(key) + skip
    return data[:at] + value.to_bytes(8, "little") + data[at + 8:]


def _one_key_file(value: bytes) -> bytes:
    """A GGUF of one key/value, test.nested, of value type ARRAY (value: its bytes), and no tensors."""
    key = b"test.nested"
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<I", 9) + value


ARRAY_OF = struct.Struct("<IQ")  # an array's element type and count
FIXED_CASES = {
    # skip: past the value type (4), or past the value type, element type and count (16) of an array
    "string-value-length": (lambda micro: _patch_u64(micro, b"general.architecture", 4, 10**9),
                            "key 'general.architecture': string at byte 64 needs 1000000000 bytes"),
    "string-length-in-array": (lambda micro: _patch_u64(micro, b"tokenizer.ggml.tokens", 16, 10**9),
                               "key 'tokenizer.ggml.tokens'[0]: string at byte"),
    "nested-array-count": (lambda micro: _one_key_file(ARRAY_OF.pack(9, 10**9)),
                           "key 'test.nested': 1000000000 arrays at byte 59 needs 12000000000 bytes; 0 are left"),
    "nested-inner-count": (lambda micro: _one_key_file(ARRAY_OF.pack(9, 1) + ARRAY_OF.pack(4, 10**9)),
                           "key 'test.nested'[0]: 1000000000 array entries at byte 71 needs 4000000000 bytes"),
    # deep enough to exhaust Python's recursion in a walk without a depth limit
    "nested-100000-deep": (lambda micro: _one_key_file(ARRAY_OF.pack(9, 1) * 100_000 + ARRAY_OF.pack(4, 0)),
                           "key 'test.nested'[0][0][0][0][0][0][0]: arrays nested more than 8 deep"),
}


@pytest.mark.parametrize("case", FIXED_CASES)
def test_fixed_case_refused(micro, tmp_path, case):
    """Each length or count past the end of the file: one line naming the key and the figures."""
    build, needle = FIXED_CASES[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(build(micro))
    with pytest.raises(G4CError) as e:
        Model(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}: {needle}"), message


def _fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no os.mkfifo on this platform")
    os.mkfifo(tmp_path / "fifo")
    return tmp_path / "fifo"


@pytest.mark.parametrize("make,needle", [
    (lambda tmp_path: tmp_path, "is a directory, not a GGUF file"),
    (lambda tmp_path: "/dev/zero", "is not a regular file (character device)"),
    (lambda tmp_path: "/dev/null", "is not a regular file (character device)"),
    (_fifo, "is not a regular file (FIFO)"),
], ids=["directory", "dev-zero", "dev-null", "fifo"])
def test_not_a_regular_file(tmp_path, make, needle):
    """Refused from os.stat alone: opening a FIFO blocks for a writer and /dev/zero never ends,
    so the alarm stops a case that opens one."""
    path = make(tmp_path)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        with pytest.raises(G4CError) as e:
            Model(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert str(e.value) == f"{path} {needle}"


def test_oversized_string_array_bounded(micro, tmp_path):
    """The tester's file: the fixture cut after its token strings, the token count set to 10^9,
    zeros to 4 MiB. Refused in a fresh interpreter in under 5 s and 200 MB above its baseline;
    gguf's reader alone reads the zeros as 500000 empty strings, a view each (841 MB, 22 s)."""
    key = b"tokenizer.ggml.tokens"
    count_at = micro.index(key) + len(key) + 8  # past the name, the value type and the element type
    end = count_at + 8
    for _ in range(int.from_bytes(micro[count_at:end], "little")):
        end += 8 + int.from_bytes(micro[end:end + 8], "little")
    data = micro[:count_at] + (10**9).to_bytes(8, "little") + micro[count_at + 8:end]
    path = tmp_path / "big-array.gguf"
    path.write_bytes(data + bytes(4 * 2**20 - len(data)))
    probe = textwrap.dedent(f"""
        import resource, time
        from g4c.errors import G4CError
        from g4c.model import Model
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            Model({str(path)!r})
        except G4CError as e:
            print(e)
        print(time.perf_counter() - start)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    error, seconds, extra_kb = out.stdout.splitlines()
    print(f"oversized string array: refused in {float(seconds) * 1000:.1f} ms, {int(extra_kb) / 1024:.1f} MB above baseline")
    assert float(seconds) < 5 and int(extra_kb) < 200 * 1024, f"{seconds} s, {extra_kb} KB: {error}"
    assert error.startswith(f"{path}: key 'tokenizer.ggml.tokens': 1000000000 strings at byte"), error
