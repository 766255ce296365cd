"""nox sessions: `nox -s tests` (the whole test suite and a report from its run),
`nox -s conformance-cpu` (that runtime's conformance, writing reports/out/conformance-cpu.json),
`nox -s bench` (throughput), `nox -s report` (reports/out/index.html).

Each runtime gets its own session, registered in a loop with name= so that the names read
conformance-<runtime> (nox's parametrize would name them conformance(cpu)). An explicit
session fails when its runtime is unavailable: conformance-cuda needs an NVIDIA GPU.
"""

import os
import platform
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

RUNTIMES = {"cpu": ".[dev]", "cuda": ".[dev,cuda]", "llamacpp": ".[dev,llamacpp]", "opencl": ".[dev]", "vulkan": ".[dev]"}
# llama-cpp-python builds its vendored llama.cpp from source (CPU, ~6 to 25 min on 2 cores)
LLAMACPP_CMAKE = "-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
if platform.machine() in ("x86_64", "AMD64"):
    # llama.cpp 0.3.36's AMX kernels segfault on the Q4_0 fixtures (ggml_backend_amx_mul_mat,
    # llama.cpp issue 20824) on CPUs that have AMX; an explicit -mno- outweighs -march=native
    LLAMACPP_CMAKE += " -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8"


# the emulated CUDA runtime's cases in CI (g4c.cases: a module or test, parameter values); the
# ring and window bounds: tests/test_cuda_emu.py, on a window of 32 rather than 1024
CUDA_EMU_CASES = ("test_weight_types", "test_dense_logits", "test_dense_decode_matches_reference", "test_softcap_bounds",
                  "test_reset_forgets", "test_rewind_keeps_prefix", "test_batched_decode_equals_single[n_seq=2]",
                  "test_k_eq_v_logits[preset=tiny]", "test_k_eq_v_layer_outputs", "test_inputs",
                  "test_rope_long_position[preset=tiny]", "test_greedy_parity[qtype=Q4_0]", "test_shape", "test_ops",
                  "test_softcap_from_file")


def _machine() -> str:
    return os.environ.get("G4C_MACHINE") or platform.node() or "local"


@nox.session
def tests(session):
    """The whole test suite, then a real run turned into the report: unit tests, fault
    injection and conformance of the cpu, vulkan and opencl runtimes and of the cuda runtime on its
    CPU emulator (results kept), the benchmarks on the tiny
    preset, the HTML report from those runs and the committed ones, and the report opened in
    headless Chromium (tests/test_report.py)."""
    session.install("-e", ".[dev]")
    os.makedirs("reports/out", exist_ok=True)
    label = _machine()
    # conformance of the cpu, vulkan and opencl runtimes (vulkan on lavapipe, Mesa's CPU
    # device, in CI: the wide kernel path, about 6 minutes on 2 cores; tests/test_vulkan_ops.py
    # runs the baseline path too; opencl on PoCL's CPU device: the plain path, about 4 minutes;
    # tests/test_opencl.py runs the sub-group path too); cuda and llamacpp have their own sessions
    # (tests/test_faults.py writes which tests caught each fault: the report's catch matrix)
    session.run("python", "-m", "pytest", "tests", "conformance", "--runtime", "cpu", "--runtime", "vulkan", "--runtime", "opencl",
                "--results-json", f"reports/out/conformance-{label}.json", *session.posargs,
                env={"G4C_FAULTS_JSON": f"reports/out/faults-{label}.json", "G4C_MACHINE": label})
    # the cuda runtime's kernels and host code on the CPU emulator (no GPU here): the cases
    # that cover every kernel, k_eq_v, batching and greedy decode, on the small presets
    # (under 2 minutes; the whole suite takes over 20)
    session.run("python", "-m", "pytest", "conformance", "--runtime", "cuda-emu", "-p", "no:cacheprovider",
                *(f"--case={c}" for c in CUDA_EMU_CASES), "--results-json", f"reports/out/conformance-cuda-emu-{label}.json")
    session.run("python", "-m", "pytest", "benchmarks", "--benchmark-only", "-p", "no:cacheprovider", "--bench-runtime", "cpu",
                "--benchmark-json", f"reports/out/bench-{label}.json", env={"G4C_MACHINE": label})
    # the op cases as a perf run (each checked before it is timed; seconds): GB/s per op in the report
    for rt in ("cpu", "vulkan", "opencl"):
        session.run("python", "-m", "g4c.opcases", "--perf", "--runtime", rt, "--json", f"reports/out/ops-{rt}-{label}.json",
                    env={"G4C_MACHINE": label})
    session.run("python", "-m", "g4c.reports.build")
    session.run("python", "-m", "pytest", "tests/test_report.py", "-k", "browser", "-p", "no:cacheprovider",
                env={"G4C_REPORT": "reports/out/index.html", "G4C_REPORT_SCREENSHOT": "reports/out/report.png"})


@nox.session
def bench(session):
    """Throughput benchmarks of every available runtime (tiny preset unless --bench-model or
    G4C_BENCH_MODEL says otherwise), pytest-benchmark JSON in reports/out/bench-<machine>.json.
    Extra arguments go to pytest: nox -s bench -- --bench-model 12b --bench-runtime cuda."""
    session.install("-e", ".[dev]")
    os.makedirs("reports/out", exist_ok=True)
    session.run("python", "-m", "pytest", "benchmarks", "--benchmark-only", "-p", "no:cacheprovider",
                "--benchmark-json", f"reports/out/bench-{_machine()}.json", *session.posargs)


@nox.session
def report(session):
    """reports/out/index.html from every result file in reports/data and reports/out."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "g4c.reports.build", *session.posargs)


def _conformance(runtime, extras):
    def run(session):
        session.install("-e", extras, env={"CMAKE_ARGS": LLAMACPP_CMAKE})
        os.makedirs("reports/out", exist_ok=True)
        # on a GPU the 12b preset's goldens are seconds of work: conformance-cuda includes them
        env = {"G4C_REAL_DIMS": "1"} if runtime == "cuda" else {}
        session.run("python", "-m", "pytest", "conformance", "--runtime", runtime,
                    "--results-json", f"reports/out/conformance-{runtime}.json", *session.posargs, env=env)

    run.__doc__ = f"Conformance of the {runtime} runtime; fails if it is unavailable or nothing passed."
    if runtime == "cuda":
        run.__doc__ += " Includes the 12b preset against its float64 goldens (G4C_REAL_DIMS=1)."
    return run


for _rt, _extras in RUNTIMES.items():
    nox.session(name=f"conformance-{_rt}")(_conformance(_rt, _extras))


@nox.session(name="real-dims")
def real_dims(session):
    """The 12b preset (3840 wide, FFN 15360, vocab 262144, 48 layers) against the float64
    reference's committed goldens (fixtures/golden/12b-q4_0.json), outside the default run.
    Generates the 7 GB fixture first if absent (about 40 s on 2 cores); cpu and vulkan on
    lavapipe then take about 4 minutes. Extra arguments replace --runtime cpu:
    nox -s real-dims -- --runtime cpu --runtime vulkan. A runtime whose memory plan does not
    fit is skipped with its figures; a runtime named that passes nothing fails the session."""
    session.install("-e", ".[dev]")
    os.makedirs("reports/out", exist_ok=True)
    session.run("python", "-m", "pytest", "conformance/test_real_dims.py", "-p", "no:cacheprovider",
                *(session.posargs or ["--runtime", "cpu"]),
                "--results-json", f"reports/out/real-dims-{_machine()}.json", env={"G4C_REAL_DIMS": "1"})


@nox.session(name="parity-llamacpp")
def parity_llamacpp(session):
    """Build llama.cpp (llama-cpp-python's sdist), write its goldens live into
    reports/out/llamacpp-goldens, and compare every runtime with them: the tiny fixtures in
    five weight types and the real Gemma 3 270M, greedy tokens, top-1, tokenizer ids."""
    session.install("-e", ".[dev,llamacpp]", env={"CMAKE_ARGS": LLAMACPP_CMAKE})
    live = "reports/out/llamacpp-goldens"
    session.run("python", "-m", "g4c.fixtures.llamacpp", "--out", live)
    env = {"G4C_LLAMACPP_GOLDENS": live}
    session.run("python", "-m", "pytest", "tests/test_tokenizer.py", *session.posargs, env=env)
    session.run("python", "-m", "pytest", "conformance/test_llamacpp_parity.py", "--results-json",
                "reports/out/parity-llamacpp.json", *session.posargs, env=env)


@nox.session(name="parity-transformers")
def parity_transformers(session):
    """Build transformers' Gemma 4 in float64 on the CPU from the tiny fixtures (the
    test_dense variants) and one shape-sweep case, write its goldens live into
    reports/out/transformers-goldens, and hold the float64 reference to them."""
    session.install("-e", ".[transformers]")
    live = "reports/out/transformers-goldens"
    session.run("python", "-m", "g4c.fixtures.transformers_oracle", "--out", live)
    session.run("python", "-m", "pytest", "tests/test_transformers_oracle.py", "-p", "no:cacheprovider", "-rA",
                *session.posargs, env={"G4C_TRANSFORMERS_GOLDENS": live})


@nox.session
def fuzz(session):
    """The GGUF fuzz test at 20000 cases (CI runs 2000); G4C_FUZZ_EXAMPLES overrides."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "tests/test_fuzz.py", "-s", *session.posargs,
                env={"G4C_FUZZ_EXAMPLES": os.environ.get("G4C_FUZZ_EXAMPLES", "20000")})


# what the wheel session requires of the results file g4c run wrote: something passed, nothing
# failed, and (once the run records it) nothing left unrun
_WHEEL_RESULTS_CHECK = """
import json, sys
doc = json.load(open(sys.argv[1]))
c = doc["counts_by_runtime"].get("cpu", {})
assert c.get("passed", 0) > 0 and c.get("failed", 0) == 0, f"cpu: {c}"
assert not doc.get("interrupted") and not doc.get("not_run"), (doc.get("interrupted"), doc.get("not_run"))
print(f"wheel: cpu {c}")
"""


@nox.session(name="wheel", reuse_venv=False)
def wheel(session):
    """The wheel as a user gets it: built from this checkout, installed into a fresh venv beside
    PyPI distributions named fixtures and reports (top-level packages of those names), then
    `g4c run --runtime cpu` from an unrelated directory holding decoy conformance/ and
    fixtures/ packages; uninstalling the reports distribution must leave ours whole."""
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), ".")
    (whl,) = dist.glob("gemma4_conformance-*.whl")
    session.install(str(whl), "fixtures", "reports")
    session.run("python", "-m", "pip", "check")
    work = tmp / "work"
    shutil.rmtree(work, ignore_errors=True)
    for decoy in ("conformance", "fixtures", "runtimes"):  # a user's own packages in the working directory
        (work / decoy).mkdir(parents=True)
        (work / decoy / "__init__.py").write_text(f"raise ImportError('the user\\'s own {decoy} package was imported')\n")
    session.chdir(work)
    session.run("g4c", "run", "--runtime", "cpu", "--json", "results.json")
    session.run("python", "-c", _WHEEL_RESULTS_CHECK, "results.json")
    session.run("python", "-m", "pytest", "--pyargs", "g4c.conformance", "--runtime", "cpu", "--case", "test_inputs",
                "-p", "no:cacheprovider", "-q")
    session.run("python", "-m", "pip", "uninstall", "-y", "-q", "reports", "fixtures")
    session.run("python", "-c", "import g4c.reports.build, g4c.fixtures; print('g4c.reports and g4c.fixtures intact')")
    session.run("g4c", "fixture", "tiny")


@nox.session
def engines(session):
    """Engines outside Python through the engine protocol (docs/engine-protocol.md): build the
    C engine (examples/c-engine: llama.cpp's C API, cJSON from Debian's libcjson-dev) against
    the llamacpp extra's llama-cpp-python, then require the same outcome per test through it as
    on the llamacpp runtime (tests/test_c_engine.py: 8 representative cases; `-- full` runs
    the whole suite through both, about 8 minutes on 2 cores), and check that the llamacpp
    runtime loads another libllama by G4C_LLAMA_LIB (tests/test_llamacpp_lib.py) and the openai
    runtime talks to a real server (llama_cpp.server, tests/test_openai.py).
    G4C_LLAMACPP_WHEELS: a folder with a prebuilt llama-cpp-python wheel (else built from
    source, 7 to 25 minutes on 2 cores; pip keeps the wheel for the next run)."""
    wheels = os.environ.get("G4C_LLAMACPP_WHEELS")
    session.install(*(["--find-links", wheels] if wheels else []), "-e", ".[dev,llamacpp]", "llama-cpp-python[server]==0.3.36",
                    env={"CMAKE_ARGS": LLAMACPP_CMAKE})
    site = session.run("python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", silent=True).strip()
    lib, include = f"{site}/llama_cpp/lib", f"{site}/include"  # llama-cpp-python installs llama.h and ggml's headers there
    engine = "examples/c-engine/g4c-llama-engine"
    session.run("make", "-C", "examples/c-engine", f"LLAMA_INCLUDE={include}", f"LLAMA_LIB={lib}", external=True)
    env = {}
    if "full" in session.posargs:
        os.makedirs("reports/out", exist_ok=True)
        results = env["G4C_C_ENGINE_RESULTS"] = "reports/out/conformance-c-engine.json"
        # llama.cpp aborts creating a context for a model without a sliding layer: one failed
        # test through the engine, the end of pytest in-process
        session.run("python", "-m", "pytest", "conformance", "-p", "no:cacheprovider", "--runtime", "process",
                    "--engine", engine, "--runtime", "llamacpp",
                    "--deselect", "conformance/test_shapes.py::test_shape[llamacpp-hd128-256-g16-l1]",
                    "--results-json", results, success_codes=[0, 1])
    session.run("python", "-m", "pytest", "tests/test_c_engine.py", "tests/test_llamacpp_lib.py", "-p", "no:cacheprovider",
                "-rA", env=env)
    # the openai runtime against a real server: llama-cpp-python's llama_cpp.server takes text
    # prompts only, so its tokenizer is checked and the rest is not supported (llama.cpp's own
    # llama-server, which takes token ids: nox -s conformance-openai)
    session.run("python", "-m", "pytest", "tests/test_openai.py", "-k", "real_server", "-p", "no:cacheprovider", "-rA")


def _llama_server(session) -> str:
    """llama.cpp's own llama-server, from the llama.cpp that llama-cpp-python 0.3.36 vendors (the
    one the llamacpp runtime runs), built once into .nox/llama-server (20 min on 2 shared cores)
    and reused by later runs."""
    root = Path(".nox/llama-server").resolve()
    binary = root / "build" / "bin" / "llama-server"
    if binary.exists():
        return str(binary)
    session.run("python", "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(root),
                "llama-cpp-python==0.3.36")
    (sdist,) = root.glob("llama_cpp_python-*.tar.gz")
    shutil.unpack_archive(sdist, root)
    (src,) = root.glob("llama_cpp_python-*/vendor/llama.cpp")
    session.run("cmake", "-S", str(src), "-B", str(root / "build"), "-DCMAKE_BUILD_TYPE=Release", *LLAMACPP_CMAKE.split(),
                "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
                "-DBUILD_SHARED_LIBS=OFF", external=True)
    session.run("cmake", "--build", str(root / "build"), "--target", "llama-server", "-j", str(os.cpu_count() or 2),
                external=True)
    return str(binary)


@nox.session(name="conformance-openai")
def conformance_openai(session):
    """The openai runtime against llama.cpp's own llama-server on the tiny fixture: the cases
    that need only greedy tokens, top-k log-probabilities and the tokenizer pass through it,
    the rest report not supported, and a failing server (refused, HTTP 500, timeout, malformed
    JSON) is one clean error (tests/test_openai.py); then the whole suite through it, kept in
    reports/out/conformance-openai.json. llama_cpp.server's cases run in parity-llamacpp."""
    session.install("-e", ".[dev]")
    server = _llama_server(session)
    session.run("python", "-m", "pytest", "tests/test_openai.py", "-p", "no:cacheprovider", "-rs", *session.posargs,
                env={"G4C_LLAMA_SERVER": server})
    model = session.run("g4c", "fixture", "tiny", silent=True).strip().splitlines()[-1]  # its path
    url = "http://127.0.0.1:8181/v1"
    proc = subprocess.Popen([server, "-m", model, "--host", "127.0.0.1", "--port", "8181", "-c", "512", "-np", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):  # until it answers, 2 minutes at most
            try:
                urllib.request.urlopen(f"{url}/models", timeout=5).read()
                break
            except OSError:
                time.sleep(0.5)
        os.makedirs("reports/out", exist_ok=True)
        session.run("g4c", "run", "--runtime", "openai", "--base-url", url, "--served-model", model,
                    "--json", "reports/out/conformance-openai.json")
    finally:
        proc.kill()
        proc.wait()
