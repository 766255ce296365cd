"""The suite's pytest options, registered through the `pytest11` entry point so that they
exist before the command line is parsed, whatever the directory:

    pytest --pyargs g4c.conformance --runtime cpu
    pytest --pyargs g4c.benchmarks --benchmark-only --bench-runtime cpu

Only options live here (this module loads in every pytest run of an environment that has
the suite installed); what they do is in conformance/conftest.py and benchmarks/conftest.py,
which pytest loads only when it collects those packages.
"""

import pytest


def pytest_addoption(parser):
    g = parser.getgroup("gemma4-conformance")
    g.addoption("--runtime", action="append", default=[], help="runtime to test (repeatable); default: all registered")
    g.addoption("--fault", default=None, help="inject a deliberate bug into the cpu runtime (see g4c/conformance/faults.py)")
    g.addoption("--results-json", default=None, help="write outcomes and metrics per test to this file")
    g.addoption("--model", default=None, help="a user's GGUF (e.g. the real 12B) to check against the reference too")
    g.addoption("--case", action="append", default=[],
                help="run only these cases (repeatable): a test module or test name, optionally with parameter "
                     "values, e.g. 'test_batched_decode_equals_single[n_seq=2]' (g4c.cases)")
    g.addoption("--engine", default=None,
                help="command line of an engine speaking the engine protocol, for --runtime process (env G4C_ENGINE)")

    g = parser.getgroup("gemma4-conformance benchmarks")
    g.addoption("--bench-model", default=None, help="fixture preset or GGUF path (env G4C_BENCH_MODEL; default tiny)")
    g.addoption("--bench-runtime", action="append", default=[], help="runtime to benchmark (repeatable; env G4C_BENCH_RUNTIME)")
    g.addoption("--bench-depths", default=None, help="decode depths, comma-separated (env G4C_BENCH_DEPTHS)")
    g.addoption("--bench-rounds", type=int, default=None, help="timed rounds per benchmark (env G4C_BENCH_ROUNDS)")
    g.addoption("--bench-machine", default=None, help="machine label for merged reports (env G4C_MACHINE)")


@pytest.hookimpl(tryfirst=True)  # before conformance/conftest.py's configure picks the runtimes
def pytest_configure(config):
    # the process runtime is built by a zero-argument factory (entry points): it reads its
    # engine's command line from the environment, which --engine sets
    engine = config.getoption("--engine", None)
    if engine:
        import os

        os.environ["G4C_ENGINE"] = engine
