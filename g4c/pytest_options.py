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
    g.addoption("--base-url", default=None,
                help="an OpenAI-compatible server's API URL, e.g. http://127.0.0.1:8080/v1, for --runtime openai "
                     "(env G4C_OPENAI_BASE_URL)")
    g.addoption("--served-model", default=None,
                help="the model the server serves, as its /v1/models lists it (its GGUF's path), for --runtime openai "
                     "(env G4C_OPENAI_MODEL)")

    g = parser.getgroup("gemma4-conformance benchmarks")
    g.addoption("--bench-model", default=None, help="fixture preset or GGUF path (env G4C_BENCH_MODEL; default tiny)")
    g.addoption("--bench-runtime", action="append", default=[],
                help="runtime to benchmark (repeatable or comma-separated; env G4C_BENCH_RUNTIME)")
    g.addoption("--bench-pp", default=None,
                help="prompt lengths of the prefill test, comma-separated (env G4C_BENCH_PP; default 512)")
    g.addoption("--bench-tg", default=None,
                help="decode lengths of the tg test, comma-separated (env G4C_BENCH_TG; default 128)")
    g.addoption("--bench-depths", default=None, help="decode depths, comma-separated (env G4C_BENCH_DEPTHS)")
    g.addoption("--bench-rounds", type=int, default=None, help="timed rounds per benchmark (env G4C_BENCH_ROUNDS)")
    g.addoption("--bench-machine", default=None, help="machine label for merged reports (env G4C_MACHINE)")


@pytest.hookimpl(tryfirst=True)  # before conformance/conftest.py's configure picks the runtimes
def pytest_configure(config):
    # the process and openai runtimes are built by zero-argument factories (entry points): they
    # read their engine's command line, or their server, from the environment, which these set
    import os

    for option, env in (("--engine", "G4C_ENGINE"), ("--base-url", "G4C_OPENAI_BASE_URL"),
                        ("--served-model", "G4C_OPENAI_MODEL")):
        value = config.getoption(option, None)
        if value:
            os.environ[env] = value
