"""Each deliberately broken CPU variant fails the conformance tests meant to catch it.

The suite runs in a subprocess with --fault NAME, limited to the tests in the fault's
`caught_by` expression; an exit code of 1 with at least one failure proves the catch.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.faults import FAULTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_is_caught(name):
    fault = FAULTS[name]
    cmd = [sys.executable, "-m", "pytest", "conformance", "--runtime", "cpu", "--fault", name,
           "-k", fault.caught_by, "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy(), timeout=900)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    failed = re.search(r"(\d+) failed", proc.stdout)
    assert proc.returncode == 1 and failed, f"fault {name} ({fault.what}) was not caught:\n{tail}"


def test_without_fault_same_tests_pass():
    expr = " or ".join(sorted({f.caught_by for f in FAULTS.values()}))
    cmd = [sys.executable, "-m", "pytest", "conformance", "--runtime", "cpu", "-k", expr, "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
