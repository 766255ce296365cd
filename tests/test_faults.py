"""Each deliberately broken CPU variant fails every conformance test named to catch it.

Per fault, the suite runs in a subprocess with --fault NAME on exactly the node ids of the
fault's `caught_by`, writing --results-json; every one of those ids must have failed. The
same ids, run without a fault, must all pass (else a failure would prove nothing).

With G4C_FAULTS_JSON=FILE the measured outcome of every fault and node id is written there
(the report's catch matrix; the format is in `_record`).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from g4c.conformance.faults import FAULTS, catalogue

ROOT = Path(__file__).resolve().parents[1]
_measured: dict = {}
_provenance = None  # g4c.provenance.record of the run, made with the first fault's record


def _run(ids, fault: str | None) -> tuple[dict, subprocess.CompletedProcess, float]:
    """Outcome per node id (the conformance results JSON's `tests`), the process, seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.json")
        cmd = [sys.executable, "-m", "pytest", *ids, "--runtime", "cpu", "-q", "-p", "no:cacheprovider",
               "-p", "no:randomly", "--results-json", out] + (["--fault", fault] if fault else [])
        t = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy(), timeout=900)
        seconds = time.monotonic() - t
        tests = json.load(open(out))["tests"] if os.path.exists(out) else {}
    return tests, proc, seconds


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_is_caught(name):
    fault = FAULTS[name]
    tests, proc, seconds = _run(fault.caught_by, name)
    outcomes = {nid: tests.get(nid, {}).get("outcome", "not run") for nid in fault.caught_by}
    _record(name, outcomes, tests, seconds)
    missed = {nid: o for nid, o in outcomes.items() if o != "failed"}
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert not missed, (f"fault {name} ({fault.what}) not caught by every named test; not failed: "
                        + ", ".join(f"{nid} ({o})" for nid, o in missed.items()) + f"\n{tail}")


def test_without_fault_same_tests_pass():
    ids = sorted({nid for f in FAULTS.values() for nid in f.caught_by})
    tests, proc, _ = _run(ids, None)
    not_passed = {nid: tests.get(nid, {}).get("outcome", "not run") for nid in ids
                  if tests.get(nid, {}).get("outcome") != "passed"}
    assert not not_passed and proc.returncode == 0, f"without a fault, not passed: {not_passed}\n{proc.stdout[-3000:]}"


def _record(name: str, outcomes: dict, tests: dict, seconds: float) -> None:
    """G4C_FAULTS_JSON: {"suite", "kind": "fault-catches", "format": 1, "created", "provenance",
    "faults": [{name, what, bug_class, caught_by,
    "seconds", "caught" (every named id failed), "outcomes": {node id: {"outcome",
    "message" (the failure's first 2000 characters), "metrics"}}}]}, in catalogue order,
    rewritten after each fault."""
    path = os.environ.get("G4C_FAULTS_JSON")
    if not path:
        return
    _measured[name] = {
        "seconds": round(seconds, 2),
        "caught": all(o == "failed" for o in outcomes.values()),
        "outcomes": {nid: {"outcome": o, "message": tests.get(nid, {}).get("message"),
                           "metrics": tests.get(nid, {}).get("metrics", {})} for nid, o in outcomes.items()},
    }
    global _provenance
    if _provenance is None:
        from g4c import provenance
        from g4c import runtime as registry

        _provenance = provenance.record(registry.select(["cpu"]))
    doc = {"suite": "gemma4-conformance", "kind": "fault-catches", "format": 1, "created": _provenance["created"],
           "provenance": _provenance, "faults": [{**f, **_measured[f["name"]]} for f in catalogue() if f["name"] in _measured]}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1, default=float)
    os.replace(tmp, path)
