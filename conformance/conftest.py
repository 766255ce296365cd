"""Conformance harness: every test here runs once per runtime.

    pytest conformance                      every registered runtime; absent ones skipped with the reason
    pytest conformance --runtime cpu        that runtime only; fails if it is unavailable, if nothing
                                            ran, or if every test skipped
    pytest conformance --fault NAME         a deliberately broken CPU variant (see faults.py)
    pytest conformance --results-json F     outcomes and metrics per test, for reports
    pytest conformance --case 'test_greedy_parity[qtype=Q4_0]'   only these cases (repeatable;
                                            g4c.cases: a module or test name, parameter values)
    G4C_PROGRESS=1 pytest conformance       progress on stderr in place of pytest's dots: tests done
                                            of each runtime's total, the current test, elapsed time
                                            (g4c run sets it; off with -v)

Five outcomes are kept apart: passed, failed, departure (the runtime declares, with the spec
section, why it departs from the reference there; a strict xfail), not_supported (the
runtime declares it lacks a feature) and skipped (device absent).

Every result names its runtime, test module, test function and parameters as fields, and
the file records where it came from (g4c.provenance: commit, date, packages, machine,
devices and drivers). It also says whether the run got to its end: "collected" (tests
selected), "not_run" (how many of those have no result) and "interrupted" (null, or why and
when the run stopped early: "KeyboardInterrupt after 20.3 s", "SIGTERM after ...", a
collection error, --maxfail).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter

import pytest

from g4c import provenance
from g4c import runtime as registry
from g4c import tolerance
from g4c.cases import Case
from g4c.errors import G4CError, NotSupported

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
    _stop_progress()  # a session cut short before pytest_sessionfinish leaves the ticking thread
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A runtime's NotSupported (it lacks what the test needs: full logits from a server, say)
    is the test's not_supported outcome with the runtime's reason, not a failure."""
    try:
        return (yield)
    except NotSupported as e:
        pytest.skip(f"{NOT_SUPPORTED} {e}")


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


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: after the xfail plugin marked the departure
def pytest_runtest_makereport(item, call):
    """An engine that crashed, hung or broke the protocol (EngineError) on a test where it
    declared a departure failed: the departure covers computing differently by design, and
    its xfail takes every suite error (G4CError), of which EngineError is one."""
    from g4c.protocol import EngineError

    report = yield
    if getattr(report, "wasxfail", None) is not None and call.excinfo is not None and call.excinfo.errisinstance(EngineError):
        report.outcome = "failed"
        del report.wasxfail
    return report


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
_collected: list = []  # nodeids of the tests selected to run
_start_s = 0.0  # time.monotonic() at session start
_interrupted: str | None = None  # why and when the session stopped early, from pytest_keyboard_interrupt
NO_RUNTIME = "(model checks)"  # counts_by_runtime's key for tests that take no runtime


def pytest_sessionstart(session):
    global _start_s, _interrupted
    _start_s = time.monotonic()
    _interrupted = None  # pytest.main run twice in one process (g4c run, in-process) keeps this module
    _collected.clear()


def pytest_keyboard_interrupt(excinfo):
    """Ctrl-C, SIGTERM under g4c run (a KeyboardInterrupt("SIGTERM")), pytest.exit, and pytest's
    own stop on collection errors all arrive here; the message, or else the type, says which."""
    global _interrupted
    _interrupted = f"{str(excinfo.value) or excinfo.typename} after {time.monotonic() - _start_s:.1f} s"


def pytest_collection_finish(session):
    global _progress
    _collected[:] = [item.nodeid for item in session.items]
    wanted = os.environ.get("G4C_PROGRESS", "0") not in ("", "0")
    if wanted and session.items and session.config.get_verbosity() <= 0:  # -v prints a line per test already
        _progress = Progress(session)


def pytest_runtest_logstart(nodeid, location):
    if _progress is not None:
        _progress.started(nodeid)


def pytest_runtest_logfinish(nodeid, location):
    if _progress is not None:
        _progress.finished(nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_report_teststatus(report, config):
    status = yield
    # no letter and no word: pytest then writes nothing for the test (its dots would break the
    # status line) but still counts the category in its summary
    return status if _progress is None else (status[0], "", "")


class Progress:
    """Where the run is, on stderr: tests done of each runtime's total, failures so far, elapsed
    time and the current test. On a terminal one status line rewritten in place every second;
    otherwise (a CI log) a line as each test module finishes and at most every 30 s between."""

    TICK_S = 1.0
    LINE_EVERY_S = 30.0

    def __init__(self, session):
        cases = [_cases[item.nodeid] for item in session.items]
        self.total = Counter(c["runtime"] or NO_RUNTIME for c in cases)
        self.module_left = Counter(c["module"] for c in cases)
        self.done = Counter()
        self.failed = 0
        self.current = ""
        capman = session.config.pluginmanager.getplugin("capturemanager")
        # a copy of the real stderr: pytest's capture redirects fd 2 while a test runs, and the
        # ticking thread writes then too
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            self.out = open(os.dup(2), "w")
        self.tty = self.out.isatty()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.last_line_s = time.monotonic()
        self.ticker = threading.Thread(target=self._tick, name="g4c-progress", daemon=True)
        self.ticker.start()

    def started(self, nodeid: str) -> None:
        path, _, name = nodeid.partition("::")
        self.current = f"{os.path.basename(path)}::{name}"
        if self.tty:
            self._draw()

    def finished(self, nodeid: str) -> None:
        case = _cases[nodeid]
        self.done[case["runtime"] or NO_RUNTIME] += 1
        self.failed += _results.get(nodeid, {}).get("outcome") == "failed"
        self.module_left[case["module"]] -= 1
        if self.tty:
            self._draw()
        elif not self.module_left[case["module"]]:
            self._line(f"{self._status()}; {case['module']} finished")

    def close(self) -> None:
        with self.lock:
            self.stop.set()
            if self.tty:
                self.out.write("\r\x1b[K")
            self.out.close()
        self.ticker.join()

    def _status(self) -> str:
        t = int(time.monotonic() - _start_s)
        counts = ", ".join(f"{rt} {self.done[rt]}/{n}" for rt, n in self.total.items())
        return f"[{t // 60}:{t % 60:02d}] {counts}" + (f", {self.failed} failed" if self.failed else "")

    def _tick(self) -> None:
        while not self.stop.wait(self.TICK_S):
            if self.tty:
                self._draw()
            elif time.monotonic() - self.last_line_s >= self.LINE_EVERY_S:
                self._line(f"{self._status()}; running {self.current}")

    def _draw(self) -> None:
        text = f"{self._status()} | {self.current}"
        with self.lock:
            if not self.stop.is_set():  # a line cut to the width: a wrapped one cannot be rewritten
                width = os.get_terminal_size(self.out.fileno()).columns or 80  # 0: a terminal with no size set
                self.out.write(f"\r{text[:width - 1]}\x1b[K")
                self.out.flush()

    def _line(self, text: str) -> None:
        with self.lock:
            if not self.stop.is_set():
                self.out.write(text + "\n")
                self.out.flush()
                self.last_line_s = time.monotonic()


_progress: Progress | None = None


def _stop_progress() -> None:
    global _progress
    if _progress is not None:
        _progress.close()
        _progress = None


def pytest_sessionfinish(session, exitstatus):
    _stop_progress()  # before pytest's summary, which follows this hook
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
    if path and exitstatus != pytest.ExitCode.USAGE_ERROR:  # a bad argument: no run happened to record
        interrupted = _interrupted
        if interrupted is None and session.shouldfail:  # --maxfail/-x: pytest stopped the run itself
            interrupted = f"{session.shouldfail} (--maxfail) after {time.monotonic() - _start_s:.1f} s"
        prov = provenance.record(config._g4c_runtimes)
        for name, rt in config._g4c_runtimes.items():
            prov["runtimes"][name]["precision"] = registry.capabilities(rt).precision
        by_runtime = {}
        for r in _results.values():
            c = by_runtime.setdefault(r.get("runtime") or NO_RUNTIME, dict.fromkeys(OUTCOMES, 0))
            c[r["outcome"]] += 1
        doc = {
            "suite": "gemma4-conformance",
            "format": 3,
            "created": prov["created"],
            "provenance": prov,
            "runtimes": prov["runtimes"],
            "fault": config.getoption("--fault"),
            "cases": [str(c) for c in config._g4c_only],
            "collected": len(_collected),
            "not_run": sum(1 for nodeid in _collected if nodeid not in _results),
            "interrupted": interrupted,
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
