"""g4c run: the conformance suite (g4c.conformance) through pytest, on the runtimes asked for
or every available one, with a summary table per runtime and the results JSON."""

from __future__ import annotations

import json
import os

from .errors import G4CError


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run the conformance suite on the available runtimes")
    p.add_argument("--runtime", action="append", default=[], help="runtime to test (repeatable; default: all available)")
    p.add_argument("--model", help="also check this GGUF (e.g. the real 12B) against the reference")
    p.add_argument("--json", default="conformance-results.json", help="results file (default: %(default)s)")
    p.add_argument("--fault", help="inject a deliberate bug into the cpu runtime, to see the suite catch it")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")


def run(args) -> int:
    """g4c run: the conformance suite through pytest on the asked-for (or every available) runtime."""
    import pytest

    from g4c import conformance

    from .runtime import discover, runs_by_default

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
    pyargs = [suite, "-q", "-p", "no:cacheprovider", "--results-json", args.json]
    for name in asked:
        pyargs += ["--runtime", name]
    if args.model:
        pyargs += ["--model", args.model]
    if args.fault:
        pyargs += ["--fault", args.fault]
    code = pytest.main(pyargs + list(args.pytest_args))
    if os.path.exists(args.json):
        _print_summary(args.json)
    return int(code)


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
    print(f"\nresults: {path}")


