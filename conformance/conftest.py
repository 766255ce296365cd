"""Conformance harness: every test here runs once per runtime.

    pytest conformance                      every registered runtime; absent ones skipped with the reason
    pytest conformance --runtime cpu        that runtime only; fails if it is unavailable, if nothing
                                            ran, or if every test skipped
    pytest conformance --fault NAME         a deliberately broken CPU variant (see faults.py)
    pytest conformance --results-json F     outcomes and metrics per test, for reports
    pytest conformance --case 'test_greedy_parity[qtype=Q4_0]'   only these cases (repeatable;
                                            g4c.cases: a module or test name, parameter values)

Five outcomes are kept apart: passed, failed, departure (the runtime declares, with the spec
section, why it departs from the reference there; a strict xfail), not_supported (the
runtime declares it lacks a feature) and skipped (device absent).

Every result names its runtime, test module, test function and parameters as fields, and
the file records where it came from (g4c.provenance: commit, date, packages, machine,
devices and drivers).
"""

from __future__ import annotations

import json
import os

import pytest

from g4c import provenance
from g4c import runtime as registry
from g4c import tolerance
from g4c.cases import Case
from g4c.errors import G4CError

from g4c.conformance.harness import NOT_SUPPORTED, available_or_skip

DEPARTURE = "departure:"
OUTCOMES = ("passed", "failed", "departure", "skipped", "not_supported")


# the options (--runtime, ...): g4c/pytest_options.py, a pytest11 entry point


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds on 2 cores")
    config.addinivalue_line("markers", "real_weights: the real Gemma 3 270M; several GB of float64 reference, run last")
    config.addinivalue_line("markers", "real_dims: the 12b preset against committed goldens; only with G4C_REAL_DIMS=1")
    asked = config.getoption("--runtime")
    try:
        config._g4c_runtimes = registry.select(asked)
    except G4CError as e:
        raise pytest.UsageError(str(e)) from None
    config._g4c_explicit = bool(asked)
    try:
        config._g4c_only = [Case.parse(c) for c in config.getoption("--case")]
    except G4CError as e:
        raise pytest.UsageError(str(e)) from None
    fault = config.getoption("--fault")
    if fault:
        from g4c.conformance import faults

        if fault not in faults.FAULTS:
            raise pytest.UsageError(f"unknown fault {fault!r} (known: {', '.join(faults.FAULTS)})")
        if set(config._g4c_runtimes) != {"cpu"}:
            raise pytest.UsageError("--fault patches the cpu runtime: use it with --runtime cpu")
        config._g4c_fault_mp = pytest.MonkeyPatch()
        faults.apply(fault, config._g4c_fault_mp)


def pytest_unconfigure(config):
    mp = getattr(config, "_g4c_fault_mp", None)
    if mp is not None:
        mp.undo()


def pytest_generate_tests(metafunc):
    if "runtime" in metafunc.fixturenames:
        names = list(metafunc.config._g4c_runtimes)
        metafunc.parametrize("runtime", names, indirect=True, ids=names)


def case_of(item) -> dict:
    """The structured name of a collected test: runtime (None for a test that takes none),
    module, test function, its other parameters, and a readable case id built from them."""
    params = dict(item.callspec.params) if hasattr(item, "callspec") else {}
    runtime = params.pop("runtime", None)
    module = item.module.__name__.rsplit(".", 1)[-1]
    params = {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for k, v in params.items()}
    return {"runtime": runtime, "module": module, "test": item.originalname, "params": params,
            "case": str(Case.of(item.originalname, **{k: str(v) for k, v in params.items()}))}


def pytest_collection_modifyitems(config, items):
    """Only the --case cases, if given; a runtime's declared departures (its capabilities)
    become strict xfails: the test still runs, a failure is recorded as a departure with the
    declared reason, and a pass fails the run (the declaration is stale)."""
    # the real-weight tests last: their float64 references take GBs the RoPE tests' load-time
    # memory check (15.5 GiB planned at context 262144 on the cpu runtime) must not lose
    items.sort(key=lambda it: it.get_closest_marker("real_weights") is not None)
    for item in items:
        _cases[item.nodeid] = case_of(item)
    if config._g4c_only:
        def wanted(item) -> bool:
            case = _cases[item.nodeid]
            return any(c.matches(case["module"], case["test"], case["params"]) for c in config._g4c_only)

        unmatched = [str(c) for c in config._g4c_only
                     if not any(c.matches(k["module"], k["test"], k["params"]) for k in map(_cases.get, (it.nodeid for it in items)))]
        if unmatched:  # a misspelt case would silently drop what it meant to run
            raise pytest.UsageError(f"--case {', '.join(unmatched)} matches no conformance test")
        config.hook.pytest_deselected(items=[it for it in items if not wanted(it)])
        items[:] = [it for it in items if wanted(it)]
    for item in items:
        case = _cases[item.nodeid]
        if case["runtime"] not in config._g4c_runtimes:
            continue
        caps = registry.capabilities(config._g4c_runtimes[case["runtime"]])
        dep = caps.departure(case["module"], case["test"], case["params"])
        if dep:
            item.add_marker(pytest.mark.xfail(reason=f"{DEPARTURE} {dep}", strict=True, raises=(AssertionError, G4CError)))


@pytest.fixture
def runtime(request):
    return available_or_skip(request.config._g4c_runtimes[request.param], request.param)


@pytest.fixture(scope="session")
def user_model(request):
    path = request.config.getoption("--model")
    if not path:
        pytest.skip("no --model given: the user-model checks run on a GGUF you point the suite at")
    from g4c.model import Model

    return Model(path)


@pytest.fixture
def tol(runtime):
    return tolerance.for_runtime(runtime)


@pytest.fixture
def metric(request):
    """record(name, value): kept in the results JSON and printed in the summary."""

    def record(name, value):
        request.node.user_properties.append((name, value))

    return record


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if hasattr(report, "wasxfail") and report.outcome == "skipped":
            reason, outcome = report.wasxfail.removeprefix("reason: ").removeprefix(DEPARTURE).strip(), "departure"
        elif report.outcome == "skipped":
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            reason = reason.removeprefix("Skipped: ")
            outcome = "not_supported" if reason.startswith(NOT_SUPPORTED) else "skipped"
        else:
            reason, outcome = None, report.outcome
        entry = {**_cases.get(report.nodeid, {}), "outcome": outcome, "duration_s": round(report.duration, 3),
                 "metrics": {k: v for k, v in report.user_properties}}
        if reason:
            entry["reason"] = reason
        if report.failed:
            entry["message"] = str(report.longrepr.reprcrash.message if hasattr(report.longrepr, "reprcrash") else report.longrepr)[:2000]
        _results[report.nodeid] = entry


_results: dict = {}
_cases: dict = {}  # nodeid -> case_of(item), filled at collection
NO_RUNTIME = "(model checks)"  # counts_by_runtime's key for tests that take no runtime


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    counts = {k: sum(1 for r in _results.values() if r["outcome"] == k) for k in OUTCOMES}
    # a runtime asked for by name must pass something itself: model checks passing beside
    # its skipped tests prove nothing about it
    empty = [n for n in config._g4c_runtimes
             if not any(r.get("runtime") == n and r["outcome"] == "passed" for r in _results.values())]
    if config._g4c_explicit and exitstatus in (0, 5) and empty:
        session.exitstatus = 1
        config._g4c_empty = empty
    path = config.getoption("--results-json")
    if path:
        prov = provenance.record(config._g4c_runtimes)
        for name, rt in config._g4c_runtimes.items():
            prov["runtimes"][name]["precision"] = registry.capabilities(rt).precision
        by_runtime = {}
        for r in _results.values():
            c = by_runtime.setdefault(r.get("runtime") or NO_RUNTIME, dict.fromkeys(OUTCOMES, 0))
            c[r["outcome"]] += 1
        doc = {
            "suite": "gemma4-conformance",
            "format": 2,
            "created": prov["created"],
            "provenance": prov,
            "runtimes": prov["runtimes"],
            "fault": config.getoption("--fault"),
            "cases": [str(c) for c in config._g4c_only],
            "counts": counts,
            "counts_by_runtime": by_runtime,
            "tests": _results,
        }
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, default=float)
        os.replace(tmp, path)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = [(nodeid, r["metrics"]) for nodeid, r in _results.items() if r["metrics"]]
    if rows:
        terminalreporter.section("conformance metrics")
        for nodeid, metrics in rows:
            shown = ", ".join(_shown(k, v) for k, v in metrics.items())
            terminalreporter.write_line(f"{nodeid.split('::', 1)[-1]}: {shown}")
    empty = getattr(config, "_g4c_empty", None)
    if empty:
        terminalreporter.write_line(f"FAILED: runtime(s) {', '.join(empty)} asked for explicitly but no conformance test "
                                    "of theirs passed (nothing ran or all skipped)", red=True)


def _shown(key, value) -> str:
    if isinstance(value, float):
        return f"{key}={value:.3g}"
    if isinstance(value, (list, dict)):  # curves and tables: in the results JSON and the report
        return f"{key}=<{len(value)} entries>"
    return f"{key}={value}"
