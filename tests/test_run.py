"""g4c run as a user and a CI job meet it: exit codes, a results file that says whether the
run got to its end, progress, nothing else left in the working directory."""

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time

import pytest

QUICK = ("--runtime", "cpu", "--", "--case", "test_inputs")  # 4 tests, about a second
RESULTS = "conformance-results.json"


def g4c_run(*args, cwd, plugin_dir=None, **popen):
    """g4c run in a subprocess in cwd; plugin_dir goes on PYTHONPATH for `-- -p NAME` plugins."""
    env = {k: v for k, v in os.environ.items() if k != "G4C_PROGRESS"}
    if plugin_dir:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_dir), env.get("PYTHONPATH")]))
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "g4c.cli", "run", *map(str, args)], cwd=cwd, env=env, text=True, **popen)


def finished(p, timeout=300):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ordinary passing run in an empty directory, stdout and stderr not terminals."""
    cwd = tmp_path_factory.mktemp("quick")
    code, out, err = finished(g4c_run(*QUICK, cwd=cwd))
    return cwd, code, out, err


def test_ordinary_run_exits_0_and_says_it_ran_everything(quick_run):
    cwd, code, out, err = quick_run
    assert code == 0, out[-2000:] + err
    doc = json.loads((cwd / RESULTS).read_text())
    assert (doc["format"], doc["collected"], doc["not_run"], doc["interrupted"]) == (3, 4, 0, None)
    assert "INTERRUPTED" not in out


def test_run_leaves_only_its_results_file(quick_run):
    cwd, code, out, err = quick_run
    assert sorted(os.listdir(cwd)) == [RESULTS]


def test_progress_lines_when_not_a_terminal(quick_run):
    """One plain line per finished test module on stderr, in place of pytest's dots."""
    cwd, code, out, err = quick_run
    lines = err.splitlines()
    # a loaded machine may take 30 s and add a line "...; running <test>"
    assert lines and all(re.match(r"\[\d+:\d\d\] cpu \d/4; ", line) for line in lines), err
    assert lines[-1].endswith("cpu 4/4; test_inputs finished"), err
    assert "...." not in out


def test_progress_status_line_on_a_terminal(tmp_path):
    """On a terminal: one line rewritten in place with the current test, cleared at the end."""
    master, slave = pty.openpty()
    with open(tmp_path / "stdout", "w") as stdout:
        p = g4c_run(*QUICK, cwd=tmp_path, stdout=stdout, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert p.wait(timeout=300) == 0
    text = seen.decode()
    assert "\n" not in text, text  # nothing but the rewritten line went to the terminal
    assert re.search(r"\r\[0:\d\d\] cpu 0/4 \| test_inputs.py::test_bad_tokens_then_usable\[cpu-too-big\]\x1b\[K", text), text
    assert "cpu 4/4 | test_inputs.py::test_context_overflow[cpu]" in text and text.endswith("\r\x1b[K"), text
    assert "...." not in (tmp_path / "stdout").read_text()


STOP_AT_SECOND_TEST = '''
import os, pathlib, time

_calls = 0


def pytest_runtest_call(item):
    global _calls
    _calls += 1
    if _calls == 2:  # mid-test: tell the parent to signal, then wait for it
        pathlib.Path(os.environ["G4C_TEST_MARK"]).touch()
        time.sleep(120)
'''


@pytest.mark.parametrize("sig,code,why", [(signal.SIGINT, 130, "KeyboardInterrupt"), (signal.SIGTERM, 143, "SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_mid_test_leaves_results_marked_interrupted(tmp_path, sig, code, why, monkeypatch):
    (tmp_path / "stop_at_second_test.py").write_text(STOP_AT_SECOND_TEST)
    mark = tmp_path / "second-test-started"
    monkeypatch.setenv("G4C_TEST_MARK", str(mark))
    p = g4c_run(*QUICK, "-p", "stop_at_second_test", cwd=tmp_path, plugin_dir=tmp_path)
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert p.poll() is None and time.monotonic() < deadline, "the second test never started"
        time.sleep(0.05)
    p.send_signal(sig)
    rc, out, err = finished(p)
    assert rc == code, out[-2000:] + err
    doc = json.loads((tmp_path / RESULTS).read_text())
    assert doc["interrupted"].startswith(f"{why} after "), doc["interrupted"]
    assert (doc["collected"], doc["not_run"], doc["counts"]["passed"]) == (4, 3, 1)
    assert "INTERRUPTED: 3 of 4 tests not run" in out


BREAK_TEST_HEADER = '''
import pytest


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    if collector.name == "test_header.py":  # as if the module failed to import
        report.outcome, report.longrepr = "failed", "broken on purpose"
    return report
'''


def test_collection_error_exits_3_with_nothing_run(tmp_path):
    (tmp_path / "break_test_header.py").write_text(BREAK_TEST_HEADER)
    rc, out, err = finished(g4c_run(*QUICK, "-p", "break_test_header", cwd=tmp_path, plugin_dir=tmp_path))
    assert rc == 3, out[-2000:] + err
    doc = json.loads((tmp_path / RESULTS).read_text())
    assert doc["interrupted"].startswith("1 error during collection after "), doc["interrupted"]
    assert (doc["collected"], doc["not_run"]) == (4, 4)


def test_pytest_usage_error_exits_2_and_writes_no_results(tmp_path):
    rc, out, err = finished(g4c_run("--runtime", "cpu", "--", "--case", "test_no_such_thing", cwd=tmp_path))
    assert rc == 2, out[-2000:] + err
    assert "--case test_no_such_thing matches no conformance test" in err
    assert not (tmp_path / RESULTS).exists()


@pytest.mark.parametrize("arg,value,needle", [
    ("--model", "missing.gguf", "missing.gguf: no such file"),
    ("--model", ".", ".: not a regular file"),
    ("--model", "not.gguf", "not.gguf: not a GGUF file"),
    ("--json", "no/such/dir/r.json", "no/such/dir/r.json: directory"),
], ids=["model-missing", "model-directory", "model-not-gguf", "json-no-directory"])
def test_bad_input_is_one_line_before_pytest_starts(tmp_path, arg, value, needle):
    (tmp_path / "not.gguf").write_text("not a GGUF, but long enough for its header" * 2)
    rc, out, err = finished(g4c_run(arg, value, *QUICK, cwd=tmp_path))
    assert rc == 2, out[-2000:] + err
    assert err.startswith(f"g4c run: error: {arg} ") and needle in err and len(err.strip().splitlines()) == 1, err
    assert "runtime cuda" not in out and "passed" not in out  # nothing ran: not even the runtime list


def test_help_lists_exit_codes():
    rc, out, err = finished(g4c_run("--help", cwd=None))
    assert rc == 0
    assert all(f"\n  {c} " in out for c in (0, 1, 2, 3, 130)) and "143 by SIGTERM" in out, out
