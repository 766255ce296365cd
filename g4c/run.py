"""g4c run: the conformance suite (g4c.conformance) through pytest, on the runtimes asked for
or every available one, with progress on stderr, a summary table per runtime and the
results JSON.

Exit codes: 0 every selected test passed or was recorded as a departure, not supported or
skipped with its reason; 1 a test failed, or a runtime it ran passed nothing; 2 bad input;
3 the suite could not run by itself to its end; 130 SIGINT (Ctrl-C), 143 SIGTERM, with the
results file still written and marked interrupted. EXIT_CODES below says each in full; it is
the epilog of `g4c run --help`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from .errors import G4CError

EXIT_CODES = """exit codes:
  0    every selected test passed, or was recorded as a departure, not supported or skipped
       with its reason, and nothing failed
  1    a test failed, or a runtime it ran passed nothing (all skipped, or none selected)
  2    bad input: --model, --json, --case, a runtime name or another pytest argument
  3    the suite could not run by itself to its end: a conformance module failed to import,
       pytest.exit(), or a pytest internal error
  130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM. The results file is still written,
       with "interrupted" (why and when) and "not_run" (tests without a result)."""

# pytest's exit status -> ours; a signal overrides it (128 + its number), anything else is 3
_FROM_PYTEST = {0: 0, 1: 1, 5: 1, 4: 2}


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run the conformance suite on the available runtimes", epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", action="append", default=[], help="runtime to test (repeatable; default: all available)")
    p.add_argument("--model", help="also check this GGUF (e.g. the real 12B) against the reference")
    p.add_argument("--json", default="conformance-results.json", help="results file (default: %(default)s)")
    p.add_argument("--fault", help="inject a deliberate bug into the cpu runtime, to see the suite catch it")
    p.add_argument("--engine", help='command line of an engine speaking the engine protocol, for --runtime process '
                                    '(docs/engine-protocol.md; env G4C_ENGINE), e.g. "./my-engine --device 0"')
    p.add_argument("--base-url", help="an OpenAI-compatible server's API URL, for --runtime openai (env "
                                      "G4C_OPENAI_BASE_URL), e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--served-model", help="the model it serves, as its /v1/models lists it (the GGUF's path), for "
                                          "--runtime openai (env G4C_OPENAI_MODEL)")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")


def run(args) -> int:
    """g4c run: the conformance suite through pytest on the asked-for (or every available)
    runtime; returns one of the exit codes in this module's docstring."""
    import pytest

    from g4c import conformance

    from .runtime import discover, runs_by_default

    if args.model:
        _check_model(args.model)
    _check_results_path(args.json)
    # the process and openai runtimes read their engine or server from the environment (zero-argument factories)
    for value, env in ((args.engine, "G4C_ENGINE"), (args.base_url, "G4C_OPENAI_BASE_URL"),
                       (args.served_model, "G4C_OPENAI_MODEL")):
        if value:
            os.environ[env] = value
    found = discover()
    asked = args.runtime or [n for n, rt in found.items() if runs_by_default(rt) and rt.availability().ok]
    for name, rt in found.items():
        av = rt.availability()
        if name not in asked:
            why = av.reason if not av.ok else "not asked for" if runs_by_default(rt) else "runs only when named"
            print(f"runtime {name}: skipped ({why})")
    if not asked:
        raise G4CError("no runtime is available")
    suite = os.path.dirname(conformance.__file__)
    # no cache and no pytest-benchmark (it makes .benchmarks/ at start): the results file is
    # all a run leaves in the working directory
    pyargs = [suite, "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", "--results-json", args.json,
              # g4c is imported before pytest marks its pytest11 plugin's package for assertion
              # rewriting; the suite's asserts are in the test modules, which pytest rewrites anyway
              "-W", "ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning"]
    for name in asked:
        pyargs += ["--runtime", name]
    if args.model:
        pyargs += ["--model", args.model]
    if args.fault:
        pyargs += ["--fault", args.fault]
    os.environ.setdefault("G4C_PROGRESS", "1")  # conformance/conftest.py's progress on stderr; G4C_PROGRESS=0 turns it off
    # a file left by an earlier run would otherwise pass for this run's if this one stops before writing
    if os.path.exists(args.json):
        os.remove(args.json)
    with _Signals() as signals:
        try:
            code = pytest.main(pyargs + list(args.pytest_args))
        except KeyboardInterrupt:  # landed outside the session (start-up, unconfigure): pytest could not catch it
            code = pytest.ExitCode.INTERRUPTED
    if os.path.exists(args.json):
        _print_summary(args.json)
    elif signals.received:
        print(f"g4c run: interrupted ({signals.received.name}) before any result was written", file=sys.stderr)
    if signals.received:
        return 128 + signals.received
    return _FROM_PYTEST.get(int(code), 3)


def _check_model(path: str) -> None:
    """--model opened and validated before pytest starts, so a wrong path costs no run."""
    from .model import Model

    if os.path.exists(path) and not os.path.isfile(path):
        raise G4CError(f"--model {path}: not a regular file")
    try:
        Model(path)
    except G4CError as e:
        raise G4CError(f"--model {e}") from None
    except OSError as e:  # unreadable: permissions, an I/O error
        raise G4CError(f"--model {path}: {e.strerror or e}") from None


def _check_results_path(path: str) -> None:
    where = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise G4CError(f"--json {path}: is a directory")
    if not os.path.isdir(where):
        raise G4CError(f"--json {path}: directory {where} does not exist")


class _Signals:
    """SIGINT and SIGTERM while pytest runs both raise KeyboardInterrupt where they land, so
    pytest stops the session and still writes the results file marked interrupted (SIGTERM's
    default action would end the process with no file). The first received sets the exit code."""

    def __init__(self):
        self.received: signal.Signals | None = None

    def __enter__(self):
        self._saved = {s: signal.signal(s, self._raise) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._saved.items():
            signal.signal(s, handler)

    def _raise(self, signum, frame):
        __tracebackhide__ = True  # pytest then names the line the signal interrupted, not this one
        self.received = self.received or signal.Signals(signum)
        # the message becomes the results file's "interrupted": "SIGTERM after 20.3 s"; Ctrl-C
        # keeps Python's own bare KeyboardInterrupt
        raise KeyboardInterrupt() if signum == signal.SIGINT else KeyboardInterrupt(signal.Signals(signum).name)


def _print_summary(path: str) -> None:
    with open(path) as f:
        doc = json.load(f)
    kinds = ("passed", "failed", "departure", "not_supported", "skipped")
    by_rt = doc["counts_by_runtime"]
    print()
    print("| runtime | passed | failed | departure | not supported | skipped |")
    print("|---|---|---|---|---|---|")
    for rt, c in sorted(by_rt.items()):
        print(f"| {rt} | " + " | ".join(str(c.get(k, 0)) for k in kinds) + " |")
    if doc["interrupted"]:
        print(f"\nINTERRUPTED: {doc['not_run']} of {doc['collected']} tests not run ({doc['interrupted']})")
    print(f"\nresults: {path}")
