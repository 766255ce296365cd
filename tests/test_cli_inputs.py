"""Bad command-line input ends in one error line that names the argument and the value, with
exit code 2 and no traceback; a reader that closes g4c's output early ends it quietly."""

import os
import subprocess
import sys

import pytest

from g4c import fixtures
from g4c.cli import _ids, main
from g4c.errors import G4CError
from g4c.plan import parse_bytes


def g4c(capsys, *args) -> tuple[int, str]:
    """Exit code and stderr of g4c in this process (argparse errors exit through SystemExit)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def error_line(code: int, err: str) -> str:
    """The last line of stderr, once the run is known to have failed as bad input does."""
    assert code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_parse_bytes_requires_a_unit_and_a_positive_size():
    assert parse_bytes("12GiB") == 12 << 30 and parse_bytes("512B") == 512 and parse_bytes(" 1.5 MiB") == 3 << 19
    assert parse_bytes("80gb") == 80 * 10**9 and parse_bytes(".5KiB") == 512
    for text in ("12", "1.2.3GiB", "-1GiB", "12XB", "1e3GB", "GiB", ""):
        with pytest.raises(G4CError, match=f"cannot read a memory size from {text!r}: write a number and a unit"):
            parse_bytes(text)
    for text in ("0GiB", "0.1B", "9" * 400 + "TB"):
        with pytest.raises(G4CError, match="is not between 1 byte and 16 EiB"):
            parse_bytes(text)


@pytest.mark.parametrize("memory, says", [
    ("1.2.3GiB", "cannot read a memory size from '1.2.3GiB'"),
    ("12", "cannot read a memory size from '12': write a number and a unit"),
    ("0GiB", "memory size '0GiB' is not between 1 byte and 16 EiB"),
    ("-4GiB", "cannot read a memory size from '-4GiB'"),
])
def test_plan_memory_names_the_argument_and_value(capsys, memory, says):
    line = error_line(*g4c(capsys, "plan", "model.gguf", f"--memory={memory}"))
    assert line.startswith(f"g4c plan: error: argument --memory: {says}"), line


@pytest.mark.parametrize("args, argument, value", [
    (("generate", "m.gguf", "--tokens", "2", "-n", "0"), "-n", "0"),
    (("generate", "m.gguf", "--tokens", "2", "-n=-5"), "-n", "-5"),
    (("generate", "m.gguf", "--tokens", "2", "--max-context", "0"), "--max-context", "0"),
    (("golden", "m.gguf", "--tokens", "2", "--out", "g.json", "-n", "0"), "-n", "0"),
    (("plan", "m.gguf", "--memory", "1GiB", "--n-seq", "0"), "--n-seq", "0"),
    (("plan", "m.gguf", "--memory", "1GiB", "--context", "4096", "--context=-1"), "--context", "-1"),
])
def test_counts_must_be_at_least_one(capsys, args, argument, value):
    line = error_line(*g4c(capsys, *args))
    assert line == f"g4c {args[0]}: error: argument {argument}: must be 1 or more, got {value}", line


def test_counts_must_be_whole_numbers(capsys):
    line = error_line(*g4c(capsys, "generate", "m.gguf", "--tokens", "2", "-n", "2.5"))
    assert line == "g4c generate: error: argument -n: not a whole number: '2.5'", line


@pytest.fixture(scope="module")
def tiny():
    return fixtures.ensure("tiny")


@pytest.mark.parametrize("tokens, says", [
    ("1,,2", "--tokens '1,,2': item 2 is empty"),
    ("1,2,", "--tokens '1,2,': item 3 is empty"),
    ("", "--tokens is empty: give comma-separated token ids, e.g. 2,105"),
    (" ", "--tokens is empty"),
    ("99999999999999999999", "--tokens: item 1, '99999999999999999999', is no token id of this model (0 to 511)"),
    ("2,-1", "--tokens: item 2, '-1', is no token id of this model (0 to 511)"),
    ("2,512", "--tokens: item 2, '512', is no token id of this model (0 to 511)"),
    ("2,x", "--tokens: item 2, 'x', is no token id"),
    ("2,1_0", "--tokens: item 2, '1_0', is no token id"),
    pytest.param("9" * 5000, "--tokens: item 1, '9999", id="5000-digits"),  # beyond int()'s digit limit
])
def test_generate_tokens_name_the_bad_item(capsys, tiny, tokens, says):
    line = error_line(*g4c(capsys, "generate", tiny, f"--tokens={tokens}", "-n", "1"))
    assert line.startswith(f"g4c generate: error: {says}"), line


def test_golden_checks_tokens_before_llamacpp(capsys, tiny, tmp_path):
    line = error_line(*g4c(capsys, "golden", tiny, "--tokens", "1,,2", "--out", tmp_path / "g.json"))
    assert line == "g4c golden: error: --tokens '1,,2': item 2 is empty"


def test_token_ids_up_to_the_vocabulary():
    assert _ids(" 0, 7 ,511", 512) == [0, 7, 511]
    with pytest.raises(G4CError, match="item 1, '512', is no token id of this model"):
        _ids("512", 512)


def test_closed_stdout_ends_quietly():
    """`g4c runtimes | head -1`: here the reader is gone before g4c writes anything, so every
    write fails as it does once head has read its line."""
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, "-m", "g4c.cli", "runtimes"], stdout=write, stderr=subprocess.PIPE,
                           text=True, timeout=300)
    finally:
        os.close(write)
    assert (r.returncode, r.stderr) == (141, "")
