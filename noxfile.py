"""nox sessions: `nox -s tests` (the whole test suite), `nox -s conformance-cpu` (that
runtime's conformance, writing reports/out/conformance-cpu.json for reports).

Each runtime gets its own session, registered in a loop with name= so that the names read
conformance-<runtime> (nox's parametrize would name them conformance(cpu)). An explicit
session fails when its runtime is unavailable: conformance-cuda needs an NVIDIA GPU.
"""

import os

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

RUNTIMES = {"cpu": ".[dev]", "cuda": ".[dev,cuda]"}  # runtime -> what its session installs


@nox.session
def tests(session):
    """The whole test suite: unit tests, fault injection, and conformance of every runtime."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "tests", "conformance", *session.posargs)


def _conformance(runtime, extras):
    def run(session):
        session.install("-e", extras)
        os.makedirs("reports/out", exist_ok=True)
        session.run("python", "-m", "pytest", "conformance", "--runtime", runtime,
                    "--results-json", f"reports/out/conformance-{runtime}.json", *session.posargs)

    run.__doc__ = f"Conformance of the {runtime} runtime; fails if it is unavailable or nothing passed."
    return run


for _rt, _extras in RUNTIMES.items():
    nox.session(name=f"conformance-{_rt}")(_conformance(_rt, _extras))


@nox.session
def fuzz(session):
    """The GGUF fuzz test at 20000 cases (CI runs 2000); G4C_FUZZ_EXAMPLES overrides."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "tests/test_fuzz.py", "-s", *session.posargs,
                env={"G4C_FUZZ_EXAMPLES": os.environ.get("G4C_FUZZ_EXAMPLES", "20000")})
