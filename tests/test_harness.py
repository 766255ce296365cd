"""The conformance harness's own rules: a runtime asked for explicitly fails (never skips)
when it is unavailable or when nothing passed; absent runtimes skip with their reason."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE = """
import sys, pytest
import g4c.runtime as r
from g4c.runtimes.cpu import CpuRuntime
class Absent:
    name = "absent"
    def availability(self): return r.Availability(False, "no such device here")
    def load(self, *a, **k): raise AssertionError("must not be loaded")
r.discover = lambda: {"absent": Absent(), "cpu": CpuRuntime()}
sys.exit(pytest.main(sys.argv[1:]))
"""


def pytest_run(*args, fake=False):
    cmd = [sys.executable, "-c", FAKE] if fake else [sys.executable, "-m", "pytest"]
    return subprocess.run(cmd + ["conformance", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_explicit_runtime_with_nothing_run_fails():
    r = pytest_run("--runtime", "cpu", "-k", "no_such_test_name")
    assert r.returncode == 1, r.stdout[-1500:]
    assert "no conformance test of theirs passed" in r.stdout


def test_explicit_runtime_passing_only_model_checks_fails():
    """test_schema_keys takes no runtime: its pass says nothing of the runtime asked for."""
    r = pytest_run("--runtime", "cpu", "-k", "test_schema_keys")
    assert r.returncode == 1 and "runtime(s) cpu asked for explicitly but no conformance test of theirs passed" in r.stdout, \
        r.stdout[-1500:]


def test_case_matching_nothing_is_usage_error():
    r = pytest_run("--runtime", "cpu", "--case", "test_windw", "--collect-only")
    assert r.returncode == 4 and "--case test_windw matches no conformance test" in r.stderr, r.stderr[-1500:]


def test_unknown_runtime_is_usage_error():
    r = pytest_run("--runtime", "nosuch")
    assert r.returncode == 4 and "unknown runtime(s) nosuch" in r.stderr


def test_explicit_unavailable_runtime_fails():
    r = pytest_run("--runtime", "absent", fake=True)
    assert r.returncode == 4 and "no such device here" in r.stderr, r.stderr[-1500:]


def test_absent_runtime_skips_with_reason_by_default():
    r = pytest_run("-k", "test_dense_logits", "-rs", fake=True)
    assert r.returncode == 0, r.stdout[-1500:]
    assert "4 passed, 4 skipped" in r.stdout and "runtime absent unavailable: no such device here" in r.stdout
